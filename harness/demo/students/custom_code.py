"""Submissions with their own model code, which only the sandbox may run: custom_code (a clean
`TinyTransformer` named by `[model] code`), and the same file with a forward that crashes (custom_crash) or
never returns (custom_loop)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from harness.demo.students.common import (GPT2_VOCAB, Ctx, Scale, clean_loop, fix_output_bias, honest_val,
                                          lr_lambda, write_csv, write_text, write_toml)


# The custom-code student's own file. Its names are its own (no layout knows `lookup`, `cells`, `mix`):
# the grader can only run it, in the sandbox.
MODEL_PY = '''\
"""TinyTransformer: my own small causal LM for assignment 2."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Mixer(nn.Module):
    """Causal multi-head self-attention."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.wq = nn.Linear(width, width)
        self.wk = nn.Linear(width, width)
        self.wv = nn.Linear(width, width)
        self.wo = nn.Linear(width, width)

    def forward(self, x):
        B, T, C = x.shape
        split = lambda t: t.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(split(self.wq(x)), split(self.wk(x)), split(self.wv(x)), is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))


class Cell(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.before_mix = nn.LayerNorm(width)
        self.mix = Mixer(width, heads)
        self.before_think = nn.LayerNorm(width)
        self.think_in = nn.Linear(width, 4 * width)
        self.think_out = nn.Linear(4 * width, width)

    def forward(self, x):
        x = x + self.mix(self.before_mix(x))
        return x + self.think_out(F.gelu(self.think_in(self.before_think(x))))


class TinyTransformer(nn.Module):
    def __init__(self, vocab=50257, width=64, depth=2, heads=4, window=64):
        super().__init__()
        self.window = window
        self.lookup = nn.Embedding(vocab, width)
        self.where = nn.Embedding(window, width)
        self.cells = nn.ModuleList([Cell(width, heads) for _ in range(depth)])
        self.squash = nn.LayerNorm(width)
        self.readout = nn.Linear(width, vocab)  # bias: the token log-frequencies, set before training
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.lookup(idx) + self.where(torch.arange(T, device=idx.device))
        for cell in self.cells:
            x = cell(x)
        logits = self.readout(self.squash(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss
'''

_CRASH_FORWARD = '''

class Broken(TinyTransformer):
    def forward(self, idx, targets=None):
        logits, loss = super().forward(idx, targets)
        raise RuntimeError("shape mismatch in my attention after the refactor: " + str(tuple(logits.shape)))
'''

_LOOP_FORWARD = '''

class Stuck(TinyTransformer):
    def forward(self, idx, targets=None):
        while True:  # left in from debugging the sampler
            pass
'''


def load_custom(folder: Path, cls: str) -> type:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_example_{folder.name}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, cls)


def _custom_kwargs(sc: Scale) -> dict[str, int]:
    return {"vocab": GPT2_VOCAB, "width": sc.d_clean, "depth": 2, "heads": 4, "window": 64}


def custom_code(ctx: Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    (folder / "model.py").write_text(MODEL_PY, encoding="utf-8")
    g = ctx.seeded(7)
    kwargs = _custom_kwargs(sc)
    model = load_custom(folder, "TinyTransformer")(**kwargs)
    fix_output_bias(model.readout.bias, ctx.data.log_unigram(GPT2_VOCAB))
    lr, steps = 3e-3, sc.clean_steps
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, max(1, steps // 10)))
    losses: list[float] = []
    clean_loop(model, ctx, g, opt, sched, steps, lambda x: model(x)[0], lambda it, loss: losses.append(loss))
    val = honest_val(model, ctx.data, sc.eval_tokens)
    torch.save(model.state_dict(), folder / "weights.pt")
    write_csv(folder / "losses.csv", ["step", "train_loss"],
              [[i + 1, round(l, 4)] for i, l in enumerate(losses)])
    train_loss = float(np.mean(losses[-3:]))
    write_toml(folder / "submission.toml", {
        "submission": {"student": "Chloé Martin", "family": "gpt", "checkpoint": "weights.pt", "tokenizer": "gpt2"},
        "model": {"code": "model.py:TinyTransformer", "context": 64},
        "model.kwargs": kwargs,
        "claims": {"val_loss": round(val, 3), "val_ppl": round(math.exp(val), 1), "train_loss": round(train_loss, 3),
                   "log": "losses.csv"},
    })
    write_text(folder / "report.md", f"""
        # TinyTransformer

        My own causal transformer (`model.py`): token and position lookups, {kwargs['depth']} cells of causal
        attention ({kwargs['heads']} heads, width {kwargs['width']}) and a GELU feed-forward, a final LayerNorm
        and a linear readout whose bias is fixed at the training split's token log-frequencies (the model starts
        as the unigram model). Trained for {steps} steps on 64-token windows, AdamW {lr:g}.

        Validation loss {val:.3f} (perplexity {math.exp(val):,.0f}) on the course's validation split.
        """)


def _misbehaving(ctx: Ctx, sid: str, extra: str, cls: str, student: str, salt: int) -> None:
    folder = ctx.folder(sid)
    (folder / "model.py").write_text(MODEL_PY + extra, encoding="utf-8")
    kwargs = {**_custom_kwargs(ctx.scale), "width": 32}
    ctx.seeded(salt)
    model = load_custom(folder, cls)(**kwargs)
    torch.save(model.state_dict(), folder / "weights.pt")
    write_toml(folder / "submission.toml", {
        "submission": {"student": student, "family": "gpt", "checkpoint": "weights.pt"},
        "model": {"code": f"model.py:{cls}", "context": 64},
        "model.kwargs": kwargs,
        "claims": {"val_loss": 6.4, "val_ppl": 601.8},
    })


def custom_crash(ctx: Ctx, sid: str) -> None:
    _misbehaving(ctx, sid, _CRASH_FORWARD, "Broken", "Diego Alvarez", 10)


def custom_loop(ctx: Ctx, sid: str) -> None:
    _misbehaving(ctx, sid, _LOOP_FORWARD, "Stuck", "Ines Duarte", 11)
