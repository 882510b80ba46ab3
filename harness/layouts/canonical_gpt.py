"""The harness's own causal LM checkpoint (`save_canonical`): `config.json` says `"harness_model": "gpt"`.

The keys are the canonical GPT's (nanoGPT's; a tied head saved once, as the embedding), and the stored
config says everything the weights cannot. Only a checkpoint that carries that stamp is read here; the
same keys without it are nanoGPT's.
"""

from __future__ import annotations

from harness.models.gpt import GPTConfig

from ._shared import count_params, finish_gpt, head_candidates

NAME = "harness-gpt"
FAMILY = "gpt"
DESCRIPTION = "the harness's canonical GPT (config.json harness_model = gpt)"


def recognise(tensors, config=None) -> bool:
    return (config or {}).get("harness_model") == "gpt" and "transformer.wte.weight" in tensors


def convert(tensors, hints):
    notes: list[str] = []
    sd = dict(tensors)
    fields = finish_gpt(sd, notes)
    skip = ["lm_head.weight"] if fields["tied"] and "lm_head.weight" in tensors else []
    return fields, sd, {"params": count_params(tensors, skip), "notes": notes}


def cannot_tell(tensors, fields):
    default = GPTConfig()
    out = {
        "n_heads": head_candidates(fields["d_model"]),
        "norm": [default.norm],
        "activation": [default.activation],
        "ln_eps": [default.ln_eps],
        "causal": [default.causal],
        "embed_scale": [default.embed_scale],
    }
    if "positions" not in fields:
        out["positions"] = ["sinusoidal", "none"]
        out["context"] = [default.context]
    return out
