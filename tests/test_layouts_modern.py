"""The layouts of the code students copy today, each against its own model saved the way its project saves.

Every test builds the family's model (our own faithful re-implementation of its key names and maths, or
transformers' own class), perturbs its weights, saves a real file the way that project does, reads it
back through `harness.checkpoint.read.read_checkpoint` (the sandboxed safe reader) and `harness.models.build.build_model`,
and checks that our loss equals the model's own forward to 1e-6 relative.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.checkpoint.read import read_checkpoint
from harness.errors import HarnessError
from harness.layouts import recognising
from harness.models.build import CONFIG, LAYOUT, UNVERIFIED, build_model

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


def build_nanogpt_model(vocab=V, context=T):
    """build-nanogpt's GPT: nanoGPT's modules with the `attn.bias` mask buffer kept in every block,
    `nn.GELU(approximate='tanh')`, biases everywhere and `wte` tied to `lm_head` (test_layouts.NanoGPT,
    whose sizes are its module's V and T)."""
    import test_layouts

    from harness.models import GPT, GPTConfig

    torch.manual_seed(3)
    base = randomize(GPT(GPTConfig(vocab_size=vocab, context=context, n_layers=L, d_model=D, n_heads=H)), seed=3)
    sizes = test_layouts.V, test_layouts.T
    test_layouts.V, test_layouts.T = vocab, context
    try:
        own = test_layouts.NanoGPT(bias=True, flash=False, tied=True, act=nn.GELU(approximate="tanh"))
    finally:
        test_layouts.V, test_layouts.T = sizes
    return test_layouts.fill(own, test_layouts.canonical_subset(base.state_dict(), own, tied=True))


def save_build_nanogpt(own, path, monkeypatch, vocab=V, context=T):
    """train_gpt2.py's checkpoint, its GPTConfig from a module written here and forgotten after the save."""
    import importlib
    import sys

    folder = path.parent / "bng_module"
    folder.mkdir()
    (folder / "bng_train_gpt2.py").write_text(TRAIN_GPT2)
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module("bng_train_gpt2")
    try:
        config = module.GPTConfig(block_size=context, vocab_size=vocab, n_layer=L, n_head=H, n_embd=D)
        torch.save({"model": own.state_dict(), "config": config, "step": 250, "val_loss": 3.5}, path)
    finally:
        del sys.modules["bng_train_gpt2"]
    (folder / "bng_train_gpt2.py").unlink()
    folder.rmdir()


def test_build_nanogpt_checkpoint_with_its_config_dataclass(ids, tmp_path, monkeypatch):
    """`torch.save({"model", "config": GPTConfig, "step", "val_loss"})` where GPTConfig lives in a module the
    grader does not have: the safe reader refuses the class, reads it through a stub, and its values say the
    heads; its shape says build-nanogpt, so the tanh GELU."""
    own = build_nanogpt_model()
    save_build_nanogpt(own, tmp_path / "model_00250.pt", monkeypatch)
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


# --------------------------------------------------------------------------------------------------
# CS336 assignment 1 TransformerLM: the handout's adapter names (tests/adapters.py run_transformer_lm) and
# the staff reference's maths (cs336-basics/cs336_basics/model.py, as shipped in assignment2-systems
# @d70f3e5): Linear/Embedding from scratch, RMSNorm in float32, interleaved RoPE, SwiGLU, no biases
# --------------------------------------------------------------------------------------------------


class CSLinear(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / math.sqrt(d_in))

    def forward(self, x):
        return torch.einsum("...i,oi->...o", x, self.weight)


class CSEmbedding(nn.Module):
    def __init__(self, vocab, d):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab, d))

    def forward(self, ids):
        return self.weight[ids, :]


class CSRMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        in_dtype = x.dtype
        x = x.to(torch.float32)
        return (self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))).to(in_dtype)


class CSRotaryEmbedding(nn.Module):
    """Pairs (2k, 2k+1) rotated by position * theta^(-2k/d); `persistent` as a student's table might be."""

    def __init__(self, context_length, dim, theta, persistent=False):
        super().__init__()
        freqs = theta ** -(torch.arange(0, dim, 2) / dim)
        angles = torch.outer(torch.arange(context_length), freqs)
        self.register_buffer("_freq_cis_cache", torch.stack((angles.cos(), angles.sin())), persistent=persistent)

    def forward(self, x, pos):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        cos, sin = self._freq_cis_cache[:, pos, :]
        return torch.stack((cos * x1 - sin * x2, sin * x1 + cos * x2), dim=-1).flatten(-2)


class CSAttention(nn.Module):
    def __init__(self, d_model, num_heads, rope):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj = (CSLinear(d_model, d_model) for _ in range(3))
        self.output_proj = CSLinear(d_model, d_model)
        self.rope = rope

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.rope is not None:
            pos = torch.arange(t)
            q, k = self.rope(q, pos), self.rope(k, pos)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])
        mask = torch.arange(t)[:, None] >= torch.arange(t)[None, :]
        scores = torch.where(mask, scores, float("-inf"))
        out = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.output_proj(out)


class CSFFN(nn.Module):
    def __init__(self, d_model, d_ff, gated=True):
        super().__init__()
        self.w1, self.w2 = CSLinear(d_model, d_ff), CSLinear(d_ff, d_model)
        self.w3 = CSLinear(d_model, d_ff) if gated else None

    def forward(self, x):
        if self.w3 is None:  # the 2024 edition: exact GELU, no gate
            return self.w2(F.gelu(self.w1(x)))
        h = self.w1(x)
        return self.w2(h * torch.sigmoid(h) * self.w3(x))


class CSBlock(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, rope, gated):
        super().__init__()
        self.attn = CSAttention(d_model, num_heads, rope)
        self.ffn = CSFFN(d_model, d_ff, gated)
        self.ln1, self.ln2 = CSRMSNorm(d_model), CSRMSNorm(d_model)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class CSTransformerLM(nn.Module):
    def __init__(self, vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta=10000.0,
                 edition=2025, persistent_rope=False):
        super().__init__()
        self.token_embeddings = CSEmbedding(vocab_size, d_model)
        rope = None
        if edition == 2025:
            rope = CSRotaryEmbedding(context_length, d_model // num_heads, rope_theta, persistent_rope)
        else:
            self.position_embeddings = CSEmbedding(context_length, d_model)
        self.layers = nn.ModuleList(CSBlock(d_model, num_heads, d_ff, rope, edition == 2025)
                                    for _ in range(num_layers))
        self.ln_final = CSRMSNorm(d_model)
        self.lm_head = CSLinear(d_model, vocab_size)

    def forward(self, ids):
        x = self.token_embeddings(ids)
        if hasattr(self, "position_embeddings"):
            x = x + self.position_embeddings(torch.arange(ids.shape[1]))
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.ln_final(x))


CS_CONFIG = {"vocab_size": V, "context_length": T, "d_model": D, "num_layers": L, "num_heads": 2, "d_ff": 88,
             "rope_theta": 1000.0}


def cs336_model(seed=4, **over):
    torch.manual_seed(seed)
    return randomize(CSTransformerLM(**{**CS_CONFIG, **over}), seed=seed)


def test_cs336_staff_model_pt_and_model_config_json(ids, tmp_path):
    """The staff's save: `model.pt` (a compiled model's `_orig_mod.` state dict) beside `model_config.json`,
    which says the heads and theta; the folder is what the student hands in."""
    own = cs336_model()
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({f"_orig_mod.{k}": v for k, v in own.state_dict().items()}, folder / "model.pt")
    (folder / "model_config.json").write_text(json.dumps(CS_CONFIG))
    raw, loaded = graded(folder, own, ids, "cs336")
    assert raw.meta["_harness"]["config_from"][-1] == "model_config.json"
    cfg = loaded.config
    assert (cfg.n_heads, cfg.rope_theta, cfg.rope_pairs, cfg.norm_type, cfg.activation) == \
        (2, 1000.0, "interleaved", "rmsnorm", "silu")
    assert cfg.gated and not cfg.bias and not cfg.tied and cfg.ln_eps == 1e-5
    assert loaded.sources["n_heads"] == loaded.sources["rope_theta"] == CONFIG


def test_cs336_save_checkpoint_with_a_persistent_rope_table(ids, tmp_path):
    """A student's `save_checkpoint(model, optimizer, iteration, out)`: {"model", "optimizer", "iteration"},
    with the RoPE table kept as a persistent buffer; theta 10000 as in the handout, heads from hints."""
    own = cs336_model(seed=5, rope_theta=10000.0, persistent_rope=True)
    opt = torch.optim.AdamW(own.parameters())
    torch.save({"model": own.state_dict(), "optimizer": opt.state_dict(), "iteration": 10}, tmp_path / "ckpt.pt")
    raw, loaded = graded(tmp_path / "ckpt.pt", own, ids, "cs336", hints={"n_heads": 2})
    assert "layers.0.attn.rope._freq_cis_cache" in raw.tensors
    assert loaded.sources["rope_theta"] == LAYOUT and any("rotary table" in f for f in loaded.facts)


def test_cs336_2024_edition_learned_positions_and_gelu(ids, tmp_path):
    own = cs336_model(seed=6, edition=2024)
    torch.save(own.state_dict(), tmp_path / "model.pt")
    _, loaded = graded(tmp_path / "model.pt", own, ids, "cs336", hints={"n_heads": 2})
    assert loaded.config.positions == "learned" and loaded.config.activation == "gelu" and not loaded.config.gated


def test_cs336_a_students_own_names_and_fused_qkv(ids, tmp_path):
    """A public CS336 solution (Suyq8/assignment1-basics cs336_basics/model.py @ac2b227) keeps the handout's
    maths under its own names: `Linear.W`, `Embedding.embeddings`, `RMSNorm.g`, one `attention.linear_qkv`
    viewed as (3, heads, head_dim), `attention.linear_o`, `ffn.linear1/2/3`, `norm1/2`, `norm`, `linear_o`."""
    own = cs336_model(seed=8, rope_theta=10000.0)
    sd = own.state_dict()
    theirs = {"token_embedding.embeddings": sd["token_embeddings.weight"], "norm.g": sd["ln_final.weight"],
              "linear_o.W": sd["lm_head.weight"]}
    for i in range(L):
        a, b = f"layers.{i}.", f"layers.{i}."
        theirs[b + "attention.linear_qkv.W"] = torch.cat([sd[f"{a}attn.{p}_proj.weight"] for p in "qkv"])
        for mine, their in (("attn.output_proj.weight", "attention.linear_o.W"), ("ffn.w1.weight", "ffn.linear1.W"),
                            ("ffn.w2.weight", "ffn.linear2.W"), ("ffn.w3.weight", "ffn.linear3.W"),
                            ("ln1.weight", "norm1.g"), ("ln2.weight", "norm2.g")):
            theirs[b + their] = sd[a + mine]
    torch.save({"model": theirs, "iteration": 5}, tmp_path / "checkpoint.pt")
    _, loaded = graded(tmp_path / "checkpoint.pt", own, ids, "cs336", hints={"n_heads": 2})
    assert loaded.config.rope_pairs == "interleaved" and loaded.config.gated
    assert any("own names" in f for f in loaded.facts)


# --------------------------------------------------------------------------------------------------
# LLMs-from-scratch Llama 2 / Llama 3 (rasbt/LLMs-from-scratch ch05/07_gpt_to_llama and
# pkg/llms_from_scratch/llama3.py @0e3ef0e): RMSNorm eps 1e-5, SwiGLU fc1/fc2/fc3, RoPE on halves
# (`cat(-x2, x1)`), Llama 3's grouped-query attention (repeat_interleave) and rope_freq scaling
# --------------------------------------------------------------------------------------------------


def book_rope_params(head_dim, theta_base=10_000, context_length=T, freq_config=None):
    inv_freq = 1.0 / (theta_base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    if freq_config is not None:
        low = freq_config["original_context_length"] / freq_config["low_freq_factor"]
        high = freq_config["original_context_length"] / freq_config["high_freq_factor"]
        wavelen = 2 * torch.pi / inv_freq
        scaled = torch.where(wavelen > low, inv_freq / freq_config["factor"], inv_freq)
        smooth = (freq_config["original_context_length"] / wavelen - freq_config["low_freq_factor"]) / (
            freq_config["high_freq_factor"] - freq_config["low_freq_factor"])
        smoothed = (1 - smooth) * (inv_freq / freq_config["factor"]) + smooth * inv_freq
        inv_freq = torch.where((wavelen <= low) & (wavelen >= high), smoothed, scaled)
    angles = torch.arange(context_length)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=1)
    return torch.cos(angles), torch.sin(angles)


def book_apply_rope(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    t = x.shape[2]
    return x * cos[:t][None, None] + torch.cat((-x2, x1), dim=-1) * sin[:t][None, None]


class BookRMSNorm(nn.Module):
    """The Llama 2 notebook's RMSNorm (Llama 3 uses nn.RMSNorm(eps=1e-5), the same maths)."""

    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        means = x.pow(2).mean(dim=-1, keepdim=True)
        return (x * torch.rsqrt(means + self.eps) * self.weight).to(dtype=x.dtype)


class BookGQA(nn.Module):
    """Llama 2's MultiHeadAttention (kv_groups == heads, buffers persistent) or Llama 3's GroupedQueryAttention."""

    def __init__(self, cfg, persistent):
        super().__init__()
        d, self.heads = cfg["emb_dim"], cfg["n_heads"]
        self.head_dim, self.groups = d // self.heads, cfg.get("n_kv_groups", self.heads)
        self.W_query = nn.Linear(d, d, bias=False)
        self.W_key = nn.Linear(d, self.groups * self.head_dim, bias=False)
        self.W_value = nn.Linear(d, self.groups * self.head_dim, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        cos, sin = book_rope_params(self.head_dim, cfg["rope_base"], cfg["context_length"], cfg.get("rope_freq"))
        mask = torch.triu(torch.ones(cfg["context_length"], cfg["context_length"]), diagonal=1)
        for name, buf in (("mask", mask), ("cos", cos), ("sin", sin)):
            self.register_buffer(name, buf, persistent=persistent)

    def forward(self, x):
        b, t, d = x.shape
        q = self.W_query(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.W_key(x).view(b, t, self.groups, self.head_dim).transpose(1, 2)
        v = self.W_value(x).view(b, t, self.groups, self.head_dim).transpose(1, 2)
        q, k = book_apply_rope(q, self.cos, self.sin), book_apply_rope(k, self.cos, self.sin)
        k = k.repeat_interleave(self.heads // self.groups, dim=1)
        v = v.repeat_interleave(self.heads // self.groups, dim=1)
        scores = (q @ k.transpose(2, 3)).masked_fill(self.mask.bool()[:t, :t], -torch.inf)
        weights = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, t, d))


class BookLlamaBlock(nn.Module):
    def __init__(self, cfg, persistent):
        super().__init__()
        d, h = cfg["emb_dim"], cfg["hidden_dim"]
        self.att = BookGQA(cfg, persistent)
        self.ff = nn.Module()
        self.ff.fc1, self.ff.fc2, self.ff.fc3 = (nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False),
                                                 nn.Linear(h, d, bias=False))
        self.norm1, self.norm2 = BookRMSNorm(d), BookRMSNorm(d)

    def forward(self, x):
        x = x + self.att(self.norm1(x))
        h = self.norm2(x)
        return x + self.ff.fc3(F.silu(self.ff.fc1(h)) * self.ff.fc2(h))


class BookLlama(nn.Module):
    def __init__(self, cfg, persistent=True):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.trf_blocks = nn.Sequential(*[BookLlamaBlock(cfg, persistent) for _ in range(cfg["n_layers"])])
        self.final_norm = BookRMSNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, ids):
        return self.out_head(self.final_norm(self.trf_blocks(self.tok_emb(ids))))


LLAMA2_CONFIG = {"vocab_size": V, "context_length": T, "emb_dim": D, "n_heads": 2, "n_layers": L, "hidden_dim": 80,
                 "rope_base": 10_000}
LLAMA3_CONFIG = {"vocab_size": V, "context_length": T, "orig_context_length": T, "emb_dim": D, "n_heads": 4,
                 "n_layers": L, "hidden_dim": 80, "n_kv_groups": 2, "rope_base": 500_000.0, "dtype": torch.float32,
                 "rope_freq": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_context_length": 8}}


def book_llama(cfg, persistent, seed=7):
    torch.manual_seed(seed)
    return randomize(BookLlama(cfg, persistent), seed=seed)


def test_llms_from_scratch_llama2_tables_say_heads_and_theta(ids, tmp_path):
    """The Llama 2 notebook's `torch.save(model.state_dict(), ...)`: its persistent cos/sin tables give the
    head size and theta, so nothing is left unverified."""
    own = book_llama(LLAMA2_CONFIG, persistent=True)
    torch.save(own.state_dict(), tmp_path / "llama2.pth")
    raw, loaded = graded(tmp_path / "llama2.pth", own, ids, "llms-from-scratch-llama")
    assert "trf_blocks.0.att.cos" in raw.tensors
    cfg = loaded.config
    assert (cfg.n_heads, cfg.kv_heads, cfg.rope_pairs, cfg.norm_type, cfg.ln_eps) == (2, 2, "half", "rmsnorm", 1e-5)
    assert cfg.rope_theta == pytest.approx(10_000, rel=1e-4) and loaded.sources["rope_theta"] == "weights"
    assert loaded.unverified() == []


def test_llms_from_scratch_llama3_grouped_query_without_scaling(ids, tmp_path):
    """The package's Llama3Model (no persistent buffers), n_kv_groups 2, saved with its cfg, which turns the
    frequency scaling off and rescales theta (rescale_theta: context_length / orig_context_length)."""
    cfg = {**LLAMA3_CONFIG, "rope_freq": None, "orig_context_length": 4 * T}
    own = book_llama({**cfg, "rope_base": cfg["rope_base"] / 4}, persistent=False, seed=8)
    torch.save({"model_state_dict": own.state_dict(), "cfg": cfg}, tmp_path / "llama3.pth")
    _, loaded = graded(tmp_path / "llama3.pth", own, ids, "llms-from-scratch-llama")
    assert (loaded.config.n_heads, loaded.config.kv_heads) == (4, 2)
    assert loaded.config.rope_theta == 500_000.0 / 4 and loaded.sources["rope_theta"] == CONFIG


@pytest.mark.parametrize("saved_as", ["cfg", "tables", "bare"])
def test_llms_from_scratch_llama3_frequency_scaling_is_one_clear_line(tmp_path, saved_as):
    """What the canonical model cannot compute is refused in one sentence that names it."""
    own = book_llama(LLAMA3_CONFIG, persistent=saved_as == "tables", seed=9)
    obj = {"model": own.state_dict(), "cfg": LLAMA3_CONFIG} if saved_as == "cfg" else own.state_dict()
    torch.save(obj, tmp_path / "llama3.pth")
    with pytest.raises(HarnessError) as err:
        build_model(read_checkpoint(tmp_path / "llama3.pth"))
    assert "RoPE frequency scaling" in err.value.message and "\n" not in err.value.message


# --------------------------------------------------------------------------------------------------
# Hugging Face Llama / Mistral / Qwen2 / Qwen3 as a bare state dict: transformers' own classes
# --------------------------------------------------------------------------------------------------


def hf_causal(kind: str, seed: int, **over):
    transformers = pytest.importorskip("transformers")
    cls = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
           "qwen3": "Qwen3ForCausalLM", "neox": "GPTNeoXForCausalLM"}[kind]
    config_cls = getattr(transformers, cls.replace("ForCausalLM", "Config"))
    args = dict(vocab_size=V, hidden_size=D, intermediate_size=80, num_hidden_layers=L, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=T, tie_word_embeddings=False)
    if kind == "neox":
        args.pop("num_key_value_heads")
    torch.manual_seed(seed)
    model = getattr(transformers, cls)(config_cls(**{**args, **over}))
    return randomize(model, seed=seed)


def logits_of(model):
    return lambda x: model(x).logits


def test_hf_llama_bare_state_dict(ids, tmp_path):
    own = hf_causal("llama", 10, rms_norm_eps=1e-6)
    torch.save(own.state_dict(), tmp_path / "pytorch_model.pt")
    _, loaded = graded(tmp_path / "pytorch_model.pt", own, ids, "hf-llama", hints={"n_heads": 4},
                       forward=logits_of(own))
    cfg = loaded.config
    assert (cfg.n_heads, cfg.kv_heads, cfg.norm_type, cfg.rope_pairs, cfg.activation) == (4, 2, "rmsnorm", "half",
                                                                                          "silu")
    assert cfg.gated and not cfg.bias and not cfg.tied
    assert loaded.sources["ln_eps"] == UNVERIFIED and loaded.sources["rope_theta"] == UNVERIFIED


def test_hf_mistral_with_its_config_saved_beside(ids, tmp_path):
    """`{"model": state_dict, "config": model.config.to_dict()}`: heads, eps and theta from the config."""
    own = hf_causal("mistral", 11, rms_norm_eps=1e-5, rope_theta=50000.0)
    torch.save({"model": own.state_dict(), "config": own.config.to_dict()}, tmp_path / "mistral.pt")
    _, loaded = graded(tmp_path / "mistral.pt", own, ids, "hf-llama", forward=logits_of(own))
    cfg = loaded.config
    assert (cfg.n_heads, cfg.kv_heads, cfg.ln_eps, cfg.rope_theta, cfg.context) == (4, 2, 1e-5, 50000.0, T)
    assert loaded.unverified() == []


def test_hf_qwen2_biases_and_a_tied_head(ids, tmp_path):
    own = hf_causal("qwen2", 12, tie_word_embeddings=True, rms_norm_eps=1e-6)
    assert own.lm_head.weight is own.model.embed_tokens.weight
    torch.save(own.state_dict(), tmp_path / "qwen2.pt")
    _, loaded = graded(tmp_path / "qwen2.pt", own, ids, "hf-llama", hints={"n_heads": 4, "rope_theta": 10000.0},
                       forward=logits_of(own))
    assert loaded.config.tied and loaded.config.bias  # q/k/v biases; the others are zeros, the same computation


def test_hf_qwen3_qk_norm_says_the_heads(ids, tmp_path):
    own = hf_causal("qwen3", 13, head_dim=16, rms_norm_eps=1e-6)  # head_dim * heads != hidden_size
    torch.save(own.state_dict(), tmp_path / "qwen3.pt")
    _, loaded = graded(tmp_path / "qwen3.pt", own, ids, "hf-llama", forward=logits_of(own))
    cfg = loaded.config
    assert (cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.qk_norm) == (4, 2, 16, "before_rope")


# --------------------------------------------------------------------------------------------------
# Hugging Face GPT-NeoX as a bare state dict: transformers' GPTNeoXForCausalLM
# --------------------------------------------------------------------------------------------------


def test_hf_gpt_neox_bare_state_dict_per_head_qkv_partial_rotary_parallel(ids, tmp_path):
    """The defaults (rotary 0.25, parallel residual) from the layout; the per-head q/k/v split needs the
    heads, from submission.toml."""
    own = hf_causal("neox", 14, num_attention_heads=2)
    torch.save(own.state_dict(), tmp_path / "pythia.pt")
    _, loaded = graded(tmp_path / "pythia.pt", own, ids, "hf-gpt-neox", hints={"n_heads": 2},
                       forward=logits_of(own))
    cfg = loaded.config
    assert (cfg.rope_fraction, cfg.residual, cfg.norm_type, cfg.activation, cfg.ln_bias) == \
        (0.25, "parallel", "layernorm", "gelu", True)
    assert cfg.rotary_dims == 4 and loaded.sources["rope_fraction"] == UNVERIFIED


def test_hf_gpt_neox_sequential_residual_from_its_saved_config(ids, tmp_path):
    own = hf_causal("neox", 15, use_parallel_residual=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 5000.0, "partial_rotary_factor": 0.5})
    torch.save({"state_dict": own.state_dict(), "config": own.config.to_dict()}, tmp_path / "neox.pt")
    _, loaded = graded(tmp_path / "neox.pt", own, ids, "hf-gpt-neox", forward=logits_of(own))
    cfg = loaded.config
    assert (cfg.n_heads, cfg.rope_fraction, cfg.rope_theta, cfg.residual) == (4, 0.5, 5000.0, "sequential")


def test_hf_gpt_neox_wrong_heads_give_a_different_loss(ids, tmp_path):
    """The per-head split is real: with another head count the same weights compute something else."""
    own = hf_causal("neox", 14, num_attention_heads=2)
    torch.save(own.state_dict(), tmp_path / "pythia.pt")
    loaded = build_model(read_checkpoint(tmp_path / "pythia.pt"), hints={"n_heads": 4})
    with torch.no_grad():
        assert abs(clm_loss(loaded.model(ids), ids) - clm_loss(own(ids).logits, ids)) > 1e-3


# --------------------------------------------------------------------------------------------------
# The real grading path: `harness grade` on a class of one submission per family
# --------------------------------------------------------------------------------------------------

GPT2_VOCAB, CONTEXT = 50257, 64


def _submission(folder, files: dict, toml: str = ""):
    folder.mkdir(parents=True)
    for name, obj in files.items():
        if isinstance(obj, str):
            (folder / name).write_text(obj)
        else:
            torch.save(obj, folder / name)
    if toml:
        (folder / "submission.toml").write_text(toml)


@pytest.mark.slow
def test_every_family_graded_by_harness_grade_equals_its_own_forward(tmp_path, monkeypatch):
    """One `harness grade` subprocess over a class of six families saved their projects' ways; each recomputed
    loss equals the family's own model run through clm-v1 on the same course data, to 1e-6 relative."""
    import subprocess
    import sys

    from harness.course.config import capped_course_text, load_course
    from harness.course.data import freeze, load_source
    from harness.metrics.clm import evaluate_clm
    from harness.course.tokenizers import get_tokenizer

    vocab = {"vocab_size": GPT2_VOCAB}
    own = {
        "lfs_gpt": randomize(BookGPTModel(book_config(vocab_size=GPT2_VOCAB, context_length=CONTEXT, n_heads=2)), 20),
        "build_nanogpt": build_nanogpt_model(GPT2_VOCAB, CONTEXT),
        "cs336_staff": cs336_model(seed=21, vocab_size=GPT2_VOCAB, context_length=CONTEXT),
        "lfs_llama2": book_llama({**LLAMA2_CONFIG, **vocab, "context_length": CONTEXT}, persistent=True, seed=22),
        "hf_llama": hf_causal("llama", 23, rms_norm_eps=1e-6, max_position_embeddings=CONTEXT, **vocab),
        "hf_neox": hf_causal("neox", 24, num_attention_heads=2, max_position_embeddings=CONTEXT, **vocab),
    }
    layouts = {"lfs_gpt": "llms-from-scratch-gpt", "build_nanogpt": "nanogpt", "cs336_staff": "cs336",
               "lfs_llama2": "llms-from-scratch-llama", "hf_llama": "hf-llama", "hf_neox": "hf-gpt-neox"}
    subs = tmp_path / "submissions"
    _submission(subs / "lfs_gpt", {"model.pth": own["lfs_gpt"].state_dict()}, "[model]\nn_heads = 2\n")
    (subs / "build_nanogpt").mkdir(parents=True)
    save_build_nanogpt(own["build_nanogpt"], subs / "build_nanogpt" / "model_00250.pt", monkeypatch,
                       GPT2_VOCAB, CONTEXT)
    _submission(subs / "cs336_staff", {
        "model.pt": {f"_orig_mod.{k}": v for k, v in own["cs336_staff"].state_dict().items()},
        "model_config.json": json.dumps({**CS_CONFIG, **vocab, "context_length": CONTEXT})})
    _submission(subs / "lfs_llama2", {"llama2.pth": own["lfs_llama2"].state_dict()})
    _submission(subs / "hf_llama", {"model.pt": own["hf_llama"].state_dict()},
                "[model]\nn_heads = 4\nln_eps = 1e-6\nrope_theta = 10000.0\n")
    # random weights: calibration could not find the truth, so submission.toml says what the weights cannot
    _submission(subs / "hf_neox", {"model.pt": own["hf_neox"].state_dict()},
                "[model]\nn_heads = 2\nrope_fraction = 0.25\nresidual = \"parallel\"\n")

    course_path = tmp_path / "course.toml"
    course_path.write_text(capped_course_text(2048, calibration_tokens=512))
    course = load_course(course_path)
    settings = course.clm
    tokenizer = get_tokenizer(settings.tokenizer)
    split = freeze(load_source(course.data_source), tokenizer).split(course.data_split)  # cached for the grader too
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "harness", "grade", str(subs), "--out", str(out), "--course",
                           str(course_path), "--workers", "2", "--no-reports"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    graded_by = {s["id"]: s for s in json.loads((out / "results.json").read_text())["submissions"]}
    for sid, model in own.items():
        sub = graded_by[sid]
        assert sub["status"] == "graded", (sid, sub["error"])
        assert sub["checkpoint"]["layout"] == layouts[sid], sid
        mine = evaluate_clm(model.eval(), split, tokenizer, context=settings.context,
                            stride=settings.stride or None, max_tokens=settings.max_tokens or None)
        assert sub["metrics"]["tokens"] == mine.tokens, sid
        assert abs(sub["metrics"]["loss"] - mine.loss) <= TOL * mine.loss, (sid, sub["metrics"]["loss"], mine.loss)
    assert graded_by["cs336_staff"]["model"]["sources"]["n_heads"] == CONFIG  # model_config.json
    assert graded_by["build_nanogpt"]["model"]["sources"]["activation"] == CONFIG  # the pickled dataclass


# --------------------------------------------------------------------------------------------------
# What nothing expresses: one clear line that names it
# --------------------------------------------------------------------------------------------------


def test_an_unknown_part_of_a_known_family_is_named(tmp_path):
    """A CS336 model with ALiBi slopes added: the layout names the key it cannot place, in one line."""
    own = cs336_model(seed=30)
    sd = own.state_dict()
    sd["layers.0.attn.alibi_slopes"] = torch.ones(2)
    torch.save(sd, tmp_path / "alibi.pt")
    with pytest.raises(HarnessError) as err:
        build_model(read_checkpoint(tmp_path / "alibi.pt"))
    assert err.value.code == "layout-unknown" and "\n" not in err.value.message
    assert "CS336" in err.value.message and "layers.0.attn.alibi_slopes" in err.value.message


def test_a_stored_option_the_model_cannot_compute_is_named(tmp_path):
    own = hf_causal("llama", 31, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    torch.save({"model": own.state_dict(), "config": own.config.to_dict()}, tmp_path / "scaled.pt")
    with pytest.raises(HarnessError) as err:
        build_model(read_checkpoint(tmp_path / "scaled.pt"))
    assert err.value.code == "model-invalid" and "rope_scaling of type 'linear'" in err.value.message


def test_grouped_query_heads_without_hints_split_the_keys(ids, tmp_path):
    """A bare GQA state dict and no submission.toml: the default head count is one whose head size splits
    the k/v rows too, so the model builds (its value unverified, for calibration to settle)."""
    own = hf_causal("llama", 32, rms_norm_eps=1e-6, num_attention_heads=2, num_key_value_heads=1)
    torch.save(own.state_dict(), tmp_path / "gqa.pt")
    _, loaded = graded(tmp_path / "gqa.pt", own, ids, "hf-llama", forward=logits_of(own))
    assert (loaded.config.n_heads, loaded.config.kv_heads) == (2, 1) and loaded.sources["n_heads"] == UNVERIFIED


def test_hf_llama_old_inv_freq_buffers_say_head_size_and_theta(ids, tmp_path):
    """transformers before 4.31 saved `self_attn.rotary_emb.inv_freq` in every layer (written here as they
    did: 1 / theta^(2j / head_dim)); it says the head size and theta, and a rescaled one is refused."""
    own = hf_causal("llama", 33, rms_norm_eps=1e-6, rope_theta=20000.0)
    head_dim = D // 4
    inv_freq = 1.0 / (20000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    sd = {**own.state_dict(), **{f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq for i in range(L)}}
    torch.save(sd, tmp_path / "old.bin")
    _, loaded = graded(tmp_path / "old.bin", own, ids, "hf-llama", forward=logits_of(own))
    assert (loaded.config.n_heads, loaded.config.kv_heads) == (4, 2) and loaded.sources["n_heads"] == "weights"
    assert loaded.config.rope_theta == pytest.approx(20000.0, rel=1e-5)
    torch.save({**sd, **{f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq / 4 for i in range(L)}},
               tmp_path / "scaled.bin")
    with pytest.raises(HarnessError) as err:
        build_model(read_checkpoint(tmp_path / "scaled.bin"))
    assert "RoPE frequency scaling" in err.value.message
