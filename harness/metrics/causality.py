"""The causality check: does a causal LM's prediction at position t depend on tokens after t?

A model that attends to the future scores itself on answers it has already seen, so its perplexity
means nothing. Two probes, on random windows drawn afresh for each checkpoint (seeded by its sha256,
so reruns agree but no fixed probe can be special-cased):
- change every token after a random position t and check the logits at positions ≤ t do not move;
- run the prefix `x[:t+1]` alone and check it gives the same logits as the full window there.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from harness.metrics.protocol import LogitsModel, as_logits_model


@dataclass(frozen=True)
class CausalResult:
    ok: bool
    trials: int
    max_change: float  # largest move of a logit at positions ≤ t, relative to the logits' scale
    tolerance: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_causal(model: Any, *, context: int, vocab_size: int, seed_material: str, trials: int = 4,
                 tolerance: float = 1e-3) -> CausalResult:
    """`seed_material` (the checkpoint's sha256) seeds the probes. `tolerance` is relative to the largest
    logit magnitude: float32 noise is ~1e-6 of it, a leak moves logits by a sizeable fraction."""
    m: LogitsModel = as_logits_model(model)
    L = max(2, min(context, m.max_positions or context))
    rng = np.random.Generator(np.random.PCG64(int(hashlib.sha256(seed_material.encode()).hexdigest()[:16], 16)))
    worst, where = 0.0, ""
    with torch.inference_mode():
        for trial in range(trials):
            x = rng.integers(0, vocab_size, L)
            t = int(rng.integers(0, L - 1))
            y = x.copy()
            y[t + 1 :] = rng.integers(0, vocab_size, L - t - 1)
            batch = torch.from_numpy(np.stack([x, y])).long()
            full = m.logits(batch).float().cpu()
            scale = float(full.abs().max()) + 1e-6
            change = float((full[0, : t + 1] - full[1, : t + 1]).abs().max()) / scale
            if change > worst:
                worst, where = change, f"changing the tokens after position {t} moved the logits at positions ≤ {t}"
            prefix = m.logits(torch.from_numpy(x[: t + 1]).long()[None]).float().cpu()
            change = float((prefix[0] - full[0, : t + 1]).abs().max()) / scale
            if change > worst:
                worst, where = change, f"the first {t + 1} tokens alone gave other logits than inside the full window"
    ok = worst <= tolerance
    message = ("predictions depend only on earlier tokens" if ok else
               f"{where} (by {worst:.2g} of the logits' scale): the model looks ahead")
    # Recorded to 1e-5: float32 noise (~1e-7 here) depends on the thread count, which depends on how many
    # workers a grader starts; results must not.
    return CausalResult(ok, trials, round(worst, 5), tolerance, message)
