"""Training throughput: the harness's reference loop against a plain PyTorch loop, in one process.

Both train the same model from the same initialisation on the same batches for the same number of steps.
The plain loop is what a student writes: full logits, `F.cross_entropy`, `backward`, default `AdamW`,
`zero_grad`, a `.item()` per step, nothing else. The harness's loop also sets the learning rate, clips
the gradient norm, reseeds dropout and keeps its metrics; what it gains is the fused output layer and
cross-entropy (CPU), fused AdamW, and scoring only the masked rows (MLM). Its tokens/s are the ones it
reports in `metrics.csv` (training steps only: no evaluation, checkpoint or output time), measured over
the same steps as the plain loop's, the first one included in both.

    python benchmarks/train.py                      # the reference GPT, 6 steps, on wiki-vital
    python benchmarks/train.py --family mlm --steps 20
    python benchmarks/train.py --steps 4 --set d_model=64 --json

Timings on a shared machine are noisy: runs alternate (plain, harness, plain, harness, ...) and the
best of each is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from harness.course import load_course  # noqa: E402
from harness.train import load_config, train_reference  # noqa: E402
from harness.train.data import Batches, prepare_data  # noqa: E402
from harness.train.objective import build_model  # noqa: E402


def plain_loop(cfg, data, steps: int, threads: int) -> float:
    """Tokens per second of the textbook loop."""
    torch.set_num_threads(threads)
    batches = Batches(cfg, data)
    model = build_model(cfg, data.tokenizer).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    tokens = 0
    t0 = time.perf_counter()
    for step in range(steps):
        inputs, targets, rows, _ = batches.get(step, 0, 1)
        logits = model(inputs)
        flat = logits.reshape(-1, logits.shape[-1])
        if rows is None:
            loss = F.cross_entropy(flat, targets)
        else:  # MLM: labels over every position, -100 where nothing is masked
            labels = torch.full((flat.shape[0],), -100, dtype=torch.long)
            labels[rows] = targets
            loss = F.cross_entropy(flat, labels, ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()
        tokens += inputs.numel()
    return tokens / (time.perf_counter() - t0)


def harness_loop(family: str, overrides: list[str], steps: int, threads: int, out: Path) -> float:
    sets = [*overrides, "eval_every=0", "checkpoint_every=0", "final_eval_max_tokens=256", f"threads={threads}"]
    r = train_reference(family, None, sets, out, max_steps=steps, resume=False)
    return r.tokens_per_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=("gpt", "mlm"), default="gpt")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--data", default="wiki-vital")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # a long schedule with a short warm-up: the steps timed are ordinary ones
    overrides = [f"data={a.data}", "total_steps=100000", "warmup_steps=10", *a.overrides]
    if a.family == "mlm":
        overrides.insert(0, "tokenizer=wordpiece")
    cfg = load_config(a.family, None, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(cfg, load_course(), Path(tmp) / "prep")
        plain, ours = [], []
        for i in range(a.repeat):
            plain.append(plain_loop(cfg, data, a.steps, a.threads))
            ours.append(harness_loop(a.family, overrides, a.steps, a.threads, Path(tmp) / f"run{i}"))
    result = {
        "family": a.family, "steps": a.steps, "batch_size": cfg.batch_size, "context": cfg.context,
        "tokens_per_step": cfg.batch_size * cfg.context, "threads": a.threads, "torch": torch.__version__,
        "machine": platform.machine(), "plain_tokens_per_s": plain, "harness_tokens_per_s": ours,
        "best_plain": max(plain), "best_harness": max(ours), "ratio": max(ours) / max(plain),
    }
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{a.family}: batch {cfg.batch_size} x {cfg.context} tokens, {a.steps} steps, {a.threads} threads, "
          f"torch {torch.__version__}")
    for i, (pl, ha) in enumerate(zip(plain, ours), start=1):
        print(f"  round {i}: plain {pl:10.1f} tok/s   harness {ha:10.1f} tok/s   ratio {ha / pl:.2f}")
    print(f"  best:    plain {max(plain):10.1f} tok/s   harness {max(ours):10.1f} tok/s   ratio {result['ratio']:.2f}")


if __name__ == "__main__":
    main()
