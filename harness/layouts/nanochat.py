"""nanochat (karpathy/nanochat `nanochat/gpt.py`, as released in October 2025): a Llama-like GPT without norm weights.

Keys: `transformer.wte`, `transformer.h.{i}.attn.c_q/c_k/c_v/c_proj`, `transformer.h.{i}.mlp.c_fc/c_proj`,
`lm_head` (untied), no biases, no norm parameters; `checkpoint_manager.py` saves `model_{step:06d}.pt` (this
state dict, embeddings in bf16) beside `meta_{step:06d}.json`, whose `model_config` holds `n_head`,
`n_kv_head`, `n_embd`, `n_layer`, `vocab_size`, `sequence_len`.

The code fixes everything else: `norm(x) = F.rms_norm(x, (d,))` (no weight, eps = float32's machine
epsilon) after the embedding, before attention and MLP and before the head; rotary positions on whole heads
with theta 10000 and half-split pairs, then QK-norm; head_dim = n_embd / n_head with grouped-query
attention when n_kv_head < n_head; ReLU²; `logits = 15 tanh(logits / 15)`.

nanochat's `apply_rotary_emb` rotates each pair (x1, x2) by minus the angle (y1 = x1 cos + x2 sin,
y2 = -x1 sin + x2 cos), the other way round from Hugging Face's rotate_half. Negating the second half of
each head's q and k rows turns one into the other: the rotated vectors then differ only in the sign of
their second halves, which a weightless RMSNorm keeps and which cancels in every q·k. So those rows are
negated here. nanochat keeps its cos/sin tables in bfloat16; the canonical model uses exact ones (the
bf16 rounding of cos and sin moved the loss by 7e-6 relative on the test's 16-token windows).

Later nanochat versions add per-layer `resid_lambdas` / `x0_lambdas` (accepted when still neutral: ones
and zeros), value embeddings (`value_embeds`, `ve_gate`), smear and backout gates, sliding windows: the
canonical GPT computes none of these, and the layout says which it found.
"""

from __future__ import annotations

import re

import torch

from ._shared import count_params, finish_gpt, head_candidates, layer_indices

NAME = "nanochat"
FAMILY = "gpt"
DESCRIPTION = "nanochat (transformer.wte, transformer.h.*.attn.c_q/c_k/c_v, weightless RMSNorm, untied lm_head)"

# float32's machine epsilon: F.rms_norm's eps when none is given.
RMS_EPS = float(torch.finfo(torch.float32).eps)
SOFTCAP = 15.0
_BLOCK_KEY = re.compile(r"^transformer\.h\.(\d+)\.(attn\.c_q|attn\.c_k|attn\.c_v|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)"
                        r"\.weight$")
# Newer nanochat parameters, by what they do (first match of a key names the feature).
_FEATURES = (
    ("value_embeds", "value embeddings (value_embeds)"), ("ve_gate", "value-embedding gates (ve_gate)"),
    ("smear", "the smear gate (smear_gate / smear_lambda)"), ("backout", "the backout lambda"),
    ("bigram", "bigram embeddings"), ("lambdas", "per-layer residual scalars"),
)


def recognise(tensors) -> bool:
    return ("transformer.wte.weight" in tensors and "transformer.h.0.attn.c_q.weight" in tensors
            and "transformer.h.0.attn.c_k.weight" in tensors and "lm_head.weight" in tensors)


def _strays(tensors) -> list[str]:
    """Keys the canonical GPT cannot compute, as the features they belong to (neutral lambdas pass)."""
    found: list[str] = []
    for key in sorted(tensors):
        if key in ("transformer.wte.weight", "lm_head.weight") or _BLOCK_KEY.match(key):
            continue
        t = tensors[key]
        if key == "resid_lambdas" and bool(torch.all(t == 1)) or key == "x0_lambdas" and bool(torch.all(t == 0)):
            continue
        what = next((words for stem, words in _FEATURES if stem in key), key)
        if key in ("resid_lambdas", "x0_lambdas"):
            what = "per-layer residual scalars (resid_lambdas / x0_lambdas) other than 1 and 0"
        if what not in found:
            found.append(what)
    return found


def _default_heads(tensors) -> int:
    d = tensors["transformer.wte.weight"].shape[1]
    kv_rows = tensors["transformer.h.0.attn.c_k.weight"].shape[0]
    # nanochat sizes heads at 128 dims (model_dim / 128 heads); head counts must split the keys too.
    fits = [h for h in head_candidates(d, preferred=max(1, d // 128)) if kv_rows % (d // h) == 0]
    return (fits or [1])


def convert(tensors, hints):
    strays = _strays(tensors)
    if strays:
        raise ValueError(f"it uses {', '.join(strays)}, which the harness's GPT cannot compute")
    notes: list[str] = []
    wte = tensors["transformer.wte.weight"]
    d = wte.shape[1]
    n_heads = hints.get("n_heads") or _default_heads(tensors)[0]
    if d % n_heads:
        raise ValueError(f"n_embd {d} is not divisible by {n_heads} heads")
    hd = d // n_heads
    flip = torch.ones(hd)
    flip[hd // 2:] = -1.0  # the second half of every head: nanochat rotates the other way (module docstring)
    sd = {"transformer.wte.weight": wte, "lm_head.weight": tensors["lm_head.weight"]}
    for i in range(layer_indices(tensors, r"^transformer\.h\.(\d+)\.")):
        p = f"transformer.h.{i}."
        q, k, v = (tensors[f"{p}attn.c_{n}.weight"] for n in "qkv")
        if q.shape[0] % hd or k.shape[0] % hd:
            raise ValueError(f"block {i}: q ({q.shape[0]} rows) and k ({k.shape[0]} rows) are not whole heads of {hd}")
        q = q * flip.repeat(q.shape[0] // hd).to(q.dtype)[:, None]
        k = k * flip.repeat(k.shape[0] // hd).to(k.dtype)[:, None]
        sd[f"{p}attn.c_attn.weight"] = torch.cat([q, k, v], dim=0)
        for name in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            sd[f"{p}{name}.weight"] = tensors[f"{p}{name}.weight"]
    notes.append("q/k rows of each head's second half negated: nanochat rotates by minus the angle")
    if any(k in tensors for k in ("resid_lambdas", "x0_lambdas")):
        notes.append("resid_lambdas / x0_lambdas are still 1 and 0: no effect")
    # Only a settled head count may split k/v into heads; a guess would pass for what the weights say.
    known = {"n_heads": hints.get("n_heads"), "final_norm": True, "embed_norm": True, "qk_norm": "after_rope"}
    fields = finish_gpt(sd, notes, known)
    fields.update(final_norm=True, embed_norm=True)
    if fields["tied"]:
        notes.append("the output layer equals the embedding (nanochat unties them)")
    return fields, sd, {"params": count_params(tensors), "notes": notes}


def cannot_tell(tensors, fields):
    return {
        "n_heads": _default_heads(tensors),
        "norm": ["pre"],
        "norm_type": ["rmsnorm"],
        "ln_eps": [RMS_EPS],
        "activation": ["relu2"],
        "positions": ["rope"],
        "rope_theta": [10000.0],
        "rope_pairs": ["half"],
        "qk_norm": ["after_rope"],
        "logit_softcap": [SOFTCAP],
        "context": [1024],  # GPTConfig.sequence_len's default; meta_*.json states the run's
        "causal": [True],
        "embed_scale": [1.0],
    }
