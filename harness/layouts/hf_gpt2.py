"""Hugging Face GPT-2 (`GPT2LMHeadModel`, or a bare `GPT2Model` without the `transformer.` prefix).

nanoGPT's names, but every projection is a `Conv1D` whose weight is [in, out], the transpose of
`nn.Linear`'s. `attn.c_attn` ([d, 3d]) tells the two apart; the square `attn.c_proj` ([d, d]) would take a
missed transpose without a shape error, so every Conv1D weight is transposed here, by name. Older
transformers versions also saved `attn.bias` / `attn.masked_bias` mask buffers.

`config.json` (read into the checkpoint's config) says heads, activation and eps; without it the
number of heads is unknown and the activation is GPT-2's default `gelu_new` (tanh approximation).
"""

from __future__ import annotations

from harness.models.io import hf_gpt2_state_dict_to_gpt

from ._shared import count_params, finish_gpt, head_candidates

NAME = "hf-gpt2"
FAMILY = "gpt"
DESCRIPTION = "Hugging Face GPT-2 (Conv1D weights, transformer.h.*.attn.c_attn [d, 3d])"


def _prefix(tensors) -> str | None:
    for prefix in ("transformer.", ""):
        wte, c_attn = tensors.get(f"{prefix}wte.weight"), tensors.get(f"{prefix}h.0.attn.c_attn.weight")
        if wte is not None and c_attn is not None and wte.dim() == 2:
            d = wte.shape[1]
            if tuple(c_attn.shape) == (d, 3 * d):
                return prefix
    return None


def recognise(tensors) -> bool:
    return _prefix(tensors) is not None


def convert(tensors, hints):
    notes: list[str] = []
    masks = [k for k in tensors if k.endswith((".attn.bias", ".attn.masked_bias"))]
    if masks:
        notes.append(f"{len(masks)} causal-mask buffer(s) of older transformers versions ignored")
    if _prefix(tensors) == "":
        notes.append("a bare GPT2Model (no transformer. prefix); the output layer is the embedding")
    sd = hf_gpt2_state_dict_to_gpt(tensors)  # transposes the Conv1D weights
    fields = finish_gpt(sd, notes)
    skip = masks + (["lm_head.weight"] if fields["tied"] and "lm_head.weight" in tensors else [])
    return fields, sd, {"params": count_params(tensors, skip), "notes": notes}


def cannot_tell(tensors, fields):
    return {
        "n_heads": head_candidates(fields["d_model"]),
        "norm": ["pre"],
        "activation": ["gelu_tanh", "gelu"],
        "ln_eps": [1e-5],
        "causal": [True],
        "embed_scale": [1.0],
    }


def unsupported(config: dict, tensors=None) -> list[str]:
    """GPT-2 options in config.json that the canonical GPT does not compute."""
    problems = []
    if config.get("scale_attn_by_inverse_layer_idx"):
        problems.append("scale_attn_by_inverse_layer_idx")
    if config.get("scale_attn_weights") is False:
        problems.append("scale_attn_weights = false")
    if config.get("add_cross_attention"):
        problems.append("add_cross_attention")
    return problems
