"""What the student and class reports share: findings as shown, a submission's family and reference, the
claims' provenance, the footer's fingerprints. Pure functions of a `ClassResults` and its parts."""

from __future__ import annotations

import functools
from typing import Any

from harness import __version__
from harness.errors import HarnessError
from harness.grading.findings import CATALOGUE, Finding
from harness.grading.results import ClassResults, ReferenceResult, SubmissionResult
from harness.intake.claims import Claims
from harness.reporting.format import DASH, finite, log_or_none, short

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def finding_view(f: Finding) -> dict:
    sev, title, explanation = CATALOGUE.get(f.code, (f.severity or "info", f.code, ""))
    return {"code": f.code, "severity": f.severity or sev, "title": title, "message": f.message,
            "explanation": explanation, "grader_only": bool(f.grader_only)}


def findings(sub: SubmissionResult, grader: bool) -> list[dict]:
    views = [finding_view(f) for f in sub.findings if grader or not f.grader_only]
    return sorted(views, key=lambda v: SEVERITY_ORDER.get(v["severity"], 3))  # stable: keeps the grader's order


def family(sub: SubmissionResult) -> str:
    return (sub.model.family if sub.model else None) or "gpt"


def reference(results: ClassResults, fam: str) -> ReferenceResult | None:
    return results.reference.of(fam)


def claimed_val_loss(claims: Claims) -> float | None:
    if finite(claims.val_loss):
        return float(claims.val_loss)
    return log_or_none(claims.val_ppl)


def claimed_train_loss(claims: Claims) -> float | None:
    if finite(claims.train_loss):
        return float(claims.train_loss)
    return log_or_none(claims.train_ppl)


def find_submission(results: ClassResults, submission_id: str) -> SubmissionResult:
    sub = results.submission(submission_id)
    if sub is None:
        ids = ", ".join(s.id for s in results.submissions) or "none"
        raise HarnessError("report-invalid", f"results hold no submission {submission_id!r} (they hold: {ids})")
    return sub


_CLAIM_LABELS = {"val_loss": "validation loss", "val_ppl": "validation perplexity",
                 "val_bpb": "validation bits per byte", "train_loss": "training loss",
                 "train_ppl": "training perplexity", "params": "parameter count"}


def claim_sources(claims: Claims) -> str:
    """E.g. "submission.toml: validation loss, parameter count; log metrics.csv: training loss"."""
    by_source: dict[str, list[str]] = {}
    for k, v in claims.sources.items():
        by_source.setdefault(str(v), []).append(_CLAIM_LABELS.get(k, k.replace("_", " ")))
    order = list(_CLAIM_LABELS.values())
    return "; ".join(f"{src}: {', '.join(sorted(keys, key=lambda x: order.index(x) if x in order else 99))}"
                     for src, keys in sorted(by_source.items()))


def student_curve(claims: Claims) -> tuple[list[dict], str | None]:
    """The claimed training curve as the figures draw it: one dict per logged step or epoch."""
    points, axis = [], None
    for p in claims.curve:
        axis = axis or p.axis or "step"
        q: dict[str, Any] = {"train_loss": p.train_loss, "val_loss": p.val_loss, "train_ppl": p.train_ppl,
                             "val_ppl": p.val_ppl}
        q[p.axis or "step"] = p.step
        points.append(q)
    return points, axis


def manifest_text(manifest: str | list[str] | None) -> str:
    """A data fingerprint in full; several (a class scored on data frozen with several tokenizers) joined."""
    if isinstance(manifest, list):
        return ", ".join(dict.fromkeys(m for m in manifest if m)) or DASH
    return manifest or DASH


def fingerprints(results: ClassResults, checkpoint: str | None = None, data: str | None = None) -> str:
    """The footer: short fingerprints of the course, the data (`data`, a submission's own, else the
    class's), the checkpoint and the harness."""
    parts = [f"course {short(results.course.fingerprint)}", f"data {short(data or results.data.manifest_sha256)}"]
    if checkpoint is not None:
        parts.append(f"checkpoint {short(checkpoint)}")
    parts.append(f"harness {results.harness_version or __version__}")
    return "  ·  ".join(parts)


@functools.lru_cache(maxsize=1)
def default_course():
    from harness.course.config import load_course

    try:
        return load_course()
    except HarnessError:
        return None


def same_as_default_course(results: ClassResults):
    """The packaged default course where its fingerprint is the results' one (older results name no
    requirements or tolerances), else None."""
    default = default_course()
    return default if default is not None and default.fingerprint == results.course.fingerprint else None
