"""Hugging Face GPT-NeoX (`GPTNeoXForCausalLM`: Pythia and its kin) as a bare state dict.

`gpt_neox.embed_in`, `gpt_neox.layers.{i}.(input_layernorm|post_attention_layernorm)` (LayerNorms with
biases), `attention.query_key_value` (one fused projection whose output is viewed as
[heads, 3 * head_size]: q, k and v grouped by head, not three blocks), `attention.dense`,
`mlp.dense_h_to_4h/dense_4h_to_h` (exact GELU), `gpt_neox.final_layer_norm`, `embed_out` (`lm_head` since
transformers 5; untied). Older
transformers versions also saved `attention.bias` / `attention.masked_bias` masks and
`attention.rotary_emb.inv_freq`; none is a weight.

The defaults of `GPTNeoXConfig`: the attention and the MLP read the same input in parallel
(`use_parallel_residual`), RoPE on the first quarter of each head (`rotary_pct` 0.25, base 10000, halves
rotated), eps 1e-5. The weights cannot tell any of these, nor the heads, on which the q/k/v split depends.
"""

from __future__ import annotations

import re

from ._shared import count_params, finish_gpt, head_candidates, layer_indices, refuse_strays, rename, split_qkv

NAME = "hf-gpt-neox"
FAMILY = "gpt"
DESCRIPTION = "Hugging Face GPT-NeoX (gpt_neox.layers.*.attention.query_key_value, embed_out / lm_head)"

_P = "gpt_neox."
_NAMES = {
    f"{_P}embed_in.weight": "transformer.wte.weight",
    "embed_out.weight": "lm_head.weight",
    "lm_head.weight": "lm_head.weight",
    **{f"{_P}final_layer_norm.{part}": f"transformer.ln_f.{part}" for part in ("weight", "bias")},
    **{f"{_P}layers.{{i}}.{theirs}.{part}": f"transformer.h.{{i}}.{ours}.{part}"
       for theirs, ours in (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2"),
                            ("attention.dense", "attn.c_proj"), ("mlp.dense_h_to_4h", "mlp.c_fc"),
                            ("mlp.dense_4h_to_h", "mlp.c_proj"))
       for part in ("weight", "bias")},
}
_BUFFER = re.compile(r"\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$|^gpt_neox\.rotary_emb\.inv_freq$")


def recognise(tensors) -> bool:
    return f"{_P}embed_in.weight" in tensors and f"{_P}layers.0.attention.query_key_value.weight" in tensors


def convert(tensors, hints):
    notes: list[str] = []
    buffers = [k for k in tensors if _BUFFER.search(k)]
    n_layers = layer_indices(tensors, r"^gpt_neox\.layers\.(\d+)\.")
    sd, used = rename(tensors, _NAMES, n_layers)
    d = tensors[f"{_P}embed_in.weight"].shape[1]
    n_heads = hints.get("n_heads") or head_candidates(d)[0]
    for i in range(n_layers):
        for part in ("weight", "bias"):
            key = f"{_P}layers.{i}.attention.query_key_value.{part}"
            if key in tensors:
                sd[f"transformer.h.{i}.attn.c_attn.{part}"] = split_qkv(tensors[key], "qkv-per-head", n_heads)
                used.add(key)
    refuse_strays(tensors, used | set(buffers))
    if buffers:
        notes.append(f"{len(buffers)} mask / rotary buffer(s) of older transformers versions ignored")
    fields = finish_gpt(sd, notes, {"n_heads": n_heads})
    return fields, sd, {"params": count_params(tensors, buffers), "notes": notes}


def cannot_tell(tensors, fields):
    return {
        "n_heads": head_candidates(fields["d_model"]),
        "norm": ["pre"],
        "norm_type": ["layernorm"],
        "ln_eps": [1e-5],
        "activation": ["gelu"],
        "positions": ["rope"],
        "rope_pairs": ["half"],
        "rope_fraction": [0.25, 1.0],
        "rope_theta": [10000.0],
        "residual": ["parallel", "sequential"],
        "causal": [True],
        "embed_scale": [1.0],
        "context": [1024],  # max_position_embeddings; unknown, the course's context decides
    }


def unsupported(config, tensors=None) -> list[str]:
    scaling = config.get("rope_scaling") or {}
    params = config.get("rope_parameters") or {}
    kind = (scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None) or \
        (params.get("rope_type") if isinstance(params, dict) else None)
    return [] if kind in (None, "default") else [f"rope_scaling of type {kind!r}"]
