"""Per-document losses: an evaluation's per-target NLLs summed by the document each target belongs to.

The protocols score a stream; this maps the stream back to the split's documents, after the fact, from the
same plan the evaluator used (clm-v1: an end-of-text token before each document; mlm-v1: `[CLS] … [SEP]`
per document and the seeded masks), so it costs no forward and the evaluator stays as it is. A document's
loss counts only its own tokens: the end-of-text target (which ends the previous document) and the special
tokens belong to none. What grading compares split against split (`trained-on-validation`) stands on these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DocumentLosses:
    """Summed NLL (nats) and scored targets per document of one split, in the split's order; a document
    the token cap cut off has 0 targets."""

    split: str
    nll: tuple[float, ...]
    tokens: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "nll": list(self.nll), "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DocumentLosses:
        return cls(d["split"], tuple(float(x) for x in d["nll"]), tuple(int(t) for t in d["tokens"]))


def _sums(nll_at: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """fsum of `nll_at[starts[i]:ends[i]]` per document (float64, order-independent)."""
    sums, counts = [], []
    for a, b in zip(starts.tolist(), ends.tolist()):
        b = max(a, b)
        sums.append(math.fsum(nll_at[a:b].tolist()))
        counts.append(b - a)
    return tuple(sums), tuple(counts)


def clm_document_losses(result: Any, split: Any, tokenizer: Any) -> DocumentLosses:
    """Per-document losses of a clm-v1 result (`result.nll`: the NLL of `s[1] … s[N-1]`)."""
    offsets = np.asarray(split.offsets, dtype=np.int64)
    n_docs = len(offsets) - 1
    n = int(result.nll.size) + 1  # stream length
    nll_at = np.concatenate([[0.0], np.asarray(result.nll, dtype=np.float64)])  # nll_at[p]: target s[p]
    shift = np.arange(n_docs, dtype=np.int64) + 1 if tokenizer.eot_id is not None else np.zeros(n_docs, np.int64)
    # document i's tokens sit at stream positions offsets[i] + shift[i] …; s[0] is never a target
    starts = np.clip(offsets[:-1] + shift, 1, n)
    ends = np.clip(offsets[1:] + shift, 1, n)
    sums, counts = _sums(nll_at, starts, ends)
    return DocumentLosses(str(split.name), sums, counts)


def mlm_document_losses(result: Any, split: Any, tokenizer: Any) -> DocumentLosses:
    """Per-document losses of an mlm-v1 result (`result.nll`: per selected position, in stream order): the
    selected positions are drawn again from the protocol's seeded masks."""
    from harness.metrics.windows import mlm_blocks, mlm_masks, mlm_stream

    stream = mlm_stream(split, tokenizer, result.max_tokens)
    positions = []
    for b, (start, length) in enumerate(mlm_blocks(stream.size, result.context)):
        _, selected = mlm_masks(stream[start : start + length], b, tokenizer, result.seed)
        positions.append(start + np.flatnonzero(selected))
    pos = np.concatenate(positions) if positions else np.empty(0, np.int64)
    if pos.size != np.asarray(result.nll).size:
        raise AssertionError("mlm-v1 masks drawn again do not match the evaluation's")  # a bug, never bad input
    offsets = np.asarray(split.offsets, dtype=np.int64)
    n_docs = len(offsets) - 1
    doc_start = offsets[:-1] + 2 * np.arange(n_docs, dtype=np.int64)  # each document's [CLS]
    doc = np.searchsorted(doc_start, pos, side="right") - 1
    # selected positions are in stream order, so each document's are one run
    starts = np.searchsorted(doc, np.arange(n_docs), side="left")
    ends = np.searchsorted(doc, np.arange(n_docs), side="right")
    sums, counts = _sums(np.asarray(result.nll, dtype=np.float64), starts, ends)
    return DocumentLosses(str(split.name), sums, counts)


def document_losses(result: Any, split: Any, tokenizer: Any) -> DocumentLosses:
    """Per-document losses of a clm-v1 or mlm-v1 result on `split`."""
    if str(result.protocol).startswith("mlm"):
        return mlm_document_losses(result, split, tokenizer)
    return clm_document_losses(result, split, tokenizer)
