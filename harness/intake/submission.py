"""Submissions: find them in a folder, read `submission.toml`, and gather what the student claimed.

A class folder holds one entry per student: `DIR/<id>/`, `DIR/<id>.pt` (or another weights file),
`DIR/<id>.zip`, or the flat files of an LMS bulk download (`lastname_firstname_12345_67890_file.pt`,
grouped by student). Claims come from `submission.toml`, else from what the training code stored with
the weights (nanoGPT's `best_val_loss`, build-nanogpt's `val_loss`, nanochat's `val_bpb` in the
`meta_XXXXXX.json` beside `model_XXXXXX.pt`), else from the training log (last row), else, marked
best-effort, from the tables and sentences of the student's report. Each value records where it was read.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
LOG_SUFFIXES = (".csv", ".json", ".jsonl")
REPORT_SUFFIXES = (".md", ".txt", ".pdf")
FAMILIES = ("gpt", "mlm")
CLAIM_KEYS = ("val_loss", "val_ppl", "val_bpb", "train_loss", "train_ppl", "params")
# What training code stores beside the weights, in the order they are looked for: key -> claim.
CHECKPOINT_CLAIMS = (("best_val_loss", "val_loss"), ("val_loss", "val_loss"), ("val_bpb", "val_bpb"))
_NANOCHAT_MODEL = re.compile(r"^model_(\d+)\.pt$")
MAX_META_BYTES = 1 << 20

# LMS bulk downloads. Canvas: name[_LATE]_userid_submissionid_file; Moodle: Full Name_id_assignsubmission_file_file
_CANVAS = re.compile(r"^(?P<student>[a-z][a-z0-9_-]*?)(?:_late)?_(?P<uid>\d+)_(?P<sid>\d+)_(?P<file>.+)$", re.IGNORECASE)
_MOODLE = re.compile(r"^(?P<student>.+?)_(?P<uid>\d+)_assignsubmission_(?:file|onlinetext)_(?P<file>.*)$")


@dataclass(frozen=True)
class SubmissionRef:
    """One student's entry in a class folder, before anything is read."""

    id: str
    paths: tuple[Path, ...]  # a folder, a single file, a zip, or the grouped files of a bulk download
    # the files whose contents key its cached measurement; None: every file under `paths`
    key_paths: tuple[Path, ...] | None = None


@dataclass(frozen=True)
class CurvePoint:
    step: float  # epoch or step, as the log counts
    axis: str  # "epoch" | "step"
    train_loss: float | None = None
    val_loss: float | None = None
    train_ppl: float | None = None
    val_ppl: float | None = None


@dataclass(frozen=True)
class Claims:
    """What the student reported; `sources` says where each value was read."""

    val_loss: float | None = None
    val_ppl: float | None = None
    val_bpb: float | None = None  # bits per byte (nanochat's metric)
    train_loss: float | None = None
    train_ppl: float | None = None
    params: int | None = None
    sources: dict[str, str] = field(default_factory=dict)
    curve: tuple[CurvePoint, ...] = ()
    curve_source: str | None = None

    @property
    def has_validation(self) -> bool:
        return self.val_loss is not None or self.val_ppl is not None or self.val_bpb is not None

    @property
    def any(self) -> bool:
        return any(getattr(self, k) is not None for k in CLAIM_KEYS)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in CLAIM_KEYS}
        d["sources"] = dict(sorted(self.sources.items()))
        d["curve_source"] = self.curve_source
        d["curve"] = [asdict(p) for p in self.curve]
        return d


@dataclass(frozen=True)
class Submission:
    id: str
    root: Path
    student: str
    files: tuple[Path, ...]  # every file in the submission, relative to root, in name order
    weights: Path | None  # relative to root
    family: str | None
    tokenizer: str | None
    model: dict[str, Any]  # [model] of submission.toml: what weights cannot tell
    code: str | None  # "file.py:Name": custom model code, run only in the sandbox
    claims: Claims
    report: Path | None
    warnings: tuple[str, ...] = ()


# --- discovery -----------------------------------------------------------------------------------


def safe_id(text: str) -> str:
    """`text` as an id that is also a safe file name: discovery's ids, the exports' folders."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "submission"


def discover(directory: Path) -> list[SubmissionRef]:
    """The submissions in a class folder, in id order. Hidden files and `submission.toml`-less stray
    files that are not weights or zips are ignored."""
    if not directory.is_dir():
        raise HarnessError("submissions-missing", f"{directory} is not a folder of submissions")
    refs: dict[str, list[Path]] = {}
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            refs.setdefault(safe_id(entry.name), []).append(entry)
            continue
        m = _CANVAS.match(entry.name) or _MOODLE.match(entry.name)
        if m:
            refs.setdefault(safe_id(f"{m['student']}_{m['uid']}"), []).append(entry)
        elif entry.suffix.lower() in WEIGHT_SUFFIXES + (".zip",):
            refs.setdefault(safe_id(entry.stem), []).append(entry)
    if not refs:
        raise HarnessError("submissions-empty", f"{directory} holds no submissions (folders, weights files or zips)")
    return [SubmissionRef(i, tuple(p)) for i, p in sorted(refs.items())]


def lms_file_name(path: Path) -> str:
    """A bulk-download file's own name: `smith_jane_123_456_model.pt` → `model.pt`."""
    m = _CANVAS.match(path.name) or _MOODLE.match(path.name)
    return m["file"] if m else path.name


# --- reading one submission ----------------------------------------------------------------------


def _list_files(root: Path) -> tuple[Path, ...]:
    if root.is_file():
        return (Path(root.name),)
    files = [p.relative_to(root) for p in root.rglob("*") if (p.is_file() or p.is_symlink()) and not any(
        part.startswith(".") or part == "__pycache__" for part in p.relative_to(root).parts)]
    return tuple(sorted(files, key=lambda p: p.as_posix()))


def _weights_candidates(root: Path, files: tuple[Path, ...]) -> list[Path]:
    cands = [f for f in files if f.suffix.lower() in WEIGHT_SUFFIXES]
    # a Hugging Face folder counts as one candidate: the folder holding config.json beside its weights
    hf_dirs = sorted({f.parent for f in files if f.name == "config.json"
                      and any(g.parent == f.parent and g.suffix.lower() in WEIGHT_SUFFIXES for g in files)})
    for d in hf_dirs:
        cands = [c for c in cands if c.parent != d] + [d]
    return sorted(cands, key=lambda p: p.as_posix())


def _toml(root: Path) -> dict[str, Any]:
    path = root / "submission.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise HarnessError("submission-invalid", f"submission.toml is not valid TOML ({e})") from None


def _table(data: dict, name: str, allowed: tuple[str, ...] | None) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise HarnessError("submission-invalid", f"submission.toml: [{name}] must be a table")
    if allowed is not None:
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise HarnessError(
                "submission-invalid",
                f"submission.toml: [{name}] has no key {unknown[0]!r}; it allows: {', '.join(allowed)}",
            )
    return table


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise HarnessError("submission-invalid", f"submission.toml: {where} must be a finite number, not {value!r}")
    return float(value)


def read_submission(ref_id: str, root: Path) -> Submission:
    """Read a submission whose files lie under `root` (a folder, or a single weights file)."""
    files = _list_files(root)
    folder = root if root.is_dir() else root.parent
    data = _toml(folder) if root.is_dir() else {}
    unknown = sorted(set(data) - {"submission", "model", "claims"})
    if unknown:
        raise HarnessError("submission-invalid", f"submission.toml: [{unknown[0]}] is not a section; "
                           "use [submission], [model], [claims]")
    sub = _table(data, "submission", ("student", "family", "checkpoint", "tokenizer"))
    model = _table(data, "model", None)
    claims_t = _table(data, "claims", CLAIM_KEYS + ("log",))
    warnings: list[str] = []

    family = sub.get("family")
    if family is not None and family not in FAMILIES:
        raise HarnessError("submission-invalid", f"submission.toml: family = {family!r}; use gpt or mlm")

    if root.is_file():
        weights: Path | None = Path(root.name)
    elif "checkpoint" in sub:
        weights = Path(str(sub["checkpoint"]))
        if weights.is_absolute() or ".." in weights.parts:
            raise HarnessError("submission-invalid", "submission.toml: checkpoint must be a path inside the submission")
        if not (folder / weights).exists():
            raise HarnessError("submission-invalid", f"submission.toml names checkpoint {weights}, which is not there")
    else:
        cands = _weights_candidates(folder, files)
        weights = cands[0] if cands else None
        if len(cands) > 1:
            warnings.append(f"several weights files ({', '.join(c.as_posix() for c in cands)}); graded "
                            f"{weights.as_posix()} — name one with `checkpoint` in submission.toml")

    code = model.get("code")
    if code is not None and (not isinstance(code, str) or ":" not in code):
        raise HarnessError("submission-invalid", "submission.toml: [model] code must look like \"model.py:ClassName\"")

    log_name = claims_t.get("log")
    claims = gather_claims(folder if root.is_dir() else None, files, claims_t, log_name, weights)
    report = next((f for f in files if f.suffix.lower() in REPORT_SUFFIXES and f.name.lower() not in
                   ("requirements.txt",) and not f.name.startswith("vocab")), None)
    if not claims.any and report is not None and root.is_dir():
        claims = claims_from_report(folder / report, base=claims)
    return Submission(
        id=ref_id,
        root=folder,
        student=str(sub.get("student") or ref_id),
        files=files,
        weights=weights,
        family=family,
        tokenizer=sub.get("tokenizer"),
        model={k: v for k, v in model.items()},
        code=code,
        claims=claims,
        report=report,
        warnings=tuple(warnings),
    )


# --- claims from logs ----------------------------------------------------------------------------

_COLUMNS = {
    "step": ("step", "steps", "iter", "iteration", "global_step", "batch"),
    "epoch": ("epoch", "epochs"),
    "train_loss": ("train_loss", "training_loss", "loss", "train loss", "training loss", "final_loss", "final loss",
                   "trainloss"),
    "val_loss": ("val_loss", "valid_loss", "validation_loss", "eval_loss", "dev_loss", "val loss", "validation loss",
                 "test_loss"),
    "train_ppl": ("train_ppl", "train_perplexity", "training_perplexity", "perplexity", "ppl", "train ppl",
                  "training perplexity", "final_ppl", "final_perplexity", "final perplexity"),
    "val_ppl": ("val_ppl", "val_perplexity", "valid_ppl", "validation_perplexity", "eval_ppl", "eval_perplexity",
                "val perplexity", "validation perplexity"),
    "run": ("experiment", "name", "run", "config"),
}


def _column_map(headers: list[str]) -> dict[str, str]:
    norm = {h: re.sub(r"\s+", " ", h.strip().lower().replace("-", "_")) for h in headers}
    found: dict[str, str] = {}
    for key, names in _COLUMNS.items():
        for h, n in norm.items():
            if n in names or n.replace(" ", "_") in names:
                found.setdefault(key, h)
                break
    return found


def _float(value: Any) -> float | None:
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


def _rows_of_log(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    if path.suffix == ".jsonl":
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return []
    if isinstance(value, list):
        return [r for r in value if isinstance(r, dict)]
    if isinstance(value, dict):
        lists = {k: v for k, v in value.items() if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)}
        if lists:  # {"train_loss": [...], "val_loss": [...]}: columns of equal length
            n = max(len(v) for v in lists.values())
            return [{k: (v[i] if i < len(v) else None) for k, v in lists.items()} for i in range(n)]
        for key in ("history", "log", "metrics", "log_history"):
            if isinstance(value.get(key), list):
                return [r for r in value[key] if isinstance(r, dict)]
        return [value]
    return []


def curve_from_log(path: Path, checkpoint: Path | None = None) -> tuple[list[CurvePoint], dict[str, float]]:
    """A training log's curve, and the final values it claims. A sweep table (one row per run) gives the
    row of the run whose name the checkpoint's file name contains, else its last row."""
    rows = _rows_of_log(path)
    if not rows:
        return [], {}
    cols = _column_map(list({k for r in rows for k in r}))
    metric_keys = [k for k in ("train_loss", "val_loss", "train_ppl", "val_ppl") if k in cols]
    if not metric_keys:
        return [], {}
    if "run" in cols and checkpoint is not None:
        stem = checkpoint.stem.lower()
        named = [r for r in rows if str(r.get(cols["run"], "")).strip().lower() and
                 str(r[cols["run"]]).strip().lower().replace("=", "") in stem.replace("=", "")]
        rows = named[-1:] or rows[-1:]
        return [], {k: v for k in metric_keys if (v := _float(rows[0].get(cols[k]))) is not None}
    axis = "epoch" if "epoch" in cols else "step"
    points = []
    for i, r in enumerate(rows):
        x = _float(r.get(cols[axis])) if axis in cols else float(i + 1)
        values = {k: _float(r.get(cols[k])) for k in metric_keys}
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


def gather_claims(folder: Path | None, files: tuple[Path, ...], table: dict[str, Any], log_name: Any,
                  checkpoint: Path | None) -> Claims:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for k in CLAIM_KEYS:
        if k in table:
            v = _number(table[k], f"[claims] {k}")
            values[k] = int(v) if k == "params" else v
            sources[k] = "submission.toml"
    curve: list[CurvePoint] = []
    curve_source = None
    if folder is not None:
        if log_name is not None:
            if not isinstance(log_name, str) or not (folder / log_name).is_file():
                raise HarnessError("submission-invalid", f"submission.toml names log {log_name!r}, which is not there")
            logs = [Path(log_name)]
        else:
            logs = [f for f in files if f.suffix.lower() in LOG_SUFFIXES and f.name not in
                    ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
                    and not f.name.endswith((".index.json", "vocab.json"))]
        for log in logs:
            points, final = curve_from_log(folder / log, checkpoint)
            if not points and not final:
                continue
            if points and not curve:
                curve, curve_source = points, log.as_posix()
            for k, v in final.items():
                if k not in values:
                    values[k], sources[k] = v, f"log {log.as_posix()}"
        curve, curve_source = _with_notebooks(folder, files, values, sources, curve, curve_source)
    return Claims(**values, sources=sources, curve=tuple(curve), curve_source=curve_source)


def _with_notebooks(folder: Path, files: tuple[Path, ...], values: dict[str, Any], sources: dict[str, str],
                    curve: list[CurvePoint], curve_source: str | None) -> tuple[list[CurvePoint], str | None]:
    """What the notebooks' outputs and markdown tables claim, below submission.toml and the logs (filled
    into `values` and `sources`), and their curve where no log gave one."""
    from harness.intake.notebook import notebook_claims

    for nb in (f for f in files if f.suffix.lower() == ".ipynb"):
        found = notebook_claims(folder / nb, nb.as_posix())
        for k, v in found.values.items():
            if k not in values:
                values[k], sources[k] = (int(v) if k == "params" else v), found.sources[k]
        if found.curve and not curve:
            curve, curve_source = [CurvePoint(**p) for p in found.curve], found.curve_source
    return curve, curve_source


# --- claims stored with the weights --------------------------------------------------------------


def _meta_beside(folder: Path | None, weights: Path | None) -> tuple[dict[str, Any], str | None]:
    """nanochat's `meta_XXXXXX.json` beside `model_XXXXXX.pt` (its checkpoint_manager writes the metrics
    there, the weights file is a bare state dict), and its name."""
    if folder is None or weights is None:
        return {}, None
    m = _NANOCHAT_MODEL.match(weights.name)
    meta = weights.parent / f"meta_{m[1]}.json" if m else None
    path = folder / meta if meta is not None else None
    if path is None or not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_META_BYTES:
        return {}, None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}, None
    return (value, meta.as_posix()) if isinstance(value, dict) else ({}, None)


def checkpoint_claims(meta: dict[str, Any] | None, weights: Path | None, folder: Path | None = None
                      ) -> dict[str, tuple[float, str]]:
    """Validation metrics the training code stored with the weights: claim -> (value, where it was read).
    `meta` is the checkpoint's plain top-level metadata (`RawCheckpoint.meta`)."""
    found: dict[str, tuple[float, str]] = {}
    beside, beside_name = _meta_beside(folder, weights)
    name = weights.name if weights is not None else "the checkpoint"
    for holder, where in ((meta or {}, name), (beside, beside_name)):
        for key, claim in CHECKPOINT_CLAIMS:
            value = _float(holder.get(key)) if not isinstance(holder.get(key), str) else None
            # (nanoGPT starts best_val_loss at 1e9: such a value was never measured)
            if claim not in found and value is not None and 0 < value < 1e6:
                found[claim] = (value, f"{where}: {key}")
    return found


def with_checkpoint_claims(claims: Claims, found: dict[str, tuple[float, str]]) -> Claims:
    """`claims` with what the checkpoint stored: below submission.toml, above logs and reports."""
    values = {k: getattr(claims, k) for k in CLAIM_KEYS}
    sources = dict(claims.sources)
    for k, (v, where) in sorted(found.items()):
        if values[k] is None or sources.get(k) != "submission.toml":
            values[k], sources[k] = v, where
    return Claims(**values, sources=sources, curve=claims.curve, curve_source=claims.curve_source)


# --- claims from a report (best effort) ----------------------------------------------------------

_NUM = r"~?\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s*([KkMm])?"


def _to_number(num: str, suffix: str | None) -> float:
    v = float(num.replace(",", ""))
    return v * {"k": 1e3, "m": 1e6}.get((suffix or "").lower(), 1.0)


def report_text(path: Path) -> str:
    if path.suffix.lower() == ".pdf":
        try:
            from pypdf import PdfReader

            return "\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)
        except Exception:
            return ""
    return path.read_text(encoding="utf-8", errors="replace")


def _table_claims(lines: list[str]) -> dict[str, float]:
    """The last numeric row of the last table whose header names losses or perplexities."""
    found: dict[str, float] = {}
    for i, line in enumerate(lines):
        cells = [c.strip() for c in re.split(r"\t|\|", line) if c.strip()]
        if len(cells) < 2 or not any(re.search(r"loss|perplexity|ppl", c, re.I) for c in cells):
            continue
        header = [c.lower() for c in cells]
        rows = []
        for nxt in lines[i + 1 :]:
            ncells = [c.strip() for c in re.split(r"\t|\|", nxt) if c.strip()]
            if not ncells or set("".join(ncells)) <= set("-: "):
                if rows:
                    break
                continue
            nums = [_float(c) for c in ncells]
            if len(ncells) != len(header) or nums[0] is None and not re.match(r"^\d", ncells[0]):
                break
            rows.append(nums)
        if not rows:
            continue
        last = rows[-1]
        claims: dict[str, float] = {}
        for h, v in zip(header, last):
            if v is None:
                continue
            val = "val" in h or "valid" in h
            if "loss" in h:
                claims["val_loss" if val else "train_loss"] = v
            elif "perplexity" in h or "ppl" in h:
                claims["val_ppl" if val else "train_ppl"] = v
        if claims:
            found = claims
    return found


_SENTENCES = [
    ("val_loss", rf"(?:final\s+)?validation\s+loss\s*[:=]?\s*{_NUM}"),
    ("train_loss", rf"(?:final\s+)?training\s+loss\s*[:=]?\s*{_NUM}"),
    ("val_ppl", rf"validation\s+perplexity\s*[:=]?\s*{_NUM}"),
    ("train_ppl", rf"training\s+perplexity\s*[:=]?\s*{_NUM}"),
    ("params", rf"(?:total\s+parameters|parameter\s+count|parameters)\s*[:=|]?\s*{_NUM}"),
    ("params", rf"{_NUM}\s*(?:million\s+)?(?:trainable\s+)?param(?:eter)?s"),
]


def claims_from_report(path: Path, base: Claims | None = None) -> Claims:
    """Numbers read from a report's tables and sentences: best effort, and marked so."""
    text = report_text(path)
    lines = text.splitlines()
    values = _table_claims(lines)
    for key, pattern in _SENTENCES:
        if key in values:
            continue
        m = re.search(pattern, text, re.IGNORECASE)
        if m:
            num, suffix = m.group(1), m.group(2)
            v = _to_number(num, suffix)
            if key == "params" and "million" in m.group(0).lower() and not suffix:
                v *= 1e6
            if key == "params" and v < 1000:
                continue  # "2 layers", not a parameter count
            values[key] = v
    if "val_ppl" not in values and "val_loss" in values:  # "Validation Loss: ~6.48 / Perplexity: ~657"
        m = re.search(rf"(?<![a-z] )perplexity\s*[:=]\s*{_NUM}", text, re.IGNORECASE)
        if m:
            values["val_ppl"] = _to_number(m.group(1), m.group(2))
    base = base or Claims()
    merged = {k: getattr(base, k) for k in CLAIM_KEYS}
    sources = dict(base.sources)
    for k, v in values.items():
        if merged.get(k) is None:
            merged[k] = int(v) if k == "params" else v
            sources[k] = f"report {path.name} (best effort)"
    return Claims(**merged, sources=sources, curve=base.curve, curve_source=base.curve_source)
