"""Canonical checkpoints on disk, and the two Hugging Face layouts the canonical models map to and from.

A canonical checkpoint is a folder with `model.safetensors` (each tensor once: a tied head is stored as
the embedding it shares) and `config.json` = {"harness_model": "gpt"|"mlm", "format": 1, "config": {...}}.
Saving the same model twice gives the same bytes, so checkpoints can be fingerprinted by sha256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .gpt import GPT, GPTConfig
from .mlm import BertConfig, BertMLM, load_hf_bert_state_dict

FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MODEL_KINDS: dict[str, tuple[type[nn.Module], Any]] = {"gpt": (GPT, GPTConfig), "mlm": (BertMLM, BertConfig)}


def _kind_of(model: nn.Module) -> str:
    if isinstance(model, GPT):
        return "gpt"
    if isinstance(model, BertMLM):
        return "mlm"
    raise ValueError(f"save_canonical takes a harness GPT or BertMLM, not {type(model).__name__}")


def _alias_names(model: nn.Module) -> set[str]:
    """Names under which an already-named parameter appears again (tied head, HF's doubled MLM bias)."""
    first: dict[int, str] = {}
    aliases: set[str] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases.add(name)
        else:
            first[id(p)] = name
    return aliases


def save_canonical(model: GPT | BertMLM, folder: str | Path) -> Path:
    """Write `model.safetensors` and `config.json` into `folder` (created if needed); returns the folder."""
    kind = _kind_of(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    aliases = _alias_names(model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k not in aliases}
    # A single metadata key: safetensors writes metadata from a hash map, and one key has one order.
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    header = {"harness_model": kind, "format": FORMAT, "config": model.config.to_dict()}
    (folder / CONFIG_FILE).write_text(json.dumps(header, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return folder


def load_canonical(folder: str | Path, device: str | torch.device = "cpu") -> GPT | BertMLM:
    """Rebuild a model saved by `save_canonical`, in eval mode; every mismatch is a ValueError."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ValueError(f"not a canonical checkpoint: {path} is missing")
    try:
        header = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{config_path} must hold a JSON object")
    kind = header.get("harness_model")
    if kind not in MODEL_KINDS:
        raise ValueError(f"{config_path}: unknown harness_model {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    if header.get("format") != FORMAT:
        raise ValueError(f"{config_path}: unsupported format {header.get('format')!r}; this harness reads format {FORMAT}")
    model_cls, config_cls = MODEL_KINDS[kind]
    config = config_cls.from_dict(header.get("config", {}))
    model = model_cls(config)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {exc}") from None
    expected = {k: v for k, v in model.state_dict().items() if k not in _alias_names(model)}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights_path} does not match its config: missing {missing or 'none'}, "
                         f"unexpected {unexpected or 'none'}")
    wrong = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if tensors[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{weights_path} shapes do not match its config: {', '.join(wrong)}")
    # Aliases are the same Parameter as a loaded name, so strict=False leaves nothing unloaded.
    model.load_state_dict(tensors, strict=False)
    return model.to(device).eval()


# --- Hugging Face GPT-2 ---------------------------------------------------------------------------

# HF GPT-2 uses Conv1D, whose weight is [in, out]: the transpose of nn.Linear's [out, in].
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_TO_GPT_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_GPT_TO_HF_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


def gpt_config_from_hf_gpt2(hf_config: Any, tied: bool = True) -> GPTConfig:
    """A `transformers.GPT2Config` as a GPTConfig; refuses GPT-2 variants the canonical GPT cannot compute."""
    act = getattr(hf_config, "activation_function", "gelu_new")
    if act not in _HF_TO_GPT_ACT:
        raise ValueError(f"GPT-2 activation_function {act!r} is not supported; expected one of "
                         f"{', '.join(_HF_TO_GPT_ACT)}")
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False) or not getattr(hf_config, "scale_attn_weights", True):
        raise ValueError("GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported")
    if getattr(hf_config, "add_cross_attention", False):
        raise ValueError("GPT-2 with cross-attention is not a language model the harness can grade")
    return GPTConfig(
        vocab_size=hf_config.vocab_size, context=hf_config.n_positions, n_layers=hf_config.n_layer,
        d_model=hf_config.n_embd, n_heads=hf_config.n_head, d_ff=getattr(hf_config, "n_inner", None),
        dropout=float(getattr(hf_config, "resid_pdrop", 0.0)), norm="pre", activation=_HF_TO_GPT_ACT[act],
        positions="learned", bias=True, ln_bias=True, tied=tied, final_norm=True,
        ln_eps=float(getattr(hf_config, "layer_norm_epsilon", 1e-5)),
    )


def hf_gpt2_state_dict_to_gpt(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT-2 keys and Conv1D weights to the canonical GPT's; a missing (tied) lm_head comes from wte."""
    if "wte.weight" in sd:  # a bare GPT2Model, without the `transformer.` prefix
        sd = {f"transformer.{k}": v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of older transformers versions
        out[key] = value.t() if key.endswith(_CONV1D) else value
    if "lm_head.weight" not in out and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def gpt_state_dict_to_hf_gpt2(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.t() if k.endswith(_CONV1D) else v).contiguous() for k, v in sd.items()}


def gpt_from_hf_gpt2(hf_model: nn.Module) -> GPT:
    """A `GPT2LMHeadModel` as a canonical GPT with the same logits (nanoGPT's `from_pretrained` map)."""
    sd = hf_gpt2_state_dict_to_gpt(hf_model.state_dict())
    tied = torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
    model = GPT(gpt_config_from_hf_gpt2(hf_model.config, tied=tied), empty=True)  # every weight loaded below
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"not a GPT-2 language model state dict: missing {missing or 'none'}, "
                         f"unexpected {unexpected or 'none'}")
    model.load_state_dict(sd, strict=True)
    return model.eval()


def hf_gpt2_incompatibilities(cfg: GPTConfig) -> list[str]:
    """Why a GPTConfig cannot be written as a GPT2LMHeadModel (empty when it can)."""
    checks = [
        (cfg.norm == "pre", "norm must be 'pre'"),
        (cfg.positions == "learned", "positions must be 'learned'"),
        (cfg.bias, "bias must be true"),
        (cfg.ln_bias, "ln_bias must be true"),
        (cfg.final_norm, "final_norm must be true"),
        (cfg.causal, "causal must be true"),
        (cfg.embed_scale == 1.0, "embed_scale must be 1.0"),
        (not cfg.head_bias, "head_bias must be false"),
        (cfg.norm_type == "layernorm" and cfg.norm_weight, "norms must be LayerNorms with a weight"),
        (not cfg.embed_norm and cfg.qk_norm == "none", "no embedding norm and no QK-norm"),
        (cfg.kv_heads == cfg.n_heads and cfg.head_size * cfg.n_heads == cfg.d_model,
         "multi-head attention with head_dim = d_model / n_heads"),
        (cfg.attn_scale is None, "attn_scale must be the default 1/sqrt(head_dim)"),
        (cfg.activation in _GPT_TO_HF_ACT and not cfg.gated, "the MLP must be ungated GELU or ReLU"),
        (cfg.residual == "sequential", "residual must be 'sequential'"),
        (cfg.logit_softcap is None, "no logit soft-cap"),
    ]
    return [why for ok, why in checks if not ok]


def export_hf_gpt2(gpt: GPT, folder: str | Path) -> Path:
    """Write `gpt` as a Hugging Face GPT2LMHeadModel folder; ValueError when GPT-2 cannot express it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = gpt.config
    problems = hf_gpt2_incompatibilities(cfg)
    if problems:
        raise ValueError(f"this GPT is not GPT-2-compatible: {'; '.join(problems)}")
    eot = 50256 if cfg.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, only where it exists
    hf_config = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.context, n_embd=cfg.d_model, n_layer=cfg.n_layers,
        n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function=_GPT_TO_HF_ACT[cfg.activation],
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        layer_norm_epsilon=cfg.ln_eps, tie_word_embeddings=cfg.tied, bos_token_id=eot, eos_token_id=eot,
    )
    hf_model = GPT2LMHeadModel(hf_config)
    missing, unexpected = hf_model.load_state_dict(gpt_state_dict_to_hf_gpt2(gpt.state_dict()), strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise ValueError(f"GPT-2 export key mismatch: missing {missing or 'none'}, unexpected {unexpected or 'none'}")
    folder = Path(folder)
    hf_model.save_pretrained(folder)
    return folder


# --- Hugging Face BERT ----------------------------------------------------------------------------

_HF_TO_BERT_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_BERT_TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def bert_config_from_hf(hf_config: Any, tied: bool = True) -> BertConfig:
    """A `transformers.BertConfig` as a BertConfig; refuses what the canonical MLM cannot compute."""
    act = getattr(hf_config, "hidden_act", "gelu")
    if act not in _HF_TO_BERT_ACT:
        raise ValueError(f"BERT hidden_act {act!r} is not supported; expected one of {', '.join(_HF_TO_BERT_ACT)}")
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute BERT position embeddings are supported")
    if getattr(hf_config, "is_decoder", False):
        raise ValueError("a BERT decoder is not a masked language model")
    pad = getattr(hf_config, "pad_token_id", None)
    return BertConfig(
        vocab_size=hf_config.vocab_size, hidden=hf_config.hidden_size, n_layers=hf_config.num_hidden_layers,
        n_heads=hf_config.num_attention_heads, intermediate=hf_config.intermediate_size,
        max_positions=hf_config.max_position_embeddings, type_vocab_size=hf_config.type_vocab_size,
        dropout=float(getattr(hf_config, "hidden_dropout_prob", 0.1)), ln_eps=float(hf_config.layer_norm_eps),
        activation=_HF_TO_BERT_ACT[act], pad_id=0 if pad is None else int(pad), tied=tied,
    )


def bert_from_hf(hf_model: nn.Module) -> BertMLM:
    """A `BertForMaskedLM` (or `BertForPreTraining`) as a canonical BertMLM with the same MLM logits."""
    sd = hf_model.state_dict()
    word, decoder = sd.get("bert.embeddings.word_embeddings.weight"), sd.get("cls.predictions.decoder.weight")
    tied = decoder is None or word is None or torch.equal(decoder, word)
    model = BertMLM(bert_config_from_hf(hf_model.config, tied=tied))
    load_hf_bert_state_dict(model, sd)
    return model.eval()


def export_hf_bert(model: BertMLM, folder: str | Path) -> Path:
    """Write `model` as a Hugging Face BertForMaskedLM folder."""
    from transformers import BertConfig as HFBertConfig
    from transformers import BertForMaskedLM

    cfg = model.config
    hf_config = HFBertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, intermediate_size=cfg.intermediate,
        hidden_act=_BERT_TO_HF_ACT[cfg.activation], hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout, max_position_embeddings=cfg.max_positions,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.ln_eps, pad_token_id=cfg.pad_id,
        tie_word_embeddings=cfg.tied,
    )
    hf_model = BertForMaskedLM(hf_config)
    missing, unexpected = hf_model.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if k not in ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")]
    if missing or unexpected:
        raise ValueError(f"BERT export key mismatch: missing {missing or 'none'}, unexpected {unexpected or 'none'}")
    folder = Path(folder)
    hf_model.save_pretrained(folder)
    return folder
