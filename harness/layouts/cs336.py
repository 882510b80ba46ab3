"""The TransformerLM of Stanford CS336 assignment 1 (stanford-cs336/assignment1-basics), by the handout's names.

`token_embeddings`, `layers.{i}.attn.(q_proj|k_proj|v_proj|output_proj)`, `layers.{i}.ln1`,
`layers.{i}.ffn.(w1|w2|w3)`, `layers.{i}.ln2`, `ln_final`, `lm_head`: the names `tests/adapters.py`
(`run_transformer_lm`) gives and the staff's `cs336_basics/model.py` uses. No biases anywhere, untied, RMSNorm
(eps 1e-5) with a weight, pre-norm, SwiGLU `w2(silu(w1 x) * w3 x)`, and RoPE (theta `rope_theta`, 10000 in
the handout) rotating the pairs (2k, 2k+1) of each head, not Hugging Face's halves. The 2024 edition had
learned `position_embeddings` and an exact-GELU `w2(gelu(w1 x))` instead; both read here.

Students save with their own `save_checkpoint` (`{"model": ..., "optimizer": ..., "iteration": ...}`,
often with torch.compile's `_orig_mod.`); the staff reference writes `model.pt` beside `model_config.json`
(`vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta`). Everything is built from
scratch, so RoPE tables a student registered as persistent buffers (`cos`, `sin`, `freqs`, `rope.*`)
come along; they are recomputed, not read. The weights cannot tell the heads or theta.

The handout fixes the maths, not the names: a student's `cs336_basics/model.py` keeps its own (`embeddings`,
`W`, `g`, `attention.linear_qkv`, `ffn.linear1/2/3`, `norm1`, `norm`, `linear_o`, ...). The same structure
under the common names of each slot is read under the handout's (`_handout_names`); a fused q/k/v
projection is taken as the three blocks q, k, v (`.view(B, T, 3, H, d)`), each head by head.
"""

from __future__ import annotations

import re

from ._shared import count_params, finish_gpt, fuse_qkv, head_candidates, layer_indices, refuse_strays, rename

NAME = "cs336"
FAMILY = "gpt"
DESCRIPTION = "CS336 TransformerLM (token_embeddings, layers.*.attn.q_proj, ffn.w1/w2/w3, ln_final, lm_head)"

_NAMES = {
    "token_embeddings.weight": "transformer.wte.weight",
    "position_embeddings.weight": "transformer.wpe.weight",
    "ln_final.weight": "transformer.ln_f.weight",
    "lm_head.weight": "lm_head.weight",
    **{f"layers.{{i}}.{theirs}.weight": f"transformer.h.{{i}}.{ours}.weight"
       for theirs, ours in (("attn.output_proj", "attn.c_proj"), ("ffn.w1", "mlp.c_fc"), ("ffn.w3", "mlp.c_up"),
                            ("ffn.w2", "mlp.c_proj"), ("ln1", "ln_1"), ("ln2", "ln_2"))},
}
_QKV = ("layers.{i}.attn.q_proj", "layers.{i}.attn.k_proj", "layers.{i}.attn.v_proj")
# Rotary tables a student's own RoPE module kept as persistent buffers.
_ROPE_BUFFER = re.compile(r"(^|\.)(rope|rotary|positional_encoder|pos_enc|freqs?_cis|inv_freq|(cos|sin)(_cache[d]?)?)"
                          r"($|\.)|_freq_cis_cache$", re.I)


def _rope_buffers(tensors) -> list[str]:
    return [k for k in tensors if _ROPE_BUFFER.search(k) and not k.endswith("_proj.weight")]


# the handout's name of each slot <- the names students give it; `{leaf}` the parameter's own name
_LEAF = r"(?:weight|W|w|weights|embeddings|embedding|g|gain|scale|gamma)"
_ATT = r"(?:attn|attention|self_attention|mha|multihead_attn|multi_head_attention|causal_attn|mhsa)"
_FF = r"(?:ffn|feed_forward|feedforward|ff|mlp|swiglu|ffwd)"
_IN_LAYER = [(re.compile(p + r"\." + _LEAF), new) for p, new in (
    (rf"{_ATT}\.(?:q_proj|wq|Wq|W_q|q|query|q_linear|linear_q)", "attn.q_proj.weight"),
    (rf"{_ATT}\.(?:k_proj|wk|Wk|W_k|k|key|k_linear|linear_k)", "attn.k_proj.weight"),
    (rf"{_ATT}\.(?:v_proj|wv|Wv|W_v|v|value|v_linear|linear_v)", "attn.v_proj.weight"),
    (rf"{_ATT}\.(?:qkv_proj|linear_qkv|qkv|W_qkv|Wqkv|wqkv|w_qkv|c_attn|in_proj|qkv_linear)", "attn.qkv"),
    (rf"{_ATT}\.(?:output_proj|o_proj|wo|Wo|W_o|out_proj|linear_o|proj|out|o|c_proj|out_linear)",
     "attn.output_proj.weight"),
    (rf"{_FF}\.(?:w1|W1|w_1|linear1|linear_1|fc1|gate_proj|gate)", "ffn.w1.weight"),
    (rf"{_FF}\.(?:w2|W2|w_2|linear2|linear_2|fc2|down_proj|down)", "ffn.w2.weight"),
    (rf"{_FF}\.(?:w3|W3|w_3|linear3|linear_3|fc3|up_proj|up)", "ffn.w3.weight"),
    (r"(?:ln1|ln_1|norm1|norm_1|attn_norm|attention_norm|norm_attn|rms_norm1|rmsnorm1|rms1|pre_attn_norm)", "ln1.weight"),
    (r"(?:ln2|ln_2|norm2|norm_2|ffn_norm|mlp_norm|norm_ffn|rms_norm2|rmsnorm2|rms2|pre_ffn_norm)", "ln2.weight"),
)]
_OUTSIDE = [(re.compile(p + r"\." + _LEAF), new) for p, new in (
    (r"(?:token_embeddings|token_embedding|tok_embeddings|tok_embedding|tok_emb|token_emb|embedding|embeddings|"
     r"embed|embd|emb|wte|embed_tokens)", "token_embeddings.weight"),
    (r"(?:position_embeddings|position_embedding|pos_emb|pos_embedding|wpe)", "position_embeddings.weight"),
    (r"(?:ln_final|final_norm|norm|ln_f|norm_f|final_ln|norm_final|final_layernorm|ln)", "ln_final.weight"),
    (r"(?:lm_head|linear_o|output|out|head|output_embd|output_proj|output_layer|out_proj|unembed|linear|lm_proj)",
     "lm_head.weight"),
)]
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")


def _handout_names(tensors) -> dict | None:
    """The tensors under the handout's names (a fused q/k/v split in three), or None where one has no slot."""
    out = {}
    for k, t in tensors.items():
        if _ROPE_BUFFER.search(k) and not k.endswith("_proj.weight"):
            out[k] = t
            continue
        m = _LAYER_KEY.match(k)
        rest, table = (m.group(2), _IN_LAYER) if m else (k, _OUTSIDE)
        new = next((new for rx, new in table if rx.fullmatch(rest)), None)
        if new is None:
            return None
        if m and new == "attn.qkv":
            if t.dim() != 2 or t.shape[0] % 3:
                return None
            for part, w in zip(("q_proj", "k_proj", "v_proj"), t.chunk(3, dim=0)):
                out[f"layers.{m.group(1)}.attn.{part}.weight"] = w
            continue
        name = f"layers.{m.group(1)}.{new}" if m else new
        if name in out:
            return None
        out[name] = t
    return out


def recognise(tensors) -> bool:
    if ("token_embeddings.weight" in tensors and "layers.0.attn.q_proj.weight" in tensors
            and "layers.0.ffn.w1.weight" in tensors):
        return True  # the handout's own names: a key with no place is then named by `convert`
    named = _handout_names(tensors)
    return (named is not None and "token_embeddings.weight" in named and "layers.0.attn.q_proj.weight" in named
            and "layers.0.ffn.w1.weight" in named)


def convert(tensors, hints):
    notes: list[str] = []
    named = _handout_names(tensors)
    if named is not None and set(named) != set(tensors):
        notes.append("a student's own names read as the handout's")
        tensors = named
    buffers = _rope_buffers(tensors)
    n_layers = layer_indices(tensors, r"^layers\.(\d+)\.")
    sd, used = rename(tensors, _NAMES, n_layers)
    qkv, used_qkv = fuse_qkv(tensors, _QKV, n_layers)
    sd.update(qkv)
    refuse_strays(tensors, used | used_qkv | set(buffers))
    if buffers:
        notes.append(f"{len(buffers)} rotary table buffer(s) recomputed, not read: {', '.join(buffers[:3])}"
                     f"{' …' if len(buffers) > 3 else ''}")
    fields = finish_gpt(sd, notes, {"n_heads": hints.get("n_heads")})
    return fields, sd, {"params": count_params(tensors, buffers), "notes": notes}


def cannot_tell(tensors, fields):
    rope = "position_embeddings.weight" not in (_handout_names(tensors) or tensors)
    values = {
        "n_heads": head_candidates(fields["d_model"]),
        "norm": ["pre"],
        "norm_type": ["rmsnorm"],
        "ln_eps": [1e-5],
        "activation": ["silu"] if fields.get("gated") else ["gelu"],
        "causal": [True],
        "embed_scale": [1.0],
    }
    if rope:
        # context_length: the longest window the course may use; unknown, the course's own decides.
        values |= {"positions": ["rope"], "rope_theta": [10000.0], "rope_pairs": ["interleaved"], "context": [1024]}
    return values
