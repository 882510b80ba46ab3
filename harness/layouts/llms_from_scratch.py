"""The GPTModel of "Build a Large Language Model (From Scratch)" (rasbt/LLMs-from-scratch, ch04/ch05 `gpt.py`).

`tok_emb`, `pos_emb`, `trf_blocks.{i}.att.(W_query|W_key|W_value)` (biases only with `qkv_bias`),
`att.out_proj`, `att.mask` (the causal mask, a persistent buffer), `ff.layers.0/2`, `norm1/norm2` and
`final_norm` with `scale` and `shift` (its own LayerNorm), `out_head` (no bias, untied). The book saves
`model.state_dict()` as `model.pth`, or `{"model_state_dict", "optimizer_state_dict"}`.

The code fixes pre-LN, the tanh approximation of GELU, eps 1e-5 and a biased variance (so its LayerNorm
is `nn.LayerNorm`). The number of heads is `cfg["n_heads"]`, which the weights cannot tell. The book's
Llama models (`ff.fc1`, `norm1.weight`, no `pos_emb`) are `llms_from_scratch_llama`'s.
"""

from __future__ import annotations

from ._shared import count_params, finish_gpt, fuse_qkv, head_candidates, layer_indices, refuse_strays, rename

NAME = "llms-from-scratch-gpt"
FAMILY = "gpt"
DESCRIPTION = "LLMs-from-scratch GPTModel (tok_emb, trf_blocks.*.att.W_query, norm1.scale, out_head)"

_NAMES = {
    "tok_emb.weight": "transformer.wte.weight",
    "pos_emb.weight": "transformer.wpe.weight",
    "final_norm.scale": "transformer.ln_f.weight",
    "final_norm.shift": "transformer.ln_f.bias",
    "out_head.weight": "lm_head.weight",
    "out_head.bias": "lm_head.bias",
    **{f"trf_blocks.{{i}}.{theirs}.{part}": f"transformer.h.{{i}}.{ours}.{part}"
       for theirs, ours in (("att.out_proj", "attn.c_proj"), ("ff.layers.0", "mlp.c_fc"), ("ff.layers.2", "mlp.c_proj"))
       for part in ("weight", "bias")},
    **{f"trf_blocks.{{i}}.{theirs}.{part}": f"transformer.h.{{i}}.{ours}.{param}"
       for theirs, ours in (("norm1", "ln_1"), ("norm2", "ln_2"))
       for part, param in (("scale", "weight"), ("shift", "bias"))},
}
_QKV = ("trf_blocks.{i}.att.W_query", "trf_blocks.{i}.att.W_key", "trf_blocks.{i}.att.W_value")


def recognise(tensors) -> bool:
    return ("tok_emb.weight" in tensors and "pos_emb.weight" in tensors
            and "trf_blocks.0.att.W_query.weight" in tensors and "trf_blocks.0.norm1.scale" in tensors)


def convert(tensors, hints):
    notes: list[str] = []
    n_layers = layer_indices(tensors, r"^trf_blocks\.(\d+)\.")
    masks = [k for k in tensors if k.endswith(".att.mask")]
    sd, used = rename(tensors, _NAMES, n_layers)
    qkv, used_qkv = fuse_qkv(tensors, _QKV, n_layers)
    sd.update(qkv)
    refuse_strays(tensors, used | used_qkv | set(masks))
    if masks:
        notes.append(f"{len(masks)} causal-mask buffer(s) att.mask ignored")
    fields = finish_gpt(sd, notes)
    return fields, sd, {"params": count_params(tensors, masks), "notes": notes}


def cannot_tell(tensors, fields):
    return {
        "n_heads": head_candidates(fields["d_model"]),
        "norm": ["pre"],
        "activation": ["gelu_tanh"],
        "ln_eps": [1e-5],
        "causal": [True],
        "embed_scale": [1.0],
    }
