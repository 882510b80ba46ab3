"""The student report: one submission — verdict and score first, then the rubric with its reasons, the
architecture, the metrics against claims, reference and baselines, the training curves, the findings with
what they mean and how to fix them, and the provenance of every number.

`student_context` is everything the template (`templates/student.html`) shows, formatted; the PDF is
that rendered (`render_student_report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import __version__
from harness.families import FAMILY_LABELS, FAMILY_STYLES
from harness.grading.findings import CATALOGUE
from harness.grading.results import (CheckpointInfo, ClassResults, Metrics, ModelInfo, SubmissionResult,
                                     as_class_results)
from harness.intake.claims import Claims
from harness.reporting import figures as figs
from harness.reporting.format import (DASH, exp_or_none, finite, fmt_int, fmt_loss, fmt_points, fmt_points_column,
                                      fmt_ppl, fmt_value)
from harness.reporting.splits import private_notes, private_rows
from harness.reporting.pdf import created, figure, page, render_html, write_pdf
from harness.reporting.samples_view import samples_view
from harness.reporting.views import (claim_sources, family, find_submission, findings, fingerprints, manifest_text,
                                     reference, same_as_default_course, student_curve)
from harness.sources import UNESTABLISHED

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
_CLAIMED = ("val_loss", "val_ppl", "val_bpb", "train_loss", "train_ppl")


def _requirements(results: ClassResults, fam: str, course: Any) -> dict[str, tuple[float, float]] | None:
    """The assignment's requirements for `fam`: from the results where the grader recorded them, else
    the given course, else the packaged default course when its fingerprint is the results' one."""
    recorded = results.course.requirements
    if recorded is not None:
        return {k: tuple(v) for k, v in (recorded.get(fam) or {}).items()}
    course = course or same_as_default_course(results)
    if course is None:
        return None
    return {k: tuple(v) for k, v in course.requirements.get(fam, {}).items()}


def _range(lo: float, hi: float) -> str:
    return f"{fmt_value(lo)}–{fmt_value(hi)}"


def _architecture(results: ClassResults, sub: SubmissionResult, course: Any, codes: set[str]) -> dict:
    model = sub.model or ModelInfo()
    claims = sub.claims or Claims()
    fam = family(sub)
    reqs = _requirements(results, fam, course)
    sources = model.sources or {}
    if not any(getattr(model, k) is not None for k, _ in _ARCH):
        return {"rows": [], "note": "The checkpoint was not recognised, so no architecture could be read from it."}
    rows = []
    for key, label in _ARCH:
        value = getattr(model, key)
        req = (reqs or {}).get(key)
        claimed = claims.params if key == "params" else None
        if value is None and req is None and claimed is None:
            continue
        check, tone = "", ""
        if req is not None and finite(value):
            ok = req[0] <= value <= req[1]
            check, tone = ("✓ within", "ok") if ok else ("✗ outside", "bad")
            if ok and sources.get(key) in UNESTABLISHED:
                check, tone = "? a default, not verified", "warn"
        elif req is not None:
            check, tone = "? not verified", "warn"
        if key == "params" and claimed is not None and finite(value) and value:
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
        note = f"Family: {FAMILY_LABELS[fam]} ({FAMILY_STYLES[fam]})."
    return {"rows": rows, "note": note, "unverified": _unverified(model)}


def _unverified(model: ModelInfo) -> list[str]:
    """One line per architectural value that nothing settled (calibration could not tell, or did not run)."""
    lines = []
    calibration = model.calibration or {}
    for name in model.unverified:
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


def _protocol(results: ClassResults, fam: str):
    return results.protocol.mlm if fam == "mlm" else results.protocol.clm


def _tokenizer(results: ClassResults, fam: str) -> str:
    return str(getattr(_protocol(results, fam), "tokenizer", None) or results.data.tokenizer or "?")


def _metrics(results: ClassResults, sub: SubmissionResult, codes: set[str]) -> dict:
    fam = family(sub)
    claims = sub.claims or Claims()
    ref = reference(results, fam)
    proto = _protocol(results, fam)
    notes: list[str] = []
    has_claims = any(finite(getattr(claims, k)) for k in _CLAIMED)
    not_recomputed = ""
    if sub.metrics is None:
        reason = (sub.error.message if sub.error else "") or "the submission was not evaluated"
        not_recomputed = (f"Nothing was recomputed: {reason.rstrip('.')}."
                          + (" The table shows what was claimed." if has_claims else ""))
        if not has_claims:
            return {"rows": [], "columns": [], "protocol": "", "notes": [not_recomputed]}
    m = sub.metrics or Metrics()
    r_loss, r_ppl, r_bpb, r_acc = (ref.loss, ref.ppl, ref.bits_per_byte, ref.accuracy) if ref else (None,) * 4
    columns = ["Recomputed", "Claimed (validation)", "Claimed (training)", "Reference", "Unigram", "Uniform"]
    unit = "masked token" if fam == "mlm" else "token"
    rows = [
        {"label": f"Loss (nats per {unit})", "cells": [fmt_loss(m.loss), fmt_loss(claims.val_loss),
                                                        fmt_loss(claims.train_loss), fmt_loss(r_loss),
                                                        fmt_loss(m.unigram_loss), fmt_loss(m.uniform_loss)]},
        {"label": "Perplexity", "cells": [fmt_ppl(m.ppl), fmt_ppl(claims.val_ppl), fmt_ppl(claims.train_ppl),
                                          fmt_ppl(r_ppl), fmt_ppl(m.unigram_ppl or exp_or_none(m.unigram_loss)),
                                          fmt_ppl(m.uniform_ppl or exp_or_none(m.uniform_loss))]},
    ]
    if fam == "mlm":
        rows.append({"label": "Top-1 accuracy", "cells": [f"{m.accuracy:.1%}" if finite(m.accuracy) else DASH, DASH,
                                                          DASH, f"{r_acc:.1%}" if finite(r_acc) else DASH, DASH, DASH]})
    else:
        rows.append({"label": "Bits per byte", "cells": [fmt_loss(m.bits_per_byte), fmt_loss(claims.val_bpb), DASH,
                                                         fmt_loss(r_bpb), DASH, DASH]})
        rows.append({"label": "Word perplexity", "cells": [fmt_ppl(m.word_ppl), DASH, DASH, DASH, DASH, DASH]})
    rows.append({"label": "Masked positions scored" if fam == "mlm" else "Targets scored",
                 "cells": [fmt_int(m.tokens), DASH, DASH, DASH, DASH, DASH]})
    rows += private_rows(sub, ref, unit)  # harness.reporting.splits: `harness grade` only
    parts = [proto.protocol or ("mlm-v1" if fam == "mlm" else "clm-v1")]
    if proto.context:
        parts.append(f"context {proto.context}")
    if fam != "mlm" and getattr(proto, "stride", None):
        parts.append(f"stride {proto.stride}")
    if fam == "mlm" and getattr(proto, "seed", None) is not None:
        parts.append(f"masking seed {proto.seed}")
    parts.append(f"capped at {fmt_int(proto.max_tokens)} tokens" if proto.max_tokens else "every token")
    data = results.data
    protocol = (f"Recomputed by the harness on {data.source or '?'} {data.split or ''} "
                f"(tokenizer {_tokenizer(results, fam)}; protocol {', '.join(parts)}). Baselines score the same "
                "targets: unigram = token frequencies of the training split, uniform = a guess over the whole vocabulary.")
    if sub.metrics is None:
        protocol = not_recomputed
    if "causal-leak" in codes:
        notes.append("The model looks ahead, so its recomputed perplexity is not valid and earns no points.")
    if claims.sources:
        notes.append(f"Where the claims were read — {claim_sources(claims)}.")
    elif not any(getattr(claims, k) is not None for k in _CLAIMED):
        notes.append("No claimed loss or perplexity was found in submission.toml, the checkpoint, a training log or "
                     "the report.")
    if ref is None:
        notes.append("No reference model is recorded for this family.")
    notes += private_notes(sub)
    return {"rows": rows, "columns": columns, "protocol": protocol, "notes": notes}


def _curves(results: ClassResults, sub: SubmissionResult) -> dict:
    claims = sub.claims or Claims()
    points, axis = student_curve(claims)
    ref = reference(results, family(sub))
    ref_curve = list(ref.curve) if ref else []
    loss = sub.metrics.loss if sub.metrics else None
    drawn = figs.training_curves(points, axis, ref_curve, recomputed_loss=loss)
    if drawn is None:
        return {"svg": None, "caption": "No training curve to show: the submission holds no training log with a loss "
                "or perplexity per step or epoch, and no reference curve is recorded."}
    svg, how = drawn
    bits = [f"Loss (left) and perplexity (right, log scale) as logged during training; {how}."]
    if points:
        bits.append(f"Blue: this submission's log ({claims.curve_source or 'training log'}), measured on "
                    "the student's own data, so not directly comparable with the course's validation split.")
    else:
        bits.append("The submission holds no training log, so only the reference is drawn.")
    if ref_curve:
        bits.append("Grey: the course's reference model on the course's data.")
    if finite(loss):
        bits.append(f"Dotted: the validation loss the harness recomputed, {fmt_loss(loss)} (perplexity "
                    f"{fmt_ppl(sub.metrics.ppl)}).")
    return {"svg": figure(svg, "Training curves: loss and perplexity"), "caption": " ".join(bits)}


def _verdict(results: ClassResults, sub: SubmissionResult, shown: list[dict]) -> dict:
    total, mx = sub.score.total, sub.score.max
    pct = f"{total / mx:.0%}" if finite(total) and finite(mx) and mx else DASH
    ref = reference(results, family(sub))
    keys = []
    if sub.status == "error" or sub.metrics is None:
        code = sub.error.code if sub.error else ""
        title = CATALOGUE.get(code, (None, code or "error"))[1]
        line = f"{((sub.error.message if sub.error else '') or title).rstrip('.')}."
        keys.append(f"error code {code}" if code else "no error code")
        return {"tone": "bad", "status": "Could not be graded", "status_tag": "not graded", "line": line,
                "facts": keys, "score": fmt_points(total), "max": fmt_points(mx), "pct": pct}
    m = sub.metrics
    errors = [f for f in shown if f["severity"] == "error"]
    warnings = [f for f in shown if f["severity"] == "warning"]
    if errors:
        tone, tag, status = "bad", "errors", "Graded, with errors"
        line = "; ".join(f["title"] for f in errors) + "."
    elif warnings:
        tone, tag, status = "warn", "warnings", f"Graded, with {len(warnings)} warning{'s' if len(warnings) > 1 else ''}"
        line = "; ".join(f["title"] for f in warnings) + "."
    else:
        tone, tag, status = "ok", "graded", "Graded"
        line = "No problems found: the checkpoint loads, meets the requirements, and its claims hold."
    keys.append(f"recomputed perplexity {fmt_ppl(m.ppl)}")
    keys.append(f"loss {fmt_loss(m.loss)}")
    if ref is not None and ref.ppl:
        keys.append(f"reference {fmt_ppl(ref.ppl)}")
    if m.unigram_loss is not None or m.unigram_ppl is not None:
        keys.append(f"unigram {fmt_ppl(m.unigram_ppl or exp_or_none(m.unigram_loss))}")
    return {"tone": tone, "status": status, "status_tag": tag, "line": line, "facts": keys,
            "score": fmt_points(total), "max": fmt_points(mx), "pct": pct}


def _rubric(sub: SubmissionResult) -> dict:
    score = sub.score
    criteria = list(score.criteria)
    points = fmt_points_column([c.points for c in criteria] + [score.total])
    maxes = fmt_points_column([c.max for c in criteria] + [score.max])
    rows = [{"name": c.name, "points": p, "max": mx, "why": c.why} for c, p, mx in zip(criteria, points, maxes)]
    overrides = []
    for o in score.overrides:
        what = "the total" if o.get("criterion") in ("total", "*") else f"“{o.get('criterion')}”"
        overrides.append(f"{what} set to {fmt_points(o.get('points'))} points — {o.get('reason') or 'no reason given'}.")
    return {"rows": rows, "total": points[-1], "max": maxes[-1], "overrides": overrides}


def _provenance(results: ClassResults, sub: SubmissionResult) -> list[dict]:
    ck = sub.checkpoint or CheckpointInfo()
    data, course = results.data, results.course
    fam = family(sub)
    claims = sub.claims or Claims()
    proto = _protocol(results, fam).to_json()
    proto_text = ", ".join(f"{k.replace('_', ' ')} {v if v is not None else 'none'}" for k, v in proto.items()
                           if k not in ("protocol", "tokenizer"))
    manifest = (sub.data.manifest_sha256 if sub.data else None) or data.manifest_sha256  # the data it was scored on
    groups = [
        {"title": "Checkpoint", "rows": [
            ("File", ck.path or DASH, "mono"),
            ("Format and layout", f"{ck.format or DASH} · {ck.layout or DASH}", ""),
            ("sha256", ck.sha256 or DASH, "hash"),
        ]},
        {"title": "Data", "rows": [
            ("Source and split", f"{data.source or DASH} · {data.split or DASH}", ""),
            ("Tokenizer", _tokenizer(results, fam), ""),
            ("Manifest sha256", manifest_text(manifest), "hash"),
            ("Protocol", f"{proto.get('protocol') or DASH}" + (f" ({proto_text})" if proto_text else ""), ""),
        ]},
        {"title": "Course and run", "rows": [
            ("Course", f"{course.name or DASH} (id {course.id or DASH})", ""),
            ("Course fingerprint", course.fingerprint or DASH, "hash"),
            ("Harness", f"{results.harness_version or DASH} (report rendered by {__version__})"
             if results.harness_version != __version__ else __version__, ""),
            ("Device", results.device or DASH, ""),
            ("Generated", created(results.generated), ""),
        ]},
    ]
    if claims.curve_source or claims.sources:
        rows = []
        if claims.sources:
            rows.append(("Claims read from", claim_sources(claims), ""))
        if claims.curve_source:
            rows.append(("Training curve", claims.curve_source, "mono"))
        groups.append({"title": "Claims", "rows": rows})
    return groups


def student_context(results: ClassResults | dict, submission_id: str, *, grader: bool = False,
                    course: Any = None) -> dict:
    """Everything the student template shows, formatted; the PDF is this rendered."""
    results = as_class_results(results)
    sub = find_submission(results, submission_id)
    shown = findings(sub, grader)
    codes = {f["code"] for f in shown}
    fam = family(sub)
    ck = sub.checkpoint or CheckpointInfo()
    student, sid = str(sub.student or sub.id), str(sub.id)
    meta = [f"submission {sid}",
            FAMILY_LABELS[fam],
            f"checkpoint {Path(ck.path).name}" if ck.path else "no checkpoint",
            created(results.generated)]
    header = f"{student} · {sid}" if student != sid else sid
    names = {s.id: s.student for s in results.submissions}
    similar = [{"id": r.id, "student": names.get(r.id) or DASH,
                "similarity": f"{r.similarity:.4f}" if finite(r.similarity) else DASH}
               for r in sub.similar_to] if grader else []
    footer = fingerprints(results, ck.sha256, sub.data.manifest_sha256 if sub.data else None)
    return {
        "page": page(kind="student", title=f"Grading report: {header}",
                     header_left=results.course.name, header_right=f"{header}" + (" · grader's copy" if grader else ""),
                     footer=footer, description=f"Grading report for submission {sid}",
                     harness_version=results.harness_version, generated=results.generated),
        "course_name": results.course.name or "",
        "grader": grader,
        "s": {"id": sid, "student": student, "meta": meta},
        "verdict": _verdict(results, sub, shown),
        "rubric": _rubric(sub),
        "arch": _architecture(results, sub, course, codes),
        "metrics": _metrics(results, sub, codes),
        "curves": _curves(results, sub),
        "samples": samples_view(sub.samples),
        "findings": shown,
        "similar": similar,
        "provenance": _provenance(results, sub),
    }


def render_student_reports(results: ClassResults | dict, submission_ids: list[str], out: Path | str, *,
                           grader: bool = False) -> list[Path]:
    """`OUT/<id>.pdf` for each id, in order: one process's share of a class's PDFs (`write_reports`)."""
    if not isinstance(results, ClassResults):
        results = ClassResults.from_json(results)
    return [render_student_report(results, sid, Path(out) / f"{sid}.pdf", grader=grader) for sid in submission_ids]


def render_main(argv: list[str]) -> int:
    """A process's share of a class's PDFs (`harness.forkserver`'s entry): RESULTS.json OUT GRADER(0|1) ID...
    for student PDFs, RESULTS.json OUT class for the class report (`OUT/class_report.pdf`)."""
    import json

    results = ClassResults.from_json(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    if argv[2:] == ["class"]:
        from harness.reporting.class_report import render_class_report

        render_class_report(results, Path(argv[1]) / "class_report.pdf", grader=True)
    else:
        render_student_reports(results, argv[3:], Path(argv[1]), grader=argv[2] == "1")
    return 0


def warm_up() -> None:
    """What a process pays on its first PDF, paid once by the reports' fork server (`harness.forkserver`'s
    `warm`): the example results' first student PDF and class report, rendered and dropped (fonts found
    and loaded, templates compiled, matplotlib's first figure)."""
    import tempfile

    from harness.demo.example_results import make_results
    from harness.reporting.class_report import render_class_report

    results = ClassResults.from_json(make_results())
    with tempfile.TemporaryDirectory(prefix="harness-warm-") as tmp:
        render_student_report(results, results.submissions[0].id, Path(tmp) / "student.pdf", grader=True)
        render_class_report(results, Path(tmp) / "class.pdf", grader=True)


def render_student_report(results: ClassResults | dict, submission_id: str, out_pdf: Path | str, *,
                          grader: bool = False, course: Any = None) -> Path:
    """One submission's PDF. `grader=True` adds the findings meant for the grader only and the similar
    submissions; `course` (a `Course`) supplies the architecture requirements when the results do not
    record them and are not the packaged default course's."""
    ctx = student_context(results, submission_id, grader=grader, course=course)
    return write_pdf(render_html("student.html", ctx), out_pdf, ctx["page"]["created"])
