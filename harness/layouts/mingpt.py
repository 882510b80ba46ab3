"""minGPT (karpathy/minGPT `mingpt/model.py`, 2022 on): nanoGPT's key names with an untied head.

`transformer.wte/wpe/h.{i}.(ln_1|attn.c_attn|attn.c_proj|ln_2|mlp.c_fc|mlp.c_proj)/ln_f`, `lm_head`
(no bias, its own matrix), and the causal-mask buffer `attn.bias` [1, 1, T, T] in every block. Biases
everywhere else. The older minGPT (`tok_emb`, `blocks.{i}.attn.key/query/value`) is read by `minigpt`.

The weights cannot tell the number of heads. minGPT's code fixes pre-LN, LayerNorm eps 1e-5 and the
tanh-approximated GELU (`NewGELU`); the last is indistinguishable in the keys from a nanoGPT whose
tying was switched off (exact GELU), so it stays a candidate.
"""

from __future__ import annotations

from ._shared import count_params, finish_gpt, head_candidates, same_tensor

NAME = "mingpt"
FAMILY = "gpt"
DESCRIPTION = "minGPT (transformer.wte/h.*.attn.c_attn, untied lm_head)"

_C_ATTN = "transformer.h.0.attn.c_attn"


def _mask_buffer(key: str) -> bool:
    return key.endswith((".attn.bias", ".attn.masked_bias"))


def recognise(tensors) -> bool:
    wte, c_attn = tensors.get("transformer.wte.weight"), tensors.get(f"{_C_ATTN}.weight")
    head = tensors.get("lm_head.weight")
    if wte is None or c_attn is None or head is None or wte.dim() != 2 or "transformer.wpe.weight" not in tensors:
        return False
    d = wte.shape[1]
    return (tuple(c_attn.shape) == (3 * d, d) and f"{_C_ATTN}.bias" in tensors
            and not same_tensor(head, wte))


def convert(tensors, hints):
    notes: list[str] = []
    masks = [k for k in tensors if _mask_buffer(k)]
    if masks:
        notes.append(f"{len(masks)} causal-mask buffer(s) attn.bias ignored")
    sd = {k: v for k, v in tensors.items() if not _mask_buffer(k)}
    fields = finish_gpt(sd, notes)
    return fields, sd, {"params": count_params(tensors, masks), "notes": notes}


def cannot_tell(tensors, fields):
    return {
        "n_heads": head_candidates(fields["d_model"]),
        "norm": ["pre"],
        "activation": ["gelu_tanh", "gelu"],
        "ln_eps": [1e-5],
        "causal": [True],
        "embed_scale": [1.0],
    }
