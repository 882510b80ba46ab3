"""The private split, measured beside the public one (`harness grade` only), and both splits' per-document
losses, which `trained-on-validation` compares.

Measured through the very path the public split is (the same model object, tokenizer, frozen data and
protocol settings), so the two numbers differ only by their documents. `harness check` never calls this with
`job.private` set: a student's run neither computes nor holds the private numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.metrics.documents import document_losses


def evaluate_split(family: str, model: Any, split: Any, tokenizer: Any, settings: Any, train: Any) -> Any:
    """The course's protocol for `family` on `split`, with the course's parameters (as the public split)."""
    from harness.metrics.evaluate import evaluate_clm, evaluate_mlm

    if family == "mlm":
        return evaluate_mlm(model, split, tokenizer, context=settings.context, seed=settings.seed,
                            max_tokens=settings.max_tokens or None, pseudo_ppl_tokens=settings.pseudo_ppl_tokens,
                            train_split=train)
    return evaluate_clm(model, split, tokenizer, context=settings.context, stride=settings.stride or None,
                        max_tokens=settings.max_tokens or None, train_split=train)


def metrics_of(r: Any, public_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """A result as the `metrics` dict results.json holds (the baselines' perplexities added, as the public's)."""
    metrics = r.to_dict()
    for k in ("unigram_loss", "uniform_loss"):
        if metrics.get(k) is not None:
            metrics[k.replace("_loss", "_ppl")] = float(np.exp(metrics[k]))
    if public_metrics and public_metrics.get("partial"):
        metrics["partial"] = public_metrics["partial"]
    return metrics


def _titles(source: Any, split: str) -> list[str] | None:
    try:
        return [d.title for d in source.split(split)]
    except Exception:  # a source without that split's documents at hand: the evidence goes unnamed
        return None


def measure_private(job: Any, course: Any, family: str, model: Any, frozen: Any, tokenizer: Any, train: Any,
                    source: Any, public_result: Any, result: dict[str, Any]) -> None:
    """Adds to `result`, for a grading job on a course with a private split: `private` {split, manifest_sha256,
    metrics} and `documents` {public, private}: per-document losses (the cache keeps them; results.json does
    not). A public-only job (`harness check`) gets nothing here."""
    if not getattr(job, "private", False) or not course.data_private:
        return
    split = frozen.split(course.data_private)
    r = evaluate_split(family, model, split, tokenizer, course.eval_settings(family), train)
    result["private"] = {"split": course.data_private, "manifest_sha256": frozen.manifest_sha256,
                         "metrics": metrics_of(r, result.get("metrics"))}
    public = document_losses(public_result, frozen.split(course.data_split), tokenizer).to_dict()
    public["titles"] = _titles(source, course.data_split)
    result["documents"] = {"public": public, "private": document_losses(r, split, tokenizer).to_dict()}
