"""What goes wrong reading a checkpoint: one error type, three stable codes, and short quoted causes."""

from __future__ import annotations

import re

from harness.errors import HarnessError

UNSAFE = "checkpoint-unsafe"
UNREADABLE = "checkpoint-unreadable"
MISSING = "checkpoint-missing"


class CheckpointError(HarnessError):
    """`checkpoint-unsafe`, `checkpoint-unreadable` or `checkpoint-missing`, with one sentence."""


def short(e: BaseException | str, limit: int = 160) -> str:
    """The first line of an exception (or text) as a cause quoted in a message: no escapes, at most `limit`."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"\x1b\[[0-9;]*m|[\x00-\x1f]", "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
