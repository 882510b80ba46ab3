"""The canonical causal language model: a nanoGPT-shaped GPT that every GPT-like layout maps into.

One class covers the setups students hand in: GPT-2 style (pre-LN, learned positions, tied head),
PyTorch's word_language_model style (post-LN, sinusoidal positions scaled by sqrt(d_model), ReLU,
untied head with a bias) and the points between. The key names are nanoGPT's, so a nanoGPT
checkpoint loads as is and a Hugging Face GPT-2 one needs only the transposes in `io.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("pre", "post")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
POSITIONS = ("learned", "sinusoidal", "none")


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


def activation_fn(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        # GPT-2's "gelu_new": the tanh approximation the original TensorFlow code used.
        return lambda x: F.gelu(x, approximate="tanh")
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
    ln_bias: bool = True
    tied: bool = True  # lm_head shares wte's weight
    final_norm: bool = True  # ln_f before the head
    ln_eps: float = 1e-5
    embed_scale: float = 1.0  # word_language_model multiplies embeddings by sqrt(d_model)
    # False only to reproduce a student's encoder stack that forgot its mask; the causality check catches it.
    causal: bool = True
    head_bias: bool = False  # word_language_model's decoder is a Linear with a bias

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "n_layers", "d_model", "n_heads"):
            check_int("GPTConfig", name, getattr(self, name))
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_int("GPTConfig", "d_ff", self.d_ff)
        if self.d_model % self.n_heads:
            raise ValueError(f"GPTConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        check_choice("GPTConfig", "norm", self.norm, NORMS)
        check_choice("GPTConfig", "activation", self.activation, ACTIVATIONS)
        check_choice("GPTConfig", "positions", self.positions, POSITIONS)
        self.dropout = float(self.dropout)
        self.ln_eps = float(self.ln_eps)
        self.embed_scale = float(self.embed_scale)

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


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        # q, k and v in one matmul, in that order: the layout of GPT-2 and of nn.MultiheadAttention.in_proj.
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.causal = cfg.causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.act = activation_fn(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps, bias=cfg.ln_bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps, bias=cfg.ln_bias)
        self.mlp = MLP(cfg)
        self.pre_norm = cfg.norm == "pre"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))
        # Post-LN exactly as nn.TransformerEncoderLayer(norm_first=False), the original Transformer's order.
        x = self.ln_1(x + self.attn(x))
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        layers: dict[str, nn.Module] = {"wte": nn.Embedding(cfg.vocab_size, cfg.d_model)}
        if cfg.positions == "learned":
            layers["wpe"] = nn.Embedding(cfg.context, cfg.d_model)
        layers["drop"] = nn.Dropout(cfg.dropout)
        layers["h"] = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        if cfg.final_norm:
            layers["ln_f"] = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps, bias=cfg.ln_bias)
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_bias)
        if cfg.tied:
            # Weight tying (Press & Wolf 2017): the input and output embeddings are one matrix.
            self.lm_head.weight = self.transformer.wte.weight
        # A fixed function of the position, not a weight: never saved, so checkpoints stay layout-pure.
        pe = sinusoidal_positions(cfg.context, cfg.d_model) if cfg.positions == "sinusoidal" else torch.empty(0)
        self.register_buffer("pe", pe, persistent=False)
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
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        if cfg.final_norm:
            x = self.transformer.ln_f(x)
        return self.lm_head(x)
