"""Checkpoint layouts: one small file each, that recognises a family of key names and maps it onto the
canonical GPT or BERT MLM. No base class; every layout module has the same few names:

- `NAME`, `FAMILY` ("gpt" | "mlm"), `DESCRIPTION` (one line for messages);
- `recognise(tensors) -> bool`: by keys and shapes alone (the canonical layouts also take the stored config);
- `convert(tensors, hints) -> (fields, state_dict, facts)`: the config fields the weights tell, the
  canonical state dict, and facts (`notes`: what was read or set aside; `params` where the layout counts
  them from the original tensors). `hints` carries resolved choices a mapping depends on
  (`n_heads`, `qkv_order`, `attn_scale`); `convert` works without them, on the layout's defaults;
- `cannot_tell(tensors, fields) -> {field: [plausible values, the layout's default first]}`: everything
  the weights do not say. One value: the layout's code fixes it; several: worth calibrating.
- optionally `unsupported(config, tensors) -> [str]`: options the canonical model cannot compute;
- optionally `implied(config) -> {field: value}`: the family's own reading of its stored config (values
  its shape says, or that its code derives from it), taken over the generic reading of the config.

`harness.models.build.build_model` picks the layout and resolves what the weights cannot tell.
"""

from __future__ import annotations

from . import (
    canonical_gpt,
    canonical_mlm,
    cs336,
    hf_bert,
    hf_gpt2,
    hf_llama,
    hf_neox,
    llms_from_scratch,
    llms_from_scratch_llama,
    mingpt,
    minigpt,
    nanochat,
    nanogpt,
    ng_video,
    torch_encoder,
    word_lm,
)

# Read by their stamp in the stored config, before anything else.
CANONICAL = (canonical_gpt, canonical_mlm)
# Recognised by keys and shapes; at most one may claim a checkpoint.
LAYOUTS = (nanogpt, mingpt, hf_gpt2, hf_bert, word_lm, torch_encoder, ng_video, minigpt, nanochat, llms_from_scratch,
           llms_from_scratch_llama, cs336, hf_llama, hf_neox)
# The hand-written MiniGPTs' catch-all key map: only for weights no family's own layout claims.
FALLBACK = (minigpt,)


def recognising(tensors, config: dict | None = None) -> list:
    """The layouts that claim these tensors: a canonical one alone if the config carries its stamp."""
    stamped = [layout for layout in CANONICAL if layout.recognise(tensors, config)]
    if stamped:
        return stamped
    found = [layout for layout in LAYOUTS if layout not in FALLBACK and layout.recognise(tensors)]
    return found or [layout for layout in FALLBACK if layout.recognise(tensors)]


__all__ = ["CANONICAL", "LAYOUTS", "FALLBACK", "recognising",
           *(m.__name__.rsplit(".", 1)[1] for m in CANONICAL + LAYOUTS)]
