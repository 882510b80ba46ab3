"""Imported by a fork server in tests/test_forkserver.py: a second of CPU at import, which no worker may be
charged for."""

import time

_end = time.process_time() + 1.0
while time.process_time() < _end:
    pass
