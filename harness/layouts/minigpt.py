"""Hand-written MiniGPTs: a regex key map with a few common names per slot.

Blocks under `blocks`/`layers`/`h`/... (`blocks.{i}.`); in each, pre- or post-attention norm `ln1`/`ln_1`/
`norm1`/..., attention `attn`/`attention`/`sa`/... holding either one fused projection `qkv`/`c_attn`/
`to_qkv`/`in_proj` (or `nn.MultiheadAttention`'s `in_proj_weight`) or three `query`/`key`/`value`
(`q_proj`, `q`, `wq`, ...), an output `proj`/`out`/`out_proj`/`c_proj`/`o_proj`; the second norm `ln2`/...;
a feed-forward `ffn`/`mlp`/`ff`/`ffwd` whose two linears are `0`/`fc1`/`c_fc`/`w1`/... and
`2`/`3`/`fc2`/`c_proj`/`w2`/... Outside: embedding `token_emb`/`tok_emb`/`tok_embeddings`/`embedding`/...,
positions any module with "pos" in its name (`pos_emb.emb.weight`, a Parameter [1, T, d], a `pe`
buffer), final norm `ln_f`/`norm`/..., head `head`/`lm_head`/`output`/... (none: the embedding).
Mask buffers (`attn.mask`, `attn.bias` [1, 1, T, T], `tril`) are ignored. minGPT before 2022
(`tok_emb`, `pos_emb`, `blocks.{i}.attn.key/query/value/proj`, `mlp.0/2`, `head`) is one of these.

The weights cannot tell: heads, pre/post-LN, the activation, whether the forward masked the future,
and for a fused projection how q, k and v lie in it (three blocks, or grouped by head first).
"""

from __future__ import annotations

import re

import torch

from ._shared import count_params, finish_gpt, head_candidates, is_sinusoidal, positions_table, split_qkv

NAME = "minigpt"
FAMILY = "gpt"
DESCRIPTION = "hand-written MiniGPT (blocks.{i}.ln1/attn.qkv/attn.proj/ln2/ffn, token_emb, pos_emb, head)"

_BLOCK = re.compile(r"^(?P<stack>(?:\w+\.)*?(?:blocks|layers|layer|h|block|transformer_blocks|decoder_blocks|"
                    r"decoder_layers|encoder_layers))\.(?P<i>\d+)\.(?P<rest>.+)$")
_ATTN1 = r"(?:attn|attention|self_attn|sa|mha|self_attention|att|multihead_attn|mhsa|attn_layer)"
# one wrapper may hold the projections itself or an inner module (a CausalSelfAttention around nn.MultiheadAttention)
_ATTN = rf"{_ATTN1}(?:\.{_ATTN1})?"
_FFN = r"(?:ffn|mlp|ff|ffwd|feed_forward|feedforward|ffn_layer|fnn|pwff|ffw)"
_SLOTS = [(re.compile(p, re.I), slot) for p, slot in (
    (r"(?:ln1|ln_1|norm1|norm_1|ln_attn|attn_norm|attention_norm|layernorm1|layer_norm1|layer_norm_1|"
     r"input_layernorm|norm_attn|pre_attn_norm|ln_a)\.(weight|bias)", "ln_1"),
    (r"(?:ln2|ln_2|norm2|norm_2|ln_mlp|ln_ffn|ffn_norm|mlp_norm|layernorm2|layer_norm2|layer_norm_2|"
     r"post_attention_layernorm|norm_ffn|norm_mlp|ln_b)\.(weight|bias)", "ln_2"),
    (rf"{_ATTN}\.(?:qkv|c_attn|qkv_proj|to_qkv|w_qkv|wqkv|qkv_linear|query_key_value|c_qkv|in_proj)\.(weight|bias)",
     "qkv"),
    (rf"{_ATTN}\.in_proj_(weight|bias)", "in_proj"),
    (rf"{_ATTN}\.(?:q|query|q_proj|to_q|w_q|wq|q_linear)\.(weight|bias)", "q"),
    (rf"{_ATTN}\.(?:k|key|k_proj|to_k|w_k|wk|k_linear)\.(weight|bias)", "k"),
    (rf"{_ATTN}\.(?:v|value|v_proj|to_v|w_v|wv|v_linear)\.(weight|bias)", "v"),
    (rf"{_ATTN}\.(?:proj|out|out_proj|c_proj|o_proj|to_out|to_out\.0|w_o|wo|o|output|out_linear|proj_out|dense|"
     r"fc_out|o_linear)\.(weight|bias)", "attn.c_proj"),
    (rf"{_FFN}\.(?:net\.)?(?:0|fc1|c_fc|w1|linear1|fc_in|lin1|up|up_proj|dense1|layer1|l1|fc)\.(weight|bias)",
     "mlp.c_fc"),
    (rf"{_FFN}\.(?:net\.)?(?:2|3|fc2|c_proj|w2|linear2|fc_out|lin2|down|down_proj|dense2|layer2|l2|proj)\."
     r"(weight|bias)", "mlp.c_proj"),
)]
_EMBED = ("token_emb", "tok_emb", "tok_embeddings", "token_embedding", "token_embeddings", "embedding", "embeddings",
          "embed", "emb", "word_emb", "word_embeddings", "embed_tokens", "tok_embedding", "input_emb", "src_emb",
          "input_embedding", "token_embed", "tok_embed", "wte")
_NORM = ("ln_f", "norm", "final_norm", "ln_final", "norm_f", "final_ln", "layer_norm", "ln", "layernorm",
         "final_layernorm", "norm_out")
_HEAD = ("head", "lm_head", "output", "output_head", "out", "fc_out", "to_logits", "logits", "output_layer", "unembed", "linear",
         "decoder", "classifier", "proj", "generator", "fc")
_MASK = re.compile(r"(^|\.)(\w*mask\w*|tril|bias)$")


def _stack(tensors) -> str | None:
    counts: dict[str, int] = {}
    for k in tensors:
        if m := _BLOCK.match(k):
            counts[m.group("stack")] = counts.get(m.group("stack"), 0) + 1
    return max(counts, key=counts.get) if counts else None


def _blocks(tensors, stack):
    """{index: {slot part: key}} and the block keys that are mask buffers; a stray block key is an error."""
    blocks: dict[int, dict[str, str]] = {}
    masks, strays = [], []
    for k, t in tensors.items():
        m = _BLOCK.match(k)
        if not m or m.group("stack") != stack:
            continue
        rest = m.group("rest")
        for rx, slot in _SLOTS:
            if sm := rx.fullmatch(rest):
                blocks.setdefault(int(m.group("i")), {})[f"{slot}.{sm.group(1)}"] = k
                break
        else:
            (masks if t.dim() >= 2 and _MASK.search(rest) else strays).append(k)
    return blocks, masks, strays


def _top(tensors, names, dim):
    for name in names:
        t = tensors.get(f"{name}.weight")
        if t is not None and t.dim() == dim:
            return name
    return None


def recognise(tensors) -> bool:
    if "transformer.wte.weight" in tensors or "wte.weight" in tensors and "h.0.attn.c_attn.weight" in tensors:
        return False  # nanoGPT, minGPT, Hugging Face GPT-2
    if any(re.search(r"\.heads\.\d+\.", k) for k in tensors):
        return False  # ng-video-lecture's per-head modules
    if any(k.endswith(".self_attn.in_proj_weight") for k in tensors) and \
            any(k.endswith(".linear1.weight") for k in tensors):
        return False  # nn.TransformerEncoderLayer
    stack = _stack(tensors)
    if stack is None or _top(tensors, _EMBED, 2) is None:
        return False
    blocks, _, _ = _blocks(tensors, stack)
    first = blocks.get(0, {})
    return ("qkv.weight" in first or "in_proj.weight" in first or {"q.weight", "k.weight", "v.weight"} <= set(first)) \
        and "mlp.c_fc.weight" in first


def _fused(tensors) -> bool:
    blocks, _, _ = _blocks(tensors, _stack(tensors))
    return any("qkv.weight" in b for b in blocks.values())


def _bias_or_zeros(tensors, slots, name, rows):
    key = slots.get(f"{name}.bias")
    return tensors[key] if key else torch.zeros(rows)


def convert(tensors, hints):
    stack = _stack(tensors)
    blocks, masks, strays = _blocks(tensors, stack)
    notes: list[str] = []
    if strays:
        raise ValueError(f"block keys with no place in the model: {', '.join(sorted(strays)[:8])}")
    if masks:
        notes.append(f"{len(masks)} mask buffer(s) ignored")
    order = hints.get("qkv_order") or "qkv"
    n_heads = hints.get("n_heads") or 1
    used = {k for b in blocks.values() for k in b.values()} | set(masks)
    sd: dict[str, torch.Tensor] = {}
    for i, slots in sorted(blocks.items()):
        p = f"transformer.h.{i}."
        for slot, key in slots.items():
            if slot.split(".")[0] in ("ln_1", "ln_2", "attn", "mlp"):
                sd[p + slot] = tensors[key]
        if "qkv.weight" in slots:
            sd[p + "attn.c_attn.weight"] = split_qkv(tensors[slots["qkv.weight"]], order, n_heads)
            if "qkv.bias" in slots:
                sd[p + "attn.c_attn.bias"] = split_qkv(tensors[slots["qkv.bias"]], order, n_heads)
        elif "in_proj.weight" in slots:  # nn.MultiheadAttention: q, k, v in that order
            sd[p + "attn.c_attn.weight"] = tensors[slots["in_proj.weight"]]
            if "in_proj.bias" in slots:
                sd[p + "attn.c_attn.bias"] = tensors[slots["in_proj.bias"]]
        else:
            ws = [tensors[slots[f"{x}.weight"]] for x in "qkv"]
            sd[p + "attn.c_attn.weight"] = torch.cat(ws, dim=0)
            if any(f"{x}.bias" in slots for x in "qkv"):
                sd[p + "attn.c_attn.bias"] = torch.cat([_bias_or_zeros(tensors, slots, x, w.shape[0])
                                                        for x, w in zip("qkv", ws)])
    embed = _top(tensors, _EMBED, 2)
    sd["transformer.wte.weight"] = tensors[f"{embed}.weight"]
    used.add(f"{embed}.weight")
    d = tensors[f"{embed}.weight"].shape[1]

    rest = [k for k in tensors if k not in used]
    extra: dict = {}
    buffers: list[str] = []
    pos = [k for k in rest if "pos" in k.lower()]
    if len(pos) > 1:
        raise ValueError(f"more than one position table: {', '.join(pos)}")
    if pos:
        key = pos[0]
        table = positions_table(tensors[key], d)
        used.add(key)
        if key.endswith("pe") and is_sinusoidal(table):
            extra = {"positions": "sinusoidal", "context": table.shape[0]}
            buffers.append(key)
        else:
            sd["transformer.wpe.weight"] = table
            if key.endswith("pe"):
                buffers.append(key)
    final = _top({k: v for k, v in tensors.items() if k not in used}, _NORM, 1)
    if final is not None:
        for part in ("weight", "bias"):
            if f"{final}.{part}" in tensors:
                sd[f"transformer.ln_f.{part}"] = tensors[f"{final}.{part}"]
                used.add(f"{final}.{part}")
    head = _top({k: v for k, v in tensors.items() if k not in used}, _HEAD, 2)
    if head is not None:
        sd["lm_head.weight"] = tensors[f"{head}.weight"]
        used.add(f"{head}.weight")
        if f"{head}.bias" in tensors:
            sd["lm_head.bias"] = tensors[f"{head}.bias"]
            used.add(f"{head}.bias")
    else:
        notes.append("no output layer: the embedding matrix is reused as the head")
    top_masks = [k for k in tensors if k not in used and tensors[k].dim() >= 2 and _MASK.search(k)]
    masks += top_masks
    strays = sorted(set(tensors) - used - set(top_masks))
    if strays:
        raise ValueError(f"keys with no place in the model: {', '.join(strays[:8])}")
    fields = finish_gpt(sd, notes)
    fields.update(extra)
    skip = masks + buffers + ([f"{head}.weight"] if fields["tied"] and head is not None else [])
    return fields, sd, {"params": count_params(tensors, skip), "notes": notes}


# minGPT 2020's exact names (karpathy/minGPT mingpt/model.py before the 2022 rewrite): its code fixes pre-LN,
# exact GELU and the causal mask, which calibration on a weak model must not be left to guess.
_MINGPT_2020 = ("tok_emb.weight", "pos_emb", "head.weight", "ln_f.weight", "blocks.0.ln1.weight",
                "blocks.0.attn.query.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.0.weight",
                "blocks.0.mlp.2.weight")


def _is_mingpt_2020(tensors) -> bool:
    return all(k in tensors for k in _MINGPT_2020) and tensors["pos_emb"].dim() == 3


def cannot_tell(tensors, fields):
    mingpt_2020 = _is_mingpt_2020(tensors)
    out = {
        "n_heads": head_candidates(fields["d_model"]),
        "norm": ["pre"] if mingpt_2020 else ["pre", "post"],
        "activation": ["gelu"] if mingpt_2020 else ["gelu", "relu"],
        "ln_eps": [1e-5],
        "causal": [True] if mingpt_2020 else [True, False],
        "embed_scale": [1.0],
    }
    if _fused(tensors):
        out["qkv_order"] = ["qkv", "qkv-per-head"]
    if "positions" not in fields:
        out["positions"] = ["none", "sinusoidal"]
        out["context"] = [1024]
    return out
