"""Causal LMs built on `nn.TransformerEncoder`: an embedding, positions, the encoder stack, a head.

The stack is recognised by `nn.TransformerEncoderLayer`'s own names under any prefix
(`<stack>.layers.{i}.self_attn.in_proj_weight` (q, k, v fused in that order), `.self_attn.out_proj`,
`.linear1`, `.linear2`, `.norm1`, `.norm2`; `<stack>.norm` when the encoder was given a final norm). The
rest by a few common names: embedding `embedding`/`tok_emb`/`token_embedding`/..., positions any
non-stack module with "pos" in its name (an `nn.Embedding`, a Parameter [1, T, d], or a sine-cosine `pe`
buffer [T, 1, d] as in PyTorch's tutorial), final norm `ln_f`/`norm`/..., head `fc_out`/`lm_head`/
`head`/`output`/`linear`/`decoder`/... (no head at all: the embedding is reused).
PyTorch's word_language_model names (`encoder`/`input_emb` + `decoder` + `pos_encoder.pe`) are `word_lm`'s.

The weights cannot tell: heads, pre/post-LN (`norm_first`, False by default: post-LN), the activation
(ReLU by default), the embedding scale (the tutorial multiplies by sqrt(d_model)), whether the forward
passed a causal mask, and, without a position key, whether positions are computed on the fly.
"""

from __future__ import annotations

import math
import re

from ._shared import count_params, finish_gpt, head_candidates, is_sinusoidal, map_encoder_layer, positions_table

NAME = "torch-encoder"
FAMILY = "gpt"
DESCRIPTION = "nn.TransformerEncoder LM (<stack>.layers.*.self_attn.in_proj_weight, linear1/linear2, norm1/norm2)"

_LAYER = re.compile(r"^(?P<stack>(?:\w+\.)*)layers\.(\d+)\.self_attn\.in_proj_weight$")
_EMBED = ("embedding", "embeddings", "embed", "emb", "tok_emb", "token_emb", "tok_embeddings", "token_embedding",
          "token_embeddings", "token_embedding_table", "wte", "word_emb", "word_embeddings", "embed_tokens",
          "tok_embedding", "input_emb", "src_emb", "input_embedding")
_NORM = ("ln_f", "norm", "final_norm", "ln_final", "norm_f", "final_ln", "layer_norm", "ln", "layernorm",
         "final_layernorm", "norm_out")
_HEAD = ("fc_out", "lm_head", "head", "output", "out", "fc", "linear", "decoder", "output_layer", "to_logits",
         "proj", "classifier", "unembed", "generator")
_MASK = re.compile(r"(^|\.)(\w*mask\w*|tril)$")


def _stack(tensors) -> str | None:
    stacks = {m.group("stack") for k in tensors if (m := _LAYER.match(k))}
    if len(stacks) != 1:
        return None
    stack = stacks.pop()
    return stack if f"{stack}layers.0.linear1.weight" in tensors else None


def _word_lm(tensors) -> bool:
    return ("pos_encoder.pe" in tensors and "decoder.weight" in tensors
            and ("encoder.weight" in tensors or "input_emb.weight" in tensors))


def _module(tensors, names, suffix=".weight", dim=None):
    for name in names:
        t = tensors.get(name + suffix)
        if t is not None and (dim is None or t.dim() == dim):
            return name
    return None


def recognise(tensors) -> bool:
    stack = _stack(tensors)
    return stack is not None and not _word_lm(tensors) and _module(tensors, _EMBED, dim=2) is not None


def convert(tensors, hints):
    stack = _stack(tensors)
    notes: list[str] = []
    used: set[str] = set()
    n_layers = len({m.group(2) for k in tensors if (m := _LAYER.match(k))})
    sd = {}
    for i in range(n_layers):
        block = map_encoder_layer(tensors, f"{stack}layers.{i}.", i)
        sd.update(block)
    used |= {k for k in tensors if k.startswith(f"{stack}layers.")}
    embed = _module(tensors, _EMBED, dim=2)
    sd["transformer.wte.weight"] = tensors[embed + ".weight"]
    used.add(embed + ".weight")
    d = sd["transformer.wte.weight"].shape[1]
    fields_extra = {}

    rest = [k for k in tensors if k not in used and not k.startswith(stack + "norm.")]
    pos = [k for k in rest if "pos" in k.rsplit(".", 1)[0].lower() or k.lower().startswith("pos")]
    if len(pos) > 1:
        raise ValueError(f"more than one position table: {', '.join(pos)}")
    buffer_keys = []
    if pos:
        key = pos[0]
        table = positions_table(tensors[key], d)
        used.add(key)
        if key.endswith("pe") and is_sinusoidal(table):
            fields_extra.update(positions="sinusoidal", context=table.shape[0])
            buffer_keys.append(key)
            notes.append(f"{key} is the sine-cosine table (recomputed, not a weight)")
        else:
            sd["transformer.wpe.weight"] = table
            if key.endswith("pe"):
                buffer_keys.append(key)
                notes.append(f"{key} is not the standard sine-cosine table; used as stored")

    final = f"{stack}norm" if f"{stack}norm.weight" in tensors else _module(tensors, _NORM, dim=1)
    if final is not None:
        for part in ("weight", "bias"):
            if f"{final}.{part}" in tensors:
                sd[f"transformer.ln_f.{part}"] = tensors[f"{final}.{part}"]
                used.add(f"{final}.{part}")
    head = _module(tensors, _HEAD, dim=2)
    if head is not None and head != embed:
        sd["lm_head.weight"] = tensors[head + ".weight"]
        used.add(head + ".weight")
        if head + ".bias" in tensors:
            sd["lm_head.bias"] = tensors[head + ".bias"]
            used.add(head + ".bias")
    else:
        notes.append("no output layer: the embedding matrix is reused as the head")

    masks = [k for k in tensors if k not in used and _MASK.search(k)]
    if masks:
        notes.append(f"mask buffer(s) {', '.join(masks)} ignored (a stored mask suggests a causal forward)")
    strays = [k for k in tensors if k not in used and k not in masks]
    if strays:
        raise ValueError(f"keys with no place in the model: {', '.join(sorted(strays)[:8])}")
    fields = finish_gpt(sd, notes)
    fields.update(fields_extra)
    skip = masks + buffer_keys
    if fields["tied"] and head is not None and head != embed:
        skip.append(head + ".weight")
    return fields, sd, {"params": count_params(tensors, skip), "notes": notes}


def cannot_tell(tensors, fields):
    d = fields["d_model"]
    sinusoidal = fields.get("positions") == "sinusoidal"
    out = {
        "n_heads": head_candidates(d),
        "norm": ["post", "pre"],
        "activation": ["relu", "gelu"],
        "ln_eps": [1e-5],
        "causal": [True, False],
        # PyTorch's tutorial scales the embedding by sqrt(d_model) before adding its sine-cosine table.
        "embed_scale": [math.sqrt(d), 1.0] if sinusoidal else [1.0, math.sqrt(d)],
    }
    if "positions" not in fields:
        out["positions"] = ["none", "sinusoidal"]
        out["context"] = [1024]
    return out
