"""What the harness's child processes (the checkpoint reader, the sandbox) share about their lifetime."""

from __future__ import annotations

import signal


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: send `sig` (SIGKILL) to the calling process when the thread that started it dies, so that a
    grader killed with -9 leaves nothing of a student's running. Elsewhere: nothing."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
