"""The public and the private split in the reports: the private split's rows of a student's metrics table and
the gap between the splits (`trained-on-validation`'s numbers). Only `harness grade` results hold them; a
`harness check` report has none to show.
"""

from __future__ import annotations


def private_rows(sub: dict, ref: dict, unit: str) -> list[dict]:
    """The private split's numbers, where `harness grade` scored it (never in `harness check`'s report): rows of
    the student report's metrics table (its columns: recomputed, claimed ×2, reference, unigram, uniform)."""
    from harness.reporting.report import DASH, _exp, fmt_int, fmt_loss, fmt_ppl

    p = sub.get("private") or {}
    pm, rp = p.get("metrics") or {}, ref.get("private") or {}
    if not pm:
        return []
    split = p.get("split", "private")
    return [
        {"label": f"Loss, private split ({split})", "cells": [fmt_loss(pm.get("loss")), DASH, DASH, fmt_loss(rp.get("loss")),
                                                           fmt_loss(pm.get("unigram_loss")), fmt_loss(pm.get("uniform_loss"))]},
        {"label": f"Perplexity, private split ({split})", "cells": [fmt_ppl(pm.get("ppl")), DASH, DASH, fmt_ppl(rp.get("ppl")),
                                                                 fmt_ppl(pm.get("unigram_ppl") or _exp(pm.get("unigram_loss"))),
                                                                 fmt_ppl(pm.get("uniform_ppl") or _exp(pm.get("uniform_loss")))]},
        {"label": f"Private {'masked positions' if unit == 'masked token' else 'targets'} scored",
         "cells": [fmt_int(pm.get("tokens")), DASH, DASH, DASH, DASH, DASH]},
    ]


def private_notes(sub: dict) -> list[str]:
    """The public − private gap against the reference's, as a note under the metrics table."""
    g = sub.get("split_gap") or {}
    if not g:
        return []
    ref = f"the reference's {g['reference_gap']:+.3f}" if g.get("reference_gap") is not None else "no comparable reference"
    return [f"Public − private loss: {g['gap']:+.3f} nats ({ref}; noise ± {g['stderr']:.3f}, "
            f"{'flagged' if g['flagged'] else 'not flagged'} beyond {g['threshold']:.3f}). "
            f"{g['below_every_private']} of {g['public_documents']} {g['public_split']} documents score below every "
            f"{g['private_split']} document ({g['expected_below']:.1f} would by chance)."]
