"""The benchmark suite's smallest path, run for real: `python -m benchmarks --tiny` in a subprocess."""

import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_one_line_error

BENCHMARKS = {"eval", "train", "grade", "report", "scaling"}


def suite(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_tiny_suite_gives_well_formed_rows_for_every_benchmark(tmp_path):
    target = tmp_path / "BENCH.md"
    target.write_text("# Benchmarks\n")
    proc = suite("--tiny", "--json", "--append", str(target))
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
