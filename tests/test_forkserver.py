"""`harness.forkserver`: a worker forked by a server sees what a fresh interpreter sees (folder, exactly the
environment asked for, arguments, its own session, no descriptor of the server's), ends the same ways (exit
codes, a traceback, a wall-time limit that kills its group, its CPU seconds), and nothing outlives a
client or a starter killed with -9. A server that is gone or that refuses leaves the work to a fresh
interpreter."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import forkserver

TESTS = Path(__file__).resolve().parent


def kind(name: str, entry: str, preload: tuple[str, ...] = ("forkserver_entries",)) -> forkserver.Kind:
    return forkserver.Kind(name=name, entry=f"forkserver_entries:{entry}", isolated=False, preload=preload,
                           server_env=lambda folder: {**os.environ, "OPENBLAS_NUM_THREADS": "1"})


def env_for(tmp_path: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LC_ALL": "C.UTF-8", "ONLY_THIS": "yes"}


def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie of ours counts as gone
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def described(tmp_path, monkeypatch):
    """The same request run by a server and by a fresh interpreter: what each printed, and how it ended."""
    k = kind("describe", "describe")
    seen = {}
    for mode in ("server", "fresh"):
        monkeypatch.setenv("HARNESS_FORKSERVER", "1" if mode == "server" else "0")
        folder = tmp_path / mode
        folder.mkdir()
        out, err = folder / "out.txt", folder / "err.txt"
        ended = forkserver.run(k, ["7", "two words"], cwd=folder, env=env_for(tmp_path), stdout=out, stderr=err,
                               timeout_s=60)
        seen[mode] = (ended, json.loads(out.read_text()), err.read_text())
    return seen


def test_a_forked_worker_sees_what_a_fresh_one_sees(described, tmp_path):
    (forked, f, f_err), (fresh, g, g_err) = described["server"], described["fresh"]
    assert forked.forked and not fresh.forked
    assert forked.code == fresh.code == 7 and not forked.timed_out and not fresh.timed_out
    assert f["argv"] == g["argv"] == ["7", "two words"] and f["sys_argv"] == g["sys_argv"] == ["7", "two words"]
    assert f["cwd"] == str(tmp_path / "server") and g["cwd"] == str(tmp_path / "fresh")
    assert f["env"] == g["env"] == env_for(tmp_path)  # exactly what was asked: nothing of the server's
    assert f["session_leader"] and g["session_leader"]
    assert f["stdin"] == g["stdin"] == ""  # /dev/null
    assert f["fds"] == g["fds"] == [0, 1, 2]  # neither the server's socket nor its lifeline nor its log
    assert f["limits"] == g["limits"] and f["signals"] == g["signals"]
    assert f["tempdir"] == g["tempdir"] and f["isolated"] == g["isolated"] == 0
    assert f_err == g_err == "to stderr\n"


def test_a_grader_that_ignores_sigint_gives_workers_that_ignore_it(tmp_path, monkeypatch):
    """A grader started with `&` from a script (or nohup) has SIGINT ignored, and a fresh interpreter inherits
    that; a forked worker must too, not Python's KeyboardInterrupt handler."""
    k = kind("describe", "describe")
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        seen = {}
        for mode in ("1", "0"):
            monkeypatch.setenv("HARNESS_FORKSERVER", mode)
            out, err = tmp_path / f"out{mode}.txt", tmp_path / f"err{mode}.txt"
            ended = forkserver.run(k, ["0"], cwd=tmp_path, env=env_for(tmp_path), stdout=out, stderr=err,
                                   timeout_s=60)
            assert ended.forked == (mode == "1") and ended.code == 0
            seen[mode] = json.loads(out.read_text())["signals"]
    finally:
        signal.signal(signal.SIGINT, before)
    assert seen["1"] == seen["0"] and seen["1"]["SIGINT"] == repr(signal.SIG_IGN)


def test_a_failing_entry_exits_1_with_its_traceback(tmp_path, monkeypatch):
    for mode in ("1", "0"):
        monkeypatch.setenv("HARNESS_FORKSERVER", mode)
        err = tmp_path / f"err{mode}.txt"
        ended = forkserver.run(kind("fail", "fail"), [], cwd=tmp_path, env=env_for(tmp_path), stderr=err)
        assert ended.code == 1 and ended.forked == (mode == "1")
        assert "RuntimeError: the entry failed on purpose" in err.read_text()


def test_cpu_seconds_are_the_workers_own(tmp_path):
    k = kind("burn", "burn", preload=("forkserver_entries", "forkserver_slow_import"))  # 1 s of CPU importing
    ended = forkserver.run(k, ["0.3"], cwd=tmp_path, env=env_for(tmp_path))
    assert ended.forked and ended.code == 0 and 0.28 <= ended.cpu_s < 0.9  # not the server's imports


@pytest.mark.parametrize("mode", ["server", "fresh"])
def test_the_wall_time_limit_kills_the_workers_group(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("HARNESS_FORKSERVER", "1" if mode == "server" else "0")
    pids = tmp_path / "pids.json"
    start = time.monotonic()
    ended = forkserver.run(kind("hang", "hang"), [str(pids)], cwd=tmp_path, env=env_for(tmp_path), timeout_s=3)
    assert ended.timed_out and ended.code == -signal.SIGKILL and ended.forked == (mode == "server")
    assert time.monotonic() - start < 30
    assert gone(json.loads(pids.read_text())["grandchild"])


def _run_and_get_killed(tmp_path: Path) -> dict:
    """A client process that starts the server, asks it for a worker that hangs, and is killed with -9."""
    pids = tmp_path / "pids.json"
    script = f"""
import json, os, sys
sys.path[:0] = {[str(TESTS.parent), str(TESTS)]!r}
from harness import forkserver
k = forkserver.Kind(name="hang", entry="forkserver_entries:hang", isolated=False, preload=("forkserver_entries",),
                    server_env=lambda folder: {{**os.environ, "OPENBLAS_NUM_THREADS": "1"}})
forkserver.address(k)
with open({str(tmp_path / 'server.json')!r}, "w") as f:
    json.dump({{"server": forkserver._servers["hang"].proc.pid}}, f)
forkserver.run(k, [{str(pids)!r}], cwd={str(tmp_path)!r}, env=dict(os.environ))
"""
    client = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not pids.exists() and time.monotonic() < deadline and client.poll() is None:
        time.sleep(0.05)
    assert pids.exists(), "the worker never started"
    client.kill()
    client.wait()
    return {**json.loads(pids.read_text()), **json.loads((tmp_path / "server.json").read_text())}


def test_nothing_outlives_a_client_and_starter_killed_with_9(tmp_path):
    pids = _run_and_get_killed(tmp_path)
    assert gone(pids["worker"]) and gone(pids["grandchild"]) and gone(pids["server"])


def test_a_killed_server_leaves_the_work_to_a_fresh_interpreter(tmp_path):
    k = kind("killed", "describe")
    first = forkserver.run(k, ["0"], cwd=tmp_path, env=env_for(tmp_path))
    assert first.forked and first.code == 0
    server = forkserver._servers["killed"].proc
    server.kill()
    server.wait()
    shutil.rmtree(Path(forkserver._servers["killed"].socket_path).parent)  # what a server killed leaves
    out = tmp_path / "out.txt"
    again = forkserver.run(k, ["0"], cwd=tmp_path, env=env_for(tmp_path), stdout=out)
    assert not again.forked and again.code == 0 and json.loads(out.read_text())["argv"] == ["0"]


def test_a_server_with_threads_refuses_and_the_work_is_done_fresh(tmp_path, capfd):
    """The work is done all the same; the grader is told once, on stderr, where the server said why."""
    k = kind("threads", "describe", preload=("forkserver_entries", "forkserver_threads"))
    for i in range(2):
        out = tmp_path / f"out{i}.txt"
        ended = forkserver.run(k, ["0"], cwd=tmp_path, env=env_for(tmp_path), stdout=out)
        assert not ended.forked and ended.code == 0 and json.loads(out.read_text())["argv"] == ["0"]
    server = forkserver._servers["threads"].proc
    assert server.wait(timeout=30) == 1
    folder = Path(forkserver._servers["threads"].socket_path).parent  # kept, with the reason
    assert "threads after importing; forking would not be safe" in (folder / "server.log").read_text()
    told = [line for line in capfd.readouterr().err.splitlines() if "fork server stopped" in line]
    assert told == [f"harness: a fork server stopped (exit code 1; why: {folder / 'server.log'}); its runs start "
                    "fresh interpreters instead, a second or two slower each"]
    shutil.rmtree(folder)


def test_checkpoints_read_through_the_server_and_fresh_are_the_same(tmp_path, monkeypatch):
    """The reader's own kind: forked from its server (kept for this process), or fresh; the same tensors, the
    same refusal of a pickle that would run a command."""
    import pickle
    import zipfile

    import torch

    from harness.checkpoint.errors import CheckpointError
    from harness.checkpoint.read import read_checkpoint
    from harness.checkpoint.runner import READER

    torch.manual_seed(0)
    clean = tmp_path / "clean.pt"
    torch.save({"model": {"w": torch.randn(3, 4), "b": torch.zeros(4)}, "iter_num": 7}, clean)
    hostile = tmp_path / "hostile.pt"
    torch.save({"w": torch.zeros(2)}, hostile)
    with zipfile.ZipFile(hostile) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    payload = pickle.dumps(type("P", (), {"__reduce__": lambda self: (os.system, ("true",))})(), protocol=2)
    entries = {n: (payload if n.endswith("data.pkl") else b) for n, b in entries.items()}
    with zipfile.ZipFile(hostile, "w") as z:
        for n, b in entries.items():
            z.writestr(n, b)
    seen = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("HARNESS_FORKSERVER", mode)
        raw = read_checkpoint(clean, root=tmp_path)
        with pytest.raises(CheckpointError) as refused:
            read_checkpoint(hostile, root=tmp_path)
        seen[mode] = ({k: v.tolist() for k, v in raw.tensors.items()}, refused.value.code, refused.value.message)
    assert seen["1"] == seen["0"] and seen["1"][1] == "checkpoint-unsafe"
    server = forkserver._servers.get(READER.name)
    assert server is not None and not server.dead and (server.proc is None or server.proc.poll() is None)


def test_shutdown_ends_the_servers_and_the_next_run_starts_one(tmp_path):
    k = kind("again", "describe")
    assert forkserver.run(k, ["0"], cwd=tmp_path, env=env_for(tmp_path)).forked
    first, folder = forkserver._servers["again"].proc, Path(forkserver._servers["again"].socket_path).parent
    forkserver.shutdown()
    assert first.poll() == 0 and not folder.exists()  # its socket's folder removed
    assert forkserver.run(k, ["0"], cwd=tmp_path, env=env_for(tmp_path)).forked
    assert forkserver._servers["again"].proc.pid != first.pid


def test_a_worker_collects_its_own_garbage_and_never_walks_the_servers(tmp_path, monkeypatch):
    """The server hides what it imported from the collector (frozen) before it forks: a worker's collections,
    its exit's among them, leave those objects' pages unwritten (70 ms a measuring worker, with torch and
    transformers imported), and still collect what the worker itself made. A fresh interpreter freezes nothing."""
    k = kind("collector", "collector")
    seen = {}
    for mode in ("server", "fresh"):
        monkeypatch.setenv("HARNESS_FORKSERVER", "1" if mode == "server" else "0")
        out = tmp_path / f"{mode}.txt"
        ended = forkserver.run(k, [], cwd=tmp_path, env=env_for(tmp_path), stdout=out)
        assert ended.code == 0 and ended.forked == (mode == "server")
        seen[mode] = json.loads(out.read_text())
    assert seen["server"]["frozen"] > 1000 and seen["fresh"]["frozen"] == 0
    assert seen["server"]["cycle_collected"] and seen["fresh"]["cycle_collected"]


@pytest.mark.parametrize("warm", ["warm", "warm_fails"])
def test_a_server_warms_up_once_before_it_forks(tmp_path, warm):
    """A kind's warm-up runs in the server, once, before any worker: every worker inherits what it did. One
    that fails is logged in the server's log and the server serves all the same, cold."""
    k = forkserver.Kind(name=f"warmed-{warm}", entry="forkserver_entries:warmed", isolated=False,
                        preload=("forkserver_entries",), warm=f"forkserver_entries:{warm}")
    seen = []
    for i in range(2):
        out = tmp_path / f"out{i}.txt"
        ended = forkserver.run(k, [], cwd=tmp_path, env=env_for(tmp_path), stdout=out)
        assert ended.forked and ended.code == 0
        seen.append(json.loads(out.read_text()))
    server = forkserver._servers[k.name]
    if warm == "warm":
        assert seen[0]["warmed_by"] == seen[1]["warmed_by"] == server.proc.pid  # once, by the server
        assert len({seen[0]["pid"], seen[1]["pid"], server.proc.pid}) == 3  # two workers, neither the server
    else:
        assert seen[0]["warmed_by"] is None and seen[1]["warmed_by"] is None
        log = (Path(server.socket_path).parent / "server.log").read_text()
        assert "warm-up forkserver_entries:warm_fails failed: RuntimeError: no fonts here" in log
