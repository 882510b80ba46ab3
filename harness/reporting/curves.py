"""Training curves: loss and perplexity against the step, as PNG and SVG.

Rows are the ones `metrics.csv` holds (dicts, or a DataFrame with those columns): a train loss on every
step, a validation loss on some. The train loss is drawn raw (faint) and smoothed; validation losses
are points joined by a line. Perplexity uses a log scale, so early steps (ppl in the tens of thousands)
and late ones (hundreds) are both readable. Rendering goes through matplotlib's Agg canvas without
pyplot, so it needs no display and keeps no global figure state; the same rows give the same files.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.files import write_atomic

SMOOTH_FROM = 50  # runs with at least this many steps get a smoothed train curve over the raw one


def _rows(rows: Any) -> list[Mapping[str, Any]]:
    if hasattr(rows, "to_dict"):  # a pandas DataFrame
        return rows.to_dict("records")
    return list(rows)


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _smooth(values: list[float], log: bool = False) -> list[float]:
    """Centred moving mean over about 4% of the run (shrinking at the ends): no lag behind a falling loss.
    `log`: the mean of the logarithms (perplexity: exp of the mean loss), so one spike cannot hold the
    curve up for a whole window as an arithmetic mean of perplexities would."""
    half = max(2, len(values) // 50)
    xs = [math.log(v) for v in values] if log else values
    out = []
    for i in range(len(xs)):
        window = xs[max(0, i - half) : i + half + 1]
        mean = sum(window) / len(window)
        out.append(math.exp(mean) if log else mean)
    return out


def _figure(title: str, ylabel: str, log: bool, steps, train, val_steps, val, baseline):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(train) >= SMOOTH_FROM:
        ax.plot(steps, train, color="#1f77b4", alpha=0.25, linewidth=0.8, label="train (per step)")
        ax.plot(steps, _smooth(train, log=log), color="#1f77b4", linewidth=1.8, label="train (moving mean)")
    elif train:
        ax.plot(steps, train, color="#1f77b4", linewidth=1.5, label="train (per step)")
    if val:
        ax.plot(val_steps, val, color="#d62728", marker="o", markersize=5, linewidth=1.5, label="validation")
    if baseline is not None:
        ax.axhline(baseline, color="#7f7f7f", linestyle="--", linewidth=1.2, label="unigram baseline (validation)")
    if log:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title(title, fontsize=14)
    ax.set_xlabel("step", fontsize=12)
    ax.set_ylabel(ylabel, fontsize=12)
    ax.tick_params(labelsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=11, loc="best")
    return fig


def _save(fig, path: Path, fmt: str) -> Path:
    from matplotlib import rcParams

    buf = io.BytesIO()
    if fmt == "svg":
        # No date and a fixed id salt: the same curve gives the same file.
        with _rc(rcParams, {"svg.hashsalt": "harness", "svg.fonttype": "path"}):
            fig.savefig(buf, format="svg", metadata={"Date": None})
    else:
        fig.savefig(buf, format="png", metadata={"Software": None})
    return write_atomic(path, buf.getvalue())


class _rc:
    def __init__(self, params, values):
        self.params, self.values, self.old = params, values, {}

    def __enter__(self):
        self.old = {k: self.params[k] for k in self.values}
        self.params.update(self.values)

    def __exit__(self, *exc):
        self.params.update(self.old)


def plot_training_curves(rows: Iterable[Mapping[str, Any]] | Any, out_dir: str | Path, *, title: str = "",
                         unigram_loss: float | None = None) -> list[Path]:
    """Write `loss.png`, `loss.svg`, `ppl.png`, `ppl.svg` into `out_dir`; returns their paths.

    `unigram_loss` (nats) draws the unigram baseline of the validation split as a dashed line.
    """
    rows = _rows(rows)
    out_dir = Path(out_dir)
    steps, train, val_steps, val = [], [], [], []
    for r in rows:
        step, t, v = _number(r.get("step")), _number(r.get("train_loss")), _number(r.get("val_loss"))
        if step is None:
            continue
        if t is not None:
            steps.append(step)
            train.append(t)
        if v is not None:
            val_steps.append(step)
            val.append(v)
    name = f"{title}: " if title else ""
    written = []
    loss_fig = _figure(f"{name}loss", "loss (nats per token)", False, steps, train, val_steps, val, unigram_loss)
    ppl = lambda xs: [math.exp(min(x, 700.0)) for x in xs]  # noqa: E731 - exp of a huge early loss stays finite
    ppl_fig = _figure(f"{name}perplexity", "perplexity (log scale)", True, steps, ppl(train), val_steps, ppl(val),
                      None if unigram_loss is None else math.exp(unigram_loss))
    for stem, fig in (("loss", loss_fig), ("ppl", ppl_fig)):
        for fmt in ("png", "svg"):
            written.append(_save(fig, out_dir / f"{stem}.{fmt}", fmt))
    return written
