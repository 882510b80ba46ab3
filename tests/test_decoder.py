"""Every axis of the canonical decoder against an independent forward written here in plain tensor maths.

`reference_logits` reads the canonical state dict and config and computes the logits with explicit
matmuls, a hand-written softmax attention, norms from their definitions and rotary positions as complex
multiplication (Meta's Llama `apply_rotary_emb`, RoFormer eq. 34): nothing from `harness.models`.
Both run in float64, so 1e-6 relative is a statement about the maths, not about rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.models import GPT, GPTConfig

V, T, D, H, L = 97, 12, 32, 4, 2


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter: unit norm weights and zero biases would hide a wrong key or a missing term."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return model.eval()


def ids(batch: int = 2, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def make(seed: int = 0, **overrides) -> GPT:
    cfg = dict(vocab_size=V, context=T, n_layers=L, d_model=D, n_heads=H, d_ff=48)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return randomize(GPT(GPTConfig(**cfg)).double(), seed)


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-6) -> None:
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    assert err <= tol * expected.abs().max().item(), f"max abs error {err} of {expected.abs().max().item()}"


# --- the independent forward -----------------------------------------------------------------------

def ref_norm(x, sd, name, c):
    if c.norm_type == "rmsnorm":
        y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.ln_eps)
    else:
        mu = x.mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + c.ln_eps)
    if c.norm_weight:
        y = y * sd[f"{name}.weight"]
        if c.norm_type == "layernorm" and c.ln_bias:
            y = y + sd[f"{name}.bias"]
    return y


def ref_linear(x, sd, name):
    y = x @ sd[f"{name}.weight"].T
    return y + sd[f"{name}.bias"] if f"{name}.bias" in sd else y


def ref_rope(x, c):
    """x [B, heads, T, hd]: the first rot dims as rot/2 complex numbers, each times e^(i t theta^(-2j/rot))."""
    t, hd = x.shape[2], x.shape[3]
    rot = int(hd * c.rope_fraction)
    freqs = 1.0 / c.rope_theta ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    rotor = torch.polar(torch.ones(t, rot // 2, dtype=torch.float64), torch.outer(torch.arange(t).double(), freqs))
    xr = x[..., :rot]
    if c.rope_pairs == "interleaved":
        z = torch.view_as_complex(xr.reshape(*xr.shape[:-1], rot // 2, 2).contiguous()) * rotor
        out = torch.view_as_real(z).flatten(-2)
    else:
        z = torch.complex(xr[..., : rot // 2], xr[..., rot // 2:]) * rotor
        out = torch.cat([z.real, z.imag], dim=-1)
    return torch.cat([out, x[..., rot:]], dim=-1)


def ref_attention(x, sd, p, c):
    b, t, _ = x.shape
    hd = c.head_dim or c.d_model // c.n_heads
    nkv = c.n_kv_heads or c.n_heads
    qkv = ref_linear(x, sd, p + "attn.c_attn")
    q = qkv[..., : c.n_heads * hd].reshape(b, t, c.n_heads, hd).transpose(1, 2)
    k = qkv[..., c.n_heads * hd: (c.n_heads + nkv) * hd].reshape(b, t, nkv, hd).transpose(1, 2)
    v = qkv[..., (c.n_heads + nkv) * hd:].reshape(b, t, nkv, hd).transpose(1, 2)
    if c.qk_norm == "before_rope":
        q, k = ref_norm(q, sd, p + "attn.q_norm", c), ref_norm(k, sd, p + "attn.k_norm", c)
    if c.positions == "rope":
        q, k = ref_rope(q, c), ref_rope(k, c)
    if c.qk_norm == "after_rope":
        q, k = ref_norm(q, sd, p + "attn.q_norm", c), ref_norm(k, sd, p + "attn.k_norm", c)
    group = [h * nkv // c.n_heads for h in range(c.n_heads)]  # query head h reads kv head h // (n_heads/nkv)
    k, v = k[:, group], v[:, group]
    scale = c.attn_scale if c.attn_scale is not None else 1.0 / math.sqrt(hd)
    scores = (q @ k.transpose(-1, -2)) * scale
    if c.causal:
        scores = scores.masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    y = (weights / weights.sum(-1, keepdim=True)) @ v
    return ref_linear(y.transpose(1, 2).reshape(b, t, c.n_heads * hd), sd, p + "attn.c_proj")


def ref_mlp(x, sd, p, c):
    h = ref_linear(x, sd, p + "mlp.c_fc")
    if c.activation == "gelu":
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    elif c.activation == "gelu_tanh":
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    elif c.activation == "relu":
        h = h.clamp(min=0)
    elif c.activation == "relu2":
        h = h.clamp(min=0) ** 2
    elif c.activation == "silu":
        h = h / (1 + torch.exp(-h))
    if c.gated:
        h = h * ref_linear(x, sd, p + "mlp.c_up")
    return ref_linear(h, sd, p + "mlp.c_proj")


def ref_sinusoid(t, d):
    pe = torch.zeros(t, d, dtype=torch.float64)
    for pos in range(t):
        for i in range(0, d, 2):
            angle = pos / 10000 ** (i / d)
            pe[pos, i] = math.sin(angle)
            if i + 1 < d:
                pe[pos, i + 1] = math.cos(angle)
    return pe


def reference_logits(model: GPT, input_ids: torch.Tensor) -> torch.Tensor:
    c, sd = model.config, dict(model.state_dict())
    t = input_ids.shape[1]
    x = sd["transformer.wte.weight"][input_ids] * c.embed_scale
    if c.positions == "learned":
        x = x + sd["transformer.wpe.weight"][:t]
    elif c.positions == "sinusoidal":
        x = x + ref_sinusoid(t, c.d_model)
    if c.embed_norm:
        x = ref_norm(x, sd, "transformer.ln_e", c)
    for i in range(c.n_layers):
        p = f"transformer.h.{i}."
        if c.residual == "parallel":
            attn = ref_attention(ref_norm(x, sd, p + "ln_1", c), sd, p, c)
            x = x + attn + ref_mlp(ref_norm(x, sd, p + "ln_2", c), sd, p, c)
        elif c.residual == "parallel_shared":
            h = ref_norm(x, sd, p + "ln_1", c)
            x = x + ref_attention(h, sd, p, c) + ref_mlp(h, sd, p, c)
        elif c.norm == "pre":
            x = x + ref_attention(ref_norm(x, sd, p + "ln_1", c), sd, p, c)
            x = x + ref_mlp(ref_norm(x, sd, p + "ln_2", c), sd, p, c)
        else:
            x = ref_norm(x + ref_attention(x, sd, p, c), sd, p + "ln_1", c)
            x = ref_norm(x + ref_mlp(x, sd, p, c), sd, p + "ln_2", c)
    if c.final_norm:
        x = ref_norm(x, sd, "transformer.ln_f", c)
    head = sd["transformer.wte.weight"] if c.tied else sd["lm_head.weight"]
    logits = x @ head.T
    if c.head_bias:
        logits = logits + sd["lm_head.bias"]
    if c.logit_softcap is not None:
        logits = c.logit_softcap * torch.tanh(logits / c.logit_softcap)
    return logits


# --- every axis --------------------------------------------------------------------------------------

ROPE = dict(positions="rope")
AXES = {
    "default": {},
    "layernorm-no-bias": dict(ln_bias=False),
    "layernorm-weightless": dict(norm_weight=False),
    "rmsnorm": dict(norm_type="rmsnorm", ln_eps=1e-6),
    "rmsnorm-weightless": dict(norm_type="rmsnorm", norm_weight=False),
    "post-norm": dict(norm="post", activation="relu", positions="sinusoidal", embed_scale=math.sqrt(D)),
    "no-final-norm": dict(final_norm=False, positions="none"),
    "embed-norm": dict(embed_norm=True, norm_type="rmsnorm"),
    "embed-norm-weightless": dict(embed_norm=True, norm_type="rmsnorm", norm_weight=False),
    "qk-norm-before-rope": dict(qk_norm="before_rope", norm_type="rmsnorm", **ROPE),
    "qk-norm-after-rope": dict(qk_norm="after_rope", norm_type="rmsnorm", **ROPE),
    "qk-norm-layernorm-learned": dict(qk_norm="before_rope"),
    "rope-half": dict(**ROPE),
    "rope-interleaved": dict(rope_pairs="interleaved", **ROPE),
    "rope-partial-half": dict(rope_fraction=0.25, **ROPE),
    "rope-partial-interleaved": dict(rope_fraction=0.25, rope_pairs="interleaved", **ROPE),
    "rope-theta": dict(rope_theta=500.0, **ROPE),
    "gqa": dict(n_kv_heads=2, **ROPE),
    "mqa": dict(n_kv_heads=1, **ROPE),
    "head-dim": dict(head_dim=16, n_kv_heads=2, **ROPE),
    "head-dim-odd-heads": dict(n_heads=3, head_dim=10, positions="learned"),
    "attn-scale": dict(attn_scale=0.3),
    "non-causal": dict(causal=False),
    "gelu-tanh": dict(activation="gelu_tanh"),
    "relu": dict(activation="relu"),
    "relu2": dict(activation="relu2"),
    "silu": dict(activation="silu"),
    "swiglu": dict(activation="silu", gated=True, bias=False, d_ff=40),
    "geglu": dict(activation="gelu", gated=True, d_ff=24),
    "parallel": dict(residual="parallel", **ROPE),
    "parallel-shared": dict(residual="parallel_shared", rope_fraction=0.5, **ROPE),
    "softcap": dict(logit_softcap=5.0),
    "untied-head-bias": dict(tied=False, head_bias=True, bias=False),
    "llama": dict(norm_type="rmsnorm", positions="rope", activation="silu", gated=True, bias=False, tied=False,
                  n_kv_heads=2),
    "nanochat": dict(norm_type="rmsnorm", norm_weight=False, embed_norm=True, qk_norm="after_rope",
                     positions="rope", activation="relu2", bias=False, tied=False, logit_softcap=15.0),
}


@pytest.mark.parametrize("axis", list(AXES))
def test_axis_matches_independent_forward(axis):
    model = make(**AXES[axis])
    x = ids()
    with torch.no_grad():
        assert_rel_close(model(x), reference_logits(model, x))


def test_rope_rotates_relative_positions():
    """Rotary scores depend on position differences only: shifting q and k together changes nothing."""
    model = make(**ROPE, n_layers=1)
    c = model.config
    q = torch.randn(1, 1, 1, D // H, dtype=torch.float64).expand(1, 1, T, D // H)
    rot = ref_rope(q, c)
    scores = rot @ rot.transpose(-1, -2)
    assert torch.allclose(scores[0, 0, 1, 3], scores[0, 0, 5, 7])
    assert torch.allclose(scores[0, 0, 0, 0], scores[0, 0, 9, 9])


def test_state_dict_keys_are_the_interface():
    model = make(norm_type="rmsnorm", positions="rope", activation="silu", gated=True, bias=False, tied=False,
                 n_kv_heads=2, head_dim=16, qk_norm="after_rope", embed_norm=True)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    p = "transformer.h.0."
    assert shapes[p + "attn.c_attn.weight"] == ((H + 2 * 2) * 16, D)
    assert shapes[p + "attn.c_proj.weight"] == (D, H * 16)
    assert shapes[p + "attn.q_norm.weight"] == shapes[p + "attn.k_norm.weight"] == (16,)
    assert shapes[p + "mlp.c_fc.weight"] == shapes[p + "mlp.c_up.weight"] == (48, D)
    assert shapes["transformer.ln_e.weight"] == shapes["transformer.ln_f.weight"] == (D,)
    assert not any(k.endswith(".bias") for k in shapes) and "transformer.wpe.weight" not in shapes
    shared = make(residual="parallel_shared", norm_weight=False).state_dict()
    assert not any("ln_" in k for k in shared)


@pytest.mark.parametrize("bad, words", [
    (dict(norm_type="rms"), "norm_type"), (dict(qk_norm=True), "qk_norm"), (dict(rope_pairs="adjacent"), "rope_pairs"),
    (dict(residual="parallel", norm="post"), "post-norm"), (dict(n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(positions="rope", rope_fraction=0.1), "even number"), (dict(rope_fraction=1.5), "rope_fraction"),
    (dict(activation="swiglu"), "activation"), (dict(gated="yes"), "gated"), (dict(logit_softcap=0), "logit_softcap"),
    (dict(attn_scale=-1.0), "attn_scale"), (dict(qk_norm="after_rope"), "needs positions"),
    (dict(n_heads=3), "divisible"),
])
def test_config_refuses_unknown_values(bad, words):
    with pytest.raises(ValueError, match=words):
        GPTConfig(vocab_size=V, d_model=D, **{"n_heads": H, **bad})


def test_defaults_are_todays_gpt():
    """The new fields at their defaults build exactly the modules and keys the GPT had before them."""
    cfg = GPTConfig(vocab_size=V, context=T, n_layers=L, d_model=D, n_heads=H)
    assert (cfg.norm_type, cfg.norm_weight, cfg.embed_norm, cfg.qk_norm, cfg.gated, cfg.residual) == \
        ("layernorm", True, False, "none", False, "sequential")
    model = GPT(cfg)
    norms = [m for n, m in model.named_modules() if n.endswith(("ln_1", "ln_2", "ln_f"))]
    assert len(norms) == 2 * L + 1 and all(type(m).__name__ == "LayerNorm" for m in norms)
    assert len(model.state_dict()) == 5 + L * 12  # wte, wpe, ln_f (2), lm_head (tied)
    assert GPTConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k in (
        "vocab_size", "context", "n_layers", "d_model", "n_heads")}) == cfg


# --- against transformers ----------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")


@pytest.mark.slow
def test_llama_matches_transformers():
    """LlamaForCausalLM (transformers 5.x modeling_llama.py: LlamaRMSNorm, rotate_half RoPE, SwiGLU, GQA)."""
    transformers.logging.set_verbosity_error()
    hf_cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=40, num_hidden_layers=L,
                                      num_attention_heads=H, num_key_value_heads=2, max_position_embeddings=T,
                                      rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
                                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    hf = randomize(transformers.LlamaForCausalLM(hf_cfg).double(), seed=3)
    src = hf.state_dict()
    sd = {"transformer.wte.weight": src["model.embed_tokens.weight"],
          "transformer.ln_f.weight": src["model.norm.weight"], "lm_head.weight": src["lm_head.weight"]}
    for i in range(L):
        s, p = f"model.layers.{i}.", f"transformer.h.{i}."
        sd[p + "attn.c_attn.weight"] = torch.cat([src[s + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        for theirs, ours in (("self_attn.o_proj", "attn.c_proj"), ("mlp.gate_proj", "mlp.c_fc"),
                             ("mlp.up_proj", "mlp.c_up"), ("mlp.down_proj", "mlp.c_proj"),
                             ("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2")):
            sd[f"{p}{ours}.weight"] = src[f"{s}{theirs}.weight"]
    model = GPT(GPTConfig(vocab_size=V, context=T, n_layers=L, d_model=D, n_heads=H, n_kv_heads=2, d_ff=40,
                          norm_type="rmsnorm", ln_eps=1e-6, positions="rope", rope_theta=5000.0, activation="silu",
                          gated=True, bias=False, tied=False)).double().eval()
    model.load_state_dict(sd, strict=True)
    x = ids()
    with torch.no_grad():
        assert_rel_close(model(x), hf(x).logits, tol=1e-5)


@pytest.mark.slow
def test_gpt_neox_matches_transformers():
    """GPTNeoXForCausalLM (modeling_gpt_neox.py: per-head fused q|k|v, partial rotary 0.25, parallel residual)."""
    transformers.logging.set_verbosity_error()
    hd = D // H
    hf_cfg = transformers.GPTNeoXConfig(vocab_size=V, hidden_size=D, intermediate_size=48, num_hidden_layers=L,
                                        num_attention_heads=H, max_position_embeddings=T, hidden_act="gelu",
                                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                         "partial_rotary_factor": 0.25},
                                        use_parallel_residual=True, tie_word_embeddings=False, layer_norm_eps=1e-5,
                                        bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf = randomize(transformers.GPTNeoXForCausalLM(hf_cfg).double(), seed=4)
    src = hf.state_dict()
    sd = {"transformer.wte.weight": src["gpt_neox.embed_in.weight"], "lm_head.weight": src["lm_head.weight"],
          "transformer.ln_f.weight": src["gpt_neox.final_layer_norm.weight"],
          "transformer.ln_f.bias": src["gpt_neox.final_layer_norm.bias"]}
    for i in range(L):
        s, p = f"gpt_neox.layers.{i}.", f"transformer.h.{i}."
        for part in ("weight", "bias"):
            w = src[f"{s}attention.query_key_value.{part}"]
            # NeoX views the fused output as [heads, q|k|v, head_size]: regroup as q heads, k heads, v heads.
            sd[f"{p}attn.c_attn.{part}"] = w.reshape(H, 3, hd, *w.shape[1:]).transpose(0, 1).reshape(w.shape)
            for theirs, ours in (("attention.dense", "attn.c_proj"), ("mlp.dense_h_to_4h", "mlp.c_fc"),
                                 ("mlp.dense_4h_to_h", "mlp.c_proj"), ("input_layernorm", "ln_1"),
                                 ("post_attention_layernorm", "ln_2")):
                sd[f"{p}{ours}.{part}"] = src[f"{s}{theirs}.{part}"]
    model = GPT(GPTConfig(vocab_size=V, context=T, n_layers=L, d_model=D, n_heads=H, d_ff=48, positions="rope",
                          rope_fraction=0.25, residual="parallel", tied=False)).double().eval()
    model.load_state_dict(sd, strict=True)
    x = ids()
    with torch.no_grad():
        assert_rel_close(model(x), hf(x).logits, tol=1e-5)


# --- through the harness's own checkpoint and the layout machinery ------------------------------------

class Raw:
    def __init__(self, tensors, config):
        self.tensors, self.config = tensors, config


@pytest.mark.parametrize("axis", ["llama", "nanochat", "head-dim", "mqa", "parallel-shared", "layernorm-weightless",
                                  "rope-partial-interleaved", "qk-norm-before-rope", "geglu", "untied-head-bias",
                                  "attn-scale", "embed-norm-weightless", "no-final-norm", "post-norm"])
def test_canonical_checkpoint_round_trips_every_field(axis, tmp_path):
    import json

    from safetensors.torch import load_file

    from harness.models.build import WEIGHTS, build_model
    from harness.models import load_canonical, save_canonical

    model = make(**AXES[axis]).float()
    folder = save_canonical(model, tmp_path / axis)
    raw = Raw(load_file(str(folder / "model.safetensors")), json.loads((folder / "config.json").read_text()))
    loaded = build_model(raw)
    assert loaded.layout == "harness-gpt" and loaded.config == model.config
    assert not loaded.unverified() and not loaded.warnings
    if model.config.gated:
        assert loaded.sources["gated"] == WEIGHTS
    x = ids()
    with torch.no_grad():
        expected = model(x)
        assert_rel_close(loaded.model(x), expected)
        assert_rel_close(load_canonical(folder)(x), expected)


def test_grouped_query_split_needs_the_heads(tmp_path):
    """c_attn rows tell n_heads / n_kv_heads only; the head count (a hint here) completes the split."""
    from harness.layouts._shared import finish_gpt

    model = make(n_kv_heads=2, positions="learned").float()
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert "n_kv_heads" not in finish_gpt(dict(sd), [])
    fields = finish_gpt(dict(sd), [], {"n_heads": H})
    assert fields["n_kv_heads"] == 2 and "head_dim" not in fields
    qk = make(n_kv_heads=1, head_dim=16, qk_norm="before_rope", positions="learned").state_dict()
    told = finish_gpt(dict(qk), [])  # a q-norm weight [head_dim] tells the head size, hence all three
    assert (told["n_heads"], told["n_kv_heads"], told["head_dim"]) == (H, 1, 16)
    broken = dict(sd)
    broken["transformer.h.1.mlp.c_up.weight"] = torch.zeros(48, D)
    with pytest.raises(ValueError, match="c_up"):
        finish_gpt(broken, [])


def test_stored_config_spellings_of_the_new_fields():
    from harness.models.build import SPELLINGS, read_values

    hf_llama = {"num_key_value_heads": 2, "rope_theta": 500000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
                "partial_rotary_factor": 0.5, "use_parallel_residual": True, "final_logit_softcapping": 30.0,
                "norm_type": "RMSNorm", "qk_norm": False}
    assert read_values(hf_llama, SPELLINGS) == {
        "n_kv_heads": 2, "rope_theta": 500000.0, "ln_eps": 1e-6, "activation": "silu", "rope_fraction": 0.5,
        "residual": "parallel", "logit_softcap": 30.0, "norm_type": "rmsnorm", "qk_norm": "none"}
    assert read_values({"activation": "relu_squared", "rotary_pct": 0.25}, SPELLINGS) == \
        {"activation": "relu2", "rope_fraction": 0.25}
    assert read_values({"hidden_act": "swiglu"}, SPELLINGS) == {"activation": "silu"}


# --- nanochat ----------------------------------------------------------------------------------------
# Our own model written after karpathy/nanochat `nanochat/gpt.py` as released (October 2025; the
# version stored at commit 025c432 has the same forward) and `checkpoint_manager.py` (model_XXXXXX.pt
# holds model.state_dict() with wte in bf16; meta_XXXXXX.json holds "model_config").

NC_D, NC_H, NC_KV, NC_L, NC_V, NC_T = 64, 4, 2, 2, 101, 16


def nc_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def nc_rotary(x, cos, sin):
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    y1 = x1 * cos + x2 * sin
    y2 = x1 * (-sin) + x2 * cos
    return torch.cat([y1, y2], 3).to(x.dtype)


class NanochatAttention(torch.nn.Module):
    def __init__(self, n_embd, n_head, n_kv_head):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        self.c_q = torch.nn.Linear(n_embd, n_head * self.head_dim, bias=False)
        self.c_k = torch.nn.Linear(n_embd, n_kv_head * self.head_dim, bias=False)
        self.c_v = torch.nn.Linear(n_embd, n_kv_head * self.head_dim, bias=False)
        self.c_proj = torch.nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x, cos_sin):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = nc_rotary(q, cos, sin), nc_rotary(k, cos, sin)
        q, k = nc_norm(q), nc_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        nrep = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(nrep, dim=1), v.repeat_interleave(nrep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, -1))


class NanochatMLP(torch.nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = torch.nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.c_proj = torch.nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class NanochatBlock(torch.nn.Module):
    def __init__(self, n_embd, n_head, n_kv_head):
        super().__init__()
        self.attn = NanochatAttention(n_embd, n_head, n_kv_head)
        self.mlp = NanochatMLP(n_embd)

    def forward(self, x, cos_sin):
        x = x + self.attn(nc_norm(x), cos_sin)
        return x + self.mlp(nc_norm(x))


class NanochatGPT(torch.nn.Module):
    def __init__(self, rope_dtype=torch.bfloat16):
        super().__init__()
        self.transformer = torch.nn.ModuleDict({
            "wte": torch.nn.Embedding(NC_V, NC_D),
            "h": torch.nn.ModuleList([NanochatBlock(NC_D, NC_H, NC_KV) for _ in range(NC_L)]),
        })
        self.lm_head = torch.nn.Linear(NC_D, NC_V, bias=False)
        head_dim = NC_D // NC_H
        channel_range = torch.arange(0, head_dim, 2, dtype=torch.float32)
        inv_freq = 1.0 / (10000 ** (channel_range / head_dim))
        freqs = torch.outer(torch.arange(NC_T * 10, dtype=torch.float32), inv_freq)
        cos, sin = freqs.cos().to(rope_dtype), freqs.sin().to(rope_dtype)  # nanochat keeps them in bfloat16
        self.register_buffer("cos", cos[None, :, None, :], persistent=False)
        self.register_buffer("sin", sin[None, :, None, :], persistent=False)

    def forward(self, idx):
        T = idx.size(1)
        cos_sin = self.cos[:, :T], self.sin[:, :T]
        x = nc_norm(self.transformer.wte(idx))
        for block in self.transformer.h:
            x = block(x, cos_sin)
        logits = self.lm_head(nc_norm(x))
        softcap = 15
        return softcap * torch.tanh(logits / softcap)


def nanochat_checkpoint(tmp_path, extra=None):
    """A nanochat model and the tensors of its model_000100.pt as the harness reads them back."""
    torch.manual_seed(7)
    model = NanochatGPT(rope_dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
        model.transformer.wte.weight.copy_(model.transformer.wte.weight.bfloat16().float())
    data = dict(model.state_dict())
    data["transformer.wte.weight"] = data["transformer.wte.weight"].bfloat16()
    data.update(extra or {})
    path = tmp_path / "model_000100.pt"
    torch.save(data, path)
    meta = {"model_config": {"sequence_len": NC_T, "vocab_size": NC_V, "n_layer": NC_L, "n_head": NC_H,
                             "n_kv_head": NC_KV, "n_embd": NC_D}}
    (tmp_path / "meta_000100.json").write_text(__import__("json").dumps(meta))
    return model.eval(), torch.load(path, weights_only=True), meta


def nc_loss(logits, x):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), x[:, 1:].reshape(-1)).item()


def test_nanochat_layout_equals_nanochat(tmp_path):
    from harness.checkpoint.read import read_checkpoint
    from harness.models.build import CONFIG, LAYOUT, build_model

    model, _, _ = nanochat_checkpoint(tmp_path)
    loaded = build_model(read_checkpoint(tmp_path))  # the folder: model_000100.pt and meta_000100.json beside it
    assert loaded.sources["n_heads"] == CONFIG and loaded.sources["context"] == CONFIG
    assert loaded.layout == "nanochat" and loaded.params == sum(p.numel() for p in model.parameters())
    c = loaded.config
    assert (c.n_heads, c.n_kv_heads, c.norm_weight, c.embed_norm, c.qk_norm, c.logit_softcap, c.tied, c.context) == (
        NC_H, NC_KV, False, True, "after_rope", 15.0, False, NC_T)
    assert loaded.sources["activation"] == LAYOUT and not loaded.unverified()
    x = torch.randint(0, NC_V, (3, NC_T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = nc_loss(model(x), x)
        ours = nc_loss(loaded.model(x), x)
        assert abs(ours - expected) <= 1e-6 * abs(expected), (ours, expected)
        # nanochat's own bf16 cos/sin tables: the canonical model's exact ones differ by that rounding only
        bf16 = NanochatGPT(rope_dtype=torch.bfloat16)
        bf16.load_state_dict(model.state_dict())
        assert abs(ours - nc_loss(bf16.eval()(x), x)) <= 1e-4 * abs(expected)  # 7e-6 here


def test_nanochat_rotation_direction_matters(tmp_path):
    """Without the layout's sign flip the loss would differ: the check above is not vacuous."""
    from harness.models import GPT as Canonical

    model, tensors, meta = nanochat_checkpoint(tmp_path)
    from harness.models.build import build_model

    loaded = build_model(Raw(tensors, meta))
    sd = dict(loaded.model.state_dict())
    sd["transformer.h.0.attn.c_attn.weight"] = torch.cat([tensors[f"transformer.h.0.attn.c_{n}.weight"] for n in "qkv"])
    unflipped = Canonical(loaded.config).eval()
    unflipped.load_state_dict(sd)
    x = torch.randint(0, NC_V, (3, NC_T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert abs(nc_loss(unflipped(x), x) - nc_loss(model(x), x)) > 1e-4


def test_nanochat_newer_features_are_named(tmp_path):
    from harness.errors import HarnessError
    from harness.models.build import build_model

    neutral = {"resid_lambdas": torch.ones(NC_L), "x0_lambdas": torch.zeros(NC_L)}
    model, tensors, meta = nanochat_checkpoint(tmp_path, neutral)
    loaded = build_model(Raw(tensors, meta))
    x = torch.randint(0, NC_V, (2, NC_T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert abs(nc_loss(loaded.model(x), x) - nc_loss(model(x), x)) <= 1e-6 * nc_loss(model(x), x)
    extra = {"resid_lambdas": torch.full((NC_L,), 0.9), "x0_lambdas": torch.zeros(NC_L),
             "value_embeds.1.weight": torch.zeros(NC_V, NC_D // 2),
             "transformer.h.1.attn.ve_gate.weight": torch.zeros(NC_KV, 32)}
    _, tensors, meta = nanochat_checkpoint(tmp_path, extra)
    with pytest.raises(HarnessError) as e:
        build_model(Raw(tensors, meta))
    message = e.value.message
    assert "nanochat" in message and "value embeddings" in message and "resid_lambdas" in message
    assert "ve_gate" in message and "\n" not in message


def test_grouped_query_heads_from_a_hint_complete_the_split(tmp_path):
    """A stored config without the heads: submission.toml's n_heads and c_attn's rows give n_kv_heads."""
    import json

    from safetensors.torch import load_file

    from harness.models.build import HINTS, WEIGHTS, build_model
    from harness.models import save_canonical

    model = make(**AXES["llama"]).float()
    folder = save_canonical(model, tmp_path / "gqa")
    config = json.loads((folder / "config.json").read_text())
    for key in ("n_heads", "n_kv_heads"):
        del config["config"][key]
    loaded = build_model(Raw(load_file(str(folder / "model.safetensors")), config), hints={"n_heads": H})
    assert (loaded.config.n_heads, loaded.config.n_kv_heads) == (H, 2)
    assert loaded.sources["n_heads"] == HINTS and loaded.sources["n_kv_heads"] == WEIGHTS
    x = ids()
    with torch.no_grad():
        assert_rel_close(loaded.model(x), model(x))
