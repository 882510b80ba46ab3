"""The runner of the reader child: everything that unpickles or inflates a checkpoint runs in
`harness.checkpoint.child`, in an empty scratch folder with a scrubbed environment, its own session and
address-space, CPU-time, file-size and wall-time limits. It is forked by the reader's fork server (an
interpreter started as `python -I` with the same scrubbed environment, torch imported once: see
`harness.forkserver`), or started as `python -I` where there is none. A
decompression bomb, a giant stride-0 tensor or a pickle built to exhaust memory kills only the child.

The child answers with `result.json` (plain JSON) and `tensors.safetensors`, never a pickle; a limit
that killed it is read from its exit status and told as one sentence.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import torch

from harness import forkserver
from harness.checkpoint.child import EXIT_MEMORY
from harness.checkpoint.errors import UNREADABLE, UNSAFE, CheckpointError, short
from harness.checkpoint.hf_folder import check_safetensors_header
from harness.checkpoint.limits import MB, Limits


def _child_env(tmp: Path) -> dict[str, str]:
    """A scrubbed environment: no TORCH_FORCE_* switch, no CUDA, one thread, HOME in the scratch folder."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "TMPDIR": str(tmp),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    if os.environ.get("LD_LIBRARY_PATH"):
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


# The reader's fork server imports what the child imports before it limits its address space.
READER = forkserver.Kind(name="read", entry="harness.checkpoint.child:main", isolated=True,
                         preload=("torch", "numpy", "safetensors.torch", "harness.processes",
                                  "harness.checkpoint.child", "harness.checkpoint.errors",
                                  "harness.checkpoint.hf_folder", "harness.checkpoint.unwrap"),
                         server_env=_child_env, address_env="HARNESS_READ_SERVER")


def run_reader(request: dict, limits: Limits, display: str) -> dict:
    """Run the child on `request`; return {"tensors", "config", "meta", "refused_globals", "warnings"}."""
    request = {**request, "limits": {"memory_mb": limits.memory_mb, "cpu_seconds": limits.cpu_seconds}}
    with tempfile.TemporaryDirectory(prefix="harness-read-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "request.json").write_text(json.dumps(request), encoding="utf-8")
        ended = forkserver.run(READER, [], cwd=tmp, env=_child_env(tmp), stderr=tmp / "stderr.txt",
                               timeout_s=limits.wall_seconds)
        code, cpu, timed_out = ended.code, ended.cpu_s, ended.timed_out
        result = None
        result_path = tmp / "result.json"
        if result_path.is_file() and result_path.stat().st_size <= 64 * MB:
            try:
                result = json.loads(result_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                result = None
        if timed_out:
            raise CheckpointError(UNREADABLE, f"{display}: reading took longer than {limits.wall_seconds} s, the "
                                              "limit; the checkpoint is damaged, hostile or far too large")
        if isinstance(result, dict) and result.get("ok") is False:
            if result.get("limit") == "memory":
                raise _memory_error(display, limits)
            raise CheckpointError(result.get("code") if result.get("code") in (UNSAFE, UNREADABLE) else UNREADABLE,
                                  str(result.get("message") or f"{display} could not be read"))
        if code == EXIT_MEMORY:
            raise _memory_error(display, limits)
        if code is not None and code < 0:
            sig = -code
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds - 0.5):
                raise CheckpointError(UNREADABLE, f"{display}: reading needed more than {limits.cpu_seconds} s of "
                                                  "CPU time, the limit; the checkpoint is damaged, hostile or far "
                                                  "too large")
            if sig == signal.SIGXFSZ:
                raise CheckpointError(UNREADABLE, f"{display}: its tensors unfold to more data than the file could "
                                                  "hold; it is damaged or hostile")
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            raise CheckpointError(UNREADABLE, f"{display}: the reader was killed by {name}; the checkpoint may need "
                                              f"more than {limits.memory_mb} MB to read, or be damaged")
        if code != 0 or not isinstance(result, dict) or result.get("ok") is not True:
            tail = (tmp / "stderr.txt").read_bytes()[-400:].decode("utf-8", "replace").strip().splitlines()
            raise CheckpointError(UNREADABLE, f"{display} could not be read (the reader stopped with exit {code}"
                                              + (f": {short(tail[-1])})" if tail else ")"))
        tensors = _load_child_tensors(tmp / "tensors.safetensors", result, display, request["budget_bytes"])
    return {"tensors": tensors, "config": _dict(result.get("config")), "meta": _dict(result.get("meta")),
            "refused_globals": sorted(str(x) for x in result.get("refused_globals") or []),
            "warnings": [str(x) for x in result.get("warnings") or []]}


def _memory_error(display: str, limits: Limits) -> CheckpointError:
    return CheckpointError(UNREADABLE, f"{display}: the checkpoint needed more than {limits.memory_mb} MB to read, "
                                       "the limit; it is damaged, hostile or far too large")


def _load_child_tensors(path: Path, result: dict, display: str, budget: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    names = result.get("tensor_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(UNREADABLE, f"{display} could not be read (the reader's answer is malformed)")
    if not path.is_file() or path.stat().st_size > budget + 16 * MB:
        raise CheckpointError(UNREADABLE, f"{display} could not be read (the reader's tensors are missing or too "
                                          "large)")
    check_safetensors_header(path, display)
    loaded = load_file(str(path))
    if set(loaded) != set(names):
        raise CheckpointError(UNREADABLE, f"{display} could not be read (the reader's tensors do not match its list)")
    return {n: loaded[n] for n in names}

def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}
