"""Students' own model code, run only in a sandboxed child process.

The child runs inside the boundary of `jail.py` (bubblewrap: it sees a read-only copy of its own
submission, the read-only Python environment, a private /tmp and its pipes; an unprivileged uid; limits on
memory, CPU time, processes, open files, file size and output; everything it started ends with it), with a
scrubbed environment and a `socket` module that refuses sockets on top of having no network. Where the
boundary cannot be made, custom code is refused (`sandbox-unavailable`) unless the grader opted in
(`allow_unsandboxed`, the CLI's `--allow-unsandboxed-code`). The parent reads the weights itself (safely, see
harness.checkpoint) and sends them as safetensors bytes; then it sends token windows and gets logits back as raw float32
bytes, or, where forward's logits are exactly one `nn.Linear`'s output, that layer's input and the layer
(`hidden_and_head`: the grader runs the layer itself, fused, and no row of logits crosses). Frames travel
on two dedicated pipes, so whatever the student's code prints cannot corrupt them; a reply's values are
left in a sealed memory file shared with the child (`SharedLogits`; the pipe where there is none, or for a
reply larger than it) and copied out once. Every reply is bounded and checked (size, shape, finite
values) before it is used.

`SandboxedModel` answers the evaluator like any other model (`n_outputs`, `max_positions`, `logits`).
What the child does with the student's class (import it, construct it the way its signature asks, call
its forward the way it answers, describe its architecture) is `student_class.py`; grading's use of it,
with the layout fallback, is `custom_code.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
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
from harness.metrics.fused import OutputHead
from harness.metrics.nll import CPU_LOGITS_BUDGET
from harness.metrics.protocol import nan_or_posinf
from harness.sandbox.jail import HARNESS_MOUNT, Jail, JailLimits, boundary, child_python_path

_HEADER = struct.Struct("<II")  # JSON length, payload length
# once the child leaves the head's matmul out of the student's forward, a request of hidden states holds up to
# this many times the positions a request of logits would (at least one window): the child runs each window
# alone, its body without the head (for the course's models a fraction of the head's work a position), so the
# request costs round trips less, not more memory, and takes about as long as one of logits did
STAND_IN_WINDOWS = 16


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int = 6144  # address space: torch alone maps ~1-2 GB of it
    cpu_seconds: int = 600
    start_seconds: float = 120.0  # import, construct, load weights
    call_seconds: float = 120.0  # one batch of logits
    open_files: int = 256
    processes: int = 64  # processes and threads it may start besides its OMP_NUM_THREADS compute threads
    file_mb: int = 64  # the largest file it may write (in its /tmp)
    tmp_mb: int = 256  # all of its /tmp together
    output_mb: int = 16  # what it may print; past it, it is ended
    shared_mb: int = 64  # the memory file its replies' values are left in (SharedLogits; 0: none, the pipe):
    # a window of 300 positions of GPT-2's vocabulary; a larger reply crosses the pipe. Mapped by both sides,
    # touched only as used; added to the child's memory_mb (the map is the harness's, not the code's)

    def jail(self) -> JailLimits:
        return JailLimits(memory_mb=self.memory_mb, cpu_seconds=self.cpu_seconds, open_files=self.open_files,
                          processes=self.processes, file_mb=self.file_mb, tmp_mb=self.tmp_mb,
                          output_mb=self.output_mb)


MAX_HEADER = 1 << 20  # a reply's JSON; anything longer is not ours
MAX_VOCAB = 1 << 21  # outputs per position a logits reply may claim
MAX_WIDTH = 1 << 16  # the width of hidden states a reply may claim


def _ids(input_ids: torch.Tensor) -> np.ndarray:
    """Token windows as a request sends them: int64, contiguous."""
    return np.ascontiguousarray(input_ids.cpu().numpy().astype(np.int64))


def _dims(shape: Any, n: int) -> bool:
    """Whether a reply's `shape` is `n` positive ints."""
    return isinstance(shape, list) and len(shape) == n and all(type(k) is int and k > 0 for k in shape)


class SharedLogits:
    """A memory file the child leaves its replies' float32 values in (logits; on the fused path, hidden states
    and the output layer), mapped by both sides: the child copies a batch of logits into it once and the
    parent copies it out once, where a pipe copies it into the kernel and out again in 1 MiB pieces (a
    window of a 50,257-word model: 13 MB, 2.5x faster than through the pipe, measured alone).

    Sealed at its size (F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_SEAL) before the child gets it: the child can
    write into it, but cannot truncate it under the parent's map (reading past a file's end is a SIGBUS) or
    grow it. The parent reads only what the reply's header claims, after the reply, and copies it before
    checking it: what the child writes afterwards cannot change logits already taken.
    """

    def __init__(self, fd: int, *, writable: bool):
        self.fd = fd
        self.capacity = os.fstat(fd).st_size
        self._map = mmap.mmap(fd, self.capacity, mmap.MAP_SHARED,
                              mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))

    @classmethod
    def create(cls, nbytes: int) -> SharedLogits | None:
        """The parent's side, sealed; None where the system has no sealed memory files (not Linux), or for
        `nbytes` 0: the pipe."""
        if nbytes <= 0:
            return None
        try:
            import fcntl

            fd = os.memfd_create("harness-logits", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except (ImportError, AttributeError, OSError):
            return None
        try:
            os.ftruncate(fd, nbytes)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            return cls(fd, writable=False)
        except (AttributeError, OSError, ValueError):
            os.close(fd)
            return None

    def put(self, logits: torch.Tensor) -> bool:
        """The child's side: `logits` (float32) copied in; False where they do not fit (the pipe takes them)."""
        n = logits.numel()
        if n == 0 or 4 * n > self.capacity:
            return False
        torch.frombuffer(self._map, dtype=torch.float32, count=n).view(logits.shape).copy_(logits)
        return True

    def take(self, shape: list[int]) -> np.ndarray:
        """The parent's side: the reply's `shape` of float32 logits, copied out (the caller checked the size)."""
        return np.frombuffer(self._map, dtype=np.float32, count=math.prod(shape)).reshape(shape).copy()

    def close(self) -> None:
        try:
            self._map.close()
        except (BufferError, ValueError):  # a view still alive: the map goes with it
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


def _write_frame(fd: int, header: dict[str, Any], payload: Any = b"", deadline: float | None = None) -> None:
    """One frame; `payload` any contiguous buffer (bytes, a numpy array), sent as it lies in memory, never
    copied into the frame. With a `deadline` (the parent writing to a child that may stop reading: its fd is
    non-blocking), `TimeoutError` when the child has not taken it all by then."""
    data = json.dumps(header).encode()
    body = memoryview(payload).cast("B")
    for view in (memoryview(_HEADER.pack(len(data), body.nbytes) + data), body):
        while view:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [fd], [], left)[1]:
                    raise TimeoutError
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                continue
            view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytearray:
    """`n` bytes, read straight into the buffer returned (no chunks joined afterwards)."""
    out = bytearray(n)
    view, got = memoryview(out), 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        k = os.readv(fd, [view[got:]])
        if not k:
            raise EOFError
        got += k
    return out


def _widen(*fds: int) -> None:
    """The pipes' buffers at the system's most (Linux's default limit: 1 MiB, 16 times the default), so a
    batch of logits crosses in a dozen writes, not hundreds of wake-ups of the other side."""
    try:
        import fcntl

        most = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        for fd in fds:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(most, 1 << 20))
    except (OSError, ValueError, AttributeError):  # not Linux, or no say: the default size works, slower
        pass


def _read_frame(fd: int, deadline: float | None, max_payload: int | None = None) -> tuple[dict[str, Any], bytes]:
    """One frame; with `max_payload` (the parent reading the child), a frame larger than it, or a header that
    is not a small JSON object, is refused before it is read: `ValueError`."""
    n_json, n_payload = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if max_payload is not None and (n_json > MAX_HEADER or n_payload > max_payload):
        raise ValueError(f"a reply of {n_json + n_payload:,} bytes")
    header = json.loads(_read_exact(fd, n_json, deadline))
    if max_payload is not None and not isinstance(header, dict):
        raise ValueError("a reply that is not a JSON object")
    return header, _read_exact(fd, n_payload, deadline) if n_payload else b""


def _not_copied(root: Path):
    """What the sandbox's copy of a submission leaves out: weights (the harness sends them itself), and links
    that lead out of the submission (a link to a neighbour's file would otherwise be copied as a file)."""
    weights = shutil.ignore_patterns("*.pt", "*.pth", "*.bin", "*.safetensors", "*.zip")
    top = os.path.realpath(root)

    def ignore(folder: str, names: list[str]) -> set[str]:
        out = set(weights(folder, names))
        for n in names:
            p = os.path.join(folder, n)
            # kept: a relative link that stays inside (it resolves inside the copy); not an absolute one
            if os.path.islink(p) and (os.path.isabs(os.readlink(p))
                                      or not (os.path.realpath(p) + "/").startswith(top + "/")):
                out.add(n)
        return out

    return ignore


class SandboxedModel:
    """A student's model class, constructed and run in a sandboxed child; a `LogitsModel` for the evaluator."""

    def __init__(self, submission_root: Path, code: str, state_dict: dict[str, torch.Tensor], *,
                 kwargs: dict[str, Any] | None = None, stored: dict[str, Any] | None = None,
                 model_table: dict[str, Any] | None = None, max_positions: int | None = None,
                 limits: SandboxLimits = SandboxLimits(), allow_unsandboxed: bool = False):
        """`kwargs`: [model.kwargs]; `model_table`: the rest of [model]; `stored`: the checkpoint's config.
        After construction: `n_outputs`, `built` (how the class was constructed, from which values),
        `architecture` ({field: {value, source}}), and `notes` (grows as calls find out how forward works)."""
        from harness.sandbox.student_class import resolve_code

        try:
            resolve_code(submission_root, code)
        except ValueError as e:
            raise HarnessError("model-code-failed", str(e)) from None
        self.limits = limits
        self.max_positions = max_positions
        self._n_outputs: int | None = None
        self.notes: list[str] = []
        self._jail: Jail | None = None
        self._w = self._r = None
        self._shared: SharedLogits | None = None
        self._head: OutputHead | bool | None = None  # hidden_and_head's: None not asked yet, False declined
        self._head_name: str | None = None
        self._head_skipped = False  # the child leaves the head's matmul out of forward: a request may be larger
        self._tmp = Path(tempfile.mkdtemp(prefix="harness-sandbox-"))
        view = self._tmp / "submission"
        shutil.copytree(submission_root, view, symlinks=True, ignore=_not_copied(submission_root))
        for p in sorted(view.rglob("*"), reverse=True):
            if not p.is_symlink():  # chmod follows links: only the copy's own files
                p.chmod(0o555 if p.is_dir() else 0o444)
        view.chmod(0o555)
        home = self._tmp / "home"
        home.mkdir()

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        _widen(to_child_w, from_child_r)
        self.boundary = boundary()
        sandboxed = self.boundary.available
        if not sandboxed and not allow_unsandboxed:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            self.close()
            raise HarnessError("sandbox-unavailable", f"the model code was not run: this machine cannot isolate it "
                               f"({self.boundary.detail}); the grader can install bubblewrap or grade with "
                               "--allow-unsandboxed-code")
        self.sandboxed = sandboxed
        self._shared = SharedLogits.create(limits.shared_mb << 20)
        shared_fds = (self._shared.fd,) if self._shared is not None else ()
        cmd = [sys.executable, "-s", "-m", "harness.sandbox.child", str(to_child_r), str(from_child_w),
               *map(str, shared_fds)]
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp" if sandboxed else str(home),
               "TMPDIR": "/tmp" if sandboxed else str(home), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               # the same harness as the parent's (in the sandbox, its package alone), and the same packages
               "PYTHONPATH": os.pathsep.join([HARNESS_MOUNT if sandboxed else str(Path(__file__).resolve().parents[2]),
                                              *child_python_path()]),
               "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self._finite_weights = all(bool(torch.isfinite(v).all()) for v in state_dict.values() if v.is_floating_point())
        # the process limit counts threads: torch's compute threads (two pools of OMP_NUM_THREADS: 160 tasks
        # at 80, seen) come on top of what the code may start
        threads = int(env["OMP_NUM_THREADS"]) if env["OMP_NUM_THREADS"].isdigit() else 1
        # and the memory file's map is the harness's: on top of the code's address space, not out of it
        jail_limits = dataclasses.replace(limits.jail(), processes=limits.processes + 2 * max(1, threads),
                                          memory_mb=limits.memory_mb + (limits.shared_mb if self._shared else 0))
        try:
            self._jail = Jail(cmd, view=view, env=env, pass_fds=(to_child_r, from_child_w, *shared_fds),
                              limits=jail_limits, sandboxed=sandboxed)
        except BaseException:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            self.close()
            raise
        os.close(to_child_r)
        os.close(from_child_w)
        self._w, self._r = to_child_w, from_child_r
        os.set_blocking(self._w, False)  # a child that stops reading cannot stall the grader's writes

        from safetensors.torch import save as st_save

        seen: set[int] = set()
        tensors = {}
        for k, v in state_dict.items():  # safetensors refuses shared tensors (a tied head): one copy each
            tensors[k] = v.contiguous().clone() if v.data_ptr() in seen else v.contiguous()
            seen.add(v.data_ptr())
        plain = {k: v for k, v in (model_table or {}).items() if k not in ("code", "kwargs")}
        reply, _ = self._call({"op": "load", "code": code, "kwargs": kwargs or {}, "model": plain,
                               "stored": stored or {}}, st_save(tensors), limits.start_seconds, "loading the model")
        self._noted(reply)
        reply, _ = self._call({"op": "describe"}, b"", limits.call_seconds, "computing logits")
        n_outputs, built, arch, params = (reply.get("n_outputs"), reply.get("built") or {},
                                          reply.get("architecture") or {}, reply.get("params"))
        if not (type(n_outputs) is int and 0 < n_outputs <= MAX_VOCAB and isinstance(built, dict)
                and isinstance(arch, dict) and all(isinstance(v, dict) for v in arch.values())
                and (params is None or type(params) is int)):
            self.close()
            raise HarnessError("model-code-failed", "the model code sent a malformed description of itself")
        self._n_outputs = n_outputs
        self.built: dict[str, Any] = built
        self.architecture: dict[str, dict[str, Any]] = arch
        self.params: int | None = params
        self._noted(reply)
        if self.max_positions is None:
            self.max_positions = (self.architecture.get("context") or {}).get("value")

    # -- the LogitsModel seam ---------------------------------------------------------------------

    @property
    def n_outputs(self) -> int:
        if self._n_outputs is None:
            self._n_outputs = int(self.logits(torch.zeros(1, 1, dtype=torch.long)).shape[-1])
        return self._n_outputs

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._logits(input_ids, last=False)

    def last_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, V]: each window's last position only — what generation needs, without sending the rest back."""
        return self._logits(input_ids, last=True)[:, 0]

    def _logits(self, input_ids: torch.Tensor, *, last: bool) -> torch.Tensor:
        ids = _ids(input_ids)
        vocab = self._n_outputs or MAX_VOCAB
        rows = (ids.shape[0], 1) if last else ids.shape
        header, payload = self._call({"op": "logits", "shape": list(ids.shape), "last": last}, ids.tobytes(),
                                     self.limits.call_seconds, "computing logits",
                                     max_payload=4 * int(np.prod(rows)) * vocab)
        self._noted(header)
        shape = header.get("shape")
        if not (_dims(shape, 3) and tuple(shape[:2]) == rows and shape[2] <= vocab):
            self.close()
            raise HarnessError("model-code-failed", f"the model returned logits of shape {shape!s:.80} for input "
                               f"{ids.shape}; it must return [B, T, V] (V: {vocab} here)"
                               if self._n_outputs else f"the model returned logits of shape {shape!s:.80} for "
                               f"input {ids.shape}; it must return [B, T, V]")
        logits = self._take(header, payload, shape, "computing logits")
        # NaN weights give NaN logits: the weights' finding; from finite weights, the code's failure
        if self._finite_weights and nan_or_posinf(logits):
            self.close()
            raise HarnessError("model-code-failed", "the model returned NaN or +inf logits from finite weights")
        return logits

    def hidden_and_head(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, OutputHead] | None:
        """The fused head's seam (`harness.metrics.fused`): the student's hidden states before its output
        layer, and that layer, where forward's logits are exactly one `nn.Linear`'s output (found and checked
        in the child: `Caller.head_input`); the grader then runs the head itself on the scored rows, and no
        row of logits crosses. None where they are not (for good, once the layer's weights are not finite),
        or where this batch's states hold a non-finite value: the logits path, with its checks."""
        if self._head is False:
            return None
        B, T = input_ids.shape
        parts, i = [], 0
        while i < B:
            # windows a request (the child runs each alone): a logits batch's while the student's forward runs
            # its head and the child checks it (within the call's time limit), STAND_IN_WINDOWS times as many
            # once the child leaves the head's matmul out (`Caller.head_input`)
            budget = CPU_LOGITS_BUDGET * (STAND_IN_WINDOWS if self._head_skipped else 1)
            got = self._hidden(input_ids[i:i + max(1, budget // (4 * T * self.n_outputs))])
            if got is None:
                return None
            parts.append(got)
            i += got.shape[0]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), self._head

    def _hidden(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        ids = _ids(input_ids)
        width = int(self._head.weight.shape[1]) if isinstance(self._head, OutputHead) else MAX_WIDTH
        header, payload = self._call({"op": "hidden", "shape": list(ids.shape)}, ids.tobytes(),
                                     self.limits.call_seconds, "computing logits", max_payload=4 * ids.size * width)
        self._noted(header)
        shape, name = header.get("shape"), header.get("head")
        if shape is None:  # the child declined, for good
            self._head = False
            return None
        if not (_dims(shape, 3) and tuple(shape[:2]) == ids.shape and shape[2] <= MAX_WIDTH
                and isinstance(name, str) and type(header.get("skipped", False)) is bool):
            raise self._malformed("computing logits")
        self._head_skipped = header.get("skipped", False)
        hidden = self._take(header, payload, shape, "computing logits")
        if self._head is None:
            self._head, self._head_name = self._output_layer(name, shape[2]), name
            if self._head is False:
                return None
        if name != self._head_name or shape[2] != self._head.weight.shape[1]:
            raise self._malformed("computing logits")  # the child keeps the layer it found first
        if not bool(torch.isfinite(hidden).all()):
            return None
        return hidden

    def _output_layer(self, name: str, width: int) -> OutputHead | bool:
        """The child's output layer `name` (weight [V, width], its bias if any), as it holds it; False where
        its values are not all finite (NaN weights are the weights' finding, on the logits path)."""
        n = self.n_outputs
        header, payload = self._call({"op": "head"}, b"", self.limits.call_seconds, "computing logits",
                                     max_payload=4 * n * (width + 1))
        shape, bias = header.get("shape"), header.get("bias")
        if shape is None:  # the child had no room to copy it: declined
            return False
        if not (header.get("head") == name and shape == [n, width] and type(bias) is bool):
            raise self._malformed("computing logits")
        values = self._take(header, payload, [n * (width + bias)], "computing logits")
        if not bool(torch.isfinite(values).all()):
            return False
        return OutputHead(values[: n * width].view(n, width), values[n * width:] if bias else None)

    # -- plumbing ---------------------------------------------------------------------------------

    def _take(self, header: dict[str, Any], payload: bytes, shape: list[int], doing: str) -> torch.Tensor:
        """The float32 values of a reply, of `shape` (checked against the request by the caller), copied out of
        the shared memory file or read from the payload: the parent's own buffer either way. A claim the file
        cannot hold, or a payload of another size, is not the child's protocol."""
        n = math.prod(shape)
        if header.get("shared") is True:
            if self._shared is None or payload or 4 * n > self._shared.capacity:
                raise self._malformed(doing)
            return torch.from_numpy(self._shared.take(shape))
        if len(payload) != 4 * n:
            raise self._malformed(doing)
        return torch.from_numpy(np.frombuffer(payload, dtype="<f4").reshape(shape))

    def _call(self, header: dict[str, Any], payload: bytes, seconds: float, doing: str,
              max_payload: int = 1 << 20) -> tuple[dict, bytes]:
        try:
            deadline = time.monotonic() + seconds
            _write_frame(self._w, header, payload, deadline)
            reply, data = _read_frame(self._r, deadline, max_payload)
        except TimeoutError:
            self.close()
            raise HarnessError("model-code-failed", f"the model code took longer than {seconds:g} s {doing}") from None
        except (EOFError, BrokenPipeError, OSError):
            why = self._death()
            self.close()
            raise HarnessError("model-code-failed", f"the model code died while {doing}: {why}") from None
        except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
            raise self._malformed(doing) from None
        if not reply.get("ok"):
            self.close()
            error = str(reply.get("error"))[:500]
            if "MemoryError:" in error:
                error = f"it ran out of memory (the sandbox allows {self.limits.memory_mb} MB)"
            raise HarnessError("model-code-failed",
                               f"the model code failed while {doing}: {error}{self._blocked(error)}")
        return reply, data

    def _noted(self, reply: dict[str, Any]) -> None:
        """The notes a reply carries (how the code was built and called): at most 20, 500 characters each."""
        notes = reply.get("notes")
        if isinstance(notes, list):
            self.notes += [str(n)[:500] for n in notes][:20]

    def _malformed(self, doing: str) -> HarnessError:
        """A reply that is not the child's protocol: the child is ended; the error to raise."""
        self.close()
        return HarnessError("model-code-failed", f"the model code sent a malformed reply while {doing} (its "
                            "answer pipe is the harness's alone)")

    def _blocked(self, error: str) -> str:
        """What the sandbox refused, said where the student's error is the sandbox's doing."""
        if not getattr(self, "sandboxed", False):
            return ""
        if any(s in error for s in ("Read-only file system", "Permission denied", "Operation not permitted",
                                    "No such file or directory: '/", "network access is disabled",
                                    "Resource temporarily unavailable", "No space left on device",
                                    "File too large")):
            return (" (blocked by the sandbox: model code may read only its own submission and the Python "
                    f"environment, write only in its private /tmp ({self.limits.tmp_mb} MB, files up to "
                    f"{self.limits.file_mb} MB), start at most {self.limits.processes} processes, and has no network)")
        return ""

    def _death(self) -> str:
        jail = self._jail
        if jail is None:
            return "it never started"
        try:
            code = jail.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        if jail.flooded:
            return f"it printed more than {self.limits.output_mb} MB (output is limited)"
        if code > 128 and self.sandboxed:  # bubblewrap reports its command's death by a signal as 128 + n
            code = -(code - 128)
        if code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            return {"SIGKILL": "killed (out of memory or CPU time)", "SIGXCPU": "out of CPU time "
                    f"(limit {self.limits.cpu_seconds} s)", "SIGXFSZ": f"it wrote a file past {self.limits.file_mb} MB",
                    "SIGSEGV": "it crashed (segmentation fault)"}.get(sig, f"killed by {sig}")
        tail = jail.output_tail().strip().splitlines()
        last = tail[-1] if tail else ""
        if "MemoryError" in last or "Cannot allocate memory" in last:
            return f"out of memory (limit {self.limits.memory_mb} MB)"
        return f"exit code {code}" + (f" ({last[:200]})" if last else "")

    def close(self) -> None:
        jail = getattr(self, "_jail", None)
        if jail is not None:
            jail.close()  # the child and everything it started: gone before this returns
        for fd in ("_w", "_r"):
            if getattr(self, fd, None) is not None:
                try:
                    os.close(getattr(self, fd))
                except OSError:
                    pass
                setattr(self, fd, None)
        if getattr(self, "_shared", None) is not None:
            self._shared.close()
            self._shared = None
        if getattr(self, "_tmp", None) is not None and self._tmp.exists():
            for p in self._tmp.rglob("*"):
                try:
                    if not p.is_symlink():
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
