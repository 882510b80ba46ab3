"""The one dispatch from a model family to its protocol: "gpt" is scored by clm-v1, "mlm" by mlm-v1.

Every caller that turns a model into a number comes here with the course's `EvalSettings` for the family
(grading, `harness eval`, calibration, training's validation), so no caller forgets a setting. A caller that
wants less (calibration's train slice, training's periodic cap) narrows the settings with
`dataclasses.replace`, where the change is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.families import check_family
from harness.metrics.clm import CLM_PROTOCOL, ClmResult, evaluate_clm
from harness.metrics.mlm import MLM_PROTOCOL, MlmResult, evaluate_mlm
from harness.metrics.nll import Progress

if TYPE_CHECKING:
    from harness.course.config import EvalSettings

PROTOCOL_OF = {"gpt": CLM_PROTOCOL, "mlm": MLM_PROTOCOL}


@dataclass(frozen=True)
class EvalData:
    """What a model is scored on: a frozen split, the tokenizer it was frozen with, and the train split
    whose tokens count for the unigram baseline (None: the evaluated split's own)."""

    split: Any
    tokenizer: Any
    train: Any | None = None


def score(model: Any, family: str, data: EvalData, settings: EvalSettings, *, progress: Progress | None = None,
          logits_budget: int | None = None) -> ClmResult | MlmResult:
    """`model` scored on `data` by its family's protocol with every one of `settings`: context, stride
    (0: the context), max_tokens (0: every target), seed and pseudo_ppl_tokens (mlm-v1)."""
    expected = PROTOCOL_OF[check_family(family)]
    if settings.protocol != expected:
        raise HarnessError("protocol-unknown", f"a {family} model is scored by {expected}, not {settings.protocol!r}")
    max_tokens = settings.max_tokens or None
    if family == "mlm":
        return evaluate_mlm(model, data.split, data.tokenizer, context=settings.context, seed=settings.seed,
                            max_tokens=max_tokens, pseudo_ppl_tokens=settings.pseudo_ppl_tokens,
                            train_split=data.train, progress=progress, logits_budget=logits_budget)
    return evaluate_clm(model, data.split, data.tokenizer, context=settings.context, stride=settings.stride or None,
                        max_tokens=max_tokens, train_split=data.train, progress=progress, logits_budget=logits_budget)
