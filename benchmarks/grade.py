"""Grading throughput: a test-scale example class graded from scratch, then again from the cache.

Prints submissions/minute of the first run, the cached rerun's time, their ratio, and workers 1 vs 2.
Usage: python benchmarks/grade.py [--workers 1 2]

`measure()` returns the rows that `main()` prints and `python -m benchmarks` tabulates; the suite grades a copy
of `cached_class()` (written once, kept in the harness's cache) less custom_loop, or `tiny_class()` for tests.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from harness.course.config import capped_course_text
from harness.demo.example_class import write_example_class
from harness.grading.batch import GradeOptions, grade



def cached_class() -> tuple[Path, float | None]:
    """The test-scale example class, written once per version of its writer and kept in the harness's cache
    (`$HARNESS_CACHE/bench/`): writing it trains a dozen small models, a minute or more on a CPU, and the
    same call writes the same files. Returns the folder and the seconds spent writing it (None: reused)."""
    import torch

    from harness.demo import example_class
    from harness.course.data import cache_root

    key = hashlib.sha256(Path(example_class.__file__).read_bytes() + torch.__version__.encode()).hexdigest()[:16]
    base = cache_root() / "bench"
    folder = base / f"example-class-test-{key}"
    if folder.is_dir():
        return folder, None
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=base))
    write_example_class(tmp, scale="test")
    for old in base.glob("example-class-test-*"):  # an older writer's class
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(folder)
    return folder, time.perf_counter() - t0


def tiny_class(folder: Path) -> Path:
    """Two submissions written in a second, for tests of the benchmark itself: an untrained Hugging Face GPT-2
    of 1 layer and width 32 (evaluated for real) and a damaged checkpoint (refused at once)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    (folder / "hf_tiny").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder / "hf_tiny" / "hf_model")
    (folder / "hf_tiny" / "submission.toml").write_text(
        '[submission]\nstudent = "Tiny"\nfamily = "gpt"\ncheckpoint = "hf_model"\ntokenizer = "gpt2"\n')
    (folder / "broken_file").mkdir(exist_ok=True)
    (folder / "broken_file" / "model.pt").write_bytes(b"PK\x03\x04" + bytes(996))
    (folder / "broken_file" / "submission.toml").write_text('[submission]\nstudent = "Broken"\nfamily = "gpt"\n')
    return folder


def measure(*, workers: tuple[int, ...] = (1, 2), max_tokens: int = 4096, timeout_s: float = 120,
            class_dir: Path | None = None, drop: tuple[str, ...] = (), keep: tuple[str, ...] | None = None,
            on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per worker count: the first run's seconds and submissions/minute, the cached rerun's seconds
    and their ratio, and how the submissions ended. The class is `class_dir` copied (default: written
    afresh), less the ids in `drop` or outside `keep`."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if class_dir is None:
            write_example_class(root / "class", scale="test")
        else:
            shutil.copytree(class_dir, root / "class")
        for sub in sorted(p for p in (root / "class").iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.name in drop or keep is not None and sub.name not in keep:
                shutil.rmtree(sub)
        course = root / "course.toml"
        course.write_text(capped_course_text(max_tokens))
        for w in workers:
            out = root / f"out-{w}"
            opts = GradeOptions(workers=w, timeout_s=timeout_s, reports=False)
            t0 = time.perf_counter()
            first = grade(root / "class", out, course, opts)
            t1 = time.perf_counter()
            again = grade(root / "class", out, course, opts)
            t2 = time.perf_counter()
            subs = first.results.submissions
            assert not again.measured, "the cached rerun evaluated something"
            codes = [s.error.code if s.error else None for s in subs]
            row = {"workers": w, "submissions": len(subs), "ids": [s.id for s in subs],
                   "first_s": t1 - t0, "subs_per_min": len(subs) / (t1 - t0) * 60, "cached_s": t2 - t1,
                   "ratio": (t1 - t0) / (t2 - t1), "errors": sum(c is not None for c in codes),
                   "timeouts": codes.count("grading-timeout"), "timeout_s": timeout_s, "max_tokens": max_tokens}
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--max-tokens", type=int, default=4096, help="evaluation cap of the benchmark's course")
    a = p.parse_args()
    print(f"{'workers':>7} {'first run s':>12} {'subs/min':>9} {'cached s':>9} {'ratio':>7}")

    def line(r: dict) -> None:
        print(f"{r['workers']:>7} {r['first_s']:>12.1f} {r['subs_per_min']:>9.1f} {r['cached_s']:>9.2f} "
              f"{r['ratio']:>7.0f}x")

    rows = measure(workers=tuple(a.workers), max_tokens=a.max_tokens, on_row=line)
    print(f"{rows[-1]['submissions']} submissions (custom_loop waits for its timeout of 120 s)")


if __name__ == "__main__":
    main()
