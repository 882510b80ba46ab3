"""What both protocols share around the NLLs: checks of their inputs, the baselines, JSON-ready results."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.metrics.protocol import LogitsModel


def check_split(split: Any, tokenizer: Any) -> None:
    for attr in ("tokens", "offsets", "name", "manifest_sha256"):
        if not hasattr(split, attr):
            raise HarnessError("data-invalid", f"the evaluated split has no {attr!r}; pass a TokenizedSplit")
    expected = getattr(split, "tokenizer_sha256", None)
    actual = getattr(tokenizer, "sha256", None)
    if expected and actual and expected != actual:
        raise HarnessError(
            "tokenizer-mismatch",
            f"split {split.name!r} was tokenized with tokenizer {expected[:12]}…, not {tokenizer.name!r} "
            f"({actual[:12]}…); prepare the data with the model's tokenizer")


def effective_context(context: int, model: LogitsModel) -> int:
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 1:
        raise HarnessError("eval-invalid", f"context must be a positive integer, got {context!r}")
    limit = model.max_positions
    return int(min(context, limit)) if limit else int(context)



def check_ids(stream: np.ndarray, tokenizer: Any, n_outputs: int) -> None:
    if stream.size == 0:
        return
    lo, hi = int(stream.min()), int(stream.max())
    if lo < 0 or hi >= tokenizer.vocab_size:
        raise HarnessError("data-invalid", f"token id {hi if hi >= 0 else lo} is outside tokenizer "
                           f"{tokenizer.name!r}'s vocabulary of {tokenizer.vocab_size}; re-prepare the data")
    if tokenizer.vocab_size > n_outputs:
        raise HarnessError(
            "vocab-mismatch",
            f"the model has {n_outputs} outputs but tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} tokens; "
            "evaluate it with the tokenizer it was trained with")


def public_dict(result: Any) -> dict[str, Any]:
    """A result as JSON-ready values, without its per-target NLLs (`nll`: kept for calibration's statistics)."""
    return plain({f.name: getattr(result, f.name) for f in fields(result) if f.name != "nll"})


def safe_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def unigram_counts(stream: np.ndarray, vocab_size: int) -> tuple[np.ndarray, int]:
    counts = np.bincount(stream.astype(np.int64, copy=False), minlength=vocab_size)[:vocab_size]
    return counts, int(stream.size)


def unigram_loss(targets: np.ndarray, counts: np.ndarray, n: int, vocab_size: int) -> float:
    """Mean NLL of `targets` under add-one smoothed unigram frequencies: p(t) = (count_t + 1) / (n + V)."""
    if targets.size == 0:
        return math.nan
    logp = np.log(counts[targets].astype(np.float64) + 1.0) - math.log(n + vocab_size)
    return -math.fsum(logp.tolist()) / targets.size
