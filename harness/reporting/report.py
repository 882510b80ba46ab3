"""Reports: the grader's `results.json` rendered as PDFs a student, a grader or an instructor can read.

- `render_student_report`: one submission — verdict and score first, then the rubric with its reasons,
  the architecture, the metrics against claims, reference and baselines, the training curves, the
  findings with what they mean and how to fix them, and the provenance of every number.
- `render_class_report`: the class — leaderboard, distributions, size against perplexity, claims against
  measurements, findings counted, failures, similar weights (grader's copy).
- `render_comparison` with `load_run`/`load_runs`: runs of reference training, sweeps or submissions,
  overlaid.

HTML from Jinja2 templates (`harness/templates/`), figures as vector SVG (`report_figures`), PDF by
WeasyPrint. Text stays text; the running header carries the student id on every page; the same results
give the same PDF bytes (the document dates come from `results["generated"]`).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import io
import json
import logging
import math
import os
import re
import statistics
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from harness import __version__
from harness.reporting import figures as figs
from harness.errors import HarnessError
from harness.files import write_atomic
from harness.grading.findings import CATALOGUE
from harness.reporting.splits import private_notes, private_rows
from harness.sources import UNESTABLISHED

TEMPLATES = Path(__file__).resolve().parent / "templates"
DASH = "—"
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}

# --- number formats: one place, so the tests and the PDFs agree ------------------------------------


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_loss(x: Any) -> str:
    return f"{x:.3f}" if _finite(x) else DASH


def fmt_ppl(x: Any) -> str:
    """Perplexity: 2 decimals below 10, 1 below 100,000, none above."""
    if not _finite(x):
        return "∞" if isinstance(x, float) and x == math.inf else DASH
    if x < 10:
        return f"{x:.2f}"
    if x < 1e5:
        return f"{x:,.1f}"
    return f"{x:,.0f}"


def fmt_int(x: Any) -> str:
    return f"{int(round(x)):,}" if _finite(x) else DASH


def fmt_points(x: Any) -> str:
    if not _finite(x):
        return DASH
    return f"{x:.2f}".rstrip("0").rstrip(".")


def fmt_points_column(values: Sequence[Any]) -> list[str]:
    """Points of one table column with the same number of decimals (0 to 2), so they align."""
    decimals = 0
    for v in values:
        if _finite(v):
            text = f"{v:.2f}".rstrip("0")
            decimals = max(decimals, len(text.split(".")[1]) if "." in text else 0)
    return [f"{v:.{decimals}f}" if _finite(v) else DASH for v in values]


def fmt_num(x: Any) -> str:
    """A config value or metric of unknown kind."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 10000 else str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return DASH
        if x == int(x) and abs(x) < 1e15:
            return fmt_num(int(x))
        if abs(x) < 1e-3 or abs(x) >= 1e6:
            return f"{x:.3g}"
        return f"{x:.4g}"
    if x is None:
        return DASH
    return str(x)


def fmt_value(x: Any) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return fmt_int(x) if float(x).is_integer() else fmt_num(x)
    return DASH if x is None or x == "" else str(x)


def short(h: Any, n: int = 12) -> str:
    """A hash's first `n` characters; several (a class whose GPT and MLM data differ) each so, joined."""
    if isinstance(h, (list, tuple)):
        return " + ".join(short(x, n) for x in dict.fromkeys(h) if x) or DASH
    return str(h)[:n] if h else DASH


def _ln(x: Any) -> float | None:
    return math.log(x) if _finite(x) and x > 0 else None


def _exp(x: Any) -> float | None:
    return math.exp(x) if _finite(x) and x < 700 else None


# --- templates and PDF ---------------------------------------------------------------------------


def _css_string(value: Any) -> Markup:
    """A CSS string literal that is also safe inside <style>."""
    text = str(value)
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "<" or ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):x} ")
        else:
            out.append(ch)
    return Markup('"' + "".join(out) + '"')


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["css_string"] = _css_string
    return env


@functools.lru_cache(maxsize=1)
def _css() -> Markup:
    return Markup((TEMPLATES / "report.css").read_text(encoding="utf-8"))


def _created(results: dict) -> str:
    """The document date: results["generated"] (a date or ISO timestamp), else today."""
    value = str(results.get("generated") or "").strip()
    try:
        if len(value) == 10:
            return dt.date.fromisoformat(value).isoformat()
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return dt.date.today().isoformat()


def _epoch(created: str) -> int:
    d = dt.datetime.fromisoformat(created if "T" in created else created + "T00:00:00")
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return int(d.timestamp())


@contextlib.contextmanager
def _source_date(created: str) -> Iterator[None]:
    """fontTools stamps the embedded font subsets with the time; SOURCE_DATE_EPOCH fixes it, so the same
    results give the same bytes. A value already set by the caller wins."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        yield
        return
    os.environ["SOURCE_DATE_EPOCH"] = str(max(0, _epoch(created)))
    try:
        yield
    finally:
        os.environ.pop("SOURCE_DATE_EPOCH", None)


def render_html(template: str, context: dict[str, Any]) -> str:
    return _env().get_template(template).render(**context)


class _QuietFontSubsetting(logging.Filter):
    """WeasyPrint warns on every font of every PDF where the optional HarfBuzz-Subset library is missing and
    it subsets with fontTools instead; the PDFs are the same, so the warning is noise in a batch."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "HarfBuzz-Subset" not in record.getMessage()


@functools.lru_cache(maxsize=1)
def _weasyprint():
    """WeasyPrint, imported on first use (it takes most of a second)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HarfBuzz-Subset.*", category=DeprecationWarning)
        import weasyprint
    logging.getLogger("weasyprint").addFilter(_QuietFontSubsetting())
    return weasyprint


def write_pdf(html: str, out_pdf: Path | str, created: str) -> Path:
    weasyprint = _weasyprint()
    with _source_date(created):
        data = weasyprint.HTML(string=html, base_url=str(TEMPLATES)).write_pdf()
    return write_atomic(Path(out_pdf), data)


def _figure(svg: str, alt: str) -> Markup:
    return Markup('<img class="figure" src="{}" alt="{}">').format(figs.data_uri(svg), alt)


def _page(results: dict, *, kind: str, title: str, header_right: str, footer: str, description: str) -> dict:
    course = results.get("course") or {}
    return {
        "kind": kind,
        "title": title,
        "author": f"harness {results.get('harness_version') or __version__}",
        "description": description,
        "version": __version__,
        "created": _created(results),
        "css": _css(),
        "header_left": course.get("name") or "harness",
        "header_right": header_right,
        "footer": footer,
    }


def _fingerprints(results: dict, checkpoint: str | None = None) -> str:
    parts = [f"course {short((results.get('course') or {}).get('fingerprint'))}",
             f"data {short((results.get('data') or {}).get('manifest_sha256'))}"]
    if checkpoint is not None:
        parts.append(f"checkpoint {short(checkpoint)}")
    parts.append(f"harness {results.get('harness_version') or __version__}")
    return "  ·  ".join(parts)


# --- shared views --------------------------------------------------------------------------------


def _finding_view(f: dict) -> dict:
    sev, title, explanation = CATALOGUE.get(f.get("code", ""), (f.get("severity", "info"), f.get("code", ""), ""))
    return {"code": f.get("code", ""), "severity": f.get("severity") or sev, "title": title,
            "message": f.get("message", ""), "explanation": explanation, "grader_only": bool(f.get("grader_only"))}


def _findings(sub: dict, grader: bool) -> list[dict]:
    shown = [f for f in sub.get("findings") or () if grader or not f.get("grader_only")]
    views = [_finding_view(f) for f in shown]
    return sorted(views, key=lambda v: SEVERITY_ORDER.get(v["severity"], 3))  # stable: keeps the grader's order


def _family(sub: dict) -> str:
    return (sub.get("model") or {}).get("family") or "gpt"


def _protocol_key(family: str) -> str:
    return "mlm" if family == "mlm" else "clm"


def _reference(results: dict, family: str) -> dict | None:
    ref = (results.get("reference") or {}).get(family)
    return ref if isinstance(ref, dict) else None


def _claimed_val_loss(claims: dict) -> float | None:
    if _finite(claims.get("val_loss")):
        return float(claims["val_loss"])
    return _ln(claims.get("val_ppl"))


def _claimed_train_loss(claims: dict) -> float | None:
    if _finite(claims.get("train_loss")):
        return float(claims["train_loss"])
    return _ln(claims.get("train_ppl"))


def _find_submission(results: dict, submission_id: str) -> dict:
    for sub in results.get("submissions") or ():
        if sub.get("id") == submission_id:
            return sub
    ids = ", ".join(s.get("id", "?") for s in results.get("submissions") or ()) or "none"
    raise HarnessError("report-invalid", f"results hold no submission {submission_id!r} (they hold: {ids})")


# --- the student report --------------------------------------------------------------------------

_ARCH = (
    ("n_layers", "Layers"),
    ("d_model", "Width (d_model)"),
    ("n_heads", "Attention heads"),
    ("d_ff", "Feed-forward width"),
    ("context", "Context (positions)"),
    ("vocab_size", "Vocabulary (outputs)"),
    ("params", "Parameters"),
    ("tied", "Tied embeddings"),
    ("norm", "Normalisation"),
    ("activation", "Activation"),
    ("positions", "Positions"),
)


@functools.lru_cache(maxsize=1)
def _default_course():
    from harness.course.config import load_course

    try:
        return load_course()
    except HarnessError:
        return None


def _requirements(results: dict, family: str, course: Any) -> dict[str, tuple[float, float]] | None:
    """The assignment's requirements for `family`: from the results where the grader recorded them, else
    the given course, else the packaged default course when its fingerprint is the results' one."""
    recorded = (results.get("course") or {}).get("requirements")
    if isinstance(recorded, dict):
        return {k: tuple(v) for k, v in (recorded.get(family) or {}).items()}
    if course is None:
        default = _default_course()
        if default is not None and default.fingerprint == (results.get("course") or {}).get("fingerprint"):
            course = default
    if course is None:
        return None
    return {k: tuple(v) for k, v in course.requirements.get(family, {}).items()}


def _range(lo: float, hi: float) -> str:
    return f"{fmt_value(lo)}–{fmt_value(hi)}"


def _architecture(results: dict, sub: dict, course: Any, codes: set[str]) -> dict:
    model = sub.get("model") or {}
    claims = sub.get("claims") or {}
    family = _family(sub)
    reqs = _requirements(results, family, course)
    sources = model.get("sources") or {}
    if not any(model.get(k) is not None for k, _ in _ARCH):
        return {"rows": [], "note": "The checkpoint was not recognised, so no architecture could be read from it."}
    rows = []
    for key, label in _ARCH:
        value = model.get(key)
        req = (reqs or {}).get(key)
        claimed = claims.get("params") if key == "params" else None
        if value is None and req is None and claimed is None:
            continue
        check, tone = "", ""
        if req is not None and _finite(value):
            ok = req[0] <= value <= req[1]
            check, tone = ("✓ within", "ok") if ok else ("✗ outside", "bad")
            if ok and sources.get(key) in UNESTABLISHED:
                check, tone = "? a default, not verified", "warn"
        elif req is not None:
            check, tone = "? not verified", "warn"
        if key == "params" and claimed is not None and _finite(value) and value:
            gap = abs(claimed - value) / value
            if "params-claim-mismatch" in codes:
                check, tone = f"✗ claim {gap:.0%} off", "warn"
            elif not check:
                check, tone = "✓ matches claim", "ok"
        source = sources.get(key) or ("counted in the weights" if key == "params" and value is not None else
                                      ("weights" if value is not None else DASH))
        rows.append({"label": label, "recognised": fmt_value(value), "source": source,
                     "required": _range(*req) if req else DASH, "claimed": fmt_value(claimed) if claimed is not None
                     else DASH, "check": check, "tone": tone})
    if reqs is None:
        note = "The course's requirements are not recorded in these results, so they are not shown."
    else:
        note = f"Family: {'masked LM (BERT-style)' if family == 'mlm' else 'causal LM (GPT-style)'}."
    return {"rows": rows, "note": note, "unverified": _unverified(model)}


def _unverified(model: dict) -> list[str]:
    """One line per architectural value that nothing settled (calibration could not tell, or did not run)."""
    lines = []
    calibration = model.get("calibration") or {}
    for name in model.get("unverified") or ():
        c = calibration.get(name)
        if c and c.get("margin") is not None:
            tried = ", ".join(f"{fmt_value(v)}: {loss:.5f}" for v, loss in zip(c["candidates"], c["losses"])
                              if loss is not None)
            lines.append(f"{name} = {fmt_value(c['chosen'])} is unverified: calibration could not tell the "
                         f"candidates apart (loss {tried} nats; {c['margin']:.2g} ± {c['stderr']:.2g} apart). "
                         f"State it under [model] in submission.toml.")
        else:
            lines.append(f"{name} is unverified: the layout's default, not calibrated. "
                         f"State it under [model] in submission.toml.")
    return lines


def _metrics(results: dict, sub: dict, codes: set[str]) -> dict:
    family = _family(sub)
    m = sub.get("metrics") or None
    claims = sub.get("claims") or {}
    ref = _reference(results, family) or {}
    proto = (results.get("protocol") or {}).get(_protocol_key(family)) or {}
    data = results.get("data") or {}
    notes: list[str] = []
    has_claims = any(_finite(claims.get(k)) for k in ("val_loss", "val_ppl", "val_bpb", "train_loss", "train_ppl"))
    not_recomputed = ""
    if not m:
        reason = (sub.get("error") or {}).get("message") or "the submission was not evaluated"
        not_recomputed = (f"Nothing was recomputed: {reason.rstrip('.')}."
                          + (" The table shows what was claimed." if has_claims else ""))
        if not has_claims:
            return {"rows": [], "columns": [], "protocol": "", "notes": [not_recomputed]}
        m = {}
    columns = ["Recomputed", "Claimed (validation)", "Claimed (training)", "Reference", "Unigram", "Uniform"]
    unit = "masked token" if family == "mlm" else "token"
    rows = [
        {"label": f"Loss (nats per {unit})", "cells": [fmt_loss(m.get("loss")), fmt_loss(claims.get("val_loss")),
                                                        fmt_loss(claims.get("train_loss")), fmt_loss(ref.get("loss")),
                                                        fmt_loss(m.get("unigram_loss")), fmt_loss(m.get("uniform_loss"))]},
        {"label": "Perplexity", "cells": [fmt_ppl(m.get("ppl")), fmt_ppl(claims.get("val_ppl")),
                                          fmt_ppl(claims.get("train_ppl")), fmt_ppl(ref.get("ppl")),
                                          fmt_ppl(m.get("unigram_ppl") or _exp(m.get("unigram_loss"))),
                                          fmt_ppl(m.get("uniform_ppl") or _exp(m.get("uniform_loss")))]},
    ]
    if family == "mlm":
        acc = m.get("accuracy")
        rows.append({"label": "Top-1 accuracy", "cells": [f"{acc:.1%}" if _finite(acc) else DASH, DASH, DASH,
                                                          f"{ref['accuracy']:.1%}" if _finite(ref.get("accuracy")) else DASH,
                                                          DASH, DASH]})
    else:
        rows.append({"label": "Bits per byte", "cells": [fmt_loss(m.get("bits_per_byte")), fmt_loss(claims.get("val_bpb")), DASH,
                                                         fmt_loss(ref.get("bits_per_byte")), DASH, DASH]})
        rows.append({"label": "Word perplexity", "cells": [fmt_ppl(m.get("word_ppl")), DASH, DASH,
                                                           fmt_ppl(ref.get("word_ppl")), DASH, DASH]})
    rows.append({"label": "Masked positions scored" if family == "mlm" else "Targets scored",
                 "cells": [fmt_int(m.get("tokens")), DASH, DASH, fmt_int(ref.get("tokens")), DASH, DASH]})
    rows += private_rows(sub, ref, unit)  # harness.reporting.splits
    parts = [proto.get("protocol") or ("mlm-v1" if family == "mlm" else "clm-v1")]
    if proto.get("context"):
        parts.append(f"context {proto['context']}")
    if family != "mlm" and proto.get("stride"):
        parts.append(f"stride {proto['stride']}")
    if family == "mlm" and proto.get("seed") is not None:
        parts.append(f"masking seed {proto['seed']}")
    parts.append(f"capped at {fmt_int(proto['max_tokens'])} tokens" if proto.get("max_tokens") else "every token")
    protocol = (f"Recomputed by the harness on {data.get('source', '?')} {data.get('split', '')} "
                f"(tokenizer {_tokenizer(results, family)}; protocol {', '.join(parts)}). Baselines score the same "
                "targets: unigram = token frequencies of the training split, uniform = a guess over the whole vocabulary.")
    if not m:
        protocol = not_recomputed
    if "causal-leak" in codes:
        notes.append("The model looks ahead, so its recomputed perplexity is not valid and earns no points.")
    if claims.get("sources"):
        notes.append(f"Where the claims were read — {_claim_sources(claims)}.")
    elif not any(claims.get(k) is not None for k in ("val_loss", "val_ppl", "val_bpb", "train_loss", "train_ppl")):
        notes.append("No claimed loss or perplexity was found in submission.toml, the checkpoint, a training log or "
                     "the report.")
    if not ref:
        notes.append("No reference model is recorded for this family.")
    notes += private_notes(sub)
    return {"rows": rows, "columns": columns, "protocol": protocol, "notes": notes}


_CLAIM_LABELS = {"val_loss": "validation loss", "val_ppl": "validation perplexity",
                 "val_bpb": "validation bits per byte", "train_loss": "training loss",
                 "train_ppl": "training perplexity", "params": "parameter count"}


def _claim_sources(claims: dict) -> str:
    """E.g. "submission.toml: validation loss, parameter count; log metrics.csv: training loss"."""
    by_source: dict[str, list[str]] = {}
    for k, v in (claims.get("sources") or {}).items():
        by_source.setdefault(str(v), []).append(_CLAIM_LABELS.get(k, k.replace("_", " ")))
    order = list(_CLAIM_LABELS.values())
    return "; ".join(f"{src}: {', '.join(sorted(keys, key=lambda x: order.index(x) if x in order else 99))}"
                     for src, keys in sorted(by_source.items()))


def _tokenizer(results: dict, family: str) -> str:
    proto = (results.get("protocol") or {}).get(_protocol_key(family)) or {}
    data = results.get("data") or {}
    per_family = data.get(family) if isinstance(data.get(family), dict) else {}
    return str(proto.get("tokenizer") or per_family.get("tokenizer") or data.get("tokenizer") or "?")


def _student_curve(claims: dict) -> tuple[list[dict], str | None]:
    points, axis = [], None
    for p in claims.get("curve") or ():
        axis = axis or p.get("axis") or "step"
        q = {k: p.get(k) for k in ("train_loss", "val_loss", "train_ppl", "val_ppl")}
        q[p.get("axis") or "step"] = p.get("step")
        points.append(q)
    return points, axis


def _curves(results: dict, sub: dict) -> dict:
    family = _family(sub)
    claims = sub.get("claims") or {}
    points, axis = _student_curve(claims)
    ref = _reference(results, family) or {}
    ref_curve = list(ref.get("curve") or ())
    loss = (sub.get("metrics") or {}).get("loss")
    drawn = figs.training_curves(points, axis, ref_curve, recomputed_loss=loss)
    if drawn is None:
        return {"svg": None, "caption": "No training curve to show: the submission holds no training log with a loss "
                "or perplexity per step or epoch, and no reference curve is recorded."}
    svg, how = drawn
    bits = [f"Loss (left) and perplexity (right, log scale) as logged during training; {how}."]
    if points:
        bits.append(f"Blue: this submission's log ({claims.get('curve_source') or 'training log'}), measured on "
                    "the student's own data, so not directly comparable with the course's validation split.")
    else:
        bits.append("The submission holds no training log, so only the reference is drawn.")
    if ref_curve:
        bits.append("Grey: the course's reference model on the course's data.")
    if _finite(loss):
        bits.append(f"Dotted: the validation loss the harness recomputed, {fmt_loss(loss)} (perplexity "
                    f"{fmt_ppl((sub.get('metrics') or {}).get('ppl'))}).")
    return {"svg": _figure(svg, "Training curves: loss and perplexity"), "caption": " ".join(bits)}


def _verdict(results: dict, sub: dict, findings: list[dict]) -> dict:
    score = sub.get("score") or {}
    total, mx = score.get("total"), score.get("max")
    pct = f"{total / mx:.0%}" if _finite(total) and _finite(mx) and mx else DASH
    family = _family(sub)
    m = sub.get("metrics") or {}
    ref = _reference(results, family) or {}
    keys = []
    if sub.get("status") == "error" or not m:
        err = sub.get("error") or {}
        code = err.get("code", "")
        title = CATALOGUE.get(code, (None, code or "error"))[1]
        line = f"{(err.get('message') or title).rstrip('.')}."
        keys.append(f"error code {code}" if code else "no error code")
        return {"tone": "bad", "status": "Could not be graded", "status_tag": "not graded", "line": line,
                "facts": keys, "score": fmt_points(total), "max": fmt_points(mx), "pct": pct}
    errors = [f for f in findings if f["severity"] == "error"]
    warnings = [f for f in findings if f["severity"] == "warning"]
    if errors:
        tone, tag, status = "bad", "errors", "Graded, with errors"
        line = "; ".join(f["title"] for f in errors) + "."
    elif warnings:
        tone, tag, status = "warn", "warnings", f"Graded, with {len(warnings)} warning{'s' if len(warnings) > 1 else ''}"
        line = "; ".join(f["title"] for f in warnings) + "."
    else:
        tone, tag, status = "ok", "graded", "Graded"
        line = "No problems found: the checkpoint loads, meets the requirements, and its claims hold."
    keys.append(f"recomputed perplexity {fmt_ppl(m.get('ppl'))}")
    keys.append(f"loss {fmt_loss(m.get('loss'))}")
    if ref.get("ppl"):
        keys.append(f"reference {fmt_ppl(ref['ppl'])}")
    if m.get("unigram_loss") is not None or m.get("unigram_ppl") is not None:
        keys.append(f"unigram {fmt_ppl(m.get('unigram_ppl') or _exp(m.get('unigram_loss')))}")
    return {"tone": tone, "status": status, "status_tag": tag, "line": line, "facts": keys,
            "score": fmt_points(total), "max": fmt_points(mx), "pct": pct}


def _rubric(sub: dict) -> dict:
    score = sub.get("score") or {}
    criteria = list(score.get("criteria") or ())
    points = fmt_points_column([c.get("points") for c in criteria] + [score.get("total")])
    maxes = fmt_points_column([c.get("max") for c in criteria] + [score.get("max")])
    rows = [{"name": c.get("name", ""), "points": p, "max": mx, "why": c.get("why", "")}
            for c, p, mx in zip(criteria, points, maxes)]
    overrides = []
    for o in score.get("overrides") or ():
        what = "the total" if o.get("criterion") in ("total", "*") else f"“{o.get('criterion')}”"
        overrides.append(f"{what} set to {fmt_points(o.get('points'))} points — {o.get('reason') or 'no reason given'}.")
    return {"rows": rows, "total": points[-1], "max": maxes[-1], "overrides": overrides}


def _provenance(results: dict, sub: dict) -> list[dict]:
    ck = sub.get("checkpoint") or {}
    data = results.get("data") or {}
    course = results.get("course") or {}
    family = _family(sub)
    proto = (results.get("protocol") or {}).get(_protocol_key(family)) or {}
    claims = sub.get("claims") or {}
    proto_text = ", ".join(f"{k.replace('_', ' ')} {v if v is not None else 'none'}" for k, v in proto.items()
                           if k not in ("protocol", "tokenizer"))
    groups = [
        {"title": "Checkpoint", "rows": [
            ("File", ck.get("path") or DASH, "mono"),
            ("Format and layout", f"{ck.get('format') or DASH} · {ck.get('layout') or DASH}", ""),
            ("sha256", ck.get("sha256") or DASH, "hash"),
        ]},
        {"title": "Data", "rows": [
            ("Source and split", f"{data.get('source', DASH)} · {data.get('split', DASH)}", ""),
            ("Tokenizer", _tokenizer(results, family), ""),
            ("Manifest sha256", data.get("manifest_sha256") or DASH, "hash"),
            ("Protocol", f"{proto.get('protocol', DASH)}" + (f" ({proto_text})" if proto_text else ""), ""),
        ]},
        {"title": "Course and run", "rows": [
            ("Course", f"{course.get('name', DASH)} (id {course.get('id', DASH)})", ""),
            ("Course fingerprint", course.get("fingerprint") or DASH, "hash"),
            ("Harness", f"{results.get('harness_version') or DASH} (report rendered by {__version__})"
             if results.get("harness_version") != __version__ else __version__, ""),
            ("Device", results.get("device") or DASH, ""),
            ("Generated", _created(results), ""),
        ]},
    ]
    if claims.get("curve_source") or claims.get("sources"):
        rows = []
        if claims.get("sources"):
            rows.append(("Claims read from", _claim_sources(claims), ""))
        if claims.get("curve_source"):
            rows.append(("Training curve", claims["curve_source"], "mono"))
        groups.append({"title": "Claims", "rows": rows})
    return groups


def student_context(results: dict, submission_id: str, *, grader: bool = False, course: Any = None) -> dict:
    """Everything the student template shows, formatted; the PDF is this rendered."""
    sub = _find_submission(results, submission_id)
    findings = _findings(sub, grader)
    codes = {f["code"] for f in findings}
    family = _family(sub)
    ck = sub.get("checkpoint") or {}
    student = str(sub.get("student") or sub.get("id"))
    sid = str(sub.get("id"))
    meta = [f"submission {sid}",
            "masked LM" if family == "mlm" else "causal LM",
            f"checkpoint {Path(ck['path']).name}" if ck.get("path") else "no checkpoint",
            _created(results)]
    header = f"{student} · {sid}" if student != sid else sid
    by_id = {s.get("id"): s for s in results.get("submissions") or ()}
    similar = [{"id": r.get("id"), "student": (by_id.get(r.get("id")) or {}).get("student") or DASH,
                "similarity": f"{r['similarity']:.4f}" if _finite(r.get("similarity")) else DASH}
               for r in sub.get("similar_to") or ()] if grader else []
    return {
        "page": _page(results, kind="student", title=f"Grading report: {header}",
                      header_right=f"{header}" + (" · grader's copy" if grader else ""),
                      footer=_fingerprints(results, ck.get("sha256")),
                      description=f"Grading report for submission {sid}"),
        "course_name": (results.get("course") or {}).get("name") or "",
        "grader": grader,
        "s": {"id": sid, "student": student, "meta": meta},
        "verdict": _verdict(results, sub, findings),
        "rubric": _rubric(sub),
        "arch": _architecture(results, sub, course, codes),
        "metrics": _metrics(results, sub, codes),
        "curves": _curves(results, sub),
        "findings": findings,
        "similar": similar,
        "provenance": _provenance(results, sub),
    }


def render_student_report(results: dict, submission_id: str, out_pdf: Path | str, *, grader: bool = False,
                          course: Any = None) -> Path:
    """One submission's PDF. `grader=True` adds the findings meant for the grader only and the similar
    submissions; `course` (a `Course`) supplies the architecture requirements when the results do not
    record them and are not the packaged default course's."""
    ctx = student_context(results, submission_id, grader=grader, course=course)
    return write_pdf(render_html("student.html", ctx), out_pdf, ctx["page"]["created"])


# --- the class report ----------------------------------------------------------------------------


def _rank(rows: list[dict]) -> None:
    """Competition ranking (1, 1, 3) of graded rows by score, then perplexity (or bits per byte, where the
    class's tokenizers differ); errors unranked."""
    prev, rank = None, 0
    for i, r in enumerate(rows):
        if r["status"] != "graded":
            r["rank"] = DASH
            continue
        key = (r["_score"], r["_ppl"])
        if key != prev:
            rank, prev = i + 1, key
        r["rank"] = str(rank)


def class_context(results: dict, *, grader: bool = True) -> dict:
    subs = list(results.get("submissions") or ())
    mx = next((s["score"]["max"] for s in subs if _finite((s.get("score") or {}).get("max"))), 100.0)
    rows = []
    by_bpb = results.get("rank_metric") == "bits_per_byte"  # per-token numbers of different tokenizers
    for s in subs:
        m = s.get("metrics") or {}
        score = (s.get("score") or {}).get("total")
        tie = m.get("bits_per_byte") if by_bpb else m.get("ppl")
        graded = s.get("status") == "graded" and bool(m)
        findings = _findings(s, grader)
        rows.append({"id": s.get("id"), "student": s.get("student") or DASH,
                     "status": "graded" if graded else "error",
                     "score": fmt_points(score), "ppl": fmt_ppl(m.get("ppl")), "loss": fmt_loss(m.get("loss")),
                     "bpb": fmt_loss(m.get("bits_per_byte")),
                     "private_ppl": fmt_ppl(((s.get("private") or {}).get("metrics") or {}).get("ppl")),
                     "family": _family(s), "findings": findings, "_total": score,
                     "_score": -(score if _finite(score) else -1),
                     "_ppl": tie if _finite(tie) else math.inf})
    rows.sort(key=lambda r: (r["status"] != "graded", r["_score"], r["_ppl"], str(r["id"])))
    for r, text in zip(rows, fmt_points_column([r["_total"] for r in rows])):
        r["score"] = text
    _rank(rows)

    graded = [s for s in subs if s.get("status") == "graded" and s.get("metrics")]
    scores = [s["score"]["total"] for s in subs if _finite((s.get("score") or {}).get("total"))]
    ppls = [s["metrics"]["ppl"] for s in graded if _finite(s["metrics"].get("ppl"))]
    refs = [{"family": f, **r} for f in ("gpt", "mlm") if (r := _reference(results, f))]
    main_ref = next((r for r in refs if r["family"] == "gpt"), refs[0] if refs else None)
    stats = [
        (str(len(subs)), "submissions"),
        (str(len(graded)), "graded"),
        (str(len(subs) - len(graded)), "not graded"),
        (fmt_points(statistics.median(scores)) if scores else DASH, f"median score (of {fmt_points(mx)})"),
        (fmt_ppl(statistics.median(ppls)) if ppls else DASH, "median perplexity"),
        (fmt_ppl(main_ref.get("ppl")) if main_ref else DASH, "reference perplexity"),
    ]

    points = []
    for s in graded:
        m, c = s["metrics"], s.get("claims") or {}
        points.append({"id": s.get("id"), "family": _family(s), "params": (s.get("model") or {}).get("params"),
                       "ppl": m.get("ppl"), "loss": m.get("loss"), "claimed_val_loss": _claimed_val_loss(c),
                       "claimed_train_loss": _claimed_train_loss(c),
                       "invalid": any(f.get("code") == "causal-leak" for f in s.get("findings") or ())})
    tolerance = ((results.get("course") or {}).get("tolerances") or {}).get("val_loss_nats")
    if not _finite(tolerance):
        default = _default_course()
        same = default is not None and default.fingerprint == (results.get("course") or {}).get("fingerprint")
        tolerance = default.tolerances.val_loss_nats if same else 0.25
    dist_svg = _figure(figs.distributions(scores, mx, ppls, main_ref.get("ppl") if main_ref else None),
                       "Distributions of scores and perplexities")
    scatter_svg = _figure(figs.params_and_claims(points, refs, tolerance),
                          "Parameters against perplexity; claimed against recomputed loss")

    counts: dict[str, dict] = {}
    for s in subs:
        for f in _findings(s, grader):
            c = counts.setdefault(f["code"], {**f, "count": 0, "ids": []})
            c["count"] += 1
            if s.get("id") not in c["ids"]:
                c["ids"].append(s.get("id"))
    finding_counts = sorted(counts.values(), key=lambda c: (SEVERITY_ORDER.get(c["severity"], 3), -c["count"], c["code"]))

    failed = []
    for s in subs:
        if s.get("status") == "graded" and s.get("metrics"):
            continue
        err = s.get("error") or {}
        code = err.get("code", "")
        failed.append({"id": s.get("id"), "student": s.get("student") or DASH, "code": code or DASH,
                       "message": err.get("message") or "not evaluated",
                       "fix": CATALOGUE.get(code, ("", "", ""))[2]})

    pairs: dict[tuple[str, str], float] = {}
    if grader:
        for s in subs:
            for r in s.get("similar_to") or ():
                a, b = sorted((str(s.get("id")), str(r.get("id"))))
                if _finite(r.get("similarity")):
                    pairs[(a, b)] = max(pairs.get((a, b), -1.0), r["similarity"])
    names = {s.get("id"): s.get("student") for s in subs}
    similar = [{"a": a, "b": b, "student_a": names.get(a) or DASH, "student_b": names.get(b) or DASH,
                "similarity": f"{v:.4f}"} for (a, b), v in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))]

    course = results.get("course") or {}
    return {
        "page": _page(results, kind="class", title=f"Class report: {course.get('name', '')}",
                      header_right="Class report" + (" · grader's copy" if grader else ""),
                      footer=_fingerprints(results), description="Class comparison of a graded assignment"),
        "course_name": course.get("name") or "",
        "grader": grader,
        "generated": _created(results),
        "stats": stats,
        "rows": rows,
        "by_bpb": by_bpb,
        "private": (results.get("data") or {}).get("private_split"),  # the column only `harness grade` fills
        "max": fmt_points(mx),
        "dist_svg": dist_svg,
        "scatter_svg": scatter_svg,
        "tolerance": fmt_num(tolerance),
        "refs": [{"family": r["family"], "ppl": fmt_ppl(r.get("ppl")), "loss": fmt_loss(r.get("loss")),
                  "params": fmt_int(r.get("params"))} for r in refs],
        "finding_counts": finding_counts,
        "failed": failed,
        "similar": similar,
        "provenance": [{"title": "Course and data", "rows": [
            ("Course", f"{course.get('name', DASH)} (id {course.get('id', DASH)})", ""),
            ("Course fingerprint", course.get("fingerprint") or DASH, "hash"),
            ("Data", f"{(results.get('data') or {}).get('source', DASH)} · {(results.get('data') or {}).get('split', DASH)}"
             f" · tokenizer {(results.get('data') or {}).get('tokenizer', DASH)}", ""),
            ("Manifest sha256", (results.get("data") or {}).get("manifest_sha256") or DASH, "hash"),
            ("Harness", str(results.get("harness_version") or __version__), ""),
            ("Device", results.get("device") or DASH, ""),
            ("Generated", _created(results), ""),
        ]}],
    }


def render_class_report(results: dict, out_pdf: Path | str, *, grader: bool = True) -> Path:
    """The class comparison PDF. `grader=False` leaves out grader-only findings and similar weights."""
    ctx = class_context(results, grader=grader)
    return write_pdf(render_html("class.html", ctx), out_pdf, ctx["page"]["created"])


# --- runs: load and compare ----------------------------------------------------------------------

_CURVE_COLUMNS = {
    "step": ("step", "steps", "iter", "iteration", "global_step"),
    "epoch": ("epoch", "epochs"),
    "tokens": ("tokens", "tokens_seen", "n_tokens"),
    "lr": ("lr", "learning_rate"),
    "train_loss": ("train_loss", "training_loss", "loss", "train loss"),
    "val_loss": ("val_loss", "valid_loss", "validation_loss", "eval_loss", "val loss"),
    "train_ppl": ("train_ppl", "train_perplexity", "training_perplexity", "perplexity", "ppl"),
    "val_ppl": ("val_ppl", "val_perplexity", "valid_ppl", "validation_perplexity", "eval_ppl"),
}
_SWEEP_METRICS = {
    "train_loss": ("train_loss", "final_train_loss", "final_loss", "loss", "training_loss"),
    "val_loss": ("val_loss", "final_val_loss", "valid_loss", "validation_loss", "eval_loss"),
    "train_ppl": ("train_ppl", "final_train_ppl", "final_ppl", "perplexity", "ppl", "final_perplexity",
                  "train_perplexity"),
    "val_ppl": ("val_ppl", "final_val_ppl", "val_perplexity", "validation_perplexity", "eval_ppl"),
}
_NAME_COLUMNS = ("experiment", "name", "run", "run_name", "config")
METRIC_ORDER = ("val_loss", "val_ppl", "train_loss", "train_ppl", "bits_per_byte", "word_ppl", "accuracy", "params",
                "steps", "tokens", "tokens_per_s", "wall_s", "time_s", "score")
# Outcomes of a run, not settings: recognised by name (`max_steps`, `warmup_steps` are settings; `steps` is not).
_METRIC_WORDS = ("loss", "ppl", "perplexity", "accuracy", "bits_per_byte", "score")
_METRIC_NAMES = set(METRIC_ORDER) | {"complete", "wall_time", "time", "elapsed", "duration"}


def _norm(h: str) -> str:
    return re.sub(r"[\s\-]+", "_", h.strip().lower())


def _cell(v: Any) -> Any:
    """A CSV cell as a number where it is one."""
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


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise HarnessError("run-invalid", f"cannot read {path}: {e}") from None
    dialect = csv.excel_tab if text.count("\t") > text.count(",") else csv.excel
    return [{_norm(k): _cell(v) for k, v in row.items() if k is not None} for row in csv.DictReader(io.StringIO(text), dialect=dialect)]


def _curve_rows(rows: list[dict]) -> list[dict]:
    cols: dict[str, str] = {}
    keys = {k for r in rows for k in r}
    for canon, names in _CURVE_COLUMNS.items():
        hit = next((n for n in names if n in keys), None)
        if hit:
            cols[canon] = hit
    out = []
    for r in rows:
        p = {canon: (r.get(col) if _finite(r.get(col)) else None) for canon, col in cols.items()}
        if any(p.get(k) is not None for k in ("train_loss", "val_loss", "train_ppl", "val_ppl")):
            out.append(p)
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HarnessError("run-invalid", f"cannot read {path} as JSON: {e}") from None


def _reference_run(folder: Path) -> dict:
    curve = _curve_rows(_read_csv(folder / "metrics.csv")) if (folder / "metrics.csv").is_file() else []
    info = _read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
    info = info if isinstance(info, dict) else {}
    final = info.get("final") if isinstance(info.get("final"), dict) else {}
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    summary: dict[str, Any] = {k: v for k, v in final.items() if k not in ("evaluation", "train_loss_window")}
    for k in ("params", "tokens", "steps", "wall_s", "tokens_per_s"):  # what `harness reference train` records
        if k in info and k not in summary and not isinstance(info[k], (dict, list)):
            summary[k] = info[k]
    if curve and not any(k in summary for k in ("train_loss", "val_loss")):
        for k in ("train_loss", "val_loss", "train_ppl", "val_ppl"):
            v = next((p[k] for p in reversed(curve) if p.get(k) is not None), None)
            if v is not None:
                summary[k] = v
    flat_config = {k: v for k, v in _flatten(config).items() if not isinstance(v, (list, dict))}
    return {"name": folder.resolve().name, "curve": curve, "summary": summary, "config": flat_config,
            "source": str(folder)}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _submission_run(results: dict, sub: dict, source: str) -> dict:
    m = sub.get("metrics") or {}
    claims = sub.get("claims") or {}
    model = sub.get("model") or {}
    points, _axis = _student_curve(claims)
    summary = {"val_loss": m.get("loss"), "val_ppl": m.get("ppl"), "bits_per_byte": m.get("bits_per_byte"),
               "accuracy": m.get("accuracy"), "params": model.get("params"),
               "score": (sub.get("score") or {}).get("total")}
    config = {k: model.get(k) for k in ("family", "n_layers", "d_model", "n_heads", "d_ff", "context", "vocab_size")
              if model.get(k) is not None}
    if claims.get("train_loss") is not None:
        summary["train_loss"] = claims["train_loss"]
    if claims.get("train_ppl") is not None:
        summary["train_ppl"] = claims["train_ppl"]
    summary = {k: v for k, v in summary.items() if v is not None}
    name = str(sub.get("id"))
    return {"name": name, "curve": points, "summary": summary, "config": config, "source": f"{source}#{name}",
            "note": "validation values recomputed by the harness; training values as claimed"}


def _sweep_runs(folder: Path, table: Path) -> list[dict]:
    rows = _read_csv(table)
    if not rows:
        raise HarnessError("run-invalid", f"{table} has no rows")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    metric_cols: dict[str, str] = {}
    for canon, names in _SWEEP_METRICS.items():
        hit = next((n for n in names if n in keys and n not in metric_cols.values()), None)
        if hit:
            metric_cols[canon] = hit
    name_col = next((n for n in _NAME_COLUMNS if n in keys), None)
    other_metrics = [k for k in keys if k not in metric_cols.values() and k != name_col and _is_metric(k)]
    config_cols = [k for k in keys if k not in metric_cols.values() and k != name_col and k not in other_metrics]
    runs = []
    for i, r in enumerate(rows):
        config = {k: r.get(k) for k in config_cols if r.get(k) is not None}
        name = str(r.get(name_col)) if name_col and r.get(name_col) is not None else \
            (", ".join(f"{k}={fmt_num(v)}" for k, v in config.items()) or f"run {i + 1}")
        summary = {canon: r.get(col) for canon, col in metric_cols.items() if r.get(col) is not None}
        summary.update({k: r.get(k) for k in other_metrics if r.get(k) is not None})
        curve = []
        for cand in (folder / name / "metrics.csv", folder / name / "log.csv", folder / f"metrics_{name}.csv",
                     folder / f"log_{name}.csv", folder / f"{name}.csv"):
            if cand.is_file() and cand != table:
                curve = _curve_rows(_read_csv(cand))
                break
        runs.append({"name": name, "curve": curve, "summary": summary, "config": config,
                     "source": f"{table}#{name}"})
    return runs


def load_runs(path: str | Path) -> list[dict]:
    """Every run at `path`: a reference run folder (metrics.csv + run.json), a sweep folder (results.csv: one
    row per run; per-run logs `NAME/metrics.csv` or `metrics_NAME.csv` add curves), a `results.json` (each
    submission), or a training log (.csv). `PATH#NAME` keeps the one run called NAME."""
    text = str(path)
    selector = None
    if "#" in text and not Path(text).exists():
        text, selector = text.rsplit("#", 1)
    p = Path(text)
    if not p.exists():
        raise HarnessError("run-missing", f"{p} does not exist; give a run folder, a sweep folder, a results.json"
                           " (optionally #ID) or a training log")
    if p.is_dir():
        table = next((p / n for n in ("results.csv", "results_table.csv", "sweep.csv") if (p / n).is_file()), None)
        if table is not None:
            runs = _sweep_runs(p, table)
        elif (p / "results.json").is_file():
            return load_runs(str(p / "results.json") + (f"#{selector}" if selector else ""))
        elif (p / "metrics.csv").is_file() or (p / "run.json").is_file():
            runs = [_reference_run(p)]
        else:
            raise HarnessError("run-invalid", f"{p} holds no run: expected metrics.csv and run.json (a reference run), "
                               "results.csv (a sweep) or results.json (graded submissions)")
    elif p.suffix.lower() == ".json":
        results = _read_json(p)
        if not isinstance(results, dict) or "submissions" not in results:
            raise HarnessError("run-invalid", f"{p} is not a harness results.json (no submissions)")
        runs = [_submission_run(results, s, str(p)) for s in results["submissions"]
                if selector is None or s.get("id") == selector]
        if selector is not None and not runs:
            _find_submission(results, selector)  # raises with the ids it holds
    elif p.suffix.lower() in (".csv", ".tsv"):
        curve = _curve_rows(_read_csv(p))
        if not curve:
            raise HarnessError("run-invalid", f"{p} has no loss or perplexity column")
        summary = {k: next((q[k] for q in reversed(curve) if q.get(k) is not None), None)
                   for k in ("train_loss", "val_loss", "train_ppl", "val_ppl")}
        runs = [{"name": p.stem, "curve": curve, "summary": {k: v for k, v in summary.items() if v is not None},
                 "config": {}, "source": str(p)}]
    else:
        raise HarnessError("run-invalid", f"{p} is not a run: give a folder, a results.json or a .csv log")
    if selector is not None:
        runs = [r for r in runs if r["name"] == selector]
        if not runs:
            raise HarnessError("run-missing", f"{text} holds no run named {selector!r}")
    return runs


def load_run(path: str | Path) -> dict:
    """The one run at `path` (see `load_runs`); a source holding several needs `PATH#NAME`."""
    runs = load_runs(path)
    if len(runs) != 1:
        names = ", ".join(r["name"] for r in runs[:8]) + (" …" if len(runs) > 8 else "")
        raise HarnessError("run-ambiguous", f"{path} holds {len(runs)} runs ({names}); pick one with {path}#NAME "
                           "or compare them all")
    return runs[0]


# Students, nanoGPT, Hugging Face and our reference configs name the same settings differently.
_CONFIG_ALIASES = {"embed_dim": "d_model", "n_embd": "d_model", "hidden_size": "d_model", "dim": "d_model",
                   "n_layer": "n_layers", "num_layers": "n_layers", "num_hidden_layers": "n_layers",
                   "layers": "n_layers", "n_head": "n_heads", "num_heads": "n_heads",
                   "num_attention_heads": "n_heads", "heads": "n_heads", "block_size": "context",
                   "seq_len": "context", "max_len": "context", "max_position_embeddings": "context",
                   "intermediate_size": "d_ff", "learning_rate": "lr", "batch": "batch_size", "bs": "batch_size",
                   "epochs": "max_epochs", "num_epochs": "max_epochs"}


def _config_key(key: str) -> str:
    return _CONFIG_ALIASES.get(key, key)


def _is_metric(key: str) -> bool:
    k = key.lower()
    return k in _METRIC_NAMES or any(w in k for w in _METRIC_WORDS)


_METRIC_LABELS = {"val_loss": "val loss", "val_ppl": "val ppl", "train_loss": "train loss", "train_ppl": "train ppl",
                  "bits_per_byte": "bits/byte", "word_ppl": "word ppl", "accuracy": "accuracy", "params": "params",
                  "tokens": "tokens", "tokens_per_s": "tokens/s", "time_s": "time (s)", "wall_s": "wall (s)",
                  "score": "score", "unigram_val_ppl": "unigram ppl"}


def _metric_cell(key: str, v: Any) -> str:
    if v is None:
        return DASH
    if not _finite(v):
        return str(v)
    if "ppl" in key or "perplexity" in key:
        return fmt_ppl(v)
    if "loss" in key or key == "bits_per_byte":
        return fmt_loss(v)
    if key == "accuracy":
        return f"{v:.1%}" if v <= 1 else fmt_num(v)
    if key in ("params", "tokens", "tokens_per_s", "steps", "wall_s"):
        return fmt_int(v)
    return fmt_num(v)


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)] or [[]]


def comparison_context(runs: Sequence[dict], *, title: str = "Run comparison", generated: str | None = None) -> dict:
    runs = [dict(r) for item in runs for r in (item if isinstance(item, list) else [item])]
    if not runs:
        raise HarnessError("run-missing", "no runs to compare")
    seen: dict[str, int] = {}
    for r in runs:  # two runs of the same name (two sweeps' "lr=1e-3") get told apart
        name = str(r.get("name") or "run")
        seen[name] = seen.get(name, 0) + 1
        r["name"] = name if seen[name] == 1 else f"{name} ({seen[name]})"
    metrics: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for r in runs:
        summary = dict(r.get("summary") or {})
        config = dict(r.get("config") or {})
        for k in list(summary):
            if not _is_metric(k) and not isinstance(summary[k], (dict, list)):
                config.setdefault(k, summary.pop(k))
        metrics[r["name"]] = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        configs[r["name"]] = {}
        for k, v in config.items():
            if not isinstance(v, (dict, list)):
                configs[r["name"]].setdefault(_config_key(k), v)
    metric_keys = [k for k in METRIC_ORDER if any(k in m for m in metrics.values())]
    metric_keys += sorted({k for m in metrics.values() for k in m} - set(metric_keys))
    best: dict[str, str] = {}
    for k in metric_keys:
        lower_better = "loss" in k or "ppl" in k or "perplexity" in k or k == "bits_per_byte"
        higher_better = k in ("accuracy", "score")
        vals = [(m[k], name) for name, m in metrics.items() if _finite(m.get(k))]
        if len(vals) > 1 and (lower_better or higher_better):
            best[k] = (min(vals) if lower_better else max(vals))[1]
    metric_tables = [{"cols": [(_METRIC_LABELS.get(k, k.replace("_", " ")), k) for k in chunk],
                      "rows": [{"name": r["name"], "cells": [(_metric_cell(k, metrics[r["name"]].get(k)),
                                                              best.get(k) == r["name"]) for k in chunk]} for r in runs]}
                     for chunk in _chunks(metric_keys, 7)]
    config_keys = list(dict.fromkeys(k for c in configs.values() for k in c))
    differing = [k for k in config_keys if len({json.dumps(configs[r['name']].get(k), sort_keys=True, default=str)
                                                for r in runs}) > 1]
    shared = [(k, fmt_num(configs[runs[0]["name"]].get(k))) for k in config_keys if k not in differing]
    config_tables = [{"cols": chunk, "rows": [{"name": r["name"], "cells": [fmt_num(configs[r["name"]].get(k))
                                                                             for k in chunk]} for r in runs]}
                     for chunk in _chunks(differing, 7)] if differing else []
    drawn = figs.comparison_curves(runs)
    sources = [(r["name"], r.get("source") or DASH, r.get("note") or "") for r in runs]
    created = _created({"generated": generated}) if generated else dt.date.today().isoformat()
    fake = {"course": {"name": title}, "generated": created}
    return {
        "page": _page(fake, kind="compare", title=title, header_right=f"{len(runs)} runs compared",
                      footer=f"harness {__version__}", description="Comparison of training runs"),
        "title": title,
        "generated": created,
        "runs": runs,
        "curves": {"svg": _figure(drawn[0], "Training curves of the runs") if drawn else None,
                   "caption": (f"Loss (left) and perplexity (right, log scale) of each run; {drawn[1]}. Solid: training, "
                               "dashed: validation.") if drawn else "None of these runs logged a curve."},
        "metric_tables": [t for t in metric_tables if t["cols"]],
        "config_tables": config_tables,
        "shared": shared,
        "sources": sources,
    }


def render_comparison(runs: Sequence[dict], out_pdf: Path | str, *, title: str = "Run comparison",
                      generated: str | None = None) -> Path:
    """Overlaid curves and a table of runs (each {"name", "curve", "summary"[, "config", "source"]}; a list
    inside `runs` — a sweep from `load_runs` — is expanded). `generated` (ISO date) fixes the document date."""
    ctx = comparison_context(runs, title=title, generated=generated)
    return write_pdf(render_html("compare.html", ctx), out_pdf, ctx["page"]["created"])
