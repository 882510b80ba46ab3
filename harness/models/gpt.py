"""The canonical causal language model: a nanoGPT-shaped GPT that every GPT-like layout maps into.

One class covers the setups students hand in: GPT-2 style (pre-LN, learned positions, tied head),
PyTorch's word_language_model style (post-LN, sinusoidal positions scaled by sqrt(d_model), ReLU,
untied head with a bias), the Llama family (RMSNorm, rotary positions, SwiGLU, grouped-query
attention, no biases), GPT-NeoX / GPT-J / Phi (partial rotary, parallel attention and MLP), nanochat
(weightless RMSNorm, QK-norm, ReLU², logit soft-cap) and the points between. Every choice is a
config field that refuses values it does not know. The key names are nanoGPT's, so a nanoGPT
checkpoint loads as is and a Hugging Face GPT-2 one needs only the transposes in `io.py`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.metrics.fused import OutputHead

NORMS = ("pre", "post")
NORM_TYPES = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "relu2", "silu")
POSITIONS = ("learned", "sinusoidal", "none", "rope")
QK_NORMS = ("none", "before_rope", "after_rope")
ROPE_PAIRS = ("half", "interleaved")
RESIDUALS = ("sequential", "parallel", "parallel_shared")


def check_config_dict(cls: type, data: dict[str, Any]) -> None:
    """Refuse keys a config class does not know: a typo must not silently fall back to a default."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} expects a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )


def check_int(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    # bool is an int in Python; `n_layers = true` in a config file is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an integer >= {minimum}, got {value!r}")


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {', '.join(choices)}, got {value!r}")


def check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be true or false, got {value!r}")


def check_positive(owner: str, name: str, value: Any, *, optional: bool = False) -> float | None:
    """A positive finite number as float (None passes when `optional`)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{owner}.{name} must be a positive number{' or null' if optional else ''}, got {value!r}")
    return float(value)


def activation_fn(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        # GPT-2's "gelu_new": the tanh approximation the original TensorFlow code used.
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu2":
        # Primer's squared ReLU (So et al. 2021), nanochat's MLP.
        return lambda x: F.relu(x).square()
    if name == "silu":
        return F.silu
    return F.relu


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    context: int = 64  # maximum positions
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_ff: int | None = None  # None: 4 * d_model
    dropout: float = 0.0
    norm: str = "pre"
    activation: str = "gelu"
    positions: str = "learned"
    bias: bool = True  # linear biases in attention and MLP
    ln_bias: bool = True  # a LayerNorm's shift; RMSNorm and weightless norms have none
    tied: bool = True  # lm_head shares wte's weight
    final_norm: bool = True  # ln_f before the head
    ln_eps: float = 1e-5
    embed_scale: float = 1.0  # word_language_model multiplies embeddings by sqrt(d_model)
    # False only to reproduce a student's encoder stack that forgot its mask; the causality check catches it.
    causal: bool = True
    head_bias: bool = False  # word_language_model's decoder is a Linear with a bias
    norm_type: str = "layernorm"
    norm_weight: bool = True  # False: no scale parameter (nanochat's F.rms_norm)
    embed_norm: bool = False  # a norm right after the token embedding (nanochat)
    qk_norm: str = "none"  # a norm over each head's q and k, before or after the rotation
    rope_theta: float = 10000.0
    rope_fraction: float = 1.0  # rotated part of each head: GPT-NeoX's rotary_pct, Phi's partial_rotary_factor
    rope_pairs: str = "half"  # "half": HF rotate_half, (i, i + rot/2); "interleaved": (2i, 2i+1), Meta's Llama
    n_kv_heads: int | None = None  # None: n_heads; fewer: grouped-query, 1: multi-query attention
    head_dim: int | None = None  # None: d_model // n_heads
    attn_scale: float | None = None  # None: 1 / sqrt(head_dim)
    gated: bool = False  # c_proj(act(c_fc(x)) * c_up(x)): SwiGLU with silu, GeGLU with gelu
    residual: str = "sequential"
    logit_softcap: float | None = None  # logits = c * tanh(logits / c)

    def __post_init__(self) -> None:
        owner = "GPTConfig"
        for name in ("vocab_size", "context", "n_layers", "d_model", "n_heads"):
            check_int(owner, name, getattr(self, name))
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_int(owner, "d_ff", self.d_ff)
        for name in ("n_kv_heads", "head_dim"):
            if getattr(self, name) is not None:
                check_int(owner, name, getattr(self, name))
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"GPTConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                             f"unless head_dim is given")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"GPTConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        check_choice(owner, "norm", self.norm, NORMS)
        check_choice(owner, "activation", self.activation, ACTIVATIONS)
        check_choice(owner, "positions", self.positions, POSITIONS)
        check_choice(owner, "norm_type", self.norm_type, NORM_TYPES)
        check_choice(owner, "qk_norm", self.qk_norm, QK_NORMS)
        check_choice(owner, "rope_pairs", self.rope_pairs, ROPE_PAIRS)
        check_choice(owner, "residual", self.residual, RESIDUALS)
        for name in ("bias", "ln_bias", "tied", "final_norm", "causal", "head_bias", "norm_weight", "embed_norm",
                     "gated"):
            check_bool(owner, name, getattr(self, name))
        self.dropout = float(self.dropout)
        self.ln_eps = check_positive(owner, "ln_eps", self.ln_eps)
        self.embed_scale = check_positive(owner, "embed_scale", self.embed_scale)
        self.rope_theta = check_positive(owner, "rope_theta", self.rope_theta)
        self.rope_fraction = check_positive(owner, "rope_fraction", self.rope_fraction)
        self.attn_scale = check_positive(owner, "attn_scale", self.attn_scale, optional=True)
        self.logit_softcap = check_positive(owner, "logit_softcap", self.logit_softcap, optional=True)
        if self.rope_fraction > 1.0:
            raise ValueError(f"GPTConfig.rope_fraction must be in (0, 1], got {self.rope_fraction!r}")
        if self.positions == "rope" and (self.rotary_dims < 2 or self.rotary_dims % 2):
            raise ValueError(f"GPTConfig: rotary positions need an even number of rotated dims per head, got "
                             f"int({self.head_size} * {self.rope_fraction}) = {self.rotary_dims}")
        if self.qk_norm == "after_rope" and self.positions != "rope":
            raise ValueError("GPTConfig.qk_norm = 'after_rope' needs positions = 'rope'; use 'before_rope'")
        if self.norm == "post" and self.residual != "sequential":
            raise ValueError("GPTConfig: post-norm blocks are sequential; parallel residuals need norm = 'pre'")
        if self.norm_type == "rmsnorm" or not self.norm_weight:
            # Only a LayerNorm with its scale has a shift; the flag would otherwise say nothing.
            self.ln_bias = False

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def rotary_dims(self) -> int:
        # GPT-NeoX's int(head_size * rotary_pct): the first dims of each head rotate, the rest pass through.
        return int(self.head_size * self.rope_fraction)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        check_config_dict(cls, data)
        return cls(**data)


def sinusoidal_positions(context: int, d_model: int) -> torch.Tensor:
    """PyTorch word_language_model's PositionalEncoding table, [context, d_model]."""
    position = torch.arange(context, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    pe = torch.zeros(context, d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    # An odd d_model has one cosine column fewer than sine columns.
    pe[:, 1::2] = torch.cos(position * div_term[: d_model // 2])
    return pe


def rope_angles(context: int, rotary_dims: int, theta: float) -> torch.Tensor:
    """The rotation angle of position t and pair j, [context, rotary_dims // 2]: t * theta^(-2j / rotary_dims)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dims, 2, dtype=torch.float64) / rotary_dims))
    return torch.outer(torch.arange(context, dtype=torch.float64), inv_freq).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairs: str) -> torch.Tensor:
    """Rotate each pair (a, b) of the first 2 * cos.shape[-1] dims of x [B, H, T, hd] by its angle.

    "half" pairs dim i with i + rot/2 (Hugging Face's rotate_half), "interleaved" 2i with 2i + 1 (Meta's
    Llama, CS336); the same rotation, (a, b) -> (a cos - b sin, b cos + a sin), on other dims.
    """
    rot = 2 * cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # under autocast q and k are bf16: so is the rotation (as HF)
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    if pairs == "half":
        a, b = x_rot[..., : rot // 2], x_rot[..., rot // 2:]
        out = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
    else:
        a, b = x_rot[..., 0::2], x_rot[..., 1::2]
        out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([out, x_pass], dim=-1) if x_pass.shape[-1] else out


class RMSNorm(nn.Module):
    """x / rms(x) (times a weight): Zhang & Sennrich 2019, Llama's; in at least float32."""

    def __init__(self, dim: int, eps: float, weight: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 up, float64 stays
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return y if self.weight is None else y * self.weight


def make_norm(dim: int, cfg: GPTConfig) -> nn.Module:
    if cfg.norm_type == "rmsnorm":
        return RMSNorm(dim, cfg.ln_eps, weight=cfg.norm_weight)
    if not cfg.norm_weight:
        return nn.LayerNorm(dim, eps=cfg.ln_eps, elementwise_affine=False)
    return nn.LayerNorm(dim, eps=cfg.ln_eps, bias=cfg.ln_bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_size
        # q, k and v in one matmul, in that order: the layout of GPT-2 and of nn.MultiheadAttention.in_proj;
        # with grouped-query attention k and v have n_kv_heads heads each.
        self.c_attn = nn.Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=cfg.bias)
        self.c_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        if cfg.qk_norm != "none":
            self.q_norm = make_norm(self.head_dim, cfg)
            self.k_norm = make_norm(self.head_dim, cfg)
        self.qk_norm = cfg.qk_norm
        self.rope_pairs = cfg.rope_pairs
        self.scale = cfg.attn_scale
        self.dropout = cfg.dropout
        self.causal = cfg.causal

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        hq, hkv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q, k, v = self.c_attn(x).split([hq, hkv, hkv], dim=2)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = (t.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2) for t in (k, v))
        if self.qk_norm == "before_rope":
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope, self.rope_pairs), apply_rope(k, *rope, self.rope_pairs)
        if self.qk_norm == "after_rope":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.n_kv_heads != self.n_heads:
            # Each group of n_heads / n_kv_heads query heads reads the same key and value head.
            k, v = (t.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1) for t in (k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )
        y = y.transpose(1, 2).contiguous().view(B, T, hq)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        if cfg.gated:
            self.c_up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.act = activation_fn(cfg.activation)
        self.gated = cfg.gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.c_fc(x))
        if self.gated:
            h = h * self.c_up(x)  # GLU variants (Shazeer 2020): the activated branch gates a linear one
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg.d_model, cfg)
        self.attn = CausalSelfAttention(cfg)
        if cfg.residual != "parallel_shared":
            self.ln_2 = make_norm(cfg.d_model, cfg)
        self.mlp = MLP(cfg)
        self.pre_norm = cfg.norm == "pre"
        self.residual = cfg.residual

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.residual == "parallel":  # GPT-NeoX: both branches read the block's input
            return x + self.attn(self.ln_1(x), rope) + self.mlp(self.ln_2(x))
        if self.residual == "parallel_shared":  # GPT-J, Phi: and through the same norm
            h = self.ln_1(x)
            return x + self.attn(h, rope) + self.mlp(h)
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), rope)
            return x + self.mlp(self.ln_2(x))
        # Post-LN exactly as nn.TransformerEncoderLayer(norm_first=False), the original Transformer's order.
        x = self.ln_1(x + self.attn(x, rope))
        return self.ln_2(x + self.mlp(x))


# What initialises weights: nn.init's functions and the tensors' own in-place random fills.
_INITIALISERS = frozenset(
    [getattr(nn.init, n) for n in ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                                   "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_", "zeros_",
                                   "ones_", "constant_", "eye_", "dirac_") if hasattr(nn.init, n)]
    + [getattr(torch.Tensor, n) for n in ("normal_", "uniform_", "random_", "bernoulli_", "exponential_",
                                          "log_normal_", "cauchy_", "geometric_")])


class _Unset(torch.overrides.TorchFunctionMode):
    """Inside it, initialisers leave their tensor as allocated (`torch.empty`'s memory, unset): modules are
    built without drawing the random numbers a caller would overwrite. (The meta device would do the same,
    but an `Embedding` built on it imports torch._dynamo to fill its weights: 4 s, once a process.)"""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _INITIALISERS:
            return args[0] if args else (kwargs or {}).get("tensor")
        return func(*args, **(kwargs or {}))


def unset_weights(unset: bool = True) -> contextlib.AbstractContextManager:
    """Modules built inside it have their weights allocated and left unset, their fixed buffers computed: for a
    caller that then loads every weight (`load_state_dict(..., strict=True)`). `unset=False`: nothing."""
    return _Unset() if unset else contextlib.nullcontext()


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, *, empty: bool = False):
        """`empty`: the weights left unset, not drawn at random (`unset_weights`), for a caller that loads every
        one of them; the fixed buffers are computed either way. A 50,257-word model's init costs ~0.1 s."""
        super().__init__()
        self.config = cfg
        with unset_weights(empty):
            layers: dict[str, nn.Module] = {"wte": nn.Embedding(cfg.vocab_size, cfg.d_model)}
            if cfg.positions == "learned":
                layers["wpe"] = nn.Embedding(cfg.context, cfg.d_model)
            if cfg.embed_norm:
                layers["ln_e"] = make_norm(cfg.d_model, cfg)
            layers["drop"] = nn.Dropout(cfg.dropout)
            layers["h"] = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
            if cfg.final_norm:
                layers["ln_f"] = make_norm(cfg.d_model, cfg)
            self.transformer = nn.ModuleDict(layers)
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_bias)
        if cfg.tied:
            # Weight tying (Press & Wolf 2017): the input and output embeddings are one matrix.
            self.lm_head.weight = self.transformer.wte.weight
        # Fixed functions of the position, not weights: never saved, so checkpoints stay layout-pure.
        pe = sinusoidal_positions(cfg.context, cfg.d_model) if cfg.positions == "sinusoidal" else torch.empty(0)
        self.register_buffer("pe", pe, persistent=False)
        if cfg.positions == "rope":
            angles = rope_angles(cfg.context, cfg.rotary_dims, cfg.rope_theta)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        if empty:
            return
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # GPT-2's scaled init: each block adds two residual branches, so keep their sum's variance flat.
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Unique parameter tensors once: a tied head counts once, positions count, buffers do not."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab_size]; the evaluator computes its losses itself."""
        # through the lm_head module: training swaps it for an identity to take the hidden states
        logits = self.lm_head(self.hidden_states(input_ids))
        cap = self.config.logit_softcap
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        return logits

    def output_head(self) -> OutputHead:
        """The output layer as the evaluator's fused path takes it: weight, bias, soft-cap."""
        return OutputHead(self.lm_head.weight, self.lm_head.bias, self.config.logit_softcap)

    def hidden_and_head(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, OutputHead]:
        """The final hidden states [B, T, d_model] (after ln_f) and the head that turns them into logits:
        clm-v1 then runs the head only on the scored positions, chunk by chunk (harness.metrics.fused)."""
        return self.hidden_states(input_ids), self.output_head()

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        _, T = input_ids.shape
        if cfg.positions != "none" and T > cfg.context:
            raise ValueError(f"sequence of {T} tokens is longer than the model's {cfg.context} positions")
        x = self.transformer.wte(input_ids)
        if cfg.embed_scale != 1.0:
            x = x * cfg.embed_scale
        if cfg.positions == "learned":
            x = x + self.transformer.wpe(torch.arange(T, device=input_ids.device))
        elif cfg.positions == "sinusoidal":
            x = x + self.pe[:T].to(x.dtype)
        if cfg.embed_norm:
            x = self.transformer.ln_e(x)
        rope = (self.rope_cos[:T], self.rope_sin[:T]) if cfg.positions == "rope" else None
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, rope)
        if cfg.final_norm:
            x = self.transformer.ln_f(x)
        return x
