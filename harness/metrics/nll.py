"""Logits to per-target NLLs, a batch at a time, with at most one batch of full-vocabulary logits alive.

Each scored target's NLL is computed in float32 from its own row of logits (one log-softmax); the
protocols store it at the target's place in a float64 array and sum with `math.fsum`. So batching,
window order and rerun cannot change a result beyond what the model's own logits change.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.metrics.protocol import LogitsModel

# Bytes of float32 logits one batch may hold (at least one window is always taken). On a CPU a batch's
# logits should stay in the last-level cache and below malloc's mmap threshold (32 MiB): a bigger batch
# gains nothing in the matmuls and loses far more in memory traffic and page faults. On a GPU, big batches.
CPU_LOGITS_BUDGET = 16 * 2**20
GPU_LOGITS_BUDGET = 1 * 2**30
# Rows of logits turned into NLLs at a time: small enough that the log-softmax temporary stays in cache.
_NLL_CHUNK_BYTES = 4 * 2**20

Progress = Callable[[int, int], None]


def row_nll(rows: torch.Tensor, targets: torch.Tensor, want_correct: bool = False):
    """Per-row NLL (float32) of `targets` under `rows` [K, V] of logits, and whether the argmax is the target.

    One log-softmax per row over all of the model's outputs, taken in chunks of rows so the temporary
    stays small; a row's value does not depend on which other rows share its chunk.
    """
    k, v = rows.shape
    nll = torch.empty(k, dtype=torch.float32, device=rows.device)
    correct = torch.empty(k, dtype=torch.bool, device=rows.device) if want_correct else None
    chunk = max(1, _NLL_CHUNK_BYTES // (4 * v)) if rows.device.type == "cpu" else max(1, 2**28 // (4 * v))
    for i in range(0, k, chunk):
        x = rows[i : i + chunk]
        if x.dtype != torch.float32:
            x = x.float()
        t = targets[i : i + chunk]
        nll[i : i + chunk] = F.cross_entropy(x, t, reduction="none")
        if correct is not None:
            correct[i : i + chunk] = x.argmax(dim=-1) == t
    return nll, correct


class Batches:
    """Items (windows, blocks) grouped by length, so that no batch is ever padded, then cut into batches.

    With `batch_tokens` the batch size is fixed up front; otherwise the first batch holds one item, and
    the size is set from the device its logits came back on (`budget()`): a `LogitsModel` need not say
    where it runs.
    """

    def __init__(self, items: Sequence[Any], length_of: Callable[[Any], int], *, batch_tokens: int | None,
                 n_outputs: int, budget: int | None):
        if batch_tokens is not None and (isinstance(batch_tokens, bool) or batch_tokens < 1):
            raise HarnessError("eval-invalid", f"the batch size must be a positive integer, got {batch_tokens!r}")
        self.groups: dict[int, list[Any]] = {}
        for it in items:
            self.groups.setdefault(length_of(it), []).append(it)
        self.batch_tokens, self.n_outputs, self.budget = batch_tokens, n_outputs, budget
        self.size: dict[int, int] = {}  # items per batch, by length
        self.device: torch.device | None = None

    def _size(self, length: int, device: torch.device | None) -> int | None:
        if self.batch_tokens is not None:
            return max(1, self.batch_tokens // length)
        if device is None:
            return None
        budget = self.budget
        if budget is None:
            budget = CPU_LOGITS_BUDGET if device.type == "cpu" else GPU_LOGITS_BUDGET
        return max(1, budget // (4 * length * self.n_outputs))

    def saw(self, logits: torch.Tensor) -> None:
        """Called with each batch's logits: the first one fixes the batch size."""
        if self.device is None:
            self.device = logits.device
        for length in self.groups:
            if length not in self.size:
                size = self._size(length, self.device)
                if size is not None:
                    self.size[length] = size

    def __iter__(self):
        for length, items in self.groups.items():
            i = 0
            while i < len(items):
                take = self.size.get(length) or self._size(length, None) or 1
                yield length, items[i : i + take]
                i += take


def checked_logits(model: LogitsModel, inputs: torch.Tensor, n_outputs: int) -> torch.Tensor:
    logits = model.logits(inputs)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(inputs.shape) or logits.shape[-1] != n_outputs:
        raise HarnessError("model-output-invalid", f"the model returned logits of shape {tuple(logits.shape)} for "
                           f"input {tuple(inputs.shape)}; expected [B, T, {n_outputs}]")
    return logits
