"""Claims: what a student says their model scored, and where each value was read.

In order of precedence: the `[claims]` table of `submission.toml`; what the training code stored with
the weights (nanoGPT's `best_val_loss`, build-nanogpt's `val_loss`, nanochat's `val_bpb` in the
`meta_XXXXXX.json` beside `model_XXXXXX.pt`); the training log (its last row, and its curve: see
`harness.intake.logs`); a notebook's printed outputs and results tables (`harness.intake.notebook`); else,
marked best-effort, the tables and sentences of the student's report.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.intake.logs import CurvePoint, curve_from_log, number
from harness.intake.notebook import add_notebook_claims

CLAIM_KEYS = ("val_loss", "val_ppl", "val_bpb", "train_loss", "train_ppl", "params")
LOG_SUFFIXES = (".csv", ".json", ".jsonl")
# What training code stores beside the weights, in the order they are looked for: key -> claim.
CHECKPOINT_CLAIMS = (("best_val_loss", "val_loss"), ("val_loss", "val_loss"), ("val_bpb", "val_bpb"))
_NANOCHAT_MODEL = re.compile(r"^model_(\d+)\.pt$")
MAX_META_BYTES = 1 << 20


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


# --- claims from submission.toml and logs ------------------------------------------------------


def _toml_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise HarnessError("submission-invalid", f"submission.toml: {where} must be a finite number, not {value!r}")
    return float(value)


def gather_claims(folder: Path | None, files: tuple[Path, ...], table: dict[str, Any], log_name: Any,
                  checkpoint: Path | None) -> Claims:
    """Claims from the `[claims]` table of submission.toml (`table`), then from the training logs in `folder`
    (the one `log_name` names, else every log-like file), each value marked with where it was read."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for k in CLAIM_KEYS:
        if k in table:
            v = _toml_number(table[k], f"[claims] {k}")
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
        curve, curve_source = add_notebook_claims(folder, files, values, sources, curve, curve_source)
    return Claims(**values, sources=sources, curve=tuple(curve), curve_source=curve_source)


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
            value = number(holder.get(key)) if not isinstance(holder.get(key), str) else None
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
            nums = [number(c) for c in ncells]
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
