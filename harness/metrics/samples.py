"""What the model writes: continuations of the course's prompts (causal LMs) and fill-ins of its masked
sentences (masked LMs), through the same `LogitsModel` seam as the metrics — so a student's own code
answers from the sandbox one step at a time like any other model.

Causal models: each prompt (after the end-of-text token where the tokenizer has one, as every document
of clm-v1 starts) is continued for `max_new_tokens`, greedily and by seeded sampling (softmax of
logits / temperature over the top_k tokens), each window cropped to the model's last `max_positions`
tokens. Masked LMs: `[CLS] sentence [SEP]` with each `[MASK]` marker the tokenizer's mask token; for
each mask the `top` most likely tokens and their probabilities, from one forward.

Byte-identical on rerun and across CPU thread counts. What could differ is the model's float32 logits, in
their last bits (a matmul's summation order follows the thread count). So no decision is taken on them
directly: each row is cast to float64 and rounded to a multiple of `LOGIT_GRID` (2^-12, exact in
float64), and everything after is a fixed float64 computation on CPU: greedy is the lowest id among the
largest rounded logits; sampling keeps the tokens whose rounded logit reaches the top_k-th one (ties kept
together, never split by position), weighs them by exp((x - max) / temperature), walks the cumulative sum
in id order and stops where it passes u × total, with u drawn from `numpy.random.PCG64([seed, prompt
index])` — one draw per step, so a prompt's text does not depend on the other prompts. Tokens tied in
the model (identical rows) stay tied through last-bit noise; a step can still change only when a logit
lies within that noise (~1e-6) of a grid boundary that decides the outcome or u lies within it of a
cumulative-sum boundary, about once in a million steps. Fill-in probabilities are stored to
`PROB_DIGITS` decimals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from harness.course.config import MASK_MARKER
from harness.errors import HarnessError

SAMPLES_VERSION = "samples-v1"
LOGIT_GRID = 2.0**-12
PROB_DIGITS = 4


@dataclass(frozen=True)
class Continuation:
    """One prompt continued: `greedy` and `sampled` are the new text only (the prompt not repeated)."""

    prompt: str
    greedy: str = ""
    sampled: str = ""
    greedy_tokens: int = 0
    sampled_tokens: int = 0
    greedy_ended: bool = False  # the model wrote end-of-text before max_new_tokens
    sampled_ended: bool = False
    prompt_tokens: int = 0
    error: str | None = None  # why this prompt could not be written from (e.g. a character the tokenizer lacks)


@dataclass(frozen=True)
class FillIn:
    token: str
    id: int
    probability: float


@dataclass(frozen=True)
class MaskedSentence:
    """One masked sentence: for each of its masks in order, the most likely tokens, best first."""

    sentence: str
    masks: tuple[tuple[FillIn, ...], ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Samples:
    kind: str  # "continuations" | "fill-ins"
    settings: dict[str, Any]
    continuations: tuple[Continuation, ...] = ()
    fill_ins: tuple[MaskedSentence, ...] = ()
    version: str = field(default=SAMPLES_VERSION)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fill_ins"] = [{"sentence": m.sentence, "error": m.error,
                          "masks": [[asdict(f) for f in mask] for mask in m.masks]} for m in self.fill_ins]
        d["continuations"] = [asdict(c) for c in self.continuations]
        return d


# ---------------------------------------------------------------------------------------------------------
# the decisions: pure functions of one row of logits
# ---------------------------------------------------------------------------------------------------------


def rounded_logits(row: torch.Tensor | np.ndarray, vocab_size: int) -> np.ndarray:
    """The first `vocab_size` logits in float64, on the grid (NaN: -inf: it can never be chosen)."""
    x = row.detach().float().cpu().numpy() if isinstance(row, torch.Tensor) else np.asarray(row, np.float32)
    x = x[:vocab_size].astype(np.float64)
    x[np.isnan(x)] = -np.inf
    return np.round(x / LOGIT_GRID) * LOGIT_GRID  # both steps exact in float64 for |x| < 2^40


def greedy_pick(x: np.ndarray, allowed: np.ndarray) -> int:
    """The lowest id among the largest allowed rounded logits."""
    masked = np.where(allowed, x, -np.inf)
    if not np.isfinite(masked.max()):
        return int(np.flatnonzero(allowed)[0])
    return int(np.argmax(masked))  # numpy: the first of equal maxima


def sample_pick(x: np.ndarray, allowed: np.ndarray, *, temperature: float, top_k: int, u: float) -> int:
    """The token drawn by `u` in [0, 1) from softmax(x / temperature) over the top_k allowed tokens."""
    masked = np.where(allowed, x, -np.inf)
    top = masked.max()
    if not np.isfinite(top):
        return greedy_pick(x, allowed)
    keep = np.isfinite(masked)
    if 0 < top_k < int(keep.sum()):
        kth = np.partition(masked[keep], -top_k)[-top_k]
        keep &= masked >= kth
    w = np.where(keep, np.exp((np.where(keep, masked, top) - top) / temperature), 0.0)
    cum = np.cumsum(w)  # sequential, in id order
    i = int(np.searchsorted(cum, u * cum[-1], side="right"))
    return min(i, int(np.flatnonzero(keep)[-1]))  # u * total rounding up to the total


def top_fill_ins(x: np.ndarray, allowed: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely allowed tokens (rounded logit descending, then id) with their probabilities under
    the softmax over every token the tokenizer has, rounded to PROB_DIGITS decimals."""
    finite = np.isfinite(x)
    if not finite.any():
        return []
    top = x[finite].max()
    p = np.where(finite, np.exp(np.where(finite, x, top) - top), 0.0)
    p /= p.sum()
    ids = np.flatnonzero(allowed & finite)
    order = np.lexsort((ids, -x[ids]))[:k]
    return [(int(ids[j]), round(float(p[ids[j]]), PROB_DIGITS)) for j in order]


# ---------------------------------------------------------------------------------------------------------
# driving the model
# ---------------------------------------------------------------------------------------------------------


def _check_vocabulary(model: Any, tokenizer: Any) -> None:
    if int(model.n_outputs) < int(tokenizer.vocab_size):
        raise HarnessError("vocab-mismatch", f"the model has {int(model.n_outputs):,} outputs but tokenizer "
                           f"{tokenizer.name!r} has {int(tokenizer.vocab_size):,} tokens; it cannot write with it")


def _ordinary(tokenizer: Any, V: int) -> np.ndarray:
    """Which of the first `V` ids are the tokenizer's ordinary tokens (its special ones are not)."""
    allowed = np.ones(V, dtype=bool)
    allowed[[i for i in tokenizer.special_ids if i < V]] = False
    return allowed


def _context(model: Any, fallback: int) -> int:
    limit = getattr(model, "max_positions", None)
    return int(limit) if limit else int(fallback)


def _last_rows(model: Any, windows: list[list[int]]) -> torch.Tensor:
    inputs = torch.tensor(windows, dtype=torch.long)
    last = getattr(model, "last_logits", None)  # the sandbox: one row per window back through the pipe
    if callable(last):
        rows = last(inputs)
        if rows.dim() != 2 or rows.shape[0] != inputs.shape[0]:
            raise HarnessError("model-output-invalid", f"the model returned next-token logits of shape "
                               f"{tuple(rows.shape)} for input {tuple(inputs.shape)}; expected [B, V]")
        return rows.float().cpu()
    ask = getattr(model, "hidden_and_head", None)  # a model that hands over its head: the last row's logits only
    got = ask(inputs) if callable(ask) else None
    if got is not None and isinstance(got[0], torch.Tensor) and tuple(got[0].shape[:2]) == tuple(inputs.shape):
        hidden, head = got
        return head.logits(hidden[:, -1]).float().cpu()
    logits = model.logits(inputs)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(inputs.shape):
        raise HarnessError("model-output-invalid", f"the model returned logits of shape {tuple(logits.shape)} for "
                           f"input {tuple(inputs.shape)}; expected [B, T, V]")
    return logits[:, -1].float().cpu()


def _encode(tokenizer: Any, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text))
    except HarnessError as e:
        raise ValueError(e.message) from None


@torch.inference_mode()
def continue_prompts(model: Any, tokenizer: Any, settings: Any, *, context: int) -> Samples:
    """Greedy and sampled continuations of `settings.prompts` (a course's SampleSettings). `context` is
    the window used where the model does not say how many positions it has (the course's)."""
    from harness.metrics.protocol import as_logits_model

    model = as_logits_model(model)
    _check_vocabulary(model, tokenizer)
    L = _context(model, context)
    V = int(tokenizer.vocab_size)
    eot = tokenizer.eot_id
    # what may be written: the tokenizer's ordinary tokens, and end-of-text (which ends the text)
    allowed = _ordinary(tokenizer, V)
    if eot is not None and eot < V:
        allowed[eot] = True
    out = []
    for index, prompt in enumerate(settings.prompts):
        try:
            ids = ([eot] if eot is not None else []) + _encode(tokenizer, prompt)
        except ValueError as e:
            out.append(Continuation(prompt, error=f"the prompt cannot be tokenized: {e}"))
            continue
        if not ids:
            out.append(Continuation(prompt, error="the prompt gives no token"))
            continue
        rng = np.random.Generator(np.random.PCG64([int(settings.seed), index]))
        seqs = {"greedy": list(ids), "sampled": list(ids)}
        ended = {"greedy": False, "sampled": False}
        for _ in range(int(settings.max_new_tokens)):
            live = [k for k in seqs if not ended[k]]
            if not live:
                break
            # both streams grow one token a step, so the live ones always have equal lengths: one batch
            rows = _last_rows(model, [seqs[k][-L:] for k in live])
            u = float(rng.random())  # drawn every step, used or not: the sampled text never depends on greedy's
            for k, row in zip(live, rows):
                x = rounded_logits(row, V)
                t = greedy_pick(x, allowed) if k == "greedy" else sample_pick(
                    x, allowed, temperature=float(settings.temperature), top_k=int(settings.top_k), u=u)
                if t == eot:
                    ended[k] = True
                else:
                    seqs[k].append(t)
        new = {k: seqs[k][len(ids):] for k in seqs}
        out.append(Continuation(prompt, greedy=tokenizer.decode(new["greedy"]), sampled=tokenizer.decode(new["sampled"]),
                                greedy_tokens=len(new["greedy"]), sampled_tokens=len(new["sampled"]),
                                greedy_ended=ended["greedy"], sampled_ended=ended["sampled"],
                                prompt_tokens=len(ids)))
    return Samples("continuations", _settings(settings, L, causal=True), continuations=tuple(out))


@torch.inference_mode()
def fill_masks(model: Any, tokenizer: Any, settings: Any, *, context: int) -> Samples:
    """The `settings.top` most likely tokens for each [MASK] of each of `settings.masked`."""
    from harness.metrics.protocol import as_logits_model

    model = as_logits_model(model)
    cls_id, sep_id, mask_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id
    if cls_id is None or sep_id is None or mask_id is None:
        raise HarnessError("tokenizer-not-mlm", f"tokenizer {tokenizer.name!r} has no [CLS], [SEP] or [MASK] token "
                           "to fill masked sentences with")
    _check_vocabulary(model, tokenizer)
    L = _context(model, context)
    V = int(tokenizer.vocab_size)
    allowed = _ordinary(tokenizer, V)
    out = []
    for sentence in settings.masked:
        pieces = sentence.split(MASK_MARKER)
        try:
            ids = [cls_id]
            for j, piece in enumerate(pieces):
                if j:
                    ids.append(mask_id)
                ids += _encode(tokenizer, piece)
            ids.append(sep_id)
        except ValueError as e:
            out.append(MaskedSentence(sentence, error=f"the sentence cannot be tokenized: {e}"))
            continue
        if len(ids) > L:
            out.append(MaskedSentence(sentence, error=f"the sentence is {len(ids)} tokens, longer than the model's "
                                      f"{L} positions"))
            continue
        logits = model.logits(torch.tensor([ids], dtype=torch.long))
        if logits.dim() != 3 or logits.shape[1] != len(ids):
            raise HarnessError("model-output-invalid", f"the model returned logits of shape {tuple(logits.shape)} "
                               f"for input (1, {len(ids)}); expected [B, T, V]")
        masks = []
        for pos in (i for i, t in enumerate(ids) if t == mask_id):
            top = top_fill_ins(rounded_logits(logits[0, pos], V), allowed, int(settings.top))
            masks.append(tuple(FillIn(tokenizer.decode([i]), i, p) for i, p in top))
        out.append(MaskedSentence(sentence, masks=tuple(masks)))
    return Samples("fill-ins", _settings(settings, L, causal=False), fill_ins=tuple(out))


def _settings(settings: Any, L: int, *, causal: bool) -> dict[str, Any]:
    # the tokenizer is the submission's (results.json's `tokenizer`); its name may be a path of this run's
    common = {"context": L, "logit_grid": LOGIT_GRID}
    if causal:
        return {"max_new_tokens": int(settings.max_new_tokens), "temperature": float(settings.temperature),
                "top_k": int(settings.top_k), "seed": int(settings.seed), **common}
    return {"top": int(settings.top), "mask_marker": MASK_MARKER, **common}


def write_samples(model: Any, tokenizer: Any, family: str, settings: Any, *, context: int) -> Samples | None:
    """What a model of `family` writes under the course's [samples]; None where the course asks nothing of
    that family."""
    if family == "mlm":
        return fill_masks(model, tokenizer, settings, context=context) if settings.masked else None
    return continue_prompts(model, tokenizer, settings, context=context) if settings.prompts else None


def measured_samples(model: Any, tokenizer: Any, family: str, course: Any) -> dict[str, Any] | None:
    """What grading stores: the samples as JSON-ready values; where the model fails while writing (its
    metrics already stand), the error instead, so the rest of the grade is kept."""
    try:
        samples = write_samples(model, tokenizer, family, course.samples,
                                context=course.eval_settings(family).context)
    except HarnessError as e:
        return {"error": e.as_dict()}
    return None if samples is None else samples.to_dict()
