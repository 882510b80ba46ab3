"""The pure planning of both protocols: which tokens the model sees and which it is scored on.

The clm-v1 window plan is a pure function of the stream length, the context and the stride
(`clm_windows`); the mlm-v1 blocks of the stream length and the context (`mlm_blocks`), their masks of
the block, its index and the seed (`mlm_masks`). No model, no torch: tests check them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.errors import HarnessError

DEFAULT_MLM_SEED = 1234
MASK_RATE = 0.15


def check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and (isinstance(max_tokens, bool) or max_tokens < 1):
        raise HarnessError("eval-invalid", f"max_tokens must be a positive integer or unset, got {max_tokens!r}")



@dataclass(frozen=True)
class ClmWindow:
    """One window of the clm-v1 plan: input `s[start : start+length]`; the target of input position `j`
    is `s[start+j+1]`; positions `first_scored … length-1` are scored (no earlier window scored them)."""

    start: int
    length: int
    first_scored: int

    @property
    def scored(self) -> int:
        return self.length - self.first_scored

    @property
    def targets(self) -> range:
        """Stream positions of the targets this window scores."""
        return range(self.start + self.first_scored + 1, self.start + self.length + 1)


def clm_stream(split: Any, tokenizer: Any, max_tokens: int | None = None) -> np.ndarray:
    """The clm-v1 token stream `s` (int64): for each document, the end-of-text token, then its tokens.

    So `s[0]` is EOT and every document token is scored with EOT before it. With a tokenizer that has no
    EOT (`eot_id is None`, e.g. characters) the documents are simply concatenated: `s[0]` is then the
    first document's first token, which is only ever context (a prefix), never a target. With `max_tokens`
    the stream keeps `max_tokens` targets: `s[: max_tokens + 1]`.
    """
    check_max_tokens(max_tokens)
    tokens = np.asarray(split.tokens).astype(np.int64, copy=False)
    offsets = np.asarray(split.offsets, dtype=np.int64)
    eot = tokenizer.eot_id
    if eot is None:
        stream = tokens.copy()
    else:
        # np.insert places one EOT before each document start; empty documents give a lone EOT each.
        stream = np.insert(tokens, offsets[:-1], np.int64(eot))
    if max_tokens is not None:
        stream = stream[: int(max_tokens) + 1]
    return stream


def clm_windows(n_stream: int, context: int, stride: int | None = None) -> list[ClmWindow]:
    """The clm-v1 window plan for a stream of `n_stream` tokens, context `L` (already capped by the
    model's positions) and stride `S ≤ L` (default `L`).

    Windows start at 0, S, 2S, … while `a + L ≤ N-1`; if targets remain, one last window is
    right-aligned at `max(0, N-1-L)`. Each window scores only targets no earlier window scored, so
    `s[1] … s[N-1]` are each scored exactly once.
    """
    if isinstance(context, bool) or context < 1:
        raise HarnessError("eval-invalid", f"context must be a positive integer, got {context!r}")
    stride = context if stride is None else stride
    if isinstance(stride, bool) or stride < 1 or stride > context:
        raise HarnessError("eval-invalid", f"stride must be between 1 and the context ({context}), got {stride!r}")
    n = int(n_stream)
    windows: list[ClmWindow] = []
    next_target = 1  # first stream position not scored yet
    a = 0
    while a + context <= n - 1:
        first = max(0, next_target - (a + 1))
        windows.append(ClmWindow(a, context, first))
        next_target = a + context + 1
        a += stride
    if next_target <= n - 1:
        start = max(0, n - 1 - context)
        length = min(context, n - 1)
        windows.append(ClmWindow(start, length, max(0, next_target - (start + 1))))
    return windows


def mlm_special_ids(tokenizer: Any) -> tuple[int, int, int]:
    missing = [n for n in ("cls_id", "sep_id", "mask_id") if getattr(tokenizer, n, None) is None]
    if missing:
        raise HarnessError("tokenizer-not-mlm", f"tokenizer {tokenizer.name!r} has no {', '.join(missing)}; "
                           "mlm-v1 needs [CLS], [SEP] and [MASK] tokens: name them in the tokenizer_config.json "
                           "beside it (cls_token, sep_token, mask_token), or use a BERT-style tokenizer")
    return int(tokenizer.cls_id), int(tokenizer.sep_id), int(tokenizer.mask_id)


def mlm_stream(split: Any, tokenizer: Any, max_tokens: int | None = None) -> np.ndarray:
    """The mlm-v1 stream (int64): for each document `[CLS] tokens [SEP]`, concatenated, capped at
    `max_tokens` tokens."""
    check_max_tokens(max_tokens)
    cls_id, sep_id, _ = mlm_special_ids(tokenizer)
    tokens = np.asarray(split.tokens).astype(np.int64, copy=False)
    offsets = np.asarray(split.offsets, dtype=np.int64)
    n_docs = len(offsets) - 1
    out = np.empty(tokens.size + 2 * n_docs, dtype=np.int64)
    doc_of = np.arange(n_docs, dtype=np.int64)
    cls_pos = offsets[:-1] + 2 * doc_of
    sep_pos = offsets[1:] + 2 * doc_of + 1
    is_tok = np.ones(out.size, dtype=bool)
    is_tok[cls_pos] = False
    is_tok[sep_pos] = False
    out[cls_pos] = cls_id
    out[sep_pos] = sep_id
    out[is_tok] = tokens
    if max_tokens is not None:
        out = out[: int(max_tokens)]
    return out


def mlm_blocks(n_stream: int, context: int) -> list[tuple[int, int]]:
    """(start, length) of the mlm-v1 blocks: consecutive blocks of `context`; a last block is kept only
    if it has at least 2 tokens."""
    if isinstance(context, bool) or context < 1:
        raise HarnessError("eval-invalid", f"context must be a positive integer, got {context!r}")
    blocks = []
    for start in range(0, int(n_stream), context):
        length = min(context, int(n_stream) - start)
        if length >= 2 or length == context:
            blocks.append((start, length))
    return blocks


def mlm_masks(block: np.ndarray, block_index: int, tokenizer: Any, seed: int = DEFAULT_MLM_SEED
              ) -> tuple[np.ndarray, np.ndarray]:
    """The model's input for block `block_index` and which positions are scored (mlm-v1).

    `rng = numpy.random.Generator(numpy.random.PCG64([seed, block_index]))`; `u`, `v` = `rng.random(n)`,
    `r = rng.integers(0, vocab_size, n)`; a non-special position is selected iff `u < 0.15`; it becomes
    [MASK] if `v < 0.8`, `r` if `0.8 ≤ v < 0.9`, and stays otherwise. Returns (input ids, selected).
    """
    _, _, mask_id = mlm_special_ids(tokenizer)
    block = np.asarray(block, dtype=np.int64)
    n = block.size
    rng = np.random.Generator(np.random.PCG64([int(seed), int(block_index)]))
    u = rng.random(n)
    v = rng.random(n)
    r = rng.integers(0, tokenizer.vocab_size, n)
    special = np.array(sorted(tokenizer.special_ids), dtype=np.int64)
    selected = (u < MASK_RATE) & ~np.isin(block, special)
    inputs = block.copy()
    to_mask = selected & (v < 0.8)
    to_random = selected & (v >= 0.8) & (v < 0.9)
    inputs[to_mask] = mask_id
    inputs[to_random] = r[to_random]
    return inputs, selected
