"""Reference training: the GPT and the MLM that anchor the grades, trained reproducibly.

One loop serves both families, one process or many (`torchrun --nproc-per-node N -m harness.train ...`).
What makes a run trustworthy:
- Every random choice is a pure function of the seed and a position: the window order of epoch `e`
  comes from `PCG64([seed, e])`, the MLM masks of step `g` from `PCG64([seed, 1, g])`, and dropout
  reseeds torch from `(seed, g, rank)` before each step. So a run resumed from `state.pt` continues
  exactly as if never stopped (bit-identical weights on CPU), and N processes, each taking its slice of
  every *global* batch, follow the loss curve of one.
- Validation uses the graders' own evaluator (`evaluate_clm` / `evaluate_mlm`) with the course's
  protocol settings, so a reference's numbers and a student's are computed the same way.
- Every output is written atomically; rank 0 is the only writer.

Budgets (`max_steps`, `max_tokens`: positions in the run; `max_minutes`: this call) stop a run cleanly
without changing its learning-rate schedule; calling again with a larger budget continues the same run.

Public API: `train_reference`, `sweep`, `load_config`, `parse_grid`, `torchrun_command`, `train_distributed`;
`python -m harness.train` is the same as a script (what torchrun starts).
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.train.config import REFERENCE, TrainConfig, allowed_keys, load_config, parse_grid
from harness.train.data import wordpiece_vocabulary
from harness.train.objective import LinearCrossEntropy, Objective
from harness.train.run import TrainResult, train_reference
from harness.train.sweep import SweepResult, sweep


def torchrun_command(nproc: int, family: str, args: list[str]) -> list[str]:
    """The command that trains on this machine with `nproc` processes (DDP); `args` as for
    `python -m harness.train` (`--config`, `--set`, `--out`, budgets)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "harness.train", family, *args]


def train_distributed(nproc: int, family: str, config: Path | None = None, overrides: list[str] | None = None,
                      out: Path | None = None, *, course: Path | None = None, max_steps: int | None = None,
                      max_tokens: int | None = None, max_minutes: float | None = None, fresh: bool = False) -> int:
    """`train_reference` with `nproc` processes on this machine (torchrun, DDP); the run's exit code.
    Its summary is the JSON line rank 0 prints."""
    import subprocess

    args = [a for k, v in (("--config", config), ("--out", out), ("--course", course), ("--max-steps", max_steps),
                           ("--max-tokens", max_tokens), ("--max-minutes", max_minutes)) if v is not None
            for a in (k, str(v))]
    args += [a for o in overrides or () for a in ("--set", o)] + (["--no-resume"] if fresh else [])
    return subprocess.call(torchrun_command(nproc, family, args))


__all__ = ["REFERENCE", "TrainConfig", "allowed_keys", "load_config", "parse_grid", "train_reference",
           "TrainResult", "sweep", "SweepResult", "torchrun_command", "train_distributed", "wordpiece_vocabulary", "LinearCrossEntropy",
           "Objective"]
