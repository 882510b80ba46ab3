"""mlm-v1, the masked protocol (SPEC "Evaluation protocols"): seeded masks, each selected position scored.

The stream is `[CLS] tokens [SEP]` per document (`windows.mlm_stream`), cut into blocks of the context
(`windows.mlm_blocks`), each masked by a generator seeded with the seed and the block's index
(`windows.mlm_masks`). Optionally pseudo-perplexity: positions masked one at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from harness.errors import HarnessError
from harness.metrics.common import (check_ids, check_split, effective_context, public_dict, safe_exp, unigram_counts,
                                    unigram_loss)
from harness.metrics.nll import Batches, Progress, checked_logits, row_nll
from harness.metrics.protocol import LogitsModel, as_logits_model
from harness.metrics.windows import DEFAULT_MLM_SEED, mlm_blocks, mlm_masks, mlm_special_ids, mlm_stream

MLM_PROTOCOL = "mlm-v1"


@dataclass(frozen=True)
class MlmResult:
    protocol: str
    split: str
    manifest_sha256: str
    tokenizer: str
    tokenizer_sha256: str | None
    context: int
    requested_context: int
    seed: int
    max_tokens: int | None
    n_outputs: int
    vocab_size: int
    stream_tokens: int
    blocks: int
    tokens: int  # selected positions scored
    total_nll: float
    loss: float
    ppl: float
    correct: int
    accuracy: float
    uniform_loss: float
    unigram_loss: float
    unigram_source: str
    pseudo_ppl_tokens: int  # requested
    pseudo_tokens: int  # scored
    pseudo_total_nll: float | None
    pseudo_loss: float | None
    pseudo_ppl: float | None
    nll: np.ndarray | None = field(default=None, repr=False, compare=False)  # per selected position, in order

    def to_dict(self) -> dict[str, Any]:
        return public_dict(self)


@dataclass(frozen=True)
class MlmPlan:
    """What mlm-v1 scores, fixed before any forward: the stream, its blocks, each block's masked input and
    selected positions (blocks with none left out), the model's outputs."""

    stream: np.ndarray
    context: int  # L: min(the requested context, the model's positions)
    blocks: list[tuple[int, int]]  # (start, length)
    masked: list[tuple[int, int, int, np.ndarray, np.ndarray]]  # (first slot, start, length, inputs, selected)
    targets: int  # selected positions, all blocks
    n_outputs: int


def plan_mlm(model: LogitsModel, split: Any, tokenizer: Any, *, context: int, seed: int = DEFAULT_MLM_SEED,
             max_tokens: int | None = None) -> MlmPlan:
    """The mlm-v1 plan of `model` on `split`, with every check of the inputs (see `evaluate_mlm`)."""
    check_split(split, tokenizer)
    mlm_special_ids(tokenizer)
    L = effective_context(context, model)
    stream = mlm_stream(split, tokenizer, max_tokens)
    n_outputs = int(model.n_outputs)
    check_ids(stream, tokenizer, n_outputs)
    blocks = mlm_blocks(stream.size, L)
    if not blocks:
        raise HarnessError("eval-empty", f"split {split.name!r} has no block to score; check the data and max_tokens")
    # masks first: they fix the targets, the count for progress and the baselines
    masked = []
    n_selected = 0
    for b, (start, length) in enumerate(blocks):
        inputs, selected = mlm_masks(stream[start : start + length], b, tokenizer, seed)
        where = np.flatnonzero(selected)
        if where.size:  # a block with nothing selected needs no forward
            masked.append((n_selected, start, length, inputs, where))
            n_selected += int(where.size)
    if n_selected == 0:
        raise HarnessError("eval-empty", f"split {split.name!r} gave no masked position to score; use more tokens")
    return MlmPlan(stream, L, blocks, masked, n_selected, n_outputs)


@torch.inference_mode()
def mlm_nll(model: LogitsModel, plan: MlmPlan, *, batch_tokens: int | None = None, logits_budget: int | None = None
            ) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray]]:
    """`plan` scored a batch of blocks at a time: each batch's slots (consecutive, in the order of block and
    position), their NLLs (float32 values, as float64), whether the argmax was right, and the target ids.
    Calibration walks several models through it in step."""
    stream, n_outputs = plan.stream, plan.n_outputs
    batches = Batches(plan.masked, lambda m: m[2], batch_tokens=batch_tokens, n_outputs=n_outputs,
                      budget=logits_budget)
    for length, batch in batches:
        logits = checked_logits(model, torch.from_numpy(np.stack([m[3] for m in batch])), n_outputs)
        batches.saw(logits)
        # only the selected rows are copied out of the logits
        flat = np.concatenate([k * length + m[4] for k, m in enumerate(batch)])
        rows = logits.reshape(-1, n_outputs).index_select(0, torch.from_numpy(flat).to(logits.device))
        del logits  # never two batches of full-vocabulary logits at once
        targets = np.concatenate([stream[m[1] + m[4]] for m in batch])
        batch_nll, row_ok = row_nll(rows, torch.from_numpy(targets).to(rows.device), want_correct=True)
        del rows
        dest = slice(batch[0][0], batch[-1][0] + batch[-1][4].size)  # a batch's slots are consecutive
        yield dest, batch_nll.double().cpu().numpy(), row_ok.cpu().numpy(), targets


@torch.inference_mode()
def evaluate_mlm(
    model: Any,
    split: Any,
    tokenizer: Any,
    *,
    context: int,
    seed: int = DEFAULT_MLM_SEED,
    max_tokens: int | None = None,
    batch_size: int | None = None,
    pseudo_ppl_tokens: int = 0,
    train_split: Any | None = None,
    progress: Progress | None = None,
    logits_budget: int | None = None,
) -> MlmResult:
    """mlm-v1 of `model` on `split` (see SPEC "Evaluation protocols").

    `batch_size` blocks per forward (default: as many as keep one batch of float32 logits under
    `logits_budget`, as in `evaluate_clm`). `pseudo_ppl_tokens > 0` adds pseudo-perplexity: each of the
    first that many non-special stream tokens is masked alone in its (otherwise unmasked) block and
    scored. `train_split` gives the unigram baseline's counts (its documents' tokens). `progress(done,
    total)` counts scored positions.
    """
    model = as_logits_model(model)
    if isinstance(pseudo_ppl_tokens, bool) or pseudo_ppl_tokens < 0:
        raise HarnessError("eval-invalid", f"pseudo_ppl_tokens must be >= 0, got {pseudo_ppl_tokens!r}")
    plan = plan_mlm(model, split, tokenizer, context=context, seed=seed, max_tokens=max_tokens)
    stream, L, blocks, n_selected, n_outputs = plan.stream, plan.context, plan.blocks, plan.targets, plan.n_outputs
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise HarnessError("eval-invalid", f"batch_size must be a positive integer, got {batch_size!r}")
    batch_tokens = None if batch_size is None else int(batch_size) * L
    special = np.array(sorted(tokenizer.special_ids), dtype=np.int64)
    pseudo_positions = np.flatnonzero(~np.isin(stream[: blocks[-1][0] + blocks[-1][1]], special))[: pseudo_ppl_tokens]
    total_work = n_selected + int(pseudo_positions.size)

    nll = np.zeros(n_selected, dtype=np.float64)  # in the order of (block, position)
    correct = np.zeros(n_selected, dtype=bool)
    target_ids = np.zeros(n_selected, dtype=np.int64)
    done = 0
    for dest, values, ok, targets in mlm_nll(model, plan, batch_tokens=batch_tokens, logits_budget=logits_budget):
        nll[dest] = values
        correct[dest] = ok
        target_ids[dest] = targets
        done += int(targets.size)
        if progress is not None:
            progress(done, total_work)

    pseudo_nll = np.zeros(pseudo_positions.size, dtype=np.float64)
    if pseudo_positions.size:
        _, _, mask_id = mlm_special_ids(tokenizer)
        # one query per position: its block, unmasked except that position
        block_len = dict(blocks)
        queries = [(q, int(p // L) * L, int(p % L)) for q, p in enumerate(pseudo_positions)]
        batches = Batches(queries, lambda q: block_len[q[1]], batch_tokens=batch_tokens, n_outputs=n_outputs,
                           budget=logits_budget)
        for length, batch in batches:
            rows_in = np.stack([stream[start : start + length] for _, start, _ in batch])
            at = np.arange(len(batch))
            js = np.array([j for _, _, j in batch], dtype=np.int64)
            targets = rows_in[at, js].copy()
            rows_in[at, js] = mask_id
            logits = checked_logits(model, torch.from_numpy(rows_in), n_outputs)
            batches.saw(logits)
            rows = logits.reshape(-1, n_outputs).index_select(0, torch.from_numpy(at * length + js).to(logits.device))
            del logits
            batch_nll, _ = row_nll(rows, torch.from_numpy(targets).to(rows.device))
            del rows
            pseudo_nll[[q for q, _, _ in batch]] = batch_nll.double().cpu().numpy()
            done += len(batch)
            if progress is not None:
                progress(done, total_work)

    total = math.fsum(nll.tolist())
    loss = total / n_selected
    n_correct = int(correct.sum())
    vocab = int(tokenizer.vocab_size)
    # counts of the documents' tokens ([CLS]/[SEP] are never targets, so they are left out)
    source_split = train_split if train_split is not None else split
    counts, n_count = unigram_counts(np.asarray(source_split.tokens), vocab)
    if pseudo_positions.size:
        p_total = math.fsum(pseudo_nll.tolist())
        p_loss: float | None = p_total / pseudo_positions.size
        p_ppl: float | None = safe_exp(p_loss)
    else:
        p_total = p_loss = p_ppl = None
    return MlmResult(
        protocol=MLM_PROTOCOL,
        split=str(split.name),
        manifest_sha256=str(split.manifest_sha256),
        tokenizer=str(tokenizer.name),
        tokenizer_sha256=getattr(tokenizer, "sha256", None),
        context=L,
        requested_context=int(context),
        seed=int(seed),
        max_tokens=None if max_tokens is None else int(max_tokens),
        n_outputs=n_outputs,
        vocab_size=vocab,
        stream_tokens=int(stream.size),
        blocks=len(blocks),
        tokens=n_selected,
        total_nll=total,
        loss=loss,
        ppl=safe_exp(loss),
        correct=n_correct,
        accuracy=n_correct / n_selected,
        uniform_loss=math.log(vocab),
        unigram_loss=unigram_loss(target_ids, counts, n_count, vocab),
        unigram_source="train" if train_split is not None else "evaluated",
        pseudo_ppl_tokens=int(pseudo_ppl_tokens),
        pseudo_tokens=int(pseudo_positions.size),
        pseudo_total_nll=p_total,
        pseudo_loss=p_loss,
        pseudo_ppl=p_ppl,
        nll=nll,
    )
