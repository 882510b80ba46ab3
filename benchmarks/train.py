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
    python benchmarks/train.py --device cuda        # both loops on the GPU (the harness's in bf16 autocast)

Timings on a shared machine are noisy: runs alternate (plain, harness, plain, harness, ...) and the
best of each is compared. `measure()` returns the row that `main()` prints and `python -m benchmarks` tabulates.
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

from harness.course.config import load_course  # noqa: E402
from harness.train import load_config, train_reference  # noqa: E402
from harness.train.data import Batches, prepare_data  # noqa: E402
from harness.train.objective import build_model  # noqa: E402


def plain_loop(cfg, data, steps: int, threads: int, device: str = "cpu", *, bf16: bool = False,
               timed_from: int = 0) -> float:
    """Tokens per second of the textbook loop (fp32 on every device: what a student writes first), over the
    steps from `timed_from` on. `bf16`: as a careful student writes it for a GPU, the forward under bf16
    autocast and AdamW fused."""
    torch.set_num_threads(threads)
    batches = Batches(cfg, data)
    model = build_model(cfg, data.tokenizer).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                            fused=True if bf16 else None)
    tokens = 0
    t0 = time.perf_counter()
    for step in range(steps):
        if step == timed_from:
            tokens, t0 = 0, time.perf_counter()
        inputs, targets, rows, _ = batches.get(step, 0, 1)
        inputs, targets = inputs.to(device), targets.to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(inputs)
            flat = logits.reshape(-1, logits.shape[-1])
            if rows is None:
                loss = F.cross_entropy(flat, targets)
            else:  # MLM: labels over every position, -100 where nothing is masked
                labels = torch.full((flat.shape[0],), -100, dtype=torch.long, device=device)
                labels[rows.to(device)] = targets
                loss = F.cross_entropy(flat, labels, ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss.item()  # waits for the device: every step's time is in
        tokens += inputs.numel()
    return tokens / (time.perf_counter() - t0)


def harness_loop(family: str, overrides: list[str], steps: int, threads: int, out: Path, device: str = "cpu") -> float:
    sets = [*overrides, "eval_every=0", "checkpoint_every=0", "final_eval_max_tokens=256", f"threads={threads}",
            f"device={device}"]
    r = train_reference(family, None, sets, out, max_steps=steps, resume=False)
    return r.tokens_per_s


def measure(family: str = "gpt", *, steps: int = 6, repeat: int = 2, threads: int | None = None,
            data: str = "wiki-vital", overrides: list[str] | tuple[str, ...] = (), device: str = "cpu") -> list[dict]:
    """One row: both loops' tokens/s per round (alternating, plain first) and the best of each."""
    threads = threads or len(os.sched_getaffinity(0))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # a long schedule with a short warm-up: the steps timed are ordinary ones
    overrides = [f"data={data}", "total_steps=100000", "warmup_steps=10", *overrides]
    if family == "mlm":
        overrides.insert(0, "tokenizer=wordpiece")
    cfg = load_config(family, None, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare_data(cfg, load_course(), Path(tmp) / "prep")
        plain, ours = [], []
        for i in range(repeat):
            plain.append(plain_loop(cfg, prepared, steps, threads, device))
            ours.append(harness_loop(family, overrides, steps, threads, Path(tmp) / f"run{i}", device))
    return [{
        "family": family, "steps": steps, "batch_size": cfg.batch_size, "context": cfg.context,
        "tokens_per_step": cfg.batch_size * cfg.context, "threads": threads, "torch": torch.__version__,
        "machine": platform.machine(), "plain_tokens_per_s": plain, "harness_tokens_per_s": ours,
        "best_plain": max(plain), "best_harness": max(ours), "ratio": max(ours) / max(plain),
        "device": device, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
    }]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=("gpt", "mlm"), default="gpt")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--data", default="wiki-vital")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="both loops run here")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    result = measure(a.family, steps=a.steps, repeat=a.repeat, threads=a.threads, data=a.data,
                     overrides=a.overrides, device=a.device)[0]
    if a.json:
        print(json.dumps(result, indent=2))
        return
    plain, ours = result["plain_tokens_per_s"], result["harness_tokens_per_s"]
    print(f"{a.family}: batch {result['batch_size']} x {result['context']} tokens, {a.steps} steps, "
          f"{a.threads} threads, torch {torch.__version__}")
    for i, (pl, ha) in enumerate(zip(plain, ours), start=1):
        print(f"  round {i}: plain {pl:10.1f} tok/s   harness {ha:10.1f} tok/s   ratio {ha / pl:.2f}")
    print(f"  best:    plain {max(plain):10.1f} tok/s   harness {max(ours):10.1f} tok/s   ratio {result['ratio']:.2f}")


if __name__ == "__main__":
    main()
