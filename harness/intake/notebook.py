"""Jupyter notebooks a student hands in (seed 000's `assignment2_notebook.ipynb`): what they claim, and the
model code in them.

- Claims and the curve come from what the notebook *shows*, never from running it: the printed outputs
  of its code cells (stream text and `execute_result` text: `step 100: train loss 4.21, val loss 4.55`,
  `Epoch 3/10 | Train Loss: 6.93 | Val PPL: 1121.4`, `Final validation loss: 6.54`) and its markdown
  tables (a `| metric | value |` table of final results, or an epoch table whose last row counts). Each
  value names its cell: `assignment2_notebook.ipynb, cell 14`, cells counted from 1 in notebook order,
  markdown cells included (as the notebook shows them top to bottom; execution counts are unreliable).
  A final-results table states the claim; printed lines fill what it does not say; the curve is the last
  cell that printed two or more points.
- `[model] code = "notebook.ipynb:MiniGPT"`: `model_module` turns the notebook into a module that holds
  only its imports, its `class`/`def` statements and simple constant assignments, AST-checked; training
  loops, data loading, magics (`%`, `!`, `%%` cells) and every other top-level statement are left out and
  said so. The module is written and imported only inside the sandboxed child (`student_class.py`).

Nothing here imports torch: the parent reads claims, the sandboxed child builds the module.
"""

from __future__ import annotations

import ast
import builtins
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.intake.logs import COLUMNS, METRICS, CurvePoint, normalise_header

MAX_NOTEBOOK_BYTES = 64 << 20  # outputs hold base64 images; beyond this a notebook is not read for claims


@dataclass(frozen=True)
class Cell:
    number: int  # 1-based, in notebook order, every kind of cell counted
    kind: str  # "code" | "markdown" | "raw"
    source: str
    output: str  # the text the code cell printed or returned, in order ("" for other cells)


def read_cells(text: str, name: str = "notebook") -> list[Cell]:
    """The cells of an nbformat v4 notebook (v3's `worksheets` too). Raises HarnessError for what is not
    a notebook."""
    try:
        nb = json.loads(text)
    except ValueError:
        raise HarnessError("notebook-invalid", f"{name} is not a Jupyter notebook (not JSON)") from None
    if not isinstance(nb, dict):
        raise HarnessError("notebook-invalid", f"{name} is not a Jupyter notebook")
    raw = nb.get("cells")
    if raw is None and isinstance(nb.get("worksheets"), list):  # nbformat 3
        raw = [c for ws in nb["worksheets"] if isinstance(ws, dict) for c in ws.get("cells") or ()]
    if not isinstance(raw, list):
        raise HarnessError("notebook-invalid", f"{name} is not a Jupyter notebook (it has no cells)")
    cells = []
    for i, c in enumerate(raw, start=1):
        if not isinstance(c, dict):
            continue
        kind = str(c.get("cell_type") or "")
        source = _text(c.get("source", c.get("input")))
        output = "".join(_output_text(o) for o in c.get("outputs") or () if isinstance(o, dict)) if kind == "code" else ""
        cells.append(Cell(i, kind, source, output))
    return cells


def _text(value) -> str:
    if isinstance(value, list):
        return "".join(v for v in value if isinstance(v, str))
    return value if isinstance(value, str) else ""


def _output_text(o: dict) -> str:
    kind = o.get("output_type")
    if kind == "stream":
        text = _text(o.get("text"))
    elif kind in ("execute_result", "display_data", "pyout"):
        data = o.get("data") if isinstance(o.get("data"), dict) else o
        text = _text(data.get("text/plain", data.get("text")))
    else:  # errors and the rest claim nothing
        return ""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)  # colours of progress bars
    # a progress bar rewrites its line with \r: only what was finally shown counts
    lines = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines) + ("" if text.endswith("\n") else "\n")


# --- claims from outputs and markdown ----------------------------------------------------------------

_NUMBER = r"([-+]?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_AXIS = re.compile(r"\b(epoch|step|iter(?:ation)?)\b\s*[:#=]?\s*(\d+)(?:\s*/\s*\d+)?", re.I)
# `val loss 4.55`, `Val PPL: 693`, `train_loss=4.2`, `loss 4.21` (a bare loss is the training loss)
_METRIC = re.compile(r"(?<![A-Za-z])(?:(train(?:ing)?|val(?:id(?:ation)?)?|eval(?:uation)?|dev|test)[\s_-]*)?"
                     r"(loss|perplexity|ppl)\b\s*[:=]?\s*" + _NUMBER, re.I)
_PARAMS = [re.compile(p, re.I) for p in (
    r"(?:number\s+of|total|trainable|#)\s*(?:trainable\s+)?param(?:eter)?s?\s*[:=]?\s*" + _NUMBER + r"\s*([KMB]|million)?",
    r"param(?:eter)?s?(?:\s+count)?\s*[:=]\s*" + _NUMBER + r"\s*([KMB]|million)?",
    _NUMBER + r"\s*([KMB]|million)?\s+(?:trainable\s+)?param(?:eter)?s\b")]
_SCALE = {"k": 1e3, "m": 1e6, "million": 1e6, "b": 1e9}


@dataclass(frozen=True)
class NotebookClaims:
    values: dict[str, float]  # claim key (submission.CLAIM_KEYS) -> value
    sources: dict[str, str]  # claim key -> "name.ipynb, cell N"
    curve: tuple[dict, ...]  # {step, axis, train_loss, val_loss, train_ppl, val_ppl}, in printed order
    curve_source: str | None


def _num(text: str) -> float | None:
    try:
        v = float(text.replace(",", ""))
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _metric_key(prefix: str | None, metric: str) -> str:
    val = bool(prefix) and not prefix.lower().startswith("train")
    kind = "loss" if metric.lower() == "loss" else "ppl"
    return f"{'val' if val else 'train'}_{kind}"


def _line_metrics(line: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for m in _METRIC.finditer(line):
        v = _num(m.group(3))
        if v is not None:
            found.setdefault(_metric_key(m.group(1), m.group(2)), v)
    return found


def _params(line: str) -> float | None:
    for p in _PARAMS:
        m = p.search(line)
        if m:
            v = _num(m.group(1))
            if v is not None:
                v *= _SCALE.get((m.group(2) or "").lower(), 1.0)
                if v >= 1000:  # "2 layers" and "4 heads" are not parameter counts
                    return v
    return None


def _markdown_tables(source: str) -> list[list[list[str]]]:
    """Pipe tables: each a list of rows of cell texts, the separator row left out."""
    tables, rows = [], []
    for line in source.splitlines() + [""]:
        s = line.strip()
        if s.startswith("|") or s.count("|") >= 2:
            cells = [c.strip().strip("*_` ") for c in s.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def _claim_of_label(label: str) -> str | None:
    low = label.lower()
    if re.search(r"param", low):
        return "params"
    m = re.search(r"(train(?:ing)?|val(?:id(?:ation)?)?|eval|dev|test)?[\s_-]*(loss|perplexity|ppl)\b", low)
    if not m:
        return None
    if m.group(1) is None and not re.search(r"\bval|valid|eval|test", low):
        return None  # "final loss": which split is not said
    return _metric_key(m.group(1) or "val", m.group(2))


def _table_claims(table: list[list[str]]) -> dict[str, float]:
    """A `| metric | value |` table, or a table with metric columns whose last numeric row counts."""
    if len(table) < 2:
        return {}
    header = table[0]
    found: dict[str, float] = {}
    if len(header) >= 2 and not any(_claim_of_label(h) for h in header[1:]):  # | metric | value |
        for row in table[1:]:
            key = _claim_of_label(row[0]) if row else None
            value = next((v for c in row[1:] if (v := _table_number(c)) is not None), None) if key else None
            if key and value is not None:
                found.setdefault(key, value)
        return found
    for row in reversed(table[1:]):  # an epoch table: its last row
        values = {key: v for h, c in zip(header, row) if (key := _claim_of_label(h)) and key != "params"
                  and (v := _table_number(c)) is not None}
        if values:
            return values
    return {}


def _table_number(cell: str) -> float | None:
    m = re.match(r"^[~≈]?\s*" + _NUMBER + r"\s*([KMB]|million)?\b", cell.strip(), re.I)
    if not m:
        return None
    v = _num(m.group(1))
    return None if v is None else v * _SCALE.get((m.group(2) or "").lower(), 1.0)


def _column(label: str) -> str | None:
    """A printed table's column: "epoch", "step", a metric key, or None; by the logs' own column names
    first (a DataFrame of a history prints the log's headers)."""
    h = normalise_header(label)
    known = next((k for k in ("epoch", "step", *METRICS) if h in COLUMNS[k]), None)
    if known is not None:
        return known
    key = _claim_of_label(label)
    return key if key in METRICS else None


def _printed_table(lines: list[str]) -> list[dict]:
    """Points of a table the cell printed: a DataFrame (`   epoch  train_loss  val_loss`, rows led by their
    index) or tab-separated columns (`Epoch<TAB>Training Loss<TAB>Validation Loss`)."""
    points: list[dict] = []
    header: list[str | None] | None = None
    for line in lines:
        cells = [c for c in re.split(r"\t|\s{2,}|\s*\|\s*", line.strip()) if c]
        numbers = [_table_number(c) for c in cells]
        if header is not None and cells and all(n is not None for n in numbers) \
                and len(cells) in (len(header), len(header) + 1):
            row = dict(zip(header, numbers[len(cells) - len(header):]))  # a DataFrame's index first
            axis = "epoch" if "epoch" in row else "step"
            points.append({"step": float(row.get(axis, len(points) + 1)), "axis": axis,
                           **{k: row.get(k) for k in METRICS}})
            continue
        labels = [_column(c) for c in cells]
        header = labels if any(l in METRICS for l in labels) and not any(n is not None for n in numbers) else None
    return points


def notebook_claims(path: Path, name: str | None = None) -> NotebookClaims:
    """What a notebook claims, each value with its cell; an unreadable notebook claims nothing."""
    name = name or path.name
    empty = NotebookClaims({}, {}, (), None)
    try:
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            return empty
        cells = read_cells(path.read_text(encoding="utf-8", errors="replace"), name)
    except (OSError, HarnessError):
        return empty
    printed: dict[str, tuple[float, str]] = {}
    curve: list[dict] = []
    curve_source = None
    for cell in cells:
        where = f"{name}, cell {cell.number}"
        points = []
        for line in cell.output.splitlines():
            metrics = _line_metrics(line)
            axis = _AXIS.search(line)
            if metrics and axis:
                kind = axis.group(1).lower()
                points.append({"step": float(axis.group(2)), "axis": "epoch" if kind == "epoch" else "step",
                               **{k: metrics.get(k) for k in METRICS}})
            elif metrics:  # "Final validation loss: 6.54", printed after training: the last one counts
                for k, v in metrics.items():
                    printed[k] = (v, where)
            params = _params(line) if not metrics else None
            if params is not None:
                printed["params"] = (params, where)
        points = points or _printed_table(cell.output.splitlines())
        if len(points) >= 2 or points and not curve:
            curve, curve_source = points, where
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for cell in cells:  # a table of final results is the student's own statement: it goes first
        if cell.kind != "markdown":
            continue
        for table in _markdown_tables(cell.source):
            for k, v in _table_claims(table).items():
                values[k], sources[k] = v, f"{name}, cell {cell.number}"
    for k, (v, where) in printed.items():
        if k not in values:
            values[k], sources[k] = v, where
    for k in METRICS:  # the curve's last value, where nothing else said it
        if k not in values:
            last = next((p[k] for p in reversed(curve) if p[k] is not None), None)
            if last is not None:
                values[k], sources[k] = last, curve_source
    if "params" in values:
        values["params"] = float(round(values["params"]))
    return NotebookClaims(values, sources, tuple(curve), curve_source)


def add_notebook_claims(folder: Path, files: tuple[Path, ...], values: dict[str, Any], sources: dict[str, str],
                        curve: list[CurvePoint], curve_source: str | None) -> tuple[list[CurvePoint], str | None]:
    """Intake's hook: what the submission's notebooks claim fills the keys nothing above them gave
    (`values`, `sources`: updated), and their curve stands where no log gave one."""
    for nb in (f for f in files if f.suffix.lower() == ".ipynb"):
        found = notebook_claims(folder / nb, nb.as_posix())
        for k, v in found.values.items():
            if k not in values:
                values[k], sources[k] = (int(v) if k == "params" else v), found.sources[k]
        if found.curve and not curve:
            curve, curve_source = [CurvePoint(**p) for p in found.curve], found.curve_source
    return curve, curve_source


# --- the model module ----------------------------------------------------------------------------------

# calls allowed where a definition runs them at once (decorators, defaults, class bodies, constants)
SAFE_CALLS = {"dataclass", "dataclasses.dataclass", "field", "dataclasses.field", "staticmethod", "classmethod",
              "property", "torch.no_grad", "torch.inference_mode", "torch.jit.ignore", "torch.jit.export",
              "torch.jit.unused", "functools.wraps", "functools.lru_cache", "torch.device", "torch.cuda.is_available",
              "torch.backends.mps.is_available", "int", "float", "str", "bool", "tuple", "dict", "list", "math.sqrt",
              "math.log"}
_BUILTINS = set(dir(builtins))


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _no_calls(node: ast.AST | None) -> bool:
    return node is None or not any(isinstance(n, ast.Call) for n in ast.walk(node))


class _Checker:
    """Decides, statement by statement, what of a notebook may run when the model is built."""

    def __init__(self) -> None:
        self.defined: set[str] = set()
        self.star = False  # a kept `from x import *` may define any name

    def known(self, name: str) -> bool:
        return self.star or name in self.defined or name in _BUILTINS or name == "__name__"

    def expr(self, node: ast.AST | None) -> bool:
        """A value computed without running work: constants, known names, arithmetic, safe calls."""
        if node is None:
            return True
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.Name):
            return self.known(node.id)
        if isinstance(node, ast.Attribute):
            return self.expr(node.value)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return all(self.expr(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return all(self.expr(k) and self.expr(v) for k, v in zip(node.keys, node.values))
        if isinstance(node, ast.UnaryOp):
            return self.expr(node.operand)
        if isinstance(node, ast.BinOp):
            return self.expr(node.left) and self.expr(node.right)
        if isinstance(node, ast.BoolOp):
            return all(self.expr(v) for v in node.values)
        if isinstance(node, ast.Compare):
            return self.expr(node.left) and all(self.expr(c) for c in node.comparators)
        if isinstance(node, ast.IfExp):
            return self.expr(node.test) and self.expr(node.body) and self.expr(node.orelse)
        if isinstance(node, ast.Subscript):  # annotations: Optional[int], dict[str, int]
            return self.expr(node.value) and self.expr(node.slice)
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            return name in SAFE_CALLS and self.expr(node.func) \
                and all(self.expr(a) for a in node.args) and all(self.expr(k.value) for k in node.keywords)
        return False

    def signature(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
        a = node.args
        defaults = [*a.defaults, *(d for d in a.kw_defaults if d is not None)]
        args = [*a.posonlyargs, *a.args, *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x is not None)]
        # annotations run at definition unless `from __future__ import annotations`: no calls in them
        notes = [x.annotation for x in args if x.annotation is not None] + [node.returns]
        return all(self.expr(d) for d in defaults) and all(self.expr(d) for d in node.decorator_list) \
            and all(_no_calls(n) for n in notes)

    def class_body(self, body: list[ast.stmt]) -> bool:
        for s in body:
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not self.signature(s):
                    return False
            elif isinstance(s, ast.ClassDef):
                if not (all(self.expr(b) for b in s.bases) and self.class_body(s.body)):
                    return False
            elif isinstance(s, ast.AnnAssign):
                if not (self.expr(s.value) and _no_calls(s.annotation)):
                    return False
            elif isinstance(s, ast.Assign):
                if not self.expr(s.value):
                    return False
            elif not (isinstance(s, ast.Pass) or isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)):
                return False
        return True

    def statement(self, s: ast.stmt) -> str | None:
        """None where `s` may be kept (and its names are then known), else why not."""
        if isinstance(s, (ast.Import, ast.ImportFrom)):
            if isinstance(s, ast.ImportFrom) and any(a.name == "*" for a in s.names):
                self.star = True
            self.defined |= {(a.asname or a.name).split(".")[0] for a in s.names if a.name != "*"}
            return None
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not self.signature(s):
                return "its decorators or defaults run code"
            self.defined.add(s.name)
            return None
        if isinstance(s, ast.ClassDef):
            if not all(self.expr(b) for b in [*s.bases, *(k.value for k in s.keywords), *s.decorator_list]):
                return "its bases or decorators run code or use names the kept cells do not define"
            if not self.class_body(s.body):
                return "its class body runs code"
            self.defined.add(s.name)
            return None
        if isinstance(s, (ast.Assign, ast.AnnAssign)):
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            names = [n for t in targets for n in (t.elts if isinstance(t, ast.Tuple) else [t])]
            if not all(isinstance(n, ast.Name) for n in names):
                return "it assigns to something other than a name"
            if not self.expr(s.value) or isinstance(s, ast.AnnAssign) and not _no_calls(s.annotation):
                return "it computes its value by running code"
            self.defined |= {n.id for n in names}
            return None
        if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant):
            return None  # a docstring
        if isinstance(s, ast.Pass):
            return None
        return "it runs code (a call, a loop or a condition at top level)"


@dataclass(frozen=True)
class ModuleSource:
    text: str  # the module's source
    kept: tuple[int, ...]  # cells (numbers) of which something was kept
    left_out: tuple[str, ...]  # "cell 7: `train(model)` (it runs code ...)", one per statement left out
    unset: dict[str, str] = field(default_factory=dict)  # a name only left-out statements assign -> the first


def _without_magics(source: str) -> str:
    """IPython's `%line` magics and `!shell` lines blanked (kept as empty lines: line numbers stay)."""
    return "\n".join("" if re.match(r"^\s*[%!]", line) else line for line in source.split("\n"))


def model_module(text: str, name: str = "notebook") -> ModuleSource:
    """The notebook's imports, definitions and constants as one module's source, cell by cell. Each
    import is guarded: a package the notebook's machine had (google.colab) and this one lacks is
    noted in `__harness_missing__` and the rest still imports."""
    checker = _Checker()
    parts = ["__harness_missing__ = []\n"]
    future: list[str] = []
    kept: list[int] = []
    left_out: list[str] = []
    unset: dict[str, str] = {}
    for cell in read_cells(text, name):
        if cell.kind != "code" or not cell.source.strip():
            continue
        if cell.source.lstrip().startswith("%%"):  # %%time, %%writefile, %%bash: the whole cell is the magic's
            left_out.append(f"cell {cell.number}: a %% cell magic")
            continue
        source = _without_magics(cell.source)
        try:
            tree = ast.parse(source)
        except SyntaxError as e:
            left_out.append(f"cell {cell.number}: not Python ({e.msg}, line {e.lineno})")
            continue
        chunks = []
        for s in tree.body:
            why = checker.statement(s)
            # unparsed, not cut from the text: `x = 1; train()` on one line keeps only `x = 1`
            code = ast.unparse(s)
            if why is not None:
                shown = next((line for line in code.splitlines() if not line.startswith("@")), code)
                left_out.append(f"cell {cell.number}: `{shown[:60]}` ({why})")
                for n in ast.walk(s):  # what it would have defined: the hint for a NameError later
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                        unset.setdefault(n.id, left_out[-1])
                continue
            if isinstance(s, ast.ImportFrom) and s.module == "__future__":
                future.append(code + "\n")  # must open the module, and cannot fail
            elif isinstance(s, (ast.Import, ast.ImportFrom)):
                chunks.append(f"try:\n    {code}\nexcept ImportError as _e:\n    __harness_missing__.append(str(_e))\n")
            else:
                chunks.append(code + "\n")
        if chunks:
            kept.append(cell.number)
            parts.append(f"# --- cell {cell.number}\n" + "".join(chunks))
    unset = {k: v for k, v in unset.items() if k not in checker.defined}
    return ModuleSource("".join(future) + "\n".join(parts), tuple(kept), tuple(left_out), unset)
