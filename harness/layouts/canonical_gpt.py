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
    fields = finish_gpt(sd, notes, hints)
    skip = ["lm_head.weight"] if fields["tied"] and "lm_head.weight" in tensors else []
    return fields, sd, {"params": count_params(tensors, skip), "notes": notes}


def cannot_tell(tensors, fields):
    """Everything the stored config states (it always does: `save_canonical` writes every field)."""
    default = GPTConfig()
    out = {
        "n_heads": head_candidates(fields["d_model"]),
        "norm": [default.norm],
        "activation": [default.activation],
        "ln_eps": [default.ln_eps],
        "causal": [default.causal],
        "embed_scale": [default.embed_scale],
        "rope_theta": [default.rope_theta],
        "rope_fraction": [default.rope_fraction],
        "rope_pairs": [default.rope_pairs],
        "attn_scale": [default.attn_scale],
        "logit_softcap": [default.logit_softcap],
    }
    if "n_heads" in fields:
        del out["n_heads"]
    for name in ("n_kv_heads", "head_dim"):
        if name not in fields:
            out[name] = [getattr(default, name)]
    if "norm_type" not in fields:
        out["norm_type"] = [default.norm_type]
    if "residual" not in fields:
        out["residual"] = ["sequential", "parallel"]
    if "transformer.h.0.attn.q_norm.weight" in tensors:
        out["qk_norm"] = ["after_rope", "before_rope"]
    elif fields.get("norm_weight", True):
        out["qk_norm"] = ["none"]
    else:  # weightless norms leave no key behind
        out["qk_norm"] = ["none", "before_rope", "after_rope"]
        out["final_norm"] = [True, False]
        out["embed_norm"] = [False, True]
    if "positions" not in fields:
        out["positions"] = ["sinusoidal", "none", "rope"]
        out["context"] = [default.context]
    return out
