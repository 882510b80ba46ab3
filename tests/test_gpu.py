"""The CUDA paths: training in bf16 autocast with fused AdamW and `torch.compile`, evaluation on the GPU
against the CPU, and grading on GPU workers. Skipped where no CUDA device is present (CI has none); run on
a GPU machine with `python -m pytest -m gpu tests/test_gpu.py`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.course.config import capped_course_text, load_course
from harness.metrics.clm import evaluate_clm
from harness.metrics.mlm import evaluate_mlm
from harness.metrics.protocol import as_logits_model
from harness.models import load_canonical
from harness.train import train_reference
from harness.train.config import load_config
from harness.train.data import prepare_data
from harness.train.objective import make_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = Path(__file__).resolve().parents[1]


COURSE = load_course()


def _data(family: str, overrides: list[str], run_dir: Path):
    """The run's tokenizer and validation split, as the run itself prepared them."""
    return prepare_data(load_config(family, None, overrides), COURSE, run_dir)


def _gpt(**extra) -> list[str]:
    """The SPEC's GPT on wiki-vital for a short schedule."""
    values = dict(total_steps=120, warmup_steps=10, eval_every=60, eval_max_tokens=4096, final_eval_max_tokens=8192,
                  checkpoint_every=60, device="cuda")
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    return train_reference("gpt", None, _gpt(), tmp_path_factory.mktemp("eager") / "gpt")


def test_cuda_training_runs_in_bf16_with_fused_adamw_and_learns(eager_run):
    run = json.loads((eager_run.out / "run.json").read_text())
    assert run["device"]["type"] == "cuda" and run["device"]["autocast"] == "bfloat16"
    assert eager_run.complete and eager_run.val_ppl < eager_run.unigram_val_ppl * 3
    import csv

    with open(eager_run.out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # the losses are read back from the device in groups, yet every step has its own
    assert [int(r["step"]) for r in rows] == list(range(1, 121))
    assert all(float(r["train_loss"]) > 0 and float(r["tokens_per_s"]) > 0 for r in rows)
    assert len({r["train_loss"] for r in rows}) == 120
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) - 2.0  # 10.9 nats at the start
    cfg = load_config("gpt", None, ["device=cuda"])
    model = torch.nn.Linear(4, 4).cuda()
    assert make_optimizer(model, cfg).defaults["fused"] is True


def test_the_padded_output_layer_gives_the_plain_loss_and_gradients():
    from harness.train.objective import padded_linear

    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(96, 128, device="cuda", generator=g)
    w, b = torch.randn(50257, 128, device="cuda", generator=g) / 10, torch.randn(50257, device="cuda", generator=g)
    t = torch.randint(0, 50257, (96,), device="cuda", generator=g)
    for bias in (b, None):
        out = padded_linear(h, w, bias)
        assert out.shape == (96, 50304) and out.is_contiguous() and torch.isneginf(out[:, 50257:]).all()
        torch.testing.assert_close(out[:, :50257], torch.nn.functional.linear(h, w, bias))
    grads = []
    for f in (padded_linear, torch.nn.functional.linear):
        ws, bs = w.clone().requires_grad_(), b.clone().requires_grad_()
        loss = torch.nn.functional.cross_entropy(f(h, ws, bs), t, reduction="sum")
        loss.backward()
        grads.append((loss.detach(), ws.grad, bs.grad))
    for ours, plain in zip(*grads):
        torch.testing.assert_close(ours, plain)


def test_the_cuda_evaluation_of_a_trained_model_equals_the_cpu_one(eager_run):
    """The run's final evaluation ran on the GPU (fp32, no TF32); the CPU gives the same loss to 1e-5."""
    assert not torch.backends.cuda.matmul.allow_tf32
    d, s = _data("gpt", _gpt(), eager_run.out), COURSE.clm
    model = load_canonical(eager_run.out)

    def score(device):
        return evaluate_clm(as_logits_model(model, device=device), d.val, d.tokenizer, context=s.context,
                            stride=s.stride or None, max_tokens=8192)

    cpu, gpu, again = score("cpu"), score("cuda"), score("cuda")
    assert cpu.loss == pytest.approx(eager_run.val_loss, rel=1e-5)
    assert gpu.loss == again.loss  # deterministic on the GPU too
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-5) and gpu.tokens == cpu.tokens == 8192


def test_mlm_training_and_evaluation_on_cuda_equal_the_cpu_evaluation(tmp_path):
    overrides = ["total_steps=20", "warmup_steps=2", "eval_every=10", "eval_max_tokens=2048",
                 "final_eval_max_tokens=2048", "device=cuda"]
    run = train_reference("mlm", None, overrides, tmp_path / "mlm")
    assert run.complete and math.isfinite(run.val_loss)
    d, s = _data("mlm", overrides, run.out), COURSE.mlm
    model = load_canonical(run.out)
    cpu, gpu = (evaluate_mlm(as_logits_model(model, device=dev), d.val, d.tokenizer, context=s.context, seed=s.seed,
                             max_tokens=2048) for dev in ("cpu", "cuda"))
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-5) and cpu.loss == pytest.approx(run.val_loss, rel=1e-5)


def test_compiled_training_follows_the_eager_curve(eager_run, tmp_path):
    compiled = train_reference("gpt", None, _gpt(compile="true"), tmp_path / "gpt")
    run = json.loads((compiled.out / "run.json").read_text())
    assert run["device"]["compile"] is True and compiled.complete
    # bf16 autocast, different kernels: the same curve to within bf16 noise, not bit for bit
    assert compiled.val_loss == pytest.approx(eager_run.val_loss, abs=0.05)
    assert compiled.train_loss == pytest.approx(eager_run.train_loss, abs=0.05)


def test_a_cuda_run_stopped_and_continued_follows_the_uninterrupted_curve(eager_run, tmp_path):
    out = tmp_path / "gpt"
    first = train_reference("gpt", None, _gpt(), out, max_steps=60)
    assert first.stopped_by == "max_steps"
    second = train_reference("gpt", None, _gpt(), out)
    assert second.resumed_from == 60 and second.complete
    assert second.val_loss == pytest.approx(eager_run.val_loss, abs=0.02)


def test_grading_on_gpu_workers_gives_the_cpu_numbers(tmp_path):
    from harness.demo.example_class import write_example_class

    class_dir = tmp_path / "submissions"
    write_example_class(class_dir, scale="test")
    course = tmp_path / "course.toml"
    course.write_text(capped_course_text(4096, calibration_tokens=1024))
    results = {}
    for name, visible in (("gpu", os.environ.get("CUDA_VISIBLE_DEVICES", "0")), ("cpu", "")):
        out = tmp_path / name
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible, "HARNESS_CACHE": str(tmp_path / f"cache-{name}")}
        proc = subprocess.run([sys.executable, "-m", "harness", "grade", str(class_dir), "--out", str(out),
                               "--course", str(course), "--workers", "2", "--timeout", "120", "--no-reports"],
                              capture_output=True, text=True, env=env, timeout=1200)
        assert proc.returncode == 0, proc.stderr
        results[name] = {s["id"]: s for s in json.loads((out / "results.json").read_text())["submissions"]}
    assert results["gpu"].keys() == results["cpu"].keys()
    on_gpu = 0
    for sid, g in results["gpu"].items():
        c = results["cpu"][sid]
        assert g["status"] == c["status"], (sid, g.get("error"), c.get("error"))
        assert {f["code"] for f in g["findings"]} == {f["code"] for f in c["findings"]}, sid
        if g["metrics"] and c["metrics"] and g["metrics"].get("loss") is not None:
            assert g["metrics"]["loss"] == pytest.approx(c["metrics"]["loss"], rel=1e-5), sid
        on_gpu += str(g.get("device", "")).startswith("cuda")
    assert on_gpu >= 8  # every submission but the broken ones measured on the GPU


def test_the_benchmark_suite_runs_on_cuda(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--device", "cuda", "--only",
                           "eval,train,scaling", "--no-append", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "HARNESS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)["rows"]
    assert {r["benchmark"] for r in rows} == {"eval", "train", "scaling"}
    assert all(math.isfinite(r["ratio"]) and r["ratio"] >= 0 and r["ours"] >= 0 for r in rows)
