"""Entries that tests/test_forkserver.py runs through `harness.forkserver`, in a server or a fresh interpreter."""

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time


def describe(argv: list[str]) -> int:
    """Print what the process sees (one JSON line) and exit with the code argv[0] asks for."""
    fds = [fd for fd in sorted(int(fd) for fd in os.listdir("/proc/self/fd")) if os.path.exists(f"/proc/self/fd/{fd}")]
    links = [os.readlink(f"/proc/self/fd/{fd}") for fd in fds]
    limits = {name: resource.getrlimit(getattr(resource, name)) for name in
              ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE")}
    handlers = {sig.name: repr(signal.getsignal(sig)) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE,
                                                                  signal.SIGCHLD, signal.SIGHUP)}
    print(json.dumps({"argv": argv, "sys_argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ),
                      "session_leader": os.getsid(0) == os.getpid(), "stdin": os.read(0, 10).decode(),
                      "fds": fds, "sockets": [l for l in links if l.startswith("socket:")],
                      "pipes": [l for l in links if l.startswith("pipe:")], "limits": limits, "signals": handlers,
                      "tempdir": tempfile.gettempdir(), "isolated": sys.flags.isolated}))
    print("to stderr", file=sys.stderr)
    return int(argv[0]) if argv else 0


def hang(argv: list[str]) -> int:
    """Start a grandchild in the same group, write both pids to argv[0], then wait forever."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(argv[0] + ".tmp", "w") as f:
        json.dump({"worker": os.getpid(), "grandchild": child.pid}, f)
    os.replace(argv[0] + ".tmp", argv[0])
    time.sleep(600)
    return 0


def fail(argv: list[str]) -> int:
    raise RuntimeError("the entry failed on purpose")


def burn(argv: list[str]) -> int:
    """CPU for argv[0] seconds, then exit 0: what the worker's CPU seconds must show."""
    end = time.process_time() + float(argv[0])
    while time.process_time() < end:
        pass
    return 0


WARMED_BY = None  # the pid of the process whose warm-up ran


def warm() -> None:
    global WARMED_BY
    WARMED_BY = os.getpid()


def warm_fails() -> None:
    raise RuntimeError("no fonts here")


def warmed(argv: list[str]) -> int:
    """Print which process warmed this one up (None: none did), and this one's pid."""
    print(json.dumps({"warmed_by": WARMED_BY, "pid": os.getpid()}))
    return 0


def collector(argv: list[str]) -> int:
    """Print how many objects the collector holds frozen and whether a cycle this process makes is still
    collected (one JSON line)."""
    import gc
    import weakref

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    del a, b
    gc.collect()
    print(json.dumps({"frozen": gc.get_freeze_count(), "cycle_collected": alive() is None}))
    return 0
