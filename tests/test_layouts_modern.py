"""The layouts of the code students copy today, each against its own model saved the way its project saves.

Every test builds the family's model (our own faithful re-implementation of its key names and maths, or
transformers' own class), perturbs its weights, saves a real file the way that project does, reads it
back through `harness.checkpoint.read_checkpoint` (the sandboxed safe reader) and `harness.model.build_model`,
and checks that our loss equals the model's own forward to 1e-6 relative.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.checkpoint import read_checkpoint
from harness.errors import HarnessError
from harness.layouts import recognising
from harness.model import CONFIG, LAYOUT, UNVERIFIED, build_model

from test_layouts import clm_loss, own_params, randomize

V, D, L, H, T = 97, 32, 2, 4, 16
TOL = 1e-6


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(1))


def graded(path, own: nn.Module, ids, layout: str, *, hints=None, forward=None, params=True):
    """Read `path` as grading does, build our model, and compare its loss with `own`'s forward."""
    raw = read_checkpoint(path)
    assert [x.NAME for x in recognising(raw.tensors, raw.config)] == [layout]
    loaded = build_model(raw, hints=hints)
    assert loaded.layout == layout
    with torch.no_grad():
        expected = clm_loss(forward(ids) if forward else own(ids), ids)
        actual = clm_loss(loaded.model(ids), ids)
    assert abs(actual - expected) <= TOL * abs(expected), (actual, expected)
    if params:
        assert loaded.params == own_params(own)
    json.dumps(loaded.describe())
    return raw, loaded


# --------------------------------------------------------------------------------------------------
# LLMs-from-scratch GPTModel (rasbt/LLMs-from-scratch ch04/01_main-chapter-code/gpt.py @016d230)
# --------------------------------------------------------------------------------------------------


class BookLayerNorm(nn.Module):
    """The book's LayerNorm: `scale` and `shift`, biased variance, eps 1e-5."""

    def __init__(self, d):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(d))
        self.shift = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class BookGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))))


class BookMultiHeadAttention(nn.Module):
    def __init__(self, d_in, d_out, context_length, num_heads, qkv_bias):
        super().__init__()
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (w(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for w in (self.W_query, self.W_key, self.W_value))
        scores = q @ k.transpose(2, 3)
        scores.masked_fill_(self.mask.bool()[:n, :n], -torch.inf)
        weights = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).contiguous().view(b, n, self.d_out))


class BookBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.att = BookMultiHeadAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["context_length"], cfg["n_heads"],
                                          cfg["qkv_bias"])
        self.ff = nn.Module()
        self.ff.layers = nn.Sequential(nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]), BookGELU(),
                                       nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]))
        self.norm1, self.norm2 = BookLayerNorm(cfg["emb_dim"]), BookLayerNorm(cfg["emb_dim"])

    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.ff.layers(self.norm2(x))


class BookGPTModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.trf_blocks = nn.Sequential(*[BookBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = BookLayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):
        x = self.tok_emb(in_idx) + self.pos_emb(torch.arange(in_idx.shape[1]))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


def book_config(qkv_bias=False, **over):
    return {"vocab_size": V, "context_length": T, "emb_dim": D, "n_heads": H, "n_layers": L, "drop_rate": 0.0,
            "qkv_bias": qkv_bias, **over}


def test_llms_from_scratch_gpt_model_pth(ids, tmp_path):
    """ch05's `torch.save(model.state_dict(), "model.pth")`, no biases on q/k/v (the book's default)."""
    torch.manual_seed(0)
    own = randomize(BookGPTModel(book_config()))
    torch.save(own.state_dict(), tmp_path / "model.pth")
    raw, loaded = graded(tmp_path / "model.pth", own, ids, "llms-from-scratch-gpt", hints={"n_heads": H})
    assert "trf_blocks.0.att.mask" in raw.tensors
    assert loaded.config.activation == "gelu_tanh" and loaded.sources["activation"] == LAYOUT
    assert not loaded.tied and any("mask" in f for f in loaded.facts)


def test_llms_from_scratch_gpt_model_and_optimizer(ids, tmp_path):
    """ch05's `{"model_state_dict", "optimizer_state_dict"}`, here with `qkv_bias=True` (GPT-2's weights) and
    the config dict saved beside them, which says the heads."""
    torch.manual_seed(1)
    cfg = book_config(qkv_bias=True, n_heads=2)
    own = randomize(BookGPTModel(cfg), seed=1)
    opt = torch.optim.AdamW(own.parameters(), lr=1e-3)
    own(ids).sum().backward()
    opt.step()
    own.eval()
    torch.save({"model_state_dict": own.state_dict(), "optimizer_state_dict": opt.state_dict(), "config": cfg},
               tmp_path / "model_and_optimizer.pth")
    _, loaded = graded(tmp_path / "model_and_optimizer.pth", own, ids, "llms-from-scratch-gpt")
    assert loaded.config.n_heads == 2 and loaded.sources["n_heads"] == CONFIG
    assert loaded.config.bias


# --------------------------------------------------------------------------------------------------
# build-nanogpt (karpathy/build-nanogpt train_gpt2.py @01be6b3): nanoGPT's names, tanh GELU, tied, and a
# checkpoint that pickles its GPTConfig dataclass
# --------------------------------------------------------------------------------------------------

TRAIN_GPT2 = '''
from dataclasses import dataclass

@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
'''


def build_nanogpt_model():
    """build-nanogpt's GPT: nanoGPT's modules with the `attn.bias` mask buffer kept in every block,
    `nn.GELU(approximate='tanh')`, biases everywhere and `wte` tied to `lm_head` (test_layouts.NanoGPT)."""
    from test_layouts import NanoGPT, canonical_subset, fill

    from harness.models import GPT, GPTConfig

    torch.manual_seed(3)
    base = randomize(GPT(GPTConfig(vocab_size=V, context=T, n_layers=L, d_model=D, n_heads=H)), seed=3)
    own = NanoGPT(bias=True, flash=False, tied=True, act=nn.GELU(approximate="tanh"))
    return fill(own, canonical_subset(base.state_dict(), own, tied=True))


def test_build_nanogpt_checkpoint_with_its_config_dataclass(ids, tmp_path, monkeypatch):
    """`torch.save({"model", "config": GPTConfig, "step", "val_loss"})` where GPTConfig lives in a module the
    grader does not have: the safe reader refuses the class, reads it through a stub, and its values say the
    heads; its shape says build-nanogpt, so the tanh GELU."""
    import importlib
    import sys

    (tmp_path / "bng_train_gpt2.py").write_text(TRAIN_GPT2)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("bng_train_gpt2")
    try:
        own = build_nanogpt_model()
        config = module.GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=D)
        torch.save({"model": own.state_dict(), "config": config, "step": 250, "val_loss": 3.5},
                   tmp_path / "model_00250.pt")
    finally:
        del sys.modules["bng_train_gpt2"]
    (tmp_path / "bng_train_gpt2.py").unlink()
    raw, loaded = graded(tmp_path / "model_00250.pt", own, ids, "nanogpt")
    assert "bng_train_gpt2.GPTConfig" in raw.refused_globals
    assert raw.config == {"block_size": T, "vocab_size": V, "n_layer": L, "n_head": H, "n_embd": D}
    assert raw.meta["step"] == 250 and raw.meta["val_loss"] == 3.5
    assert loaded.config.n_heads == H and loaded.sources["n_heads"] == CONFIG
    assert loaded.config.activation == "gelu_tanh" and loaded.sources["activation"] == CONFIG
    assert loaded.tied


def test_build_nanogpt_bare_state_dict(ids, tmp_path):
    """Only `model.state_dict()`: the mask buffers leave both GELUs open, build-nanogpt's tanh first."""
    own = build_nanogpt_model()
    torch.save(own.state_dict(), tmp_path / "model.pt")
    _, loaded = graded(tmp_path / "model.pt", own, ids, "nanogpt", hints={"n_heads": H})
    assert loaded.config.activation == "gelu_tanh" and loaded.sources["activation"] == UNVERIFIED
