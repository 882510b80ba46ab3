"""What every student builder shares: the two scales, the course's data as the students fed it, the
small training steps, the "start as the unigram model" initialisation, and files written as students
write them.

Every builder seeds itself through `Ctx.seeded` and draws its batches from the generator it returns, so
the order in which builders run does not change what any of them writes.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import HarnessError

EOT = 50256
GPT2_VOCAB = 50257


# --------------------------------------------------------------------------------------------------
# Scales: how big and how long, per submission
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    name: str
    d: int  # the seeds' 128-wide GPTs (s000, s001, s003)
    d_clean: int  # the clean GPTs: >= 64 for the demo, inside the course's requirements
    bert_hidden: int
    bert_ffn: int
    # s000: the leak must be learned, not only possible: removing the mask must gain a clear nat (a grader
    # takes a model as causal unless it gains 0.5). Short windows learn it fastest (the next token is one of
    # a few to attend to); the 512-position table starts from sines, so it carries over to longer ones.
    s000_window: int
    s000_batch: int
    s000_steps: int
    s000_lr: float
    s001_steps: int  # per epoch, 10 epochs
    s002_tokens: int
    s002_epochs: int
    s002_batch: int
    s003_steps: int  # the baseline run
    s003_other_steps: int  # each of the sweep's four other runs
    s003_batch: int
    s003_lr_scale: float  # the sweep's learning rates times this: a few dozen steps for the student's epoch
    s004_steps: int  # per epoch, 3 epochs
    clean_steps: int
    clean_batch: int
    eval_tokens: int  # validation targets behind the clean models' honest claims


SCALES = {
    "demo": Scale("demo", d=128, d_clean=64, bert_hidden=256, bert_ffn=1024,
                  s000_window=16, s000_batch=32, s000_steps=30, s000_lr=3e-3, s001_steps=6,
                  s002_tokens=2560, s002_epochs=8, s002_batch=8, s003_steps=20, s003_other_steps=4, s003_batch=8,
                  s003_lr_scale=4.0, s004_steps=24, clean_steps=120, clean_batch=4, eval_tokens=8192),
    "test": Scale("test", d=32, d_clean=32, bert_hidden=64, bert_ffn=128,
                  s000_window=16, s000_batch=32, s000_steps=30, s000_lr=5e-3, s001_steps=1,
                  s002_tokens=512, s002_epochs=8, s002_batch=4, s003_steps=24, s003_other_steps=2, s003_batch=4,
                  s003_lr_scale=10.0, s004_steps=2, clean_steps=4, clean_batch=4, eval_tokens=1024),
}


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise HarnessError("scale-unknown", f"unknown example-class scale {name!r}; use demo or test")
    return SCALES[name]


# --------------------------------------------------------------------------------------------------
# The course's data, as the students would have fed it
# --------------------------------------------------------------------------------------------------


class Data:
    """The frozen GPT-2 token streams of the embedded corpus (clm-v1's: EOT before each document), its raw
    text for the MLM's tokenizer, and the default course's clm context, which the students' honest
    validation uses as the grader will."""

    def __init__(self) -> None:
        from harness.course.config import load_course
        from harness.course.data import freeze
        from harness.course.tokenizers import get_tokenizer
        from harness.metrics.windows import clm_stream

        self.tokenizer = get_tokenizer("gpt2")
        frozen = freeze("wiki-vital", self.tokenizer)
        self.train_split = frozen.split("train")
        self.val_split = frozen.split("validation")
        # the stream the grader scores and the reference trains on; the first n tokens are n - 1 targets
        self.train = torch.from_numpy(clm_stream(self.train_split, self.tokenizer, 400_000 - 1).copy())
        self.val = torch.from_numpy(clm_stream(self.val_split, self.tokenizer, 60_000 - 1).copy())
        self.context = load_course().clm.context

    @cached_property
    def _source(self):
        from harness.course.data import load_wiki_vital

        return load_wiki_vital()

    def documents(self, split: str) -> list[str]:
        return [d.text for d in self._source.splits[split]]

    def log_unigram(self, rows: int) -> torch.Tensor:
        """Log-frequencies of the GPT-2 tokens in the training stream, `rows` long: rows past the tokenizer's
        (nanoGPT's padding) get the rarest token's value."""
        logp = log_frequencies(self.train, GPT2_VOCAB)
        return torch.cat([logp, logp.min().expand(rows - GPT2_VOCAB)]).float()


@dataclass
class Ctx:
    """One process's share of the class: where it goes, how big, the data, and what nanogpt_clean leaves
    for the submissions made from its checkpoint (broken_file, copied_model)."""

    out: Path
    scale: Scale
    seed: int
    data: Data
    nanogpt_sd: dict | None = None
    nanogpt_claims: dict | None = None
    nanogpt_file: Path | None = None

    def folder(self, sid: str) -> Path:
        path = self.out / sid
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def seeded(self, salt: int) -> torch.Generator:
        """Seeds torch for one model's initialisation and returns its data generator."""
        torch.manual_seed(self.seed * 1000 + salt)
        return torch.Generator().manual_seed(self.seed * 1000 + salt + 500)


# --------------------------------------------------------------------------------------------------
# Training steps
# --------------------------------------------------------------------------------------------------


def log_frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """Add-half smoothed log-frequencies (float64) of the ids 0..vocab-1 in `tokens`: a unigram model."""
    counts = torch.bincount(tokens.reshape(-1), minlength=vocab)[:vocab].double() + 0.5
    return (counts / counts.sum()).log()


def fix_output_bias(bias: nn.Parameter, log_prior: torch.Tensor) -> None:
    """The output layer's bias set to a unigram model's log-probabilities and kept there (no gradient): the
    model starts as the unigram model, and a short training only adds what the context says."""
    with torch.no_grad():
        bias.copy_(log_prior)
    bias.requires_grad_(False)


UNIGRAM_SCALE = 20.0  # the constant the final LayerNorm puts out in the prior's dimension


def start_at_unigram(embedding: nn.Embedding, final_norm: nn.LayerNorm, log_prior: torch.Tensor) -> None:
    """Karpathy's "init well" for a GPT whose output layer is its token embedding (no output bias): the model
    starts as the unigram model of the training split. Dimension 0 of each token's embedding holds its centred
    log-frequency / UNIGRAM_SCALE, and the final LayerNorm puts out the constant UNIGRAM_SCALE there (weight 0,
    bias UNIGRAM_SCALE), so every logit starts as the token's log-frequency. Those entries are kept while
    training (their gradients zeroed; only weight decay shrinks the embedding's column, by ~2% in the demo):
    Adam's steps there would move every logit UNIGRAM_SCALE times a learning rate per step, and over-suppress
    the rare tokens within a few dozen steps (measured: perplexity 1,591 after 60 steps, then worse)."""
    with torch.no_grad():
        embedding.weight[:, 0] = (log_prior - log_prior.mean()) / UNIGRAM_SCALE
        final_norm.weight[0], final_norm.bias[0] = 0.0, UNIGRAM_SCALE
    column = torch.ones_like(embedding.weight)
    column[:, 0] = 0.0
    first = torch.ones_like(final_norm.weight)
    first[0] = 0.0
    embedding.weight.register_hook(lambda grad: grad * column)
    final_norm.weight.register_hook(lambda grad: grad * first)
    final_norm.bias.register_hook(lambda grad: grad * first)


def gpt(vocab: int, d: int, *, bias: bool = True, dropout: float = 0.1) -> nn.Module:
    """The harness's nanoGPT-shaped GPT at the students' size: 2 layers, 4 heads, 64 positions."""
    from harness.models.gpt import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=vocab, context=64, n_layers=2, d_model=d, n_heads=4, dropout=dropout,
                         bias=bias, ln_bias=bias))


# Kept, not harness.train.data.Batches: that walks a seeded permutation of fixed windows, other batches (other bytes).
def windows(stream: torch.Tensor, batch: int, length: int, g: torch.Generator) -> torch.Tensor:
    """`batch` random windows of `length + 1` tokens: inputs [:, :-1], targets [:, 1:]."""
    starts = torch.randint(0, len(stream) - length - 1, (batch,), generator=g)
    return torch.stack([stream[s : s + length + 1] for s in starts.tolist()])


def fixed_windows(stream: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """The first `n` consecutive windows of `length + 1` tokens (a student's validation loader)."""
    n = min(n, (len(stream) - 1) // length)
    return torch.stack([stream[i * length : i * length + length + 1] for i in range(n)])


def ce(logits: torch.Tensor, targets: torch.Tensor, **kw) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), **kw)


def step(model: nn.Module, loss: torch.Tensor, opt, sched=None, *, clip: float | None = 1.0) -> float:
    """One optimiser step on `loss` (gradients clipped to `clip`, the schedule advanced); the loss's value."""
    opt.zero_grad()
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    if sched is not None:
        sched.step()
    return loss.item()


# Kept, not harness.train.config.schedule: that one decays to 0, this one to a tenth (other bytes).
def lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up, then linear decay to a tenth."""

    def f(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return max(0.1, 1.0 - 0.9 * (i - warmup) / max(1, total - warmup))

    return f


def clean_loop(model: nn.Module, ctx: Ctx, g: torch.Generator, opt, sched, steps: int,
               forward: Callable[[torch.Tensor], torch.Tensor], on_step: Callable[[int, float], None]) -> None:
    for it in range(steps):
        model.train()
        x = windows(ctx.data.train, ctx.scale.clean_batch, 64, g)
        on_step(it + 1, step(model, ce(forward(x[:, :-1]), x[:, 1:]), opt, sched))



def honest_val(model: nn.Module, data: Data, tokens: int) -> float:
    """The validation loss the grader will recompute (clm-v1, the course's context), on the first `tokens`
    targets of the split: a student who evaluated properly."""
    from harness.metrics.clm import evaluate_clm

    model.eval()
    r = evaluate_clm(model, data.val_split, data.tokenizer, context=data.context, max_tokens=tokens)
    return r.loss


def mean_loss(model: nn.Module, fixed: torch.Tensor) -> float:
    """Mean loss over fixed windows, the model's own forward as is (seed 000's: without a mask)."""
    model.eval()
    with torch.no_grad():
        losses = [ce(_first(model(w[None, :-1])), w[None, 1:]).item() for w in fixed]
    model.train()
    return float(np.mean(losses))


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


# --------------------------------------------------------------------------------------------------
# Files as students write them
# --------------------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)


def write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for name, table in tables.items():
        if not table:
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8")


def write_text(path: Path, text: str) -> None:
    """A report written as an indented f-string: the template's 8-space indent goes (the interpolated
    table rows never had it)."""
    lines = [line[8:] if line.startswith(" " * 8) else line for line in text.lstrip("\n").splitlines()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def save_pretrained(model: nn.Module, path: Path) -> None:
    """`save_pretrained` without its progress bar on the caller's terminal."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(path))
    finally:
        if shown:
            hf_logging.enable_progress_bar()
