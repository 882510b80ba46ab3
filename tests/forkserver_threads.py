"""Imported by a fork server in tests/test_forkserver.py: a thread that outlives the import makes forking unsafe."""

import threading
import time

threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
