"""The Llama 2 and Llama 3 models of LLMs-from-scratch (rasbt/LLMs-from-scratch ch05/07_gpt_to_llama,
`pkg/llms_from_scratch/llama3.py`): the book's GPTModel turned into Llama.

`tok_emb`, `trf_blocks.{i}.att.(W_query|W_key|W_value|out_proj)` (no biases; Llama 3's W_key and W_value
have `n_kv_groups` heads), `ff.fc1/fc2/fc3` (SwiGLU `fc3(silu(fc1 x) * fc2 x)`), `norm1/norm2/final_norm`
(RMSNorm with a weight, eps 1e-5), `out_head`. Its RoPE (`compute_rope_params` / `apply_rope`) rotates
Hugging Face's halves, `cat(-x2, x1)`. The Llama 2 notebook keeps `att.mask`, `att.cos` and `att.sin` as
persistent buffers in every block (and so does the first Llama 3 notebook): the tables say the head size
and theta, and whether the frequencies were rescaled; the package's Llama 3 keeps none of them.

Llama 3's RoPE frequency scaling (`cfg["rope_freq"]`) is not a rotation the canonical GPT computes: a
config that asks for it, or a grouped-query model whose config and buffers do not say it is off, is
refused with one line. `rescale_theta` (a `context_length` other than `orig_context_length`) is computed.
"""

from __future__ import annotations

import torch

from ._shared import (count_params, finish_gpt, fuse_qkv, layer_indices, refuse_strays, rename, rope_theta_of,
                      split_head_candidates)

NAME = "llms-from-scratch-llama"
FAMILY = "gpt"
DESCRIPTION = "LLMs-from-scratch Llama2Model/Llama3Model (tok_emb, trf_blocks.*.att.W_query, ff.fc1, norm1.weight)"

_NAMES = {
    "tok_emb.weight": "transformer.wte.weight",
    "final_norm.weight": "transformer.ln_f.weight",
    "out_head.weight": "lm_head.weight",
    **{f"trf_blocks.{{i}}.{theirs}.weight": f"transformer.h.{{i}}.{ours}.weight"
       for theirs, ours in (("att.out_proj", "attn.c_proj"), ("ff.fc1", "mlp.c_fc"), ("ff.fc2", "mlp.c_up"),
                            ("ff.fc3", "mlp.c_proj"), ("norm1", "ln_1"), ("norm2", "ln_2"))},
}
_QKV = ("trf_blocks.{i}.att.W_query", "trf_blocks.{i}.att.W_key", "trf_blocks.{i}.att.W_value")
_BUFFERS = ("mask", "cos", "sin")
SCALING = "Llama 3's RoPE frequency scaling (rope_freq)"


def _buffers(tensors) -> list[str]:
    return [k for k in tensors if k.rsplit(".", 1)[-1] in _BUFFERS and (k.startswith("trf_blocks.") or "." not in k)]


def recognise(tensors) -> bool:
    return ("tok_emb.weight" in tensors and "trf_blocks.0.att.W_query.weight" in tensors
            and "trf_blocks.0.ff.fc1.weight" in tensors)


def _grouped(tensors) -> bool:
    return tensors["trf_blocks.0.att.W_key.weight"].shape[0] < tensors["trf_blocks.0.att.W_query.weight"].shape[0]


def _rope_table(tensors) -> tuple[int, float] | None:
    """Head size and theta from a stored cos/sin table [T, head_dim] (angles repeated over both halves);
    ValueError when its frequencies are not one theta's geometric series (Llama 3's scaling)."""
    cos, sin = tensors.get("trf_blocks.0.att.cos", tensors.get("cos")), tensors.get("trf_blocks.0.att.sin",
                                                                                     tensors.get("sin"))
    if cos is None or sin is None or cos.dim() != 2 or cos.shape != sin.shape or cos.shape[0] < 2:
        return None
    head_dim = cos.shape[1]
    inv_freq = torch.atan2(sin[1, : head_dim // 2].double(), cos[1, : head_dim // 2].double())
    try:
        return head_dim, rope_theta_of(inv_freq, head_dim)
    except ValueError as exc:
        if "rescaled" in str(exc):
            raise ValueError(f"its stored RoPE tables have rescaled frequencies: {SCALING}, which the harness "
                             f"does not compute") from None
        raise


def convert(tensors, hints):
    notes: list[str] = []
    buffers = _buffers(tensors)
    n_layers = layer_indices(tensors, r"^trf_blocks\.(\d+)\.")
    sd, used = rename(tensors, _NAMES, n_layers)
    qkv, used_qkv = fuse_qkv(tensors, _QKV, n_layers)
    sd.update(qkv)
    refuse_strays(tensors, used | used_qkv | set(buffers))
    table = _rope_table(tensors)
    known = {"n_heads": hints.get("n_heads")}
    if table is not None:
        known = {"head_dim": table[0]}
    if buffers:
        notes.append(f"{len(buffers)} mask / RoPE buffer(s) recomputed, not read")
    fields = finish_gpt(sd, notes, known)
    if table is not None:
        d_q = sd["transformer.h.0.attn.c_proj.weight"].shape[1]
        fields["n_heads"] = d_q // table[0]
        fields["rope_theta"] = table[1]
        fields["context"] = tensors.get("trf_blocks.0.att.cos", tensors.get("cos")).shape[0]
        notes.append(f"head size {table[0]} and RoPE theta {table[1]:.6g} read from the stored cos/sin tables")
    return fields, sd, {"params": count_params(tensors, buffers), "notes": notes}


def cannot_tell(tensors, fields):
    values = {
        "norm": ["pre"],
        "norm_type": ["rmsnorm"],
        "ln_eps": [1e-5],
        "activation": ["silu"],
        "positions": ["rope"],
        "rope_pairs": ["half"],
        "causal": [True],
        "embed_scale": [1.0],
    }
    if "n_heads" not in fields:
        values["n_heads"] = split_head_candidates(tensors["trf_blocks.0.att.W_query.weight"].shape[0],
                                                  tensors["trf_blocks.0.att.W_key.weight"].shape[0], fields["d_model"])
    if "context" not in fields:
        values["context"] = [1024]
    if "rope_theta" not in fields:
        # The Llama 2 notebook's theta_base, then Llama 3's rope_base.
        values["rope_theta"] = [10000.0, 500000.0] if not _grouped(tensors) else [500000.0, 10000.0]
    return values


def implied(config) -> dict:
    """`rescale_theta`: the book runs RoPE at rope_base * context_length / orig_context_length."""
    base, ctx, orig = config.get("rope_base"), config.get("context_length"), config.get("orig_context_length")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in (base, ctx, orig)):
        return {"rope_theta": float(base) * ctx / orig}
    return {}


def unsupported(config, tensors=None) -> list[str]:
    if config.get("rope_freq"):
        return [SCALING]
    if tensors is None or "rope_freq" in config or not _grouped(tensors):
        return []
    try:
        if _rope_table(tensors) is not None:
            return []
    except ValueError:
        pass  # convert says what is wrong with the tables
    return [f"{SCALING}, which neither a stored cfg (rope_freq = None) nor stored cos/sin tables say is off"]
