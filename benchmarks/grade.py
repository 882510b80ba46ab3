"""Grading throughput: a test-scale example class graded from scratch, then again from the cache.

Prints submissions/minute of the first run, the cached rerun's time, their ratio, and workers 1 vs 2.
Usage: python benchmarks/grade.py [--workers 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness.course import default_course_text
from harness.example_class import write_example_class
from harness.grade import GradeOptions, grade


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--max-tokens", type=int, default=4096, help="evaluation cap of the benchmark's course")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_example_class(root / "class", scale="test")
        course = root / "course.toml"
        course.write_text(default_course_text().replace(
            "max_tokens = 0               # 0: every target of the split", f"max_tokens = {a.max_tokens}"))
        n = None
        print(f"{'workers':>7} {'first run s':>12} {'subs/min':>9} {'cached s':>9} {'ratio':>7}")
        for w in a.workers:
            out = root / f"out-{w}"
            opts = GradeOptions(workers=w, timeout_s=120, reports=False)
            t0 = time.perf_counter()
            first = grade(root / "class", out, course, opts)
            t1 = time.perf_counter()
            again = grade(root / "class", out, course, opts)
            t2 = time.perf_counter()
            n = len(first.results["submissions"])
            assert not again.measured, "the cached rerun evaluated something"
            print(f"{w:>7} {t1 - t0:>12.1f} {n / (t1 - t0) * 60:>9.1f} {t2 - t1:>9.2f} {(t1 - t0) / (t2 - t1):>7.0f}x")
        print(f"{n} submissions (custom_loop waits for its timeout of 120 s)")


if __name__ == "__main__":
    main()
