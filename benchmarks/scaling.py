"""How does evaluation cost grow? Our `evaluate_clm` timed at 1x, 2x and 4x a base count of targets, and at
1x, 2x and 4x the model's non-embedding FLOPs, against the ideal linear growth.

    python benchmarks/scaling.py [--tokens 2048] [--rounds 3] [--json]

Tokens: the seeds' mini-GPT (2 layers, d_model 128, 4 heads, GPT-2 vocabulary, context 64), stride 64, on
`tokens`, 2 x `tokens` and 4 x `tokens` targets; linear growth is a time ratio of 2 and 4.
Model size: 2, 4 and 8 layers at d_model 128 (twice and four times the non-embedding FLOPs; vocabulary and
context fixed) on `tokens` targets. Linear growth here is the ratio of the FLOPs per position of the whole
forward: the 128 x 50,257 output layer is most of them, so 4x the layers is only ~1.2x the work.
`vs linear` is the time ratio over the ideal one: 1.0 is linear, above it worse than linear (overheads that
grow faster), below it better (fixed costs spread over more work). Rounds are interleaved (every setting
once per round) and the best of each counts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.eval import (  # noqa: E402
    CONTEXT, build_gpt, flops_per_token, load_text, make_clock, non_embedding_params)
from harness.metrics.clm import evaluate_clm  # noqa: E402
from harness.course.tokenizers import get_tokenizer  # noqa: E402

SCALES = (1, 2, 4)
LAYERS = (2, 4, 8)  # at d_model 128: 1x, 2x, 4x the non-embedding parameters and FLOPs


def measure(*, tokens: int = 2048, rounds: int = 3, device: str = "cpu", clock: str = "wall",
            log: Callable[[str], None] | None = None) -> list[dict]:
    """Rows per axis ("tokens", "model") and scale: the best seconds, the time ratio to scale 1, the ideal
    (linear) ratio and their quotient."""
    tick = make_clock(clock, device)
    tok = get_tokenizer("gpt2")
    split = load_text(tok, tokens * SCALES[-1], log)
    models = {n: build_gpt(tok.vocab_size, n_layers=n).to(device) for n in LAYERS}
    fpt = {n: flops_per_token(m, 128, tok.vocab_size, n, CONTEXT) for n, m in models.items()}
    non_embedding = {n: non_embedding_params(m) for n, m in models.items()}
    # (axis, scale) -> (layers, targets); both axes' scale 1 is the same setting, timed once
    settings = {("tokens", k): (LAYERS[0], tokens * k) for k in SCALES}
    settings.update({("model", k): (n, tokens) for k, n in zip(SCALES, LAYERS)})
    best = {s: math.inf for s in dict.fromkeys(settings.values())}
    evaluate_clm(models[LAYERS[0]], split, tok, context=CONTEXT, max_tokens=min(tokens, 256))  # warm-up
    for r in range(rounds):
        for n, targets in best:
            t = tick()
            evaluate_clm(models[n], split, tok, context=CONTEXT, max_tokens=targets)
            best[(n, targets)] = min(best[(n, targets)], tick() - t)
        if log:
            log(f"round {r + 1}/{rounds}: " + "  ".join(f"{n} layers {t:,} targets {best[(n, t)]:.2f} s"
                                                         for n, t in best))
    base = best[(LAYERS[0], tokens)]
    rows = []
    for (axis, k), (n, targets) in settings.items():
        seconds = best[(n, targets)]
        ideal = float(k) if axis == "tokens" else fpt[n] / fpt[LAYERS[0]]
        rows.append({
            "axis": axis, "scale": k, "targets": targets, "n_layers": n, "d_model": 128, "vocab": tok.vocab_size,
            "non_embedding_params": non_embedding[n], "mflop_per_position": round(fpt[n] / 1e6, 2),
            "seconds": seconds, "tokens_per_s": targets / seconds, "time_ratio": seconds / base,
            "ideal_ratio": ideal, "vs_linear": seconds / base / ideal,
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048, help="the base count of targets")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each setting counts")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON at the end")
    args = ap.parse_args()
    rows = measure(tokens=args.tokens, rounds=args.rounds, device=args.device, log=print)
    print(f"{'axis':<7} {'scale':>5} {'targets':>8} {'layers':>6} {'MFLOP/pos':>9} {'seconds':>8} "
          f"{'time ratio':>10} {'ideal':>6} {'vs linear':>9}")
    for r in rows:
        print(f"{r['axis']:<7} {r['scale']:>4}x {r['targets']:>8,} {r['n_layers']:>6} {r['mflop_per_position']:>9.2f} "
              f"{r['seconds']:>8.2f} {r['time_ratio']:>9.2f}x {r['ideal_ratio']:>5.2f}x {r['vs_linear']:>9.2f}")
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
