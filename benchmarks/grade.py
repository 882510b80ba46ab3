"""Grading throughput: a test-scale example class graded from scratch, then again from the cache; and a class
of 30 at the demo's scale, stage by stage, beside its arithmetic limit.

Prints submissions/minute of the first run, the cached rerun's time, their ratio, and workers 1 vs 2.
Usage: python -m benchmarks.grade [--workers 1 2]
       python -m benchmarks.grade --limit [--submissions 30] [--max-tokens N] [--scale demo|test] [--each]

`measure()` returns the rows that `main()` prints and `python -m benchmarks` tabulates; the suite grades a copy
of `cached_class()` (written once, kept in the harness's cache) less custom_loop, or `tiny_class()` for tests.

`measure_limit()` grades a class of `submissions` made of the example class's folders taken in turn (each
copy graded as its own submission: the cache is per id), every validation target unless `max_tokens`, with
2 workers and the PDFs, and adds up each stage over the class from the workers' own clocks (the cached
measurements' `stages_s`: read, calibrate, evaluate, causality, private, samples; PDF: from the last
measurement to the end).
Its arithmetic limit: the FLOPs of the class's evaluations, public and private split (each model's FLOPs
per position times the positions its windows run), over the fp32 matmul peak of all cores, measured in the
same run before and after grading, the higher of the two (a shared VM's speed drifts over minutes: one
reading taken at a slow moment made a 3x run look 1.8x).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable
from unittest import mock

from harness import forkserver
from harness.course.config import capped_course_text
from harness.demo.example_class import write_example_class
from harness.grading.batch import GradeOptions, grade



def cached_class(scale: str = "test") -> tuple[Path, float | None]:
    """The example class of `scale`, written once per version of its writer and kept in the harness's cache
    (`$HARNESS_CACHE/bench/`): writing it trains a dozen small models, a minute or more on a CPU, and the
    same call writes the same files. Returns the folder and the seconds spent writing it (None: reused)."""
    import torch

    from harness.demo import example_class
    from harness.course.data import cache_root

    # every source the class's writer is made of (harness/demo/, its student models included), and torch
    writer = sorted(Path(example_class.__file__).parent.rglob("*.py"))
    key = hashlib.sha256(b"".join(p.read_bytes() for p in writer) + torch.__version__.encode()).hexdigest()[:16]
    base = cache_root() / "bench"
    folder = base / f"example-class-{scale}-{key}"
    if folder.is_dir():
        return folder, None
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=base))
    write_example_class(tmp, scale=scale)
    for old in base.glob(f"example-class-{scale}-*"):  # an older writer's class
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


def fresh_processes(fresh: bool = True) -> contextlib.AbstractContextManager:
    """Within: every reader and measuring process a fresh interpreter (HARNESS_FORKSERVER=0), the baseline
    of the fork servers; the environment as it was after."""
    return mock.patch.dict(os.environ, {"HARNESS_FORKSERVER": "0"} if fresh else {})


def measure_reads(rounds: int = 5) -> dict:
    """Seconds per checkpoint read (a nanoGPT ckpt.pt of the seeds' mini-GPT size, read in its limited child)
    forked from the reader's server against a fresh interpreter each, alternating, the best of `rounds`."""
    import torch

    from harness.checkpoint.read import read_checkpoint
    from harness.models.gpt import GPT, GPTConfig

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=50304, context=64, n_layers=2, d_model=128, n_heads=4, dropout=0.0))
        torch.save({"model": model.state_dict(), "iter_num": 0}, path)
        read_checkpoint(path, root=path.parent)  # the server started, outside the clock
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for fresh in (False, True):
                with fresh_processes(fresh):
                    t0 = time.perf_counter()
                    read_checkpoint(path, root=path.parent)
                    times[fresh].append(time.perf_counter() - t0)
    return {"forked_s": min(times[False]), "fresh_s": min(times[True]), "rounds": rounds,
            "ratio": min(times[True]) / min(times[False])}


def measure(*, workers: tuple[int, ...] = (1, 2), max_tokens: int = 4096, timeout_s: float = 120,
            class_dir: Path | None = None, drop: tuple[str, ...] = (), keep: tuple[str, ...] | None = None,
            on_row: Callable[[dict], None] | None = None, fresh: bool = False) -> list[dict]:
    """One row per worker count: the first run's seconds and submissions/minute, the cached rerun's seconds
    and their ratio, and how the submissions ended. The class is `class_dir` copied (default: written
    afresh), less the ids in `drop` or outside `keep`. `fresh`: without the fork servers (the baseline)."""
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
            forkserver.shutdown()  # each first run starts its own servers, as `harness grade` does
            t0 = time.perf_counter()
            with fresh_processes(fresh):
                first = grade(root / "class", out, course, opts)
            t1 = time.perf_counter()
            again = grade(root / "class", out, course, opts)
            t2 = time.perf_counter()
            subs = first.results.submissions
            assert not again.measured, "the cached rerun evaluated something"
            codes = [s.error.code if s.error else None for s in subs]
            row = {"workers": w, "fresh": fresh, "submissions": len(subs), "ids": [s.id for s in subs],
                   "first_s": t1 - t0, "subs_per_min": len(subs) / (t1 - t0) * 60, "cached_s": t2 - t1,
                   "ratio": (t1 - t0) / (t2 - t1), "errors": sum(c is not None for c in codes),
                   "timeouts": codes.count("grading-timeout"), "timeout_s": timeout_s, "max_tokens": max_tokens}
            rows.append(row)
            if on_row:
                on_row(row)
    return rows


def class_of(n: int, source: Path, dest: Path, drop: tuple[str, ...] = ()) -> list[str]:
    """`n` submissions in `dest`: the folders of `source` (less `drop`) copied in turn, as `c01-<id>`, …"""
    folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in drop)
    dest.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        src = folders[i % len(folders)]
        sid = f"c{i + 1:02d}-{src.name}"
        shutil.copytree(src, dest / sid)
        ids.append(sid)
    return ids


def model_flops(model: dict, metrics: dict) -> float:
    """FLOPs of one submission's evaluation: per position 2 x its non-embedding parameters, attention over
    the window and 2 x d_model x outputs for the head, times the positions its windows run (clm-v1: every
    window position; mlm-v1: every block position)."""
    d, n_layers = model.get("d_model") or 0, model.get("n_layers") or 0
    vocab, L = model.get("vocab_size") or 0, metrics.get("context") or 0
    embeddings = vocab * d * (1 if model.get("tied") else 2)
    if model.get("positions") == "learned":
        embeddings += (model.get("context") or 0) * d
    per_position = 2 * max(0, (model.get("params") or 0) - embeddings) + 4 * n_layers * L * d + 2 * d * vocab
    if metrics.get("protocol") == "mlm-v1":
        positions = metrics.get("stream_tokens") or 0
    elif metrics.get("stride") == L:
        positions = metrics.get("tokens") or 0
    else:
        positions = (metrics.get("windows") or 0) * L
    return per_position * positions


def measure_limit(*, submissions: int = 30, scale: str = "demo", max_tokens: int | None = None, workers: int = 2,
                  timeout_s: float = 900, reports: bool = True, drop: tuple[str, ...] = ("custom_loop",),
                  class_dir: Path | None = None, log: Callable[[str], None] | None = None) -> dict:
    """A class of `submissions` graded from scratch: seconds per stage (summed over the workers' measurements),
    the whole, and the arithmetic limit beside it."""
    import torch

    from benchmarks.eval import matmul_peak

    source = class_dir
    if source is None:
        source, wrote = cached_class(scale)
        if log:
            log(f"{scale}-scale example class: {'written in %.0f s' % wrote if wrote is not None else 'reused'}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = class_of(submissions, source, root / "class", drop)
        course = root / "course.toml"
        if max_tokens is None:
            from harness.course.config import default_course_text

            course.write_text(default_course_text())
        else:
            course.write_text(capped_course_text(max_tokens))
        def peak_now() -> float:
            threads = torch.get_num_threads()
            torch.set_num_threads(max(1, workers))
            try:
                return max(matmul_peak() for _ in range(2))
            finally:
                torch.set_num_threads(threads)

        peaks = [peak_now()]
        raw: list[dict] = []  # each worker's measurement, as its JSON
        stamps: list[float] = []
        opts = GradeOptions(workers=workers, timeout_s=timeout_s, reports=reports,
                            on_result=lambda r: (raw.append(r.to_json()), stamps.append(time.perf_counter())))
        forkserver.shutdown()  # the servers' start is part of the whole, as in `harness grade`
        t0 = time.perf_counter()
        outcome = grade(root / "class", root / "out", course, opts)
        whole = time.perf_counter() - t0
        peaks.append(peak_now())  # a shared machine's speed drifts over minutes: the faster of the two
    peak = max(peaks)
    stages: dict[str, float] = {"read": 0.0, "calibrate": 0.0, "evaluate": 0.0, "causality": 0.0, "private": 0.0,
                                "samples": 0.0}
    flops = 0.0
    each = []  # per submission: what it cost, and its evaluations' FLOPs
    for r in raw:
        for k, v in (r.get("stages_s") or {}).items():
            stages[k] = stages.get(k, 0.0) + v
        mine = 0.0
        if r.get("metrics") and r.get("model"):
            mine = model_flops(r["model"], r["metrics"])
            if (r.get("private") or {}).get("metrics"):  # the private split, measured by the same path
                mine += model_flops(r["model"], r["private"]["metrics"])
        flops += mine
        each.append({"id": r.get("id"), "layout": ((r.get("checkpoint") or {}).get("layout")),
                     "seconds": r.get("seconds") or 0.0, "stages_s": r.get("stages_s") or {}, "flops": mine})
    measured_s = (stamps[-1] - t0) if stamps else whole
    subs = outcome.results.submissions
    return {"submissions": len(subs), "ids": ids, "workers": workers, "scale": scale, "max_tokens": max_tokens,
            "stages_s": stages, "pdf_s": whole - measured_s if reports else None, "measure_s": measured_s,
            "whole_s": whole, "worker_s": sum(r.get("seconds") or 0.0 for r in raw),
            "eval_flops": flops, "peak_flops": peak, "peaks": peaks, "limit_s": flops / peak if peak else None,
            "errors": sum(s.error is not None for s in subs), "graded": len(raw), "each": each}


def limit_lines(r: dict) -> list[str]:
    st = r["stages_s"]
    worker = ", ".join(f"{k} {v:.1f} s" for k, v in st.items())
    cap = "every validation target" if r["max_tokens"] is None else f"max_tokens {r['max_tokens']}"
    return [f"{r['submissions']} submissions ({r['errors']} ending in an error finding, as built), {r['workers']} "
            f"workers, {cap}",
            f"stages, summed over the workers' measurements: {worker} (worker total {r['worker_s']:.1f} s)",
            f"measured in {r['measure_s']:.1f} s, PDFs {r['pdf_s'] or 0:.1f} s, whole {r['whole_s']:.1f} s "
            f"({r['whole_s'] / 60:.1f} min; aim < 5 min)",
            f"arithmetic limit: {r['eval_flops'] / 1e12:.2f} TFLOP of evaluation / {r['peak_flops'] / 1e9:.0f} "
            f"GFLOP/s peak (before / after: {' / '.join(f'{p / 1e9:.0f}' for p in r['peaks'])}) = {r['limit_s']:.1f} s; whole / limit = {r['whole_s'] / r['limit_s']:.1f}x (aim <= 2x)"]


def each_lines(r: dict) -> list[str]:
    """One line per submission: its worker's seconds, its stages, and its evaluations' share of the peak of
    one core (each worker has `cores / workers` of them)."""
    per_worker = r["peak_flops"] / max(1, r["workers"])
    lines = []
    for e in sorted(r["each"], key=lambda e: -e["seconds"]):
        st = e["stages_s"]
        ev = st.get("evaluate", 0.0) + st.get("private", 0.0)
        share = f"{e['flops'] / ev / per_worker:.0%} of a worker's peak" if ev and e["flops"] else "-"
        lines.append(f"  {e['id']:<24} {e['layout'] or '-':<16} {e['seconds']:6.1f} s  "
                     + " ".join(f"{k} {v:.1f}" for k, v in st.items()) + f"  evaluation {share}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--max-tokens", type=int, default=None,
                   help="evaluation cap of the benchmark's course (default: 4096; --limit: every target)")
    p.add_argument("--limit", action="store_true", help="the class at the limit: stages and arithmetic limit")
    p.add_argument("--submissions", type=int, default=30, help="--limit: submissions in the class")
    p.add_argument("--scale", choices=("demo", "test"), default="demo", help="--limit: the example class's scale")
    p.add_argument("--each", action="store_true", help="--limit: a line per submission")
    a = p.parse_args()
    if a.limit:
        r = measure_limit(submissions=a.submissions, scale=a.scale, max_tokens=a.max_tokens, log=print)
        for line in limit_lines(r) + (each_lines(r) if a.each else []):
            print(line)
        return
    print(f"{'workers':>7} {'first run s':>12} {'subs/min':>9} {'cached s':>9} {'ratio':>7}")

    def line(r: dict) -> None:
        print(f"{r['workers']:>7} {r['first_s']:>12.1f} {r['subs_per_min']:>9.1f} {r['cached_s']:>9.2f} "
              f"{r['ratio']:>7.0f}x")

    rows = measure(workers=tuple(a.workers), max_tokens=a.max_tokens or 4096, on_row=line)
    print(f"{rows[-1]['submissions']} submissions (custom_loop waits for its timeout of 120 s)")


if __name__ == "__main__":
    main()
