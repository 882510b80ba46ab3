"""Several models scored on shared work, in step: calibration's candidates (`harness.models.build`).

Every candidate walks the protocol's own batches (`clm_nll`, `mlm_nll`: the same windows or masked blocks,
planned once), one batch each per round; after each round the caller gets every candidate's NLLs on the
targets all of them have scored so far, and may stop there. Scored to the end, each candidate's NLLs are
exactly those `evaluate_clm` / `evaluate_mlm` give it (`.nll`), so a decision on all targets is the decision
the protocol's own numbers make.

What candidates share is the data side (the stream, the plan, the masks, the targets); no layer is shared:
every value calibration tries (heads, norm order, activation, scales, the causal mask) acts in every block,
so two candidates differ from the first block on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from harness.families import check_family
from harness.metrics.clm import clm_nll, plan_clm
from harness.metrics.mlm import mlm_nll, plan_mlm
from harness.metrics.protocol import as_logits_model

if TYPE_CHECKING:
    from harness.course.config import EvalSettings
    from harness.metrics.score import EvalData


def score_candidates(models: Sequence[Any], family: str, data: EvalData, settings: EvalSettings, *,
                     batch_tokens: int | None = None) -> Iterator[list[np.ndarray]]:
    """Each round: every candidate's per-target NLLs (float64) on the longest common prefix of targets
    scored so far, in the protocol's order; the last round holds every target. `settings` as `score` takes
    them (stride 0: the context; max_tokens 0: every target; pseudo-perplexity is not scored).
    `batch_tokens` caps a causal round's input positions: a caller that looks after N targets needs rounds
    no larger than N (the fused head's own batches hold a thousand rows and more)."""
    check_family(family)
    wrapped = [as_logits_model(m) for m in models]
    max_tokens = settings.max_tokens or None
    walks, sizes = [], []
    for m in wrapped:
        if family == "gpt":
            plan = plan_clm(m, data.split, data.tokenizer, context=settings.context,
                            stride=settings.stride or None, max_tokens=max_tokens)
            # target s[p] is slot p - 1 (s[0] is never a target); the fused head where the model offers it,
            # as `evaluate_clm` scores: a candidate's losses are the protocol's to the last bit
            walks.append((p - 1, v) for p, v in clm_nll(m, plan, batch_tokens=batch_tokens))
            sizes.append(int(plan.stream.size) - 1)
        else:
            plan = plan_mlm(m, data.split, data.tokenizer, context=settings.context, seed=settings.seed,
                            max_tokens=max_tokens)
            walks.append((np.arange(d.start, d.stop), v) for d, v, _, _ in mlm_nll(m, plan))
            sizes.append(plan.targets)
    nll = [np.zeros(n, dtype=np.float64) for n in sizes]
    seen = [np.zeros(n, dtype=bool) for n in sizes]
    active = list(range(len(walks)))
    shown = 0
    while active:
        for i in list(active):
            step = next(walks[i], None)
            if step is None:
                active.remove(i)
                continue
            slots, values = step
            nll[i][slots] = values
            seen[i][slots] = True
        # the prefix every candidate has scored (a candidate with fewer positions has other windows)
        common = min(int(s.argmin()) if not s.all() else s.size for s in seen)
        if common > shown:
            shown = common
            yield [x[:common].copy() if common < x.size else x.copy() for x in nll]
