"""Findings: what a submission's numbers and report hide, each with a stable code, a severity and a
sentence a student understands.

`find()` is a pure function of what the pipeline measured (`Evaluation`), the course and the reference,
so each rule can be tested with values built in the test.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.course.config import Course
from harness.intake.claims import Claims

ERROR, WARNING, INFO = "error", "warning", "info"

# code: (severity, title, what it means and how to fix it) — the reports print the explanation.
CATALOGUE: dict[str, tuple[str, str, str]] = {
    "checkpoint-unsafe": (ERROR, "Checkpoint refused as unsafe",
        "The file would run code when loaded (a pickled object or a TorchScript archive). Save the weights "
        "alone: torch.save(model.state_dict(), path) or safetensors."),
    "checkpoint-unreadable": (ERROR, "Checkpoint unreadable",
        "The file is empty, truncated, not a checkpoint, or too big to read safely. Save it again and check "
        "that torch.load(path, weights_only=True) opens it."),
    "checkpoint-missing": (ERROR, "No checkpoint",
        "The submission holds no weights file. Hand in the .pt/.safetensors file (or name it in submission.toml)."),
    "layout-unknown": (ERROR, "Model layout not recognised",
        "The weights' names match no layout the harness knows. Submit a nanoGPT/minGPT/Hugging Face layout, "
        "or name your model code in submission.toml ([model] code = \"model.py:ClassName\")."),
    "model-code-failed": (ERROR, "Model code failed",
        "Your model code crashed, timed out, returned logits of the wrong shape or NaN, or did what the sandbox "
        "refuses (write outside its /tmp, read files outside your submission, the network, more than 64 "
        "processes, unbounded memory or output) when the harness ran it."),
    "sandbox-unavailable": (ERROR, "Model code not run: no sandbox on the grading machine",
        "The machine that graded this cannot isolate model code (bubblewrap is missing or namespaces are "
        "refused), so your code was not run; this is not your submission's fault. The grader installs "
        "bubblewrap (apt-get install bubblewrap) and grades again."),
    "model-code-fallback": (WARNING, "Model code could not be used",
        "The model code named in submission.toml could not run (see why), but the harness recognises the "
        "weights' layout, so they were graded through it. Fix the code so that `harness check` runs it."),
    "weights-nonfinite": (ERROR, "Weights contain NaN or Inf",
        "Some weights are not finite numbers, so every prediction is meaningless. Training diverged: lower "
        "the learning rate, clip gradients, and save a checkpoint from before the divergence."),
    "vocab-mismatch": (ERROR, "Output size matches no known tokenizer",
        "The model's output layer does not match the tokenizer it should use, so it cannot be scored on the "
        "course's data. Use the tokenizer's full vocabulary size (GPT-2: 50,257) for the embedding and head; if you "
        "trained your own tokenizer, hand in its files and name them in submission.toml (tokenizer = \"tokenizer.json\")."),
    "causal-leak": (ERROR, "The model looks ahead",
        "Changing a later token changed the predictions for earlier positions: attention is not causally "
        "masked, so the model saw the answer during training and its perplexity is not valid. Pass a causal "
        "mask (is_causal=True, or a triangular mask) to every attention layer."),
    "arch-requirements": (WARNING, "Architecture outside the assignment's requirements",
        "The architecture recognised in the weights is outside what the assignment asked for."),
    "params-claim-mismatch": (WARNING, "Parameter count differs from the claim",
        "The parameter count you reported is not what the weights hold (tied weights count once)."),
    "val-claim-mismatch": (WARNING, "Claimed validation loss differs from the recomputed one",
        "Your reported validation loss is far from what the harness measures on the course's validation data. "
        "Evaluate on the course's fixed data with `harness check` before you report."),
    "no-validation-metric": (WARNING, "Only training metrics reported",
        "You reported training loss or perplexity only. Training loss measures memory, not generalisation: "
        "hold out a validation split and report its loss and perplexity."),
    "no-claims": (INFO, "No numbers reported",
        "Neither submission.toml, the checkpoint, a training log nor the report gave a loss or perplexity to check."),
    "memorisation": (WARNING, "Training perplexity far below validation perplexity",
        "The claimed training perplexity is far below the recomputed validation perplexity: the model "
        "memorised its training data. Use more data, fewer epochs, or a smaller model, and report validation."),
    "trained-on-validation": (WARNING, "Trained on the evaluation data",
        "The model's loss on the public (validation) split sits far below its loss on the private split, by more "
        "than the reference model's own gap and the evaluation's noise, and some validation documents are known far "
        "better than any held-out one: the model saw validation documents in training. Train on the train split "
        "only; the grade uses the private split."),
    "worse-than-unigram": (WARNING, "Worse than counting tokens",
        "The recomputed perplexity is worse than a unigram model (token frequencies alone): the model has not "
        "learned to use context."),
    "pad-is-eot": (WARNING, "End-of-text used as padding and ignored in the loss",
        "The model never learned to predict the end-of-text token: it was used as padding and excluded from "
        "the loss. Use a separate padding id (or an attention mask) and keep end-of-text as a target."),
    "similar-weights": (WARNING, "Weights nearly identical to another submission",
        "This checkpoint's weights are identical or nearly so to another submission's (reported to the grader only)."),
    "calibration-unverified": (INFO, "Part of the architecture is a guess",
        "The weights, the checkpoint's config and submission.toml do not say this value, and the candidates' "
        "losses on training text were closer than the evaluation can separate, so the harness kept the default of "
        "the code students usually copy; the recomputed loss may be slightly off if your code differs. State the "
        "value under [model] in submission.toml."),
    "submission-warning": (INFO, "Note on the submission", "Something about the submission worth knowing."),
}

KNOWN_VOCABS = {50257: "gpt2", 50304: "gpt2 (padded to 50,304)", 30522: "bert-base-uncased", 28996: "bert-base-cased"}


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    message: str
    grader_only: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finding(code: str, message: str, *, grader_only: bool = False) -> Finding:
    return Finding(code, CATALOGUE[code][0], message, grader_only)


@dataclass
class Evaluation:
    """What the pipeline measured for one submission: the input of findings and rubric."""

    id: str
    student: str
    family: str | None = None
    model: dict[str, Any] = field(default_factory=dict)  # n_layers, d_model, n_heads, context, vocab_size, params
    metrics: dict[str, Any] | None = None  # loss, ppl, tokens, unigram_loss, uniform_loss, eot_loss, ...
    claims: Claims = field(default_factory=Claims)
    causal: dict[str, Any] | None = None  # {"ok": bool, "max_change": float, ...}; None: not checked
    nonfinite: tuple[str, ...] = ()
    tokenizer: dict[str, Any] = field(default_factory=dict)  # name, vocab_size, eot_id, named_by_student
    error: dict[str, str] | None = None  # {"code", "message"}: loading or evaluating failed
    warnings: tuple[str, ...] = ()
    pad_id: int | None = None  # a padding id read from the checkpoint's config, if any
    private_metrics: dict[str, Any] | None = None  # the private split's, where `harness grade` scored it


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def vocab_finding(n_outputs: int, tokenizer: dict[str, Any]) -> Finding | None:
    """The model's outputs against the tokenizer's vocabulary (a nanoGPT head padded up is fine)."""
    vocab = int(tokenizer.get("vocab_size") or 0)
    name = tokenizer.get("name", "the course's tokenizer")
    if vocab and vocab <= n_outputs <= vocab + 128:
        return None
    known = KNOWN_VOCABS.get(n_outputs)
    if known:
        return finding("vocab-mismatch", f"The model has {n_outputs:,} outputs, which is {known}'s vocabulary, "
                       f"not {name}'s {vocab:,}.")
    return finding("vocab-mismatch", f"The model has {n_outputs:,} outputs, which matches no known tokenizer "
                   f"({name} has {vocab:,} tokens): it cannot be scored on the course's data.")


def find(ev: Evaluation, course: Course, reference_ppl: float | None = None) -> list[Finding]:
    out: list[Finding] = []
    if ev.error:
        code = ev.error.get("code", "checkpoint-unreadable")
        out.append(Finding(code, CATALOGUE.get(code, (ERROR,))[0], ev.error.get("message", "")))
    if ev.nonfinite:
        names = ", ".join(ev.nonfinite[:3]) + (f" and {len(ev.nonfinite) - 3} more" if len(ev.nonfinite) > 3 else "")
        out.append(finding("weights-nonfinite", f"Tensors with NaN or Inf values: {names}."))
    if ev.causal is not None and not ev.causal.get("ok", True):
        out.append(finding("causal-leak", ev.causal.get("message") or
                           "Predictions for earlier positions changed when only later tokens changed."))
    out += _architecture(ev, course)
    out += _unverified(ev)
    out += _claims(ev, course)
    m = ev.metrics
    if m and m.get("unigram_loss") is not None and m["loss"] > m["unigram_loss"]:
        out.append(finding("worse-than-unigram", f"Recomputed perplexity {_fmt(m['ppl'])} is worse than the unigram "
                           f"baseline's {_fmt(math.exp(m['unigram_loss']))} on the same tokens."))
    # (not on partial metrics: a model without an end-of-text output at all says nothing about padding)
    if m and m.get("eot_loss") is not None and m.get("eot_targets", 0) >= 5 and m.get("uniform_loss") \
            and not m.get("partial"):
        # A model that saw EOT only as ignored padding pushes its logit down: worse than guessing uniformly.
        if m["eot_loss"] > m["uniform_loss"] and m["loss"] < m["uniform_loss"] - 1.0:
            out.append(finding("pad-is-eot", f"End-of-text targets cost {m['eot_loss']:.2f} nats on average, more than "
                               f"a uniform guess ({m['uniform_loss']:.2f}), while other tokens cost {m['loss']:.2f}: "
                               "the model was never trained to predict end-of-text."))
    elif ev.pad_id is not None and ev.pad_id == ev.tokenizer.get("eot_id") and ev.family == "gpt":
        out.append(finding("pad-is-eot", f"The checkpoint's configuration uses the end-of-text id {ev.pad_id} as padding."))
    out += [finding("submission-warning", w) for w in ev.warnings]
    return out


def _architecture(ev: Evaluation, course: Course) -> list[Finding]:
    if not ev.family or not ev.model:
        return []
    reqs = course.requirements.get(ev.family, {})
    problems = []
    for key, (lo, hi) in reqs.items():
        value = ev.model.get(key)
        if value is not None and not lo <= value <= hi:
            problems.append(f"{key} = {value:,} (allowed {lo:,}–{hi:,})")
    if not problems:
        return []
    return [finding("arch-requirements", "Outside the assignment's requirements: " + "; ".join(problems) + ".")]


def _unverified(ev: Evaluation) -> list[Finding]:
    """Architectural values nothing settled: calibration could not separate the candidates, or did not run."""
    names = list(ev.model.get("unverified") or ())
    if not names:
        return []
    calibration = ev.model.get("calibration") or {}
    parts = []
    for name in names:
        c = calibration.get(name)
        if c and c.get("margin") is not None:
            tried = ", ".join(f"{v!r} {loss:.5f}" for v, loss in zip(c["candidates"], c["losses"]) if loss is not None)
            parts.append(f"{name} = {c['chosen']!r} (losses {tried} nats on {c['tokens']:,} training tokens: "
                         f"{c['margin']:.2g} ± {c['stderr']:.2g} nats apart)")
        else:
            parts.append(f"{name} (the layout's default; calibration did not run)")
    def hint(n: str) -> str:
        # every candidate, not only the default kept: the default is not known to be the right one
        c = calibration.get(n)
        if not c or not c.get("candidates"):
            return f"{n} = ..."
        text = f"{n} = " + " or ".join(json.dumps(v) for v in c["candidates"])
        if c.get("best") is not None and c["best"] != c["chosen"]:
            text += f", the lowest loss here: {json.dumps(c['best'])}"
        return text

    return [finding("calibration-unverified", f"Not told by the weights, the checkpoint's config or submission.toml, "
                    f"and not settled by calibration: {'; '.join(parts)}. State the right one under [model] in "
                    f"submission.toml ({'; '.join(hint(n) for n in names)}).")]


def _claims(ev: Evaluation, course: Course) -> list[Finding]:
    c, m, tol = ev.claims, ev.metrics, course.tolerances
    out: list[Finding] = []
    if not c.any:
        return [finding("no-claims", "No loss, perplexity or parameter count was found in submission.toml, "
                        "the checkpoint, a training log or the report.")]
    if not c.has_validation and (c.train_loss is not None or c.train_ppl is not None):
        out.append(finding("no-validation-metric", "Only training metrics were reported "
                           f"({_claim_text(c)}); no validation loss or perplexity."))
    params = ev.model.get("params")
    if c.params is not None and params:
        gap = abs(c.params - params) / params
        if gap > tol.params_relative:
            out.append(finding("params-claim-mismatch", f"Claimed {c.params:,} parameters; the weights hold {params:,} "
                               f"({gap:.0%} apart, tolerance {tol.params_relative:.0%})."))
    if m:
        claimed_val = c.val_loss if c.val_loss is not None else (math.log(c.val_ppl) if c.val_ppl and c.val_ppl > 0 else None)
        if claimed_val is not None and abs(claimed_val - m["loss"]) > tol.val_loss_nats:
            what = f"loss {c.val_loss:.3g}" if c.val_loss is not None else f"perplexity {_fmt(c.val_ppl)}"
            out.append(finding("val-claim-mismatch", f"Claimed validation {what}; recomputed loss {m['loss']:.3f} "
                               f"(perplexity {_fmt(m['ppl'])}), {abs(claimed_val - m['loss']):.2f} nats apart "
                               f"(tolerance {tol.val_loss_nats})."))
        elif claimed_val is None and c.val_bpb is not None and m.get("bits_per_byte") and m.get("bytes"):
            # bits per byte = nats per token / ln 2 × tokens / bytes: the same tolerance, in bits per byte
            tol_bpb = tol.val_loss_nats / math.log(2) * m["tokens"] / m["bytes"]
            gap = abs(c.val_bpb - m["bits_per_byte"])
            if gap > tol_bpb:
                out.append(finding("val-claim-mismatch", f"Claimed validation bits per byte {c.val_bpb:.3g}; recomputed "
                                   f"{m['bits_per_byte']:.3f}, {gap:.2f} apart (tolerance {tol_bpb:.2f} bits per byte, "
                                   f"the same as {tol.val_loss_nats} nats per token on this text)."))
        train_ppl = c.train_ppl if c.train_ppl is not None else (math.exp(c.train_loss) if c.train_loss is not None else None)
        if train_ppl is not None and train_ppl > 0 and m["ppl"] > tol.memorisation_ratio * train_ppl:
            out.append(finding("memorisation", f"Claimed training perplexity {_fmt(train_ppl)}, but the recomputed "
                               f"validation perplexity is {_fmt(m['ppl'])} ({m['ppl'] / train_ppl:,.0f}× higher)."))
    return out


def _claim_text(c: Claims) -> str:
    parts = []
    if c.train_loss is not None:
        parts.append(f"training loss {c.train_loss:g}")
    if c.train_ppl is not None:
        parts.append(f"training perplexity {c.train_ppl:g}")
    return ", ".join(parts)
