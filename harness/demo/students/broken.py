"""Submissions no model comes out of: a checkpoint cut off in upload (broken_file), someone else's weights
(copied_model, both made from nanogpt_clean's checkpoint), and a pickle that would run a command on a
careless `torch.load` (hostile_pickle)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import torch

from harness.demo.students.common import GPT2_VOCAB, Ctx, write_toml
from harness.demo.students.minigpt import MiniGPT

HOSTILE_MARKER = ".hostile-pickle-ran"  # a hidden file in the class folder that only a loaded pickle creates


class _Payload:
    """Unpickles as os.system("touch MARKER"): what a hostile checkpoint would run on a careless torch.load."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def broken_file(ctx: Ctx, sid: str) -> None:
    folder = ctx.folder(sid)
    # The upload stopped after the first kilobyte of a real checkpoint.
    (folder / "model.pt").write_bytes(ctx.nanogpt_file.read_bytes()[:1000])
    write_toml(folder / "submission.toml", {
        "submission": {"student": "Jonas Berg", "family": "gpt"},
        "claims": {"val_loss": 6.2, "val_ppl": 492.7},
    })


def copied_model(ctx: Ctx, sid: str) -> None:
    folder = ctx.folder(sid)
    torch.save(ctx.nanogpt_sd, folder / "model.pt")  # someone else's weights, re-saved as a plain state dict
    write_toml(folder / "submission.toml", {
        "submission": {"student": "Kai Nakamura", "family": "gpt"},
        "model": {"n_heads": 4},
        "claims": dict(ctx.nanogpt_claims),
    })


def hostile_pickle(ctx: Ctx, sid: str) -> None:
    folder = ctx.folder(sid)
    ctx.seeded(9)
    weights = MiniGPT(GPT2_VOCAB, 16, 1, 2, 64).state_dict()
    torch.save({"model_state_dict": weights, "callback": _Payload(ctx.out.resolve() / HOSTILE_MARKER)},
               folder / "model.pt")
    write_toml(folder / "submission.toml", {
        "submission": {"student": "Mallory Vance", "family": "gpt"},
        "claims": {"val_loss": 3.1, "val_ppl": 22.2},
    })
