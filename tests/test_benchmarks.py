"""The benchmark suite's smallest path, run for real: `python -m benchmarks --tiny` in a subprocess, in the
environment `make bench` gets (the main dependencies only: no pytest, lm-eval or ray; tests/main_env.py)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_one_line_error

BENCHMARKS = {"eval", "train", "grade", "arch", "report", "scaling"}


def suite(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_tiny_suite_gives_well_formed_rows_for_every_benchmark(tmp_path, main_env):
    target = tmp_path / "BENCH.md"
    target.write_text("# Benchmarks\n")
    proc = main_env.run(["python", "-m", "benchmarks", "--tiny", "--json", "--append", str(target)], cwd=ROOT,
                        timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    assert out["failed"] == [] and out["mode"] == "tiny"
    rows = out["rows"]
    assert {r["benchmark"] for r in rows} == BENCHMARKS
    for r in rows:
        assert set(r) == {"benchmark", "measure", "ours", "baseline", "unit", "ratio", "notes"}, r
        for key in ("ours", "baseline", "ratio"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, r
        assert r["measure"] and r["notes"]
    # the scaling axes: 2x and 4x targets, 2x and 4x the model, each with its linear ideal in the notes
    scaling = [r for r in rows if r["benchmark"] == "scaling"]
    assert len(scaling) == 4 and all("vs linear" in r["notes"] for r in scaling)
    # arch: per path, the Llama-style submission read by the layout students' files need, against the aim
    arch = {r["measure"].rsplit(", ", 1)[1]: r["notes"] for r in rows if r["benchmark"] == "arch"}
    assert set(arch) == {"hf", "pt"}
    assert "layouts transformers-llama / hf-gpt2" in arch["hf"] and "layouts cs336 / nanogpt" in arch["pt"]
    assert all("Llama / GPT-2 = " in n and "aim <= 1.5x" in n for n in arch.values())

    # appended: one dated section named after the machine, a table of every row
    text = target.read_text()
    assert text.startswith("# Benchmarks\n")
    assert text.count("### Suite run ") == 1 and out["title"] in text
    assert f"torch {torch.__version__}" in out["title"]
    assert "| benchmark | measure" in text.replace("  ", "")
    table = [line for line in text.splitlines() if line.startswith("| ") and "benchmark" not in line]
    assert len(table) == len(rows)


def test_bad_arguments_are_one_line():
    assert_one_line_error(suite("--only", "eval,nonsense", "--no-append", timeout=60), "'nonsense'", "scaling")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_one_clear_sentence():
    proc = suite("--device", "cuda", "--no-append", timeout=60)
    assert_one_line_error(proc, "--device cuda", "no CUDA device")
    assert proc.stdout == ""


@pytest.mark.slow
def test_a_failing_benchmark_is_a_row_and_the_others_are_kept(tmp_path, main_env):
    """A real failure: the harness's cache is a file, so train cannot freeze its data; eval reads the data
    without the cache and still measures. The table keeps eval's rows beside train's failed one."""
    cache = tmp_path / "cache-is-a-file"
    cache.write_text("not a folder")
    target = tmp_path / "BENCH.md"
    target.write_text("# Benchmarks\n")
    proc = main_env.run(["python", "-m", "benchmarks", "--tiny", "--only", "eval,train", "--append", str(target)],
                        cwd=ROOT, timeout=300, HARNESS_CACHE=str(cache))
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "NotADirectoryError" in proc.stderr  # the traceback, for whoever looks into it
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: train failed") and f"appended to {target}" in last, last

    text = target.read_text()
    assert text.count("### Suite run ") == 1
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    names = [r.split("|")[1].strip() for r in rows]
    assert names[-1] == "train" and len(names) >= 3 and set(names[:-1]) == {"eval"}, rows
    failed = [c.strip() for c in rows[-1].strip("|").split("|")]
    assert failed[1:5] == ["failed", "—", "—", "—"], failed
    assert failed[5].startswith("NotADirectoryError: ") and str(cache) in failed[5] and "(at harness/" in failed[5]
    assert all("x |" in r for r in rows[:-1])  # eval's rows have their ratios
    assert proc.stdout.strip().endswith(rows[-1])  # the printed table is the appended one
