"""A results.json as the grader writes it (the contract `harness.reporting.report` renders), for six submissions
modelled on the seed reports: a GPT with an epoch curve and a claim the harness does not reproduce, one with
training claims only, an error, a step curve with end-of-text as padding, an MLM with an override, and a
look-ahead copy with grader-only similarity. Nothing is graded: every number is written here, so the reports
can be rendered in a second. The report tests and `benchmarks/report.py` both render `make_results()`.
"""

from __future__ import annotations

import math

from harness import __version__
from harness.course.config import load_course
from harness.grading.findings import CATALOGUE

RUBRIC = [("Checkpoint loads and is evaluated", 20), ("Architecture meets the requirements", 15),
          ("No look-ahead", 10), ("Validation perplexity", 35), ("Reports a validation metric", 10),
          ("Claims match the recomputed numbers", 10)]
UNIGRAM_LOSS, UNIFORM_LOSS = 7.6212, math.log(50257)


def _score(points: list[float], whys: list[str], overrides: list | None = None) -> dict:
    criteria = [{"name": n, "points": p, "max": float(mx), "why": w} for (n, mx), p, w in zip(RUBRIC, points, whys)]
    return {"total": round(sum(points), 2), "max": 100.0, "criteria": criteria, "overrides": overrides or []}


def _finding(code: str, message: str, grader_only: bool = False) -> dict:
    return {"code": code, "severity": CATALOGUE[code][0], "message": message, "grader_only": grader_only}


def _metrics(loss: float, tokens: int = 53_284) -> dict:
    return {"protocol": "clm-v1", "loss": loss, "ppl": math.exp(loss), "bits_per_byte": loss / math.log(2) / 4.41,
            "word_ppl": math.exp(loss * 1.31), "tokens": tokens, "unigram_loss": UNIGRAM_LOSS,
            "unigram_ppl": math.exp(UNIGRAM_LOSS), "uniform_loss": UNIFORM_LOSS, "uniform_ppl": 50257.0}


def _gpt_model(**kw) -> dict:
    m = {"family": "gpt", "n_layers": 2, "d_model": 128, "n_heads": 4, "d_ff": 512, "vocab_size": 50257,
         "context": 64, "params": 6_841_600, "tied": True, "norm": "pre", "activation": "gelu", "positions": "learned",
         "sources": {"n_heads": "submission.toml", "norm": "weights", "activation": "submission.toml"}}
    m.update(kw)
    return m


def _claims(curve=(), curve_source=None, **values) -> dict:
    keys = ("val_loss", "val_ppl", "train_loss", "train_ppl", "params")
    return {**{k: values.get(k) for k in keys},
            "sources": {k: values.get("source", "submission.toml") for k in keys if values.get(k) is not None},
            "curve": list(curve), "curve_source": curve_source}


def _epoch_curve() -> list[dict]:
    pts = []
    for e in range(1, 11):
        tl = 10.3 - 4.2 * (1 - math.exp(-(e - 1) / 2.5))
        vl = tl + 0.1 + 0.03 * e
        pts.append({"step": float(e), "axis": "epoch", "train_loss": round(tl, 3), "val_loss": round(vl, 3),
                    "train_ppl": round(math.exp(tl), 1), "val_ppl": round(math.exp(vl), 1)})
    return pts


def _step_curve(n: int = 400) -> list[dict]:
    return [{"step": float(s), "axis": "step", "train_loss": 10.8 * math.exp(-s / 90) + 6.2 + 0.15 * math.sin(s),
             "val_loss": None, "train_ppl": None, "val_ppl": None} for s in range(0, n * 5, 5)]


def reference_curve() -> list[dict]:
    pts = []
    for i in range(0, 51):
        step = i * 100
        tl = 5.2 + 5.6 * math.exp(-step / 700)
        vl = 5.4 + 5.4 * math.exp(-step / 700) if i % 5 == 0 else None
        pts.append({"step": step, "epoch": step * 32 * 64 / 937_022, "tokens": step * 32 * 64, "train_loss": tl,
                    "val_loss": vl, "train_ppl": math.exp(tl), "val_ppl": math.exp(vl) if vl else None})
    return pts


def make_results() -> dict:
    course = load_course()
    ok_why = ["loaded and evaluated on the course's data", "within the assignment's requirements",
              "predictions do not depend on later tokens"]
    subs = [
        {   # seed 000: claims a validation loss the harness does not reproduce; logged per epoch
            "id": "s01-khan", "student": "Aman Khan", "status": "graded", "error": None,
            "checkpoint": {"path": "s01-khan/mini_gpt_checkpoint.pt", "sha256": "ab" * 32, "format": "torch-pickle",
                           "layout": "minigpt"},
            "model": _gpt_model(context=512), "metrics": _metrics(6.8712),
            "claims": _claims(_epoch_curve(), "training_log.csv", val_loss=6.54, val_ppl=693.0, train_loss=6.10,
                              train_ppl=446.0, params=6_700_000),
            "findings": [_finding("val-claim-mismatch", "Claimed validation loss 6.54; recomputed loss 6.871 "
                                  "(perplexity 964), 0.33 nats apart (tolerance 0.25)."),
                         _finding("similar-weights", "Weights match s06-copy at cosine similarity 0.9995.", True)],
            "score": _score([20, 15, 10, 17.42, 10, 5], ok_why + [
                "perplexity 964.0: 49% of the way from the unigram baseline 2042.4 to full marks at 248.5",
                "validation metric reported (submission.toml)", "val-claim-mismatch"]),
            "similar_to": [{"id": "s06-copy", "similarity": 0.99953}],
        },
        {   # seed 001: training metrics only
            "id": "s02-nolan", "student": "Ravi Nolan", "status": "graded", "error": None,
            "checkpoint": {"path": "s02-nolan/model.pt", "sha256": "cd" * 32, "format": "torch-pickle", "layout": "nanogpt"},
            "model": _gpt_model(params=7_796_224, tied=False), "metrics": _metrics(6.2104),
            "claims": _claims(train_loss=5.47, train_ppl=238.59, params=7_800_000, source="report.pdf (best effort)"),
            "findings": [_finding("no-validation-metric", "Only training metrics were reported (training loss 5.47, "
                                  "training perplexity 238.59); no validation loss or perplexity.")],
            "score": _score([20, 15, 10, 27.71, 0, 10], ok_why + [
                "perplexity 498.1: 79% of the way", "no validation loss or perplexity reported",
                "reported numbers agree with the recomputed ones"]),
            "similar_to": [],
        },
        {   # seed 002: a vocabulary of 49,805 outputs: cannot be scored
            "id": "s03-han", "student": "Yazhen Han", "status": "error",
            "error": {"code": "vocab-mismatch", "message": "The model has 49,805 outputs, which matches no known "
                      "tokenizer (gpt2 has 50,257 tokens): it cannot be scored on the course's data."},
            "checkpoint": {"path": "s03-han/ckpt.pt", "sha256": "ef" * 32, "format": "torch-pickle", "layout": "minigpt"},
            "model": {"family": "gpt", "n_layers": 1, "d_model": 64, "n_heads": 2, "d_ff": 256, "vocab_size": 49805,
                      "context": 64, "params": 6_479_053, "sources": {}},
            "metrics": None,
            "claims": _claims(train_loss=0.2274, train_ppl=1.26, params=6_479_053),
            "findings": [_finding("vocab-mismatch", "The model has 49,805 outputs, which matches no known tokenizer "
                                  "(gpt2 has 50,257 tokens): it cannot be scored on the course's data.")],
            "score": _score([0, 15, 0, 0, 0, 0], ["not evaluated: The model has 49,805 outputs", "within the "
                            "assignment's requirements", "causality not checked: the model was not evaluated",
                            "no recomputed perplexity", "no validation loss or perplexity reported",
                            "nothing recomputed to check the claims against"]),
            "similar_to": [],
        },
        {   # seed 003: EOT as padding, logged per step, a sweep
            "id": "s04-sweep", "student": "Lee Park", "status": "graded", "error": None,
            "checkpoint": {"path": "s04-sweep/outcome/mini_gpt_baseline.pt", "sha256": "12" * 32,
                           "format": "torch-pickle", "layout": "minigpt"},
            "model": _gpt_model(tied=False, params=13_281_536), "metrics": _metrics(6.4531),
            "claims": _claims(_step_curve(), "outcome/results_table.csv", train_loss=6.21, train_ppl=497.7,
                              source="log outcome/results_table.csv"),
            "findings": [_finding("no-validation-metric", "Only training metrics were reported (training loss 6.21); "
                                  "no validation loss or perplexity."),
                         _finding("pad-is-eot", "End-of-text targets cost 13.12 nats on average, more than a uniform "
                                  "guess (10.82), while other tokens cost 6.45: the model was never trained to "
                                  "predict end-of-text.")],
            "score": _score([20, 15, 10, 23.1, 0, 10], ok_why + ["perplexity 634.5: 66% of the way",
                            "no validation loss or perplexity reported", "reported numbers agree with the recomputed ones"]),
            "similar_to": [],
        },
        {   # seed 004: BERT-style masked LM
            "id": "s05-bert", "student": "Mina Osei", "status": "graded", "error": None,
            "checkpoint": {"path": "s05-bert/model.safetensors", "sha256": "34" * 32, "format": "safetensors",
                           "layout": "hf-bert"},
            "model": {"family": "mlm", "n_layers": 3, "d_model": 256, "n_heads": 4, "d_ff": 1024, "vocab_size": 30522,
                      "context": 512, "params": 10_187_322, "tied": True, "norm": "post", "activation": "gelu",
                      "positions": "learned", "sources": {"n_heads": "config.json"}},
            "metrics": {"protocol": "mlm-v1", "loss": 6.5012, "ppl": math.exp(6.5012), "accuracy": 0.1374,
                        "tokens": 8_117, "unigram_loss": 7.12, "unigram_ppl": math.exp(7.12),
                        "uniform_loss": math.log(30522), "uniform_ppl": 30522.0},
            "claims": _claims(val_loss=6.48, val_ppl=657.0, train_loss=6.43),
            "findings": [],
            "score": _score([20, 15, 10, 12.3, 10, 10], ["loaded and evaluated on the course's data",
                            "within the assignment's requirements", "a masked LM is bidirectional by design",
                            "perplexity 666.0: 35% of the way", "validation metric reported (submission.toml)",
                            "reported numbers agree with the recomputed ones"],
                            overrides=[{"id": "s05-bert", "criterion": "Validation perplexity", "points": 12.3,
                                        "reason": "MLM reference re-trained after the deadline"}]),
            "similar_to": [],
        },
        {   # a copy of s01 whose attention is not masked
            "id": "s06-copy", "student": "Sam O'Brien \"Jr\"", "status": "graded", "error": None,
            "checkpoint": {"path": "s06-copy/model.pt", "sha256": "56" * 32, "format": "torch-pickle", "layout": "minigpt"},
            "model": _gpt_model(n_layers=8), "metrics": _metrics(2.1034),
            "claims": _claims(val_loss=2.11, val_ppl=8.25),
            "findings": [_finding("causal-leak", "Predictions for earlier positions changed when only later tokens changed."),
                         _finding("arch-requirements", "Outside the assignment's requirements: n_layers = 8 (allowed 1–6)."),
                         _finding("similar-weights", "Weights match s01-khan at cosine similarity 0.9995.", True)],
            "score": _score([20, 0, 0, 0, 10, 10], ["loaded and evaluated on the course's data",
                            "Outside the assignment's requirements: n_layers = 8 (allowed 1–6).",
                            "predictions change when later tokens change",
                            "perplexity 8.2 is invalid: the model looks ahead", "validation metric reported (submission.toml)",
                            "reported numbers agree with the recomputed ones"]),
            "similar_to": [{"id": "s01-khan", "similarity": 0.99953}],
        },
    ]
    return {
        "harness_version": __version__,
        "course": {"name": course.name, "id": course.id, "fingerprint": course.fingerprint},
        "data": {"source": "wiki-vital", "split": "validation", "manifest_sha256": "9f" * 32, "tokenizer": "gpt2"},
        "protocol": {"clm": {"protocol": "clm-v1", "context": 64, "stride": 64, "max_tokens": None},
                     "mlm": {"protocol": "mlm-v1", "context": 128, "seed": 1234, "max_tokens": None}},
        "reference": {"gpt": {"loss": 5.4152, "ppl": math.exp(5.4152), "params": 6_841_600,
                              "path": "reference_model/gpt", "curve": reference_curve()},
                      "mlm": {"loss": 5.91, "ppl": math.exp(5.91), "params": 10_187_322, "accuracy": 0.18,
                              "path": "reference_model/mlm", "curve": []}},
        "device": "cpu", "generated": "2026-11-22",
        "submissions": subs,
    }
