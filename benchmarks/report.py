"""How long does a PDF report take? Per student report (the grader writes one per submission), the class
report and a comparison, with each student report split into its stages.

    python benchmarks/report.py [--repeat 5] [--out DIR]

Results: the example results the report tests render too (`harness.demo.example_results`: six submissions modelled on
the seeds — a GPT with an epoch curve, one with training claims only, an error, a step curve, an MLM, a look-ahead
copy).
Stages of one student report: context (numbers formatted, matplotlib figures drawn to SVG), HTML (Jinja),
layout (WeasyPrint), PDF (drawing, font subsetting, writing). The first render also pays for imports and
font loading; it is reported apart. Aim: under 2 s per student PDF. Wall time and this process's CPU time
are both printed: on a machine shared with other work (see the load average) the CPU time is the fairer one.
`measure()` returns the figures that `main()` prints and `python -m benchmarks` tabulates.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.demo.example_results import make_results  # noqa: E402


def measure(*, repeat: int = 3, out: Path | None = None, students: int | None = None,
            class_report: bool = True) -> list[dict]:
    """One row: import, cold and warm render times (wall and CPU), per student and per stage, and the class
    report's. `students` renders only the first few of the class (the class report still has them all)."""
    out = out or Path(tempfile.mkdtemp(prefix="harness-report-bench-"))
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    from harness.reporting import pdf, report  # noqa: PLC0415

    weasyprint = pdf._weasyprint()

    t_import = time.perf_counter() - t0
    from harness.grading.results import ClassResults  # noqa: PLC0415

    results = ClassResults.from_json(make_results())
    ids = [s.id for s in results.submissions][:students]

    t0 = time.perf_counter()
    report.render_student_report(results, ids[0], out / f"cold-{ids[0]}.pdf")
    t_cold = time.perf_counter() - t0

    stages: dict[str, list[float]] = {"context + figures": [], "HTML": [], "layout": [], "PDF": []}
    per_id: dict[str, list[float]] = {i: [] for i in ids}
    cpu: list[float] = []
    for _ in range(repeat):
        for sid in ids:
            c0 = time.process_time()
            t0 = time.perf_counter()
            ctx = report.student_context(results, sid)
            t1 = time.perf_counter()
            html = report.render_html("student.html", ctx)
            t2 = time.perf_counter()
            doc = weasyprint.HTML(string=html, base_url=str(report.TEMPLATES)).render()
            t3 = time.perf_counter()
            with pdf._source_date(ctx["page"]["created"]):
                data = doc.write_pdf()
            t4 = time.perf_counter()
            (out / f"{sid}.pdf").write_bytes(data)
            for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[key].append(dt)
            per_id[sid].append(t4 - t0)
            cpu.append(time.process_time() - c0)

    t_class = None
    if class_report:
        t0 = time.perf_counter()
        report.render_class_report(results, out / "class_report.pdf")
        t_class = time.perf_counter() - t0

    import pypdf  # noqa: PLC0415

    return [{
        "out": str(out), "weasyprint": weasyprint.__version__, "import_s": t_import, "cold_s": t_cold,
        "renders_s": [t for ts in per_id.values() for t in ts], "cpu_s": cpu, "per_student_s": per_id,
        "pages": {sid: len(pypdf.PdfReader(str(out / f"{sid}.pdf")).pages) for sid in ids},
        "stages_s": stages, "class_report_s": t_class,
    }]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="renders of each student report (after the first)")
    ap.add_argument("--out", type=Path, default=None, help="keep the PDFs here (default: a temporary folder)")
    args = ap.parse_args()
    r = measure(repeat=args.repeat, out=args.out)[0]
    all_times, cpu = r["renders_s"], r["cpu_s"]
    print(f"harness report benchmark · Python {platform.python_version()} · {platform.machine()} · "
          f"weasyprint {r['weasyprint']} · PDFs in {r['out']}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} (above the CPU count, wall times stretch)")
    print(f"import harness.reporting.report + weasyprint: {r['import_s']:6.2f} s")
    print(f"first student PDF (cold):          {r['cold_s']:6.2f} s")
    print(f"student PDF, warm, {len(all_times)} renders:     mean {statistics.mean(all_times):.2f} s · "
          f"median {statistics.median(all_times):.2f} s · max {max(all_times):.2f} s  (aim < 2 s)")
    print(f"  CPU time per student PDF:        mean {statistics.mean(cpu):.2f} s · max {max(cpu):.2f} s")
    for sid, ts in r["per_student_s"].items():
        print(f"  {sid:<12} {statistics.median(ts):5.2f} s  ({r['pages'][sid]} pages)")
    print("stages (median per student PDF):")
    for key, ts in r["stages_s"].items():
        print(f"  {key:<18} {statistics.median(ts):5.2f} s")
    print(f"class report:                      {r['class_report_s']:6.2f} s")


if __name__ == "__main__":
    main()
