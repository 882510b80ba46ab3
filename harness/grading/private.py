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


def metrics_of(r: Any, public: Any = None) -> Any:
    """A result as the `Metrics` results.json holds (the baselines' perplexities added, as the public's)."""
    from harness.grading.results import Metrics

    metrics = Metrics.from_json(r.to_dict())
    if metrics.unigram_loss is not None:
        metrics.unigram_ppl = float(np.exp(metrics.unigram_loss))
    if metrics.uniform_loss is not None:
        metrics.uniform_ppl = float(np.exp(metrics.uniform_loss))
    if public is not None and public.partial:
        metrics.partial = public.partial
    return metrics


def _titles(source: Any, split: str) -> list[str] | None:
    try:
        return [d.title for d in source.split(split)]
    except Exception:  # a source without that split's documents at hand: the evidence goes unnamed
        return None


def measure_private(job: Any, course: Any, family: str, model: Any, frozen: Any, tokenizer: Any, train: Any,
                    source: Any, public_result: Any, result: Any) -> None:
    """Sets, on the `Measurement` of a grading job on a course with a private split: `private` (split,
    manifest, metrics by the course's protocol through `score`, as the public split's) and `documents`
    {public, private}: per-document losses (the cache keeps them; results.json does not). A public-only job
    (`harness check`) gets nothing here."""
    from harness.grading.results import PrivateSplit
    from harness.metrics.score import EvalData, score

    if not getattr(job, "private", False) or not course.data_private:
        return
    split = frozen.split(course.data_private)
    r = score(model, family, EvalData(split, tokenizer, train), course.eval_settings(family))
    result.private = PrivateSplit(split=course.data_private, manifest_sha256=frozen.manifest_sha256,
                                  metrics=metrics_of(r, result.metrics))
    public = document_losses(public_result, frozen.split(course.data_split), tokenizer).to_dict()
    public["titles"] = _titles(source, course.data_split)
    result.documents = {"public": public, "private": document_losses(r, split, tokenizer).to_dict()}
