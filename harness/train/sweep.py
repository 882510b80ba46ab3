"""Hyperparameter sweeps: one reference run per point of a grid, and a table of their results."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.errors import HarnessError
from harness.files import write_atomic
from harness.train.config import load_config, parse_grid
from harness.train.run import TrainResult, dist_env, train_reference


@dataclass(frozen=True)
class SweepResult:
    path: Path  # results.csv
    table: Any  # pandas DataFrame, one row per run
    runs: list[TrainResult]


def sweep(family: str, grid: dict[str, list[str]] | list[str], config_path: str | Path | None = None,
          out_dir: str | Path | None = None, *, overrides: list[str] | tuple[str, ...] = (),
          max_steps: int | None = None, max_tokens: int | None = None, max_minutes: float | None = None,
          progress: Callable[[int, int], None] | None = None, resume: bool = True, course: Any = None,
          on_run: Callable[[str, int, int], None] | None = None) -> SweepResult:
    """Train one run per point of `grid` (budgets apply to each run) into `<out>/<k=v,...>/` and write
    `<out>/results.csv`, updated after every run. `on_run(label, index, count)` is called before each."""
    import pandas as pd

    grid = parse_grid(grid) if isinstance(grid, list) else dict(grid)
    if not grid:
        raise HarnessError("config-invalid", "a sweep needs at least one --grid key=v1,v2")
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    base = load_config(family, config_path, list(overrides))
    for point in points:  # every point must parse before the first run starts
        load_config(family, config_path, [*overrides, *(f"{k}={v}" for k, v in point.items())])
    out = Path(out_dir) if out_dir is not None else Path("reference_model") / f"{base.name}-sweep"
    records, runs = [], []
    for i, point in enumerate(points):
        label = ",".join(f"{k}={v}" for k, v in point.items())
        if on_run is not None:
            on_run(label, i, len(points))
        folder = out / label.replace("/", "_").replace(os.sep, "_")
        r = train_reference(family, config_path, [*overrides, *(f"{k}={v}" for k, v in point.items())], folder,
                            max_steps=max_steps, max_tokens=max_tokens, max_minutes=max_minutes, progress=progress,
                            resume=resume, course=course)
        runs.append(r)
        records.append({**point, "run": label, "train_loss": r.train_loss, "train_ppl": r.train_ppl,
                        "val_loss": r.val_loss, "val_ppl": r.val_ppl, "unigram_val_ppl": r.unigram_val_ppl,
                        "params": r.params, "steps": r.steps, "tokens": r.tokens, "wall_s": r.wall_s,
                        "tokens_per_s": r.tokens_per_s, "complete": r.complete})
        table = pd.DataFrame.from_records(records)
        if dist_env()[0] == 0:
            write_atomic(out / "results.csv", table.to_csv(index=False, float_format="%.9g"))
    return SweepResult(out / "results.csv", table, runs)
