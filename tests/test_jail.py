"""The boundary around students' model code (jail.py): hostile model files try to get out, and cannot.

Each hostile file does what the issue saw a submission do while it was loaded (write the grader's /tmp, read a
neighbour's submission and the grader's cache, tamper with OUT/, spawn, fork-bomb, leave a double-forked
daemon behind, flood its output, fill the disk, allocate without bound, answer with garbage), reports what
it could do through its own error message (the one channel it has back), and the tests check from outside
that nothing changed and nothing is left running. Several behaviours share one file: a sandbox start costs
seconds here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.sandbox.jail import boundary, seccomp_program
from harness.sandbox.run import SandboxedModel, SandboxLimits

needs_boundary = pytest.mark.skipif(not boundary().available, reason=f"no sandbox here: {boundary().detail}")

TINY = '''
import torch, torch.nn as nn

class TinyLM(nn.Module):
    def __init__(self, vocab_size=50, d=16, block_size=8):
        super().__init__()
        self.block_size = block_size
        self.tok = nn.Embedding(vocab_size, d)
        self.pos = nn.Embedding(block_size, d)
        self.head = nn.Linear(d, vocab_size)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        x = torch.cumsum(x, dim=1) / torch.arange(1, idx.shape[1] + 1)[None, :, None]
        return self.head(x)
'''
KWARGS = {"vocab_size": 50, "d": 16, "block_size": 8}
LIMITS = SandboxLimits(start_seconds=90, call_seconds=30, processes=32, file_mb=4, tmp_mb=12, output_mb=1)

# What a hostile file tries at import, each attempt reported as "ok:<what it got>" or "<Error>:<errno>".
ESCAPE = '''
import errno, json, os, signal, subprocess, time
P = json.loads(PATHS)

def attempt(fn):
    try:
        return "ok:" + str(fn())[:60]
    except BaseException as e:  # errno's name, short: the message has room for 500 characters
        # (MemoryError spelled otherwise: the harness rewords a message holding it)
        return errno.errorcode.get(getattr(e, "errno", None) or -1, type(e).__name__.replace("MemoryError", "NoMemory"))

def write(path, text="tampered"):
    with open(path, "w") as f:
        f.write(text)
    return "written"

R = {}
R["neighbour"] = attempt(lambda: open(P["neighbour"]).read())
R["link"] = attempt(lambda: open("alice.toml").read())
R["class"] = attempt(lambda: os.listdir(P["class"]))
R["cache"] = attempt(lambda: open(P["cache"]).read())
R["results"] = attempt(lambda: write(P["results"]))
R["newcache"] = attempt(lambda: write(P["cache_dir"] + "/poison.json"))
R["gradertmp"] = attempt(lambda: write("/tmp/" + P["marker"]))
R["own"] = attempt(lambda: write("model.py"))
R["shm"] = attempt(lambda: write("/dev/shm/fill"))  # a tmpfs beside /tmp would lift its bound
R["root"] = attempt(lambda: write("/fill"))
R["null"] = attempt(lambda: write("/dev/null"))
R["home"] = attempt(lambda: sorted(os.listdir(P["home"])))
R["procs"] = len([p for p in os.listdir("/proc") if p.isdigit()])
R["uid"] = os.getuid()
R["id"] = attempt(lambda: subprocess.run(["id", "-u"], capture_output=True, text=True, timeout=30).stdout.strip())
R["big"] = attempt(lambda: write("/tmp/big", "x" * (5 << 20)))
def fill():
    for i in range(100):
        write(f"/tmp/fill{i}", "x" * (3 << 20))
R["fill"] = attempt(fill)
R["alloc"] = attempt(lambda: len(bytearray(64 << 30)))
R["files"] = attempt(lambda: [open("/dev/null") for _ in range(100_000)])
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def syscall(nr, *args):
    return "ok" if libc.syscall(nr, *args) >= 0 else errno.errorcode[ctypes.get_errno()]
R["ptrace"] = syscall(101, 16, 1, 0, 0)  # x86_64 ptrace(PTRACE_ATTACH, its namespace's init)
R["userns"] = syscall(272, 0x10000000)  # unshare(CLONE_NEWUSER)
if os.fork() == 0:  # a daemon: double-forked, its own session, deaf to SIGTERM
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.execv("/usr/bin/sleep", ["sleep", P["daemon"]])
    os._exit(0)
os.wait()
n = 0
try:
    while n < 1000:  # a fork bomb
        if os.fork() == 0:
            os.execv("/usr/bin/sleep", ["sleep", P["bomb"]])
        n += 1
except OSError as e:
    R["fork"] = f"{n}:{e.errno}"
raise RuntimeError("REPORT" + json.dumps(R, separators=(",", ":")) + "END")
'''


def _submission(folder: Path, extra: str = "", cls: str = "TinyLM") -> dict[str, torch.Tensor]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(TINY + textwrap.dedent(extra))
    ns: dict = {}
    exec(TINY, ns)
    torch.manual_seed(0)
    return {k: v.clone() for k, v in ns["TinyLM"](**KWARGS).state_dict().items()}


def _alive(*markers: str) -> list[str]:
    """Command lines of this machine's processes that carry a marker."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if any(m in cmd for m in markers):
                found.append(f"{p.name}: {cmd}")
    return found


def _report(message: str) -> dict:
    assert "REPORT" in message and "END" in message, message
    return json.loads(message.split("REPORT", 1)[1].split("END", 1)[0])


def _host_state(*paths: Path) -> dict[str, bytes | None]:
    return {str(p): p.read_bytes() if p.is_file() else None for p in paths}


@needs_boundary
def test_a_hostile_file_sees_nothing_but_itself_and_leaves_nothing_behind(tmp_path):
    """Run as root (CI) and as an ordinary user: the same boundary, the same verdicts."""
    tag = uuid.uuid4().hex[:8]
    klass, out = tmp_path / "class", tmp_path / "OUT"
    neighbour = klass / "alice" / "submission.toml"
    neighbour.parent.mkdir(parents=True)
    neighbour.write_text(f'[submission]\nstudent = "Alice SECRET{tag}"\n')
    (out / ".cache").mkdir(parents=True)
    cache, results = out / ".cache" / "alice.0123.json", out / "results.json"
    cache.write_text(f'{{"secret": "CACHED{tag}"}}')
    results.write_text('{"submissions": []}')
    daemon, bomb = f"3600.{int(tag, 16) % 10**6:06d}1", f"3600.{int(tag, 16) % 10**6:06d}2"
    paths = {"neighbour": str(neighbour), "class": str(klass), "cache": str(cache), "results": str(results),
             "cache_dir": str(cache.parent), "marker": f"harness-escape-{tag}", "home": str(Path.home()),
             "daemon": daemon, "bomb": bomb}
    sd = _submission(klass / "mallory", f"PATHS = {json.dumps(json.dumps(paths))}\n" + ESCAPE)
    (klass / "mallory" / "alice.toml").symlink_to(neighbour)  # a link out of its own folder: never followed
    (klass / "mallory" / "again.py").symlink_to(klass / "mallory" / "model.py")  # absolute: left out, not chmod-ed
    mode = (klass / "mallory" / "model.py").stat().st_mode
    before = _host_state(neighbour, cache, results, klass / "mallory" / "model.py")

    with pytest.raises(HarnessError) as e:
        with SandboxedModel(klass / "mallory", "model.py:TinyLM", sd, kwargs=KWARGS, limits=LIMITS):
            pass
    assert e.value.code == "model-code-failed"
    r = _report(e.value.message)

    # the class folder, the neighbour and OUT/ (results, cache) are not there at all
    for key in ("neighbour", "link", "class", "cache", "results", "newcache"):
        assert r[key] == "ENOENT", (key, r)
    assert f"SECRET{tag}" not in e.value.message and f"CACHED{tag}" not in e.value.message
    assert r["own"] == "EROFS"  # its own submission: read-only
    assert r["shm"] == r["root"] == "EROFS" and r["null"] == "ok:written"  # nowhere to write but /tmp
    assert r["gradertmp"] == "ok:written"  # a private /tmp ...
    assert not Path(f"/tmp/harness-escape-{tag}").exists()  # ... not the grader's
    assert not list(out.rglob("poison*"))
    assert _host_state(neighbour, cache, results, klass / "mallory" / "model.py") == before
    assert (klass / "mallory" / "model.py").stat().st_mode == mode
    # the grader's home: absent, or only the folders that lead to the Python environment
    if r["home"].startswith("ok:"):
        prefixes = {sys.prefix, sys.base_prefix, os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
        home = str(Path.home())
        shown = {p[len(home) + 1:].split("/")[0] for p in prefixes if p.startswith(home + "/")}
        assert set(json.loads(r["home"][3:].replace("'", '"'))) <= shown, r["home"]
    else:
        assert r["home"] == "ENOENT", r
    # not root, and its own processes only
    assert r["uid"] != 0 and r["id"] == f"ok:{r['uid']}"
    assert r["procs"] < 10
    # resources: a file past file_mb, /tmp past tmp_mb, memory past memory_mb all refused
    assert r["big"] == "EFBIG"  # EFBIG
    assert r["fill"] == "ENOSPC"  # ENOSPC
    assert r["alloc"] == "NoMemory" and r["files"] == "EMFILE"
    # seccomp (x86_64): no tracing of other processes, no new namespaces
    if seccomp_program() is not None:
        assert (r["ptrace"], r["userns"]) == ("EPERM", "EPERM"), r
    assert r["userns"] != "ok"
    n, errno = map(int, r["fork"].split(":"))
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    assert errno == 11 and n < LIMITS.processes + 2 * threads  # EAGAIN: the fork bomb stopped at the process limit
    # the daemon and the bomb's children ended with the sandbox, before close() returned
    assert _alive(daemon, bomb) == []


@needs_boundary
@pytest.mark.parametrize("case", ["flood", "pipe", "readonly", pytest.param("cpu", marks=pytest.mark.slow)])
def test_floods_forged_replies_and_breaches_end_the_child_with_a_reason(tmp_path, case):
    """Each ends in `model-code-failed` with its reason; a refusal of the sandbox says what was refused."""
    extra = {
        "flood": "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)\n",
        "readonly": "open('weights_cache.bin', 'wb')\n",
        "cpu": "while True:\n    pass\n",
        # the answer pipe's fd is the child's second argument: a forged header claiming 4 GB
        "pipe": "import os, struct, sys\nos.write(int(sys.argv[2]), struct.pack('<II', 2**31, 2**31))\n"
                "import time\ntime.sleep(600)\n",
    }[case]
    sd = _submission(tmp_path, extra)
    limits = SandboxLimits(**{**LIMITS.__dict__, "cpu_seconds": 10, "start_seconds": 120}) if case == "cpu" else LIMITS
    with pytest.raises(HarnessError) as e:
        with SandboxedModel(tmp_path, "model.py:TinyLM", sd, kwargs=KWARGS, limits=limits):
            pass
    expected = {"flood": "printed more than 1 MB", "pipe": "sent a malformed reply", "cpu": "out of CPU time",
                "readonly": "Read-only file system: 'weights_cache.bin' (blocked by the sandbox: model code may read "
                            "only its own submission"}[case]
    assert e.value.code == "model-code-failed" and expected in e.value.message, e.value.message


@needs_boundary
@pytest.mark.parametrize("case", ["shape", "nan"])
def test_wrong_shaped_or_nan_logits_are_the_codes_failure(tmp_path, case):
    forward = {"shape": "        return super().forward(idx)[:, :-1]\n",
               "nan": "        return super().forward(idx) * float('nan')\n"}[case]
    sd = _submission(tmp_path, "class Bad(TinyLM):\n    def forward(self, idx):\n" + forward)
    with pytest.raises(HarnessError) as e:
        with SandboxedModel(tmp_path, "model.py:Bad", sd, kwargs=KWARGS, limits=LIMITS) as sm:
            sm.logits(torch.zeros(2, 4, dtype=torch.long))
    assert e.value.code == "model-code-failed"
    assert {"shape": "shape", "nan": "NaN"}[case] in e.value.message, e.value.message


def test_without_a_boundary_custom_code_is_refused_unless_allowed(tmp_path, monkeypatch):
    """A machine without bubblewrap: one clear sentence, nothing run; with the grader's opt-in, it runs."""
    import harness.sandbox.jail as jail

    monkeypatch.setattr(jail, "_BOUNDARY", jail.Boundary("none", "bubblewrap (bwrap) is not installed"))
    sd = _submission(tmp_path, "open('/tmp/ran-' + __name__, 'w')\n")
    with pytest.raises(HarnessError) as e:
        SandboxedModel(tmp_path, "model.py:TinyLM", sd, kwargs=KWARGS)
    assert e.value.code == "sandbox-unavailable"
    assert "bubblewrap (bwrap) is not installed" in e.value.message and "--allow-unsandboxed-code" in e.value.message


@pytest.mark.slow
def test_the_hostile_case_holds_for_an_unprivileged_grader_too(tmp_path):
    """As root: the first hostile test again, the grader itself an ordinary uid (bubblewrap then makes a user
    namespace instead of switching uid). Needs a Python that uid can run."""
    if os.geteuid() != 0:
        pytest.skip("already an ordinary user")
    setpriv = shutil.which("setpriv")
    probe = [setpriv or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
             "import subprocess, sys; "
             "sys.exit(subprocess.run([sys.executable, '-c', 'import torch, harness']).returncode)"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if not setpriv or subprocess.run(probe, capture_output=True, env=env).returncode != 0:
        pytest.skip("uid 65534 cannot run this Python (it lives under a private home, as pyenv's in /root)")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="harness-unprivileged-"))  # pytest's own tmp is root's alone
    try:
        os.chmod(base, 0o777)
        shutil.copy(__file__, base / "test_jail.py")
        proc = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                               "pytest", "-q", "-x", "-p", "no:cacheprovider", "--rootdir", str(base),
                               str(base / "test_jail.py"), "-k", "sees_nothing or refused",
                               "--basetemp", str(base / "t")],
                              capture_output=True, text=True, env={**env, "HOME": str(base)}, cwd=base, timeout=600)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


# --- a class with a hostile neighbour --------------------------------------------------------------

TEXT = ("A tiny course: the grader measures every student's model on the same characters, and a hostile "
        "neighbour must change nobody's grade but its own. 0123456789 (brackets) - plus + equal = !\n") * 6
VOCAB = sorted(set(TEXT))
CONTEXT = 32

# graded normally (its attempts fail quietly), while it tries to poison the cache, rewrite results.json and
# the neighbours' files, and leaves a daemon behind
TAMPER = '''
import glob, os, signal
OUT, CLASS, DAEMON = json.loads(PATHS)
for path in glob.glob(OUT + "/.cache/*.json") + [OUT + "/results.json", OUT + "/grades.csv",
                                                  OUT + "/.cache/bob.poison.json"] + glob.glob(CLASS + "/*/*"):
    try:
        with open(path, "w") as f:
            f.write('{"status": "graded", "score": {"total": 0}}')
    except OSError:
        pass
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.execv("/usr/bin/sleep", ["sleep", DAEMON])
    os._exit(0)
os.wait()
'''


def _tiny_course(root: Path) -> Path:
    from harness.course.config import default_course_text

    (root / "data.txt").write_text(TEXT, encoding="utf-8")
    (root / "vocab.txt").write_text("".join(VOCAB), encoding="utf-8")
    text = default_course_text()
    for old, new in (('source = "wiki-vital"', f'source = "{root / "data.txt"}"'),
                     ('tokenizer = "gpt2"', f'tokenizer = "char:{root / "vocab.txt"}"'),
                     ("context = 64 ", f"context = {CONTEXT} "), ("d_model = [64, 256]", "d_model = [16, 256]")):
        assert old in text, old
        text = text.replace(old, new, 1)
    (root / "course.toml").write_text(text)
    return root / "course.toml"


def _neighbour(folder: Path, name: str, seed: int) -> None:
    from harness.models.gpt import GPT, GPTConfig
    from harness.models.io import save_canonical

    torch.manual_seed(seed)
    save_canonical(GPT(GPTConfig(vocab_size=len(VOCAB), context=CONTEXT, d_model=32, n_layers=2, n_heads=4)), folder)
    (folder / "submission.toml").write_text(f'[submission]\nstudent = "{name}"\n\n[claims]\nval_loss = 3.9\n')


def _hostile(folder: Path, out: Path, klass: Path, daemon: str) -> None:
    kwargs = {"vocab_size": len(VOCAB), "d": 16, "block_size": CONTEXT}
    folder.mkdir(parents=True)
    paths = json.dumps(json.dumps([str(out), str(klass), daemon]))
    (folder / "model.py").write_text(TINY + f"import json\nPATHS = {paths}\n" + TAMPER)
    ns: dict = {}
    exec(TINY, ns)
    torch.manual_seed(3)
    torch.save(ns["TinyLM"](**kwargs).state_dict(), folder / "weights.pt")
    (folder / "submission.toml").write_text('[submission]\nstudent = "Mallory"\nfamily = "gpt"\ncheckpoint = '
                                            '"weights.pt"\n\n[model]\ncode = "model.py:TinyLM"\n\n[model.kwargs]\n'
                                            + "".join(f"{k} = {v}\n" for k, v in kwargs.items()))


@needs_boundary
@pytest.mark.slow  # two tiny classes graded end to end
def test_a_hostile_neighbour_changes_no_other_grade(tmp_path):
    from harness.grading.batch import GradeOptions, grade

    course = _tiny_course(tmp_path)
    daemon = f"3600.{uuid.uuid4().int % 10**6:06d}3"
    graded = {}
    for run, hostile in (("clean", False), ("hostile", True)):
        klass, out = tmp_path / run / "class", tmp_path / run / "OUT"
        _neighbour(klass / "alice", "Alice", 1)
        _neighbour(klass / "bob", "Bob", 2)
        if hostile:
            _hostile(klass / "mallory", out, klass, daemon)
        before = {p: p.read_bytes() for p in sorted(klass.rglob("*")) if p.is_file()}
        outcome = grade(klass, out, course, GradeOptions(workers=1, timeout_s=300, reports=False))
        assert {p: p.read_bytes() for p in sorted(klass.rglob("*")) if p.is_file()} == before  # the class untouched
        assert not list((out / ".cache").glob("*poison*"))
        graded[run] = (outcome.results.to_json(), (out / "grades.csv").read_text().splitlines(), out)

    results, rows, out = graded["hostile"]
    mallory = next(s for s in results["submissions"] if s["id"] == "mallory")
    assert mallory["status"] == "graded", mallory["error"]  # its attempts failed quietly: graded like anyone
    assert mallory["model"]["sandbox"].startswith("bubblewrap")
    assert results["custom_code_sandbox"]["allow_unsandboxed_code"] is False
    assert _alive(daemon) == []
    clean = {s["id"]: s for s in graded["clean"][0]["submissions"]}
    for s in results["submissions"]:
        if s["id"] != "mallory":
            assert json.dumps(s, sort_keys=True) == json.dumps(clean[s["id"]], sort_keys=True)
    assert [r for r in rows if not r.startswith("mallory,")] == graded["clean"][1]
    # the cache the next run reads is what the grader wrote: a rerun gives the same files
    again = grade(tmp_path / "hostile" / "class", out, course, GradeOptions(workers=1, timeout_s=300, reports=False))
    assert sorted(again.cached) == ["alice", "bob", "mallory"] and again.results.to_json() == results


@pytest.mark.slow  # a tiny class graded twice
def test_grading_without_a_boundary_refuses_the_code_alone_and_records_the_opt_in(tmp_path, monkeypatch):
    """No boundary (HARNESS_SANDBOX=off plays a machine without bubblewrap): the custom-code student gets the
    one-line `sandbox-unavailable` finding, not cached; the neighbour is graded. With the grader's opt-in the
    code runs, and results.json says it ran unsandboxed."""
    from harness.grading.batch import GradeOptions, grade

    course = _tiny_course(tmp_path)
    klass, out = tmp_path / "class", tmp_path / "OUT"
    _neighbour(klass / "alice", "Alice", 1)
    _hostile(klass / "mallory", tmp_path / "elsewhere", tmp_path / "nowhere", "1")  # its tampering finds nothing
    monkeypatch.setenv("HARNESS_SANDBOX", "off")
    import harness.sandbox.jail as jail

    monkeypatch.setattr(jail, "_BOUNDARY", None)
    refused = grade(klass, out, course, GradeOptions(workers=1, timeout_s=300, reports=False)).results.to_json()
    subs = {s["id"]: s for s in refused["submissions"]}
    assert subs["alice"]["status"] == "graded"
    assert subs["mallory"]["error"]["code"] == "sandbox-unavailable"
    message = subs["mallory"]["error"]["message"]
    assert "\n" not in message and "--allow-unsandboxed-code" in message
    assert [f["code"] for f in subs["mallory"]["findings"]][0] == "sandbox-unavailable"
    assert not list((out / ".cache").glob("mallory.*"))  # graded again once the machine has a sandbox
    assert refused["custom_code_sandbox"] == {"boundary": "none (turned off by HARNESS_SANDBOX=off)",
                                              "allow_unsandboxed_code": False, "unsandboxed": []}

    allowed = grade(klass, out, course, GradeOptions(workers=1, timeout_s=300, reports=False,
                                                     allow_unsandboxed_code=True)).results.to_json()
    mallory = next(s for s in allowed["submissions"] if s["id"] == "mallory")
    assert mallory["status"] == "graded" and mallory["model"]["sandbox"].startswith("none: run unsandboxed")
    assert allowed["custom_code_sandbox"]["allow_unsandboxed_code"] is True
    assert allowed["custom_code_sandbox"]["unsandboxed"] == ["mallory"]


@needs_boundary
def test_honest_code_may_use_all_its_compute_threads(tmp_path, monkeypatch):
    """The process limit counts threads: a grader with many cores (OMP_NUM_THREADS=24 here) must not make
    torch's thread pools fail inside the sandbox (libgomp: "Thread creation failed", a crash)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "24")
    sd = _submission(tmp_path, "class Wide(TinyLM):\n    def forward(self, idx):\n"
                               "        y = torch.randn(1024, 1024)\n"
                               "        return super().forward(idx) + (y @ y).mean() * 0\n")
    with SandboxedModel(tmp_path, "model.py:Wide", sd, kwargs=KWARGS, limits=LIMITS) as sm:
        assert sm.logits(torch.zeros(2, 4, dtype=torch.long)).shape == (2, 4, 50)


# The memory file replies leave their logits in is the child's third argument: it tries to shrink it under
# the parent's map (a read past its end would kill the grader with SIGBUS) and to grow it, and goes on only
# where both were refused; with a batch of 700 windows (more than its 1 MB), it forges a reply that claims
# the file holds them.
SEALED = '''
class Sealed(TinyLM):
    def forward(self, idx):
        import os, struct, sys, json, time
        fd = int(sys.argv[3])
        for size in (0, 2 << 20):  # (2 MB: within its file-size limit)
            try:
                os.ftruncate(fd, size)
                raise RuntimeError(f"resized the memory file to {size}")
            except PermissionError:
                pass
        if idx.shape[0] == 700:
            head = json.dumps({"ok": True, "shape": [700, 8, 50], "shared": True}).encode()
            os.write(int(sys.argv[2]), struct.pack("<II", len(head), 0) + head)
            time.sleep(60)
        return super().forward(idx)
'''


@needs_boundary
def test_logits_cross_through_a_sealed_memory_file_or_the_pipe_alike(tmp_path):
    """The same logits through the memory file, through the pipe (a reply larger than the file, or no file),
    and from the class run here; each call's logits are the caller's own (the causality check holds on to
    one call's while it makes the next); the child can neither resize the file nor claim it holds more."""
    sd = _submission(tmp_path, SEALED)
    ns: dict = {}
    exec(TINY, ns)
    here = ns["TinyLM"](**KWARGS)
    here.load_state_dict(sd)
    small, big = torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (300, 8))
    with torch.no_grad():
        want_small, want_big = here(small), here(big)
    one_mb = SandboxLimits(**{**LIMITS.__dict__, "shared_mb": 1})
    no_file = SandboxLimits(**{**LIMITS.__dict__, "shared_mb": 0})
    with SandboxedModel(tmp_path, "model.py:Sealed", sd, kwargs=KWARGS, limits=one_mb) as a, \
            SandboxedModel(tmp_path, "model.py:TinyLM", sd, kwargs=KWARGS, limits=no_file) as b:
        first = a.logits(small)  # 3 KB: the file
        kept = first.clone()
        second = a.logits(big)  # 480 KB: the file
        assert torch.equal(first, kept)  # not overwritten by the next reply
        torch.testing.assert_close(first, want_small, rtol=0, atol=1e-6)
        torch.testing.assert_close(second, want_big, rtol=0, atol=1e-6)
        assert torch.equal(b.logits(small), first) and torch.equal(b.logits(big), second)  # the pipe's
        assert torch.equal(a.last_logits(big), second[:, -1])
        with pytest.raises(HarnessError) as e:
            a.logits(torch.zeros(700, 8, dtype=torch.long))  # 1.1 MB: a forged claim
    assert e.value.code == "model-code-failed" and "malformed reply" in e.value.message, e.value.message
