"""The rubric: the course's criteria applied to what was measured and found, each with points and a why;
then the grader's manual overrides, applied last and visible everywhere.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.course import Course, Criterion
from harness.errors import HarnessError
from harness.findings import Evaluation, Finding


@dataclass(frozen=True)
class CriterionScore:
    name: str
    points: float
    max: float
    why: str


@dataclass(frozen=True)
class Score:
    total: float
    max: float
    criteria: tuple[CriterionScore, ...]
    overrides: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "max": self.max, "criteria": [asdict(c) for c in self.criteria],
                "overrides": list(self.overrides)}


def _round(x: float) -> float:
    return round(x + 0.0, 2)


def _codes(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings}


def _perplexity(c: Criterion, ev: Evaluation, findings: list[Finding], reference_ppl: float | None) -> tuple[float, str]:
    m = ev.metrics
    if not m:
        return 0.0, "no recomputed perplexity"
    if "causal-leak" in _codes(findings):
        return 0.0, f"perplexity {m['ppl']:.1f} is invalid: the model looks ahead"
    if m.get("partial"):
        return 0.0, f"perplexity {m['ppl']:.1f} is not comparable: {m['partial']}"
    unigram = math.exp(m["unigram_loss"]) if m.get("unigram_loss") is not None else None
    ppl = m["ppl"]
    if reference_ppl:
        full = c.full_ratio * reference_ppl
        anchor = f"reference {reference_ppl:.1f}"
    elif unigram:
        full = unigram / 2
        anchor = "no reference model: half the unigram baseline's perplexity"
    else:
        return 0.0, "no reference and no baseline to compare with"
    if ppl <= full:
        return c.points, f"perplexity {ppl:.1f} ≤ {full:.1f} ({anchor}{f' × {c.full_ratio:g}' if reference_ppl else ''})"
    if unigram is None or ppl >= unigram or unigram <= full:
        return 0.0, f"perplexity {ppl:.1f} is no better than the unigram baseline {unigram:.1f}" if unigram else \
            f"perplexity {ppl:.1f} > {full:.1f}"
    # linear in log-perplexity between full marks and the unigram baseline
    frac = (math.log(unigram) - math.log(ppl)) / (math.log(unigram) - math.log(full))
    return c.points * frac, (f"perplexity {ppl:.1f}: {frac:.0%} of the way from the unigram baseline {unigram:.1f} "
                             f"to full marks at {full:.1f} ({anchor})")


# sources that mean nobody established the value: a layout's default, or custom code that does not tell
UNVERIFIED_SOURCES = ("default (unverified)", "not verified")


def _architecture(c: Criterion, ev: Evaluation, findings: list[Finding], course: Course | None) -> tuple[float, str]:
    """Full points only for what was verified: a requirement whose value nobody established (custom code
    that hides its heads) earns no share of the points, and the why says which."""
    arch = [f for f in findings if f.code == "arch-requirements"]
    if not ev.model:
        return 0.0, "architecture unknown: the checkpoint was not recognised"
    if arch:
        return 0.0, arch[0].message
    reqs = sorted(course.requirements.get(ev.family or "", {})) if course is not None else []
    sources = ev.model.get("sources") or {}
    unverified = [k for k in reqs if ev.model.get(k) is None or sources.get(k) in UNVERIFIED_SOURCES]
    if not unverified:
        return c.points, "within the assignment's requirements"
    share = (len(reqs) - len(unverified)) / len(reqs)
    return c.points * share, (f"not verified: {', '.join(unverified)} (no weight, stored value or module attribute "
                              f"tells {'it' if len(unverified) == 1 else 'them'}); the rest within the requirements, "
                              f"{len(reqs) - len(unverified)} of {len(reqs)}")


def criterion_score(c: Criterion, ev: Evaluation, findings: list[Finding], reference_ppl: float | None,
                    course: Course | None = None) -> CriterionScore:
    codes = _codes(findings)
    if c.kind == "loads":
        if ev.metrics:
            pts, why = c.points, "loaded and evaluated on the course's data"
        else:
            reason = ev.error["message"] if ev.error else "not evaluated"
            pts, why = 0.0, f"not evaluated: {reason}"
    elif c.kind == "architecture":
        pts, why = _architecture(c, ev, findings, course)
    elif c.kind == "causal":
        if ev.family == "mlm":
            pts, why = c.points, "a masked LM is bidirectional by design"
        elif ev.causal is None:
            pts, why = 0.0, "causality not checked: the model was not evaluated"
        elif "causal-leak" in codes:
            pts, why = 0.0, "predictions change when later tokens change"
        else:
            pts, why = c.points, "predictions do not depend on later tokens"
    elif c.kind == "perplexity":
        pts, why = _perplexity(c, ev, findings, reference_ppl)
    elif c.kind == "validation":
        if ev.claims.has_validation:
            pts, why = c.points, f"validation metric reported ({ev.claims.sources.get('val_loss') or ev.claims.sources.get('val_ppl')})"
        else:
            pts, why = 0.0, "no validation loss or perplexity reported"
    elif c.kind == "claims":
        wrong = [f for f in findings if f.code in ("val-claim-mismatch", "params-claim-mismatch", "memorisation")]
        if not ev.claims.any:
            pts, why = 0.0, "no numbers reported to check"
        elif not ev.metrics and not ev.model:
            pts, why = 0.0, "nothing recomputed to check the claims against"
        elif wrong:
            pts = c.points * max(0.0, 1 - len(wrong) / 2)
            why = "; ".join(f.code for f in wrong)
        else:
            pts, why = c.points, "reported numbers agree with the recomputed ones"
    else:  # course.py validates kinds; a new kind must be scored here
        raise HarnessError("course-invalid", f"rubric kind {c.kind!r} has no scorer")
    return CriterionScore(c.name, _round(pts), c.points, why)


def score(ev: Evaluation, findings: list[Finding], course: Course, reference_ppl: float | None = None,
          overrides: list[dict[str, Any]] | None = None) -> Score:
    criteria = [criterion_score(c, ev, findings, reference_ppl, course) for c in course.rubric]
    applied = []
    total_override = None
    for o in overrides or ():
        if o["id"] != ev.id:
            continue
        if o["criterion"] in ("total", "*"):
            total_override = o
        else:
            for i, cs in enumerate(criteria):
                if cs.name == o["criterion"]:
                    criteria[i] = CriterionScore(cs.name, _round(o["points"]), cs.max,
                                                 f"{cs.why} — overridden to {o['points']:g}: {o['reason']}")
                    break
            else:
                raise HarnessError("overrides-invalid", f"overrides.csv names criterion {o['criterion']!r} for "
                                   f"{ev.id}, which the rubric does not have")
        applied.append(o)
    total = sum(cs.points for cs in criteria)
    if total_override is not None:
        total = total_override["points"]
    return Score(_round(total), course.max_points, tuple(criteria), tuple(applied))


def read_overrides(path: Path | None) -> list[dict[str, Any]]:
    """`overrides.csv`: id, criterion (a rubric name, or `total`), points, reason."""
    if path is None or not path.exists():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"id", "criterion", "points", "reason"} - set(reader.fieldnames or ())
        if missing:
            raise HarnessError("overrides-invalid", f"{path} needs the columns id, criterion, points, reason "
                               f"(missing: {', '.join(sorted(missing))})")
        for i, row in enumerate(reader, start=2):
            try:
                points = float(row["points"])
            except ValueError:
                raise HarnessError("overrides-invalid", f"{path}:{i}: points {row['points']!r} is not a number") from None
            rows.append({"id": row["id"].strip(), "criterion": row["criterion"].strip(), "points": points,
                         "reason": row["reason"].strip()})
    return rows
