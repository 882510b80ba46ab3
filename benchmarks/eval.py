"""How fast is clm-v1? Our evaluator against the textbook strided-perplexity loop, and against the machine.

    python benchmarks/eval.py [--tokens 32768] [--threads N] [--hf]

Model: the seeds' mini-GPT shape (2 layers, d_model 128, 4 heads, GPT-2 vocabulary, context 64), random
weights (speed does not depend on them). Data: the first validation documents of the embedded corpus,
GPT-2 tokenized (or the seed reports' text if the corpus is not installed). In the same run it measures:

- the textbook loop of the Hugging Face perplexity guide: one window per forward,
  `model(input_ids, labels=target_ids)` with -100 for the context tokens, the loss computed as
  Hugging Face's causal-LM loss does (float upcast, shifted labels, cross-entropy);
- our `evaluate_clm` on the same model, data, context and stride;
- this machine's fp32 matmul peak (a large `torch.mm`), and the model's FLOPs per position
  (2 x non-embedding parameters + 2 x d_model x vocab for the head + attention), so each side's speed is
  also a fraction of peak (positions computed per second x FLOPs per position / peak).

The rounds are interleaved (peak, ours, textbook, peak, ours, …) and the best of each counts, so a
machine shared with other work disturbs the comparison as little as it can; `--threads 1 --clock cpu`
measures CPU time instead of elapsed time, steadier still.

`--hf` repeats the comparison with a Hugging Face GPT2LMHeadModel of the same shape (the textbook loop
then calls its real `labels=` path). `measure()` returns the rows that `main()` prints and `python -m benchmarks`
tabulates; on a GPU (`device="cuda"`) every clock reading first waits for the device.
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
    non_embedding = non_embedding_params(model)
    attention = 2 * 2 * n_layers * L * d  # QK^T and AV over a full window, per token
    return 2 * non_embedding + 2 * d * vocab + attention


def compare(name, model, split, tok, stream, stride, rounds, hf, fpt, batch_tokens,
            clock: Callable[[], float] = time.perf_counter, device: str = "cpu"):
    """Ours, the textbook loop and the matmul peak, interleaved over `rounds`; the best round of each
    counts (on a shared machine the best is the least disturbed)."""
    n_targets = stream.size - 1
    t_ours = t_text = math.inf
    peak = 0.0
    for _ in range(rounds):
        peak = max(peak, matmul_peak(clock, device))
        t = clock()
        ours = evaluate_clm(model, split, tok, context=CONTEXT, stride=stride, max_tokens=n_targets,
                            batch_tokens=batch_tokens)
        t_ours = min(t_ours, clock() - t)
        t = clock()
        nll, n_text, text_positions = textbook_loop(model, stream, CONTEXT, stride, hf)
        t_text = min(t_text, clock() - t)
    ours_tps = ours.tokens / t_ours
    text_tps = n_text / t_text
    # model FLOP utilisation: positions the model computed per second (a window with stride S < L computes
    # L positions for S new targets) times FLOPs per position, over the matmul peak
    ours_mfu = sum(w.length for w in clm_windows(stream.size, CONTEXT, stride)) / t_ours * fpt / peak
    text_mfu = text_positions / t_text * fpt / peak
    row = {
        "model": name,
        "stride": stride,
        "targets": n_targets,
        "peak_gflops": round(peak / 1e9, 1),
        "ours_tokens_per_s": round(ours_tps),
        "textbook_tokens_per_s": round(text_tps),
        "speedup": round(ours_tps / text_tps, 2),
        "ours_fraction_of_peak": round(ours_mfu, 3),
        "textbook_fraction_of_peak": round(text_mfu, 3),
        "ours_loss": ours.loss,
        "textbook_loss": nll / n_text,
        "textbook_targets": n_text,
    }
    return row


def row_line(row: dict) -> str:
    """One row as the script prints it."""
    name, stride, peak = row["model"], row["stride"], row["peak_gflops"] * 1e9
    ours_tps, text_tps, n_targets, n_text = (row["ours_tokens_per_s"], row["textbook_tokens_per_s"], row["targets"],
                                             row["textbook_targets"])
    loss, text_loss = row["ours_loss"], row["textbook_loss"]
    return (f"{name:>8} S={stride:<3} ours {ours_tps:7,.0f} tok/s ({row['ours_fraction_of_peak']:.0%} of peak)  "
          f"textbook {text_tps:7,.0f} tok/s ({row['textbook_fraction_of_peak']:.0%})  "
          f"ratio {row['speedup']:.2f}x  peak {peak / 1e9:.0f} GFLOP/s  "
            f"loss {loss:.5f} vs {text_loss:.5f} ({n_text} of {n_targets} targets)")


def measure(*, tokens: int = 8192, rounds: int = 5, strides: tuple[int, ...] = (CONTEXT, CONTEXT // 2),
            hf: bool = False, batch_tokens: int | None = None, clock: str = "wall", device: str = "cpu",
            log: Callable[[str], None] | None = None) -> list[dict]:
    """The comparison's rows: per model and stride, ours against the textbook loop and the matmul peak.
    `log` gets the lines the script prints before and between them (data, machine, model)."""
    tick = make_clock(clock, device)
    tok = get_tokenizer("gpt2")
    split = load_text(tok, tokens, log)
    stream = clm_stream(split, tok, tokens)
    # both sides score the same capped stream
    capped = stream.size - 1
    if log:
        log(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {clock} clock")
    models = [("gpt", lambda: build_gpt(tok.vocab_size), False)]
    if hf:
        models.append(("hf-gpt2", lambda: build_hf_gpt2(tok.vocab_size), True))
    rows = []
    for name, build, is_hf in models:
        model = build().to(device)
        fpt = flops_per_token(model, 128, tok.vocab_size, 2, CONTEXT)
        if log:
            log(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
                f"{fpt / 1e6:.1f} MFLOP per token, {capped:,} targets, best of {rounds} rounds")
        for stride in strides:
            row = compare(name, model, split, tok, stream, stride, rounds, is_hf, fpt, batch_tokens, tick, device)
            row["mflop_per_token"] = round(fpt / 1e6, 2)
            rows.append(row)
            if log:
                log(row_line(row))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192, help="targets to score per run")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement; the best counts")
    ap.add_argument("--batch-tokens", type=int, default=None, help="our evaluator's batch_tokens (default: its own)")
    ap.add_argument("--hf", action="store_true", help="also compare on a Hugging Face GPT2LMHeadModel")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time, steadier on a shared machine (use "
                         "with --threads 1)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON at the end")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    rows = measure(tokens=args.tokens, rounds=args.rounds, hf=args.hf, batch_tokens=args.batch_tokens,
                   clock=args.clock, log=print)
    if args.json:
        print(json.dumps({"threads": threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
