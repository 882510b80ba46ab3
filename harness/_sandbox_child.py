"""The sandboxed child of sandbox.py: no network, then the student's class, then logits on request.

Run as `python -I -m harness._sandbox_child IN_FD OUT_FD` with the submission's read-only copy as cwd.
"""

from __future__ import annotations

import os
import socket
import sys


def _no_network() -> None:
    """Refuse every socket, before any student code is imported (a network namespace comes on top)."""

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled while grading")

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            refuse()

    socket.socket = NoSocket  # type: ignore[misc]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.socketpair = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]


def main() -> None:
    in_fd, out_fd = int(sys.argv[1]), int(sys.argv[2])
    _no_network()
    sys.stdout = sys.stderr  # the student's prints go to the log, never into the frames

    import importlib.util
    import inspect
    import traceback

    import numpy as np
    import torch
    from safetensors.torch import load as st_load

    from harness.sandbox import _read_frame, _write_frame

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sys.path.insert(0, os.getcwd())
    model = None
    while True:
        try:
            header, payload = _read_frame(in_fd, None)
        except EOFError:
            return
        try:
            if header["op"] == "load":
                spec = importlib.util.spec_from_file_location("student_model", os.path.join(os.getcwd(), header["file"]))
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                cls = getattr(module, header["class"], None)
                if cls is None:
                    raise LookupError(f"{header['file']} defines no {header['class']}")
                kwargs = header["kwargs"]
                params = inspect.signature(cls).parameters
                if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                    kwargs = {k: v for k, v in kwargs.items() if k in params}
                model = cls(**kwargs)
                missing, unexpected = model.load_state_dict(st_load(payload), strict=False)
                if missing or unexpected:
                    raise KeyError(f"the weights do not fit {header['class']}: missing {list(missing)[:5]}, "
                                   f"unexpected {list(unexpected)[:5]}")
                model.eval()
                _write_frame(out_fd, {"ok": True})
            elif header["op"] == "logits":
                ids = torch.from_numpy(np.frombuffer(payload, dtype=np.int64).reshape(header["shape"]).copy())
                with torch.inference_mode():
                    out = model(ids)
                if isinstance(out, dict):
                    out = out.get("logits", next(iter(out.values())))
                elif not isinstance(out, torch.Tensor) and hasattr(out, "logits"):
                    out = out.logits
                elif isinstance(out, (tuple, list)):
                    out = out[0]
                logits = out.detach().float().contiguous().numpy()
                _write_frame(out_fd, {"ok": True, "shape": list(logits.shape)}, logits.tobytes())
            else:
                raise ValueError(f"unknown op {header['op']!r}")
        except Exception as e:
            traceback.print_exc()
            _write_frame(out_fd, {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]})


if __name__ == "__main__":
    main()
