"""Students' own model code as it really is, graded through the sandbox.

Each submission below holds our own faithful re-implementation of public code students hand in, written
by the test into a submission folder and named in submission.toml, as a student would:

- nanoGPT `model.py` (karpathy/nanoGPT, read at 0011cd44 and upstream's model.py): a `GPTConfig` dataclass,
  `GPT(config)`, `forward(idx, targets=None)` returning `(logits, loss)` with only the LAST position's
  logits when targets is None; a `ckpt.pt` of {model, optimizer, model_args, iter_num, best_val_loss, config}.
- minGPT (karpathy/minGPT `mingpt/model.py`, `mingpt/utils.py`): a package folder, `CfgNode` from
  `GPT.get_default_config()`, `model_type` or the sizes (one or the other), a persistent causal mask.
- ng-video-lecture `gpt.py` (karpathy/ng-video-lecture): module-level hyperparameters, the vocabulary from
  `input.txt` at import, `GPTLanguageModel()` without arguments, one module per head, logits reshaped to
  [B*T, C] when targets are given. (The original also trains at import; ours keeps that under
  `if __name__ == "__main__"`, as students who hand it in do: a file that trains at import meets the
  sandbox's start limit.)
- LLMs-from-scratch ch04 `GPTModel(cfg)` (rasbt/LLMs-from-scratch): a dict config, `GPT_CONFIG_124M` beside
  the class, saved as {model_state_dict, optimizer_state_dict}.
- a CS336-style `TransformerLM(vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta)`
  (keywords from the checkpoint's stored config; RMSNorm, interleaved RoPE, SwiGLU, compiled `_orig_mod.`
  keys) whose forward works one sequence at a time: it fails at batch > 1.
- a package with relative imports whose `__init__` asks `importlib.metadata` for its own version, and whose
  forward returns a dict; its heads are called `groups`, which nothing can verify.
- a broken model file beside nanoGPT weights: graded through the nanoGPT layout, with a finding.

Every loss must equal the loss through the model's own forward in this process to 1e-6 relative.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.course.config import default_course_text, load_course
from harness.course.data import freeze, load_source
from harness.metrics.clm import evaluate_clm
from harness.grading.batch import assemble
from harness.grading.measure import Job, measure
from harness.grading.results import References
from harness.course.tokenizers import get_tokenizer


TEXT = textwrap.dedent("""\
    The quick brown fox jumps over the lazy dog. A small language model learns which character comes next,
    one window at a time; its loss is the mean negative log-likelihood of every character it predicts.
    Students write their own transformers: token and position embeddings, causal self-attention, a feed-forward
    layer, residual connections and layer norms, and a head that reads out one logit per character. Some of
    them copy nanoGPT, some minGPT, some follow a lecture or a book, and some write everything from scratch.
    Grading must run every one of them as it is, in a sandbox, and compute the same number their own code does.
    Zebras, quays and jackdaws vex the grader: 0123456789 (brackets) [square] {curly} - hyphens + plus = equal!
    """) * 3
VOCAB = sorted(set(TEXT))
V = len(VOCAB)
CONTEXT = 32


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")


def _import(folder: Path, module: str):
    """The student's module, imported in this process the student's way (the test trusts its own files)."""
    sys.path.insert(0, str(folder))
    try:
        for name in [m for m in sys.modules if m == module.split(".")[0] or m.startswith(module.split(".")[0] + ".")]:
            del sys.modules[name]
        import importlib

        return importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))


def _shake(model: torch.nn.Module, seed: int) -> None:
    """Weights far from their init, so that every part of the computation shows in the loss."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("weight" in name or "scale" in name or "gain" in name):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def _toml(folder: Path, code: str, checkpoint: str, kwargs: dict | None = None, model: dict | None = None) -> None:
    lines = ["[submission]", 'family = "gpt"', f'checkpoint = "{checkpoint}"', "", "[model]", f'code = "{code}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in (model or {}).items()]
    if kwargs:
        lines += ["", "[model.kwargs]"] + [f"{k} = {json.dumps(v)}" for k, v in kwargs.items()]
    (folder / "submission.toml").write_text("\n".join(lines) + "\n")


# --- nanoGPT --------------------------------------------------------------------------------------

NANOGPT = '''
    """Full definition of a GPT Language Model, all of it in this single file."""

    import math
    import inspect
    from dataclasses import dataclass

    import torch
    import torch.nn as nn
    from torch.nn import functional as F


    class LayerNorm(nn.Module):
        """ LayerNorm but with an optional bias. PyTorch doesn't support simply bias=False """

        def __init__(self, ndim, bias):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(ndim))
            self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

        def forward(self, input):
            return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


    class CausalSelfAttention(nn.Module):

        def __init__(self, config):
            super().__init__()
            assert config.n_embd % config.n_head == 0
            self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
            self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
            self.attn_dropout = nn.Dropout(config.dropout)
            self.resid_dropout = nn.Dropout(config.dropout)
            self.n_head = config.n_head
            self.n_embd = config.n_embd
            self.dropout = config.dropout
            self.flash = hasattr(torch.nn.functional, 'scaled_dot_product_attention')
            if not self.flash:
                self.register_buffer("bias", torch.tril(torch.ones(config.block_size, config.block_size))
                                            .view(1, 1, config.block_size, config.block_size))

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            if self.flash:
                y = torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
                att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf'))
                att = F.softmax(att, dim=-1)
                att = self.attn_dropout(att)
                y = att @ v
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            y = self.resid_dropout(self.c_proj(y))
            return y


    class MLP(nn.Module):

        def __init__(self, config):
            super().__init__()
            self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
            self.gelu = nn.GELU()
            self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
            self.dropout = nn.Dropout(config.dropout)

        def forward(self, x):
            return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


    class Block(nn.Module):

        def __init__(self, config):
            super().__init__()
            self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
            self.attn = CausalSelfAttention(config)
            self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
            self.mlp = MLP(config)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            x = x + self.mlp(self.ln_2(x))
            return x


    @dataclass
    class GPTConfig:
        block_size: int = 1024
        vocab_size: int = 50304
        n_layer: int = 12
        n_head: int = 12
        n_embd: int = 768
        dropout: float = 0.0
        bias: bool = True


    class GPT(nn.Module):

        def __init__(self, config):
            super().__init__()
            assert config.vocab_size is not None
            assert config.block_size is not None
            self.config = config
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            ))
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.transformer.wte.weight = self.lm_head.weight
            self.apply(self._init_weights)
            for pn, p in self.named_parameters():
                if pn.endswith('c_proj.weight'):
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
            print("number of parameters: %.2fM" % (self.get_num_params() / 1e6,))

        def get_num_params(self, non_embedding=True):
            n_params = sum(p.numel() for p in self.parameters())
            if non_embedding:
                n_params -= self.transformer.wpe.weight.numel()
            return n_params

        def _init_weights(self, module):
            if isinstance(module, nn.Linear):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

        def forward(self, idx, targets=None):
            device = idx.device
            b, t = idx.size()
            assert t <= self.config.block_size, f"Cannot forward sequence of length {t}, block size is only {self.config.block_size}"
            pos = torch.arange(0, t, dtype=torch.long, device=device)
            tok_emb = self.transformer.wte(idx)
            pos_emb = self.transformer.wpe(pos)
            x = self.transformer.drop(tok_emb + pos_emb)
            for block in self.transformer.h:
                x = block(x)
            x = self.transformer.ln_f(x)
            if targets is not None:
                logits = self.lm_head(x)
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            else:
                # inference-time mini-optimization: only forward the lm_head on the very last position
                logits = self.lm_head(x[:, [-1], :])
                loss = None
            return logits, loss
'''

NANOGPT_ARGS = dict(n_layer=2, n_head=4, n_embd=32, block_size=CONTEXT, bias=True, vocab_size=V, dropout=0.0)


def _nanogpt_checkpoint(folder: Path, seed: int):
    _write(folder, {"model.py": NANOGPT})
    mod = _import(folder, "model")
    torch.manual_seed(seed)
    model = mod.GPT(mod.GPTConfig(**NANOGPT_ARGS))
    _shake(model, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    opt.zero_grad()
    train_config = {"out_dir": "out-shakespeare-char", "batch_size": 64, "learning_rate": 1e-3, "device": "cuda",
                    "dtype": "bfloat16", "compile": True, **NANOGPT_ARGS}
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "model_args": NANOGPT_ARGS,
                "iter_num": 5000, "best_val_loss": 1.47, "config": train_config}, folder / "ckpt.pt")
    model.eval()
    return lambda ids: model(ids, torch.zeros_like(ids))[0]  # nanoGPT's own full-sequence forward (estimate_loss)


def nanogpt(folder: Path):
    own = _nanogpt_checkpoint(folder, 1)
    _toml(folder, "model.py:GPT", "ckpt.pt")
    return own


def nanogpt_broken(folder: Path):
    """nanoGPT's weights beside a model file that cannot be imported here (flash-attn is not installed)."""
    own = _nanogpt_checkpoint(folder, 2)
    (folder / "model.py").write_text("from flash_attn import flash_attn_func\n" + (folder / "model.py").read_text())
    _toml(folder, "model.py:GPT", "ckpt.pt")
    return own


# --- minGPT ---------------------------------------------------------------------------------------

MINGPT_UTILS = '''
    class CfgNode:
        """ a lightweight configuration class inspired by yacs """

        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

        def __str__(self):
            return str(self.__dict__)

        def merge_from_dict(self, d):
            self.__dict__.update(d)

        def to_dict(self):
            return {k: v.to_dict() if isinstance(v, CfgNode) else v for k, v in self.__dict__.items()}
'''

MINGPT_MODEL = '''
    """
    Full definition of a GPT Language Model, all of it in this single file.
    """

    import math

    import torch
    import torch.nn as nn
    from torch.nn import functional as F

    from mingpt.utils import CfgNode as CN


    class NewGELU(nn.Module):
        def forward(self, x):
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


    class CausalSelfAttention(nn.Module):

        def __init__(self, config):
            super().__init__()
            assert config.n_embd % config.n_head == 0
            self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
            self.c_proj = nn.Linear(config.n_embd, config.n_embd)
            self.attn_dropout = nn.Dropout(config.attn_pdrop)
            self.resid_dropout = nn.Dropout(config.resid_pdrop)
            self.register_buffer("bias", torch.tril(torch.ones(config.block_size, config.block_size))
                                         .view(1, 1, config.block_size, config.block_size))
            self.n_head = config.n_head
            self.n_embd = config.n_embd

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf'))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            y = self.resid_dropout(self.c_proj(y))
            return y


    class Block(nn.Module):

        def __init__(self, config):
            super().__init__()
            self.ln_1 = nn.LayerNorm(config.n_embd)
            self.attn = CausalSelfAttention(config)
            self.ln_2 = nn.LayerNorm(config.n_embd)
            self.mlp = nn.ModuleDict(dict(
                c_fc=nn.Linear(config.n_embd, 4 * config.n_embd),
                c_proj=nn.Linear(4 * config.n_embd, config.n_embd),
                act=NewGELU(),
                dropout=nn.Dropout(config.resid_pdrop),
            ))
            m = self.mlp
            self.mlpf = lambda x: m.dropout(m.c_proj(m.act(m.c_fc(x))))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            x = x + self.mlpf(self.ln_2(x))
            return x


    class GPT(nn.Module):
        """ GPT Language Model """

        @staticmethod
        def get_default_config():
            C = CN()
            # either model_type or (n_layer, n_head, n_embd) must be given in the config
            C.model_type = 'gpt'
            C.n_layer = None
            C.n_head = None
            C.n_embd = None
            C.vocab_size = None
            C.block_size = None
            C.embd_pdrop = 0.1
            C.resid_pdrop = 0.1
            C.attn_pdrop = 0.1
            return C

        def __init__(self, config):
            super().__init__()
            assert config.vocab_size is not None
            assert config.block_size is not None
            self.block_size = config.block_size
            type_given = config.model_type is not None
            params_given = all([config.n_layer is not None, config.n_head is not None, config.n_embd is not None])
            assert type_given ^ params_given  # exactly one of these (XOR)
            if type_given:
                config.merge_from_dict({
                    'gpt-mini': dict(n_layer=6, n_head=6, n_embd=192),
                    'gpt-micro': dict(n_layer=4, n_head=4, n_embd=128),
                    'gpt-nano': dict(n_layer=3, n_head=3, n_embd=48),
                }[config.model_type])
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.embd_pdrop),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd),
            ))
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.apply(self._init_weights)
            for pn, p in self.named_parameters():
                if pn.endswith('c_proj.weight'):
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
            n_params = sum(p.numel() for p in self.transformer.parameters())
            print("number of parameters: %.2fM" % (n_params / 1e6,))

        def _init_weights(self, module):
            if isinstance(module, nn.Linear):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                torch.nn.init.zeros_(module.bias)
                torch.nn.init.ones_(module.weight)

        def forward(self, idx, targets=None):
            device = idx.device
            b, t = idx.size()
            assert t <= self.block_size, f"Cannot forward sequence of length {t}, block size is only {self.block_size}"
            pos = torch.arange(0, t, dtype=torch.long, device=device).unsqueeze(0)
            tok_emb = self.transformer.wte(idx)
            pos_emb = self.transformer.wpe(pos)
            x = self.transformer.drop(tok_emb + pos_emb)
            for block in self.transformer.h:
                x = block(x)
            x = self.transformer.ln_f(x)
            logits = self.lm_head(x)
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            return logits, loss
'''


def mingpt(folder: Path):
    _write(folder, {"mingpt/__init__.py": "", "mingpt/utils.py": MINGPT_UTILS, "mingpt/model.py": MINGPT_MODEL})
    mod = _import(folder, "mingpt.model")
    config = mod.GPT.get_default_config()
    config.model_type = None
    config.n_layer, config.n_head, config.n_embd = 2, 2, 32
    config.vocab_size, config.block_size = V, CONTEXT
    torch.manual_seed(3)
    model = mod.GPT(config)
    _shake(model, 3)
    torch.save(model.state_dict(), folder / "model.pt")
    model.eval()
    _toml(folder, "mingpt/model.py:GPT", "model.pt",
          kwargs={"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": V, "block_size": CONTEXT})
    return lambda ids: model(ids)[0]


# --- ng-video-lecture -----------------------------------------------------------------------------

NG_VIDEO = '''
    import torch
    import torch.nn as nn
    from torch.nn import functional as F

    # hyperparameters
    batch_size = 16
    block_size = 32
    max_iters = 5000
    eval_interval = 500
    learning_rate = 3e-4
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    eval_iters = 200
    n_embd = 32
    n_head = 4
    n_layer = 2
    dropout = 0.2
    # ------------

    torch.manual_seed(1337)

    with open('input.txt', 'r', encoding='utf-8') as f:
        text = f.read()

    chars = sorted(list(set(text)))
    vocab_size = len(chars)
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    encode = lambda s: [stoi[c] for c in s]
    decode = lambda l: ''.join([itos[i] for i in l])


    class Head(nn.Module):
        """ one head of self-attention """

        def __init__(self, head_size):
            super().__init__()
            self.key = nn.Linear(n_embd, head_size, bias=False)
            self.query = nn.Linear(n_embd, head_size, bias=False)
            self.value = nn.Linear(n_embd, head_size, bias=False)
            self.register_buffer('tril', torch.tril(torch.ones(block_size, block_size)))
            self.dropout = nn.Dropout(dropout)

        def forward(self, x):
            B, T, C = x.shape
            k = self.key(x)
            q = self.query(x)
            wei = q @ k.transpose(-2, -1) * k.shape[-1]**-0.5
            wei = wei.masked_fill(self.tril[:T, :T] == 0, float('-inf'))
            wei = F.softmax(wei, dim=-1)
            wei = self.dropout(wei)
            v = self.value(x)
            out = wei @ v
            return out


    class MultiHeadAttention(nn.Module):
        """ multiple heads of self-attention in parallel """

        def __init__(self, num_heads, head_size):
            super().__init__()
            self.heads = nn.ModuleList([Head(head_size) for _ in range(num_heads)])
            self.proj = nn.Linear(head_size * num_heads, n_embd)
            self.dropout = nn.Dropout(dropout)

        def forward(self, x):
            out = torch.cat([h(x) for h in self.heads], dim=-1)
            out = self.dropout(self.proj(out))
            return out


    class FeedFoward(nn.Module):
        """ a simple linear layer followed by a non-linearity """

        def __init__(self, n_embd):
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(n_embd, 4 * n_embd),
                nn.ReLU(),
                nn.Linear(4 * n_embd, n_embd),
                nn.Dropout(dropout),
            )

        def forward(self, x):
            return self.net(x)


    class Block(nn.Module):
        """ Transformer block: communication followed by computation """

        def __init__(self, n_embd, n_head):
            super().__init__()
            head_size = n_embd // n_head
            self.sa = MultiHeadAttention(n_head, head_size)
            self.ffwd = FeedFoward(n_embd)
            self.ln1 = nn.LayerNorm(n_embd)
            self.ln2 = nn.LayerNorm(n_embd)

        def forward(self, x):
            x = x + self.sa(self.ln1(x))
            x = x + self.ffwd(self.ln2(x))
            return x


    class GPTLanguageModel(nn.Module):

        def __init__(self):
            super().__init__()
            self.token_embedding_table = nn.Embedding(vocab_size, n_embd)
            self.position_embedding_table = nn.Embedding(block_size, n_embd)
            self.blocks = nn.Sequential(*[Block(n_embd, n_head=n_head) for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(n_embd)
            self.lm_head = nn.Linear(n_embd, vocab_size)
            self.apply(self._init_weights)

        def _init_weights(self, module):
            if isinstance(module, nn.Linear):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

        def forward(self, idx, targets=None):
            B, T = idx.shape
            tok_emb = self.token_embedding_table(idx)
            pos_emb = self.position_embedding_table(torch.arange(T, device=device))
            x = tok_emb + pos_emb
            x = self.blocks(x)
            x = self.ln_f(x)
            logits = self.lm_head(x)
            if targets is None:
                loss = None
            else:
                B, T, C = logits.shape
                logits = logits.view(B*T, C)
                targets = targets.view(B*T)
                loss = F.cross_entropy(logits, targets)
            return logits, loss


    if __name__ == "__main__":
        model = GPTLanguageModel().to(device)
        print(sum(p.numel() for p in model.parameters()) / 1e6, 'M parameters')
'''


def ng_video(folder: Path):
    _write(folder, {"gpt.py": NG_VIDEO})
    (folder / "input.txt").write_text(TEXT, encoding="utf-8")
    import os

    cwd = os.getcwd()
    os.chdir(folder)  # the module reads input.txt from where it runs
    try:
        mod = _import(folder, "gpt")
    finally:
        os.chdir(cwd)
    model = mod.GPTLanguageModel()
    _shake(model, 4)
    torch.save(model.state_dict(), folder / "model.pt")
    model.eval()
    _toml(folder, "gpt.py:GPTLanguageModel", "model.pt")
    return lambda ids: model(ids)[0]


# --- LLMs-from-scratch ----------------------------------------------------------------------------

LLMS = '''
    import torch
    import torch.nn as nn

    GPT_CONFIG_124M = {
        "vocab_size": 50257,     # Vocabulary size
        "context_length": 1024,  # Context length
        "emb_dim": 768,          # Embedding dimension
        "n_heads": 12,           # Number of attention heads
        "n_layers": 12,          # Number of layers
        "drop_rate": 0.1,        # Dropout rate
        "qkv_bias": False        # Query-Key-Value bias
    }


    class MultiHeadAttention(nn.Module):
        def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
            super().__init__()
            assert d_out % num_heads == 0, "d_out must be divisible by num_heads"
            self.d_out = d_out
            self.num_heads = num_heads
            self.head_dim = d_out // num_heads
            self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
            self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
            self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
            self.out_proj = nn.Linear(d_out, d_out)
            self.dropout = nn.Dropout(dropout)
            self.register_buffer("mask", torch.triu(torch.ones(context_length, context_length), diagonal=1))

        def forward(self, x):
            b, num_tokens, d_in = x.shape
            keys = self.W_key(x)
            queries = self.W_query(x)
            values = self.W_value(x)
            keys = keys.view(b, num_tokens, self.num_heads, self.head_dim)
            values = values.view(b, num_tokens, self.num_heads, self.head_dim)
            queries = queries.view(b, num_tokens, self.num_heads, self.head_dim)
            keys = keys.transpose(1, 2)
            queries = queries.transpose(1, 2)
            values = values.transpose(1, 2)
            attn_scores = queries @ keys.transpose(2, 3)
            mask_bool = self.mask.bool()[:num_tokens, :num_tokens]
            attn_scores.masked_fill_(mask_bool, -torch.inf)
            attn_weights = torch.softmax(attn_scores / keys.shape[-1]**0.5, dim=-1)
            attn_weights = self.dropout(attn_weights)
            context_vec = (attn_weights @ values).transpose(1, 2)
            context_vec = context_vec.contiguous().view(b, num_tokens, self.d_out)
            context_vec = self.out_proj(context_vec)
            return context_vec


    class LayerNorm(nn.Module):
        def __init__(self, emb_dim):
            super().__init__()
            self.eps = 1e-5
            self.scale = nn.Parameter(torch.ones(emb_dim))
            self.shift = nn.Parameter(torch.zeros(emb_dim))

        def forward(self, x):
            mean = x.mean(dim=-1, keepdim=True)
            var = x.var(dim=-1, keepdim=True, unbiased=False)
            norm_x = (x - mean) / torch.sqrt(var + self.eps)
            return self.scale * norm_x + self.shift


    class GELU(nn.Module):
        def __init__(self):
            super().__init__()

        def forward(self, x):
            return 0.5 * x * (1 + torch.tanh(
                torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))
            ))


    class FeedForward(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
                GELU(),
                nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
            )

        def forward(self, x):
            return self.layers(x)


    class TransformerBlock(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.att = MultiHeadAttention(
                d_in=cfg["emb_dim"],
                d_out=cfg["emb_dim"],
                context_length=cfg["context_length"],
                num_heads=cfg["n_heads"],
                dropout=cfg["drop_rate"],
                qkv_bias=cfg["qkv_bias"])
            self.ff = FeedForward(cfg)
            self.norm1 = LayerNorm(cfg["emb_dim"])
            self.norm2 = LayerNorm(cfg["emb_dim"])
            self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

        def forward(self, x):
            shortcut = x
            x = self.norm1(x)
            x = self.att(x)
            x = self.drop_shortcut(x)
            x = x + shortcut
            shortcut = x
            x = self.norm2(x)
            x = self.ff(x)
            x = self.drop_shortcut(x)
            x = x + shortcut
            return x


    class GPTModel(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
            self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
            self.drop_emb = nn.Dropout(cfg["drop_rate"])
            self.trf_blocks = nn.Sequential(
                *[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
            self.final_norm = LayerNorm(cfg["emb_dim"])
            self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

        def forward(self, in_idx):
            batch_size, seq_len = in_idx.shape
            tok_embeds = self.tok_emb(in_idx)
            pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))
            x = tok_embeds + pos_embeds
            x = self.drop_emb(x)
            x = self.trf_blocks(x)
            x = self.final_norm(x)
            logits = self.out_head(x)
            return logits
'''

LLMS_CFG = {"vocab_size": V, "context_length": CONTEXT, "emb_dim": 32, "n_heads": 4, "n_layers": 8}


def llms_from_scratch(folder: Path):
    """Eight layers: outside the course's 1–6, which the architecture criterion must now see."""
    _write(folder, {"gpt_model.py": LLMS})
    mod = _import(folder, "gpt_model")
    torch.manual_seed(5)
    model = mod.GPTModel({**mod.GPT_CONFIG_124M, **LLMS_CFG})
    _shake(model, 5)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()},
               folder / "model_and_optimizer.pth")
    _toml(folder, "gpt_model.py:GPTModel", "model_and_optimizer.pth", kwargs=LLMS_CFG)
    model.eval()
    return model


# --- CS336-style, one sequence at a time -----------------------------------------------------------

CS336 = '''
    import math

    import torch
    import torch.nn as nn


    class Linear(nn.Module):
        def __init__(self, in_features, out_features, device=None, dtype=None):
            super().__init__()
            std = math.sqrt(2 / (in_features + out_features))
            self.weight = nn.Parameter(nn.init.trunc_normal_(torch.empty(out_features, in_features), std=std,
                                                             a=-3 * std, b=3 * std))

        def forward(self, x):
            return x @ self.weight.T


    class Embedding(nn.Module):
        def __init__(self, num_embeddings, embedding_dim, device=None, dtype=None):
            super().__init__()
            self.weight = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_embeddings, embedding_dim), a=-3, b=3))

        def forward(self, token_ids):
            return self.weight[token_ids]


    class RMSNorm(nn.Module):
        def __init__(self, d_model, eps=1e-5, device=None, dtype=None):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(d_model))

        def forward(self, x):
            in_dtype = x.dtype
            x = x.to(torch.float32)
            rms = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
            return (x / rms * self.weight).to(in_dtype)


    class RotaryPositionalEmbedding(nn.Module):
        def __init__(self, theta, d_k, max_seq_len, device=None):
            super().__init__()
            freqs = theta ** (-torch.arange(0, d_k, 2).float() / d_k)
            angles = torch.arange(max_seq_len).float()[:, None] * freqs[None, :]
            self.register_buffer("cos", angles.cos(), persistent=False)
            self.register_buffer("sin", angles.sin(), persistent=False)

        def forward(self, x, token_positions):
            cos, sin = self.cos[token_positions], self.sin[token_positions]
            x1, x2 = x[..., 0::2], x[..., 1::2]
            out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
            return out.flatten(-2)


    def softmax(x, dim):
        x = x - x.max(dim=dim, keepdim=True).values
        e = torch.exp(x)
        return e / e.sum(dim=dim, keepdim=True)


    class MultiheadSelfAttention(nn.Module):
        """Written for one sequence [T, d_model] at a time: what generate() feeds it."""

        def __init__(self, d_model, num_heads, max_seq_len, theta):
            super().__init__()
            self.num_heads = num_heads
            self.d_k = d_model // num_heads
            self.q_proj = Linear(d_model, d_model)
            self.k_proj = Linear(d_model, d_model)
            self.v_proj = Linear(d_model, d_model)
            self.output_proj = Linear(d_model, d_model)
            self.rope = RotaryPositionalEmbedding(theta, self.d_k, max_seq_len)

        def forward(self, x):
            T = x.shape[-2]
            heads = lambda t: t.reshape(T, self.num_heads, self.d_k).transpose(0, 1)  # [H, T, d_k]
            pos = torch.arange(T)
            q = self.rope(heads(self.q_proj(x)), pos)
            k = self.rope(heads(self.k_proj(x)), pos)
            v = heads(self.v_proj(x))
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)
            mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
            att = softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
            return self.output_proj((att @ v).transpose(0, 1).reshape(T, -1))


    class SwiGLU(nn.Module):
        def __init__(self, d_model, d_ff):
            super().__init__()
            self.w1 = Linear(d_model, d_ff)
            self.w2 = Linear(d_ff, d_model)
            self.w3 = Linear(d_model, d_ff)

        def forward(self, x):
            a = self.w1(x)
            return self.w2(a * torch.sigmoid(a) * self.w3(x))


    class TransformerBlock(nn.Module):
        def __init__(self, d_model, num_heads, d_ff, max_seq_len, theta):
            super().__init__()
            self.ln1 = RMSNorm(d_model)
            self.attn = MultiheadSelfAttention(d_model, num_heads, max_seq_len, theta)
            self.ln2 = RMSNorm(d_model)
            self.ffn = SwiGLU(d_model, d_ff)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.ffn(self.ln2(x))


    class TransformerLM(nn.Module):
        def __init__(self, vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta=10000.0,
                     device=None, dtype=None):
            super().__init__()
            self.context_length = context_length
            self.token_embeddings = Embedding(vocab_size, d_model)
            self.layers = nn.ModuleList([TransformerBlock(d_model, num_heads, d_ff, context_length, rope_theta)
                                         for _ in range(num_layers)])
            self.ln_final = RMSNorm(d_model)
            self.lm_head = Linear(d_model, vocab_size)

        def forward(self, in_indices):
            x = self.token_embeddings(in_indices.squeeze(0))  # one sequence: [T, d_model]
            for layer in self.layers:
                x = layer(x)
            return self.lm_head(self.ln_final(x)).unsqueeze(0)
'''

CS336_CFG = {"vocab_size": V, "context_length": CONTEXT, "d_model": 32, "num_layers": 2, "num_heads": 4,
             "d_ff": 88, "rope_theta": 10000.0}


def cs336_one_at_a_time(folder: Path):
    _write(folder, {"cs336_basics/__init__.py": "", "cs336_basics/model.py": CS336})
    mod = _import(folder, "cs336_basics.model")
    torch.manual_seed(6)
    model = mod.TransformerLM(**CS336_CFG)
    _shake(model, 6)
    model.eval()
    compiled_names = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": compiled_names, "iteration": 1200, "config": {**CS336_CFG, "batch_size": 32, "lr": 1e-3,
                                                                        "device": "cuda:0"}}, folder / "checkpoint.pt")
    _toml(folder, "cs336_basics/model.py:TransformerLM", "checkpoint.pt")
    return lambda ids: torch.cat([model(ids[i:i + 1]) for i in range(ids.shape[0])])


# --- a package with relative imports and a dict output ------------------------------------------------

PKG = {
    "pyproject.toml": """
        [project]
        name = "tinylm"
        version = "0.3.1"
    """,
    "tinylm/__init__.py": """
        from importlib.metadata import version

        __version__ = version("tinylm")

        from .model import TinyLM
    """,
    "tinylm/layers.py": """
        import torch
        import torch.nn as nn
        import torch.nn.functional as F


        class Mixer(nn.Module):
            def __init__(self, width, groups):
                super().__init__()
                self.groups = groups
                self.qkv = nn.Linear(width, 3 * width)
                self.out = nn.Linear(width, width)

            def forward(self, x):
                B, T, C = x.shape
                q, k, v = self.qkv(x).view(B, T, 3, self.groups, C // self.groups).permute(2, 0, 3, 1, 4)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                return self.out(y.transpose(1, 2).reshape(B, T, C))


        class Cell(nn.Module):
            def __init__(self, width, groups):
                super().__init__()
                self.n1, self.n2 = nn.LayerNorm(width), nn.LayerNorm(width)
                self.mix = Mixer(width, groups)
                self.up, self.down = nn.Linear(width, 3 * width), nn.Linear(3 * width, width)

            def forward(self, x):
                x = x + self.mix(self.n1(x))
                return x + self.down(F.silu(self.up(self.n2(x))))
    """,
    "tinylm/model.py": """
        import torch
        import torch.nn as nn

        from . import __version__
        from .layers import Cell


        class TinyLM(nn.Module):
            def __init__(self, vocab, width=64, depth=2, groups=4, span=128):
                super().__init__()
                self.version = __version__
                self.emb = nn.Embedding(vocab, width)
                self.place = nn.Parameter(torch.zeros(span, width))
                self.cells = nn.ModuleList([Cell(width, groups) for _ in range(depth)])
                self.norm = nn.LayerNorm(width)
                self.read = nn.Linear(width, vocab)

            def forward(self, ids, labels=None):
                x = self.emb(ids) + self.place[: ids.shape[1]]
                for cell in self.cells:
                    x = cell(x)
                x = self.norm(x)
                return {"hidden": x, "logits": self.read(x)}
    """,
}
PKG_KWARGS = {"vocab": V, "width": 32, "depth": 2, "groups": 4, "span": CONTEXT, "colour": "blue"}


def package(folder: Path):
    (folder / "pyproject.toml").parent.mkdir(parents=True, exist_ok=True)
    _write(folder, PKG)
    import importlib.metadata as md

    real_version = md.version
    md.version = lambda name: "0.3.1" if name == "tinylm" else real_version(name)  # as if pip install -e .
    try:
        mod = _import(folder, "tinylm")
    finally:
        md.version = real_version
    torch.manual_seed(7)
    model = mod.TinyLM(**{k: v for k, v in PKG_KWARGS.items() if k != "colour"})
    _shake(model, 7)
    torch.save(model.state_dict(), folder / "weights.pt")
    model.eval()
    _toml(folder, "tinylm:TinyLM", "weights.pt", kwargs=PKG_KWARGS)
    return lambda ids: model(ids)["logits"]


SUBMISSIONS = {"nanogpt": nanogpt, "nanogpt_broken": nanogpt_broken, "mingpt": mingpt, "ng_video": ng_video,
               "llms_from_scratch": llms_from_scratch, "cs336": cs336_one_at_a_time, "package": package}


class OwnForward:
    """The student's own forward in this process, as the evaluator's model."""

    def __init__(self, forward, n_outputs: int):
        self.forward, self.n_outputs, self.max_positions = forward, n_outputs, CONTEXT

    def logits(self, input_ids, attention_mask=None):
        with torch.no_grad():
            return self.forward(input_ids)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("student-code")
    (root / "data.txt").write_text(TEXT, encoding="utf-8")
    (root / "vocab.txt").write_text("".join(VOCAB), encoding="utf-8")
    course_text = default_course_text()
    for old, new in ((('source = "wiki-vital"'), f'source = "{root / "data.txt"}"'),
                     ('tokenizer = "gpt2"', f'tokenizer = "char:{root / "vocab.txt"}"'),
                     ("context = 64 ", f"context = {CONTEXT} "), ("d_model = [64, 256]", "d_model = [16, 256]")):
        assert old in course_text, old
        course_text = course_text.replace(old, new, 1)
    (root / "course.toml").write_text(course_text)
    course = load_course(root / "course.toml")
    tok = get_tokenizer(f"char:{root / 'vocab.txt'}")
    split = freeze(load_source(str(root / "data.txt")), tok).split("validation")
    own, measured, forwards = {}, [], {}
    for sid, build in SUBMISSIONS.items():
        folder = root / "class" / sid
        folder.mkdir(parents=True)
        forward = forwards[sid] = build(folder)
        own[sid] = evaluate_clm(OwnForward(forward, V), split, tok, context=CONTEXT).loss
        measured.append(measure(Job(id=sid, paths=[str(folder)], course_path=str(root / "course.toml"))))
    report = assemble(course, measured, References(), root / "cache", []).to_json()
    return {"own": own, "results": {m.id: m.to_json() for m in measured},
            "graded": {s["id"]: s for s in report["submissions"]}, "forwards": forwards, "course": course,
            "tokenizer": tok}


def _criterion(sub: dict, kind_name: str) -> dict:
    return next(c for c in sub["score"]["criteria"] if c["name"] == kind_name)


ARCH = "Architecture meets the requirements"


@pytest.mark.slow  # seven submissions graded end to end: a reader and a sandbox process each
@pytest.mark.parametrize("sid", sorted(set(SUBMISSIONS) - {"nanogpt_broken"}))
def test_student_code_is_graded_through_the_sandbox_to_its_own_loss(graded, sid):
    r = graded["results"][sid]
    assert r["status"] == "graded", r["error"]
    assert r["checkpoint"]["layout"] == "custom-code"
    assert r["metrics"]["loss"] == pytest.approx(graded["own"][sid], rel=1e-6)
    assert r["causal"]["ok"]


@pytest.mark.slow  # seven submissions graded end to end: a reader and a sandbox process each
@pytest.mark.parametrize("sid", ["nanogpt", "cs336"])
def test_student_code_writes_its_samples_through_the_sandbox(graded, sid):
    """The course's prompts continued by the sandboxed code (cs336's forward runs one window at a time) are
    the continuations its own forward writes in this process, and reach the graded result."""
    from harness.metrics.samples import continue_prompts

    course = graded["course"]
    own = continue_prompts(OwnForward(graded["forwards"][sid], V), graded["tokenizer"], course.samples,
                           context=CONTEXT).to_dict()
    got = graded["results"][sid]["samples"]
    assert got == own and graded["graded"][sid]["samples"] == own
    assert any(c["greedy_tokens"] == course.samples.max_new_tokens for c in got["continuations"])


EXPECTED_ARCH = {
    "nanogpt": dict(n_layers=2, d_model=32, n_heads=4, context=CONTEXT, d_ff=128, vocab_size=V),
    "mingpt": dict(n_layers=2, d_model=32, n_heads=2, context=CONTEXT, d_ff=128, vocab_size=V),
    "ng_video": dict(n_layers=2, d_model=32, n_heads=4, context=CONTEXT, d_ff=128, vocab_size=V),
    "llms_from_scratch": dict(n_layers=8, d_model=32, n_heads=4, context=CONTEXT, d_ff=128, vocab_size=V),
    "cs336": dict(n_layers=2, d_model=32, n_heads=4, context=CONTEXT, d_ff=88, vocab_size=V),
    "package": dict(n_layers=2, d_model=32, n_heads=None, context=CONTEXT, d_ff=96, vocab_size=V),
}


@pytest.mark.slow  # seven submissions graded end to end: a reader and a sandbox process each
@pytest.mark.parametrize("sid", sorted(EXPECTED_ARCH))
def test_the_architecture_of_custom_code_is_read_with_its_sources(graded, sid):
    model = graded["results"][sid]["model"]
    assert {k: model[k] for k in EXPECTED_ARCH[sid]} == EXPECTED_ARCH[sid]
    for k, v in EXPECTED_ARCH[sid].items():
        assert (model["sources"][k] == "not verified") == (v is None), (k, model["sources"][k])


@pytest.mark.slow  # seven submissions graded end to end: a reader and a sandbox process each
def test_how_each_class_was_built_is_recorded(graded):
    built = {sid: graded["results"][sid]["model"]["built"] for sid in EXPECTED_ARCH}
    assert built["nanogpt"]["how"] == "GPTConfig(...)"
    assert built["nanogpt"]["from"]["n_layer"] == "checkpoint config"  # model_args, not the training config
    assert "device" not in built["nanogpt"]["values"]
    assert built["mingpt"]["how"].startswith("GPT.get_default_config() with model_type None")
    assert built["ng_video"]["how"].startswith("no arguments")
    assert built["llms_from_scratch"]["how"] == "a dict"
    assert built["llms_from_scratch"]["values"]["n_layers"] == 8
    assert built["cs336"]["how"] == "keywords" and built["cs336"]["values"]["d_ff"] == 88
    assert built["package"]["dropped"] == ["colour"]


@pytest.mark.slow  # seven submissions graded end to end: a reader and a sandbox process each
def test_how_forward_was_called_is_said(graded):
    notes = {sid: " ".join(graded["results"][sid]["warnings"]) for sid in EXPECTED_ARCH}
    assert "only the last position's logits" in notes["nanogpt"] and "targets" in notes["nanogpt"]
    assert "failed" in notes["cs336"] and "every window was run alone" in notes["cs336"]
    assert "tinylm 0.3.1" in notes["package"]
    assert "run alone" not in notes["ng_video"] + notes["nanogpt"] + notes["mingpt"]


@pytest.mark.slow  # seven submissions graded end to end: a reader and a sandbox process each
def test_what_cannot_be_verified_earns_no_architecture_points(graded):
    subs = graded["graded"]
    for sid in ("nanogpt", "mingpt", "ng_video", "cs336"):
        assert _criterion(subs[sid], ARCH)["points"] == _criterion(subs[sid], ARCH)["max"], sid
    package = _criterion(subs["package"], ARCH)
    assert package["points"] == pytest.approx(package["max"] * 3 / 4)
    assert "not verified: n_heads" in package["why"]
    llms = _criterion(subs["llms_from_scratch"], ARCH)
    assert llms["points"] == 0 and "n_layers = 8" in llms["why"]
    assert "arch-requirements" in {f["code"] for f in subs["llms_from_scratch"]["findings"]}


@pytest.mark.slow  # seven submissions graded end to end: a reader and a sandbox process each
def test_broken_code_beside_recognisable_weights_is_graded_through_the_layout(graded):
    r = graded["results"]["nanogpt_broken"]
    assert r["status"] == "graded" and r["checkpoint"]["layout"] == "nanogpt"
    assert r["metrics"]["loss"] == pytest.approx(graded["own"]["nanogpt_broken"], rel=1e-6)
    findings = {f["code"]: f for f in graded["graded"]["nanogpt_broken"]["findings"]}
    assert findings["model-code-fallback"]["severity"] == "warning"
    assert "flash_attn" in findings["model-code-fallback"]["message"]
    assert "model-code-failed" not in findings


# --- the pieces that run inside the sandbox, in this process (fast) -----------------------------------


def _module(tmp_path: Path, name: str, text: str):
    from harness.sandbox.student_class import import_class

    (tmp_path / f"{name}.py").write_text(textwrap.dedent(text).lstrip())
    return import_class(tmp_path, f"{name}.py:Model", tmp_path / "scratch")


def test_a_string_annotated_config_dataclass_is_built_from_the_values(tmp_path):
    from harness.sandbox.student_class import construct

    cls, module, _ = _module(tmp_path, "annotated", """
        from __future__ import annotations
        from dataclasses import dataclass
        import torch.nn as nn

        @dataclass
        class Hyper:
            width: int = 8
            depth: int = 1

        class Model(nn.Module):
            def __init__(self, hp: Hyper, extra: int = 0):
                super().__init__()
                self.hp, self.extra = hp, extra
                self.layers = nn.ModuleList([nn.Linear(hp.width, hp.width) for _ in range(hp.depth)])
    """)
    model, account = construct(cls, module, {"width": 16, "lr": 0.1}, {}, {"depth": 3, "extra": 2, "bogus": 1})
    assert (model.hp.width, model.hp.depth, model.extra) == (16, 3, 2)
    assert account["how"] == "Hyper(...)" and account["dropped"] == ["bogus"]
    assert account["from"]["width"] == "checkpoint config" and account["from"]["depth"].endswith("[model.kwargs]")


def test_a_constructor_that_lacks_a_value_says_which(tmp_path):
    from harness.sandbox.student_class import construct

    cls, module, _ = _module(tmp_path, "needs", """
        import torch.nn as nn

        class Model(nn.Module):
            def __init__(self, vocab_size, d_model, device=None):
                super().__init__()
    """)
    with pytest.raises(TypeError, match="Model needs d_model"):
        construct(cls, module, {"vocab_size": 10, "device": "cuda"}, {}, {})


def test_a_forward_that_disagrees_at_batch_above_one_runs_one_window_at_a_time():
    """A model that normalises over the batch (a BatchNorm-style slip) gives other logits in a batch."""
    from harness.sandbox.student_class import Caller

    class Leaky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(7, 7)

        def forward(self, idx):
            x = self.emb(idx)
            return x - x.mean(0, keepdim=True) + x.mean(0, keepdim=True).detach() * (idx.shape[0] == 1)

    torch.manual_seed(0)
    model = Leaky().eval()
    caller = Caller(model)
    ids = torch.randint(0, 7, (3, 5))
    got = caller.logits(ids)
    assert caller.one_at_a_time and "gave other logits" in caller.notes[0]
    with torch.no_grad():
        assert torch.equal(got, torch.cat([model(ids[i:i + 1]) for i in range(3)]))
    assert torch.equal(caller.logits(ids), got)  # remembered for the rest of the run


def test_a_model_output_is_read_and_logits_that_are_not_numbers_are_refused():
    from transformers.modeling_outputs import CausalLMOutput

    from harness.sandbox.student_class import Caller

    class HF(torch.nn.Module):
        def forward(self, idx):
            return CausalLMOutput(logits=torch.ones(*idx.shape, 4))

    class Ints(torch.nn.Module):
        def forward(self, idx):
            return idx[..., None].repeat(1, 1, 4)

    class NaNs(torch.nn.Module):
        def forward(self, idx):
            return torch.full((*idx.shape, 4), float("nan"))

    assert Caller(HF()).logits(torch.zeros(2, 3, dtype=torch.long)).shape == (2, 3, 4)
    with pytest.raises(TypeError, match="not floating point"):
        Caller(Ints()).logits(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        Caller(NaNs()).logits(torch.zeros(1, 3, dtype=torch.long))


def test_nan_logits_from_nan_weights_are_left_to_the_weights_finding():
    from harness.sandbox.student_class import Caller

    model = torch.nn.Sequential(torch.nn.Embedding(5, 4))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    assert torch.isnan(Caller(model).logits(torch.zeros(1, 3, dtype=torch.long))).any()


def test_a_file_in_a_plain_folder_imports_its_neighbours(tmp_path):
    from harness.sandbox.student_class import import_class

    _write(tmp_path, {"src/layers.py": "WIDTH = 3\n",
                      "src/net.py": "import torch.nn as nn\nfrom layers import WIDTH\n\n"
                                    "class Net(nn.Module):\n    width = WIDTH\n"})
    cls, _, _ = import_class(tmp_path, "src/net.py:Net", tmp_path / "scratch")
    assert cls.width == 3


@pytest.mark.slow  # a reader and a sandbox process
def test_harness_inspect_shows_how_the_code_was_built(tmp_path, run_cli):
    package(tmp_path / "sub")
    proc = run_cli("inspect", tmp_path / "sub", check=0)
    text = " ".join(proc.stdout.split())
    rows = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("│")}
    assert "built by keywords" in text
    assert "None" in rows["n_heads"] and "not verified" in rows["n_heads"]
    assert "module structure (cells: 2 blocks)" in rows["n_layers"]
    assert "[model.kwargs] keys the class has no place for: colour" in text
    assert "tinylm 0.3.1" in text


def test_code_that_imports_einops_and_jaxtyping_runs_in_the_sandbox(tmp_path):
    """CS336's assignment-1 code imports einops and jaxtyping; the sandbox runs student code with the
    harness's own environment, so both are dependencies. Logits through the sandbox equal the class's own."""
    from harness.sandbox.run import SandboxedModel

    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "model.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn
        from einops import einsum, rearrange
        from jaxtyping import Float, Int

        class Model(nn.Module):
            def __init__(self, vocab_size: int = 50, d_model: int = 8):
                super().__init__()
                self.token_embeddings = nn.Parameter(torch.randn(vocab_size, d_model))
                self.lm_head = nn.Parameter(torch.randn(vocab_size, d_model))

            def forward(self, ids: Int[torch.Tensor, "b t"]) -> Float[torch.Tensor, "b t v"]:
                x = self.token_embeddings[ids]
                x = rearrange(rearrange(x, "b t d -> (b t) d"), "(b t) d -> b t d", b=ids.shape[0])
                return einsum(x, self.lm_head, "b t d, v d -> b t v")
    """).lstrip())
    spec = importlib.util.spec_from_file_location("einops_student_model", sub / "model.py")
    student = importlib.util.module_from_spec(spec)  # the same file, imported here for its own forward
    spec.loader.exec_module(student)
    torch.manual_seed(0)
    own = student.Model()
    ids = torch.randint(0, 50, (2, 5))
    with SandboxedModel(sub, "model.py:Model", {k: v.detach().clone() for k, v in own.state_dict().items()}) as sm:
        got = sm.logits(ids)
    assert torch.allclose(got, own(ids).detach(), atol=1e-6, rtol=0)
