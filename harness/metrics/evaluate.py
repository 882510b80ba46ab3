"""The evaluation protocols every grade stands on: clm-v1 (causal LM) and mlm-v1 (masked LM).

The evaluator hands a model token windows and takes back logits; it never knows what answers. Anything
with `n_outputs`, `max_positions` and `logits(input_ids)` is a model here (`LogitsModel`); a plain
`nn.Module` whose forward returns logits (or a tuple, dict or Hugging Face output holding them) is
wrapped by `TorchLogitsModel`. The canonical models, Hugging Face models and the sandboxed custom code
all answer the same way.

What makes the numbers trustworthy:
- The window plan is a pure function of the stream length, the context and the stride
  (`clm_windows`), the masks a pure function of the block, its index and the seed (`mlm_masks`).
  Tests check them directly.
- Each scored target's NLL is computed in float32 from its own row of logits (one log-softmax), stored
  at the target's position in a float64 array, and the total is `math.fsum` of that array. So batching,
  window order and rerun cannot change the result beyond what the model's own logits change.
- At most one batch of full-vocabulary logits is alive at once; its size is bounded by a byte budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.metrics.fused import FusedScorer, Tiling

CLM_PROTOCOL = "clm-v1"
MLM_PROTOCOL = "mlm-v1"
DEFAULT_MLM_SEED = 1234
MASK_RATE = 0.15

# Bytes of float32 logits one batch may hold (at least one window is always taken). On a CPU a batch's
# logits should stay in the last-level cache and below malloc's mmap threshold (32 MiB): a bigger batch
# gains nothing in the matmuls and loses far more in memory traffic and page faults. On a GPU, big batches.
CPU_LOGITS_BUDGET = 16 * 2**20
GPU_LOGITS_BUDGET = 1 * 2**30
# Rows of logits turned into NLLs at a time: small enough that the log-softmax temporary stays in cache.
_NLL_CHUNK_BYTES = 4 * 2**20

Progress = Callable[[int, int], None]

# Attribute names under which models record how many positions they have, most specific first.
_POSITION_ATTRS = ("n_positions", "max_position_embeddings", "block_size", "n_ctx", "context", "max_seq_len",
                   "context_length", "seq_len")


# ----------------------------------------------------------------------------------------------------------
# The model seam
# ----------------------------------------------------------------------------------------------------------


@runtime_checkable
class LogitsModel(Protocol):
    """What the evaluator asks of a model: logits for a batch of token windows.

    `n_outputs` is the size of the model's softmax (a nanoGPT model padded to 50,304 keeps its extra
    logits); `max_positions` the longest window it takes (None: no limit). `logits` returns
    [B, T, n_outputs] for `input_ids` [B, T]; masked LMs also take `attention_mask` (the evaluator never
    pads, so it passes None).
    """

    n_outputs: int
    max_positions: int | None

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...


def first_logits(out: Any) -> torch.Tensor:
    """Logits from whatever a forward returned: a tensor, a model output, a dict, or a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict) and out:
        value = out["logits"] if "logits" in out else next(iter(out.values()))
        return first_logits(value)
    if isinstance(out, (tuple, list)) and out:
        return first_logits(out[0])
    raise HarnessError("model-output-invalid", f"the model's forward returned {type(out).__name__}, not logits; "
                       "it must return a [B, T, V] tensor, or a tuple, dict or model output whose first item is one")


class TorchLogitsModel:
    """Any `nn.Module` whose forward takes `input_ids` [B, T] and returns logits, as a `LogitsModel`.

    Puts the module in eval mode (and on `device` if given). `n_outputs` and `max_positions` are taken
    from the arguments, else from the module (its output embedding, a Hugging Face or nanoGPT-style
    config), else `n_outputs` from one forward of a single token.
    """

    def __init__(self, module: torch.nn.Module, *, n_outputs: int | None = None, max_positions: int | None = None,
                 device: str | torch.device | None = None):
        self.module = module
        if device is not None:
            module.to(device)
        module.eval()
        first = next(iter(module.parameters()), None)
        self.device = torch.device(device) if device is not None else (
            first.device if first is not None else torch.device("cpu"))
        self.max_positions = max_positions if max_positions is not None else _max_positions_of(module)
        self._n_outputs = n_outputs
        try:
            import inspect

            params = inspect.signature(module.forward).parameters
            self._kw_use_cache = "use_cache" in params
            self._kw_attention_mask = "attention_mask" in params or any(
                p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            self._kw_use_cache = self._kw_attention_mask = False

    @property
    def n_outputs(self) -> int:
        if self._n_outputs is None:
            self._n_outputs = int(self.logits(torch.zeros(1, 1, dtype=torch.long)).shape[-1])
        return self._n_outputs

    @n_outputs.setter
    def n_outputs(self, value: int) -> None:
        self._n_outputs = int(value)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self._kw_use_cache:
            kwargs["use_cache"] = False  # a Hugging Face model would otherwise keep every layer's keys/values
        if attention_mask is not None:
            if not self._kw_attention_mask:
                raise HarnessError("model-no-attention-mask", "this model's forward takes no attention_mask")
            kwargs["attention_mask"] = attention_mask.to(self.device)
        with torch.inference_mode():
            out = self.module(input_ids.to(self.device), **kwargs)
        logits = first_logits(out)
        if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(input_ids.shape):
            raise HarnessError(
                "model-output-invalid",
                f"the model returned logits of shape {tuple(logits.shape)} for input {tuple(input_ids.shape)}; "
                "it must return [B, T, V], one row per input position (not only the last one)")
        return logits

    def hidden_and_head(self, input_ids: torch.Tensor):
        """The module's final hidden states and output layer (harness.metrics.fused), where it offers them."""
        ask = getattr(self.module, "hidden_and_head", None)
        if not callable(ask):
            return None
        with torch.inference_mode():
            return ask(input_ids.to(self.device))


def _max_positions_of(module: torch.nn.Module) -> int | None:
    config = getattr(module, "config", None)
    for owner in (config, module):
        if owner is None:
            continue
        for name in _POSITION_ATTRS:
            value = getattr(owner, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def as_logits_model(model: Any, *, device: str | torch.device | None = None) -> LogitsModel:
    """A `LogitsModel` as is; an `nn.Module` wrapped in `TorchLogitsModel`."""
    if isinstance(model, torch.nn.Module):
        return TorchLogitsModel(model, device=device)
    if callable(getattr(model, "logits", None)) and hasattr(model, "n_outputs"):
        return model
    raise HarnessError("model-invalid", f"{type(model).__name__} is neither a LogitsModel nor a torch nn.Module")


# ----------------------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------------------


def _check_split(split: Any, tokenizer: Any) -> None:
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


def _effective_context(context: int, model: LogitsModel) -> int:
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 1:
        raise HarnessError("eval-invalid", f"context must be a positive integer, got {context!r}")
    limit = model.max_positions
    return int(min(context, limit)) if limit else int(context)


def _check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and (isinstance(max_tokens, bool) or max_tokens < 1):
        raise HarnessError("eval-invalid", f"max_tokens must be a positive integer or unset, got {max_tokens!r}")


def _check_ids(stream: np.ndarray, tokenizer: Any, n_outputs: int) -> None:
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


def _public(result: Any) -> dict[str, Any]:
    """A result as JSON-ready values, without its per-target NLLs (`nll`: kept for calibration's statistics)."""
    return _plain({f.name: getattr(result, f.name) for f in fields(result) if f.name != "nll"})


def _safe_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _row_nll(rows: torch.Tensor, targets: torch.Tensor, want_correct: bool = False):
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


class _Batches:
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


def _checked_logits(model: LogitsModel, inputs: torch.Tensor, n_outputs: int) -> torch.Tensor:
    logits = model.logits(inputs)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(inputs.shape) or logits.shape[-1] != n_outputs:
        raise HarnessError("model-output-invalid", f"the model returned logits of shape {tuple(logits.shape)} for "
                           f"input {tuple(inputs.shape)}; expected [B, T, {n_outputs}]")
    return logits


def _unigram_counts(stream: np.ndarray, vocab_size: int) -> tuple[np.ndarray, int]:
    counts = np.bincount(stream.astype(np.int64, copy=False), minlength=vocab_size)[:vocab_size]
    return counts, int(stream.size)


def _unigram_loss(targets: np.ndarray, counts: np.ndarray, n: int, vocab_size: int) -> float:
    """Mean NLL of `targets` under add-one smoothed unigram frequencies: p(t) = (count_t + 1) / (n + V)."""
    if targets.size == 0:
        return math.nan
    logp = np.log(counts[targets].astype(np.float64) + 1.0) - math.log(n + vocab_size)
    return -math.fsum(logp.tolist()) / targets.size


# ----------------------------------------------------------------------------------------------------------
# clm-v1
# ----------------------------------------------------------------------------------------------------------


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
    _check_max_tokens(max_tokens)
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
        return _public(self)


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
    (harness.metrics.fused): the head runs on the scored positions only, chunk by chunk, never a batch's
    full logits; its batches hold `Tiling.batch_rows` scored rows. `fused=False` takes the logits path
    always; a `Tiling` sets the fused head's tiles (default: this machine's).
    """
    model = as_logits_model(model)
    _check_split(split, tokenizer)
    L = _effective_context(context, model)
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
    _check_ids(s, tokenizer, n_outputs)
    plan = clm_windows(n, L, stride_used)

    nll = np.zeros(n, dtype=np.float64)  # nll[p]: NLL of target s[p]; s[0] is never a target
    seen = np.zeros(n, dtype=np.int64)
    s_t = torch.from_numpy(s)
    total_targets = n - 1
    done = 0
    scorer = None
    if fused is not False:
        probe = s_t[plan[0].start : plan[0].start + min(plan[0].length, 8)][None]
        scorer = FusedScorer.for_model(model, probe, n_outputs, fused if isinstance(fused, Tiling) else None)
    if scorer is not None and batch_tokens is None:
        batch_tokens = scorer.batch_tokens(L, stride_used)
    batches = _Batches(plan, lambda w: w.length, batch_tokens=batch_tokens, n_outputs=n_outputs,
                       budget=logits_budget)
    for length, batch in batches:
        ar = torch.arange(length)
        starts = torch.tensor([w.start for w in batch], dtype=torch.long)
        inputs = s_t[starts[:, None] + ar[None, :]]  # [B, T]
        positions = np.concatenate([np.arange(w.targets.start, w.targets.stop) for w in batch])
        targets = s_t[torch.from_numpy(positions)]
        if scorer is not None:
            row_nll = scorer.nll(inputs, [w.first_scored for w in batch], targets)
        else:
            logits = _checked_logits(model, inputs, n_outputs)
            batches.saw(logits)
            targets = targets.to(logits.device)
            # each window's scored rows are a view of the logits: nothing is copied
            parts, o = [], 0
            for k, w in enumerate(batch):
                parts.append(_row_nll(logits[k, w.first_scored :], targets[o : o + w.scored])[0])
                o += w.scored
            del logits  # never two batches of full-vocabulary logits at once
            row_nll = torch.cat(parts)
        nll[positions] = row_nll.double().cpu().numpy()
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
        counts, n_count = _unigram_counts(clm_stream(train_split, tokenizer, None), vocab)
        source = "train"
    else:
        counts, n_count = _unigram_counts(clm_stream(split, tokenizer, None), vocab)
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
        windows=len(plan),
        tokens=tokens,
        total_nll=total,
        loss=loss,
        ppl=_safe_exp(loss),
        bytes=n_bytes,
        words=n_words,
        bits_per_byte=total / math.log(2) / n_bytes if n_bytes else None,
        word_ppl=_safe_exp(total / n_words) if n_words else None,
        uniform_loss=math.log(vocab),
        unigram_loss=_unigram_loss(s[1:], counts, n_count, vocab),
        unigram_source=source,
        eot_targets=int(eot_at.size),
        eot_loss=eot_loss,
        nll=nll[1:],
    )


# ----------------------------------------------------------------------------------------------------------
# mlm-v1
# ----------------------------------------------------------------------------------------------------------


def _mlm_ids(tokenizer: Any) -> tuple[int, int, int]:
    missing = [n for n in ("cls_id", "sep_id", "mask_id") if getattr(tokenizer, n, None) is None]
    if missing:
        raise HarnessError("tokenizer-not-mlm", f"tokenizer {tokenizer.name!r} has no {', '.join(missing)}; "
                           "mlm-v1 needs [CLS], [SEP] and [MASK] tokens: name them in the tokenizer_config.json "
                           "beside it (cls_token, sep_token, mask_token), or use a BERT-style tokenizer")
    return int(tokenizer.cls_id), int(tokenizer.sep_id), int(tokenizer.mask_id)


def mlm_stream(split: Any, tokenizer: Any, max_tokens: int | None = None) -> np.ndarray:
    """The mlm-v1 stream (int64): for each document `[CLS] tokens [SEP]`, concatenated, capped at
    `max_tokens` tokens."""
    _check_max_tokens(max_tokens)
    cls_id, sep_id, _ = _mlm_ids(tokenizer)
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
    _, _, mask_id = _mlm_ids(tokenizer)
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
        return _public(self)


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
    _check_split(split, tokenizer)
    _mlm_ids(tokenizer)
    L = _effective_context(context, model)
    if isinstance(pseudo_ppl_tokens, bool) or pseudo_ppl_tokens < 0:
        raise HarnessError("eval-invalid", f"pseudo_ppl_tokens must be >= 0, got {pseudo_ppl_tokens!r}")
    stream = mlm_stream(split, tokenizer, max_tokens)
    n_outputs = int(model.n_outputs)
    _check_ids(stream, tokenizer, n_outputs)
    blocks = mlm_blocks(stream.size, L)
    if not blocks:
        raise HarnessError("eval-empty", f"split {split.name!r} has no block to score; check the data and max_tokens")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise HarnessError("eval-invalid", f"batch_size must be a positive integer, got {batch_size!r}")
    batch_tokens = None if batch_size is None else int(batch_size) * L

    # masks first: they fix the targets, the count for progress and the baselines
    masked = []  # (first slot, start, length, inputs, selected positions)
    n_selected = 0
    for b, (start, length) in enumerate(blocks):
        inputs, selected = mlm_masks(stream[start : start + length], b, tokenizer, seed)
        where = np.flatnonzero(selected)
        if where.size:  # a block with nothing selected needs no forward
            masked.append((n_selected, start, length, inputs, where))
            n_selected += int(where.size)
    if n_selected == 0:
        raise HarnessError("eval-empty", f"split {split.name!r} gave no masked position to score; use more tokens")
    special = np.array(sorted(tokenizer.special_ids), dtype=np.int64)
    pseudo_positions = np.flatnonzero(~np.isin(stream[: blocks[-1][0] + blocks[-1][1]], special))[: pseudo_ppl_tokens]
    total_work = n_selected + int(pseudo_positions.size)

    nll = np.zeros(n_selected, dtype=np.float64)  # in the order of (block, position)
    correct = np.zeros(n_selected, dtype=bool)
    target_ids = np.zeros(n_selected, dtype=np.int64)
    done = 0
    batches = _Batches(masked, lambda m: m[2], batch_tokens=batch_tokens, n_outputs=n_outputs, budget=logits_budget)
    for length, batch in batches:
        logits = _checked_logits(model, torch.from_numpy(np.stack([m[3] for m in batch])), n_outputs)
        batches.saw(logits)
        # only the selected rows are copied out of the logits
        flat = np.concatenate([k * length + m[4] for k, m in enumerate(batch)])
        rows = logits.reshape(-1, n_outputs).index_select(0, torch.from_numpy(flat).to(logits.device))
        del logits  # never two batches of full-vocabulary logits at once
        targets = np.concatenate([stream[m[1] + m[4]] for m in batch])
        row_nll, row_ok = _row_nll(rows, torch.from_numpy(targets).to(rows.device), want_correct=True)
        del rows
        dest = slice(batch[0][0], batch[-1][0] + batch[-1][4].size)  # a batch's slots are consecutive
        nll[dest] = row_nll.double().cpu().numpy()
        correct[dest] = row_ok.cpu().numpy()
        target_ids[dest] = targets
        done += int(targets.size)
        if progress is not None:
            progress(done, total_work)

    pseudo_nll = np.zeros(pseudo_positions.size, dtype=np.float64)
    if pseudo_positions.size:
        _, _, mask_id = _mlm_ids(tokenizer)
        # one query per position: its block, unmasked except that position
        block_len = dict(blocks)
        queries = [(q, int(p // L) * L, int(p % L)) for q, p in enumerate(pseudo_positions)]
        batches = _Batches(queries, lambda q: block_len[q[1]], batch_tokens=batch_tokens, n_outputs=n_outputs,
                           budget=logits_budget)
        for length, batch in batches:
            rows_in = np.stack([stream[start : start + length] for _, start, _ in batch])
            at = np.arange(len(batch))
            js = np.array([j for _, _, j in batch], dtype=np.int64)
            targets = rows_in[at, js].copy()
            rows_in[at, js] = mask_id
            logits = _checked_logits(model, torch.from_numpy(rows_in), n_outputs)
            batches.saw(logits)
            rows = logits.reshape(-1, n_outputs).index_select(0, torch.from_numpy(at * length + js).to(logits.device))
            del logits
            row_nll, _ = _row_nll(rows, torch.from_numpy(targets).to(rows.device))
            del rows
            pseudo_nll[[q for q, _, _ in batch]] = row_nll.double().cpu().numpy()
            done += len(batch)
            if progress is not None:
                progress(done, total_work)

    total = math.fsum(nll.tolist())
    loss = total / n_selected
    n_correct = int(correct.sum())
    vocab = int(tokenizer.vocab_size)
    # counts of the documents' tokens ([CLS]/[SEP] are never targets, so they are left out)
    source_split = train_split if train_split is not None else split
    counts, n_count = _unigram_counts(np.asarray(source_split.tokens), vocab)
    if pseudo_positions.size:
        p_total = math.fsum(pseudo_nll.tolist())
        p_loss: float | None = p_total / pseudo_positions.size
        p_ppl: float | None = _safe_exp(p_loss)
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
        ppl=_safe_exp(loss),
        correct=n_correct,
        accuracy=n_correct / n_selected,
        uniform_loss=math.log(vocab),
        unigram_loss=_unigram_loss(target_ids, counts, n_count, vocab),
        unigram_source="train" if train_split is not None else "evaluated",
        pseudo_ppl_tokens=int(pseudo_ppl_tokens),
        pseudo_tokens=int(pseudo_positions.size),
        pseudo_total_nll=p_total,
        pseudo_loss=p_loss,
        pseudo_ppl=p_ppl,
        nll=nll,
    )
