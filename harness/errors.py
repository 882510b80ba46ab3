"""One error type for everything a user can get wrong.

Deep code raises `HarnessError(code, message)`; only the CLI turns it into one line and an exit code.
Codes are stable: tests, results.json and reports name them.
"""

from __future__ import annotations


class HarnessError(Exception):
    """An error a user can act on: a stable `code` and one sentence that says what to do."""

    exit_code = 2

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
