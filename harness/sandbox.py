"""Students' own model code, run only in a sandboxed child process.

The child gets a read-only copy of the submission in its own temporary folder, a scrubbed environment,
limits on memory, CPU time and open files, and no network: a fresh network namespace where the OS
allows one (`unshare --net`), and in any case a `socket` module that refuses to create sockets, set up
before any student code is imported. The parent reads the weights itself (safely, see checkpoint.py)
and sends them as safetensors bytes; then it sends token windows and gets logits back as raw float32
bytes. Frames travel on two dedicated pipes, so whatever the student's code prints cannot corrupt them.

`SandboxedModel` answers the evaluator like any other model (`n_outputs`, `max_positions`, `logits`).
What the child does with the student's class (import it, construct it the way its signature asks, call
its forward the way it answers, describe its architecture) is `student_class.py`; grading's use of it,
with the layout fallback, is `custom_code.py`.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError
from harness.processes import die_with_parent

_HEADER = struct.Struct("<II")  # JSON length, payload length


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int = 6144  # address space: torch alone maps ~1-2 GB of it
    cpu_seconds: int = 600
    start_seconds: float = 120.0  # import, construct, load weights
    call_seconds: float = 120.0  # one batch of logits
    open_files: int = 256


def _network_namespace_works() -> bool:
    unshare = shutil.which("unshare")
    if not unshare:
        return False
    try:
        return subprocess.run([unshare, "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_NETNS: bool | None = None


def _write_frame(fd: int, header: dict[str, Any], payload: bytes = b"") -> None:
    data = json.dumps(header).encode()
    os.write(fd, _HEADER.pack(len(data), len(payload)))
    view = memoryview(data + payload)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None) -> tuple[dict[str, Any], bytes]:
    n_json, n_payload = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    header = json.loads(_read_exact(fd, n_json, deadline))
    return header, _read_exact(fd, n_payload, deadline) if n_payload else b""


class SandboxedModel:
    """A student's model class, constructed and run in a sandboxed child; a `LogitsModel` for the evaluator."""

    def __init__(self, submission_root: Path, code: str, state_dict: dict[str, torch.Tensor], *,
                 kwargs: dict[str, Any] | None = None, stored: dict[str, Any] | None = None,
                 model_table: dict[str, Any] | None = None, max_positions: int | None = None,
                 limits: SandboxLimits = SandboxLimits()):
        """`kwargs`: [model.kwargs]; `model_table`: the rest of [model]; `stored`: the checkpoint's config.
        After construction: `n_outputs`, `built` (how the class was constructed, from which values),
        `architecture` ({field: {value, source}}), and `notes` (grows as calls find out how forward works)."""
        global _NETNS
        from harness.student_class import resolve_code

        try:
            resolve_code(submission_root, code)
        except ValueError as e:
            raise HarnessError("model-code-failed", str(e)) from None
        self.limits = limits
        self.max_positions = max_positions
        self._n_outputs: int | None = None
        self.notes: list[str] = []
        self._tmp = Path(tempfile.mkdtemp(prefix="harness-sandbox-"))
        view = self._tmp / "submission"
        shutil.copytree(submission_root, view, symlinks=False,
                        ignore=shutil.ignore_patterns("*.pt", "*.pth", "*.bin", "*.safetensors", "*.zip"))
        for p in sorted(view.rglob("*"), reverse=True):
            p.chmod(0o555 if p.is_dir() else 0o444)
        view.chmod(0o555)
        home = self._tmp / "home"
        home.mkdir()

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        if _NETNS is None:
            _NETNS = _network_namespace_works()
        cmd = [sys.executable, "-s", "-m", "harness._sandbox_child", str(to_child_r), str(from_child_w)]
        setpriv = shutil.which("setpriv")
        if os.geteuid() == 0 and setpriv:
            # Root ignores file modes through its capabilities: drop them all (uid 0 without CAP_DAC_OVERRIDE
            # obeys modes), so the read-only view is read-only and nothing can be regained.
            cmd = [setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs", *cmd]
        if _NETNS:
            cmd = [shutil.which("unshare") or "unshare", "--net", *cmd]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "PYTHONPATH": str(Path(__file__).resolve().parents[1]),  # the same harness as the parent's
               "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        lim = limits

        def preexec() -> None:
            # Same process group as the grading worker, so killing the worker's group ends this too; and
            # killed with its parent, so a batch killed with -9 leaves nothing of a student's running.
            die_with_parent()
            mem = lim.memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_seconds, lim.cpu_seconds + 5))
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim.open_files, lim.open_files))
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 2**20, 64 * 2**20))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        self._stderr = open(self._tmp / "stderr.txt", "w+b")
        self._proc = subprocess.Popen(cmd, cwd=view, env=env, stdin=subprocess.DEVNULL, stdout=self._stderr,
                                      stderr=self._stderr, pass_fds=(to_child_r, from_child_w), preexec_fn=preexec)
        os.close(to_child_r)
        os.close(from_child_w)
        self._w, self._r = to_child_w, from_child_r

        from safetensors.torch import save as st_save

        seen: set[int] = set()
        tensors = {}
        for k, v in state_dict.items():  # safetensors refuses shared tensors (a tied head): one copy each
            tensors[k] = v.contiguous().clone() if v.data_ptr() in seen else v.contiguous()
            seen.add(v.data_ptr())
        plain = {k: v for k, v in (model_table or {}).items() if k not in ("code", "kwargs")}
        reply, _ = self._call({"op": "load", "code": code, "kwargs": kwargs or {}, "model": plain,
                               "stored": stored or {}}, st_save(tensors), limits.start_seconds, "loading the model")
        self.notes += list(reply.get("notes") or ())
        reply, _ = self._call({"op": "describe"}, b"", limits.call_seconds, "computing logits")
        self._n_outputs = int(reply["n_outputs"])
        self.built: dict[str, Any] = reply.get("built") or {}
        self.architecture: dict[str, dict[str, Any]] = reply.get("architecture") or {}
        self.params: int | None = reply.get("params")
        self.notes += list(reply.get("notes") or ())
        if self.max_positions is None:
            self.max_positions = (self.architecture.get("context") or {}).get("value")

    # -- the LogitsModel seam ---------------------------------------------------------------------

    @property
    def n_outputs(self) -> int:
        if self._n_outputs is None:
            self._n_outputs = int(self.logits(torch.zeros(1, 1, dtype=torch.long)).shape[-1])
        return self._n_outputs

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        ids = np.ascontiguousarray(input_ids.cpu().numpy().astype(np.int64))
        header, payload = self._call({"op": "logits", "shape": list(ids.shape)}, ids.tobytes(),
                                     self.limits.call_seconds, "computing logits")
        self.notes += list(header.get("notes") or ())
        shape = tuple(header["shape"])
        if len(shape) != 3 or shape[:2] != ids.shape or len(payload) != 4 * int(np.prod(shape)):
            raise HarnessError("model-code-failed", f"the model returned logits of shape {shape} for input "
                               f"{ids.shape}; it must return [B, T, V]")
        return torch.from_numpy(np.frombuffer(payload, dtype=np.float32).reshape(shape).copy())

    # -- plumbing ---------------------------------------------------------------------------------

    def _call(self, header: dict[str, Any], payload: bytes, seconds: float, doing: str) -> tuple[dict, bytes]:
        try:
            _write_frame(self._w, header, payload)
            reply, data = _read_frame(self._r, time.monotonic() + seconds)
        except TimeoutError:
            self.close()
            raise HarnessError("model-code-failed", f"the model code took longer than {seconds:g} s {doing}") from None
        except (EOFError, BrokenPipeError, OSError):
            self.close()
            raise HarnessError("model-code-failed", f"the model code died while {doing}: {self._death()}") from None
        if not reply.get("ok"):
            self.close()
            error = str(reply.get("error"))
            if "MemoryError:" in error:
                error = f"it ran out of memory (the sandbox allows {self.limits.memory_mb} MB)"
            raise HarnessError("model-code-failed", f"the model code failed while {doing}: {error}")
        return reply, data

    def _death(self) -> str:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        if code < 0:
            sig = signal.Signals(-code).name
            return {"SIGKILL": "killed (out of memory or CPU time)", "SIGXCPU": "out of CPU time",
                    "SIGSEGV": "it crashed (segmentation fault)"}.get(sig, f"killed by {sig}")
        self._stderr.flush()
        self._stderr.seek(0)
        tail = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        last = tail[-1] if tail else ""
        if "MemoryError" in last or "Cannot allocate memory" in last:
            return f"out of memory (limit {self.limits.memory_mb} MB)"
        return f"exit code {code}" + (f" ({last[:200]})" if last else "")

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for fd in ("_w", "_r"):
            if getattr(self, fd, None) is not None:
                try:
                    os.close(getattr(self, fd))
                except OSError:
                    pass
                setattr(self, fd, None)
        if getattr(self, "_tmp", None) is not None and self._tmp.exists():
            for p in self._tmp.rglob("*"):
                try:
                    p.chmod(0o755 if p.is_dir() else 0o644)
                except OSError:
                    pass
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> SandboxedModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
