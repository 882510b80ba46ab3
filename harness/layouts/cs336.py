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


def recognise(tensors) -> bool:
    return ("token_embeddings.weight" in tensors and "layers.0.attn.q_proj.weight" in tensors
            and "layers.0.ffn.w1.weight" in tensors)


def convert(tensors, hints):
    notes: list[str] = []
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
    rope = "position_embeddings.weight" not in tensors
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
