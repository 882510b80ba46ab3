"""The sandboxed child of sandbox.py: no network, then the student's class, then logits on request.

Run as `python -I -m harness.sandbox.child IN_FD OUT_FD [SHARED_FD]` with the submission's read-only copy as cwd;
SHARED_FD: the sealed memory file (run.SharedLogits) that replies leave their logits in.
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

    import traceback
    from pathlib import Path

    import numpy as np
    import torch
    from safetensors.torch import load as st_load

    from harness.sandbox import student_class as sc
    from harness.sandbox.describe import describe
    from harness.sandbox.notebook_class import not_run_hint
    from harness.sandbox.run import SharedLogits, _read_frame, _write_frame

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    def send(reply: dict, values: torch.Tensor) -> None:
        """A reply with float32 `values`: left in the shared memory file where they fit, else on the pipe."""
        if shared is not None and shared.put(values):
            _write_frame(out_fd, {**reply, "shared": True})
        else:
            _write_frame(out_fd, reply, np.ascontiguousarray(values.numpy(), dtype="<f4"))

    root = Path(os.getcwd())
    n_outputs = 0
    shared = None
    if len(sys.argv) > 3:
        try:
            shared = SharedLogits(int(sys.argv[3]), writable=True)
        except (OSError, ValueError):  # no room to map it (the memory limit): every reply takes the pipe
            pass
    caller = None
    reported = 0
    while True:
        try:
            header, payload = _read_frame(in_fd, None)
        except EOFError:
            return
        try:
            if header["op"] == "load":
                stage = "importing"
                cls, module, notes = sc.import_class(root, header["code"], sc.scratch_folder())
                stage = "constructing"
                model, account = sc.construct(cls, module, header.get("stored") or {}, header.get("model") or {},
                                              header.get("kwargs") or {})
                stage = "loading the weights into"
                notes += sc.load_weights(model, st_load(bytes(payload)), cls.__name__)
                model.eval()
                caller = sc.Caller(model)
                _write_frame(out_fd, {"ok": True, "notes": notes})
            elif header["op"] == "describe":
                stage = "running"
                n_outputs = int(caller.logits(torch.zeros(1, 1, dtype=torch.long)).shape[-1])
                try:
                    arch = describe(model, n_outputs, account, module)
                except Exception as e:  # noqa: BLE001 — a description is never worth failing the model over
                    arch = {}
                    caller.notes.append(f"the architecture could not be read from the module ({type(e).__name__})")
                account.pop("config", None)
                new, reported = caller.notes[reported:], len(caller.notes)
                params = sum(p.numel() for p in model.parameters())  # tied weights once, buffers out
                _write_frame(out_fd, {"ok": True, "n_outputs": n_outputs, "built": account, "architecture": arch,
                                      "params": int(params), "notes": new})
            elif header["op"] == "hidden":  # the output layer's input, where forward ends in one (Caller.head_input)
                ids = torch.from_numpy(np.frombuffer(payload, dtype=np.int64).reshape(header["shape"]))
                hidden = caller.head_input(ids, n_outputs)
                new, reported = caller.notes[reported:], len(caller.notes)
                if hidden is None:
                    _write_frame(out_fd, {"ok": True, "shape": None, "notes": new})
                else:
                    send({"ok": True, "shape": list(hidden.shape), "head": caller.head[0], "notes": new,
                          "skipped": caller.head_skipped is True}, hidden)
            elif header["op"] == "head":  # that layer's weight [V, d], then its bias [V] if it has one
                name, layer = caller.head
                try:
                    weight = layer.weight.detach().float()
                    values = weight.reshape(-1) if layer.bias is None else \
                        torch.cat([weight.reshape(-1), layer.bias.detach().float()])
                except Exception:  # noqa: BLE001 — no room for the copy: declined, the logits path
                    caller.head_declined = True
                    _write_frame(out_fd, {"ok": True, "shape": None})
                    continue
                send({"ok": True, "head": name, "shape": list(weight.shape), "bias": layer.bias is not None}, values)
            elif header["op"] == "logits":
                ids = torch.from_numpy(np.frombuffer(payload, dtype=np.int64).reshape(header["shape"]))  # its own buffer
                logits = caller.logits(ids)
                if header.get("last"):  # generation: only each window's next-token row travels back
                    logits = logits[:, -1:]
                new, reported = caller.notes[reported:], len(caller.notes)
                send({"ok": True, "shape": list(logits.shape), "notes": new}, logits)  # Caller.logits: float32
            else:
                raise ValueError(f"unknown op {header['op']!r}")
        except Exception as e:
            traceback.print_exc()
            where = f"{stage} the model: " if header.get("op") == "load" else ""
            _write_frame(out_fd, {"ok": False, "error": f"{where}{type(e).__name__}: {e}{not_run_hint(e)}"[:500]})


if __name__ == "__main__":
    main()
