"""Hugging Face Llama and the families that share its names (Mistral, Qwen2, Qwen3), as a bare state dict.

`model.embed_tokens`, `model.layers.{i}.self_attn.(q_proj|k_proj|v_proj|o_proj)` (Qwen2: biases on q, k
and v; `attention_bias`: on all four), `self_attn.q_norm/k_norm` (Qwen3: RMSNorm over each head before the
rotation), `mlp.(gate_proj|up_proj|down_proj)` (SwiGLU `down(silu(gate x) * up x)`), `input_layernorm`,
`post_attention_layernorm` (RMSNorm with a weight), `model.norm`, `lm_head` (absent or shared when tied). A
bare `LlamaModel` has no `model.` prefix and no head. The rotation is `rotate_half`'s, on halves. Older
transformers versions saved `rotary_emb.inv_freq` in every layer: it says the head size and theta.

A Hugging Face folder (config.json) is built with transformers' own class before any layout; this file
reads what students save with `torch.save(model.state_dict())`. What the weights cannot tell goes to the
families' defaults: heads (the k/v rows then say the kv heads), rms_norm_eps 1e-6 (Llama, Qwen2; Mistral
1e-5), rope_theta 10000 (the configs' default; released Llama 3 used 500000, Qwen2 1e6). A stored config's
`rope_scaling` is not computed, and refused; Mistral's sliding window caps the context (shorter windows are
exactly full attention). Gemma's names
are the same but its maths is not ((1 + w) norms, scaled embeddings): it is not read here.
"""

from __future__ import annotations

from ._shared import (count_params, finish_gpt, fuse_qkv, layer_indices, refuse_strays, rename, rope_theta_of,
                      split_head_candidates)

NAME = "hf-llama"
FAMILY = "gpt"
DESCRIPTION = "Hugging Face Llama / Mistral / Qwen2 (model.layers.*.self_attn.q_proj, mlp.gate_proj, bare)"

_BLOCK = {"self_attn.o_proj": "attn.c_proj", "self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm",
          "mlp.gate_proj": "mlp.c_fc", "mlp.up_proj": "mlp.c_up", "mlp.down_proj": "mlp.c_proj",
          "input_layernorm": "ln_1", "post_attention_layernorm": "ln_2"}


def _prefix(tensors) -> str | None:
    for prefix in ("model.", ""):
        if (f"{prefix}embed_tokens.weight" in tensors and f"{prefix}layers.0.self_attn.q_proj.weight" in tensors
                and f"{prefix}layers.0.mlp.gate_proj.weight" in tensors):
            return prefix
    return None


def recognise(tensors) -> bool:
    return _prefix(tensors) is not None


def _names(p: str) -> dict[str, str]:
    names = {f"{p}embed_tokens.weight": "transformer.wte.weight", f"{p}norm.weight": "transformer.ln_f.weight",
             "lm_head.weight": "lm_head.weight", "lm_head.bias": "lm_head.bias"}
    for theirs, ours in _BLOCK.items():
        for part in ("weight", "bias"):
            names[f"{p}layers.{{i}}.{theirs}.{part}"] = f"transformer.h.{{i}}.{ours}.{part}"
    return names


def _inv_freq(tensors) -> list[str]:
    return [k for k in tensors if k.endswith("rotary_emb.inv_freq")]


def convert(tensors, hints):
    notes: list[str] = []
    p = _prefix(tensors)
    buffers = _inv_freq(tensors)
    n_layers = layer_indices(tensors, rf"^{p.replace('.', '[.]')}layers\.(\d+)\.")
    sd, used = rename(tensors, _names(p), n_layers)
    qkv, used_qkv = fuse_qkv(tensors, tuple(f"{p}layers.{{i}}.self_attn.{x}_proj" for x in "qkv"), n_layers)
    sd.update(qkv)
    refuse_strays(tensors, used | used_qkv | set(buffers))
    if not p:
        notes.append("a bare LlamaModel (no model. prefix)")
    known = {"n_heads": hints.get("n_heads")}
    theta = None
    if buffers:
        inv_freq = tensors[buffers[0]]
        known = {"head_dim": 2 * inv_freq.numel()}
        theta = rope_theta_of(inv_freq, known["head_dim"])
        notes.append(f"head size {known['head_dim']} and RoPE theta {theta:.6g} read from {buffers[0]}")
    fields = finish_gpt(sd, notes, known)
    if theta is not None:
        fields["rope_theta"] = theta
        fields.setdefault("n_heads", sd["transformer.h.0.attn.c_proj.weight"].shape[1] // known["head_dim"])
    skip = buffers + (["lm_head.weight"] if fields["tied"] and "lm_head.weight" in tensors else [])
    return fields, sd, {"params": count_params(tensors, skip), "notes": notes}


def cannot_tell(tensors, fields):
    values = {
        "norm": ["pre"],
        "norm_type": ["rmsnorm"],
        "ln_eps": [1e-6, 1e-5],
        "activation": ["silu"],
        "positions": ["rope"],
        "rope_pairs": ["half"],
        "causal": [True],
        "embed_scale": [1.0],
        "context": [1024],  # max_position_embeddings; unknown, the course's context decides
    }
    if "n_heads" not in fields:
        p = _prefix(tensors)
        q_norm = tensors.get(f"{p}layers.0.self_attn.q_norm.weight")  # [head_dim]
        q_width = tensors[f"{p}layers.0.self_attn.q_proj.weight"].shape[0]
        values["n_heads"] = [q_width // q_norm.shape[0]] if q_norm is not None else split_head_candidates(
            q_width, tensors[f"{p}layers.0.self_attn.k_proj.weight"].shape[0], fields["d_model"])
    if "rope_theta" not in fields:
        values["rope_theta"] = [10000.0, 500000.0, 1000000.0]
    if any(k.endswith("self_attn.q_norm.weight") for k in tensors):
        values["qk_norm"] = ["before_rope"]
    return values


def implied(config) -> dict:
    """Mistral's sliding window: on windows no longer than it, attention is exactly full causal attention."""
    window, context = config.get("sliding_window"), config.get("max_position_embeddings")
    if isinstance(window, int) and window > 0 and config.get("use_sliding_window", True) is not False:
        return {"context": min(window, context) if isinstance(context, int) else window}
    return {}


def unsupported(config, tensors=None) -> list[str]:
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    return [] if kind in (None, "default") else [f"rope_scaling of type {kind!r}"]
