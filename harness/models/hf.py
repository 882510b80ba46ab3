"""Hugging Face folders of any architecture the installed transformers knows, built with its own class.

A folder written by `save_pretrained` (config.json + safetensors/bin shards, read by our safe reader)
whose `model_type` no harness layout maps onto the canonical models (Llama, Mistral, Qwen2/3, Gemma,
GPT-NeoX, Phi, OPT, GPT-J, Falcon, … ; RoBERTa, DistilBERT, ALBERT, ELECTRA, ModernBERT, …) is built
with transformers' own class for that model_type — the reference implementation of the architecture —
and our tensors are handed to transformers' loader, which applies its own key renames (GPT-NeoX's
`embed_out` → `lm_head`), ties and ignore lists. Anything missing, unexpected or of another shape is
refused: a weight left at its random initialisation would be graded as if the student had trained it.

GPT-2 and BERT folders stay on their layouts (`hf-gpt2`, `hf-bert`): those map exactly onto the canonical
models, so their numbers do not change; only one whose config uses an option the canonical model does not
compute (the layout's `unsupported`, e.g. GPT-2's `scale_attn_by_inverse_layer_idx`) is built here instead. A config with `auto_map` names the student's own modelling code,
which is never imported or run (no `trust_remote_code`); it is refused unless a layout recognises the weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn

from harness.errors import HarnessError
from harness.metrics.fused import OutputHead
from harness.models.build import CONFIG, LoadedModel

# Layout names: "transformers-llama" says the path (transformers' class), apart from the layouts that map a
# bare state dict of the same family onto the canonical GPT ("hf-llama").
PREFIX = "transformers-"
# model_types whose folders a harness layout maps onto the canonical GPT / BERT MLM.
LAYOUT_MODEL_TYPES = ("gpt2", "bert")
# Plain matmul attention: the architecture's maths as written, and on CPU the same logits for a window
# alone or in any batch (checked for every tested class; Gemma 2 accepts nothing else).
ATTENTION = "eager"
_SHOWN_KEYS = 4


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub: read where transformers is first imported here
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _model_type(raw) -> str | None:
    if getattr(raw, "format", None) != "hf-folder":
        return None
    model_type = (raw.config or {}).get("model_type")
    return model_type if isinstance(model_type, str) and model_type else None


def _known(model_type: str) -> bool:
    _transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def wants(raw) -> bool:
    """Whether `raw` is built here rather than by a layout: an HF folder whose model_type no layout owns,
    and which transformers knows without remote code — or which nothing else could build either (then
    `build_hf_model` says why)."""
    from harness.layouts import recognising

    model_type = _model_type(raw)
    if model_type is None:
        return False
    if "auto_map" in raw.config:
        # the folder says its maths is the student's own modelling code: keys that happen to match a layout
        # would be graded by a guess, so it is refused (with how to run that code in the sandbox)
        return True
    if model_type in LAYOUT_MODEL_TYPES:  # unless it uses options the canonical model cannot compute
        found = recognising(raw.tensors, dict(raw.config))
        return len(found) == 1 and hasattr(found[0], "unsupported") and bool(found[0].unsupported(dict(raw.config)))
    if _known(model_type):
        return True
    return not recognising(raw.tensors, dict(raw.config))


def unknown_type_note(raw) -> str | None:
    """The warning for an HF folder whose model_type transformers does not know but whose weights a layout
    reads: the layout's maths is then the harness's reading of the key names, not the student's class."""
    model_type = _model_type(raw)
    if model_type is None or model_type in LAYOUT_MODEL_TYPES or _known(model_type):
        return None
    return (f"config.json says model_type {model_type!r}, which the installed transformers "
            f"{_transformers().__version__} does not know; the weights were read by the layout their names match")


def _refuse_unbuildable(config: Mapping, model_type: str) -> None:
    if "auto_map" in config:
        raise HarnessError("layout-unknown",
                           f"config.json names the student's own modelling code (auto_map, model_type "
                           f"{model_type!r}); the harness never runs code from a checkpoint folder, so name the "
                           f"model class with `code = \"file.py:Class\"` under [model] in submission.toml to run "
                           f"it in the sandbox")
    if not _known(model_type):
        raise HarnessError("layout-unknown",
                           f"config.json says model_type {model_type!r}, which the installed transformers "
                           f"{_transformers().__version__} does not know and no harness layout recognises; name the "
                           f"model class with `code = \"file.py:Class\"` under [model] in submission.toml")
    if config.get("quantization_config") is not None:
        raise HarnessError("model-invalid", "config.json describes a quantized model; save the trained weights "
                                            "unquantized (float32, float16 or bfloat16) to have them graded")


def _family(config: Mapping, model_type: str) -> tuple[str, str]:
    """("gpt" | "mlm", transformers class name): from `architectures`, else the model_type's registration."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES as MASKED,
    )

    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    for arch in archs:
        if arch.endswith(("ForCausalLM", "LMHeadModel")) and model_type in CAUSAL:
            return "gpt", CAUSAL[model_type]
        if arch.endswith("ForMaskedLM") and model_type in MASKED:
            return "mlm", MASKED[model_type]
    # BERT-like types register a causal class too (is_decoder); their folders are masked LMs unless told
    if model_type in MASKED and not (config.get("is_decoder") and model_type in CAUSAL):
        return "mlm", MASKED[model_type]
    if model_type in CAUSAL:
        return "gpt", CAUSAL[model_type]
    raise HarnessError("layout-unknown", f"transformers has no causal or masked language-model class for "
                                         f"model_type {model_type!r} (architectures: {', '.join(archs) or 'none'}); "
                                         f"only language models are graded")


def build_family(raw) -> str:
    """The family `build_hf_model` will grade this folder as, without building it (refusing what it would)."""
    model_type = _model_type(raw)
    if model_type is None:
        raise HarnessError("layout-unknown", "config.json names no model_type")
    _refuse_unbuildable(raw.config, model_type)
    return _family(raw.config, model_type)[0]


class HFLogits(nn.Module):
    """A transformers LM as the harness's `LogitsModel` seam expects: forward(input_ids, attention_mask)
    -> [B, T, V] logits. Only `input_ids` (and a mask if given) are passed: each class then builds its
    own default token types and positions (zeros; RoBERTa's padding-offset positions), as in its own use.
    No `config` attribute on purpose: `as_logits_model` reads the window limit from `n_positions`, ours
    (the usable rows of a learned position table; None for rotary/ALiBi models), not from the HF config."""

    def __init__(self, hf: nn.Module, family: str, max_positions: int | None):
        super().__init__()
        self.hf = hf
        self.family = family
        self.n_positions = max_positions
        self._head_matches: bool | None = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "return_dict": True}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if self.family == "gpt":
            kwargs["use_cache"] = False
        return self.hf(**kwargs).logits

    def hidden_and_head(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, OutputHead] | None:
        """A causal class's last hidden states and output layer, for clm-v1's fused head; None where this
        class's logits are not that head of those states (a logit scale, a projection after the base model):
        checked once, on the first call's first few tokens, against the class's own forward."""
        if self.family != "gpt":
            return None
        if self._head_matches is None:
            self._head_matches = self._check_head(input_ids[:1, :8])
        if not self._head_matches:
            return None
        return self._hidden(input_ids), self._head()

    def _hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf.base_model(input_ids=input_ids, use_cache=False, return_dict=True).last_hidden_state

    def _head(self) -> OutputHead:
        out = self.hf.get_output_embeddings()
        cap = getattr(self.hf.config, "final_logit_softcapping", None)  # Gemma 2 and 3
        return OutputHead(out.weight, getattr(out, "bias", None), float(cap) if cap else None)

    def _check_head(self, probe: torch.Tensor) -> bool:
        try:
            if not isinstance(self.hf.get_output_embeddings(), nn.Linear) or self.hf.base_model is self.hf:
                return False
            with torch.inference_mode():
                expected = self.forward(probe)
                got = self._head().logits(self._hidden(probe))
        except (AttributeError, TypeError, ValueError, RuntimeError):
            return False
        if got.shape != expected.shape or not bool(torch.isfinite(expected).all()):
            return False
        return bool(((got - expected).abs().max() <= 1e-6 * expected.abs().max().clamp(min=1.0)).item())


@dataclass
class HFArchitecture:
    """The architecture values results.json reports, read from the transformers config."""

    model_type: str
    hf_class: str
    n_layers: int | None
    d_model: int | None
    n_heads: int | None
    n_kv_heads: int | None
    d_ff: int | None
    context: int | None
    vocab_size: int | None
    activation: str | None
    positions: str
    norm: str | None
    causal: bool | None
    tied: bool
    max_positions: int | None
    attention: str = ATTENTION


@dataclass
class HFLoadedModel(LoadedModel):
    """A LoadedModel whose `model` is transformers' own class (wrapped in HFLogits)."""

    @property
    def max_positions(self) -> int | None:
        return self.config.max_positions


def _int_attr(cfg, *names: str) -> int | None:
    for name in names:
        value = getattr(cfg, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _position_table(hf: nn.Module) -> int | None:
    """Usable positions of a learned position table, if the model has one: rows less OPT's offset and
    RoBERTa's padding offset (its positions start after the padding id)."""
    for name, module in hf.named_modules():
        leaf = name.rsplit(".", 1)[-1].lower()
        if isinstance(module, nn.Embedding) and ("pos" in leaf or leaf == "wpe"):  # wpe: GPT-2, GPT-Neo
            rows = module.num_embeddings - int(getattr(module, "offset", 0) or 0)
            if module.padding_idx is not None:
                rows -= module.padding_idx + 1
            return max(rows, 1)
    return None


def _norm_type(hf: nn.Module) -> str | None:
    """What the built class normalises with (DistilBERT's config names no eps): RMSNorm by its classes'
    names (LlamaRMSNorm, GemmaRMSNorm, …), LayerNorm by torch's class."""
    kinds = {"rmsnorm" if "rmsnorm" in type(m).__name__.lower() else "layernorm"
             for m in hf.modules() if isinstance(m, nn.LayerNorm) or "rmsnorm" in type(m).__name__.lower()}
    return kinds.pop() if len(kinds) == 1 else None


def _positions(cfg, table: int | None) -> str:
    if table is not None:
        return "sinusoidal" if getattr(cfg, "sinusoidal_pos_embds", False) else "learned"
    if getattr(cfg, "alibi", False):
        return "alibi"
    if any(getattr(cfg, n, None) is not None for n in ("rope_parameters", "rope_theta", "rotary_dim", "rotary_pct",
                                                        "partial_rotary_factor", "global_rope_theta")):
        return "rope"
    return "none"


def _architecture(cfg, hf: nn.Module, model_type: str, family: str) -> HFArchitecture:
    d_model = _int_attr(cfg, "hidden_size", "d_model", "dim")
    n_heads = _int_attr(cfg, "num_attention_heads", "n_heads")
    n_kv = _int_attr(cfg, "num_key_value_heads", "num_kv_heads")
    if n_kv is None:  # Falcon's multi-query attention without the new decoder architecture
        n_kv = 1 if getattr(cfg, "multi_query", False) and not getattr(cfg, "new_decoder_architecture", False) \
            else n_heads
    d_ff = _int_attr(cfg, "intermediate_size", "ffn_dim", "n_inner", "hidden_dim", "ffn_hidden_size")
    if d_ff is None and hasattr(cfg, "n_inner") and d_model:  # GPT-J: n_inner None means 4 × d_model
        d_ff = 4 * d_model
    activation = next((v for n in ("hidden_activation", "hidden_act", "activation_function", "activation")
                       if isinstance(v := getattr(cfg, n, None), str)), None)
    norm = _norm_type(hf) or ("rmsnorm" if getattr(cfg, "rms_norm_eps", None) is not None else
                              "layernorm" if any(getattr(cfg, n, None) is not None
                                                 for n in ("layer_norm_eps", "layer_norm_epsilon", "norm_eps")) else None)
    table = _position_table(hf)
    inp, out = hf.get_input_embeddings(), hf.get_output_embeddings()
    tied = inp is not None and out is not None and out.weight is inp.weight
    return HFArchitecture(
        model_type=model_type, hf_class=type(hf).__name__, n_layers=_int_attr(cfg, "num_hidden_layers", "n_layers"),
        d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv, d_ff=d_ff,
        context=_int_attr(cfg, "max_position_embeddings", "n_positions"), vocab_size=_int_attr(cfg, "vocab_size"),
        activation=activation, positions=_positions(cfg, table), norm=norm,
        causal=True if family == "gpt" else None, tied=tied, max_positions=table,
    )


def _first(keys, n: int = _SHOWN_KEYS) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _load(cls, cfg, tensors: Mapping[str, torch.Tensor], name: str) -> nn.Module:
    """transformers' class with our tensors, through its own loader (renames, ties, ignore lists),
    refusing any weight it would leave at its random initialisation."""
    try:
        hf, info = cls.from_pretrained(None, config=cfg, state_dict=dict(tensors), dtype=torch.float32,
                                       attn_implementation=ATTENTION, output_loading_info=True,
                                       ignore_mismatched_sizes=True)  # reported below, key by key, and refused
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        first = " ".join(str(exc).strip().splitlines()[:2])[:300]
        raise HarnessError("model-invalid", f"the weights do not load into transformers' {name}: {first}") from None
    problems = []
    if info.get("missing_keys"):
        problems.append(f"missing {_first(info['missing_keys'])}")
    if info.get("unexpected_keys"):
        problems.append(f"unexpected {_first(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        shapes = [f"{k[0]} ({list(k[1])} in the file, {list(k[2])} by config.json)" if isinstance(k, tuple) and len(k) == 3
                  else str(k) for k in info["mismatched_keys"]]
        problems.append(f"of another shape {_first(shapes)}")
    if info.get("error_msgs"):
        problems.append(str(info["error_msgs"][0])[:200])
    if problems:
        raise HarnessError("model-invalid", f"the weights do not match transformers' {name} built from config.json: "
                                            f"{'; '.join(problems)}")
    return hf.float().eval()


def build_hf_model(raw, *, family: str | None = None) -> HFLoadedModel:
    """transformers' own class for this folder's config, with its weights, as a LoadedModel (layout
    `transformers-<model_type>`). `family`: submission.toml's, which only draws a warning when the config disagrees."""
    config = dict(raw.config)
    model_type = _model_type(raw)
    if model_type is None:
        raise HarnessError("layout-unknown", "config.json names no model_type")
    _refuse_unbuildable(config, model_type)
    transformers = _transformers()
    kwargs = {k: v for k, v in config.items() if k not in ("model_type", "auto_map", "attn_implementation",
                                                             "_attn_implementation", "quantization_config")}
    try:
        cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise HarnessError("model-invalid", f"config.json is not a valid {model_type} config for transformers "
                                            f"{transformers.__version__}: {str(exc).splitlines()[0][:200]}") from None
    got_family, class_name = _family(config, model_type)
    cls = getattr(transformers, class_name)
    hf = _load(cls, cfg, raw.tensors, class_name)
    arch = _architecture(hf.config, hf, model_type, got_family)
    warnings = []
    if family is not None and family != got_family:
        warnings.append(f"submission.toml says family {family!r} but config.json describes a {got_family} model "
                        f"({class_name}); graded as {got_family}")
    facts = [f"built with transformers' own {class_name} (transformers {transformers.__version__}, attention "
             f"{ATTENTION!r}, float32), the reference implementation; not mapped onto the canonical "
             f"{'GPT' if got_family == 'gpt' else 'BERT'}"]
    if arch.tied:
        facts.append("output layer tied to the token embedding (config.json tie_word_embeddings)")
    if arch.max_positions is None:
        facts.append(f"positions: {arch.positions}, no position table; windows follow the course's context")
    names = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "context", "vocab_size", "activation",
             "positions", "norm", "causal")
    sources = {n: CONFIG for n in names if getattr(arch, n) is not None}
    params = sum(int(p.numel()) for p in hf.parameters())  # parameters() yields each shared tensor once
    out = hf.get_output_embeddings()
    n_outputs = int(out.weight.shape[0]) if out is not None else int(arch.vocab_size or 0)
    return HFLoadedModel(
        layout=f"{PREFIX}{model_type}", family=got_family, model=HFLogits(hf, got_family, arch.max_positions).eval(),
        config=arch, sources=sources, params=params, tied=arch.tied, n_outputs=n_outputs, warnings=warnings,
        facts=facts, choices={},
    )
