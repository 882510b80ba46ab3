"""clm-v1, the causal protocol (SPEC "Evaluation protocols"): every target of the stream scored once.

The stream is each document's EOT then its tokens (`windows.clm_stream`); windows of the context `L`
advance by the stride and each scores only targets no earlier window scored (`windows.clm_windows`).
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
from harness.metrics.fused import FusedScorer, Tiling
from harness.metrics.nll import Batches, Progress, checked_logits, row_nll
from harness.metrics.protocol import LogitsModel, as_logits_model
from harness.metrics.windows import ClmWindow, clm_stream, clm_windows

CLM_PROTOCOL = "clm-v1"


@dataclass(frozen=True)
class ClmResult:
    protocol: str
    split: str
    manifest_sha256: str
    tokenizer: str
    tokenizer_sha256: str | None
    context: int  # L actually used: min(requested context, the model's positions)
    requested_context: int
    stride: int  # S actually used: the requested stride (default L), at most L
    requested_stride: int | None
    max_tokens: int | None
    n_outputs: int
    vocab_size: int
    documents: int  # documents with at least one scored token
    windows: int
    tokens: int  # targets scored
    total_nll: float  # nats
    loss: float
    ppl: float
    bytes: int
    words: int
    bits_per_byte: float | None
    word_ppl: float | None
    uniform_loss: float
    unigram_loss: float
    unigram_source: str  # "train" | "evaluated"
    # end-of-text targets (each document's EOT is the target after the previous document's last token):
    # a model that saw EOT only as ignored padding never learned to predict it (finding pad-is-eot)
    eot_targets: int = 0
    eot_loss: float | None = None
    # every scored target's NLL (float64, in stream order): the paired differences calibration tests
    nll: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return public_dict(self)


def _scored_text_counts(split: Any, tokenizer: Any, stream_len: int) -> tuple[int, int, int]:
    """UTF-8 bytes and whitespace-separated words of each document's scored tokens, and how many
    documents have any; special tokens count 0 bytes."""
    offsets = np.asarray(split.offsets, dtype=np.int64)
    tokens = np.asarray(split.tokens)
    has_eot = tokenizer.eot_id is not None
    special = np.array(sorted(tokenizer.special_ids), dtype=np.int64)
    n_bytes = n_words = n_docs = 0
    for i in range(len(offsets) - 1):
        # stream position of token k of the split: k + (i + 1) with an EOT before each document, k without
        shift = i + 1 if has_eot else 0
        p0, p1 = int(offsets[i]) + shift, int(offsets[i + 1]) + shift
        if p0 >= stream_len:
            break
        lo, hi = max(p0, 1), min(p1, stream_len)
        if hi <= lo:
            continue
        ids = tokens[lo - shift : hi - shift].astype(np.int64, copy=False)
        n_docs += 1
        if special.size:
            ids = ids[~np.isin(ids, special)]
        text = tokenizer.decode(ids.tolist())
        n_bytes += len(text.encode("utf-8"))
        n_words += len(text.split())
    return n_bytes, n_words, n_docs


@dataclass(frozen=True)
class ClmPlan:
    """What clm-v1 scores, fixed before any forward: the stream, the window plan, the model's outputs."""

    stream: np.ndarray
    context: int  # L: min(the requested context, the model's positions)
    stride: int
    windows: list[ClmWindow]
    n_outputs: int


def plan_clm(model: LogitsModel, split: Any, tokenizer: Any, *, context: int, stride: int | None = None,
             max_tokens: int | None = None) -> ClmPlan:
    """The clm-v1 plan of `model` on `split`, with every check of the inputs (see `evaluate_clm`)."""
    check_split(split, tokenizer)
    L = effective_context(context, model)
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, (int, np.integer))
                               or not 1 <= stride <= context):
        raise HarnessError("eval-invalid", f"stride must be between 1 and the context ({context}), got {stride!r}")
    # a model with fewer positions than the course's context shortens the windows, and the stride with them
    stride_used = L if stride is None else min(int(stride), L)
    s = clm_stream(split, tokenizer, max_tokens)
    n = int(s.size)
    if n < 2:
        raise HarnessError("eval-empty", f"split {split.name!r} has no token to score; check the data and max_tokens")
    n_outputs = int(model.n_outputs)
    check_ids(s, tokenizer, n_outputs)
    return ClmPlan(s, L, stride_used, clm_windows(n, L, stride_used), n_outputs)


@torch.inference_mode()
def clm_nll(model: LogitsModel, plan: ClmPlan, *, batch_tokens: int | None = None,
            logits_budget: int | None = None, fused: bool | Tiling = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`plan` scored a batch of windows at a time: each batch's target positions in the stream (in stream
    order) and their NLLs (float32 values, as float64). Calibration walks several models through it in step.

    A model that hands over its hidden states and output layer (`hidden_and_head`) is scored through the
    fused head (`harness.metrics.fused`): the head runs on the scored positions only, chunk by chunk, never
    a batch's full logits; its tiles each run on one thread, so a row's NLL is the same bits at any thread
    count. `True` (the default, grading's) or a `Tiling` takes the fused head where the model offers it
    (default tiles: this machine's); `fused=False` the logits path always."""
    s_t = torch.from_numpy(plan.stream)
    n_outputs = plan.n_outputs
    scorer = None
    if fused is not False and plan.windows:
        w0 = plan.windows[0]
        probe = s_t[w0.start : w0.start + min(w0.length, 8)][None]
        scorer = FusedScorer.for_model(model, probe, n_outputs, fused if isinstance(fused, Tiling) else None)
    asked = batch_tokens
    if scorer is not None and batch_tokens is None:
        batch_tokens = scorer.batch_tokens(plan.context, plan.stride)
    batches = Batches(plan.windows, lambda w: w.length, batch_tokens=batch_tokens, n_outputs=n_outputs,
                      budget=logits_budget)
    for length, batch in batches:
        ar = torch.arange(length)
        starts = torch.tensor([w.start for w in batch], dtype=torch.long)
        inputs = s_t[starts[:, None] + ar[None, :]]  # [B, T]
        positions = np.concatenate([np.arange(w.targets.start, w.targets.stop) for w in batch])
        targets = s_t[torch.from_numpy(positions)]
        if scorer is not None:
            # a caller that caps the batch below one window's scored rows (calibration's rounds) gets them in
            # pieces of whole tiles as the head scores them: the body runs once, the bits are the same (a cap
            # at or above the batch's rows, or none, is one piece)
            for a, values in scorer.pieces(inputs, [w.first_scored for w in batch], targets, asked):
                yield positions[a : a + values.shape[0]], values.double().cpu().numpy()
            continue
        logits = checked_logits(model, inputs, n_outputs)
        batches.saw(logits)
        targets = targets.to(logits.device)
        # each window's scored rows are a view of the logits: nothing is copied
        parts, o = [], 0
        for k, w in enumerate(batch):
            parts.append(row_nll(logits[k, w.first_scored :], targets[o : o + w.scored])[0])
            o += w.scored
        del logits  # never two batches of full-vocabulary logits at once
        yield positions, torch.cat(parts).double().cpu().numpy()


@torch.inference_mode()
def evaluate_clm(
    model: Any,
    split: Any,
    tokenizer: Any,
    *,
    context: int,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_tokens: int | None = None,
    train_split: Any | None = None,
    progress: Progress | None = None,
    logits_budget: int | None = None,
    fused: bool | Tiling = True,
) -> ClmResult:
    """clm-v1 of `model` on `split` (see SPEC "Evaluation protocols").

    `context` and `stride` are the course's; the windows are `L = min(context, model.max_positions)` long
    and the stride is cut to `L` with them. `batch_tokens` caps the input positions per forward (default:
    as many windows as keep one batch of float32 logits under `logits_budget` bytes: 16 MiB on a CPU,
    1 GiB on a GPU). `train_split` gives the unigram baseline's counts (its clm-v1 stream: EOT and tokens
    per document); without it they come from the evaluated split (`unigram_source = "evaluated"`).
    `progress(done, total)` is called with scored targets after each batch. A model that hands over its
    hidden states and output layer (`hidden_and_head`) is scored through the fused head
    (`harness.metrics.fused`): the head runs on the scored positions only, chunk by chunk, never a batch's
    full logits, and a batch holds `Tiling.batch_rows` scored rows (the default, grading's). `fused=False`
    takes the logits path always; a `Tiling` sets the fused head's tiles (default: this machine's).
    """
    model = as_logits_model(model)
    plan = plan_clm(model, split, tokenizer, context=context, stride=stride, max_tokens=max_tokens)
    s, L, stride_used, n_outputs = plan.stream, plan.context, plan.stride, plan.n_outputs
    n = int(s.size)

    nll = np.zeros(n, dtype=np.float64)  # nll[p]: NLL of target s[p]; s[0] is never a target
    seen = np.zeros(n, dtype=np.int64)
    total_targets = n - 1
    done = 0
    for positions, values in clm_nll(model, plan, batch_tokens=batch_tokens, logits_budget=logits_budget,
                                     fused=fused):
        nll[positions] = values
        seen[positions] += 1
        done += int(positions.size)
        if progress is not None:
            progress(done, total_targets)

    if seen[0] or not (seen[1:] == 1).all():
        raise AssertionError("clm-v1 window plan did not score every target once")  # a bug here, never bad input
    total = math.fsum(nll[1:].tolist())
    eot_at = np.flatnonzero(s[1:] == tokenizer.eot_id) + 1 if tokenizer.eot_id is not None else np.empty(0, np.int64)
    eot_loss = math.fsum(nll[eot_at].tolist()) / eot_at.size if eot_at.size else None
    tokens = total_targets
    loss = total / tokens
    n_bytes, n_words, n_docs = _scored_text_counts(split, tokenizer, n)
    vocab = int(tokenizer.vocab_size)
    if train_split is not None:
        counts, n_count = unigram_counts(clm_stream(train_split, tokenizer, None), vocab)
        source = "train"
    else:
        counts, n_count = unigram_counts(clm_stream(split, tokenizer, None), vocab)
        source = "evaluated"
    return ClmResult(
        protocol=CLM_PROTOCOL,
        split=str(split.name),
        manifest_sha256=str(split.manifest_sha256),
        tokenizer=str(tokenizer.name),
        tokenizer_sha256=getattr(tokenizer, "sha256", None),
        context=L,
        requested_context=int(context),
        stride=stride_used,
        requested_stride=None if stride is None else int(stride),
        max_tokens=None if max_tokens is None else int(max_tokens),
        n_outputs=n_outputs,
        vocab_size=vocab,
        documents=n_docs,
        windows=len(plan.windows),
        tokens=tokens,
        total_nll=total,
        loss=loss,
        ppl=safe_exp(loss),
        bytes=n_bytes,
        words=n_words,
        bits_per_byte=total / math.log(2) / n_bytes if n_bytes else None,
        word_ppl=safe_exp(total / n_words) if n_words else None,
        uniform_loss=math.log(vocab),
        unigram_loss=unigram_loss(s[1:], counts, n_count, vocab),
        unigram_source=source,
        eot_targets=int(eot_at.size),
        eot_loss=eot_loss,
        nll=nll[1:],
    )

