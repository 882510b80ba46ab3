"""Every benchmark in one run, side by side, each against a baseline measured in the same run.

    python -m benchmarks [--quick | --tiny] [--only eval,train,grade,arch,report,scaling]
                         [--append BENCHMARKS.md | --no-append] [--device cpu|cuda] [--json]

What is measured (the scripts beside this file, each also runnable alone):
- eval (eval.py): tokens/s of our `evaluate_clm` (fused head) on one thread against lm-evaluation-harness's
  `loglikelihood_rolling`, the textbook strided-perplexity loop and our plain logits path on the seeds'
  mini-GPT, each also as a fraction of this machine's fp32 matmul peak (a large `torch.mm`, same rounds);
- train (train.py): tokens/s of the harness's training step against a plain PyTorch loop, same model, batches
  and optimizer (the reference GPT; the full run adds the reference MLM);
- grade (grade.py): a test-scale example class graded from scratch, 2 workers against 1 (submissions per
  minute), with the fork servers against fresh interpreters (HARNESS_FORKSERVER=0), and the cached rerun's
  time against the first run's; a checkpoint read forked against fresh; (full size only) a class of 30 at the demo's
  scale, every validation target, per stage and whole, against the 5-minute aim and its arithmetic limit;
  (sandbox.py) an honest custom-code submission graded inside the sandbox's boundary against the same
  without it, a window's logits through the shared memory file against the pipe, and custom code's
  evaluation through the fused head against the logits path;
- arch (arch.py): seconds per submission of a Llama-style model (RMSNorm, RoPE, SwiGLU) against the
  GPT-2-style one of the same non-embedding size, each graded by the grading worker's own function, warm:
  Hugging Face `save_pretrained` folders and CS336 / nanoGPT state dicts, against the aim of at most 1.5x;
- report (report.py): seconds per student PDF, warm, wall and CPU time, against the 2 s aim;
- scaling (scaling.py): how our evaluation's time grows with the targets scored (1x, 2x, 4x) and with the
  model (2, 4, 8 layers at d_model 128: 1x, 2x, 4x the non-embedding FLOPs, vocabulary fixed), against
  linear growth.

Ratios read "above 1: ours is better": ours / baseline for rates, baseline / ours for times; scaling's ratio
is the time ratio to its 1x setting, with the ideal (linear) one and their quotient in the notes. On a
shared machine wall-clock figures are noisy: every comparison alternates its sides over rounds and keeps the
best of each. `--quick` cuts sizes and rounds (a few minutes on 2 cores; grade takes four submissions of
the class), `--tiny` to the least that runs (for the tests: its figures mean little; grade takes a class of
two submissions written on the spot). The test-scale class is written once and kept in the harness's cache
(`$HARNESS_CACHE/bench/`, about 130 MB). The combined table is printed, and appended to BENCHMARKS.md as
a dated section named after the machine unless `--no-append`. A benchmark that fails is one row saying so
and why (its traceback goes to stderr); the others are still measured and the table is still appended, and
the exit status is 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("eval", "train", "grade", "arch", "report", "scaling")
REPORT_AIM_S = 2.0  # seconds per student PDF
# the test class's custom_loop never returns: the suite leaves it out rather than wait for its timeout
GRADE_DROP = ("custom_loop",)
QUICK_GRADE_IDS = ("broken_file", "hostile_pickle", "hf_gpt2_clean", "nanogpt_clean")
TINY_TRAIN = ("d_model=32", "n_layers=1", "n_heads=2", "batch_size=4")

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "eval": dict(tokens=8192, rounds=5, strides=(64, 32)),
        "train": dict(families=("gpt", "mlm"), steps=6, repeat=2, overrides=()),
        "grade": dict(tiny=False, keep=None, max_tokens=4096, timeout_s=300, sandbox_rounds=3, sandbox_tokens=4096,
                      read_rounds=5,
                      limit=dict(submissions=30, scale="demo")),
        "arch": dict(d_model=256, n_layers=6, n_heads=8, rounds=5, max_tokens=4096, warmup=True),
        "report": dict(repeat=2, students=None, class_report=True),
        "scaling": dict(tokens=2048, rounds=5),
    },
    "quick": {
        "eval": dict(tokens=2048, rounds=3, strides=(64, 32)),
        "train": dict(families=("gpt",), steps=2, repeat=2, overrides=()),
        "grade": dict(tiny=False, keep=QUICK_GRADE_IDS, max_tokens=1024, timeout_s=120, sandbox_rounds=2,
                      sandbox_tokens=1024, read_rounds=3),
        "arch": dict(d_model=128, n_layers=4, n_heads=4, rounds=3, max_tokens=1024, warmup=True),
        "report": dict(repeat=1, students=3, class_report=False),
        "scaling": dict(tokens=1024, rounds=4),
    },
    "tiny": {
        "eval": dict(tokens=128, rounds=1, strides=(64,)),
        "train": dict(families=("gpt",), steps=1, repeat=1, overrides=TINY_TRAIN),
        "grade": dict(tiny=True, keep=None, max_tokens=256, timeout_s=120, sandbox_rounds=1, sandbox_tokens=256,
                      read_rounds=1),
        "arch": dict(d_model=32, n_layers=1, n_heads=2, rounds=1, max_tokens=256, warmup=False),
        "report": dict(repeat=1, students=1, class_report=False),
        "scaling": dict(tokens=64, rounds=1),
    },
}


def row(benchmark: str, measure: str, ours: float, baseline: float, unit: str, ratio: float, notes: str) -> dict:
    return {"benchmark": benchmark, "measure": measure, "ours": ours, "baseline": baseline, "unit": unit,
            "ratio": ratio, "notes": notes}


# ----------------------------------------------------------------------------------------------------------
# each benchmark: its script's measurement, turned into rows of the table
# ----------------------------------------------------------------------------------------------------------


def run_eval(size: dict, device: str, log: Callable[[str], None]) -> list[dict]:
    from benchmarks import eval as bench

    rows = []
    for r in bench.measure(tokens=size["tokens"], rounds=size["rounds"], strides=size["strides"], device=device,
                           log=log):
        S = r["stride"]
        setting = (f"mini-GPT 2L d128, vocab 50,257, ctx 64, {r['mflop_per_token']} MFLOP/pos; {r['targets']:,} "
                   f"targets, {r['threads']} thread(s), best of {size['rounds']} interleaved rounds")
        agree = (f"total NLLs (plain, fused{', lm-eval' if 'lm_eval_nll' in r else ''}) agree to "
                 f"{r['max_rel_nll_diff']:.1e}{'' if r['nll_agree'] else ' — NOT within 1e-6'}")
        aim = " (aim >= 1.8x at stride L/2)" if S < 64 else ""
        rows.append(row("eval", f"tokens/s, stride {S}: fused vs textbook loop", r["fused_tokens_per_s"],
                        r["textbook_tokens_per_s"], "tok/s", r["fused_vs_textbook"],
                        f"vs the HF perplexity guide's loop{aim}; {setting}"))
        base = "lm_eval" if "lm_eval_fraction_of_peak" in r else "textbook"
        rows.append(row("eval", f"fraction of matmul peak, stride {S}", r["fused_fraction_of_peak"],
                        r[f"{base}_fraction_of_peak"], "of peak",
                        r["fused_fraction_of_peak"] / r[f"{base}_fraction_of_peak"]
                        if r[f"{base}_fraction_of_peak"] else None,  # rounded to 0.1%: a GPU's peak is far off
                        f"fused head, FLOPs it executes (head on scored positions only); aim >= 60%; fp32 torch.mm "
                        f"peak {r['peak_gflops']:,} GFLOP/s, same rounds; baseline: "
                        f"{'lm-eval' if base == 'lm_eval' else 'the textbook loop'}'s; plain path "
                        f"{r['plain_fraction_of_peak']:.1%}"))
        if "lm_eval_tokens_per_s" in r:
            rows.append(row("eval", f"tokens/s, stride {S}: fused vs lm-eval", r["fused_tokens_per_s"],
                            r["lm_eval_tokens_per_s"], "tok/s", r["fused_vs_lm_eval"],
                            f"lm-evaluation-harness loglikelihood_rolling (HFLM, GPT2LMHeadModel of the same "
                            f"weights, batch 32, the same stream); aim >= 2x; {agree}"))
        rows.append(row("eval", f"tokens/s, stride {S}: fused vs plain path", r["fused_tokens_per_s"],
                        r["plain_tokens_per_s"], "tok/s", r["fused_vs_plain"],
                        f"our evaluate_clm, fused=False (full logits, one log-softmax per row); {agree}"))
    return rows


def run_train(size: dict, device: str, log: Callable[[str], None]) -> list[dict]:
    from benchmarks import train as bench

    rows = []
    for family in size["families"]:
        r = bench.measure(family, steps=size["steps"], repeat=size["repeat"], overrides=size["overrides"],
                          device=device)[0]
        rounds = ", ".join(f"{h / p:.2f}" for p, h in zip(r["plain_tokens_per_s"], r["harness_tokens_per_s"]))
        log(f"{family}: plain {r['best_plain']:.1f} tok/s, harness {r['best_harness']:.1f} tok/s (rounds {rounds})")
        extra = " (harness: bf16 autocast; plain: fp32)" if device == "cuda" else f", {r['threads']} threads"
        setting = (f"{r['n_layers']}L d{r['d_model']}, batch {r['batch_size']} x {r['context']}, {r['steps']} steps, "
                   f"best of {len(r['plain_tokens_per_s'])} alternating rounds (ratios {rounds}){extra}")
        rows.append(row("train", f"tokens/s, reference {family.upper()}", r["best_harness"], r["best_plain"], "tok/s",
                        r["ratio"], f"vs a plain PyTorch loop; {setting}"))
    return rows


def run_grade(size: dict, device: str, log: Callable[[str], None]) -> list[dict]:
    from benchmarks import grade as bench

    with tempfile.TemporaryDirectory() as tmp:
        if size["tiny"]:
            folder = bench.tiny_class(Path(tmp) / "class")
            which = "tiny class (a 1-layer d32 Hugging Face GPT-2 and a damaged file)"
        else:
            folder, wrote = bench.cached_class()
            log(f"example class: {'written in %.0f s' % wrote if wrote is not None else 'reused'} ({folder})")
            which = ("test-scale class less custom_loop (it only waits for its timeout)" if size["keep"] is None
                     else "subset of the test-scale class: " + ", ".join(size["keep"]))
        on_row = lambda r: log(f"{r['workers']} worker(s){', fresh interpreters' if r['fresh'] else ''}: first "
                               f"{r['first_s']:.1f} s, cached {r['cached_s']:.2f} s")  # noqa: E731
        r1, r2 = bench.measure(workers=(1, 2), max_tokens=size["max_tokens"], timeout_s=size["timeout_s"],
                               class_dir=folder, drop=GRADE_DROP, keep=size["keep"], on_row=on_row)
        [r2_fresh] = bench.measure(workers=(2,), max_tokens=size["max_tokens"], timeout_s=size["timeout_s"],
                                   class_dir=folder, drop=GRADE_DROP, keep=size["keep"], on_row=on_row, fresh=True)
    reads = bench.measure_reads(rounds=size["read_rounds"])
    ended = (f"{r1['errors']} ended in an error finding, as built" +
             (f"; {r1['timeouts']} / {r2['timeouts']} hit the {size['timeout_s']:.0f} s timeout"
              if r1["timeouts"] or r2["timeouts"] else f"; none hit the {size['timeout_s']:.0f} s timeout"))
    setting = f"{r1['submissions']} submissions, max_tokens {size['max_tokens']}"
    gpu = "; the grader puts workers on CUDA when present" if device == "cuda" or torch.cuda.is_available() else ""
    return [
        row("grade", "submissions/min, first run, 2 workers vs 1", r2["subs_per_min"], r1["subs_per_min"],
            "subs/min", r2["subs_per_min"] / r1["subs_per_min"],
            f"{which}; {setting}; first run {r2['first_s']:.0f} s vs {r1['first_s']:.0f} s; {ended}{gpu}"),
        row("grade", "submissions/min, first run, 2 workers: fork servers vs fresh interpreters", r2["subs_per_min"],
            r2_fresh["subs_per_min"], "subs/min", r2["subs_per_min"] / r2_fresh["subs_per_min"],
            f"{which}; {setting}; baseline HARNESS_FORKSERVER=0: every measuring process and checkpoint reader "
            f"imports torch afresh; first run {r2['first_s']:.0f} s vs {r2_fresh['first_s']:.0f} s; one run each"),
        row("grade", "seconds per checkpoint read: fork server vs fresh interpreter", reads["forked_s"],
            reads["fresh_s"], "s", reads["ratio"],
            f"a nanoGPT ckpt.pt (2L d128) read in its limited child, best of {reads['rounds']} alternating rounds"),
        row("grade", "cached rerun, 1 worker", r1["cached_s"], r1["first_s"], "s", r1["ratio"],
            "baseline: the first run; the rerun evaluates nothing (checked); one run each"),
        row("grade", "cached rerun, 2 workers", r2["cached_s"], r2["first_s"], "s", r2["ratio"],
            "baseline: the first run"),
        *_sandbox_rows(size, log),
        *_limit_rows(size, log),
    ]


def _limit_rows(size: dict, log: Callable[[str], None]) -> list[dict]:
    """The class at the limit (full size only: it writes the demo-scale class once, then grades 30)."""
    from benchmarks import grade as bench

    if not size.get("limit"):
        return []
    r = bench.measure_limit(**size["limit"], log=log)
    for line in bench.limit_lines(r):
        log(line)
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["stages_s"].items()) + f", PDF {r['pdf_s'] or 0:.0f} s"
    setting = (f"{r['submissions']} submissions (the {r['scale']}-scale class's folders in turn), "
               f"{'every validation target' if r['max_tokens'] is None else 'max_tokens %d' % r['max_tokens']}, "
               f"{r['workers']} workers")
    return [
        row("grade", f"class of {r['submissions']}, whole, vs the 5 min aim", r["whole_s"], 300.0, "s",
            300.0 / r["whole_s"], f"{setting}; stages summed over workers: {stages}"),
        row("grade", f"class of {r['submissions']}, whole, vs its arithmetic limit", r["whole_s"], r["limit_s"], "s",
            r["limit_s"] / r["whole_s"] if r["limit_s"] else None,
            f"limit: {r['eval_flops'] / 1e12:.2f} TFLOP of evaluation / {r['peak_flops'] / 1e9:.0f} GFLOP/s "
            f"({r['workers']} threads' fp32 matmul peak, the higher of before and after grading: "
            f"{' / '.join(f'{p / 1e9:.0f}' for p in r['peaks'])}); aim: within 2x"),
    ]


def _sandbox_rows(size: dict, log: Callable[[str], None]) -> list[dict]:
    from benchmarks import sandbox as bench
    from harness.sandbox.jail import boundary

    if not boundary().available:
        log(f"sandbox row left out: {boundary().detail}")
        return []
    r = bench.measure(rounds=size["sandbox_rounds"], max_tokens=size["sandbox_tokens"])
    t = bench.measure_transport(rounds=5 * size["sandbox_rounds"])
    e = bench.measure_custom_eval(rounds=size["sandbox_rounds"], tokens=size["sandbox_tokens"])
    return [row("grade", "honest custom code, sandboxed vs unsandboxed", r["sandboxed_s"], r["unsandboxed_s"], "s",
                r["ratio"], f"one custom-code submission (2-layer d64 transformer) measured end to end, "
                f"max_tokens {r['max_tokens']}, best of {r['rounds']}; {r['boundary']}; same loss both ways"),
            row("grade", "a window's logits from the sandbox: memory file vs pipe", t["shared_s"] * 1e3,
                t["pipe_s"] * 1e3, "ms", t["ratio"],
                f"{t['mb']:.1f} MB of float32 logits (vocab {t['vocab']:,}, context {t['context']}, the same 2-layer "
                f"d64 model); its forward alone, run here: {t['forward_s'] * 1e3:.2f} ms; 1 thread, best of "
                f"{t['rounds']} interleaved; the same logits each way"),
            row("grade", "custom code's evaluation: fused head vs logits path", e["fused_s"], e["logits_s"], "s",
                e["ratio"], f"the same sandboxed 2-layer d64 model (vocab 50,257, its head an nn.Linear: "
                f"{e['head']}), clm-v1 on {e['tokens']:,} targets, context {e['context']}, 1 thread, best of "
                f"{e['rounds']} interleaved; losses {e['fused_loss']:.9f} vs {e['logits_loss']:.9f}")]


def run_arch(size: dict, device: str, log: Callable[[str], None]) -> list[dict]:
    from benchmarks import arch as bench

    rows = []
    for r in bench.measure(log=log, **size):
        llama = (f"HF LlamaForCausalLM folder (GQA: {r['kv_heads']} kv of {r['n_heads']} heads; tied) vs "
                 "GPT2LMHeadModel folder" if r["path"] == "hf"
                 else "CS336 model.pt + model_config.json (untied) vs nanoGPT ckpt.pt")
        wall_ok, cpu_ok = r["ratio"] <= bench.AIM, r["cpu_ratio"] <= bench.AIM
        verdict = ("met" if wall_ok and cpu_ok else "NOT met" if not (wall_ok or cpu_ok)
                   else f"met by {'wall' if wall_ok else 'CPU'} time only")
        rounds = f"median of {r['rounds']} alternating rounds" + (" after a warm-up" if size["warmup"] else
                                                                   ", no warm-up (imports included)")
        rows.append(row("arch", f"s per submission, Llama vs GPT-2 style, {r['path']}", r["llama_s"], r["gpt2_s"],
                        "s", r["gpt2_s"] / r["llama_s"],
                        f"Llama / GPT-2 = {r['ratio']:.2f}x, aim <= {bench.AIM}x: {verdict}; CPU time "
                        f"{r['llama_cpu_s']:.2f} s vs {r['gpt2_cpu_s']:.2f} s: {r['cpu_ratio']:.2f}x; {llama}; layouts "
                        f"{r['llama_layout']} / {r['gpt2_layout']}; {r['n_layers']}L d{r['d_model']} "
                        f"{r['n_heads']} heads, SwiGLU d_ff {r['d_ff']}: block params {r['llama_blocks']:,} vs "
                        f"{r['gpt2_blocks']:,}, total {r['llama_params']:,} vs {r['gpt2_params']:,}; "
                        f"harness.grading.measure.measure, 1 torch thread, max_tokens {r['max_tokens']}, {rounds}"))
    return rows


def run_report(size: dict, device: str, log: Callable[[str], None]) -> list[dict]:
    from benchmarks import report as bench

    with tempfile.TemporaryDirectory() as tmp:
        r = bench.measure(repeat=size["repeat"], students=size["students"], class_report=size["class_report"],
                          out=Path(tmp))[0]
    wall, cpu = statistics.mean(r["renders_s"]), statistics.mean(r["cpu_s"])
    n = len(r["per_student_s"])
    renders = f"{len(r['renders_s'])} warm renders of {n} student{'s' * (n > 1)} (harness.demo.example_results)"
    stages = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in r["stages_s"].items())
    class_s = f"; class report {r['class_report_s']:.1f} s" if r["class_report_s"] is not None else ""
    log(f"student PDF: mean {wall:.2f} s wall, {cpu:.2f} s CPU; cold {r['cold_s']:.2f} s{class_s}")
    return [
        row("report", "s per student PDF, wall", wall, REPORT_AIM_S, "s", REPORT_AIM_S / wall,
            f"baseline: the 2 s aim; {renders}; max {max(r['renders_s']):.2f} s; first (cold) {r['cold_s']:.2f} s "
            f"after {r['import_s']:.1f} s of imports{class_s}"),
        row("report", "s per student PDF, CPU", cpu, REPORT_AIM_S, "s", REPORT_AIM_S / cpu,
            f"baseline: the 2 s aim; median stages (s): {stages}"),
    ]


def run_scaling(size: dict, device: str, log: Callable[[str], None]) -> list[dict]:
    from benchmarks import scaling as bench

    rows = []
    for r in bench.measure(tokens=size["tokens"], rounds=size["rounds"], device=device, log=log):
        if r["scale"] == 1:
            continue  # the baseline of the others
        if r["axis"] == "tokens":
            what = f"eval time, {r['scale']}x targets ({r['targets']:,})"
            how = f"2L d128; baseline {size['tokens']:,} targets"
        else:
            what = f"eval time, {r['scale']}x non-embedding FLOPs ({r['n_layers']} layers)"
            how = (f"d128, vocab 50,257 fixed: {r['mflop_per_position']} MFLOP/pos (head included); "
                   f"baseline 2 layers, {r['targets']:,} targets")
        rows.append(row("scaling", what, r["seconds"], r["seconds"] / r["time_ratio"], "s", r["time_ratio"],
                        f"ideal (linear) {r['ideal_ratio']:.2f}x, vs linear {r['vs_linear']:.2f}; {how}; best of "
                        f"{size['rounds']} interleaved rounds"))
    return rows


def failure_note(e: BaseException) -> str:
    """The failed row's notes: the exception's type and first line, and where in our code it was raised."""
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).is_relative_to(ROOT)]
    where = f" (at {Path(frames[-1].filename).relative_to(ROOT)}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}{': ' + first if first else ''}{where}"


RUNNERS = {"eval": run_eval, "train": run_train, "grade": run_grade, "arch": run_arch, "report": run_report,
           "scaling": run_scaling}


# ----------------------------------------------------------------------------------------------------------
# the table and the machine it was measured on
# ----------------------------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "of peak":
        return f"{value:.1%} of peak" if value >= 0.001 else f"{value:.2%} of peak"
    if unit == "s":
        return f"{value:,.0f} s" if value >= 100 else f"{value:.2f} s"
    if unit == "tok/s":
        return f"{value:,.0f} tok/s"
    return f"{value:,.1f} {unit}"


def table(rows: list[dict]) -> str:
    """A markdown table, its columns padded so it reads in a terminal too."""
    head = ["benchmark", "measure", "ours", "baseline", "ratio", "notes"]
    body = [[r["benchmark"], r["measure"], fmt(r["ours"], r["unit"]), fmt(r["baseline"], r["unit"]),
             f"{r['ratio']:.2f}x" if r["ratio"] is not None else "—", r["notes"].replace("|", "/")] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    widths[-1] = len(head[-1])  # the notes run on, unpadded
    right = {2, 3, 4}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(b) for b in body)])


def machine(device: str) -> str:
    cpu = None
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = " ".join(text.split(":", 1)[1].split())
                break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {cores} cores, torch {torch.__version__}"
    if device == "cuda":
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds: minutes, not a quarter hour")
    size.add_argument("--tiny", action="store_true", help="the least that runs, for tests; the figures mean little")
    ap.add_argument("--only", default=",".join(BENCHMARKS), metavar="NAMES",
                    help=f"comma-separated, of {', '.join(BENCHMARKS)} (default: all)")
    dest = ap.add_mutually_exclusive_group()
    dest.add_argument("--append", type=Path, default=ROOT / "BENCHMARKS.md", metavar="FILE",
                      help="append the table to this markdown file (default: BENCHMARKS.md)")
    dest.add_argument("--no-append", action="store_true", help="print only")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where eval, train and scaling run")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON on stdout instead of the table")
    a = ap.parse_args()

    only = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in BENCHMARKS]
    if unknown or not only:
        print(f"error: unknown benchmark {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
              f"{', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    if a.device == "cuda" and not torch.cuda.is_available():
        print(f"error: --device cuda was asked for, but this torch ({torch.__version__}) sees no CUDA device; "
              f"run with --device cpu", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    mode = "tiny" if a.tiny else "quick" if a.quick else "full"
    where = machine(a.device)
    started = dt.datetime.now(dt.timezone.utc)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"benchmarks ({mode}): {', '.join(only)} on {where}; load average {load:.1f}", file=sys.stderr)

    rows: list[dict] = []
    failed: list[str] = []
    t_all = time.perf_counter()
    for name in [n for n in BENCHMARKS if n in only]:
        def log(text: str, name: str = name) -> None:
            print(f"[{name}] {text}", file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        try:
            got = RUNNERS[name](SIZES[mode][name], a.device, log)
        except Exception as e:  # one benchmark's failure is a row; the others still run and are kept
            traceback.print_exc()
            failed.append(name)
            got = [row(name, "failed", None, None, "", None, failure_note(e))]
        log(f"done in {time.perf_counter() - t0:.0f} s")
        rows.extend(got)
    seconds = time.perf_counter() - t_all

    flags = " ".join(x for x in ("--quick" if a.quick else "", "--tiny" if a.tiny else "",
                                 f"--only {','.join(only)}" if len(only) < len(BENCHMARKS) else "",
                                 "--device cuda" if a.device == "cuda" else "") if x)
    summary = (f"`python -m benchmarks{' ' + flags if flags else ''}`: {seconds:.0f} s, torch threads "
               f"{torch.get_num_threads()}, load average {load:.1f} at the start. Ratio above 1: ours is better "
               f"(ours / baseline for rates, baseline / ours for times); scaling: time ratio to the 1x setting.")
    title = f"### Suite run {started:%Y-%m-%d %H:%M} UTC — {where}"
    if a.json:
        print(json.dumps({"title": title, "mode": mode, "machine": where, "device": a.device, "seconds": seconds,
                          "failed": failed, "rows": rows}, indent=2))
    else:
        print(f"{title}\n\n{summary}\n\n{table(rows)}")
    if not a.no_append:
        with open(a.append, "a", encoding="utf-8") as f:
            f.write(f"\n{title}\n\n{summary}\n\n{table(rows)}\n")
        print(f"appended to {a.append}" + (f", {len(failed)} benchmark(s) as a failed row" if failed else ""),
              file=sys.stderr)
    if failed:
        kept = "the other rows were kept" + (f" and appended to {a.append}" if not a.no_append else "")
        print(f"error: {', '.join(failed)} failed (see the traceback above and the table's failed row); {kept}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
