"""An example class: the five seeds' setups, each trained here for seconds on the course's data and handed
in the way that student handed it in, with its flaw really in the weights and the logs; clean
submissions in each format the harness reads; and broken, hostile and misbehaving files.

`write_example_class(out, scale="demo")` writes what `harness demo` grades; `scale="test"` writes the
grading tests' class (tiny models and a few steps, where every flaw still shows, plus the test-only
submissions). Nothing here is a committed binary: every checkpoint is trained by this module, with a
fixed seed per model, single-threaded, so the same call writes the same bytes (the hostile pickle
names a marker inside `out_dir`, so only its bytes depend on where the class is written).

`EXPECTED[id]` is the set of finding codes a correct grader raises on each submission (`expected(scale)`
adds what depends on the class around it); `FORBIDDEN` the codes it must never raise on the ids in
`CLEAN`. `arch-requirements` is in neither: the tiny test models are outside the assignment's sizes on
purpose, the demo's clean models inside them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from functools import cached_property
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.models.gpt import sinusoidal_positions

EOT = 50256
GPT2_VOCAB = 50257
S002_VOCAB = 49_805  # seed 002's embedding size: the ids its sample happened to hold, no tokenizer's
HOSTILE_MARKER = ".hostile-pickle-ran"  # a hidden file in the class folder that only a loaded pickle creates

DEMO_IDS = ("s000_encoder", "s001_pre_ln", "s002_memorise", "s003_pad_eot", "s004_bert", "nanogpt_clean",
            "hf_gpt2_clean", "custom_code", "broken_file")
TEST_ONLY_IDS = ("copied_model", "hostile_pickle", "custom_crash", "custom_loop")
CLEAN = ("s004_bert", "nanogpt_clean", "hf_gpt2_clean", "custom_code")

EXPECTED: dict[str, set[str]] = {
    "s000_encoder": {"causal-leak"},
    "s001_pre_ln": {"no-validation-metric"},
    # 49,805 outputs match no tokenizer; the claimed training perplexity is far below the validation one
    "s002_memorise": {"vocab-mismatch", "memorisation", "no-validation-metric"},
    # The report gives no number, but outcome/results_table.csv (where the report sends the reader) holds
    # the sweep's final training losses: those are the claims, and they are training-only.
    "s003_pad_eot": {"pad-is-eot", "no-validation-metric"},
    "s004_bert": set(),
    "nanogpt_clean": set(),  # and similar-weights in the test class, where copied_model holds its weights
    "hf_gpt2_clean": set(),
    "custom_code": set(),
    "broken_file": {"checkpoint-unreadable"},
    "copied_model": {"similar-weights"},
    "hostile_pickle": {"checkpoint-unsafe"},
    "custom_crash": {"model-code-failed"},
    "custom_loop": {"model-code-failed"},  # or the grader's own timeout code, where its limit comes first
}
FORBIDDEN = frozenset({"causal-leak", "memorisation", "vocab-mismatch", "pad-is-eot", "val-claim-mismatch",
                       "no-validation-metric"})
TIMEOUT_CODES = frozenset({"model-code-failed", "grading-timeout"})  # what custom_loop may end in


def ids(scale: str = "demo") -> tuple[str, ...]:
    _scale(scale)
    return DEMO_IDS + (TEST_ONLY_IDS if scale == "test" else ())


def expected(scale: str = "demo") -> dict[str, set[str]]:
    """EXPECTED for the ids of one scale's class: in the test class nanogpt_clean shares its weights with
    copied_model, so both get similar-weights."""
    out = {i: set(EXPECTED[i]) for i in ids(scale)}
    if scale == "test":
        out["nanogpt_clean"].add("similar-weights")
    return out


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


def _scale(name: str) -> Scale:
    if name not in SCALES:
        raise HarnessError("scale-unknown", f"unknown example-class scale {name!r}; use demo or test")
    return SCALES[name]


# --------------------------------------------------------------------------------------------------
# The course's data, as the students would have fed it
# --------------------------------------------------------------------------------------------------


class _Data:
    """The frozen GPT-2 token streams of the embedded corpus, and its raw text for the MLM's tokenizer."""

    def __init__(self) -> None:
        from harness.course.data import freeze
        from harness.course.tokenizers import get_tokenizer

        self.tokenizer = get_tokenizer("gpt2")
        frozen = freeze("wiki-vital", self.tokenizer)
        self.train_split = frozen.split("train")
        self.val_split = frozen.split("validation")
        self.train = torch.from_numpy(_stream(self.train_split, 400_000))
        self.val = torch.from_numpy(_stream(self.val_split, 60_000))

    @cached_property
    def _source(self):
        from harness.course.data import load_wiki_vital

        return load_wiki_vital()

    def documents(self, split: str) -> list[str]:
        return [d.text for d in self._source.splits[split]]

    def log_unigram(self, rows: int) -> torch.Tensor:
        """Log-frequencies of the GPT-2 tokens in the training stream, `rows` long: rows past the tokenizer's
        (nanoGPT's padding) get the rarest token's value."""
        logp = _log_frequencies(self.train, GPT2_VOCAB)
        return torch.cat([logp, logp.min().expand(rows - GPT2_VOCAB)]).float()


def _log_frequencies(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """Add-half smoothed log-frequencies (float64) of the ids 0..vocab-1 in `tokens`: a unigram model."""
    counts = torch.bincount(tokens.reshape(-1), minlength=vocab)[:vocab].double() + 0.5
    return (counts / counts.sum()).log()


def _fix_output_bias(bias: nn.Parameter, log_prior: torch.Tensor) -> None:
    """The output layer's bias set to a unigram model's log-probabilities and kept there (no gradient): the
    model starts as the unigram model, and a short training only adds what the context says."""
    with torch.no_grad():
        bias.copy_(log_prior)
    bias.requires_grad_(False)


def _stream(split, n: int) -> np.ndarray:
    """clm-v1's stream: EOT before each document, the first `n` tokens."""
    offsets = split.offsets
    k = int(np.searchsorted(offsets, n, side="right"))  # documents that start before n
    parts = []
    for i in range(min(k, len(offsets) - 1)):
        parts.append(np.array([EOT], dtype=np.int64))
        parts.append(split.tokens[offsets[i] : offsets[i + 1]].astype(np.int64))
    return np.concatenate(parts)[:n]


def _windows(stream: torch.Tensor, batch: int, length: int, g: torch.Generator) -> torch.Tensor:
    """`batch` random windows of `length + 1` tokens: inputs [:, :-1], targets [:, 1:]."""
    starts = torch.randint(0, len(stream) - length - 1, (batch,), generator=g)
    return torch.stack([stream[s : s + length + 1] for s in starts.tolist()])


def _fixed_windows(stream: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """The first `n` consecutive windows of `length + 1` tokens (a student's validation loader)."""
    n = min(n, (len(stream) - 1) // length)
    return torch.stack([stream[i * length : i * length + length + 1] for i in range(n)])


def _ce(logits: torch.Tensor, targets: torch.Tensor, **kw) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), **kw)


def _step(model: nn.Module, loss: torch.Tensor, opt, sched=None, *, clip: float | None = 1.0) -> float:
    """One optimiser step on `loss` (gradients clipped to `clip`, the schedule advanced); the loss's value."""
    opt.zero_grad()
    loss.backward()
    if clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    if sched is not None:
        sched.step()
    return loss.item()


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)


def _honest_val(model: nn.Module, data: _Data, tokens: int) -> float:
    """The validation loss the grader will recompute (clm-v1, the course's context), on the first `tokens`
    targets of the split: a student who evaluated properly."""
    from harness.metrics.clm import evaluate_clm

    model.eval()
    r = evaluate_clm(model, data.val_split, data.tokenizer, context=64, max_tokens=tokens)
    return r.loss


def _mean_loss(model: nn.Module, windows: torch.Tensor) -> float:
    """Mean loss over fixed windows, the model's own forward as is (seed 000's: without a mask)."""
    model.eval()
    with torch.no_grad():
        losses = [_ce(_first(model(w[None, :-1])), w[None, 1:]).item() for w in windows]
    model.train()
    return float(np.mean(losses))


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up, then linear decay to a tenth."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.1, 1.0 - 0.9 * (step - warmup) / max(1, total - warmup))

    return f


# --------------------------------------------------------------------------------------------------
# Files as students write them
# --------------------------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)


def _write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for name, table in tables.items():
        if not table:
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _write_text(path: Path, text: str) -> None:
    """A report written as an indented f-string: the template's 8-space indent goes (the interpolated
    table rows never had it)."""
    lines = [line[8:] if line.startswith(" " * 8) else line for line in text.lstrip("\n").splitlines()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def _save_pretrained(model: nn.Module, path: Path) -> None:
    """`save_pretrained` without its progress bar on the caller's terminal."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(path))
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


# --------------------------------------------------------------------------------------------------
# The students' models
# --------------------------------------------------------------------------------------------------


class EncoderLM(nn.Module):
    """Seed 000's mini-GPT, after PyTorch's transformer tutorial: an `nn.TransformerEncoder` stack between
    an embedding (scaled by sqrt(d_model), initialised uniform in ±0.1) and a linear head tied to it,
    learnable positions (started from the sine-cosine table), and no causal mask anywhere: `forward`
    passes `mask` only when the caller gives one, and the student never did."""

    def __init__(self, vocab_size: int = GPT2_VOCAB, d_model: int = 128, n_layers: int = 2, n_heads: int = 4,
                 max_len: int = 512, dropout: float = 0.1):
        super().__init__()
        self.scale = math.sqrt(d_model)
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.pos_embedding = nn.Parameter(sinusoidal_positions(max_len, d_model)[None])
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.fc_out = nn.Linear(d_model, vocab_size)
        nn.init.uniform_(self.token_embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.fc_out.bias)
        self.fc_out.weight = self.token_embedding.weight  # tied: the copy of a token decodes as that token

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.token_embedding(x) * self.scale + self.pos_embedding[:, : x.size(1)]
        return self.fc_out(self.transformer(h, mask=mask))


def causal_mask(n: int) -> torch.Tensor:
    """The mask seed 000 forgot: -inf above the diagonal."""
    return nn.Transformer.generate_square_subsequent_mask(n)


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
    a biased head and dropout everywhere (its key names differ only on disk, see `_S002_KEYS`)."""

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
_S002_KEYS = (("token_emb.", "token_embedding."), ("pos_emb.emb.", "position_embedding."),
              (".attn.out_proj.", ".attn.proj."), (".ffn.net.", ".ffn."), ("lm_head.", "head."))


def _s002_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for a, b in _S002_KEYS:
            k = k.replace(a, b)
        out[k] = v
    return out


def s002_model_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Seed 002's on-disk names back to MiniGPT's (for a test that reloads the model)."""
    out = {}
    for k, v in sd.items():
        for a, b in reversed(_S002_KEYS):
            k = k.replace(b, a)
        out[k] = v
    return out


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


class _Payload:
    """Unpickles as os.system("touch MARKER"): what a hostile checkpoint would run on a careless torch.load."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def _load_custom(folder: Path, cls: str) -> type:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_example_{folder.name}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, cls)


# --------------------------------------------------------------------------------------------------
# The class
# --------------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    out: Path
    scale: Scale
    seed: int
    data: _Data
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


# The two processes' shares of the class (about even on 2 cores at demo scale); nanogpt_clean's share also
# writes what is made from its checkpoint, after it.
_SHARES = (("nanogpt_clean", "broken_file", "copied_model", "s000_encoder", "s001_pre_ln", "s004_bert",
            "hostile_pickle"),
           ("hf_gpt2_clean", "custom_code", "s002_memorise", "s003_pad_eot", "custom_crash", "custom_loop"))


def write_example_class(out_dir: Path, *, scale: str = "demo", seed: int = 0,
                        progress: Callable[[int, int], None] | None = None, processes: int | None = None) -> list[str]:
    """Write the example class into `out_dir/<id>/` and return the ids, in order.

    Every model is trained here, on the course's data (the embedded corpus, frozen with GPT-2 BPE; the
    MLM with its own WordPiece vocabulary), single-threaded and seeded, so two calls write the same
    files, whatever `processes` (default: 2 where there are 2 cores, each writing its share of the class;
    1: all here, one after another). An existing `out_dir/<id>/` is replaced; nothing else in `out_dir`
    is touched."""
    sc = _scale(scale)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = ids(scale)
    if processes is None:
        processes = min(2, len(os.sched_getaffinity(0)))
    if processes <= 1:
        _write_share(out, sc.name, seed, todo, lambda sid: progress and progress(todo.index(sid) + 1, len(todo)))
        return list(todo)
    shares = [[i for i in share if i in todo] for share in _SHARES]
    shares[-1] += [i for i in todo if not any(i in share for share in _SHARES)]
    _write_in_processes(out, sc.name, seed, shares, len(todo), progress)
    return list(todo)


def _write_share(out: Path, scale: str, seed: int, share, done: Callable[[str], Any]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = _Ctx(out, _scale(scale), seed, _Data())
        for sid in share:
            _WRITERS[sid](ctx, sid)  # each seeds itself; nanogpt_clean comes before the ones made from it
            done(sid)
    finally:
        torch.set_num_threads(threads)


def _share_process(out: str, scale: str, seed: int, share: list[str], queue) -> None:
    import traceback

    try:
        _write_share(Path(out), scale, seed, share, lambda sid: queue.put(("done", sid)))
    except BaseException as e:  # noqa: BLE001 (reported to the parent, which raises it)
        queue.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))


def _write_in_processes(out: Path, scale: str, seed: int, shares: list[list[str]], total: int,
                        progress: Callable[[int, int], None] | None) -> None:
    import multiprocessing
    import queue as queue_module

    mp = multiprocessing.get_context("spawn")  # not fork: torch's thread pools do not survive it
    queue = mp.Queue()
    workers = [mp.Process(target=_share_process, args=(str(out), scale, seed, share, queue), daemon=True)
               for share in shares if share]
    for w in workers:
        w.start()
    done = 0
    try:
        while done < total:
            try:
                kind, value = queue.get(timeout=5)
            except queue_module.Empty:
                if any(w.exitcode not in (None, 0) for w in workers) or all(w.exitcode == 0 for w in workers):
                    raise RuntimeError("a process writing the example class ended before its share was written "
                                       f"(exit codes {[w.exitcode for w in workers]})") from None
                continue
            if kind == "error":
                raise RuntimeError(f"writing the example class failed: {value}")
            done += 1
            if progress is not None:
                progress(done, total)
    finally:
        for w in workers:
            if w.is_alive() and done < total:
                w.terminate()
            w.join()


# --------------------------------------------------------------------------------------------------
# Seed 000: an nn.TransformerEncoder LM trained without a causal mask
# --------------------------------------------------------------------------------------------------


SAMPLED_SOFTMAX = 2048  # s000 trains its head on the batch's tokens and this many of the most frequent


def _sampled_loss(model: EncoderLM, x: torch.Tensor, frequent: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over a sampled softmax: the tokens of the batch and the most frequent ones. It learns
    the leak (attend to the next position, copy its embedding through the tied head) some ten times faster
    than the full 50,257-way softmax on a CPU; the student's own validation still uses the full one."""
    inp = x[:, :-1]
    h = model.transformer(model.token_embedding(inp) * model.scale + model.pos_embedding[:, : inp.size(1)])
    cands, index = torch.unique(torch.cat([x.reshape(-1), frequent]), return_inverse=True)
    targets = index[: x.numel()].view_as(x)[:, 1:]
    logits = h @ model.token_embedding.weight[cands].T + model.fc_out.bias[cands]
    return _ce(logits, targets)


def _s000_encoder(ctx: _Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    g = ctx.seeded(0)
    config = {"vocab_size": GPT2_VOCAB, "d_model": sc.d, "n_layers": 2, "n_heads": 4, "max_len": 512}
    model = EncoderLM(**config)
    opt = torch.optim.Adam(model.parameters(), lr=sc.s000_lr)
    frequent = torch.argsort(torch.bincount(ctx.data.train, minlength=GPT2_VOCAB), descending=True, stable=True)
    frequent = frequent[:SAMPLED_SOFTMAX]
    # The student's validation loop: the same model, the same (missing) mask, held-out 64-token windows.
    val = _fixed_windows(ctx.data.val, 8, 64)
    seen = _fixed_windows(ctx.data.train, 8, 64)  # and its training loss, on training windows
    train_losses, val_losses = [], []
    for _ in range(10):
        model.train()
        for _ in range(sc.s000_steps):
            x = _windows(ctx.data.train, sc.s000_batch, sc.s000_window, g)
            _step(model, _sampled_loss(model, x, frequent), opt)  # no mask: every position sees its target
        train_losses.append(_mean_loss(model, seen))  # the full softmax, as for validation
        val_losses.append(_mean_loss(model, val))
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 10,
                "config": config, "train_losses": train_losses, "val_losses": val_losses},
               folder / "mini_gpt_checkpoint.pt")
    rows = [[e + 1, round(t, 4), round(v, 4), round(math.exp(t), 2), round(math.exp(v), 2)]
            for e, (t, v) in enumerate(zip(train_losses, val_losses))]
    _write_csv(folder / "training_metrics.csv",
               ["Epoch", "Training Loss", "Validation Loss", "Training Perplexity", "Validation Perplexity"], rows)
    t, v = train_losses[-1], val_losses[-1]
    _write_toml(folder / "submission.toml", {
        "submission": {"student": "Rohan Iyer", "family": "gpt", "checkpoint": "mini_gpt_checkpoint.pt"},
        "model": {"n_heads": 4},
        "claims": {"val_loss": round(v, 2), "val_ppl": round(math.exp(v), 1), "train_loss": round(t, 2),
                   "train_ppl": round(math.exp(t), 1), "log": "training_metrics.csv"},
    })
    table = "\n".join(f"{r[0]}\t{r[1]:.2f}\t{r[2]:.2f}\t{r[3]:,.0f}\t{r[4]:,.0f}" for r in rows if r[0] in (1, 5, 10))
    _write_text(folder / "report.md", f"""
        # Assignment 2: Building a Small-Scale Foundation Model from Scratch

        Student: Rohan Iyer

        ## Model architecture

        - Transformer layers: 2 layers of transformer encoder blocks (`nn.TransformerEncoder`, batch_first)
        - Embedding dimension: {sc.d}
        - Multi-head attention: 4 heads
        - Embedding: token embedding scaled by sqrt(d_model), as in the PyTorch transformer tutorial
        - Positional encoding: learnable positional embeddings (512 positions, initialised from the sine-cosine table)
        - Normalization: layer normalization in each transformer layer
        - Output: a linear layer, tied to the token embedding, gives the logits for next-token prediction

        The model has {_params(model):,} trainable parameters.

        ## Dataset

        - Preprocessed, GPT-2-tokenized text from Assignment 1 (vocabulary 50,257)
        - Positional table of 512 tokens; training windows of {sc.s000_window} tokens, validation windows of 64
        - Train/validation split; shuffled batches

        ## Training setup

        - Batch size {sc.s000_batch}, Adam (default betas), learning rate {sc.s000_lr:g}
        - Cross-entropy loss over a sampled softmax (the batch's tokens and the {SAMPLED_SOFTMAX:,} most frequent
          ones) to train faster, gradient clipping 1.0, 10 epochs
        - Validation loss and perplexity (full softmax) after every epoch

        ## Results

        Epoch\tTraining Loss\tValidation Loss\tTraining Perplexity\tValidation Perplexity
        {table}

        The loss fell steadily and the gap between training and validation stayed small, so the model
        generalizes well. The full table is in `training_metrics.csv`.

        ## Submitted files

        - `mini_gpt_checkpoint.pt`: model weights, optimizer state, config and the loss history
        - `training_metrics.csv`: loss and perplexity per epoch
        """)


# --------------------------------------------------------------------------------------------------
# Seed 001: a pre-LN nanoGPT-style model, torch.compile'd, training loss only
# --------------------------------------------------------------------------------------------------


def _gpt(vocab: int, d: int, *, bias: bool = True, dropout: float = 0.1) -> nn.Module:
    from harness.models.gpt import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=vocab, context=64, n_layers=2, d_model=d, n_heads=4, dropout=dropout,
                         bias=bias, ln_bias=bias))


def _s001_pre_ln(ctx: _Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    g = ctx.seeded(1)
    model = _gpt(GPT2_VOCAB, sc.d)
    _start_at_unigram(model.transformer.wte, model.transformer.ln_f, ctx.data.log_unigram(GPT2_VOCAB))
    lr, total = 1e-3, 10 * sc.s001_steps
    warmup = max(1, total // 10)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, warmup))
    rows = []
    for epoch in range(10):
        model.train()
        losses = []
        for _ in range(sc.s001_steps):
            x = _windows(ctx.data.train, sc.clean_batch, 64, g)
            losses.append(_step(model, _ce(model(x[:, :-1]), x[:, 1:]), opt, sched))
        mean = float(np.mean(losses))
        rows.append([epoch + 1, round(mean, 4), round(math.exp(mean), 2)])
    # torch.compile wraps the model: its state dict keys carry `_orig_mod.`
    sd = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    model_args = {"n_layer": 2, "n_head": 4, "n_embd": sc.d, "block_size": 64, "bias": True,
                  "vocab_size": GPT2_VOCAB, "dropout": 0.1}
    config = {"batch_size": sc.clean_batch, "block_size": 64, "learning_rate": lr, "warmup_iters": warmup,
              "max_iters": total, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0,
              "compile": True, "epochs": 10}
    torch.save({"model": sd, "model_args": model_args, "iter_num": total, "best_val_loss": None, "config": config},
               folder / "ckpt.pt")
    _write_csv(folder / "train_log.csv", ["epoch", "loss", "perplexity"], rows)
    loss, ppl = rows[-1][1], rows[-1][2]
    _write_toml(folder / "submission.toml", {
        "submission": {"student": "Maya Lindqvist", "family": "gpt", "tokenizer": "gpt2"},
        "model": {"n_heads": 4, "norm": "pre", "activation": "gelu"},
        "claims": {"train_loss": round(loss, 2), "train_ppl": round(ppl, 2), "log": "train_log.csv"},
    })
    table = "\n".join(f"| {e:<5} | {l:<4.2f} | {p:<10.2f} |" for e, l, p in rows if e in (1, 3, 5, 10))
    _write_text(folder / "report.md", f"""
        # Assignment 2: Building a Mini-GPT Transformer from Scratch

        ## 1. Model architecture

        | Component           | Specification            |
        |---------------------|--------------------------|
        | Embedding Dimension | {sc.d:<24} |
        | Layers              | 2 transformer blocks     |
        | Attention Heads     | 4                        |
        | Sequence Length     | 64 tokens                |
        | Vocabulary          | 50,257 (GPT-2 BPE)       |
        | Parameters          | {f'{_params(model):,}':<24} |
        | Dropout             | 0.1                      |

        Decoder-only, pre-layer normalization, causal self-attention, GELU feed-forward (4x), learned
        positions, output layer tied to the token embedding. The model starts as the unigram model: embedding
        dimension 0 holds the token log-frequencies (scaled) and the final LayerNorm's bias puts out a
        constant there, both kept fixed. Compiled with `torch.compile`.

        ## 2. Training

        AdamW (beta1 0.9, beta2 0.95, weight decay 0.1), learning rate {lr:g} with {warmup}-step warm-up and
        linear decay, gradient clipping 1.0, batch size {sc.clean_batch}, 10 epochs.

        | Epoch | Loss | Perplexity |
        |-------|------|------------|
        {table}

        Final training loss {loss:.2f}, perplexity {ppl:.2f}. No overfitting despite no validation set.

        ## 3. Limitations

        Small model, short context, no validation split, a single hyperparameter configuration.
        """)


# --------------------------------------------------------------------------------------------------
# Seed 002: a 49,805-token embedding and 5,120 tokens learned by heart
# --------------------------------------------------------------------------------------------------


def _s002_sample(data: _Data, n: int) -> torch.Tensor:
    """The student's sample: GPT-2 ids of the first documents, without the ids their 49,805-row
    embedding has no row for (and without end-of-text: they tokenized text chunks)."""
    tokens = data.train_split.tokens[: 4 * n + 10_000].astype(np.int64)
    return torch.from_numpy(tokens[tokens < S002_VOCAB][:n].copy())


def _s002_memorise(ctx: _Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    g = ctx.seeded(2)
    sample = _s002_sample(ctx.data, sc.s002_tokens)
    model = MiniGPT(vocab_size=S002_VOCAB, embed_dim=64, n_layers=1, n_heads=2, seq_len=64, ffn_mult=4,
                    dropout=0.3, ffn_dropout=0.3, head_bias=True)
    lr, batch = 1e-2, sc.s002_batch
    n_windows = (len(sample) - 1) // 64
    steps_per_epoch = math.ceil(n_windows / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=sc.s002_epochs * steps_per_epoch)
    rows = []
    for epoch in range(sc.s002_epochs):
        model.train()
        shift = int(torch.randint(0, 64, (1,), generator=g))  # the windows slide a little every epoch
        starts = torch.arange(n_windows) * 64 + shift
        starts = starts[starts + 65 <= len(sample)][torch.randperm(n_windows, generator=g)[: n_windows]]
        losses = []
        for i in range(0, len(starts), batch):
            x = torch.stack([sample[s : s + 65] for s in starts[i : i + batch].tolist()])
            losses.append(_step(model, _ce(model(x[:, :-1]), x[:, 1:]), opt, sched))
        mean = float(np.mean(losses))
        rows.append([epoch + 1, round(mean, 4), round(math.exp(mean), 2)])
    params = _params(model)
    torch.save(_s002_names(model.state_dict()), folder / "mini_gpt.pt")
    _write_csv(folder / "training_log.csv", ["epoch", "loss", "perplexity"], rows)
    loss, ppl = rows[-1][1], rows[-1][2]
    _write_toml(folder / "submission.toml", {
        "submission": {"student": "Wen Zhou", "family": "gpt"},
        "model": {"n_heads": 2, "norm": "pre", "activation": "gelu"},
        "claims": {"train_loss": round(loss, 4), "train_ppl": round(ppl, 2), "params": params,
                   "log": "training_log.csv"},
    })
    shown = sorted({1, 2, 3, max(1, sc.s002_epochs // 2), sc.s002_epochs})
    table = "\n".join(f"{e}\t{l:.2f}\t{p:.2f}" for e, l, p in rows if e in shown)
    first = rows[0][1]
    _write_text(folder / "report.md", f"""
        # Assignment 2: Building a Small-Scale Foundation Model from Scratch

        Wen Zhou

        ## 1 Model architecture and parameters

        Component\tValue
        Embedding Dimension\t64
        Transformer Layers\t1
        Attention Heads\t2
        Feed-Forward Dimension\t256
        Max Sequence Length\t64 tokens
        Dropout Rate\t0.3
        Vocabulary Size\t49,805
        Total Parameters\t{params:,}

        Decoder-only: causal multi-head attention (d_k = 32), GELU feed-forward 64 -> 256 -> 64,
        pre-normalization, learned positions up to 64 tokens, residual connections.

        ## 2 Dataset

        10 text chunks (about {len(sample):,} tokens), GPT-2 BPE, windows of 64 tokens, batch size {batch}.
        The vocabulary size is the number of ids the embedding needed for this data: 49,805.

        ## 3 Training setup and results

        AdamW, learning rate {lr:g}, weight decay 0.1, gradient clipping 1.0, cosine annealing,
        {sc.s002_epochs} epochs.

        Epoch\tLoss\tPerplexity
        {table}

        Final metrics: training loss {loss:.4f}, perplexity {ppl:.2f}. Loss fell from {first:.2f} to {loss:.2f}:
        the model memorizes the small sample rather than generalizing.
        """)


# --------------------------------------------------------------------------------------------------
# Seed 003: padding with the end-of-text id, ignored in the loss; a five-run sweep
# --------------------------------------------------------------------------------------------------

# The student's five runs, each against the baseline (5e-4, batch 32, 2 layers, 128 wide), here as
# factors of this scale's baseline: twice the learning rate, half the batch, one layer, half the width.
_SWEEP = (("baseline", {}), ("lr_1e-3", {"lr": 2.0}), ("batch_size_16", {"batch": 0.5}),
          ("n_layers_1", {"n_layers": 0.5}), ("embed_dim_64", {"embed_dim": 0.5}))


def _s003_sequences(data: _Data, n: int) -> torch.Tensor:
    """Each document cut into chunks of 64 tokens, the last one padded with PAD_TOKEN_ID = 50256 (the
    end-of-text id): EOT only ever appears as padding, never as a target the loss counts."""
    split, chunks = data.train_split, []
    for i in range(split.n_documents):
        doc = split.document(i).astype(np.int64)
        for a in range(0, len(doc), 64):
            piece = doc[a : a + 64]
            if len(piece) >= 2:
                chunks.append(np.pad(piece, (0, 64 - len(piece)), constant_values=EOT))
        if len(chunks) >= n:
            break
    return torch.from_numpy(np.stack(chunks[:n]))


def _s003_pad_eot(ctx: _Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    seqs = _s003_sequences(ctx.data, 4 * sc.s003_steps * sc.s003_batch)
    base = {"lr": 5e-4 * sc.s003_lr_scale, "batch": sc.s003_batch, "n_layers": 2, "embed_dim": sc.d}
    rows = []
    for k, (name, factors) in enumerate(_SWEEP):
        g = ctx.seeded(30 + k)
        cfg = {key: type(v)(v * factors.get(key, 1)) for key, v in base.items()}
        steps = sc.s003_steps if name == "baseline" else sc.s003_other_steps
        model = MiniGPT(GPT2_VOCAB, cfg["embed_dim"], cfg["n_layers"], 4, 64, dropout=0.1)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
        loss_fn = nn.CrossEntropyLoss(ignore_index=EOT)  # PAD_TOKEN_ID: padding must not count
        model.train()
        for _ in range(steps):
            x = seqs[torch.randint(0, len(seqs), (cfg["batch"],), generator=g)]
            # the last step's loss, as the student's table reports it; this student clipped nothing
            final = _step(model, loss_fn(model(x[:, :-1]).reshape(-1, GPT2_VOCAB), x[:, 1:].reshape(-1)), opt,
                          clip=None)
        rows.append([name, round(final, 4), round(math.exp(final), 2)])
        if name == "baseline":
            (folder / "outcome").mkdir()
            torch.save(model.state_dict(), folder / "outcome" / "mini_gpt_baseline.pt")
    _write_csv(folder / "outcome" / "results_table.csv", ["experiment", "final_loss", "final_ppl"], rows)
    _write_toml(folder / "submission.toml", {
        "submission": {"student": "Tomás Okafor", "family": "gpt", "checkpoint": "outcome/mini_gpt_baseline.pt"},
        "model": {"n_heads": 4, "norm": "pre", "activation": "gelu"},
    })
    _write_text(folder / "report.md", f"""
        # Small-Scale Foundation Model Training: Report

        ## 1. Model architecture and parameters

        MiniGPT is a decoder-only transformer for next-token prediction, implemented in `model.py` and
        configured in `config.py`.

        - Token embedding: `nn.Embedding(vocab_size, embed_dim)`, no padding index
        - Positional encoding: learned, `PositionalEmbedding: nn.Embedding(max_len, embed_dim)`
        - Blocks: pre-norm; LayerNorm, multi-head self-attention (one linear projects to Q, K, V; causal
          mask), residual; LayerNorm, FFN (GELU, hidden `embed_dim * 4`), residual
        - Output: final LayerNorm and a linear LM head without bias

        Parameter\tValue
        vocab_size\t50,257
        seq_len\t64
        embed_dim\t{sc.d}
        n_heads\t4
        n_layers\t2
        ffn_mult\t4
        dropout\t0.1 (in attention)

        ## 2. Dataset

        GPT-2 token ids, `VOCAB_SIZE = 50257`, `PAD_TOKEN_ID = 50256`. Sequences are cut into chunks of
        `SEQ_LEN = 64`; shorter ones are padded with `PAD_TOKEN_ID` to length 64.

        ## 3. Training setup and hyperparameter experiments

        Next-token prediction: logits at positions 0..L-2 against labels at 1..L-1, with
        `CrossEntropyLoss(ignore_index=PAD_TOKEN_ID)` so that padding does not count. AdamW, one epoch,
        loss and perplexity recorded per step. The model state dict is saved as
        `outcome/mini_gpt_<experiment_name>.pt`.

        Experiment\tOverride\tDescription
        baseline\t-\tlr={base['lr']:g}, batch_size={sc.s003_batch}, n_layers=2, embed_dim={sc.d}, n_heads=4
        lr_1e-3\tlr={2 * base['lr']:g}\tHigher learning rate
        batch_size_16\tbatch_size={sc.s003_batch // 2}\tSmaller batch size
        n_layers_1\tn_layers=1\tSingle transformer layer
        embed_dim_64\tembed_dim={sc.d // 2}\tSmaller embedding

        ## 4. Observations

        With one epoch the curves show how quickly each setup descends; the numbers are in
        `outcome/results_table.csv`.
        """)


# --------------------------------------------------------------------------------------------------
# Seed 004: a BERT masked LM with its own WordPiece vocabulary
# --------------------------------------------------------------------------------------------------

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # bert-base-uncased's, at ids 0-4


def _wordpiece(folder: Path, texts: list[str]):
    """A lowercase WordPiece vocabulary of 2,000 pieces from the first ~200k characters of the train split
    (bert-base-uncased cannot be had offline): the specials, the commonest characters (alone and as `##`
    continuations), then the commonest words and word endings. Built by counting, not with a `tokenizers`
    trainer, whose ties fall differently on every run. Writes `vocab.txt` and `tokenizer.json`; returns
    the tokenizer exactly as the grader reads `vocab.txt`."""
    from collections import Counter

    from tokenizers import BertWordPieceTokenizer
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    from harness.course.tokenizers import get_tokenizer

    normalizer, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    words: Counter[str] = Counter()
    n = 0
    for t in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t)))
        n += len(t)
        if n >= 200_000:
            break
    chars: Counter[str] = Counter()
    endings: Counter[str] = Counter()
    for w, c in words.items():
        for ch in w:
            chars[ch] += c
        for i in range(max(1, len(w) - 6), len(w) - 1):
            endings["##" + w[i:]] += c

    def ranked(counts: Counter[str], keep: Callable[[str, int], bool]) -> list[str]:
        return [k for k, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if keep(k, c)]

    alphabet = sorted(ranked(chars, lambda ch, c: c >= 2)[:200])
    vocab = _SPECIALS + alphabet + ["##" + ch for ch in alphabet]
    room = 2000 - len(vocab)
    common = ranked(words, lambda w, c: c >= 2 and len(w) > 1 and w not in vocab)[: room * 3 // 4]
    vocab += common
    vocab += ranked(endings, lambda e, c: c >= 2 and e not in vocab)[: 2000 - len(vocab)]
    (folder / "vocab.txt").write_text("".join(v + "\n" for v in vocab), encoding="utf-8")
    BertWordPieceTokenizer({v: i for i, v in enumerate(vocab)}, lowercase=True).save(str(folder / "tokenizer.json"))
    return get_tokenizer(str(folder / "vocab.txt"))


def _mlm_blocks(tok, texts: list[str], n_blocks: int, length: int = 128) -> torch.Tensor:
    """`[CLS] document [SEP]` concatenated and cut into blocks of `length`."""
    ids: list[int] = []
    for i in range(0, len(texts), 64):
        for doc in tok.encode_batch(texts[i : i + 64]):
            ids += [tok.cls_id, *doc, tok.sep_id]
        if len(ids) >= n_blocks * length:
            break
    n_blocks = min(n_blocks, len(ids) // length)
    return torch.tensor(ids[: n_blocks * length], dtype=torch.long).view(n_blocks, length)


def _mask_tokens(x: torch.Tensor, tok, special: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """DataCollatorForLanguageModeling's dynamic masking: 15% of the non-special tokens are selected; of
    those 80% become [MASK], 10% a random token, 10% stay."""
    selected = (torch.rand(x.shape, generator=g) < 0.15) & ~torch.isin(x, special)
    labels = torch.where(selected, x, torch.full_like(x, -100))
    how = torch.rand(x.shape, generator=g)
    random_ids = torch.randint(0, tok.vocab_size, x.shape, generator=g)
    inputs = torch.where(selected & (how < 0.8), torch.full_like(x, tok.mask_id), x)
    inputs = torch.where(selected & (how >= 0.8) & (how < 0.9), random_ids, inputs)
    return inputs, labels


def _s004_bert(ctx: _Ctx, sid: str) -> None:
    from transformers import BertConfig, BertForMaskedLM

    sc, folder = ctx.scale, ctx.folder(sid)
    tok = _wordpiece(folder, ctx.data.documents("train"))
    g = ctx.seeded(4)
    batch, epochs = 8, 3
    train = _mlm_blocks(tok, ctx.data.documents("train"), sc.s004_steps * batch)
    val = _mlm_blocks(tok, ctx.data.documents("validation"), 48 if sc.name == "demo" else 16)
    special = torch.tensor(sorted(tok.special_ids))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=sc.bert_hidden, num_hidden_layers=3,
                        num_attention_heads=4, intermediate_size=sc.bert_ffn, max_position_embeddings=512,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, pad_token_id=tok.pad_id)
    model = BertForMaskedLM(config)
    _fix_output_bias(model.cls.predictions.bias,
                     _log_frequencies(_mlm_blocks(tok, ctx.data.documents("train"), 2000), tok.vocab_size))
    total = epochs * math.ceil(len(train) / batch)
    warmup = max(1, round(0.06 * total))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    history: dict[str, list] = {"epoch": [], "train_loss": [], "val_loss": [], "val_ppl": []}
    for epoch in range(epochs):
        model.train()
        losses = []
        for i in torch.randperm(len(train), generator=g).split(batch):
            inputs, labels = _mask_tokens(train[i], tok, special, g)
            losses.append(_step(model, model(input_ids=inputs, labels=labels).loss, opt, sched))
        model.eval()
        total_nll, count = 0.0, 0
        vg = torch.Generator().manual_seed(1234)  # the same masks every epoch
        with torch.no_grad():
            for b in val.split(16):
                inputs, labels = _mask_tokens(b, tok, special, vg)
                logits = model(input_ids=inputs).logits
                total_nll += F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                             ignore_index=-100, reduction="sum").item()
                count += int((labels != -100).sum())
        val_loss = total_nll / count
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(round(float(np.mean(losses)), 4))
        history["val_loss"].append(round(val_loss, 4))
        history["val_ppl"].append(round(math.exp(val_loss), 2))
    _save_pretrained(model, folder / "model")
    (folder / "losses.json").write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
    t, v, p = history["train_loss"][-1], history["val_loss"][-1], history["val_ppl"][-1]
    _write_toml(folder / "submission.toml", {
        "submission": {"student": "Priya Raman", "family": "mlm", "checkpoint": "model", "tokenizer": "vocab.txt"},
        "claims": {"train_loss": round(t, 2), "val_loss": round(v, 2), "val_ppl": round(p, 1), "log": "losses.json"},
    })
    _write_text(folder / "report.md", f"""
        # Assignment 1: Pre-train a Small Language Model from Scratch

        ## Model configuration

        - Architecture: BERT-style masked language model (`BertForMaskedLM`)
        - Transformer layers: 3
        - Hidden size: {sc.bert_hidden}
        - Attention heads: 4
        - Feed-forward size: {sc.bert_ffn}
        - Maximum position embeddings: 512
        - Dropout: 0.1 (attention and hidden)
        - Output bias: the training text's token log-frequencies, kept fixed (the model starts as the unigram model)
        - Parameters: {_params(model):,}

        ## Dataset

        - The course's Wikipedia lead sections
        - Tokenization: bert-base-uncased could not be downloaded, so I trained a lowercase WordPiece
          vocabulary of {tok.vocab_size:,} pieces on the training text (`vocab.txt`, `tokenizer.json`)
        - Blocks of 128 tokens, `[CLS] document [SEP]` concatenated
        - Dynamic masking, 15% (80% [MASK], 10% random, 10% unchanged)

        ## Training setup

        - Epochs: {epochs}; batch size {batch} (validation 16)
        - AdamW, learning rate 1e-3, 6% linear warm-up then linear decay, gradient clipping 1.0

        ## Results

        - Final training loss: ~{t:.2f}
        - Final validation loss: ~{v:.2f}
        - Perplexity: ~{p:,.0f}
        - Training and validation losses per epoch are in `losses.json`.
        """)


# --------------------------------------------------------------------------------------------------
# Clean submissions: nanoGPT, Hugging Face GPT-2, a student's own model code
# --------------------------------------------------------------------------------------------------


UNIGRAM_SCALE = 20.0  # the constant the final LayerNorm puts out in the prior's dimension


def _start_at_unigram(embedding: nn.Embedding, final_norm: nn.LayerNorm, log_prior: torch.Tensor) -> None:
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


def _clean_loop(model: nn.Module, ctx: _Ctx, g: torch.Generator, opt, sched, steps: int,
                forward: Callable[[torch.Tensor], torch.Tensor], on_step: Callable[[int, float], None]) -> None:
    for it in range(steps):
        model.train()
        x = _windows(ctx.data.train, ctx.scale.clean_batch, 64, g)
        on_step(it + 1, _step(model, _ce(forward(x[:, :-1]), x[:, 1:]), opt, sched))


def _nanogpt_clean(ctx: _Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    g = ctx.seeded(5)
    d, vocab = sc.d_clean, 50304  # nanoGPT pads GPT-2's 50,257 up to a multiple of 64
    model = _gpt(vocab, d, bias=True, dropout=0.0)  # nanoGPT's default: biases, like GPT-2
    _start_at_unigram(model.transformer.wte, model.transformer.ln_f, ctx.data.log_unigram(vocab))
    lr, steps = 3e-3, sc.clean_steps
    warmup = max(1, steps // 10)
    # nanoGPT's configure_optimizers: weight decay on matrices only
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, warmup))
    eval_interval, eval_iters = max(1, steps // 4), 2
    eg = torch.Generator().manual_seed(ctx.seed * 1000 + 55)
    log: list[dict[str, float]] = []

    def estimate() -> dict[str, float]:
        model.eval()
        out = {}
        with torch.no_grad():
            for split, stream in (("train", ctx.data.train), ("val", ctx.data.val)):
                out[split] = float(np.mean([_ce(model(x[:, :-1]), x[:, 1:]).item() for x in
                                            (_windows(stream, sc.clean_batch, 64, eg) for _ in range(eval_iters))]))
        model.train()
        return out

    def on_step(it: int, loss: float) -> None:
        if it % eval_interval == 0 or it == steps:
            e = estimate()
            log.append({"step": it, "train_loss": round(e["train"], 4), "val_loss": round(e["val"], 4)})

    e0 = estimate()
    log.append({"step": 0, "train_loss": round(e0["train"], 4), "val_loss": round(e0["val"], 4)})
    _clean_loop(model, ctx, g, opt, sched, steps, model, on_step)
    val = _honest_val(model, ctx.data, sc.eval_tokens)
    best = min(row["val_loss"] for row in log)
    model_args = {"n_layer": 2, "n_head": 4, "n_embd": d, "block_size": 64, "bias": True, "vocab_size": vocab,
                  "dropout": 0.0}
    config = {"out_dir": "out-wiki", "eval_interval": eval_interval, "eval_iters": eval_iters, "dataset": "wiki_vital",
              "gradient_accumulation_steps": 1, "batch_size": sc.clean_batch, "block_size": 64, "n_layer": 2,
              "n_head": 4, "n_embd": d, "dropout": 0.0, "bias": True, "learning_rate": lr, "max_iters": steps,
              "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0, "decay_lr": True,
              "warmup_iters": warmup, "min_lr": lr / 10, "device": "cpu", "dtype": "float32", "compile": False}
    path = folder / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "model_args": model_args,
                "iter_num": steps, "best_val_loss": best, "config": config}, path)
    (folder / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log), encoding="utf-8")
    claims = {"val_loss": round(val, 3), "val_ppl": round(math.exp(val), 1), "train_loss": log[-1]["train_loss"]}
    ctx.nanogpt_sd, ctx.nanogpt_claims, ctx.nanogpt_file = model.state_dict(), claims, path
    _write_toml(folder / "submission.toml", {
        "submission": {"student": "Lena Fischer", "family": "gpt", "tokenizer": "gpt2"},
        "claims": {**claims, "log": "log.jsonl"},
    })
    _write_text(folder / "report.md", f"""
        # Mini-GPT with nanoGPT

        I trained nanoGPT (`model.py`, `train.py`) on the course's Wikipedia data with GPT-2 BPE:
        2 layers, 4 heads, n_embd {d}, block size 64, biases on, vocabulary padded to 50,304.
        AdamW (0.9/0.95, weight decay 0.1), learning rate {lr:g} with {warmup} warm-up steps and decay,
        {steps} iterations of batch {sc.clean_batch}.

        Initialisation ("init well"): the model starts as the unigram model of the training split. Embedding
        dimension 0 holds each token's centred log-frequency / {UNIGRAM_SCALE:g}, and the final LayerNorm outputs
        the constant {UNIGRAM_SCALE:g} there (weight 0, bias {UNIGRAM_SCALE:g}), so the tied output layer adds the
        log-frequency to every logit; those entries stay fixed during training. Step 0's validation loss in
        `log.jsonl` is the unigram model's.

        I evaluated the final model with `harness check` on the course's validation split:
        validation loss {val:.3f} (perplexity {math.exp(val):,.0f}). The training curve is in `log.jsonl`.
        """)


def _hf_gpt2_clean(ctx: _Ctx, sid: str) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    sc, folder = ctx.scale, ctx.folder(sid)
    g = ctx.seeded(6)
    d = sc.d_clean
    config = GPT2Config(vocab_size=GPT2_VOCAB, n_positions=128, n_embd=d, n_layer=2, n_head=4, bos_token_id=EOT,
                        eos_token_id=EOT)
    model = GPT2LMHeadModel(config)
    _start_at_unigram(model.transformer.wte, model.transformer.ln_f, ctx.data.log_unigram(GPT2_VOCAB))
    lr, steps = 3e-3, sc.clean_steps
    warmup = max(1, steps // 10)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, warmup))
    history: list[dict[str, float]] = []
    every = max(1, steps // 8)

    def on_step(it: int, loss: float) -> None:
        if it % every == 0 or it == steps:
            history.append({"step": it, "epoch": round(it / steps, 3), "loss": round(loss, 4),
                            "learning_rate": float(f"{sched.get_last_lr()[0]:.6g}")})

    _clean_loop(model, ctx, g, opt, sched, steps, lambda x: model(input_ids=x).logits, on_step)
    val = _honest_val(model, ctx.data, sc.eval_tokens)
    history.append({"step": steps, "epoch": 1.0, "eval_loss": round(val, 4)})
    _save_pretrained(model, folder / "hf_model")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": steps, "log_history": history}, indent=2)
                                               + "\n", encoding="utf-8")
    train_loss = float(np.mean([h["loss"] for h in history if "loss" in h][-2:]))
    _write_toml(folder / "submission.toml", {
        "submission": {"student": "Samuel Adeyemi", "family": "gpt", "checkpoint": "hf_model", "tokenizer": "gpt2"},
        "claims": {"val_loss": round(val, 3), "val_ppl": round(math.exp(val), 1), "train_loss": round(train_loss, 3)},
    })
    _write_text(folder / "report.md", f"""
        # GPT-2 from scratch with Hugging Face

        A `GPT2LMHeadModel` from a fresh `GPT2Config` (2 layers, 4 heads, n_embd {d}, 128 positions, the
        GPT-2 tokenizer), trained for {steps} steps on 64-token windows of the course's training split
        (AdamW, learning rate {lr:g}). Saved with `save_pretrained` in `hf_model/`. It starts as the unigram
        model of the training split (token frequencies through `wte` dimension 0 and `ln_f`'s bias, kept
        fixed), so that a short training only has to add what the context says.

        Validation loss on the course's validation split: {val:.3f} (perplexity {math.exp(val):,.0f}).
        """)


def _custom_kwargs(sc: Scale) -> dict[str, int]:
    return {"vocab": GPT2_VOCAB, "width": sc.d_clean, "depth": 2, "heads": 4, "window": 64}


def _custom_code(ctx: _Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    (folder / "model.py").write_text(MODEL_PY, encoding="utf-8")
    g = ctx.seeded(7)
    kwargs = _custom_kwargs(sc)
    model = _load_custom(folder, "TinyTransformer")(**kwargs)
    _fix_output_bias(model.readout.bias, ctx.data.log_unigram(GPT2_VOCAB))
    lr, steps = 3e-3, sc.clean_steps
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, max(1, steps // 10)))
    losses: list[float] = []
    _clean_loop(model, ctx, g, opt, sched, steps, lambda x: model(x)[0], lambda it, loss: losses.append(loss))
    val = _honest_val(model, ctx.data, sc.eval_tokens)
    torch.save(model.state_dict(), folder / "weights.pt")
    _write_csv(folder / "losses.csv", ["step", "train_loss"],
               [[i + 1, round(l, 4)] for i, l in enumerate(losses)])
    train_loss = float(np.mean(losses[-3:]))
    _write_toml(folder / "submission.toml", {
        "submission": {"student": "Chloé Martin", "family": "gpt", "checkpoint": "weights.pt", "tokenizer": "gpt2"},
        "model": {"code": "model.py:TinyTransformer", "context": 64},
        "model.kwargs": kwargs,
        "claims": {"val_loss": round(val, 3), "val_ppl": round(math.exp(val), 1), "train_loss": round(train_loss, 3),
                   "log": "losses.csv"},
    })
    _write_text(folder / "report.md", f"""
        # TinyTransformer

        My own causal transformer (`model.py`): token and position lookups, {kwargs['depth']} cells of causal
        attention ({kwargs['heads']} heads, width {kwargs['width']}) and a GELU feed-forward, a final LayerNorm
        and a linear readout whose bias is fixed at the training split's token log-frequencies (the model starts
        as the unigram model). Trained for {steps} steps on 64-token windows, AdamW {lr:g}.

        Validation loss {val:.3f} (perplexity {math.exp(val):,.0f}) on the course's validation split.
        """)


# --------------------------------------------------------------------------------------------------
# Broken, copied, hostile and misbehaving submissions
# --------------------------------------------------------------------------------------------------


def _broken_file(ctx: _Ctx, sid: str) -> None:
    folder = ctx.folder(sid)
    # The upload stopped after the first kilobyte of a real checkpoint.
    (folder / "model.pt").write_bytes(ctx.nanogpt_file.read_bytes()[:1000])
    _write_toml(folder / "submission.toml", {
        "submission": {"student": "Jonas Berg", "family": "gpt"},
        "claims": {"val_loss": 6.2, "val_ppl": 492.7},
    })


def _copied_model(ctx: _Ctx, sid: str) -> None:
    folder = ctx.folder(sid)
    torch.save(ctx.nanogpt_sd, folder / "model.pt")  # someone else's weights, re-saved as a plain state dict
    _write_toml(folder / "submission.toml", {
        "submission": {"student": "Kai Nakamura", "family": "gpt"},
        "model": {"n_heads": 4},
        "claims": dict(ctx.nanogpt_claims),
    })


def _hostile_pickle(ctx: _Ctx, sid: str) -> None:
    folder = ctx.folder(sid)
    ctx.seeded(9)
    weights = MiniGPT(GPT2_VOCAB, 16, 1, 2, 64).state_dict()
    torch.save({"model_state_dict": weights, "callback": _Payload(ctx.out.resolve() / HOSTILE_MARKER)},
               folder / "model.pt")
    _write_toml(folder / "submission.toml", {
        "submission": {"student": "Mallory Vance", "family": "gpt"},
        "claims": {"val_loss": 3.1, "val_ppl": 22.2},
    })


def _misbehaving(ctx: _Ctx, sid: str, extra: str, cls: str, student: str, salt: int) -> None:
    folder = ctx.folder(sid)
    (folder / "model.py").write_text(MODEL_PY + extra, encoding="utf-8")
    kwargs = {**_custom_kwargs(ctx.scale), "width": 32}
    ctx.seeded(salt)
    model = _load_custom(folder, cls)(**kwargs)
    torch.save(model.state_dict(), folder / "weights.pt")
    _write_toml(folder / "submission.toml", {
        "submission": {"student": student, "family": "gpt", "checkpoint": "weights.pt"},
        "model": {"code": f"model.py:{cls}", "context": 64},
        "model.kwargs": kwargs,
        "claims": {"val_loss": 6.4, "val_ppl": 601.8},
    })


def _custom_crash(ctx: _Ctx, sid: str) -> None:
    _misbehaving(ctx, sid, _CRASH_FORWARD, "Broken", "Diego Alvarez", 10)


def _custom_loop(ctx: _Ctx, sid: str) -> None:
    _misbehaving(ctx, sid, _LOOP_FORWARD, "Stuck", "Ines Duarte", 11)


_WRITERS: dict[str, Callable[[_Ctx, str], None]] = {
    "s000_encoder": _s000_encoder, "s001_pre_ln": _s001_pre_ln, "s002_memorise": _s002_memorise,
    "s003_pad_eot": _s003_pad_eot, "s004_bert": _s004_bert, "nanogpt_clean": _nanogpt_clean,
    "hf_gpt2_clean": _hf_gpt2_clean, "custom_code": _custom_code, "broken_file": _broken_file,
    "copied_model": _copied_model, "hostile_pickle": _hostile_pickle, "custom_crash": _custom_crash,
    "custom_loop": _custom_loop,
}
