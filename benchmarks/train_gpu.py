"""Training on a CUDA GPU: tokens/s and MFU of the seeds' GPT, the harness's loop against plain loops.

Variants, each on the same model, batches and steps (the SPEC's GPT: 2 layers, d_model 128, batch 32 x 64):
- plain-fp32: the textbook loop of benchmarks/train.py (fp32, default AdamW, `.item()` per step);
- plain-bf16: the same loop as a careful student writes it for a GPU (bf16 autocast, fused AdamW);
- harness: `harness reference train gpt` (bf16 autocast, fused AdamW, clipping, per-step metrics);
- harness-compile: the same with `compile = true`.
Each runs `--steps` steps; tokens/s are measured over the second half (compilation and warm-up left out).
MFU = tokens/s x training FLOPs per token (3 x the forward's: matmul weights, the 50,257-wide head, and
attention over the window) / the bf16 peak of a large `torch.mm` measured in the same run (and the H100
SXM datasheet's 989 TFLOP/s dense bf16, for reference).

    python benchmarks/train_gpu.py [--steps 400] [--batch 32] [--variants plain-fp32,plain-bf16,harness,harness-compile]
    python benchmarks/train_gpu.py --full [--compile]   # seed 001's whole run: 10 x 4,883 steps of 32 x 64 tokens
    python benchmarks/train_gpu.py --profile            # the top CUDA and CPU operators of harness steps
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.eval import flops_per_token, make_clock, matmul_peak  # noqa: E402
from benchmarks.train import harness_loop, plain_loop  # noqa: E402
from harness.course.config import load_course  # noqa: E402
from harness.train import load_config, train_reference  # noqa: E402
from harness.train.data import prepare_data  # noqa: E402
from harness.train.objective import build_model  # noqa: E402

VARIANTS = ("plain-fp32", "plain-bf16", "harness", "harness-compile")
DATASHEET_BF16 = 989e12  # H100 SXM, dense
SEED001_STEPS = 10 * 4883  # seed 001: 10 epochs of 4,883 batches of 32 x 64 tokens (100M tokens)


def steady_rate(metrics: Path, from_step: int) -> float:
    """Tokens/s between `from_step` and the last step, from metrics.csv's cumulative training rate."""
    with open(metrics, newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    a = next(r for r in rows if int(r["step"]) == from_step)
    b = rows[-1]
    seconds = lambda r: float(r["tokens"]) / float(r["tokens_per_s"])  # noqa: E731 (training time so far)
    return (float(b["tokens"]) - float(a["tokens"])) / (seconds(b) - seconds(a))


def measure(steps: int, batch: int, variants: list[str]) -> dict:
    """Each variant's tokens/s over the second half of `steps` (benchmarks/train.py's two loops, on the GPU)."""
    overrides = [f"batch_size={batch}", "total_steps=100000", "warmup_steps=10"]
    cfg = load_config("gpt", None, overrides)
    peak = max(matmul_peak(make_clock("wall", "cuda"), "cuda", torch.bfloat16) for _ in range(2))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(cfg, load_course(), Path(tmp) / "prep")
        fpt = 3 * flops_per_token(build_model(cfg, data.tokenizer), cfg.d_model, data.tokenizer.vocab_size,
                                  cfg.n_layers, cfg.context)
        for v in variants:
            t = time.perf_counter()
            if v.startswith("plain"):
                rate = plain_loop(cfg, data, steps, torch.get_num_threads(), "cuda", bf16=v == "plain-bf16",
                                  timed_from=steps // 2)
            else:
                out = Path(tmp) / v
                harness_loop("gpt", [*overrides, f"compile={str(v == 'harness-compile').lower()}"], steps, 0, out,
                             "cuda")
                rate = steady_rate(out / "metrics.csv", steps // 2)
            rows.append({"variant": v, "tokens_per_s": rate, "ms_per_step": 1e3 * batch * cfg.context / rate,
                         "mfu": rate * fpt / peak, "mfu_datasheet": rate * fpt / DATASHEET_BF16,
                         "seed001_minutes": SEED001_STEPS * 32 * 64 / rate / 60, "wall_s": time.perf_counter() - t})
    return {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "batch": batch,
            "context": cfg.context, "steps": steps, "train_flops_per_token": fpt, "bf16_peak": peak, "rows": rows}


def full_run(compile_: bool, out: Path) -> dict:
    """Seed 001's whole run with the harness: 48,830 steps of 32 x 64 tokens on wiki-vital."""
    t = time.perf_counter()
    r = train_reference("gpt", None, [f"total_steps={SEED001_STEPS}", "device=cuda", f"compile={str(compile_).lower()}",
                                      "eval_every=0", "checkpoint_every=5000"], out, resume=False)
    train_s = r.tokens / r.tokens_per_s
    return {"steps": r.steps, "tokens": r.tokens, "wall_s": time.perf_counter() - t, "train_s": train_s,
            "tokens_per_s": r.tokens_per_s, "val_loss": r.val_loss, "val_ppl": r.val_ppl,
            "unigram_val_ppl": r.unigram_val_ppl, "compile": compile_, "device": torch.cuda.get_device_name(0)}


def profile(steps: int, out: Path) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    overrides = ["total_steps=100000", "warmup_steps=10"]
    harness_loop("gpt", overrides, 5, 0, out / "warm", "cuda")
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        harness_loop("gpt", overrides, steps, 0, out / "prof", "cuda")
    return (prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25) + "\n"
            + prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


def table(result: dict) -> str:
    lines = [f"{result['device']}, torch {result['torch']}, batch {result['batch']} x {result['context']}, "
             f"{result['steps']} steps (second half timed); bf16 mm peak {result['bf16_peak'] / 1e12:.0f} TFLOP/s; "
             f"{result['train_flops_per_token'] / 1e6:.1f} MFLOP per training token",
             f"{'variant':<16} {'tokens/s':>12} {'ms/step':>8} {'MFU':>7} {'MFU(989)':>9} {'seed 001 (min)':>15}"]
    for r in result["rows"]:
        lines.append(f"{r['variant']:<16} {r['tokens_per_s']:>12,.0f} {r['ms_per_step']:>8.2f} {r['mfu']:>7.1%} "
                     f"{r['mfu_datasheet']:>9.1%} {r['seed001_minutes']:>15.2f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--full", action="store_true", help="seed 001's whole run instead")
    p.add_argument("--compile", action="store_true", help="with --full: torch.compile the step")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="keep runs and write results here")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device")
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp)
        if a.profile:
            print(profile(a.steps, out))
            return
        if a.full:
            result = full_run(a.compile, out / "seed001")
            print(json.dumps(result, indent=2))
            return
        result = measure(a.steps, a.batch, [v for v in a.variants.split(",") if v])
    print(json.dumps(result, indent=2) if a.json else table(result))


if __name__ == "__main__":
    main()
