"""The rubric: the course's criteria applied to what was measured and found, each with points and a why;
then the grader's manual overrides, applied last and visible everywhere.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from harness.course.config import Course, Criterion
from harness.errors import HarnessError
from harness.grading.findings import Evaluation, Finding
from harness.intake.deadlines import UNKNOWN, SubmittedAt, lateness
from harness.sources import UNESTABLISHED


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


def _other_vocabulary(ev: Evaluation, reference: dict[str, Any] | None) -> str | None:
    """The reference's tokenizer name where it is not the submission's (their numbers per token then
    count different tokens), else None. Unknown fingerprints (older results) count as the same."""
    ref_tok = (reference or {}).get("tokenizer") or {}
    own = (ev.tokenizer or {}).get("sha256")
    if ref_tok.get("sha256") and own and ref_tok["sha256"] != own:
        return str(ref_tok.get("name") or "another tokenizer")
    return None


def _bits_per_byte(c: Criterion, m: dict[str, Any], reference: dict[str, Any] | None,
                   anchor_note: str = "") -> tuple[float, str]:
    """The perplexity criterion in bits per byte, which counts the same text whatever the tokenizer. Per
    token, log-perplexity and bits per byte are proportional (the tokens' bytes are fixed), so the scale
    is the perplexity scale's: full marks at the reference's bits per byte had its perplexity been
    full_ratio × higher, none at the unigram baseline (in bits per byte: its loss × this text's bytes)."""
    bpb, loss = m["bits_per_byte"], m["loss"]
    per_nat = bpb / loss if loss > 0 else None  # bits per byte per nat per token, for this tokenization
    unigram = per_nat * m["unigram_loss"] if per_nat and m.get("unigram_loss") is not None else None
    ref_bpb, ref_loss = (reference or {}).get("bits_per_byte"), (reference or {}).get("loss")
    if ref_bpb and ref_loss and ref_loss > 0:
        full = ref_bpb * (ref_loss + math.log(c.full_ratio)) / ref_loss
        anchor = f"reference {ref_bpb:.3f} bits per byte at {c.full_ratio:g} × its perplexity"
    elif unigram is not None:
        full = unigram - per_nat * math.log(2)
        anchor = "no reference model: half the unigram baseline's perplexity"
    else:
        return 0.0, "no reference and no baseline to compare with"
    anchor += anchor_note
    if bpb <= full:
        return c.points, f"{bpb:.3f} bits per byte ≤ {full:.3f} ({anchor})"
    if unigram is None or bpb >= unigram or unigram <= full:
        return 0.0, (f"{bpb:.3f} bits per byte is no better than the unigram baseline's {unigram:.3f} "
                     f"(full marks at {full:.3f}: {anchor})" if unigram else f"{bpb:.3f} bits per byte > {full:.3f} ({anchor})")
    frac = (unigram - bpb) / (unigram - full)
    return c.points * frac, (f"{bpb:.3f} bits per byte: {frac:.0%} of the way from the unigram baseline's "
                             f"{unigram:.3f} to full marks at {full:.3f} ({anchor})")


def _perplexity(c: Criterion, ev: Evaluation, findings: list[Finding], reference_ppl: float | None,
                reference: dict[str, Any] | None = None) -> tuple[float, str]:
    m = ev.metrics
    if not m:
        return 0.0, "no recomputed perplexity"
    if "causal-leak" in _codes(findings):
        return 0.0, f"perplexity {m['ppl']:.1f} is invalid: the model looks ahead"
    if m.get("partial"):
        return 0.0, f"perplexity {m['ppl']:.1f} is not comparable: {m['partial']}"
    if reference_ppl is None and reference:
        reference_ppl = reference.get("ppl")
    other = _other_vocabulary(ev, reference)
    note = ""
    if c.metric == "bits_per_byte" or c.metric == "auto" and other:
        if m.get("bits_per_byte") is not None and (not reference_ppl or (reference or {}).get("bits_per_byte")):
            why = f"; in bits per byte: the reference counts tokens of {other}" if other else ""
            return _bits_per_byte(c, m, reference if reference_ppl else None, why)
        note = "; no bits per byte to compare (a masked LM, or a reference measured before they were recorded)"
    if other and c.metric == "ppl":  # asked for exactly this: say what it means
        note += f"; beware: the reference counts tokens of {other}, this submission those of its own tokenizer"
    elif other:  # per-token numbers of two vocabularies do not compare
        reference_ppl = None
        note += f"; the reference's perplexity is not comparable: it counts tokens of {other}"
    unigram = math.exp(m["unigram_loss"]) if m.get("unigram_loss") is not None else None
    ppl = m["ppl"]
    if reference_ppl:
        full = c.full_ratio * reference_ppl
        anchor = f"reference {reference_ppl:.1f}"
    elif unigram:
        full = unigram / 2
        anchor = "no reference model: half the unigram baseline's perplexity" if not other else \
            "half the unigram baseline's perplexity"
    else:
        return 0.0, "no reference and no baseline to compare with" + note
    if ppl <= full:
        return c.points, (f"perplexity {ppl:.1f} ≤ {full:.1f} ({anchor}{f' × {c.full_ratio:g}' if reference_ppl else ''})"
                          f"{note}")
    if unigram is None or ppl >= unigram or unigram <= full:
        return 0.0, (f"perplexity {ppl:.1f} is no better than the unigram baseline {unigram:.1f}" if unigram else
                     f"perplexity {ppl:.1f} > {full:.1f}") + note
    # linear in log-perplexity between full marks and the unigram baseline
    frac = (math.log(unigram) - math.log(ppl)) / (math.log(unigram) - math.log(full))
    return c.points * frac, (f"perplexity {ppl:.1f}: {frac:.0%} of the way from the unigram baseline {unigram:.1f} "
                             f"to full marks at {full:.1f} ({anchor}){note}")




def _perplexity_of_split(c: Criterion, ev: Evaluation, findings: list[Finding], reference_ppl: float | None,
                         reference: dict[str, Any] | None) -> tuple[float, str]:
    """The perplexity criterion on the split it names. The private split's numbers exist only where `harness
    grade` scored it; `harness check` (the student's view) scores the public split and says so."""
    if c.split != "private" or not ev.metrics:
        return _perplexity(c, ev, findings, reference_ppl, reference)
    if ev.private_metrics:
        private_ref = (reference or {}).get("private")
        ref = {**reference, **private_ref} if reference and private_ref else None
        pts, why = _perplexity(c, replace(ev, metrics=ev.private_metrics), findings,
                               private_ref.get("ppl") if private_ref else None, ref)
        return pts, f"private split ({ev.private_metrics.get('split', 'held out')}): {why}"
    pts, why = _perplexity(c, ev, findings, reference_ppl, reference)
    return pts, (f"public split ({ev.metrics.get('split', 'validation')}): {why} (the private split counts where "
                 "`harness grade` scores it, on data that has one)")


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
    unverified = [k for k in reqs if ev.model.get(k) is None or sources.get(k) in UNESTABLISHED]
    if not unverified:
        return c.points, "within the assignment's requirements"
    share = (len(reqs) - len(unverified)) / len(reqs)
    return c.points * share, (f"not verified: {', '.join(unverified)} (no weight, stored value or module attribute "
                              f"tells {'it' if len(unverified) == 1 else 'them'}); the rest within the requirements, "
                              f"{len(reqs) - len(unverified)} of {len(reqs)}")


def criterion_score(c: Criterion, ev: Evaluation, findings: list[Finding], reference_ppl: float | None,
                    reference: dict[str, Any] | None = None, course: Course | None = None) -> CriterionScore:
    """`reference`: the reference model's measurement (loss, ppl, bits_per_byte, tokenizer), where known;
    `course`: its architecture requirements, for the architecture criterion."""
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
        pts, why = _perplexity_of_split(c, ev, findings, reference_ppl, reference)
    elif c.kind == "validation":
        if ev.claims.has_validation:
            where = next((ev.claims.sources[k] for k in ("val_loss", "val_ppl", "val_bpb") if k in ev.claims.sources),
                         None)
            pts, why = c.points, "validation metric reported" + (f" ({where})" if where else "")
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


LATE_PENALTY = "Late penalty"  # the rubric line of [deadline]; overrides.csv waives it by this name


def late_line(course: Course, submitted: SubmittedAt | None) -> CriterionScore | None:
    """The late penalty as a line of its own (max 0, points ≤ 0) with its why; None without [deadline]."""
    if course.deadline is None:
        return None
    late = lateness(course.deadline, submitted or UNKNOWN)
    return CriterionScore(LATE_PENALTY, _round(-late.points), 0.0, late.why)


def score(ev: Evaluation, findings: list[Finding], course: Course, reference_ppl: float | None = None,
          overrides: list[dict[str, Any]] | None = None, reference: dict[str, Any] | None = None,
          submitted: SubmittedAt | None = None) -> Score:
    """`submitted`: when the submission was handed in (harness.intake.deadlines), for [deadline]."""
    criteria = [criterion_score(c, ev, findings, reference_ppl, reference, course) for c in course.rubric]
    late = late_line(course, submitted)
    if late is not None:
        criteria.append(late)
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
    if late is not None:  # a penalty takes points away, never below none
        total = max(0.0, total)
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
