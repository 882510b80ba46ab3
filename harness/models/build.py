"""From a checkpoint's tensors to a canonical model, with the source of every architectural value.

`build_model` picks the one layout that recognises the weights (`harness.layouts`), takes what the
weights tell, and resolves what they cannot (heads, pre/post-LN, activation, LayerNorm eps, causal
masking, embedding scale, fused-q/k/v order, ...) in this order: the checkpoint's stored config (under
any of its usual spellings), the student's `submission.toml` [model] hints, the layout's code (one
possible value), and only then, where a value is still open and the caller can score candidates,
calibration (`harness.models.calibration`). An open value nobody settled takes the layout's default and
says so.

Calibration never decides silently: it compares the candidates target by target on the same text, and
takes a value only where the best candidate beats every other by more than the evaluation can separate
(`CALIBRATION_SIGMAS` standard errors of the mean paired difference, and at least
`CALIBRATION_FLOOR_NATS`). Where it cannot tell, the layout's default stays (the code students copy),
marked "calibration (unverified)", with the numbers that could not separate the candidates.

Stays whole (over 500 lines): reading, resolving and building are one ordered rule, checked in one place.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from harness.errors import HarnessError
from harness.layouts import CANONICAL, LAYOUTS, recognising
from harness.models.calibration import Calibrate, Calibrated, CalibrationCost, run_calibration
from harness.models.gpt import ACTIVATIONS, GPT, GPTConfig
from harness.models.mlm import BertConfig, BertMLM

from harness.sources import CALIBRATION, CONFIG, HINTS, LAYOUT, UNDECIDED, UNVERIFIED, WEIGHTS  # noqa: F401

# Values a layout's mapping depends on that are not config fields.
CHOICES = ("qkv_order", "attn_scale")


@dataclass
class LoadedModel:
    """A checkpoint as a canonical model, and where each of its architectural values came from."""

    layout: str
    family: str
    model: nn.Module  # GPT or BertMLM, eval mode, weights loaded strictly
    config: GPTConfig | BertConfig
    sources: dict[str, str]  # value name -> WEIGHTS | CONFIG | HINTS | LAYOUT | CALIBRATION | UNVERIFIED
    params: int  # unique parameters of the student's model: tied once, position tables in, buffers out
    tied: bool
    n_outputs: int
    warnings: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)  # what the layout read or set aside
    choices: dict[str, Any] = field(default_factory=dict)  # mapping choices: qkv_order, attn_scale
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)  # open value -> Calibrated.to_dict()
    calibration_cost: dict[str, Any] | None = None  # what calibration took (`CalibrationCost.to_dict()`)

    @property
    def max_positions(self) -> int | None:
        if isinstance(self.config, BertConfig):
            return self.config.max_positions
        return None if self.config.positions == "none" else self.config.context

    def value(self, name: str) -> Any:
        return self.choices[name] if name in self.choices else getattr(self.config, name)

    def unverified(self) -> list[str]:
        return sorted(k for k, s in self.sources.items() if s in (UNVERIFIED, UNDECIDED))

    def describe(self) -> dict[str, Any]:
        """JSON-ready: every architectural value with its source, and what the layout noticed."""
        return {
            "layout": self.layout,
            "family": self.family,
            "params": self.params,
            "tied": self.tied,
            "n_outputs": self.n_outputs,
            "architecture": {name: {"value": self.value(name), "source": src} for name, src in self.sources.items()},
            "unverified": self.unverified(),
            "calibration": {k: dict(v) for k, v in self.calibration.items()},
            "facts": list(self.facts),
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------------------------------
# Reading values from a stored config or submission.toml
# --------------------------------------------------------------------------------------------------

SPELLINGS: dict[str, tuple[str, ...]] = {
    "n_heads": ("n_heads", "n_head", "nhead", "nheads", "num_heads", "num_attention_heads", "n_attn_heads",
                "attention_heads", "num_head", "heads"),
    "norm": ("norm", "norm_first", "pre_norm", "prenorm", "pre_ln", "pre_layernorm", "norm_position",
             "ln_position", "layer_norm_position"),
    "activation": ("activation", "activation_function", "hidden_act", "act", "act_fn", "activation_fn",
                   "activation_relu_or_gelu"),
    "ln_eps": ("ln_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps", "rms_norm_eps", "norm_epsilon", "eps"),
    "causal": ("causal", "is_causal", "use_causal_mask", "causal_mask", "has_mask"),
    "embed_scale": ("embed_scale", "embedding_scale", "emb_scale", "scale_embedding", "scale_embeddings"),
    "positions": ("positions",),
    "context": ("context", "block_size", "n_positions", "max_position_embeddings", "max_len", "max_seq_len",
                "seq_len", "context_length", "n_ctx", "max_seq_length", "context_size", "sequence_len"),
    "pad_id": ("pad_id", "pad_token_id", "pad_idx", "padding_idx"),
    "head_dim": ("head_dim", "head_size", "d_head", "dim_head", "d_k"),
    "qkv_order": ("qkv_order",),
    "attn_scale": ("attn_scale",),
    "norm_type": ("norm_type", "normalization", "normalization_type", "norm_class", "layer_norm_type"),
    "norm_weight": ("norm_weight", "elementwise_affine"),
    "embed_norm": ("embed_norm", "embedding_norm", "norm_embeddings"),
    "final_norm": ("final_norm",),
    "qk_norm": ("qk_norm", "use_qk_norm", "qk_layernorm"),
    "rope_theta": ("rope_theta", "rotary_emb_base", "rotary_base", "rope_base"),
    "rope_fraction": ("rope_fraction", "rotary_pct", "partial_rotary_factor", "rotary_fraction"),
    "rope_pairs": ("rope_pairs",),
    "n_kv_heads": ("n_kv_heads", "n_kv_head", "num_key_value_heads", "num_kv_heads", "n_kv", "kv_heads"),
    "residual": ("residual", "use_parallel_residual", "parallel_residual", "parallel_attn"),
    "logit_softcap": ("logit_softcap", "final_logit_softcapping", "logit_soft_cap", "softcap"),
}
# Sizes the weights always tell: a stored config that disagrees gets a warning, never a say.
STRUCTURE: dict[str, tuple[str, ...]] = {
    "n_layers": ("n_layers", "n_layer", "num_layers", "num_hidden_layers", "nlayers", "n_layers"),
    "d_model": ("d_model", "n_embd", "hidden_size", "embed_dim", "ninp", "emsize", "n_embed", "embedding_dim"),
    "vocab_size": ("vocab_size", "ntoken", "ntokens", "n_vocab"),
}
_BOOL_NORM = {"norm_first": True, "pre_norm": True, "prenorm": True, "pre_ln": True, "pre_layernorm": True}
_PRE = {"pre", "pre-ln", "pre_ln", "preln", "prenorm", "pre-norm", "pre_norm", "pre-layernorm", "before", "first"}
_POST = {"post", "post-ln", "post_ln", "postln", "postnorm", "post-norm", "post_norm", "post-layernorm", "after",
         "last"}


class _Unsupported(str):
    """A value that was stated clearly but that the canonical models cannot compute (e.g. Mish)."""


def _activation(raw: Any, _: str) -> Any:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):  # nn.TransformerEncoderLayer.activation_relu_or_gelu
        return {1: "relu", 2: "gelu"}.get(raw)
    if not isinstance(raw, str):
        return None
    s = raw.strip().lower()
    if "gelu" in s or s == "geglu":  # GeGLU: the gate is the weights' to show (mlp.c_up)
        return "gelu_tanh" if any(w in s for w in ("tanh", "new", "fast", "approx")) else "gelu"
    if s in ("silu", "swish", "swiglu", "silu_glu", "swish_glu"):
        return "silu"
    if s.replace("_", "").replace("-", "") in ("relu2", "relusquared", "squaredrelu", "relu²", "relusq"):
        return "relu2"
    if re.search(r"(^|[^a-z])relu($|[^a-z0-9])", s) and "leaky" not in s:
        return "relu"
    return _Unsupported(raw)


def _norm(raw: Any, key: str) -> Any:
    if isinstance(raw, bool):
        return None if key not in _BOOL_NORM else ("pre" if raw else "post")
    if isinstance(raw, str):
        s = raw.strip().lower()
        return "pre" if s in _PRE else "post" if s in _POST else None
    return None


def _positive_int(raw: Any, _: str) -> Any:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1 else None


def _nonneg_int(raw: Any, _: str) -> Any:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None


def _eps(raw: Any, _: str) -> Any:
    return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0 < raw < 0.1 else None


def _bool(raw: Any, _: str) -> Any:
    return raw if isinstance(raw, bool) else None


def _embed_scale(raw: Any, _: str) -> Any:
    if isinstance(raw, bool):
        return "sqrt" if raw else 1.0
    if isinstance(raw, str) and raw.strip().lower() in ("sqrt", "sqrt(d_model)", "sqrt_d_model"):
        return "sqrt"
    return float(raw) if isinstance(raw, (int, float)) and raw > 0 else None


def _positive(raw: Any, _: str) -> Any:
    return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0 < raw < math.inf else None


def _fraction(raw: Any, _: str) -> Any:
    return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0 < raw <= 1 else None


def _attn_scale(raw: Any, _: str) -> Any:
    """A stated scale (GPTConfig.attn_scale), or a layout's mapping choice "head_dim" / "d_model"."""
    return raw if raw in ("head_dim", "d_model") else _positive(raw, _)


def _norm_type(raw: Any, _: str) -> Any:
    if not isinstance(raw, str):
        return None
    s = raw.strip().lower().replace("_", "").replace("-", "")
    return "rmsnorm" if s in ("rmsnorm", "rms", "llamarmsnorm") else "layernorm" if s in ("layernorm", "ln") else None


def _qk_norm(raw: Any, _: str) -> Any:
    if raw is False:
        return "none"
    return raw if raw in ("none", "before_rope", "after_rope") else None  # `true` does not say where


def _residual(raw: Any, key: str) -> Any:
    if isinstance(raw, bool):
        return "parallel" if raw else "sequential"
    return raw if raw in ("sequential", "parallel", "parallel_shared") else None


def _one_of(*options: str):
    def read(raw: Any, _: str) -> Any:
        return raw if isinstance(raw, str) and raw in options else None
    return read


def _qkv_order(raw: Any, _: str) -> Any:
    if not isinstance(raw, str):
        return None
    order = raw.strip().lower().replace(",", "")
    letters, _, grouping = order.partition("-")
    return order if sorted(letters) == ["k", "q", "v"] and grouping in ("", "per-head") else None


_READERS = {
    "n_heads": _positive_int, "norm": _norm, "activation": _activation, "ln_eps": _eps, "causal": _bool,
    "embed_scale": _embed_scale, "positions": _one_of("learned", "sinusoidal", "none", "rope"),
    "context": _positive_int, "pad_id": _nonneg_int, "qkv_order": _qkv_order, "attn_scale": _attn_scale,
    "n_layers": _positive_int, "d_model": _positive_int, "vocab_size": _positive_int, "head_dim": _positive_int,
    "norm_type": _norm_type, "norm_weight": _bool, "embed_norm": _bool, "final_norm": _bool, "qk_norm": _qk_norm,
    "rope_theta": _positive, "rope_fraction": _fraction, "rope_pairs": _one_of("half", "interleaved"),
    "n_kv_heads": _positive_int, "residual": _residual, "logit_softcap": _positive,
}
# Activation modules a pickled model holds (its `modules` map names each submodule's class).
_ACTIVATION_CLASSES = {"gelu": "gelu", "geluactivation": "gelu", "relu": "relu", "newgelu": "gelu_tanh",
                       "newgeluactivation": "gelu_tanh", "gelutanh": "gelu_tanh", "pytorchgelutanh": "gelu_tanh",
                       "silu": "silu", "siluactivation": "silu", "swish": "silu", "swiglu": "silu", "geglu": "gelu",
                       "relusquared": "relu2", "relusquaredactivation": "relu2", "mish": None, "leakyrelu": None,
                       "elu": None, "tanh": None, "sigmoid": None}


def _activation_modules(items: list[tuple[str, Any]]) -> Any:
    """The activation a pickled model's submodules are instances of, if they all agree."""
    found = set()
    approx = {path.rsplit(".", 1)[0]: raw for path, raw in items if path.endswith(".approximate")}
    for path, raw in items:
        if path.rsplit(".", 1)[-1] not in ("class", "__class__") or not isinstance(raw, str):
            continue
        name = raw.rsplit(".", 1)[-1].lower()
        if name not in _ACTIVATION_CLASSES:
            continue
        act = _ACTIVATION_CLASSES[name]
        if act == "gelu" and approx.get(path.rsplit(".", 1)[0]) == "tanh":
            act = "gelu_tanh"
        found.add(act or _Unsupported(raw.rsplit(".", 1)[-1]))
    return found.pop() if len(found) == 1 else None


def _flatten(data: Mapping, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and depth < 3:
            out.extend(_flatten(value, path + ".", depth + 1))
        else:
            out.append((path, value))
    return out


def read_values(data: Mapping | None, spellings: Mapping[str, tuple[str, ...]], *, max_depth: int = 99,
                warnings: list[str] | None = None, what: str = "the checkpoint's config",
                report_unread: bool = False) -> dict[str, Any]:
    """Values found in a (nested, possibly dotted) mapping under their usual names, shallowest first.

    A bare `eps` counts only under a norm (`norm1.eps`); values that cannot be read as the field
    (a module stub where a string was expected) are passed over, with a warning if `report_unread`.
    Disagreeing values at the same depth: the first wins, with a warning.
    """
    found: dict[str, Any] = {}
    if not data:
        return found
    items = [(path, value) for path, value in _flatten(data) if path.count(".") <= max_depth]
    for name, names in spellings.items():
        hits = []
        for path, raw in items:
            parts = path.split(".")
            leaf = parts[-1].lower()
            if leaf not in names:
                continue
            if leaf == "eps" and not (len(parts) > 1 and re.search(r"norm|ln", parts[-2], re.I)):
                continue
            value = _READERS[name](raw, leaf)
            if value is not None:
                hits.append((path.count("."), path, value))
            elif report_unread and warnings is not None and raw is not None:
                warnings.append(f"{what} {path} = {raw!r} was not understood and is ignored")
        if not hits:
            continue
        depth = min(h[0] for h in hits)
        top = [h for h in hits if h[0] == depth]
        found[name] = top[0][2]
        if warnings is not None and len({repr(h[2]) for h in top}) > 1:
            warnings.append(f"{what} has conflicting {name} values ({', '.join(f'{p}={v!r}' for _, p, v in top[:4])}); "
                            f"using {top[0][1]}")
    if "activation" in spellings and "activation" not in found:
        act = _activation_modules(items)
        if act is not None:
            found["activation"] = act
    return found


# --------------------------------------------------------------------------------------------------
# Picking the layout
# --------------------------------------------------------------------------------------------------


def _top_keys(tensors: Mapping[str, torch.Tensor], limit: int = 12) -> str:
    counts: dict[str, int] = {}
    for key in tensors:
        head = key.split(".")[0]
        counts[head] = counts.get(head, 0) + 1
    shown = [f"{k} ({n})" if n > 1 else k for k, n in list(counts.items())[:limit]]
    return ", ".join(shown) + (" …" if len(counts) > limit else "")


def pick_layout(tensors: Mapping[str, torch.Tensor], config: Mapping | None = None, family: str | None = None):
    """The one layout that recognises these weights; HarnessError("layout-unknown") when none does."""
    if not tensors:
        raise HarnessError("layout-unknown", "the checkpoint holds no weight tensors")
    found = recognising(tensors, dict(config or {}))
    if family is not None and len(found) > 1:
        found = [layout for layout in found if layout.FAMILY == family] or found
    if not found:
        names = ", ".join(layout.NAME for layout in CANONICAL + LAYOUTS)
        raise HarnessError(
            "layout-unknown",
            f"no known checkpoint layout matches these weights ({len(tensors)} tensors; top-level keys: "
            f"{_top_keys(tensors)}); known layouts: {names}. Name the model class with `code = \"file.py:Class\"` "
            f"under [model] in submission.toml so the harness can run the student's own code",
        )
    if len(found) > 1:
        names = ", ".join(layout.NAME for layout in found)
        raise HarnessError("layout-unknown", f"the weights match more than one layout ({names}); "
                                             f"name the model code in submission.toml")
    return found[0]


def checkpoint_family(raw) -> str:
    """"gpt" or "mlm", from a first look: a Hugging Face folder built with transformers' class by its
    config, anything else by the layout that recognises its weights."""
    from harness.models import hf as hf_models
    if hf_models.wants(raw):
        return hf_models.build_family(raw)
    return pick_layout(raw.tensors, getattr(raw, "config", None), None).FAMILY


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _config_fields(family: str) -> set[str]:
    return {f.name for f in fields(GPTConfig if family == "gpt" else BertConfig)} - {"dropout"}


def _convert(layout, tensors, hints: dict) -> tuple[dict, dict, dict]:
    try:
        return layout.convert(tensors, hints)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise HarnessError("layout-unknown", f"the weights look like {layout.DESCRIPTION}, but {exc}") from None


def _config(layout, values: dict) -> GPTConfig | BertConfig:
    kwargs = {k: v for k, v in values.items() if k in _config_fields(layout.FAMILY)}
    if isinstance(kwargs.get("attn_scale"), str):  # a mapping choice the layout folds into the weights
        del kwargs["attn_scale"]
    try:
        if layout.FAMILY == "gpt":
            if kwargs.get("embed_scale") == "sqrt":  # a stored `scale_embedding = true`
                kwargs["embed_scale"] = math.sqrt(kwargs["d_model"])
            return GPTConfig(**kwargs, dropout=0.0)
        return BertConfig(**kwargs, dropout=0.0)
    except ValueError as exc:
        raise HarnessError("model-invalid",
                           f"the {layout.NAME} checkpoint's architecture is inconsistent: {exc}") from None


def _instantiate(layout, tensors, values: dict) -> tuple[nn.Module, Any, dict]:
    told, sd, facts = _convert(layout, tensors, {k: values[k] for k in ("n_heads", *CHOICES) if k in values})
    # What the weights tell only once the heads are known (a grouped-query split: n_kv_heads, head_dim).
    cfg = _config(layout, {**told, **values} if layout.FAMILY == "gpt" else values)
    model = (GPT if layout.FAMILY == "gpt" else BertMLM)(cfg, empty=True)  # every weight loaded below
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise HarnessError("model-invalid", f"the {layout.NAME} weights do not load into the canonical model: "
                                            f"{' '.join(first[:3])[:400]}") from None
    return model.eval(), cfg, facts


class Candidates(Sequence):
    """What calibration compares: item i is a canonical model in eval mode, built when asked for.

    `configs[i]` is its GPTConfig / BertConfig (no model built); `tried[i]` the open values it tries,
    also on the model as `.calibration`. Mapping choices (qkv_order, attn_scale) are in `tried` only.
    """

    def __init__(self, layout, tensors, trials: list[dict], open_names: list[str]):
        self._layout, self._tensors, self._trials, self._open = layout, tensors, trials, open_names
        self.configs = [_config(layout, t) for t in trials]
        self.tried = [{k: t[k] for k in open_names} for t in trials]

    def __len__(self) -> int:
        return len(self._trials)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        model, _, _ = _instantiate(self._layout, self._tensors, self._trials[i])
        model.calibration = dict(self.tried[i])
        return model



def _structure_warnings(weights: dict, stored: dict, warnings: list[str]) -> None:
    d = weights.get("d_model", weights.get("hidden"))
    for name, value in (("n_layers", weights.get("n_layers")), ("d_model", d),
                        ("vocab_size", weights.get("vocab_size"))):
        if name in stored and value is not None and stored[name] != value:
            warnings.append(f"the checkpoint's config says {name} = {stored[name]} but the weights have {value}; "
                            f"the weights are used")


def build_model(raw, *, hints: dict | None = None, family: str | None = None,
                calibrate: Calibrate | None = None) -> LoadedModel:
    """`raw` (anything with `.tensors` and `.config`) as a canonical model, every value with its source.

    `hints`: submission.toml's [model] table. `family`: submission.toml's family, which decides between
    layouts only where the weights do not. `calibrate(candidates) -> index`: scores candidate models
    (by loss on training text) for values nothing else settled; without it those keep the layout's
    default, marked "default (unverified)".
    """
    from harness.models import hf as hf_models
    if hf_models.wants(raw):  # an HF folder no layout maps onto the canonical models: transformers' class
        return hf_models.build_hf_model(raw, family=family)
    tensors: Mapping[str, torch.Tensor] = raw.tensors
    config: dict = dict(getattr(raw, "config", None) or {})
    warnings: list[str] = [note] if (note := hf_models.unknown_type_note(raw)) else []
    layout = pick_layout(tensors, config, family)
    if family is not None and family != layout.FAMILY:
        warnings.append(f"submission.toml says family {family!r} but the weights are a {layout.FAMILY} model "
                        f"({layout.DESCRIPTION}); graded as {layout.FAMILY}")
    problems = layout.unsupported(config, tensors) if hasattr(layout, "unsupported") else []
    if problems:
        raise HarnessError("model-invalid", f"the {layout.NAME} checkpoint uses options the harness cannot compute: "
                                            f"{', '.join(problems)}")

    weights, _, facts = _convert(layout, tensors, {})
    unknown = layout.cannot_tell(tensors, weights)
    stored = read_values(config, SPELLINGS, warnings=warnings)
    if hasattr(layout, "implied"):  # the family's own reading of its stored config, over the generic one
        stored.update(layout.implied(config))
    given = read_values(hints or {}, SPELLINGS, max_depth=0, warnings=warnings, what="submission.toml [model]",
                        report_unread=True)
    _structure_warnings(weights, read_values(config, STRUCTURE, max_depth=1), warnings)

    d_model = weights.get("d_model", weights.get("hidden"))
    for said in (stored, given):  # a stored head size says the heads too
        if "n_heads" not in said and said.get("head_dim") and d_model % said["head_dim"] == 0:
            said["n_heads"] = d_model // said["head_dim"]
    values = dict(weights)
    sources = {name: WEIGHTS for name in weights if name in _config_fields(layout.FAMILY) or name in CHOICES}
    if "n_heads" in weights:  # the one value some layouts read from weights that configs also state
        for said, where in ((stored.get("n_heads"), "the checkpoint's config"),
                            (given.get("n_heads"), "submission.toml")):
            if said is not None and said != weights["n_heads"]:
                warnings.append(f"{where} says n_heads = {said} but the weights hold {weights['n_heads']} heads; "
                                f"the weights are used")

    open_fields: dict[str, list] = {}
    for name, options in unknown.items():
        from_config, from_hints = stored.get(name), given.get(name)
        if from_config is not None:
            value, source = from_config, CONFIG
            if from_hints is not None and from_hints != from_config:
                warnings.append(f"submission.toml says {name} = {from_hints!r} but the checkpoint's config says "
                                f"{from_config!r}; the checkpoint's config is used")
        elif from_hints is not None:
            value, source = from_hints, HINTS
        elif len(options) == 1:
            value, source = options[0], LAYOUT
        else:
            value, source = options[0], UNVERIFIED
            open_fields[name] = list(options)
        if isinstance(value, _Unsupported):
            raise HarnessError("model-invalid", f"{'the checkpoint' if source == CONFIG else 'submission.toml'} says "
                                                f"{name} = {value!r}, which the harness cannot compute "
                                                f"(supported: {', '.join(ACTIVATIONS)})")
        values[name] = value
        sources[name] = source

    calibrated: dict[str, Calibrated] = {}
    cost = None
    if calibrate is not None and open_fields:
        cost = CalibrationCost()
        calibrated = run_calibration(calibrate, lambda trials, names: Candidates(layout, tensors, trials, names),
                                     values, open_fields, cost)
        sources.update({name: CALIBRATION if c.decided else UNDECIDED for name, c in calibrated.items()})

    model, cfg, facts = _instantiate(layout, tensors, values)
    for name in ("n_kv_heads", "head_dim"):
        if name not in sources and getattr(cfg, name, None) is not None:
            sources[name] = WEIGHTS
    choices = {k: values[k] for k in CHOICES if k in values}
    return LoadedModel(
        layout=layout.NAME, family=layout.FAMILY, model=model, config=cfg, sources=sources,
        params=facts.get("params", model.num_params()), tied=cfg.tied, n_outputs=cfg.vocab_size,
        warnings=warnings, facts=list(facts.get("notes", [])), choices=choices,
        calibration={name: c.to_dict() for name, c in calibrated.items()},
        calibration_cost=cost.to_dict() if cost is not None else None,
    )
