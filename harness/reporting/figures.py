"""The reports' figures: matplotlib drawn straight to vector SVG, embedded as `data:` images in the HTML
that WeasyPrint prints.

Text stays text (`svg.fonttype = 'none'`), so every label is searchable in the PDF; figures are drawn at
their printed size, so the font sizes set here are the printed ones (8 pt and up). Output is deterministic:
no date in the SVG and a fixed hash salt for its ids.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import re
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("svg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from harness.families import FAMILIES, FAMILY_LABELS  # noqa: E402
from harness.reporting.curves import SMOOTH_FROM, _smooth  # noqa: E402  (the reference plots' moving mean)

# A4 with 18 mm side margins leaves 174 mm; figures are drawn a little narrower than that.
FULL_WIDTH_IN = 6.7
PANEL_HEIGHT_IN = 2.55

INK = "#1b1b1b"
STUDENT = "#1f4e79"
REFERENCE = "#8a8a8a"
RECOMPUTED = "#c0540a"
BAD = "#b3261e"
GRID = "#e3e3e3"
RUN_COLOURS = ("#1f4e79", "#c0540a", "#2e7d32", "#8e24aa", "#b3261e", "#00838f", "#6d4c41", "#5c6bc0",
               "#9e9d24", "#d81b60")

_STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 8.5,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.edgecolor": "#555555",
    "axes.labelcolor": INK,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": GRID,
    "grid.linewidth": 0.5,
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.5,
    "svg.fonttype": "none",
    "svg.hashsalt": "harness-report",
    "figure.dpi": 72,
}

def _styled(fn):
    """Draw inside the report style, without touching the process's global matplotlib settings."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(_STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _figure(ncols: int = 1, height: float = PANEL_HEIGHT_IN, width: float = FULL_WIDTH_IN):
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, ncols, figsize=(width, height), layout="constrained", squeeze=False)
    return fig, list(axes[0])


def to_svg(fig) -> str:
    """The figure as an SVG document without metadata (so no date in it); closes the figure."""
    buf = io.StringIO()
    with plt.rc_context(_STYLE):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return re.sub(r"\s*<metadata>.*?</metadata>", "", buf.getvalue(), flags=re.S)


def data_uri(svg: str) -> str:
    """An `<img src>` for the SVG: WeasyPrint draws it as vector graphics with its text kept as text, and
    an image's nodes skip the HTML style cascade, which inline `<svg>` would pay for on every tick."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _number(v: float, _pos: Any = None) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def _log_axis(ax, which: str = "y") -> None:
    """A log axis labelled with plain numbers (1, 2, 5 × 10ⁿ) rather than mathtext powers."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    lo, hi = (ax.get_ylim() if which == "y" else ax.get_xlim())
    subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-300) < 1e4 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(_number))
    axis.set_minor_formatter(NullFormatter())


# --- curves -----------------------------------------------------------------------------------------


def _value(p: dict, key: str) -> float | None:
    """A point's loss or perplexity; the one derives from the other where only one was logged."""
    v = p.get(key)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    kind, metric = key.split("_")
    other = p.get(f"{kind}_{'ppl' if metric == 'loss' else 'loss'}")
    if not isinstance(other, (int, float)) or not math.isfinite(other):
        return None
    if metric == "loss":
        return math.log(other) if other > 0 else None
    return math.exp(other) if other < 700 else None


def series(points: Sequence[dict], x_key: str, key: str, *, fraction: bool = False) -> tuple[list[float], list[float]]:
    xs_all = [p.get(x_key) for p in points]
    xmax = max((x for x in xs_all if isinstance(x, (int, float))), default=None)
    xs, ys = [], []
    for p, x in zip(points, xs_all):
        y = _value(p, key)
        if not isinstance(x, (int, float)) or y is None:
            continue
        xs.append(x / xmax if fraction and xmax else float(x))
        ys.append(y)
    return xs, ys


MAX_POINTS = 1500  # longer series are thinned for drawing (a 174 mm wide plot cannot show more)


def _thin(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    if len(xs) <= MAX_POINTS:
        return xs, ys
    k = math.ceil(len(xs) / MAX_POINTS)
    keep = list(range(0, len(xs), k))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def _noisy(ys: Sequence[float]) -> bool:
    """Whether step-to-step noise is visible at print size: the mean second difference against the range.
    A smooth curve is drawn as it is (a moving mean would only bend its steep start)."""
    span = max(ys) - min(ys)
    if span <= 0 or len(ys) < 3:
        return False
    rough = sum(abs(ys[i + 1] - 2 * ys[i] + ys[i - 1]) for i in range(1, len(ys) - 1)) / (len(ys) - 2)
    return rough / span > 0.01


def _plot_run(axes, points: Sequence[dict], x_key: str, colour: str, *, fraction: bool,
              markers: bool) -> tuple[bool, bool]:
    """One run's training (solid) and validation (dashed) curves on the loss and perplexity axes. A training
    curve logged on many noisy steps is drawn raw and faint under its moving mean (as the reference plots do).
    Returns (anything drawn, anything smoothed)."""
    drawn = smoothed = False
    for ax, metric in zip(axes, ("loss", "ppl")):
        for kind, style in (("train", "-"), ("val", "--")):
            xs, ys = series(points, x_key, f"{kind}_{metric}", fraction=fraction)
            if not xs:
                continue
            losses = [math.log(y) for y in ys] if metric == "ppl" else ys
            if kind == "train" and len(ys) >= SMOOTH_FROM and _noisy(losses):
                smooth = _smooth(losses)  # perplexity: smooth the loss, then exponentiate (a mean of ppl is skewed)
                if metric == "ppl":
                    smooth = [math.exp(min(v, 700.0)) for v in smooth]
                ax.plot(*_thin(xs, ys), "-", color=colour, alpha=0.22, linewidth=0.6)
                ax.plot(*_thin(xs, smooth), "-", color=colour, linewidth=1.2)
                smoothed = True
            else:
                marker = "o" if markers and len(points) <= 30 else None
                ax.plot(*_thin(xs, ys), style, color=colour, marker=marker, markersize=3 if kind == "train" else 3.5,
                        markerfacecolor="white" if kind == "val" else colour,
                        linewidth=1.2 if kind == "train" else 1.3)
            drawn = True
    return drawn, smoothed


def _finish_curves(fig, axes, xlabel: str, entries: list[tuple[str, dict]], ncol: int) -> None:
    """Axis labels, a log perplexity axis, and one legend below both panels: a colour per run, then the
    line styles (solid training, dashed validation)."""
    from matplotlib.lines import Line2D

    axes[0].set_ylabel("loss (nats per token)")
    axes[1].set_ylabel("perplexity (log scale)")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_formatter(FuncFormatter(_number))
    if axes[1].has_data():
        _log_axis(axes[1], "y")
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
    handles = [Line2D([], [], **style) for _label, style in entries]
    labels = [label for label, _style in entries]
    handles += [Line2D([], [], color=INK, linestyle="-", linewidth=1.2),
                Line2D([], [], color=INK, linestyle="--", linewidth=1.3)]
    labels += ["training", "validation"]
    ncol = _legend_columns(labels, ncol)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, handlelength=2.2, columnspacing=1.4)


def _legend_columns(labels: Sequence[str], most: int) -> int:
    """As many legend columns as fit the figure's width. A legend fills its columns top to bottom, each as wide
    as its longest label (8 pt text: about 4.6 pt a character, plus 34 pt of handle and gap)."""
    avail = FULL_WIDTH_IN * 72 - 16
    for ncol in range(min(most, len(labels)), 1, -1):
        rows = math.ceil(len(labels) / ncol)
        columns = [labels[i:i + rows] for i in range(0, len(labels), rows)]
        if sum(4.6 * max(map(len, c)) + 34 for c in columns) <= avail:
            return ncol
    return 1


@_styled
def training_curves(student: Sequence[dict], student_axis: str | None, reference: Sequence[dict],
                    *, recomputed_loss: float | None = None) -> tuple[str, str] | None:
    """Loss and perplexity of the student's logged curve over the reference model's. Each is plotted against
    its own x: the same unit where both logged it (steps, or epochs), else the fraction of each run's
    training. Returns (svg, how the x axis was chosen, for the caption), or None with nothing to draw."""
    student = [p for p in student if p]
    reference = [p for p in reference if p]
    if not student and not reference:
        return None
    ref_axes = [k for k in ("step", "epoch", "tokens") if any(isinstance(p.get(k), (int, float)) for p in reference)]
    s_key = student_axis or "step"
    r_key = ref_axes[0] if ref_axes else "step"
    fraction = False
    if student and reference:
        if s_key in ref_axes:
            r_key, xlabel = s_key, s_key
            how = (f"both runs against {s_key}s (their data and batch sizes differ, so {'an' if s_key[0] in 'aeiou' else 'a'} "
                   f"{s_key} is not the same amount of training in each)")
        else:
            fraction, xlabel = True, "fraction of training"
            how = (f"x is the fraction of each run's own training, because the submission logged per {s_key} and "
                   f"the reference per {r_key}")
    elif student:
        xlabel, how = s_key, f"against the submission's {s_key}s"
    else:
        xlabel, how = r_key, f"the reference against {r_key}s"
    fig, axes = _figure(2)
    entries = []
    ref_drawn, ref_smooth = _plot_run(axes, reference, r_key, REFERENCE, fraction=fraction, markers=False)
    if ref_drawn:
        entries.append(("reference", {"color": REFERENCE, "linewidth": 1.6}))
    sub_drawn, sub_smooth = _plot_run(axes, student, s_key, STUDENT, fraction=fraction, markers=True)
    if sub_drawn:
        entries.append(("submission", {"color": STUDENT, "linewidth": 1.6}))
    if ref_smooth or sub_smooth:
        how += "; a noisy per-step training loss is drawn as a moving mean over its raw values (faint)"
    if not entries:
        plt.close(fig)
        return None
    if recomputed_loss is not None and math.isfinite(recomputed_loss):
        lines = [(axes[0], recomputed_loss)] + ([(axes[1], math.exp(recomputed_loss))] if recomputed_loss < 700 else [])
        for ax, y in lines:
            ax.axhline(y, color=RECOMPUTED, linestyle=":", linewidth=1.5)
            ax.update_datalim([(ax.dataLim.x0, y)])  # the line is inside the axes, not on their edge
            ax.autoscale_view()
        entries.append(("recomputed (harness)", {"color": RECOMPUTED, "linestyle": ":", "linewidth": 1.5}))
    _finish_curves(fig, axes, xlabel, entries, ncol=5)
    return to_svg(fig), how


@_styled
def comparison_curves(runs: Sequence[dict]) -> tuple[str, str] | None:
    """Several runs' curves overlaid: x is tokens where every run logged them, else steps, else epochs,
    else the fraction of each run's own training."""
    with_curve = [r for r in runs if r.get("curve")]
    if not with_curve:
        return None
    x_key = next((k for k in ("tokens", "step", "epoch") if all(
        any(isinstance(p.get(k), (int, float)) for p in r["curve"]) for r in with_curve)), None)
    fraction = x_key is None
    if fraction:
        how = "x is the fraction of each run's own training (the runs logged different units)"
    else:
        how = f"x is {'tokens seen' if x_key == 'tokens' else x_key + 's'}"
    fig, axes = _figure(2, height=2.9)
    entries = []
    any_smooth = False
    for i, run in enumerate(with_curve):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        key = x_key or next((k for k in ("tokens", "step", "epoch") if any(isinstance(p.get(k), (int, float))
                                                                           for p in run["curve"])), "step")
        drawn, smoothed = _plot_run(axes, run["curve"], key, colour, fraction=fraction, markers=True)
        any_smooth |= smoothed
        if drawn:
            entries.append((str(run.get("name", f"run {i + 1}")), {"color": colour, "linewidth": 1.6}))
    if any_smooth:
        how += "; a noisy per-step training loss is drawn as a moving mean over its raw values (faint)"
    _finish_curves(fig, axes, "fraction of training" if fraction else ("tokens seen" if x_key == "tokens" else x_key),
                   entries, ncol=6)
    return to_svg(fig), how


# --- class figures ----------------------------------------------------------------------------------


@_styled
def distributions(scores: Sequence[float], max_score: float, ppls: Sequence[float],
                  reference_ppl: float | None) -> str:
    """Score histogram and perplexity histogram (log bins) side by side."""
    fig, (a, b) = _figure(2, height=2.3)
    bins = [max_score * i / 10 for i in range(11)] if max_score > 0 else 10
    a.hist(scores, bins=bins, color=STUDENT, edgecolor="white", linewidth=0.6)
    a.set_xlabel(f"score (of {max_score:g})")
    a.set_ylabel("submissions")
    a.set_xlim(0, max_score or None)
    a.yaxis.get_major_locator().set_params(integer=True)
    if ppls:
        lo, hi = min(ppls), max(ppls)
        if reference_ppl:
            lo, hi = min(lo, reference_ppl), max(hi, reference_ppl)
        lo, hi = lo / 1.3, hi * 1.3
        n = 12
        edges = [lo * (hi / lo) ** (i / n) for i in range(n + 1)]
        b.hist(ppls, bins=edges, color=STUDENT, edgecolor="white", linewidth=0.6)
        b.set_xscale("log")
        b.set_xlim(lo, hi)
        _log_axis(b, "x")
        if reference_ppl:
            b.axvline(reference_ppl, color=RECOMPUTED, linestyle="--", linewidth=1.3)
            b.annotate("reference", (reference_ppl, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -2),
                       textcoords="offset points", va="top", fontsize=8, color=RECOMPUTED)
    else:
        b.text(0.5, 0.5, "no recomputed perplexities", ha="center", va="center", transform=b.transAxes)
    b.set_xlabel("recomputed validation perplexity (log scale)")
    b.set_ylabel("submissions")
    b.yaxis.get_major_locator().set_params(integer=True)
    return to_svg(fig)


_DIRECTIONS = ((1, 0.75, "left", "bottom"), (1, -0.75, "left", "top"), (-1, 0.75, "right", "bottom"),
               (-1, -0.75, "right", "top"), (1.5, 0, "left", "center"), (-1.5, 0, "right", "center"),
               (0, 1.75, "center", "bottom"), (0, -1.75, "center", "top"))


def _label_points(ax, pts: Sequence[tuple[float, float, str]], avoid: Sequence[tuple[float, float]] = (),
                  fontsize: float = 8) -> None:
    """Name each point where its label overlaps no other label and no point, inside the axes: a greedy choice
    among eight directions around the point, near first, then farther out with a thin leader line; where
    everything is taken, the position that overlaps least. Works in printed points (figures are drawn at
    72 dpi); call it once the axes' scales, limits and layout are final."""
    to_px = ax.transData.transform
    box = ax.get_window_extent()
    placed: list[tuple[float, float, float, float]] = []
    dots = [tuple(to_px((x, y))) for x, y, _ in pts]
    obstacles = [(dx - 3.5, dy - 3.5, dx + 3.5, dy + 3.5) for dx, dy in dots + [tuple(to_px(xy)) for xy in avoid]]

    def cost(r) -> float:
        x0, y0, x1, y1 = r
        outside = max(0.0, box.x0 - x0) + max(0.0, x1 - box.x1) + max(0.0, box.y0 - y0) + max(0.0, y1 - box.y1)
        area = sum(max(0.0, min(x1, b[2]) - max(x0, b[0])) * max(0.0, min(y1, b[3]) - max(y0, b[1]))
                   for b in placed + obstacles)
        return area + 1000 * outside

    for (x, y, name), (px, py) in zip(pts, dots):
        w, h = 0.56 * fontsize * len(name), fontsize * 1.1
        best = None
        for ring, radius in enumerate((4.0, 11.0, 18.0)):
            for kx, ky, ha, va in _DIRECTIONS:
                ox, oy = kx * radius, ky * radius
                x0 = px + ox - (w if ha == "right" else w / 2 if ha == "center" else 0)
                y0 = py + oy - (h if va == "top" else h / 2 if va == "center" else 0)
                rect = (x0, y0, x0 + w, y0 + h)
                c = cost(rect) + ring * 0.5  # nearer wins a tie
                if best is None or c < best[0]:
                    best = (c, ox, oy, ha, va, rect, ring)
            if best[0] < 1:
                break
        _c, ox, oy, ha, va, rect, ring = best
        placed.append(rect)
        arrow = {"arrowstyle": "-", "color": "#9a9a9a", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 3} if ring else None
        ax.annotate(name, (x, y), xytext=(ox, oy), textcoords="offset points", fontsize=fontsize, color=INK,
                    ha=ha, va=va, arrowprops=arrow)


@_styled
def params_and_claims(points: Sequence[dict], reference: Sequence[dict], tolerance: float) -> str:
    """Left: parameters against perplexity (log-log), the reference marked. Right: claimed against
    recomputed validation loss with y = x and the tolerance band. Each point: {id, family, params, ppl, loss,
    claimed_val_loss, claimed_train_loss, invalid}."""
    fig, (a, b) = _figure(2, height=3.3)
    label = len(points) <= 24
    pp = [p for p in points if p.get("params") and p.get("ppl")]
    for fam, marker in zip(FAMILIES, ("o", "^")):
        name = FAMILY_LABELS[fam]
        ok = [p for p in pp if p.get("family", "gpt") == fam and not p.get("invalid")]
        bad = [p for p in pp if p.get("family", "gpt") == fam and p.get("invalid")]
        if ok:
            a.plot([p["params"] for p in ok], [p["ppl"] for p in ok], marker, linestyle="none", color=STUDENT,
                   markersize=4.8, label=name)
        if bad:
            a.plot([p["params"] for p in bad], [p["ppl"] for p in bad], marker, linestyle="none", color=BAD,
                   markerfacecolor="white", markersize=4.8, label="invalid: looks ahead")
    for r in reference:
        if r.get("params") and r.get("ppl"):
            a.plot(r["params"], r["ppl"], "*", color=RECOMPUTED, markersize=10, linestyle="none",
                   label=f"reference ({FAMILY_LABELS[r.get('family') or 'gpt']})" if len(reference) > 1
                   else "reference")
    xs = [p["params"] for p in pp] + [r["params"] for r in reference if r.get("params") and r.get("ppl")]
    ys = [p["ppl"] for p in pp] + [r["ppl"] for r in reference if r.get("params") and r.get("ppl")]
    if xs:
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlim(min(xs) / 1.5, max(xs) * 1.9)
        a.set_ylim(min(ys) / 1.8, max(ys) * 1.8)
        _log_axis(a, "x")
        _log_axis(a, "y")
        a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, handletextpad=0.3, columnspacing=1.0)
    else:
        a.text(0.5, 0.5, "no parameter counts", ha="center", va="center", transform=a.transAxes)
    a.set_xlabel("parameters (log scale)")
    a.set_ylabel("recomputed perplexity (log scale)")

    vals = [(p["loss"], p["claimed_val_loss"], str(p["id"])) for p in points
            if p.get("loss") is not None and p.get("claimed_val_loss") is not None]
    trains = [(p["loss"], p["claimed_train_loss"], str(p["id"])) for p in points
              if p.get("loss") is not None and p.get("claimed_val_loss") is None and p.get("claimed_train_loss") is not None]
    every = [v for t in vals + trains for v in t[:2]]
    if every:
        lo, hi = min(every), max(every)
        pad = max(0.4, 0.08 * (hi - lo))
        lo, hi = max(0.0, lo - pad), hi + pad
        b.fill_between([lo, hi], [lo - tolerance, hi - tolerance], [lo + tolerance, hi + tolerance], color=GRID,
                       linewidth=0, label=f"within ±{tolerance:g} nats")
        b.plot([lo, hi], [lo, hi], color=INK, linewidth=0.8, label="claimed = recomputed")
        if vals:
            b.plot([v[0] for v in vals], [v[1] for v in vals], "o", color=STUDENT, markersize=4.8,
                   label="claimed validation loss")
        if trains:
            b.plot([v[0] for v in trains], [v[1] for v in trains], "s", color=RECOMPUTED, markerfacecolor="white",
                   markersize=4.8, label="only a training loss claimed")
        b.set_xlim(lo, hi)
        b.set_ylim(lo, hi)
        b.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, handletextpad=0.3, columnspacing=1.0)
    else:
        b.text(0.5, 0.5, "no claimed losses to compare", ha="center", va="center", transform=b.transAxes)
    b.set_xlabel("recomputed validation loss (nats)")
    b.set_ylabel("claimed loss (nats)")
    if label:
        fig.draw_without_rendering()  # the constrained layout fixes the axes boxes that labels are placed in
        if xs:
            _label_points(a, [(p["params"], p["ppl"], str(p["id"])) for p in pp],
                          avoid=[(r["params"], r["ppl"]) for r in reference if r.get("params") and r.get("ppl")])
        if every:
            _label_points(b, vals + trains)
    return to_svg(fig)
