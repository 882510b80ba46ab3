"""Number formats of the reports: one place, so the tests and the PDFs agree."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

DASH = "—"


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_loss(x: Any) -> str:
    return f"{x:.3f}" if finite(x) else DASH


def fmt_ppl(x: Any) -> str:
    """Perplexity: 2 decimals below 10, 1 below 100,000, none above."""
    if not finite(x):
        return "∞" if isinstance(x, float) and x == math.inf else DASH
    if x < 10:
        return f"{x:.2f}"
    if x < 1e5:
        return f"{x:,.1f}"
    return f"{x:,.0f}"


def fmt_int(x: Any) -> str:
    return f"{int(round(x)):,}" if finite(x) else DASH


def fmt_points(x: Any) -> str:
    if not finite(x):
        return DASH
    return f"{x:.2f}".rstrip("0").rstrip(".")


def fmt_points_column(values: Sequence[Any]) -> list[str]:
    """Points of one table column with the same number of decimals (0 to 2), so they align."""
    decimals = 0
    for v in values:
        if finite(v):
            text = f"{v:.2f}".rstrip("0")
            decimals = max(decimals, len(text.split(".")[1]) if "." in text else 0)
    return [f"{v:.{decimals}f}" if finite(v) else DASH for v in values]


def fmt_num(x: Any) -> str:
    """A config value or metric of unknown kind."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 10000 else str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return DASH
        if x == int(x) and abs(x) < 1e15:
            return fmt_num(int(x))
        if abs(x) < 1e-3 or abs(x) >= 1e6:
            return f"{x:.3g}"
        return f"{x:.4g}"
    if x is None:
        return DASH
    return str(x)


def fmt_value(x: Any) -> str:
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return fmt_int(x) if float(x).is_integer() else fmt_num(x)
    return DASH if x is None or x == "" else str(x)


def short(h: Any, n: int = 12) -> str:
    """A hash's first `n` characters; several (a class whose GPT and MLM data differ) each so, joined."""
    if isinstance(h, (list, tuple)):
        return " + ".join(short(x, n) for x in dict.fromkeys(h) if x) or DASH
    return str(h)[:n] if h else DASH


def log_or_none(x: Any) -> float | None:
    return math.log(x) if finite(x) and x > 0 else None


def exp_or_none(x: Any) -> float | None:
    return math.exp(x) if finite(x) and x < 700 else None
