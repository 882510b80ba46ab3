"""Seeds 002 and 003's MiniGPT (their `model.py`), and the names seed 002's state dict has on disk."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.demo.students.common import GPT2_VOCAB


class _Attention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        self.n_heads, self.dropout = n_heads, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class _FFN(nn.Module):
    def __init__(self, d: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.net(x))


class _Block(nn.Module):
    def __init__(self, d: int, n_heads: int, hidden: int, dropout: float, ffn_dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = _Attention(d, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = _FFN(d, hidden, ffn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class _PositionalEmbedding(nn.Module):
    def __init__(self, max_len: int, d: int):
        super().__init__()
        self.emb = nn.Embedding(max_len, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(torch.arange(x.size(1), device=x.device))


class MiniGPT(nn.Module):
    """Seed 003's MiniGPT (`model.py`): fused q/k/v, a `PositionalEmbedding` module, pre-norm blocks with
    GELU, final LayerNorm, a linear head; dropout in attention only. Seed 002's is the same design with
    a biased head and dropout everywhere (its key names differ only on disk, see `S002_KEYS`)."""

    def __init__(self, vocab_size: int = GPT2_VOCAB, embed_dim: int = 128, n_layers: int = 2, n_heads: int = 4,
                 seq_len: int = 64, ffn_mult: int = 4, dropout: float = 0.1, ffn_dropout: float = 0.0,
                 head_bias: bool = False):
        super().__init__()
        self.token_emb = nn.Embedding(vocab_size, embed_dim)
        self.pos_emb = _PositionalEmbedding(seq_len, embed_dim)
        self.drop = nn.Dropout(ffn_dropout)
        self.blocks = nn.ModuleList(_Block(embed_dim, n_heads, ffn_mult * embed_dim, dropout, ffn_dropout)
                                    for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(embed_dim)
        self.lm_head = nn.Linear(embed_dim, vocab_size, bias=head_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.token_emb(x) + self.pos_emb(x))
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.ln_f(h))


# Seed 002 spelled its modules differently; its state dict on disk uses these names.
S002_KEYS = (("token_emb.", "token_embedding."), ("pos_emb.emb.", "position_embedding."),
              (".attn.out_proj.", ".attn.proj."), (".ffn.net.", ".ffn."), ("lm_head.", "head."))


def s002_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MiniGPT's state dict under the names seed 002 saved."""
    out = {}
    for k, v in sd.items():
        for a, b in S002_KEYS:
            k = k.replace(a, b)
        out[k] = v
    return out
