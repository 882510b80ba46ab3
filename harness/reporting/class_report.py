"""The class report: leaderboard, distributions, size against perplexity, claims against measurements,
findings counted, failures, similar weights (grader's copy). `class_context` is what
`templates/class.html` shows; `render_class_report` the PDF."""

from __future__ import annotations

import statistics
from pathlib import Path

from harness import __version__
from harness.families import FAMILIES
from harness.grading.findings import CATALOGUE
from harness.grading.results import ClassResults, as_class_results
from harness.intake.claims import Claims
from harness.reporting import figures as figs
from harness.reporting.format import DASH, finite, fmt_int, fmt_loss, fmt_num, fmt_points, fmt_points_column, fmt_ppl
from harness.reporting.leaderboard import standings
from harness.reporting.pdf import created, figure, page, render_html, write_pdf
from harness.reporting.views import (SEVERITY_ORDER, claimed_train_loss, claimed_val_loss, family, findings,
                                     fingerprints, manifest_text, same_as_default_course)


def class_context(results: ClassResults | dict, *, grader: bool = True) -> dict:
    results = as_class_results(results)
    subs = results.submissions
    mx = next((s.score.max for s in subs if finite(s.score.max)), 100.0)
    rows = []
    by_bpb = results.rank_metric == "bits_per_byte"  # per-token numbers of different tokenizers
    # the leaderboard's order: the course's chosen metric on the public split, causal LMs and MLMs apart
    places = {p.id: p for p in standings(results)}
    order = list(FAMILIES)
    for s in subs:
        m = s.metrics
        ppl, loss, bpb = (m.ppl, m.loss, m.bits_per_byte) if m else (None, None, None)
        score = s.score.total
        graded = s.status == "graded" and m is not None
        place = places[s.id]
        rows.append({"id": s.id, "student": s.student or DASH,
                     "status": "graded" if graded else "error",
                     "score": fmt_points(score), "ppl": fmt_ppl(ppl), "loss": fmt_loss(loss), "bpb": fmt_loss(bpb),
                     "private_ppl": fmt_ppl(s.private.metrics.ppl if s.private and s.private.metrics else None),
                     "family": family(s), "findings": findings(s, grader), "_total": score,
                     "rank": str(place.rank) if place.rank is not None else DASH,
                     "_key": (place.rank is None, not graded, order.index(place.family), place.rank or 0,
                              -(score if finite(score) else -1), s.id)})
    rows.sort(key=lambda r: r["_key"])
    for r, text in zip(rows, fmt_points_column([r["_total"] for r in rows])):
        r["score"] = text

    graded = [s for s in subs if s.status == "graded" and s.metrics is not None]
    scores = [s.score.total for s in subs if finite(s.score.total)]
    ppls = [s.metrics.ppl for s in graded if finite(s.metrics.ppl)]
    # the figures draw plain values
    refs = [{"family": f, **r.to_json()} for f in FAMILIES if (r := getattr(results.reference, f))]
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
        c = s.claims or Claims()
        points.append({"id": s.id, "family": family(s), "params": s.model.params if s.model else None,
                       "ppl": s.metrics.ppl, "loss": s.metrics.loss, "claimed_val_loss": claimed_val_loss(c),
                       "claimed_train_loss": claimed_train_loss(c),
                       "invalid": any(f.code == "causal-leak" for f in s.findings)})
    tolerance = (results.course.tolerances or {}).get("val_loss_nats")
    if not finite(tolerance):
        default = same_as_default_course(results)
        tolerance = default.tolerances.val_loss_nats if default is not None else 0.25
    dist_svg = figure(figs.distributions(scores, mx, ppls, main_ref.get("ppl") if main_ref else None),
                      "Distributions of scores and perplexities")
    scatter_svg = figure(figs.params_and_claims(points, refs, tolerance),
                         "Parameters against perplexity; claimed against recomputed loss")

    counts: dict[str, dict] = {}
    for s in subs:
        for f in findings(s, grader):
            c = counts.setdefault(f["code"], {**f, "count": 0, "ids": []})
            c["count"] += 1
            if s.id not in c["ids"]:
                c["ids"].append(s.id)
    finding_counts = sorted(counts.values(), key=lambda c: (SEVERITY_ORDER.get(c["severity"], 3), -c["count"], c["code"]))

    failed = []
    for s in subs:
        if s.status == "graded" and s.metrics is not None:
            continue
        code = s.error.code if s.error else ""
        failed.append({"id": s.id, "student": s.student or DASH, "code": code or DASH,
                       "message": (s.error.message if s.error else "") or "not evaluated",
                       "fix": CATALOGUE.get(code, ("", "", ""))[2]})

    pairs: dict[tuple[str, str], float] = {}
    if grader:
        for s in subs:
            for r in s.similar_to:
                a, b = sorted((str(s.id), str(r.id)))
                if finite(r.similarity):
                    pairs[(a, b)] = max(pairs.get((a, b), -1.0), r.similarity)
    names = {s.id: s.student for s in subs}
    similar = [{"a": a, "b": b, "student_a": names.get(a) or DASH, "student_b": names.get(b) or DASH,
                "similarity": f"{v:.4f}"} for (a, b), v in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))]

    course, data = results.course, results.data
    return {
        "page": page(kind="class", title=f"Class report: {course.name or ''}", header_left=course.name,
                     header_right="Class report" + (" · grader's copy" if grader else ""),
                     footer=fingerprints(results), description="Class comparison of a graded assignment",
                     harness_version=results.harness_version, generated=results.generated),
        "course_name": course.name or "",
        "grader": grader,
        "generated": created(results.generated),
        "stats": stats,
        "rows": rows,
        "by_bpb": by_bpb,
        "private": results.data.private_split,  # the column only `harness grade` fills
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
            ("Course", f"{course.name or DASH} (id {course.id or DASH})", ""),
            ("Course fingerprint", course.fingerprint or DASH, "hash"),
            ("Data", f"{data.source or DASH} · {data.split or DASH} · tokenizer {data.tokenizer or DASH}", ""),
            ("Manifest sha256", manifest_text(data.manifest_sha256), "hash"),
            ("Harness", str(results.harness_version or __version__), ""),
            ("Device", results.device or DASH, ""),
            ("Generated", created(results.generated), ""),
        ]}],
    }


def render_class_report(results: ClassResults | dict, out_pdf: Path | str, *, grader: bool = True) -> Path:
    """The class comparison PDF. `grader=False` leaves out grader-only findings and similar weights."""
    ctx = class_context(results, grader=grader)
    return write_pdf(render_html("class.html", ctx), out_pdf, ctx["page"]["created"])
