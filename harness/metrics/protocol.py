"""The model seam: what the evaluator asks of a model, and the wrapper that makes an `nn.Module` answer.

The evaluator hands a model token windows and takes back logits; it never knows what answers. Anything
with `n_outputs`, `max_positions` and `logits(input_ids)` is a model here (`LogitsModel`); a plain
`nn.Module` whose forward returns logits (or a tuple, dict or Hugging Face output holding them) is
wrapped by `TorchLogitsModel`. The canonical models, Hugging Face models and the sandboxed custom code
all answer the same way.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

import torch

from harness.errors import HarnessError
from harness.metrics.fused import pad_with_floor

# Attribute names under which models record how many positions they have, most specific first.
_POSITION_ATTRS = ("n_positions", "max_position_embeddings", "block_size", "n_ctx", "context", "max_seq_len",
                   "context_length", "seq_len")



@runtime_checkable
class LogitsModel(Protocol):
    """What the evaluator asks of a model: logits for a batch of token windows.

    `n_outputs` is the size of the model's softmax (a nanoGPT model padded to 50,304 keeps its extra
    logits); `max_positions` the longest window it takes (None: no limit). `logits` returns
    [B, T, n_outputs] for `input_ids` [B, T]; masked LMs also take `attention_mask` (the evaluator never
    pads, so it passes None).

    Optional, for causal LMs: `hidden_and_head(input_ids)` -> (final hidden states [B, T, d], the
    `harness.metrics.fused.OutputHead` that makes them logits), or None where the model cannot say. clm-v1
    then runs the head itself, on the scored positions only, without a batch's full logits.
    """

    n_outputs: int
    max_positions: int | None

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...


def nan_or_posinf(logits: torch.Tensor) -> bool:
    """Whether `logits` hold a NaN or +inf (-inf is a harsh logit, not an error): one pass, its maximum (NaN
    propagates through it), where `isnan(x).any() or isposinf(x).any()` takes four."""
    return logits.numel() > 0 and not bool(logits.amax() < math.inf)


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
        """The module's final hidden states and output layer (`LogitsModel`), where it offers them."""
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


class TruncatedVocabulary:
    """A model with fewer outputs than the tokenizer has ids (seed 002's 49,805), made scorable all the
    same, so that what else is wrong with it (memorisation) still shows: an input id it has no embedding
    for becomes its last id, and an output it lacks gets the row's lowest logit. Grading marks its metrics
    `partial`; they earn no perplexity points: they are not comparable with the class's."""

    def __init__(self, model: Any, n_outputs: int, vocab_size: int):
        self.inner = as_logits_model(model)
        self.n_own, self.n_outputs = n_outputs, vocab_size
        self.max_positions = self.inner.max_positions

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return pad_with_floor(self.inner.logits(input_ids.clamp(max=self.n_own - 1)), self.n_outputs)

    def hidden_and_head(self, input_ids: torch.Tensor) -> Any:
        """The inner model's hidden states and head, the head padded to the tokenizer's ids the way `logits`
        pads (the fused head scores it without the padded logits); None where the inner model gives none."""
        ask = getattr(self.inner, "hidden_and_head", None)
        got = ask(input_ids.clamp(max=self.n_own - 1)) if callable(ask) else None
        if got is None:
            return None
        hidden, head = got
        return hidden, replace(head, pad_to=self.n_outputs)
