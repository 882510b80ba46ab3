"""nanoGPT (karpathy/nanoGPT `model.py`): the canonical GPT's own key names, weight-tied head.

`transformer.wte/wpe/h.{i}.(ln_1|attn.c_attn|attn.c_proj|ln_2|mlp.c_fc|mlp.c_proj)/ln_f`, `lm_head`
(the same storage as `wte`). `bias=False` drops every linear and LayerNorm bias. Versions before flash
attention keep a causal-mask buffer `attn.bias` [1, 1, T, T] in each block, and checkpoints that went
through Hugging Face code an `attn.masked_bias`; neither is a weight.

The weights cannot tell the number of heads (`model_args.n_head` in a nanoGPT checkpoint does). The
rest is fixed by the code: pre-LN, exact GELU, LayerNorm eps 1e-5, causal attention.

build-nanogpt (karpathy/build-nanogpt `train_gpt2.py`, the video's GPT-2 reproduction) has the same keys,
always with the `attn.bias` mask buffer and biases, and the tanh approximation of GELU. Its checkpoint is
`{"model", "config": GPTConfig(block_size, vocab_size, n_layer, n_head, n_embd), "step", "val_loss"}`:
a dataclass of exactly those five fields says build-nanogpt (and the heads), nanoGPT's `model_args`
(which has `bias` and `dropout`) says nanoGPT. Without either, mask buffers leave both GELUs open,
build-nanogpt's first: nanoGPT has saved no mask since flash attention (PyTorch 2.0).
"""

from __future__ import annotations


from ._shared import count_params, finish_gpt, head_candidates, same_tensor

NAME = "nanogpt"
FAMILY = "gpt"
DESCRIPTION = "nanoGPT (transformer.wte/h.*.attn.c_attn/lm_head, tied)"

_C_ATTN = "transformer.h.0.attn.c_attn"


def _mask_buffer(key: str) -> bool:
    return key.endswith((".attn.bias", ".attn.masked_bias"))


def recognise(tensors) -> bool:
    wte, c_attn = tensors.get("transformer.wte.weight"), tensors.get(f"{_C_ATTN}.weight")
    if wte is None or c_attn is None or wte.dim() != 2 or "transformer.wpe.weight" not in tensors:
        return False
    d = wte.shape[1]
    if tuple(c_attn.shape) != (3 * d, d):  # nn.Linear; Hugging Face's Conv1D stores [d, 3d]
        return False
    head = tensors.get("lm_head.weight")
    # An untied head with biases is minGPT's; nanoGPT always ties, with or without biases.
    return head is None or same_tensor(head, wte) or f"{_C_ATTN}.bias" not in tensors


def convert(tensors, hints):
    notes: list[str] = []
    masks = [k for k in tensors if _mask_buffer(k)]
    if masks:
        notes.append(f"{len(masks)} causal-mask buffer(s) (attn.bias / attn.masked_bias) ignored")
    sd = {k: v for k, v in tensors.items() if not _mask_buffer(k)}
    fields = finish_gpt(sd, notes)
    if not fields["tied"]:
        notes.append("the output layer is not tied to the embedding (nanoGPT ties them)")
    skip = masks + (["lm_head.weight"] if fields["tied"] and "lm_head.weight" in tensors else [])
    return fields, sd, {"params": count_params(tensors, skip), "notes": notes}


_BUILD_NANOGPT_CONFIG = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd"}


def implied(config) -> dict:
    keys = set(config) - {"modules"}
    if keys == _BUILD_NANOGPT_CONFIG:
        return {"activation": "gelu_tanh"}
    if {"n_layer", "n_head", "n_embd", "bias", "dropout"} <= keys and "activation" not in keys:  # nanoGPT's
        return {"activation": "gelu"}
    return {}


def cannot_tell(tensors, fields):
    masks = any(k.endswith(".attn.bias") and tensors[k].dim() == 4 for k in tensors)
    return {
        "n_heads": head_candidates(fields["d_model"]),
        "norm": ["pre"],
        "activation": ["gelu_tanh", "gelu"] if masks else ["gelu"],
        "ln_eps": [1e-5],
        "causal": [True],
        "embed_scale": [1.0],
    }
