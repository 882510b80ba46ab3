"""What the sandbox's boundary costs: an honest custom-code submission graded inside bubblewrap against the
same submission graded without it (`--allow-unsandboxed-code` on a machine without a boundary); and what a
window's logits cost to bring back from the sandbox, through the shared memory file against the pipe.

`measure()`: both sides run `harness.grading.measure.measure` in this process (the worker's own function: start
the child, load the weights, evaluate, check causality, end the child), alternating over rounds, best of each.
`measure_transport()`: the same model at GPT-2's vocabulary in two sandboxes, one with the memory file
(run.SharedLogits) and one without (`shared_mb = 0`: the pipe), `logits()` of one window in each, interleaved,
best of each, beside the model's own forward in this process.
`measure_custom_eval()`: the same sandboxed model evaluated by clm-v1 on the embedded corpus through the fused
head (the child hands over its output layer's input, the grader runs the layer: `SandboxedModel.hidden_and_head`)
against the logits path (`fused=False`: every row of logits crosses), interleaved, best of each.
Usage: python benchmarks/sandbox.py [--rounds 3] [--max-tokens 2048]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

MODEL = '''
import torch, torch.nn as nn

class CharGPT(nn.Module):
    """A small causal transformer, written the way a student would."""

    def __init__(self, vocab_size, d_model=64, n_layers=2, n_heads=4, block_size=64):
        super().__init__()
        self.block_size = block_size
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, idx):
        T = idx.shape[1]
        mask = torch.triu(torch.full((T, T), float("-inf")), diagonal=1)
        x = self.tok(idx) + self.pos(torch.arange(T))
        return self.head(self.ln(self.blocks(x, mask=mask, is_causal=True)))
'''
TEXT = ("An honest student's model, graded with and without the sandbox around it: the same numbers, and the "
        "boundary's cost in seconds. The quick brown fox jumps over the lazy dog; 0123456789.\n") * 60


def write_case(root: Path, max_tokens: int) -> tuple[Path, Path]:
    """A course on a character tokenizer and one custom-code submission; returns (course, submission)."""
    import torch

    from harness.course.config import capped_course_text

    vocab = sorted(set(TEXT))
    (root / "data.txt").write_text(TEXT, encoding="utf-8")
    (root / "vocab.txt").write_text("".join(vocab), encoding="utf-8")
    course = capped_course_text(max_tokens, calibration_tokens=256)
    for old, new in (('source = "wiki-vital"', f'source = "{root / "data.txt"}"'),
                     ('tokenizer = "gpt2"', f'tokenizer = "char:{root / "vocab.txt"}"')):
        assert old in course, old
        course = course.replace(old, new, 1)
    (root / "course.toml").write_text(course)
    sub = root / "student"
    sub.mkdir()
    (sub / "model.py").write_text(MODEL)
    ns: dict = {}
    exec(MODEL, ns)
    torch.manual_seed(0)
    torch.save(ns["CharGPT"](len(vocab)).state_dict(), sub / "ckpt.pt")
    (sub / "submission.toml").write_text(f'[submission]\nfamily = "gpt"\ncheckpoint = "ckpt.pt"\n\n[model]\n'
                                         f'code = "model.py:CharGPT"\n\n[model.kwargs]\nvocab_size = {len(vocab)}\n')
    return root / "course.toml", sub


def measure(*, rounds: int = 3, max_tokens: int = 2048) -> dict:
    """Best seconds of grading the submission inside the boundary and without it, and the two losses."""
    import harness.sandbox.jail as jail
    from harness.grading.measure import Job
    from harness.grading.measure import measure as grade_one

    real = jail.boundary()
    if not real.available:
        raise RuntimeError(f"no sandbox on this machine to measure: {real.detail}")
    best = {"sandboxed": float("inf"), "unsandboxed": float("inf")}
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        course, sub = write_case(Path(tmp), max_tokens)
        job = Job(id="student", paths=[str(sub)], course_path=str(course), allow_unsandboxed_code=True)
        try:
            for _ in range(rounds):
                for side, boundary in (("sandboxed", real), ("unsandboxed", jail.Boundary("none", "benchmark"))):
                    jail._BOUNDARY = boundary
                    t0 = time.perf_counter()
                    result = grade_one(job)
                    best[side] = min(best[side], time.perf_counter() - t0)
                    assert result.status == "graded", result.error
                    assert result.model.sandbox.startswith("bubblewrap" if side == "sandboxed" else "none")
                    losses[side] = result.metrics.loss
        finally:
            jail._BOUNDARY = real
    assert losses["sandboxed"] == losses["unsandboxed"], losses
    return {**{f"{k}_s": v for k, v in best.items()}, "ratio": best["unsandboxed"] / best["sandboxed"],
            "loss": losses["sandboxed"], "rounds": rounds, "max_tokens": max_tokens, "boundary": real.describe()}


@contextlib.contextmanager
def _sandboxed(vocab: int, context: int, *limits):
    """CharGPT at `vocab` (seeded), and the same weights in a sandbox for each of `limits`, torch at one
    thread here as in the child (its OMP_NUM_THREADS is 1 unless the grader set more): (the model, the
    sandboxed models)."""
    import torch

    from harness.sandbox.run import SandboxedModel

    ns: dict = {}
    exec(MODEL, ns)
    torch.manual_seed(0)
    here = ns["CharGPT"](vocab, block_size=context).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            (Path(tmp) / "model.py").write_text(MODEL)
            yield here, [stack.enter_context(SandboxedModel(Path(tmp), "model.py:CharGPT", here.state_dict(),
                                                            kwargs={"vocab_size": vocab, "block_size": context},
                                                            limits=lim)) for lim in limits]
    finally:
        torch.set_num_threads(threads)


def _best_of(rounds: int, calls: dict) -> tuple[dict[str, float], dict]:
    """Each call's best seconds over `rounds` rounds that take them in turn, and what each returned last."""
    best, last = {side: float("inf") for side in calls}, {}
    for _ in range(rounds):
        for side, call in calls.items():
            t0 = time.perf_counter()
            last[side] = call()
            best[side] = min(best[side], time.perf_counter() - t0)
    return best, last


def measure_transport(*, rounds: int = 20, vocab: int = 50257, context: int = 64) -> dict:
    """Best seconds of one window's `logits()` from a sandboxed model with the memory file and with the pipe,
    and of the same forward run here; the logits agree exactly."""
    import torch

    from harness.sandbox.run import SandboxLimits

    ids = torch.randint(0, vocab, (1, context), generator=torch.Generator().manual_seed(0))
    with _sandboxed(vocab, context, SandboxLimits(), SandboxLimits(shared_mb=0)) as (here, (shared, pipe)), \
            torch.inference_mode():
        assert shared._shared is not None and pipe._shared is None, "no memory file on this machine"
        calls = {"shared": lambda: shared.logits(ids), "pipe": lambda: pipe.logits(ids), "forward": lambda: here(ids)}
        want = here(ids)
        for call in calls.values():
            torch.testing.assert_close(call(), want, rtol=0, atol=1e-5)
        best, _ = _best_of(rounds, calls)
    return {**{f"{k}_s": v for k, v in best.items()}, "ratio": best["pipe"] / best["shared"], "rounds": rounds,
            "vocab": vocab, "context": context, "mb": 4 * vocab * context / 1e6}


def measure_custom_eval(*, rounds: int = 3, tokens: int = 8192, context: int = 64) -> dict:
    """Best seconds of evaluating `tokens` targets of a sandboxed custom-code model (GPT-2's vocabulary)
    through the fused head and through the logits path, and the two losses."""
    from benchmarks.eval import load_text
    from harness.course.tokenizers import get_tokenizer
    from harness.metrics.clm import evaluate_clm
    from harness.metrics.fused import OutputHead
    from harness.sandbox.run import SandboxLimits

    tok = get_tokenizer("gpt2")
    split = load_text(tok, tokens, log=None)
    with _sandboxed(tok.vocab_size, context, SandboxLimits()) as (_, (sm,)):
        best, last = _best_of(rounds, {
            side: (lambda fused=side == "fused": evaluate_clm(sm, split, tok, context=context, max_tokens=tokens,
                                                                fused=fused)) for side in ("fused", "logits")})
        assert isinstance(sm._head, OutputHead), "the fused head was declined: this row would time no fused run"
        head = sm._head_name
    return {"fused_s": best["fused"], "logits_s": best["logits"], "ratio": best["logits"] / best["fused"],
            "fused_loss": last["fused"].loss, "logits_loss": last["logits"].loss, "head": head, "rounds": rounds,
            "tokens": tokens, "context": context}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=2048)
    a = p.parse_args()
    r = measure(rounds=a.rounds, max_tokens=a.max_tokens)
    print(f"sandboxed {r['sandboxed_s']:.2f} s, unsandboxed {r['unsandboxed_s']:.2f} s, ratio {r['ratio']:.3f} "
          f"({r['boundary']}; same loss {r['loss']:.6f})")
    e = measure_custom_eval()
    print(f"custom code, {e['tokens']:,} targets: fused head {e['fused_s']:.2f} s, logits path {e['logits_s']:.2f} s "
          f"({e['ratio']:.2f}x; losses {e['fused_loss']:.9f} / {e['logits_loss']:.9f}; head {e['head']})")
    t = measure_transport()
    print(f"a window's logits ({t['mb']:.1f} MB): memory file {t['shared_s'] * 1e3:.2f} ms, pipe "
          f"{t['pipe_s'] * 1e3:.2f} ms ({t['ratio']:.2f}x), the forward alone {t['forward_s'] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
