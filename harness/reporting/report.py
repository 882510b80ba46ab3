"""Reports: the grader's `results.json` rendered as PDFs a student, a grader or an instructor can read.

The public entry points, gathered from the modules that make them:

- `harness.reporting.student`: `render_student_report` — one submission, verdict first, then rubric,
  architecture, metrics against claims and reference, curves, findings, provenance;
- `harness.reporting.class_report`: `render_class_report` — leaderboard, distributions, findings counted;
- `harness.reporting.compare`: `load_runs`/`load_run` and `render_comparison` — runs overlaid;
- `harness.reporting.pdf`: the HTML → PDF engine (templates, WeasyPrint, reproducible bytes);
- `harness.reporting.format` and `views`: number formats, and what the student and class reports share.

Each reader takes a `ClassResults` (harness.grading.results), or a results.json's dict that it reads into one.
"""

from harness.reporting.class_report import class_context, render_class_report
from harness.reporting.compare import comparison_context, load_run, load_runs, render_comparison
from harness.reporting.format import (DASH, fmt_int, fmt_loss, fmt_num, fmt_points, fmt_points_column, fmt_ppl,
                                      fmt_value, short)
from harness.reporting.pdf import TEMPLATES, render_html, write_pdf
from harness.reporting.student import render_student_report, student_context

__all__ = ["DASH", "TEMPLATES", "class_context", "comparison_context", "fmt_int", "fmt_loss", "fmt_num", "fmt_points",
           "fmt_points_column", "fmt_ppl", "fmt_value", "load_run", "load_runs", "render_class_report",
           "render_comparison", "render_html", "render_student_report", "short", "student_context", "write_pdf"]
