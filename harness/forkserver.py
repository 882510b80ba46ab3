"""Processes that start in milliseconds: a fork server imports torch and the harness once, then forks a
ready process for each request, where a fresh interpreter spends ~2 s importing torch. Grading pays that
twice a submission (its measuring process and its checkpoint's reader), more than it spends measuring a
small model.

A `Kind` names what runs (an entry `module:function(argv) -> exit code`), how a fresh interpreter would
be started for it (isolated with -I or not), and what its server imports beforehand. `run` runs it once:
through the kind's server where one can be had, else in a fresh interpreter, the same entry either way;
it waits up to a wall-time limit, kills the process group, and says how it ended (`Ended`).

A server is started by the first process that runs its kind (a lazy kind, as the reader's) or by `address`
(`harness grade` starts both before its workers where it has two jobs or more, and hands the reader's
address to its measuring processes in `HARNESS_READ_SERVER`), and lives as long as that process: it reads a
lifeline pipe whose write end only its starter holds and exits when the pipe closes, however its starter
ended. It listens on a Unix socket in a private (0700) folder.

Per request (one JSON line: argv, folder, environment, output files) the server forks a *monitor*, which
forks the *worker*: its own session, the folder, exactly the environment asked for, stdin from /dev/null,
then the entry. The monitor answers the worker's pid at once and, when it ends, its exit status and CPU
seconds (`wait4`). A client that goes away (killed, timed out) closes the connection and the monitor, which
alone may reap the worker, kills the worker's process group. The worker dies with the monitor, the monitor
with the server, killing the worker's group first (both by PR_SET_PDEATHSIG), the server with its lifeline:
a grader killed with -9 leaves nothing running. A request can run the server's one entry and nothing else;
only processes of the grader's user that see its temporary folder can connect (the sandbox has its own
/tmp; the reader and the sandbox get scrubbed environments, without the address).

What a fresh interpreter does at exit, a worker does too: its atexit functions (temporary folders'
finalizers among them) run before it exits. What the server imported is frozen out of the cyclic
collector's sight before it forks (`gc.freeze`): a worker collects its own garbage and never walks the
server's ~200,000 objects (nor writes the collector's fields of theirs, copying their pages).

Forking is safe because the server has one thread: it checks so after its imports (OpenBLAS's pool is kept
to one thread by every server's environment, `SINGLE_THREADED`) and refuses to serve otherwise, its reason
left in its folder's server.log, which its starter names once on stderr. A caller that finds no server (it
refused, died, `HARNESS_FORKSERVER=0`, a Ray node, a socket path too long) starts a fresh interpreter, as
before.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.processes import die_with_parent

_BOOT = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]); from harness.forkserver import {0}; "
         "sys.exit({0}(*sys.argv[2:]))")
MAX_LINE = 1 << 20  # a request (argv, environment) or an answer, in bytes
STARTUP_S = 300.0  # the longest a server may take to import before its first answer
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1"}  # in every server's environment: OpenBLAS starts no thread pool
SOCKET_PATH_MAX = 99  # sun_path holds 107 bytes and a NUL, the server binds PATH.binding first (8 more)


@dataclass(frozen=True)
class Kind:
    name: str
    entry: str  # "module:function", called with the argv list, returning the exit code
    isolated: bool  # a fresh interpreter is started with -I (no PYTHON* variables, no cwd on the path)
    preload: tuple[str, ...] = ()  # what the server imports before it forks (absent optional ones are skipped)
    # "module:function" the server calls once after its imports, before it forks: what a process would
    # otherwise pay on its first run (fonts, templates); a warm-up that fails is logged and skipped
    warm: str | None = None
    # the server's own environment, given its private folder (None: this process's)
    server_env: Callable[[Path], dict[str, str]] | None = None
    address_env: str | None = None  # where a parent passes its server's address to the processes it starts
    lazy: bool = True  # the first run starts the server (False: only `address` does, where many runs will follow)


@dataclass(frozen=True)
class Ended:
    code: int | None  # the exit code; negative: killed by that signal
    cpu_s: float  # the CPU seconds it used
    timed_out: bool  # it ran past the wall-time limit and was killed
    forked: bool  # it came from a server (False: a fresh interpreter)


@dataclass
class _Server:
    socket_path: str
    proc: subprocess.Popen | None = None  # None: a server another process started (its address was passed on)
    dead: bool = False


_servers: dict[str, _Server] = {}
_lock = threading.Lock()


class _Lost(Exception):
    """The server could not be reached, or went away before its worker started: nothing ran."""


# --- the caller's side -----------------------------------------------------------------------------


def run(kind: Kind, argv: list[str], *, cwd: Path, env: dict[str, str], stdout: Path | None = None,
        stderr: Path | None = None, timeout_s: float = 0) -> Ended:
    """Run `kind`'s entry with `argv` in `cwd` with exactly `env`, its output appended to the files given
    (else /dev/null); wait up to `timeout_s` (0: no limit), then kill its process group. Through the
    kind's server where one can be had; a server lost before its worker started leaves the run to a fresh
    interpreter, one lost while its worker ran (killed with it) ends the run with no exit code."""
    server = _server(kind)
    if server is not None:
        try:
            return _run_forked(server, argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, timeout_s=timeout_s)
        except _Lost:  # before the worker started: nothing ran yet
            if server.proc is None or server.proc.poll() is not None:
                _gone(server)  # (one started elsewhere cannot be checked: not asked again)
    return _run_fresh(kind, argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, timeout_s=timeout_s)


def address(kind: Kind, env: dict[str, str] | None = None) -> str | None:
    """The socket of `kind`'s server, started now if need be (with `env` over its own environment: what
    its workers' runs will set that is read once, at import, as OMP_NUM_THREADS): for this process's runs
    and the processes it starts."""
    server = _server(kind, start=True, env=env)
    return server.socket_path if server is not None else None


def running(kind: Kind) -> bool:
    """Whether this process started `kind`'s server (or was passed it and has used it) and it has not gone:
    its runs are forked. Starts nothing."""
    if not _enabled():
        return False
    with _lock:
        server = _servers.get(kind.name)
        return server is not None and _alive(server)


def shutdown() -> None:
    """End the servers this process started and forget every server: the next run starts as a new process
    would (for benchmarks that time a grading run whole, server start included)."""
    with _lock:
        for server in _servers.values():
            if server.proc is not None and server.proc.stdin is not None:
                server.proc.stdin.close()  # the lifeline
                try:
                    server.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.proc.kill()
                    server.proc.wait()
        _servers.clear()


def _enabled() -> bool:
    return os.environ.get("HARNESS_FORKSERVER", "1") != "0" and hasattr(os, "fork")


def _alive(server: _Server) -> bool:
    """Not marked gone, and (where this process started it) still running."""
    return not server.dead and (server.proc is None or server.proc.poll() is None)


def _server(kind: Kind, start: bool = False, env: dict[str, str] | None = None) -> _Server | None:
    if not _enabled():
        return None
    with _lock:
        server = _servers.get(kind.name)
        if server is None:
            passed = os.environ.get(kind.address_env) if kind.address_env else None
            if not passed and not (start or kind.lazy):
                return None
            server = _Server(passed) if passed else _start(kind, env or {})
            _servers[kind.name] = server
        if not _alive(server):
            _gone(server)  # not started again: whatever ended it would end the next one too
            return None
        return server


def _gone(server: _Server) -> None:
    """Marks `server` dead; one that this process started and that ended with an error (it refused to fork:
    threads) is said once on stderr, with the log that says why: its runs are slower from now on."""
    if server.dead:
        return
    server.dead = True
    if server.proc is not None and server.proc.returncode:
        log = Path(server.socket_path).parent / "server.log"
        print(f"harness: a fork server stopped (exit code {server.proc.returncode}; why: {log}); its runs start "
              "fresh interpreters instead, a second or two slower each", file=sys.stderr)


def _start(kind: Kind, env: dict[str, str]) -> _Server:
    folder = Path(tempfile.mkdtemp(prefix=f"harness-{kind.name}-server-"))
    path = str(folder / "socket")
    if len(path.encode()) > SOCKET_PATH_MAX:
        shutil.rmtree(folder, ignore_errors=True)
        return _Server(path, dead=True)
    flags = ["-I"] if kind.isolated else []
    own = kind.server_env(folder) if kind.server_env is not None else dict(os.environ)
    with open(folder / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, *flags, "-c", _BOOT.format("serve"),
                                 json.dumps(_sys_path()), kind.entry, path, json.dumps(kind.preload), kind.warm or ""],
                                cwd=folder, env={**own, **SINGLE_THREADED, **env}, stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, close_fds=True)
    # proc.stdin is the lifeline: never written, closed when this process ends
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # it binds its socket before importing: clients then wait in its backlog
    return _Server(path, proc)


def _sys_path() -> list[str]:
    """The harness package's parent first, then this interpreter's absolute path entries: a process
    started with -I (no cwd, no PYTHON* variables) finds exactly what this one finds."""
    pkg_parent = str(Path(__file__).resolve().parents[1])
    rest = [p for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p) and p != pkg_parent]
    return [pkg_parent, *rest]


def _run_fresh(kind: Kind, argv: list[str], *, cwd: Path, env: dict[str, str], stdout: Path | None,
               stderr: Path | None, timeout_s: float) -> Ended:
    flags = ["-I"] if kind.isolated else []
    out = _append(stdout)
    err = out if stderr == stdout else _append(stderr)
    try:
        proc = subprocess.Popen([sys.executable, *flags, "-c", _BOOT.format("fresh"),
                                 json.dumps(_sys_path()), kind.entry, *argv], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                                close_fds=True)
    finally:
        for fd in {out, err} - {subprocess.DEVNULL}:
            os.close(fd)
    code, cpu, timed_out = _wait(proc, timeout_s)
    return Ended(code, cpu, timed_out, forked=False)


def _append(path: Path | str | None) -> int:
    """A file opened for appending (created private), or /dev/null."""
    if not path:
        return subprocess.DEVNULL
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def _wait(proc: subprocess.Popen, timeout_s: float) -> tuple[int | None, float, bool]:
    """Wait for a fresh process up to the limit; its exit code, CPU seconds and whether it ran out of time."""
    try:
        status, cpu, timed_out = _until_ended(proc.pid, time.monotonic() + timeout_s if timeout_s else None)
    except BaseException:
        _kill_group(proc.pid)
        try:
            os.wait4(proc.pid, 0)
        except ChildProcessError:
            pass
        proc.returncode = -signal.SIGKILL
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, cpu, timed_out


def _until_ended(pid: int, deadline: float | None, conn: socket.socket | None = None) -> tuple[int, float, bool]:
    """Wait for the child `pid` to end; kill its group at `deadline` (None: none) or when `conn` closes (a
    monitor's client gone). Its group is killed again once it ended, while its pid is not yet reaped (so that
    the pid names nothing else), then it is reaped: its wait status, CPU seconds, and whether it was stopped."""
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):
        handle = None  # no pidfd: look every 50 ms
    watching = [x for x in (handle, conn) if x is not None]
    stopped = False
    try:
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            wait = None if handle is not None else 0.05
            if deadline is not None and not stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    stopped = True
                    _kill_group(pid)
                    continue
                wait = left if wait is None else min(wait, left)
            ready, _, _ = select.select(watching, [], [], wait)
            if conn is not None and conn in ready:
                try:
                    gone = not conn.recv(1)
                except OSError:
                    gone = True
                if gone:
                    stopped = True
                    _kill_group(pid)
                    watching.remove(conn)
        _kill_group(pid)  # what it left running in its session
        _, status, usage = os.wait4(pid, 0)
    finally:
        if handle is not None:
            os.close(handle)
    return status, usage.ru_utime + usage.ru_stime, stopped


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_forked(server: _Server, argv: list[str], *, cwd: Path, env: dict[str, str], stdout: Path | None,
                stderr: Path | None, timeout_s: float) -> Ended:
    request = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": env,
               "stdout": str(stdout) if stdout else None, "stderr": str(stderr) if stderr else None,
               # a fresh interpreter inherits an ignored SIGINT (a grader started with `&` or nohup)
               "sigint_ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lines = _Lines(conn)
        try:
            conn.connect(server.socket_path)
            conn.sendall(json.dumps(request).encode() + b"\n")
            started = lines.next(time.monotonic() + STARTUP_S)  # a server still importing answers when ready
        except OSError:  # TimeoutError among them
            raise _Lost() from None
        if not isinstance(started, dict) or not isinstance(started.get("pid"), int):
            raise _Lost()
        deadline = time.monotonic() + timeout_s if timeout_s else None
        try:
            ended = lines.next(deadline)
            timed_out = False
        except TimeoutError:
            timed_out = True
            conn.shutdown(socket.SHUT_WR)  # the monitor, which alone may reap the worker, kills its group
            try:
                ended = lines.next(time.monotonic() + 60)
            except TimeoutError:
                ended = None
        if not isinstance(ended, dict) or not isinstance(ended.get("status"), int):
            return Ended(None, 0.0, timed_out, True)  # the monitor died, and the worker with it
        return Ended(os.waitstatus_to_exitcode(ended["status"]), float(ended.get("cpu") or 0.0), timed_out, True)
    finally:
        conn.close()  # before an answer came: the monitor kills the worker's group


class _Lines:
    """JSON lines read from a socket, each before a deadline (None: none)."""

    def __init__(self, conn: socket.socket):
        self.conn, self.buf = conn, b""

    def next(self, deadline: float | None):
        while b"\n" not in self.buf:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.conn], [], [], wait)
            if not ready:
                raise TimeoutError
            try:
                chunk = self.conn.recv(65536)
            except OSError:
                chunk = b""
            if not chunk or len(self.buf) > MAX_LINE:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return None


# --- the processes' side ---------------------------------------------------------------------------


def _entry(spec: str) -> Callable[[list[str]], int]:
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def fresh(entry: str, *argv: str) -> int:
    """A fresh interpreter's bootstrap: the entry, as the forked worker calls it."""
    sys.argv = ["-c", *argv]
    return _entry(entry)(list(argv))


def serve(entry: str, socket_path: str, preload: str, warm: str = "") -> int:
    """The server's loop: import, warm up, check that forking is safe, then a monitor per connection until
    the lifeline (stdin) closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its starter decides when it ends: the lifeline
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path + ".binding")
    listener.listen(64)  # clients connecting while it imports wait in the backlog
    os.rename(socket_path + ".binding", socket_path)  # it appears listening: a client never finds it deaf
    try:
        for name in json.loads(preload):
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        run_entry = _entry(entry)
        if warm:
            try:
                _entry(warm)()
            except Exception as e:  # noqa: BLE001 — only slower: the first run of each worker pays it instead
                print(f"forkserver: warm-up {warm} failed: {type(e).__name__}: {e}", file=sys.stderr)
        threads = _threads()
        if threads != 1:
            print(f"forkserver: {threads} threads after importing{' and warming up' if warm else ''}; forking would not "
                  "be safe", file=sys.stderr)
            listener.close()
            os.unlink(socket_path)
            os._exit(1)  # its folder stays, with server.log saying why
        # what the imports made lives as long as the server: out of the collector's sight, so that a worker's
        # collections (its exit's among them) neither walk those ~200,000 objects nor write the collector's
        # fields in their headers, which copies each page touched (70 ms a worker before, nothing after).
        # Before the flushes: what a finalizer run here prints is not every worker's to print either
        gc.collect()
        gc.freeze()
        sys.stdout.flush()  # what the imports printed is not every worker's to print again
        sys.stderr.flush()
        server_pid = os.getpid()
        while True:
            ready, _, _ = select.select([0, listener], [], [], 5.0)
            _reap()
            if 0 in ready and not os.read(0, 4096):
                return 0
            if listener in ready:
                conn, _ = listener.accept()
                if os.fork() == 0:
                    _monitor(conn, listener, server_pid, run_entry)  # never returns
                conn.close()
    finally:
        listener.close()
        shutil.rmtree(os.path.dirname(socket_path), ignore_errors=True)


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return


def _die_with(parent: int, sig: int = signal.SIGKILL) -> None:
    die_with_parent(sig)
    if os.getppid() != parent:  # it died before the request took hold
        os._exit(1)


def _monitor(conn: socket.socket, listener: socket.socket, server_pid: int, run_entry) -> None:
    code = 1
    try:
        _die_with(server_pid, signal.SIGTERM)  # the server gone: the worker's group first (below), then itself
        listener.close()
        os.close(0)
        request = _Lines(conn).next(time.monotonic() + 60)
        if not isinstance(request, dict):
            os._exit(1)
        monitor_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            _worker(request, conn, monitor_pid, run_entry)  # never returns
        signal.signal(signal.SIGTERM, lambda *_: (_kill_group(pid), os._exit(1)))
        _send(conn, {"pid": pid})
        status, cpu, _ = _until_ended(pid, None, conn)
        _send(conn, {"status": status, "cpu": cpu})
        code = 0
    except BaseException:  # noqa: BLE001 - a monitor only ever exits
        pass
    os._exit(code)


def _send(conn: socket.socket, value: dict) -> None:
    try:
        conn.sendall(json.dumps(value).encode() + b"\n")
    except OSError:
        pass


def _worker(request: dict, conn: socket.socket, monitor_pid: int, run_entry) -> None:
    code = 1
    try:
        os.setsid()
        _die_with(monitor_pid)
        conn.close()
        signal.signal(signal.SIGINT, signal.SIG_IGN if request.get("sigint_ignored") else signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDWR)
        out = _append(request.get("stdout")) if request.get("stdout") else devnull
        err = out if request.get("stderr") == request.get("stdout") else (
            _append(request.get("stderr")) if request.get("stderr") else devnull)
        for fd, target in ((0, devnull), (1, out), (2, err)):
            os.dup2(target, fd)
        for fd in {devnull, out, err} - {0, 1, 2}:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        tempfile.tempdir = None  # TMPDIR is read again
        sys.argv = ["-c", *request["argv"]]
        try:
            code = run_entry(list(request["argv"]))
        except SystemExit as e:
            code = _exit_code(e)
        code = code if isinstance(code, int) else 0 if code is None else 1
    except BaseException:  # noqa: BLE001 - what a fresh interpreter would print before exiting with 1
        import traceback

        traceback.print_exc()
        code = 1
    try:
        import atexit

        gc.collect()
        atexit._run_exitfuncs()  # as an interpreter's exit: temporary folders' finalizers among them
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)
