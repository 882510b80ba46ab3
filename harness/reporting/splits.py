"""The public and the private split in the reports: the private split's rows of a student's metrics table and
the gap between the splits (`trained-on-validation`'s numbers). Only `harness grade` results hold them; a
`harness check` report has none to show.
"""

from __future__ import annotations

from typing import Any

from harness.reporting.format import DASH, exp_or_none, fmt_int, fmt_loss, fmt_ppl


def private_rows(sub: Any, ref: Any, unit: str) -> list[dict]:
    """The private split's numbers of a `SubmissionResult` (and of its `ReferenceResult`), where `harness grade`
    scored it: rows of the student report's metrics table (its columns: recomputed, claimed ×2, reference,
    unigram, uniform)."""
    p = sub.private
    if p is None or p.metrics is None:
        return []
    pm = p.metrics
    rp = ref.private if ref is not None else None
    r_loss, r_ppl = (rp.loss, rp.ppl) if rp is not None else (None, None)
    split = p.split or "private"
    return [
        {"label": f"Loss, private split ({split})", "cells": [fmt_loss(pm.loss), DASH, DASH, fmt_loss(r_loss),
                                                           fmt_loss(pm.unigram_loss), fmt_loss(pm.uniform_loss)]},
        {"label": f"Perplexity, private split ({split})",
         "cells": [fmt_ppl(pm.ppl), DASH, DASH, fmt_ppl(r_ppl), fmt_ppl(pm.unigram_ppl or exp_or_none(pm.unigram_loss)),
                   fmt_ppl(pm.uniform_ppl or exp_or_none(pm.uniform_loss))]},
        {"label": f"Private {'masked positions' if unit == 'masked token' else 'targets'} scored",
         "cells": [fmt_int(pm.tokens), DASH, DASH, DASH, DASH, DASH]},
    ]


def private_notes(sub: Any) -> list[str]:
    """The public − private gap against the reference's, as a note under the metrics table."""
    g = sub.split_gap or {}
    if not g:
        return []
    ref = f"the reference's {g['reference_gap']:+.3f}" if g.get("reference_gap") is not None else "no comparable reference"
    return [f"Public − private loss: {g['gap']:+.3f} nats ({ref}; noise ± {g['stderr']:.3f}, "
            f"{'flagged' if g['flagged'] else 'not flagged'} beyond {g['threshold']:.3f}). "
            f"{g['below_every_private']} of {g['public_documents']} {g['public_split']} documents score below every "
            f"{g['private_split']} document ({g['expected_below']:.1f} would by chance)."]
