"""Training logs: the one reader of the tables that training code writes, and the one table of their column names.

A log is a CSV or TSV (`metrics.csv`, `log.csv`, a sweep's `results.csv`), a JSON Lines file (one row a
line) or a JSON file (a list of rows, `{"history": [...]}`, or columns of equal length). `read_rows`
reads any of them into rows with normalised headers and typed cells; `find_columns` says which column
holds what (`COLUMNS`: students, nanoGPT, Hugging Face's Trainer and `harness reference train` name the
same quantity differently). Intake reads claims and a curve from them (`curve_from_log`), grading the
reference run's curve, and `harness report compare` curves and sweep tables (`curve_rows`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from harness.errors import HarnessError

# Canonical name -> the headers (normalised: lower case, `_` for spaces and dashes) that mean it, first
# preferred where a log holds several.
COLUMNS = {
    "step": ("step", "steps", "iter", "iteration", "global_step", "batch"),
    "epoch": ("epoch", "epochs"),
    "tokens": ("tokens", "tokens_seen", "n_tokens"),
    "lr": ("lr", "learning_rate"),
    "train_loss": ("train_loss", "training_loss", "loss", "final_train_loss", "final_loss", "trainloss"),
    "val_loss": ("val_loss", "valid_loss", "validation_loss", "eval_loss", "dev_loss", "final_val_loss", "test_loss"),
    "train_ppl": ("train_ppl", "train_perplexity", "training_perplexity", "perplexity", "ppl", "final_train_ppl",
                  "final_ppl", "final_perplexity"),
    "val_ppl": ("val_ppl", "val_perplexity", "valid_ppl", "validation_perplexity", "eval_ppl", "eval_perplexity",
                "final_val_ppl"),
    "run": ("experiment", "name", "run", "run_name", "config"),  # a sweep table: one row per run
}
METRICS = ("train_loss", "val_loss", "train_ppl", "val_ppl")


@dataclass(frozen=True)
class CurvePoint:
    step: float  # epoch or step, as the log counts
    axis: str  # "epoch" | "step"
    train_loss: float | None = None
    val_loss: float | None = None
    train_ppl: float | None = None
    val_ppl: float | None = None


def normalise_header(h: str) -> str:
    return re.sub(r"[\s\-]+", "_", h.strip().lower())


def find_columns(headers: Iterable[str]) -> dict[str, str]:
    """{canonical name: the header holding it} for the (normalised) headers of a log."""
    present = set(headers)
    found: dict[str, str] = {}
    for canon, names in COLUMNS.items():
        hit = next((n for n in names if n in present), None)
        if hit:
            found[canon] = hit
    return found


def cell(v: Any) -> Any:
    """A CSV cell as a number where it is one (an int where written as one), a bool, or text."""
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return v
    text = str(v).strip()
    if text == "":
        return None
    try:
        f = float(text.replace(",", "")) if re.fullmatch(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?", text, re.I) else None
    except ValueError:
        f = None
    if f is None:
        return {"true": True, "false": False}.get(text.lower(), text)
    return int(f) if f.is_integer() and "." not in text and "e" not in text.lower() else f


def number(value: Any) -> float | None:
    """A claimed value as a finite float (`~6.5`, `1,234` and numbers as text too), else None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    text = str(value).strip().replace(",", "").lstrip("~≈")
    try:
        f = float(text)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a log, {normalised header: value}, text typed by `cell`: a .csv or .tsv as CSV (tabs or
    commas, whichever it holds more of), a .jsonl one row a line, anything else as JSON. A file that is no
    table of any known shape gives no rows."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as e:
        raise HarnessError("log-unreadable", f"cannot read {path}: {e}") from None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        dialect = csv.excel_tab if text.count("\t") > text.count(",") else csv.excel
        rows = list(csv.DictReader(io.StringIO(text), dialect=dialect))
    elif suffix == ".jsonl":
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    else:
        rows = _json_rows(text)
    return [{normalise_header(k): cell(v) if isinstance(v, str) else v for k, v in row.items() if isinstance(k, str)}
            for row in rows]


def _json_rows(text: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return []
    if isinstance(value, list):
        return [r for r in value if isinstance(r, dict)]
    if isinstance(value, dict):
        lists = {k: v for k, v in value.items()
                 if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)}
        if lists:  # {"train_loss": [...], "val_loss": [...]}: columns of equal length
            n = max(len(v) for v in lists.values())
            return [{k: (v[i] if i < len(v) else None) for k, v in lists.items()} for i in range(n)]
        for key in ("history", "log", "metrics", "log_history"):
            if isinstance(value.get(key), list):
                return [r for r in value[key] if isinstance(r, dict)]
        return [value]
    return []


def curve_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that report a loss or perplexity, by canonical name (step, epoch, tokens, lr and the metrics;
    a value that is no finite number as None), as `read_rows` typed them."""
    cols = {k: v for k, v in find_columns({k for r in rows for k in r}).items() if k != "run"}
    out = []
    for r in rows:
        p = {canon: (r.get(col) if _finite(r.get(col)) else None) for canon, col in cols.items()}
        if any(p.get(k) is not None for k in METRICS):
            out.append(p)
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def curve_from_log(path: Path, checkpoint: Path | None = None) -> tuple[list[CurvePoint], dict[str, float]]:
    """A training log's curve, and the final values it claims. A sweep table (one row per run) gives the
    row of the run whose name the checkpoint's file name contains, else its last row."""
    rows = read_rows(path)
    if not rows:
        return [], {}
    cols = find_columns({k for r in rows for k in r})
    metric_keys = [k for k in METRICS if k in cols]
    if not metric_keys:
        return [], {}
    if "run" in cols and checkpoint is not None:
        stem = checkpoint.stem.lower().replace("=", "")
        names = ["" if r.get(cols["run"]) is None else str(r[cols["run"]]).strip().lower() for r in rows]
        named = [r for r, name in zip(rows, names) if name and name.replace("=", "") in stem]
        rows = named[-1:] or rows[-1:]
        return [], {k: v for k in metric_keys if (v := number(rows[0].get(cols[k]))) is not None}
    axis = "epoch" if "epoch" in cols else "step"
    points = []
    for i, r in enumerate(rows):
        x = number(r.get(cols[axis])) if axis in cols else float(i + 1)
        values = {k: number(r.get(cols[k])) for k in metric_keys}
        if x is None or all(v is None for v in values.values()):
            continue
        points.append(CurvePoint(step=x, axis=axis, **values))
    final: dict[str, float] = {}
    for k in metric_keys:  # the last value each column reports
        for p in reversed(points):
            if getattr(p, k) is not None:
                final[k] = getattr(p, k)
                break
    return points, final
