"""The GPT of Karpathy's "Let's build GPT" lecture (karpathy/ng-video-lecture `gpt.py`), much copied.

`token_embedding_table`, `position_embedding_table`, `blocks.{i}.sa.heads.{h}.(key|query|value)` (one
module per head, no biases, a `tril` mask buffer each), `blocks.{i}.sa.proj`, `blocks.{i}.ffwd.net.0/2`,
`blocks.{i}.ln1/ln2`, `ln_f`, `lm_head` (with a bias). The number of heads is in the weights.

The code fixes pre-LN, ReLU, eps 1e-5 and the causal mask. The lecture's first version scaled the
scores by `C**-0.5` (C = n_embd); the final gpt.py by `k.shape[-1]**-0.5`, the head size. The weights
cannot tell which: the head size, what students copy today, is the default, and calibration takes n_embd
only where it scores clearly better (else the default stays, marked unverified). A d_model scale is
folded into the query weights.

Students rename it (a MiniGPT with `token_embedding`, `blocks.{i}.attn.heads.{h}.key`, `ff.net.0`, `lm_head`):
the same structure under the common names of each slot is read as the lecture's (`_lecture_names`);
then the activation is not the lecture's code and GELU is a candidate beside ReLU.
"""

from __future__ import annotations

import math
import re

import torch

from ._shared import count_params, finish_gpt, layer_indices

NAME = "ng-video-lecture"
FAMILY = "gpt"
DESCRIPTION = "the lecture GPT (token_embedding_table, blocks.*.sa.heads.*.query, ffwd.net, lm_head)"

_HEAD_Q = re.compile(r"^blocks\.(\d+)\.sa\.heads\.(\d+)\.query\.weight$")

# the lecture's name of each slot <- the names students give it
_TOP = {"token_embedding_table": ("token_embedding", "tok_emb", "token_emb", "tok_embedding", "embedding", "wte"),
        "position_embedding_table": ("position_embedding", "pos_emb", "pos_embedding", "position_emb", "wpe"),
        "ln_f": ("final_norm", "norm_f", "ln_final", "final_ln", "norm"),
        "lm_head": ("head", "output", "output_head", "out_head", "fc_out")}
_IN_BLOCK = [(re.compile(p), new) for p, new in (
    (r"(?:sa|attn|attention|mha|self_attn|multihead|multi_head_attention)\.heads\.(\d+)\.(query|key|value)\.weight",
     r"sa.heads.\1.\2.weight"),
    (r"(?:sa|attn|attention|mha|self_attn|multihead|multi_head_attention)\.heads\.(\d+)\.(tril|mask)", r"sa.heads.\1.tril"),
    (r"(?:sa|attn|attention|mha|self_attn|multihead|multi_head_attention)\.(?:proj|out_proj|c_proj|out)\.(weight|bias)",
     r"sa.proj.\1"),
    (r"(?:ffwd|ff|mlp|ffn|feed_forward|feedforward)\.(?:net\.)?0\.(weight|bias)", r"ffwd.net.0.\1"),
    (r"(?:ffwd|ff|mlp|ffn|feed_forward|feedforward)\.(?:net\.)?2\.(weight|bias)", r"ffwd.net.2.\1"),
    (r"(?:ln1|ln_1|norm1|norm_1)\.(weight|bias)", r"ln1.\1"),
    (r"(?:ln2|ln_2|norm2|norm_2)\.(weight|bias)", r"ln2.\1"),
)]
_BLOCK_KEY = re.compile(r"^(?:blocks|layers|h)\.(\d+)\.(.+)$")


def _lecture_names(tensors) -> dict | None:
    """The tensors under the lecture's names, or None where a key has no lecture slot."""
    if "token_embedding_table.weight" in tensors:
        return dict(tensors)
    alias = {old: new for new, olds in _TOP.items() for old in olds}
    out = {}
    for k, t in tensors.items():
        if m := _BLOCK_KEY.match(k):
            for rx, new in _IN_BLOCK:
                if rx.fullmatch(m.group(2)):
                    out[f"blocks.{m.group(1)}." + rx.sub(new, m.group(2))] = t
                    break
            else:
                return None
        else:
            top, _, part = k.rpartition(".")
            if top in _TOP or top not in alias:
                out[k] = t
            else:
                out[f"{alias[top]}.{part}"] = t
    return out if len(out) == len(tensors) else None


def recognise(tensors) -> bool:
    named = _lecture_names(tensors)
    return named is not None and "token_embedding_table.weight" in named and any(_HEAD_Q.match(k) for k in named)


def _n_heads(tensors) -> int:
    return layer_indices(tensors, r"^blocks\.0\.sa\.heads\.(\d+)\.query\.weight$")


def convert(tensors, hints):
    notes: list[str] = []
    if "token_embedding_table.weight" not in tensors:
        notes.append("the lecture GPT under a student's own names")
    tensors = _lecture_names(tensors)
    n_layers = layer_indices(tensors, r"^blocks\.(\d+)\.")
    n_heads = _n_heads(tensors)
    wte = tensors["token_embedding_table.weight"]
    q_scale = 1.0 / math.sqrt(n_heads) if hints.get("attn_scale") == "d_model" else 1.0
    sd = {"transformer.wte.weight": wte}
    used = {"token_embedding_table.weight"}
    for name, ours in (("position_embedding_table.weight", "transformer.wpe.weight"),
                       ("ln_f.weight", "transformer.ln_f.weight"), ("ln_f.bias", "transformer.ln_f.bias"),
                       ("lm_head.weight", "lm_head.weight"), ("lm_head.bias", "lm_head.bias")):
        if name in tensors:
            sd[ours] = tensors[name]
            used.add(name)
    masks = [k for k in tensors if k.endswith(".tril")]
    used |= set(masks)
    for i in range(n_layers):
        b, p = f"blocks.{i}.", f"transformer.h.{i}."
        qkv = []
        for part in ("query", "key", "value"):
            keys = [f"{b}sa.heads.{h}.{part}.weight" for h in range(n_heads)]
            w = torch.cat([tensors[k] for k in keys], dim=0)
            qkv.append(w * q_scale if part == "query" and q_scale != 1.0 else w)
            used |= set(keys)
        sd[p + "attn.c_attn.weight"] = torch.cat(qkv, dim=0)
        for theirs, ours in (("sa.proj", "attn.c_proj"), ("ffwd.net.0", "mlp.c_fc"), ("ffwd.net.2", "mlp.c_proj"),
                             ("ln1", "ln_1"), ("ln2", "ln_2")):
            for part in ("weight", "bias"):
                if f"{b}{theirs}.{part}" in tensors:
                    sd[f"{p}{ours}.{part}"] = tensors[f"{b}{theirs}.{part}"]
                    used.add(f"{b}{theirs}.{part}")
    strays = sorted(set(tensors) - used)
    if strays:
        raise ValueError(f"keys with no place in the model: {', '.join(strays[:8])}")
    if masks:
        notes.append(f"{len(masks)} tril mask buffer(s) ignored")
    if q_scale != 1.0:
        notes.append("scores scaled by 1/sqrt(n_embd): folded into the query weights")
    fields = finish_gpt(sd, notes)
    fields["n_heads"] = n_heads
    return fields, sd, {"params": count_params(tensors, masks), "notes": notes}


def cannot_tell(tensors, fields):
    return {
        "norm": ["pre"],
        "activation": ["relu"] if "token_embedding_table.weight" in tensors else ["relu", "gelu"],
        "ln_eps": [1e-5],
        "causal": [True],
        "embed_scale": [1.0],
        "attn_scale": ["head_dim", "d_model"],
    }
