"""Calibration: what the weights cannot tell, settled by scoring candidate models on the calibration text.

It never decides silently: it compares the candidates target by target on the same text, and takes a value
only where the best candidate beats every other by more than the evaluation can separate
(`CALIBRATION_SIGMAS` standard errors of the mean paired difference, and at least `CALIBRATION_FLOOR_NATS`).
Where it cannot tell, the layout's default stays, marked "calibration (unverified)", with the numbers that
could not separate the candidates. A scorer that answers round by round (`harness.metrics.candidates`) is
stopped as soon as one candidate wins by that rule; what calibration took is kept (`CalibrationCost`).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch.nn as nn

if TYPE_CHECKING:
    from harness.models.build import Candidates

# Up to this many combinations are calibrated at once; beyond, one value at a time, in this order.
MAX_JOINT = 16
_SWEEP_ORDER = ("norm", "positions", "embed_scale", "n_heads", "qkv_order", "attn_scale", "activation", "causal")

# A candidate must beat every other by this many standard errors of the mean per-target difference, and by
# at least this many nats, for calibration to take it.
CALIBRATION_SIGMAS = 3.0
CALIBRATION_FLOOR_NATS = 1e-3
# "no causal mask" is taken only when it lowers the loss by more than this: a model trained without one
# has learned to read the answer and gains whole nats; noise gains hundredths.
LEAK_MARGIN_NATS = 0.5

# A scorer that hands over its NLLs round by round is looked at after this many targets, then at every
# doubling, and stopped at the first look where one candidate beats every other by the rule above. Few
# looks, not one a round: every look is another chance for noise to cross 3 standard errors.
CALIBRATION_FIRST_LOOK = 256

# calibrate(candidates) -> every candidate's per-target NLLs on the same targets (decided here, by the
# statistics above); or an iterator of them, growing round by round (harness.metrics.candidates), which
# is stopped early where one candidate clearly wins; or an index (a scorer that decides itself: tests' oracles)
Calibrate = Callable[[Sequence[nn.Module]], "Sequence[np.ndarray] | Iterator[Sequence[np.ndarray]] | int"]



@dataclass
class Calibrated:
    """What calibration measured for one open value: each candidate value's loss on the calibration text
    (its best combination with the other open values), the runner-up's margin over the best and that
    margin's standard error (mean and s.e. of the per-target differences), and whether that settles it."""

    name: str
    candidates: list[Any]
    losses: list[float | None]  # nats, mean over `tokens` targets; None: a scorer that gave an index only
    chosen: Any
    best: Any  # the lowest loss (with the leak margin added to "no causal mask")
    margin: float | None  # runner-up minus best, nats (the leak margin included)
    stderr: float | None
    decided: bool
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": list(self.candidates), "losses": list(self.losses), "chosen": self.chosen,
                "best": self.best, "margin": self.margin, "stderr": self.stderr, "decided": self.decided,
                "tokens": self.tokens, "sigmas": CALIBRATION_SIGMAS, "floor_nats": CALIBRATION_FLOOR_NATS}


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of b - a, target by target."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.inf
    return float(d.mean()), se


def _separates(margin: float, stderr: float) -> bool:
    return margin > max(CALIBRATION_SIGMAS * stderr, CALIBRATION_FLOOR_NATS)


@dataclass
class CalibrationCost:
    """What calibration took for one model: rounds of candidates asked, candidates scored, targets each was
    scored on (summed over rounds), rounds stopped before their last target, wall time."""

    rounds: int = 0
    candidates: int = 0
    targets: int = 0
    stopped_early: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "candidates": self.candidates, "targets": self.targets,
                "stopped_early": self.stopped_early, "seconds": round(self.seconds, 3)}


def _with_margin(answer, candidates: Candidates) -> list[np.ndarray]:
    """Per-target NLLs as float64, checked, with the leak margin added to "no causal mask"."""
    nll = [np.asarray(x, dtype=np.float64) for x in answer]
    if len(nll) != len(candidates) or len({x.shape for x in nll}) != 1 or nll[0].ndim != 1 or not nll[0].size:
        raise ValueError(f"calibrate must return one equally long array of per-target NLLs per candidate "
                         f"({len(candidates)}), or an index")
    return [x + (LEAK_MARGIN_NATS if tried.get("causal") is False else 0.0)
            for x, tried in zip(nll, candidates.tried)]


def _clear_winner(nll: list[np.ndarray]) -> bool:
    """One candidate beats every other by the rule (then every open value it tries is decided)."""
    top = min(range(len(nll)), key=lambda i: (float(nll[i].mean()), i))
    return all(_separates(*_paired(nll[top], x)) for i, x in enumerate(nll) if i != top)


def _ask(calibrate: Calibrate, candidates: Candidates, cost: CalibrationCost
         ) -> tuple[int, list[np.ndarray] | None]:
    """The scorer's answer: an index it decided itself, or every candidate's per-target NLLs (with the
    leak margin added to "no causal mask"), best first by mean. A scorer that answers round by round is
    stopped at the first look (`CALIBRATION_FIRST_LOOK`, then every doubling) where one candidate clearly
    wins; otherwise it runs to its last target, and the decision is the one all targets give."""
    started = time.perf_counter()
    answer = calibrate(candidates)
    if isinstance(answer, (int, np.integer)) and not isinstance(answer, bool):
        if not 0 <= answer < len(candidates):
            raise ValueError(f"calibrate returned {answer!r}; expected an index below {len(candidates)}")
        return int(answer), None
    if isinstance(answer, Iterator):
        nll, look = None, CALIBRATION_FIRST_LOOK
        for so_far in answer:
            nll = _with_margin(so_far, candidates)
            if nll[0].size >= look:
                look = 2 * nll[0].size
                if _clear_winner(nll):
                    close = getattr(answer, "close", None)
                    if close is not None:
                        close()
                    cost.stopped_early += 1
                    break
        if nll is None:
            raise ValueError("calibrate's rounds gave no per-target NLLs")
    else:
        nll = _with_margin(answer, candidates)
    cost.rounds += 1
    cost.candidates += len(candidates)
    cost.targets += int(nll[0].size)
    cost.seconds += time.perf_counter() - started
    means = [float(x.mean()) for x in nll]
    return int(np.argmin(means)), nll


def _settle(name: str, options: list, default: Any, tried: list[dict], pick: int, nll: list[np.ndarray] | None,
            fixed: dict[str, Any]) -> Calibrated:
    """One open value from the scored candidates (those whose other open values are as in `fixed`): the
    value of the best one, unless another value's best candidate cannot be told from it; then the
    default where it is among those that cannot be told apart."""
    if nll is None:
        best = tried[pick][name]
        return Calibrated(name, list(options), [None] * len(options), best, best, None, None, True, 0)
    mean = [float(x.mean()) for x in nll]
    per_value: dict[int, int] = {}  # option index -> its best candidate
    for i, t in enumerate(tried):
        if any(t[k] != v for k, v in fixed.items() if k != name):
            continue
        j = options.index(t[name])
        if j not in per_value or mean[i] < mean[per_value[j]]:
            per_value[j] = i
    top = min(per_value.values(), key=lambda i: (mean[i], i))
    best = tried[top][name]
    ties, runner = [], None
    for j, i in sorted(per_value.items()):
        if i == top:
            continue
        margin, se = _paired(nll[top], nll[i])
        if runner is None or margin < runner[0]:
            runner = (margin, se)
        if not _separates(margin, se):
            ties.append(options[j])
    # the recorded losses are the model's own, without the leak margin
    own = [m - (LEAK_MARGIN_NATS if t.get("causal") is False else 0.0) for m, t in zip(mean, tried)]
    losses = [own[per_value[j]] if j in per_value else None for j in range(len(options))]
    chosen = best if not ties else (default if default in ties else best)
    margin, se = runner if runner is not None else (None, None)
    return Calibrated(name, list(options), losses, chosen, best, margin, se, not ties, int(nll[top].size))


def run_calibration(calibrate: Calibrate, candidates_for: Callable[[list[dict], list[str]], Candidates],
                    values: dict, open_fields: dict[str, list], cost: CalibrationCost) -> dict[str, Calibrated]:
    """Settles the open values in `values` (each starts at its layout default); returns what was measured."""
    names = sorted(open_fields, key=lambda n: _SWEEP_ORDER.index(n) if n in _SWEEP_ORDER else len(_SWEEP_ORDER))
    defaults = {n: values[n] for n in names}
    out: dict[str, Calibrated] = {}
    if math.prod(len(open_fields[n]) for n in names) <= MAX_JOINT:
        combos = [dict(zip(names, combo)) for combo in itertools.product(*(open_fields[n] for n in names))]
        candidates = candidates_for([{**values, **combo} for combo in combos], names)
        pick, nll = _ask(calibrate, candidates, cost)
        settled = dict(combos[pick])
        for _ in range(len(names) + 1):  # an undecided value falls back to its default: the others follow
            out = {n: _settle(n, open_fields[n], defaults[n], combos, pick, nll, settled) for n in names}
            now = {n: c.chosen for n, c in out.items()}
            if now == settled:
                break
            settled = now
        values.update({n: c.chosen for n, c in out.items()})
        return out
    for _ in range(3):  # coordinate sweeps until nothing moves
        moved = False
        for name in names:
            trials = [{**values, name: option} for option in open_fields[name]]
            candidates = candidates_for(trials, [name])
            pick, nll = _ask(calibrate, candidates, cost)
            out[name] = _settle(name, open_fields[name], defaults[name], candidates.tried, pick, nll, {})
            moved |= out[name].chosen != values[name]
            values[name] = out[name].chosen
        if not moved:
            break
    return out

