"""Grading time per submission: a Llama-style model against the GPT-2-style one of the same size.

    python benchmarks/arch.py [--d-model 128] [--layers 4] [--rounds 3] [--max-tokens 1024]

Two paths, each a pair of submissions of (nearly) the same non-embedding parameter count, saved the way
students save them:
- hf: a `GPT2LMHeadModel.save_pretrained` folder (the hf-gpt2 layout, onto the canonical GPT) against a
  `LlamaForCausalLM.save_pretrained` folder (RMSNorm, RoPE, SwiGLU, grouped-query attention with half the
  heads, tied head like GPT-2's; built with transformers' own class, `harness.models.hf`);
- pt: a nanoGPT checkpoint (`ckpt.pt` with `model_args`) against CS336's staff save (`model.pt` beside
  `model_config.json`: RMSNorm, RoPE on pairs (2k, 2k+1), SwiGLU, untied head), both onto the canonical GPT.
The Llama-style SwiGLU width d_ff is chosen so that its non-embedding parameters match the GPT-2-style
model's (attention, MLP and norms; token and position embeddings and the head left out: they cost the same
per token whichever the block); total counts are in the notes.

Each submission is graded by `harness.grading.measure.measure` — what every grading worker runs per submission —
with the packaged course capped at `max_tokens` targets. A first, untimed round warms the caches (imports,
the frozen data, the tokenizer), so only the per-submission work is timed: reading the checkpoint, building
the model, the clm-v1 evaluation and the causality check. The rounds alternate the sides; the median of
each is kept, of the wall-clock time and of the CPU time (this process's and the checkpoint reader's: on a
shared machine the fairer clock). One torch thread by default, as each of two workers on two cores gets:
on this machine shared with other work, two threads' waiting for each other cost more than the
evaluation itself (CPU time 1.5-4.6 s for what one thread does in 0.3 s) and swamped the ratio.
`measure()` returns the rows that `main()` prints and `python -m benchmarks` tabulates.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AIM = 1.5  # a Llama-style submission grades no slower than 1.5x the GPT-2-style one of the same size
VOCAB = 50257  # the course's tokenizer (gpt2)
CONTEXT = 64  # the packaged course's clm-v1 context


def _swiglu_width(block_params: int, other: int, d_model: int) -> int:
    """The d_ff whose gated MLP (three d_model x d_ff matrices) brings a block to `block_params`."""
    return max(8, round((block_params - other) / (3 * d_model)))


def _toml(student: str, checkpoint: str) -> str:
    return (f'[submission]\nstudent = "{student}"\nfamily = "gpt"\ncheckpoint = "{checkpoint}"\n'
            f'tokenizer = "gpt2"\n')


def write_pairs(folder: Path, *, d_model: int, n_layers: int, n_heads: int) -> dict[str, dict]:
    """The four submissions under `folder`; for each path, its two folders and parameter counts."""
    import torch
    import transformers

    from harness.models.gpt import GPT, GPTConfig

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    D, L, H = d_model, n_layers, n_heads
    hd = D // H
    # GPT-2's block: two LayerNorms (weight, bias), fused qkv and out projections, 4x MLP, all with biases
    gpt_block = 2 * 2 * D + (3 * D * D + 3 * D) + (D * D + D) + (4 * D * D + 4 * D) + (4 * D * D + D)
    out: dict[str, dict] = {}

    # hf: two save_pretrained folders
    kv = max(1, H // 2)
    llama_attn = 2 * D + D * H * hd + 2 * D * kv * hd + H * hd * D  # 2 RMSNorm weights, q, k, v, o
    f_hf = _swiglu_width(gpt_block, llama_attn, D)
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=D, n_layer=L, n_head=H))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=CONTEXT, hidden_size=D, intermediate_size=f_hf,
        num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=kv, tie_word_embeddings=True))
    for name, model in (("hf_gpt2", gpt2), ("hf_llama", llama)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder / name / "hf_model")
        (folder / name / "submission.toml").write_text(_toml(name, "hf_model"))
    out["hf"] = {"gpt2": folder / "hf_gpt2", "llama": folder / "hf_llama", "d_ff": f_hf, "kv_heads": kv,
                 "gpt2_params": sum(p.numel() for p in gpt2.parameters()),
                 "llama_params": sum(p.numel() for p in llama.parameters()),
                 "gpt2_blocks": L * gpt_block, "llama_blocks": L * (llama_attn + 3 * D * f_hf)}

    # pt: nanoGPT's ckpt.pt and CS336's model.pt + model_config.json (the canonical GPT's weights, renamed)
    cs_attn = 2 * D + 4 * D * D  # ln1, ln2; q, k, v, output_proj without biases
    f_pt = _swiglu_width(gpt_block, cs_attn, D)
    torch.manual_seed(1)
    nano = GPT(GPTConfig(vocab_size=VOCAB, context=CONTEXT, n_layers=L, d_model=D, n_heads=H))
    torch.manual_seed(2)
    cs = GPT(GPTConfig(vocab_size=VOCAB, context=CONTEXT, n_layers=L, d_model=D, n_heads=H, d_ff=f_pt,
                       norm_type="rmsnorm", ln_bias=False, positions="rope", rope_pairs="interleaved",
                       activation="silu", gated=True, bias=False, tied=False))
    (folder / "pt_nanogpt").mkdir(parents=True, exist_ok=True)
    torch.save({"model": nano.state_dict(), "iter_num": 0, "best_val_loss": 0.0,
                "model_args": {"n_layer": L, "n_head": H, "n_embd": D, "block_size": CONTEXT, "bias": True,
                               "vocab_size": VOCAB, "dropout": 0.0}}, folder / "pt_nanogpt" / "ckpt.pt")
    (folder / "pt_nanogpt" / "submission.toml").write_text(_toml("pt_nanogpt", "ckpt.pt"))
    names = {"transformer.wte.weight": "token_embeddings.weight", "transformer.ln_f.weight": "ln_final.weight",
             "lm_head.weight": "lm_head.weight"}
    for i in range(L):
        names.update({f"transformer.h.{i}.{ours}.weight": f"layers.{i}.{theirs}.weight" for ours, theirs in (
            ("ln_1", "ln1"), ("ln_2", "ln2"), ("attn.c_proj", "attn.output_proj"), ("mlp.c_fc", "ffn.w1"),
            ("mlp.c_up", "ffn.w3"), ("mlp.c_proj", "ffn.w2"))})
    sd = {}
    for key, value in cs.state_dict().items():
        if key.endswith("attn.c_attn.weight"):
            i = key.split(".")[2]
            for part, w in zip(("q", "k", "v"), value.split(D, dim=0)):
                sd[f"layers.{i}.attn.{part}_proj.weight"] = w.clone()
        elif key in names:
            sd[names[key]] = value
    (folder / "pt_cs336").mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "pt_cs336" / "model.pt")
    (folder / "pt_cs336" / "model_config.json").write_text(json.dumps(
        {"vocab_size": VOCAB, "context_length": CONTEXT, "d_model": D, "num_layers": L, "num_heads": H,
         "d_ff": f_pt, "rope_theta": 10000.0}))
    (folder / "pt_cs336" / "submission.toml").write_text(_toml("pt_cs336", "model.pt"))
    out["pt"] = {"gpt2": folder / "pt_nanogpt", "llama": folder / "pt_cs336", "d_ff": f_pt, "kv_heads": H,
                 "gpt2_params": sum(p.numel() for p in nano.parameters()),
                 "llama_params": sum(p.numel() for p in cs.parameters()),
                 "gpt2_blocks": L * gpt_block, "llama_blocks": L * (cs_attn + 3 * D * f_pt)}
    return out


def _cpu_s() -> float:
    """CPU seconds of this process and of its children waited for (the checkpoint reader's process): on a
    machine shared with other work, a fairer clock than the wall's."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _secs(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def measure(*, d_model: int = 128, n_layers: int = 4, n_heads: int = 4, rounds: int = 3, max_tokens: int = 1024,
            warmup: bool = True, threads: int = 1, paths: tuple[str, ...] = ("hf", "pt"),
            log: Callable[[str], None] | None = None) -> list[dict]:
    """One row per path: the median seconds of each side over `rounds` alternating rounds (after an untimed
    warm-up round unless `warmup` is False: then the first round also pays for imports and the data), their
    ratio Llama / GPT-2, the layouts the grader chose, and the parameter counts. Torch runs on `threads`
    threads meanwhile (0: as it is)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(d_model=d_model, n_layers=n_layers, n_heads=n_heads, rounds=rounds, max_tokens=max_tokens,
                        warmup=warmup, paths=paths, log=log)
    finally:
        torch.set_num_threads(before)


def _measure(*, d_model: int, n_layers: int, n_heads: int, rounds: int, max_tokens: int, warmup: bool,
             paths: tuple[str, ...], log: Callable[[str], None] | None) -> list[dict]:
    from harness.course.config import capped_course_text
    from harness.grading.measure import Job
    from harness.grading.measure import measure as grade_one

    rows = []
    with tempfile.TemporaryDirectory(prefix="harness-arch-bench-") as tmp:
        root = Path(tmp)
        pairs = write_pairs(root / "class", d_model=d_model, n_layers=n_layers, n_heads=n_heads)
        course = root / "course.toml"
        course.write_text(capped_course_text(max_tokens))

        def once(sub: Path):
            job = Job(id=sub.name, paths=[str(sub)], course_path=str(course))
            t0, c0 = time.perf_counter(), _cpu_s()
            result = grade_one(job)
            seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
            if result.status != "graded":
                raise RuntimeError(f"{sub.name} was not graded: {result.error}")
            return seconds, cpu, result

        for path in paths:
            pair = pairs[path]
            results = {side: once(pair[side])[2] for side in ("gpt2", "llama")} if warmup else {}
            times: dict[str, list[float]] = {"gpt2": [], "llama": []}
            cpus: dict[str, list[float]] = {"gpt2": [], "llama": []}
            for r in range(rounds):
                for side in (("gpt2", "llama") if r % 2 == 0 else ("llama", "gpt2")):
                    seconds, cpu, results[side] = once(pair[side])
                    times[side].append(seconds)
                    cpus[side].append(cpu)
            g, l_ = statistics.median(times["gpt2"]), statistics.median(times["llama"])
            gc, lc = statistics.median(cpus["gpt2"]), statistics.median(cpus["llama"])
            row = {"path": path, "gpt2_s": g, "llama_s": l_, "ratio": l_ / g, "aim": AIM, "rounds": rounds,
                   "gpt2_cpu_s": gc, "llama_cpu_s": lc, "cpu_ratio": lc / gc,
                   "gpt2_times": times["gpt2"], "llama_times": times["llama"],
                   "gpt2_layout": results["gpt2"].checkpoint.layout,
                   "llama_layout": results["llama"].checkpoint.layout,
                   **{k: pair[k] for k in ("d_ff", "kv_heads", "gpt2_params", "llama_params", "gpt2_blocks",
                                           "llama_blocks")},
                   "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "max_tokens": max_tokens}
            rows.append(row)
            if log:
                log(f"{path}: GPT-2 style {g:.2f} s ({row['gpt2_layout']}), Llama style {l_:.2f} s "
                    f"({row['llama_layout']}): {row['ratio']:.2f}x (aim <= {AIM}x); CPU {gc:.2f} s vs {lc:.2f} s: "
                    f"{row['cpu_ratio']:.2f}x; rounds (s) {_secs(times['gpt2'])} vs {_secs(times['llama'])}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads while measuring (0: as it is)")
    p.add_argument("--max-tokens", type=int, default=1024, help="evaluation cap of the benchmark's course")
    a = p.parse_args()
    for r in measure(d_model=a.d_model, n_layers=a.layers, n_heads=a.heads, rounds=a.rounds,
                     max_tokens=a.max_tokens, threads=a.threads, log=lambda s: print(s, flush=True)):
        print(json.dumps({k: v for k, v in r.items()}, default=str))


if __name__ == "__main__":
    main()
