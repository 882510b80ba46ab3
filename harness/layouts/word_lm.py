"""PyTorch examples' word_language_model `TransformerModel`, both generations.

Before 2023 (`nn.Module`): `encoder` (the embedding), `pos_encoder.pe` (sine-cosine buffer [5000, 1, d]),
`transformer_encoder.layers.{i}.*` (nn.TransformerEncoderLayer), `decoder` (Linear with bias), no final norm.
Since (a subclass of `nn.Transformer`): `input_emb`, `pos_encoder.pe`, `encoder.layers.{i}.*`,
`encoder.norm` (nn.Transformer's final LayerNorm), `decoder`.

The code fixes everything but the heads (`--nhead`, 2 by default; `main.py` pickles the whole model,
where `self_attn.num_heads` says it): post-LN, ReLU, eps 1e-5, embeddings times sqrt(d_model),
a causal mask (`has_mask=True`).
"""

from __future__ import annotations

import math

from ._shared import count_params, finish_gpt, head_candidates, is_sinusoidal, map_encoder_layer, positions_table

NAME = "word-lm"
FAMILY = "gpt"
DESCRIPTION = "PyTorch word_language_model TransformerModel (encoder/input_emb, pos_encoder.pe, decoder)"

_GENERATIONS = (  # (embedding, encoder stack)
    ("encoder.weight", "transformer_encoder."),
    ("input_emb.weight", "encoder."),
)


def _generation(tensors):
    if "pos_encoder.pe" not in tensors or "decoder.weight" not in tensors:
        return None
    for embed, stack in _GENERATIONS:
        if embed in tensors and f"{stack}layers.0.self_attn.in_proj_weight" in tensors:
            return embed, stack
    return None


def recognise(tensors) -> bool:
    return _generation(tensors) is not None


def convert(tensors, hints):
    embed, stack = _generation(tensors)
    notes = [f"generation: {'nn.Transformer subclass' if stack == 'encoder.' else 'nn.TransformerEncoder'}"]
    sd = {"transformer.wte.weight": tensors[embed], "lm_head.weight": tensors["decoder.weight"]}
    if "decoder.bias" in tensors:
        sd["lm_head.bias"] = tensors["decoder.bias"]
    i = 0
    while f"{stack}layers.{i}.self_attn.in_proj_weight" in tensors:
        sd.update(map_encoder_layer(tensors, f"{stack}layers.{i}.", i))
        i += 1
    for part in ("weight", "bias"):
        if f"{stack}norm.{part}" in tensors:
            sd[f"transformer.ln_f.{part}"] = tensors[f"{stack}norm.{part}"]
    d = tensors[embed].shape[1]
    table = positions_table(tensors["pos_encoder.pe"], d)
    extra = {"positions": "sinusoidal", "context": table.shape[0]}
    if not is_sinusoidal(table):
        sd["transformer.wpe.weight"] = table
        extra = {}
        notes.append("pos_encoder.pe is not the standard sine-cosine table; used as stored")
    placed = {k for k in tensors if k in (embed, "decoder.weight", "decoder.bias", "pos_encoder.pe")
              or k.startswith((f"{stack}layers.", f"{stack}norm."))}
    strays = sorted(set(tensors) - placed)
    if strays:
        raise ValueError(f"keys with no place in the model: {', '.join(strays[:8])}")
    fields = finish_gpt(sd, notes)
    fields.update(extra)
    skip = ["pos_encoder.pe"] + (["decoder.weight"] if fields["tied"] else [])
    return fields, sd, {"params": count_params(tensors, skip), "notes": notes}


def cannot_tell(tensors, fields):
    d = fields["d_model"]
    return {
        "n_heads": head_candidates(d, preferred=2),
        "norm": ["post"],
        "activation": ["relu"],
        "ln_eps": [1e-5],
        "causal": [True],
        "embed_scale": [math.sqrt(d)],
    }
