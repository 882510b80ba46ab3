"""A corpus of hostile and broken checkpoints, for any test that feeds student files to the harness.

Every writer takes the folder to write into and a marker path, and returns the path it wrote. A payload
only ever creates the marker (`touch MARKER`), so a test proves that nothing ran by asserting that the
marker never appears. `CASES` says, for each file, the one error code the checkpoint reader must give
(None: the file is read, with a finding such as NaN weights) and any limits or root the read needs.

    import hostile
    for case in hostile.CASES:
        path = case.write(folder, marker)
"""

from __future__ import annotations

import io
import os
import pickle
import shlex
import struct
import subprocess
import tarfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from harness.checkpoint.limits import Limits

MB = 1 << 20


# --------------------------------------------------------------------------------------------------
# Payloads: objects whose unpickling would run something
# --------------------------------------------------------------------------------------------------


class ReduceSystem:
    """Unpickles as os.system("touch MARKER")."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


class ReduceEval:
    """Unpickles as eval("open(MARKER, 'w').close()")."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return eval, (f"open({self.marker!r}, 'w').close()",)


class ReduceExec:
    """Unpickles as exec(...), hidden in a config object."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({self.marker!r}).touch()",)


class ReducePopen:
    """Unpickles as subprocess.Popen(["touch", MARKER])."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return subprocess.Popen, (["touch", self.marker],)


def small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"wte.weight": torch.randn(16, 8, generator=g), "ln_f.weight": torch.ones(8), "ln_f.bias": torch.zeros(8)}


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def _base_zip() -> tuple[bytes, str]:
    """A real torch.save zip of {"w": arange(4.)} and its archive prefix."""
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, buf)
    data = buf.getvalue()
    prefix = zipfile.ZipFile(io.BytesIO(data)).namelist()[0].split("/")[0]
    return data, prefix


def torch_zip_with(path: Path, data_pkl: bytes, storage: bytes | None = None, deflate_storage: bool = False) -> Path:
    """A torch zip whose data.pkl (and optionally storage data/0) are replaced: a hand-made pickle
    inside the container torch.load opens."""
    base, prefix = _base_zip()
    src = zipfile.ZipFile(io.BytesIO(base))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename == f"{prefix}/data.pkl":
                out.writestr(info.filename, data_pkl)
            elif info.filename == f"{prefix}/data/0" and storage is not None:
                zi = zipfile.ZipInfo(info.filename)
                zi.compress_type = zipfile.ZIP_DEFLATED if deflate_storage else zipfile.ZIP_STORED
                out.writestr(zi, storage)
            else:
                out.writestr(info.filename, body)
    return path


def _long(n: int) -> bytes:
    """Pickle opcodes pushing the integer n (LONG1)."""
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _tensor_pickle(numel: int, size: int, stride: int) -> bytes:
    """data.pkl of {"w": tensor} with a float storage of `numel` elements viewed as (size,) with `stride`."""
    return (b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n("
            b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu"
            + _long(numel) + b"tQ" + b"K\x00" + _long(size) + b"\x85" + _long(stride) + b"\x85"
            + b"\x89ccollections\nOrderedDict\n)RtRs.")


def safetensors_bytes(header: dict, data: bytes, header_len: int | None = None) -> bytes:
    raw = __import__("json").dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", header_len if header_len is not None else len(raw)) + raw + data


# --------------------------------------------------------------------------------------------------
# Writers: code in a pickle
# --------------------------------------------------------------------------------------------------


def write_reduce_os_system(folder: Path, marker: Path) -> Path:
    path = folder / "reduce_os_system.pt"
    torch.save({"model": small_state_dict(), "extra": ReduceSystem(marker)}, path)
    return path


def write_reduce_eval(folder: Path, marker: Path) -> Path:
    path = folder / "reduce_eval.pt"
    torch.save({"model": small_state_dict(), "extra": ReduceEval(marker)}, path)
    return path


def write_reduce_subprocess(folder: Path, marker: Path) -> Path:
    path = folder / "reduce_subprocess.pt"
    torch.save({"model": small_state_dict(), "extra": ReducePopen(marker)}, path)
    return path


def write_payload_in_config(folder: Path, marker: Path) -> Path:
    path = folder / "payload_in_config.pt"
    torch.save({"model": small_state_dict(), "config": ReduceExec(marker), "iter_num": 3}, path)
    return path


def write_legacy_payload(folder: Path, marker: Path) -> Path:
    """The pre-1.6 (non-zip) torch.save format with a payload."""
    path = folder / "legacy_payload.pt"
    torch.save({"model": small_state_dict(), "extra": ReduceSystem(marker)}, path, _use_new_zipfile_serialization=False)
    return path


def write_legacy_tar_payload(folder: Path, marker: Path) -> Path:
    """PyTorch < 0.4's tar format (members sys_info, pickle, storages, tensors) with a payload pickle."""
    path = folder / "legacy_tar.pt"
    members = {"sys_info": pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
               "pickle": pickle.dumps({"extra": ReduceSystem(marker)}, protocol=2),
               "storages": pickle.dumps(0, protocol=2), "tensors": pickle.dumps(0, protocol=2)}
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


def write_protocol4_payload(folder: Path, marker: Path) -> Path:
    """A plain pickle at protocol 4 (STACK_GLOBAL, which torch's scanner does not read) named .pt."""
    path = folder / "protocol4_payload.pt"
    path.write_bytes(pickle.dumps({"extra": ReduceSystem(marker)}, protocol=4))
    return path


def write_torchscript(folder: Path, marker: Path) -> Path:
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x)

    path = folder / "torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, and students still use it
        torch.jit.save(torch.jit.script(Tiny()), str(path))
    return path


# --------------------------------------------------------------------------------------------------
# Writers: broken files
# --------------------------------------------------------------------------------------------------


def write_empty(folder: Path, marker: Path) -> Path:
    path = folder / "empty.pt"
    path.write_bytes(b"")
    return path


def write_garbage(folder: Path, marker: Path) -> Path:
    path = folder / "garbage.pth"
    path.write_bytes(bytes((i * 7919 + 13) % 251 for i in range(4096)))
    return path


def write_truncated_zip(folder: Path, marker: Path) -> Path:
    path = folder / "truncated_zip.pt"
    buf = io.BytesIO()
    torch.save({"model": small_state_dict()}, buf)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 6 // 10])
    return path


def write_truncated_legacy(folder: Path, marker: Path) -> Path:
    path = folder / "truncated_legacy.pt"
    buf = io.BytesIO()
    torch.save({"model": small_state_dict()}, buf, _use_new_zipfile_serialization=False)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return path


def write_truncated_safetensors(folder: Path, marker: Path) -> Path:
    from safetensors.torch import save

    path = folder / "truncated.safetensors"
    data = save(small_state_dict())
    path.write_bytes(data[: len(data) - 100])
    return path


def write_safetensors_long_header(folder: Path, marker: Path) -> Path:
    """The 8-byte header length claims more than the whole file."""
    path = folder / "long_header.safetensors"
    path.write_bytes(safetensors_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(16),
                                       header_len=1 << 40))
    return path


def write_safetensors_out_of_range(folder: Path, marker: Path) -> Path:
    path = folder / "out_of_range.safetensors"
    path.write_bytes(safetensors_bytes({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, bytes(16)))
    return path


def write_safetensors_overlap(folder: Path, marker: Path) -> Path:
    path = folder / "overlap.safetensors"
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    path.write_bytes(safetensors_bytes(header, bytes(24)))
    return path


# --------------------------------------------------------------------------------------------------
# Writers: resource exhaustion
# --------------------------------------------------------------------------------------------------

BOMB_BYTES = 64 * MB


def write_deflate_bomb(folder: Path, marker: Path) -> Path:
    """A torch zip whose storage record is DEFLATE-compressed zeros, about 1000-fold."""
    path = folder / "deflate_bomb.pt"
    return torch_zip_with(path, _tensor_pickle(BOMB_BYTES // 4, BOMB_BYTES // 4, 1), bytes(BOMB_BYTES),
                          deflate_storage=True)


def write_zip_bomb_submission(folder: Path, marker: Path) -> Path:
    """A zipped submission whose weights member inflates about 1000-fold."""
    path = folder / "zip_bomb_submission.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("student/notes.txt", "hello")
        zf.writestr("student/model.pt", bytes(BOMB_BYTES))
    return path


def write_huge_storage(folder: Path, marker: Path) -> Path:
    """A storage that claims 10^12 elements while the file holds 16 bytes."""
    return torch_zip_with(folder / "huge_storage.pt", _tensor_pickle(10**12, 4, 1))


def write_huge_view(folder: Path, marker: Path) -> Path:
    """A tensor of 10^9 elements on a 4-element storage."""
    return torch_zip_with(folder / "huge_view.pt", _tensor_pickle(4, 10**9, 1))


def write_stride0_giant(folder: Path, marker: Path) -> Path:
    """A valid stride-0 view: 4 bytes of storage expanded to 10^10 elements (40 GB once materialised)."""
    return torch_zip_with(folder / "stride0_giant.pt", _tensor_pickle(4, 10**10, 0))


def write_memory_bomb(folder: Path, marker: Path) -> Path:
    """bytearray(64 GiB): builtins.bytearray is on torch's own allowlist."""
    pkl = (b"\x80\x02}X\x05\x00\x00\x00blockcbuiltins\nbytearray\n" + _long(64 << 30) + b"\x85Rs.")
    return torch_zip_with(folder / "memory_bomb.pt", pkl)


def write_cpu_bomb(folder: Path, marker: Path) -> Path:
    """collections.Counter(bytearray(5e8)): allowlisted callables that count half a billion zeros (~20 s)."""
    pkl = (b"\x80\x02}X\x05\x00\x00\x00countccollections\nCounter\ncbuiltins\nbytearray\n" + _long(5 * 10**8)
           + b"\x85R\x85Rs.")
    return torch_zip_with(folder / "cpu_bomb.pt", pkl)


def write_shared_pickle(folder: Path, marker: Path) -> Path:
    """Weights beside a list that holds the same list twice, 40 levels deep: 2^40 leaves if unfolded."""
    base, prefix = _base_zip()
    inner = zipfile.ZipFile(io.BytesIO(base)).read(f"{prefix}/data.pkl")[2:-1]  # {"w": tensor} without PROTO/STOP
    ops = b"]"  # the innermost list; each level: [previous, previous] with the previous memoised once
    for i in range(1, 41):
        memo = struct.pack("<I", 1000 + i)
        ops = b"](" + ops + b"r" + memo + b"j" + memo + b"e"
    pkl = b"\x80\x02}X\x05\x00\x00\x00model" + inner + b"sX\x04\x00\x00\x00junk" + ops + b"s."
    return torch_zip_with(folder / "shared_pickle.pt", pkl)


def write_nan_weights(folder: Path, marker: Path) -> Path:
    path = folder / "nan_weights.pt"
    sd = small_state_dict()
    sd["wte.weight"][0, 0] = float("nan")
    sd["ln_f.bias"][1] = float("inf")
    torch.save(sd, path)
    return path


# --------------------------------------------------------------------------------------------------
# Writers: leaving the submission
# --------------------------------------------------------------------------------------------------


def write_symlink_out(folder: Path, marker: Path) -> Path:
    """submission/model.pt -> ../outside/secret.pt; read with root = the submission folder."""
    outside = folder / "outside"
    outside.mkdir(exist_ok=True)
    torch.save(small_state_dict(), outside / "secret.pt")
    sub = folder / "symlink_submission"
    sub.mkdir(exist_ok=True)
    link = sub / "model.pt"
    link.symlink_to(Path("..") / "outside" / "secret.pt")
    return link


def _zip_with(path: Path, name: str, body: bytes = b"x", mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        buf = io.BytesIO()
        torch.save(small_state_dict(), buf)
        zf.writestr("sub/model.pt", buf.getvalue())
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, body)
    return path


def write_zip_dotdot(folder: Path, marker: Path) -> Path:
    return _zip_with(folder / "zip_dotdot.zip", "../../escaped.txt")


def write_zip_absolute(folder: Path, marker: Path) -> Path:
    return _zip_with(folder / "zip_absolute.zip", "/tmp/harness_absolute_escape.txt")


def write_zip_symlink(folder: Path, marker: Path) -> Path:
    return _zip_with(folder / "zip_symlink.zip", "sub/link.pt", b"/etc/passwd", mode=0o120777)


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    write: Callable[[Path, Path], Path]
    code: str | None  # the one error code expected; None: read, with a finding
    limits: Limits = field(default_factory=Limits)
    rooted: bool = False  # read with root = the written file's folder
    extract: bool = False  # a zipped submission: goes through extract_zip
    child: bool = True  # needs the reader's child process (False: refused before one starts)


UNSAFE, UNREADABLE = "checkpoint-unsafe", "checkpoint-unreadable"

CASES: list[Case] = [
    Case("reduce_os_system", write_reduce_os_system, UNSAFE),
    Case("reduce_eval", write_reduce_eval, UNSAFE),
    Case("reduce_subprocess", write_reduce_subprocess, UNSAFE),
    Case("payload_in_config", write_payload_in_config, UNSAFE),
    Case("legacy_payload", write_legacy_payload, UNSAFE),
    Case("protocol4_payload", write_protocol4_payload, UNSAFE),
    Case("legacy_tar_payload", write_legacy_tar_payload, UNSAFE, child=False),
    Case("torchscript", write_torchscript, UNSAFE, child=False),
    Case("symlink_out", write_symlink_out, UNSAFE, rooted=True, child=False),
    Case("zip_dotdot", write_zip_dotdot, UNSAFE, extract=True, child=False),
    Case("zip_absolute", write_zip_absolute, UNSAFE, extract=True, child=False),
    Case("zip_symlink", write_zip_symlink, UNSAFE, extract=True, child=False),
    Case("empty", write_empty, UNREADABLE, child=False),
    Case("garbage", write_garbage, UNREADABLE, child=False),
    Case("truncated_zip", write_truncated_zip, UNREADABLE, child=False),
    Case("truncated_legacy", write_truncated_legacy, UNREADABLE),
    Case("truncated_safetensors", write_truncated_safetensors, UNREADABLE, child=False),
    Case("safetensors_long_header", write_safetensors_long_header, UNREADABLE, child=False),
    Case("safetensors_out_of_range", write_safetensors_out_of_range, UNREADABLE, child=False),
    Case("safetensors_overlap", write_safetensors_overlap, UNREADABLE, child=False),
    Case("deflate_bomb", write_deflate_bomb, UNREADABLE, child=False),
    # The same bomb with the ratio cap lifted: the child's memory limit stops it.
    Case("deflate_bomb_memory_limit", write_deflate_bomb, UNREADABLE, Limits(memory_mb=32, max_zip_ratio=1e9)),
    Case("zip_bomb_submission", write_zip_bomb_submission, UNREADABLE, extract=True, child=False),
    Case("huge_storage", write_huge_storage, UNREADABLE),
    Case("huge_view", write_huge_view, UNREADABLE),
    Case("stride0_giant", write_stride0_giant, UNREADABLE),
    Case("memory_bomb", write_memory_bomb, UNREADABLE),
    Case("cpu_bomb", write_cpu_bomb, UNREADABLE, Limits(cpu_seconds=4)),
    Case("wall_bomb", write_cpu_bomb, UNREADABLE, Limits(cpu_seconds=600, wall_seconds=8)),
    Case("shared_pickle", write_shared_pickle, None),
    Case("nan_weights", write_nan_weights, None),
]


def write_all(folder: Path, marker: Path) -> dict[str, Path]:
    """Every case's file, each in its own subfolder of `folder`."""
    out = {}
    for case in CASES:
        sub = folder / case.name
        sub.mkdir(parents=True, exist_ok=True)
        out[case.name] = case.write(sub, marker)
    return out
