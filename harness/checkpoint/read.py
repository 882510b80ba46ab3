"""Reading a student's checkpoint, which is untrusted input, into plain tensors and plain configs.

What can be looked at without running anything happens here, in the grader's process: the file's
kind by its first bytes (never its name), zip member names, sizes and ratios, safetensors headers,
symbolic links. Everything that unpickles or inflates runs in a child process
(`harness.checkpoint.child`) with an address-space, CPU-time, file-size and wall-time limit, so a
decompression bomb, a giant stride-0 tensor or a pickle built to exhaust memory kills only the child.

Pickles go only through `torch.load(weights_only=True)`. A global that the safe unpickler refuses is
never imported: it becomes an inert stub class that records what the pickle gave it (its arguments
and its state), so an `argparse.Namespace`, a dataclass config or a whole pickled `nn.Module` can be
read as data. Globals that stand for code (`os.system`, `builtins.eval`, `subprocess.Popen`, ...), and
stubbed functions a pickle calls, make the checkpoint `checkpoint-unsafe`; nothing of it ever runs.

Tensors come back to this process as a safetensors file and configs as JSON, never as a pickle.
`unwrap` turns whatever a training script saved (nanoGPT dicts, DDP and `torch.compile` prefixes,
optimizer state beside the weights, configs as dicts or objects) into one flat state dict.
"""

from __future__ import annotations

import _compat_pickle
import io
import json
import math
import os
import pickletools
import re
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

import torch

from harness.errors import HarnessError
from harness.files import fingerprint, sha256_file

UNSAFE = "checkpoint-unsafe"
UNREADABLE = "checkpoint-unreadable"
MISSING = "checkpoint-missing"

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
# Files a training framework writes beside the weights that are not model weights.
AUX_WEIGHT_NAMES = re.compile(r"^(optimizer|optim|scheduler|lr_scheduler|scaler|rng_state.*|training_args|"
                              r"trainer_state)(\.|_)", re.I)
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
SKIP_DIRS = {"__MACOSX", "__pycache__", "node_modules", ".git", ".ipynb_checkpoints"}

MB = 1 << 20
MAX_JSON_BYTES = 16 * MB  # config.json, index files
MAX_SAFETENSORS_HEADER = 100 * MB  # the safetensors library's own limit
MAX_STUBBED_GLOBALS = 500
# Torch's weights-only unpickler reads exactly these opcodes (torch/_weights_only_unpickler.py).
SAFE_OPCODES = frozenset({
    "PROTO", "STOP", "GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "MARK",
    "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE", "EMPTY_LIST",
    "EMPTY_DICT", "EMPTY_SET", "BININT", "BININT1", "BININT2", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING",
    "BINPERSID", "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT", "LONG1",
})


@dataclass(frozen=True)
class Limits:
    """What reading one checkpoint may cost. `memory_mb` is headroom above what the reader needs to
    import torch and safetensors (about 600 MB of address space for CPU torch 2.13; the child
    measures its own), so it is what the checkpoint itself may take."""

    memory_mb: int = 4096
    cpu_seconds: int = 120
    wall_seconds: int = 180
    max_file_mb: int = 2048
    max_zip_total_mb: int = 4096
    max_zip_members: int = 10000
    max_zip_ratio: float = 200.0


@dataclass(frozen=True)
class RawCheckpoint:
    path: str  # the weights file or folder that was read
    sha256: str  # the file's sha256; a folder: fingerprint of {relative path: sha256} of its weight+config files
    format: str  # "torch-zip" | "torch-legacy" | "safetensors" | "hf-folder"
    tensors: dict[str, torch.Tensor]  # flat model weights, prefixes stripped, CPU, contiguous
    config: dict  # merged plain configs found (JSON types only)
    meta: dict  # other plain top-level metadata (epoch, step, val_loss, ...), JSON types only
    refused_globals: list[str]  # qualified names read through inert stubs
    nonfinite: list[str]  # tensor names with NaN/Inf
    warnings: list[str] = field(default_factory=list)


class CheckpointError(HarnessError):
    """`checkpoint-unsafe`, `checkpoint-unreadable` or `checkpoint-missing`, with one sentence."""


# ==================================================================================================
# Public entry points
# ==================================================================================================


def read_checkpoint(path: str | Path, *, root: Path | None = None, limits: Limits = Limits()) -> RawCheckpoint:
    """Read the weights at `path`: a weights file, a Hugging Face folder, a folder holding one weights
    file, or a zipped submission. `root` is the submission folder: anything resolving outside it is
    refused. Raises CheckpointError."""
    path = Path(path)
    root = Path(root) if root is not None else None
    display = _display(path, root)
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(MISSING, f"{display} does not exist; check the path")
    real = _contained(path, root, display)
    if real.is_dir():
        if _is_hf_folder(real):
            return _read_hf_folder(path, real, root, display, limits)
        found = find_weights(real)
        if not found:
            raise CheckpointError(MISSING, f"{display} holds no weights file ({', '.join(WEIGHT_SUFFIXES)}) and no "
                                           "Hugging Face model folder; add the checkpoint to the submission")
        if len(found) > 1:
            names = ", ".join(p.relative_to(real).as_posix() for p in found[:5])
            raise CheckpointError(MISSING, f"{display} holds several weights ({names}); name the one to grade "
                                           "with `checkpoint = ...` in submission.toml")
        return read_checkpoint(found[0], root=root if root is not None else real, limits=limits)
    kind = _sniff(real, display, limits)
    if kind == "zip-archive":
        return _read_zipped_submission(path, real, display, limits)
    raw = _run_reader({"display": display, "mode": "single", "files": [{"path": str(real), "kind": kind}],
                       "budget_bytes": _budget(real.stat().st_size, limits)}, limits, display)
    fmt = "torch-zip" if kind == "torch-zip" else "torch-legacy" if kind == "torch-pickle" else "safetensors"
    config, sidecar = _sidecar_config(path, real, root, display)
    result = _finish(str(path), sha256_file(real), fmt, raw, config, {})
    if sidecar:
        notes = result.meta.setdefault("_harness", {})
        notes["config_from"] = [*notes.get("config_from", []), sidecar]
    return result


def extract_zip(zip_path: str | Path, dest: str | Path, limits: Limits = Limits()) -> Path:
    """Safely unpack a zipped submission into `dest` (created; must be empty) and return the submission
    folder: `dest`, or its one top-level folder when every member lies in it. No member may be absolute,
    climb out with `..`, be a symbolic link, or inflate past the size and ratio caps."""
    zip_path, dest = Path(zip_path), Path(dest)
    display = zip_path.name
    try:
        st = zip_path.stat()
    except OSError:
        raise CheckpointError(MISSING, f"{zip_path} does not exist; check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(UNREADABLE, f"{display} is not a regular file")
    if st.st_size > limits.max_zip_total_mb * MB:
        raise CheckpointError(UNREADABLE, f"{display} is {st.st_size / MB:.0f} MB, more than the "
                                          f"{limits.max_zip_total_mb} MB limit for a zipped submission")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(UNREADABLE, f"{display} is not a readable zip archive ({_short(e)}); zip the "
                                          "submission again") from None
    with zf:
        plan = _plan_extraction(zf, display, limits)
        if dest.exists() and any(dest.iterdir()):
            raise ValueError(f"extract_zip needs an empty destination, and {dest} is not empty")
        dest.mkdir(parents=True, exist_ok=True)
        real_dest = dest.resolve()
        for info, rel in plan:
            target = real_dest.joinpath(*rel.parts)
            try:
                target.mkdir(parents=True, exist_ok=True) if info.is_dir() else target.parent.mkdir(parents=True,
                                                                                                    exist_ok=True)
            except OSError as e:
                raise CheckpointError(UNREADABLE, f"{display}: member {info.filename!r} cannot be unpacked "
                                                  f"({_short(e)}); zip the submission again") from None
            if info.is_dir():
                continue
            if not target.resolve().is_relative_to(real_dest):  # belt and braces: we never create links
                raise CheckpointError(UNSAFE, f"{display}: member {info.filename!r} would be written outside the "
                                              "submission folder; zip the submission folder again")
            _copy_member(zf, info, target, display)
    tops = {rel.parts[0] for _, rel in plan}
    if len(tops) == 1:
        only = real_dest / next(iter(tops))
        if only.is_dir():
            return only
    return real_dest


def find_weights(folder: Path) -> list[Path]:
    """Candidate weights in a submission folder: Hugging Face model folders (as one entry each) and
    weights files, shallowest first, then by path. Symbolic links are listed (reading refuses those
    that leave the submission) but never followed while walking."""
    folder = Path(folder)
    if _is_hf_folder(folder):
        return [folder]
    found: list[tuple[int, str, Path]] = []
    queue: deque[tuple[Path, int]] = deque([(folder, 0)])
    seen = 0
    while queue:
        here, depth = queue.popleft()
        try:
            entries = sorted(here.iterdir(), key=lambda p: p.name)
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if seen > 20000:
                queue.clear()
                break
            name = entry.name
            rel = entry.relative_to(folder).as_posix()
            if entry.is_symlink():
                if name.lower().endswith(WEIGHT_SUFFIXES) or (entry.is_dir() and _is_hf_folder(entry)):
                    found.append((depth, rel, entry))
                continue
            if entry.is_dir():
                if name in SKIP_DIRS or name.startswith("."):
                    continue
                if _is_hf_folder(entry):
                    found.append((depth + 1, rel, entry))
                elif depth < 8:
                    queue.append((entry, depth + 1))
            elif entry.is_file() and name.lower().endswith(WEIGHT_SUFFIXES) and not AUX_WEIGHT_NAMES.match(name):
                found.append((depth, rel, entry))
    return [p for _, _, p in sorted(found, key=lambda x: (x[0], x[1]))]


# ==================================================================================================
# Paths, symlinks, sniffing: what is decided before any child runs
# ==================================================================================================


def _display(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.absolute().relative_to(root.absolute()).as_posix() or path.name
        except ValueError:
            pass
    return str(path)


def _contained(path: Path, root: Path | None, display: str) -> Path:
    """The resolved path; a symbolic link (anywhere on the way) that leaves `root` is refused."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise CheckpointError(UNREADABLE if path.is_symlink() else MISSING,
                              f"{display} is a broken or looping symbolic link; put the file itself in the submission"
                              if path.is_symlink() else f"{display} does not exist; check the path") from None
    if root is not None:
        real_root = root.resolve()
        if not real.is_relative_to(real_root):
            how = "is a symbolic link to" if path.is_symlink() else "resolves (through a symbolic link) to"
            raise CheckpointError(UNSAFE, f"{display} {how} {real}, outside the submission; copy the file itself "
                                          "into the submission")
    return real


def _budget(file_bytes: int, limits: Limits) -> int:
    """How many bytes of tensors a file of this size may unfold into: tied weights and views may repeat
    storage, but a tensor far larger than its file is a hostile shape (a stride-0 giant)."""
    return min(limits.memory_mb * MB, 4 * file_bytes + 64 * MB)


def _sniff(path: Path, display: str, limits: Limits) -> str:
    """The file's kind by its bytes: torch-zip | torch-pickle | safetensors | zip-archive; or an error."""
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(UNREADABLE, f"{display} is not a regular file")
    size = st.st_size
    if size == 0:
        raise CheckpointError(UNREADABLE, f"{display} is empty (0 bytes); save the checkpoint again and resubmit it")
    if size > limits.max_file_mb * MB:
        raise CheckpointError(UNREADABLE, f"{display} is {size / MB:.0f} MB, more than the {limits.max_file_mb} MB "
                                          "limit for a checkpoint")
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _sniff_zip(path, display, limits)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") >= 2:
        check_safetensors_header(path, display)
        return "safetensors"
    if len(head) >= 262 and head[257:262] == b"ustar":
        _refuse_legacy_tar(path, display)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch-pickle"
    if head[:1] in (b"(", b"}", b"]", b"c") and path.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt", ".pkl"):
        return "torch-pickle"  # a protocol 0/1 pickle: no PROTO opcode
    what = {b"\x93NUMPY": "a NumPy array file", b"\x89HDF": "an HDF5 (Keras) file", b"GGUF": "a GGUF file",
            b"\x1f\x8b": "a gzip file"}
    for magic, name in what.items():
        if head.startswith(magic):
            raise CheckpointError(UNREADABLE, f"{display} is {name}, not a PyTorch or safetensors checkpoint; "
                                              "save the model with torch.save(model.state_dict(), ...)")
    raise CheckpointError(UNREADABLE, f"{display} is not a checkpoint harness can read (a PyTorch .pt/.pth/.bin "
                                      "file or a .safetensors file); it may be damaged — save it again and resubmit")


def _sniff_zip(path: Path, display: str, limits: Limits) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as e:
        raise CheckpointError(UNREADABLE, f"{display} is a damaged or truncated zip archive ({_short(e)}); save "
                                          "the checkpoint again and resubmit it") from None
    names = [i.filename for i in infos]
    if len(names) != len(set(names)):
        raise CheckpointError(UNREADABLE, f"{display} is a zip archive with duplicate member names, which no "
                                          "PyTorch version writes; save the checkpoint again")
    prefixes = {n.split("/", 1)[0] for n in names if "/" in n}
    data_pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    # torch.jit.save writes <prefix>/constants.pkl and the model's code under <prefix>/code/.
    if data_pkls and any(n.count("/") == 1 and n.endswith("/constants.pkl") or n.split("/")[1:2] == ["code"]
                         for n in names):
        raise CheckpointError(UNSAFE, f"{display} is a TorchScript archive (torch.jit.save), which holds code; "
                                      "hand in a state_dict saved with torch.save(model.state_dict(), ...) or a "
                                      ".safetensors file")
    if len(data_pkls) == 1 and len(prefixes) == 1 and all("/" in n for n in names):
        _check_zip_sizes(infos, display, limits)
        return "torch-zip"
    if path.suffix.lower() == ".zip":
        return "zip-archive"
    raise CheckpointError(UNREADABLE, f"{display} is a zip archive but not a PyTorch checkpoint (no data.pkl); "
                                      "save the model with torch.save(model.state_dict(), ...)")


def _check_zip_sizes(infos: list[zipfile.ZipInfo], display: str, limits: Limits) -> None:
    if len(infos) > limits.max_zip_members:
        raise CheckpointError(UNREADABLE, f"{display} has {len(infos)} zip members, more than the "
                                          f"{limits.max_zip_members} allowed")
    total = 0
    for info in infos:
        _check_member(info, display, limits)
        total += info.file_size
    if total > limits.max_zip_total_mb * MB:
        raise CheckpointError(UNREADABLE, f"{display} inflates to {total / MB:.0f} MB, more than the "
                                          f"{limits.max_zip_total_mb} MB limit")


def _check_member(info: zipfile.ZipInfo, display: str, limits: Limits) -> None:
    """One zip member's declared size and compression ratio (zipfile never inflates past the declared size)."""
    if info.flag_bits & 0x1:
        raise CheckpointError(UNREADABLE, f"{display}: member {info.filename!r} is encrypted; zip it without a "
                                          "password")
    if info.file_size > limits.max_file_mb * MB:
        raise CheckpointError(UNREADABLE, f"{display}: member {info.filename!r} inflates to "
                                          f"{info.file_size / MB:.0f} MB, more than the {limits.max_file_mb} MB limit")
    if info.file_size > MB and info.file_size > limits.max_zip_ratio * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        raise CheckpointError(UNREADABLE, f"{display}: member {info.filename!r} inflates {ratio:.0f}-fold (to "
                                          f"{info.file_size / MB:.0f} MB), a decompression bomb; the limit is "
                                          f"{limits.max_zip_ratio:g}-fold")


def _refuse_legacy_tar(path: Path, display: str) -> None:
    """PyTorch < 0.4's tar format: torch cannot read it with weights_only. Its pickle is scanned (not
    run) only to tell a hostile file from an old one."""
    names: set[str] = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            member = tar.getmember("pickle")
            if member.isfile() and member.size <= 64 * MB:
                f = tar.extractfile(member)
                names, _ = scan_pickle(f.read() if f else b"")
    except Exception:  # a damaged tar is refused below all the same
        pass
    from torch._weights_only_unpickler import _get_allowed_globals

    bad = sorted(normalise_global(n) for n in names if n not in _get_allowed_globals() and unsafe_reason(n))
    if bad:
        raise CheckpointError(UNSAFE, f"{display} holds code in its pickle ({', '.join(bad[:4])}); it was not run. "
                                      "Hand in a state_dict saved with torch.save(model.state_dict(), ...)")
    raise CheckpointError(UNREADABLE, f"{display} uses PyTorch's legacy .tar format, which cannot be read safely; "
                                      "load it yourself and save it again with a current torch.save")


def check_safetensors_header(path: Path, display: str) -> dict[str, Any]:
    """Validate a safetensors header against the file: a header length inside the file, known dtypes,
    sizes that match shapes, offsets inside the data and not overlapping. Returns the header."""
    size = path.stat().st_size

    def bad(detail: str) -> CheckpointError:
        return CheckpointError(UNREADABLE, f"{display} is not a valid safetensors file: {detail}; save it again "
                                           "with safetensors.torch.save_file")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("it is shorter than its 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise bad(f"its header claims {n} bytes but the file holds only {size - 8} after the length field")
        if n > MAX_SAFETENSORS_HEADER:
            raise bad(f"its header is {n / MB:.0f} MB, more than {MAX_SAFETENSORS_HEADER // MB} MB")
        raw = f.read(n)

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate names in the header")
        return dict(pairs)

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"its header is not JSON ({_short(e)})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    body = size - 8 - n
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise bad("its __metadata__ is not a map of strings")
            continue
        if not isinstance(entry, dict):
            raise bad(f"the entry for {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in SAFETENSORS_DTYPE_BYTES:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and len(shape) <= 16 and all(type(d) is int and d >= 0 for d in shape)):
            raise bad(f"tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise bad(f"tensor {name!r} has data_offsets {offsets} that run backwards")
        if end > body:
            raise bad(f"tensor {name!r} lies at bytes {begin}..{end}, past the {body} bytes of data in the file")
        need = math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]
        if end - begin != need:
            raise bad(f"tensor {name!r} of shape {shape} needs {need} bytes but its offsets span {end - begin}")
        spans.append((begin, end, name))
    spans.sort()
    covered = 0
    for begin, end, name in spans:
        if begin < covered:
            raise bad(f"tensor {name!r} overlaps the tensor before it")
        covered = end
    if covered != body:
        raise bad(f"{body - covered} bytes of its data belong to no tensor")
    return header


SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                           "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "C64": 8}
ALLOWED_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                            torch.float8_e5m2, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                            torch.bool, torch.uint16, torch.uint32, torch.uint64})


# ==================================================================================================
# Zipped submissions
# ==================================================================================================


def _plan_extraction(zf: zipfile.ZipFile, display: str, limits: Limits) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    infos = zf.infolist()
    if len(infos) > limits.max_zip_members:
        raise CheckpointError(UNREADABLE, f"{display} has {len(infos)} members, more than the "
                                          f"{limits.max_zip_members} allowed in a zipped submission")
    plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename.replace("\\", "/")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\x00" in name:
            raise CheckpointError(UNSAFE, f"{display}: member {info.filename!r} would be written outside the "
                                          "submission folder; zip the submission folder again from inside it")
        mode = (info.external_attr >> 16) & 0o170000
        if mode == stat.S_IFLNK:
            raise CheckpointError(UNSAFE, f"{display}: member {info.filename!r} is a symbolic link; zip the files "
                                          "themselves")
        if not parts or parts[0] == "__MACOSX" or parts[-1] in (".DS_Store", "Thumbs.db"):
            continue
        key = "/".join(parts)
        if key in seen:
            raise CheckpointError(UNREADABLE, f"{display} holds {key!r} twice; zip the submission again")
        seen.add(key)
        if info.is_dir():
            plan.append((info, PurePosixPath(*parts)))
            continue
        _check_member(info, display, limits)
        total += info.file_size
        if total > limits.max_zip_total_mb * MB:
            raise CheckpointError(UNREADABLE, f"{display} inflates to more than the {limits.max_zip_total_mb} MB "
                                              "allowed for a zipped submission")
        plan.append((info, PurePosixPath(*parts)))
    # A file and a folder of the same name cannot both be written.
    files = {str(rel) for info, rel in plan if not info.is_dir()}
    for _, rel in plan:
        for parent in rel.parents:
            if str(parent) in files:
                raise CheckpointError(UNREADABLE, f"{display} holds {parent} both as a file and as a folder; zip "
                                                  "the submission again")
    return plan


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, display: str) -> None:
    """Stream one member out, never writing more than it declared (zipfile also checks the CRC)."""
    left = info.file_size
    try:
        with zf.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(min(MB, left + 1) or 1):
                left -= len(chunk)
                if left < 0:
                    raise CheckpointError(UNREADABLE, f"{display}: member {info.filename!r} inflates past the size "
                                                      "it declares, a decompression bomb")
                dst.write(chunk)
    except CheckpointError:
        target.unlink(missing_ok=True)
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as e:
        target.unlink(missing_ok=True)
        raise CheckpointError(UNREADABLE, f"{display}: member {info.filename!r} cannot be unpacked ({_short(e)}); "
                                          "zip the submission again") from None


def _read_zipped_submission(path: Path, real: Path, display: str, limits: Limits) -> RawCheckpoint:
    with tempfile.TemporaryDirectory(prefix="harness-unzip-") as tmp:
        folder = extract_zip(real, Path(tmp) / "submission", limits)
        found = find_weights(folder)
        if not found:
            raise CheckpointError(MISSING, f"{display} holds no weights file ({', '.join(WEIGHT_SUFFIXES)}) and no "
                                           "Hugging Face model folder")
        if len(found) > 1:
            names = ", ".join(p.relative_to(folder).as_posix() for p in found[:5])
            raise CheckpointError(MISSING, f"{display} holds several weights ({names}); name the one to grade "
                                           "with `checkpoint = ...` in submission.toml")
        inner = read_checkpoint(found[0], root=folder, limits=limits)
        rel = found[0].relative_to(folder).as_posix()
        return RawCheckpoint(path=f"{path}!{rel}", sha256=inner.sha256, format=inner.format, tensors=inner.tensors,
                             config=inner.config, meta=inner.meta, refused_globals=inner.refused_globals,
                             nonfinite=inner.nonfinite, warnings=inner.warnings)


# ==================================================================================================
# Hugging Face folders
# ==================================================================================================


# A config that training code writes next to a single weights file: CS336's staff reference saves
# `model_config.json` beside `model.pt` (its `from_pretrained` reads the pair).
SIDECAR_CONFIGS = ("model_config.json",)


def _sidecar_config(path: Path, real: Path, root: Path | None, display: str) -> tuple[dict, str | None]:
    """The plain config of a JSON that training code writes beside the weights file (it wins over one inside
    the file), and its name: nanochat's checkpoint_manager pairs model_000100.pt with meta_000100.json,
    CS336's staff reference model.pt with model_config.json."""
    step = re.fullmatch(r"model_(\d+)\.pt", path.name)
    for name in ([f"meta_{step.group(1)}.json"] if step else []) + list(SIDECAR_CONFIGS):
        side = path.parent / name
        if not (side.is_file() or side.is_symlink()) or side.resolve() == real:
            continue
        side_display = f"{display.rsplit('/', 1)[0]}/{name}" if "/" in display else name
        value = _read_json_file(_contained(side, root, side_display), side_display)
        if not isinstance(value, dict):
            raise CheckpointError(UNREADABLE, f"{side_display} must hold a JSON object")
        return _plain(value, _Budget(50000)), name
    return {}, None


def _is_hf_folder(folder: Path) -> bool:
    try:
        return (folder / HF_CONFIG).is_file() and any((folder / n).exists() or (folder / n).is_symlink()
                                                       for n in HF_WEIGHTS)
    except OSError:
        return False


def _read_json_file(path: Path, display: str) -> Any:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(UNREADABLE, f"{display} is larger than {MAX_JSON_BYTES // MB} MB, too large for a config")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(UNREADABLE, f"{display} is not valid JSON ({_short(e)}); fix it and resubmit") from None


def _read_hf_folder(path: Path, real: Path, root: Path | None, display: str, limits: Limits) -> RawCheckpoint:
    files: dict[str, Path] = {}  # relative name -> resolved file, for the fingerprint

    def member(name: str) -> Path:
        p = real / name
        rel_display = f"{display.rstrip('/')}/{name}"
        r = _contained(p, root, rel_display)  # without a root (a model folder, a cache snapshot), links may leave
        files[name] = r
        return r

    config = _read_json_file(member(HF_CONFIG), f"{display}/{HF_CONFIG}")
    if not isinstance(config, dict):
        raise CheckpointError(UNREADABLE, f"{display}/{HF_CONFIG} must hold a JSON object")
    config = _plain(config, _Budget(50000))  # NaN/Infinity, which Python's json accepts, become None
    present = [n for n in HF_WEIGHTS if (real / n).exists() or (real / n).is_symlink()]
    chosen = present[0]
    warnings = []
    if len(present) > 1 and not (chosen.endswith(".index.json") and present[1] == chosen[:-len(".index.json")]):
        warnings.append(f"{display} holds {' and '.join(present)}; {chosen} was read")
    meta: dict[str, Any] = {}
    if chosen.endswith(".index.json"):
        index = _read_json_file(member(chosen), f"{display}/{chosen}")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise CheckpointError(UNREADABLE, f"{display}/{chosen} has no weight_map of tensor names to shard files")
        if isinstance(index.get("metadata"), dict):
            meta["index_metadata"] = _plain(index["metadata"], _Budget(10000))
        shard_names = sorted(set(weight_map.values()))
        for name in shard_names:
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if not parts or name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
                raise CheckpointError(UNSAFE, f"{display}/{chosen} names shard {name!r} outside the model folder")
            if not (real / name).exists() and not (real / name).is_symlink():
                raise CheckpointError(UNREADABLE, f"{display}/{chosen} names shard {name}, which is missing")
    else:
        weight_map = None
        shard_names = [chosen]
    requests = []
    total = 0
    for name in shard_names:
        p = member(name)
        kind = _sniff(p, f"{display}/{name}", limits)
        if kind not in ("safetensors", "torch-zip", "torch-pickle"):
            raise CheckpointError(UNREADABLE, f"{display}/{name} is not a weights file")
        total += p.stat().st_size
        requests.append({"path": str(p), "kind": kind})
    raw = _run_reader({"display": display, "mode": "shards" if weight_map else "single", "files": requests,
                       "budget_bytes": _budget(total, limits)}, limits, display)
    if weight_map:
        missing = sorted(set(weight_map) - set(raw["tensors"]))
        if missing:
            raise CheckpointError(UNREADABLE, f"{display}/{chosen} lists {len(missing)} tensors the shards do not hold "
                                              f"(first: {missing[0]})")
    sha = fingerprint({name: sha256_file(p) for name, p in sorted(files.items())})
    return _finish(str(path), sha, "hf-folder", raw, config, meta, warnings)


# ==================================================================================================
# The child process
# ==================================================================================================

_BOOT = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
         "from harness.checkpoint.child import main; sys.exit(main())")
EXIT_MEMORY = 3


def _child_env(tmp: Path) -> dict[str, str]:
    """A scrubbed environment: no TORCH_FORCE_* switch, no CUDA, one thread, HOME in the scratch folder."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "TMPDIR": str(tmp),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
    if os.environ.get("LD_LIBRARY_PATH"):
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    return env


def _child_sys_path() -> list[str]:
    """The harness package's parent first, then this interpreter's absolute path entries: the child runs
    with -I (no cwd, no PYTHON* variables), so it finds exactly what this process finds."""
    pkg_parent = str(Path(__file__).resolve().parents[2])
    rest = [p for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p) and p != pkg_parent]
    return [pkg_parent, *rest]


def _run_reader(request: dict, limits: Limits, display: str) -> dict:
    """Run the child on `request`; return {"tensors", "config", "meta", "refused_globals", "warnings"}."""
    request = {**request, "limits": {"memory_mb": limits.memory_mb, "cpu_seconds": limits.cpu_seconds}}
    with tempfile.TemporaryDirectory(prefix="harness-read-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "request.json").write_text(json.dumps(request), encoding="utf-8")
        with open(tmp / "stderr.txt", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-c", _BOOT, json.dumps(_child_sys_path())], cwd=tmp,
                                    env=_child_env(tmp), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True, close_fds=True)
            code, cpu, timed_out = _wait(proc, limits.wall_seconds)
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
                                              + (f": {_short(tail[-1])})" if tail else ")"))
        tensors = _load_child_tensors(tmp / "tensors.safetensors", result, display, request["budget_bytes"])
    return {"tensors": tensors, "config": _dict(result.get("config")), "meta": _dict(result.get("meta")),
            "refused_globals": sorted(str(x) for x in result.get("refused_globals") or []),
            "warnings": [str(x) for x in result.get("warnings") or []]}


def _wait(proc: subprocess.Popen, wall_seconds: float) -> tuple[int | None, float, bool]:
    """Wait for the child up to the wall limit (then kill its process group); return its exit code
    (negative: killed by that signal), the CPU seconds it used, and whether it ran out of time."""
    deadline = time.monotonic() + wall_seconds
    delay = 0.01
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, usage.ru_utime + usage.ru_stime, False
            if time.monotonic() >= deadline:
                _kill_group(proc)
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, usage.ru_utime + usage.ru_stime, True
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)
    except BaseException:
        if proc.returncode is None:
            _kill_group(proc)
            try:
                os.wait4(proc.pid, 0)
            except ChildProcessError:
                pass
            proc.returncode = -signal.SIGKILL
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


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


def _finish(path: str, sha: str, fmt: str, raw: dict, config: dict, meta: dict,
            warnings: list[str] | None = None) -> RawCheckpoint:
    tensors = raw["tensors"]
    if not tensors:
        raise CheckpointError(UNREADABLE, f"{path} holds no model weights (no tensors outside optimizer state); "
                                          "save model.state_dict()")
    nonfinite = []
    for name, t in tensors.items():
        if t.dtype not in ALLOWED_DTYPES or t.layout != torch.strided or t.device.type != "cpu":
            raise CheckpointError(UNREADABLE, f"{path}: tensor {name!r} has unsupported type {t.dtype}/{t.layout}")
        if not t.is_contiguous():
            tensors[name] = t.contiguous()
        if t.is_floating_point() and t.numel() and not _all_finite(t):
            nonfinite.append(name)
    merged_config = {**raw["config"], **config} if config else raw["config"]
    merged_meta = {**raw["meta"], **meta}
    return RawCheckpoint(path=path, sha256=sha, format=fmt, tensors=tensors, config=merged_config, meta=merged_meta,
                         refused_globals=raw["refused_globals"], nonfinite=sorted(nonfinite),
                         warnings=[*(warnings or []), *raw["warnings"]])


def _all_finite(t: torch.Tensor) -> bool:
    try:
        return bool(torch.isfinite(t).all())
    except (RuntimeError, NotImplementedError):  # float8 kernels missing on some builds
        return bool(torch.isfinite(t.to(torch.float32)).all())


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _short(e: BaseException | str, limit: int = 160) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"\x1b\[[0-9;]*m|[\x00-\x1f]", "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ==================================================================================================
# Pickle globals: what is data and what is code
# ==================================================================================================

# Modules whose globals are all code: a pickle naming any of them wants to run something.
DENY_MODULES = (
    "os", "posix", "nt", "sys", "subprocess", "commands", "_posixsubprocess", "importlib", "imp", "runpy", "shutil",
    "socket", "pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal", "ctypes", "_ctypes", "pty",
    "webbrowser", "multiprocessing", "_thread", "asyncio", "urllib", "urllib2", "requests", "http", "ftplib",
    "smtplib", "telnetlib", "pdb", "bdb", "timeit", "cProfile", "doctest", "idlelib", "site", "sysconfig",
    "distutils", "setuptools", "pip", "ensurepip", "venv", "zipimport", "pkgutil", "posixpath", "ntpath",
    "genericpath", "shelve", "dbm", "sqlite3", "linecache", "atexit", "compileall", "py_compile", "xmlrpc",
    "IPython", "torch.hub", "torch.jit", "torch.package", "torch.utils.cpp_extension", "torch.distributed",
    "torch._dynamo", "torch._inductor", "torch.fx", "torch.multiprocessing", "torch.serialization", "torch.ops",
    "torch._ops", "torch.library", "torch.onnx", "torch.compiler", "numpy.testing", "numpy.f2py",
    "numpy.distutils", "numpy.lib.npyio",
)
# Standard modules whose names a student's own package may share (`code/`, `types.py`, `logging.py`):
# their functions, and these classes, are code; a capitalised class from such a module may be data.
SOFT_DENY_MODULES = (
    "code", "codeop", "types", "io", "_io", "functools", "operator", "_operator", "tempfile", "signal",
    "socketserver", "trace", "profile", "inspect", "gc", "weakref", "select", "mmap", "resource", "fcntl",
    "termios", "glob", "fileinput", "logging", "ast", "zipfile", "tarfile", "gzip", "bz2", "lzma", "zlib",
    "platform", "getpass", "ssl", "yaml", "threading",
)
CODE_CLASSES = frozenset({"CodeType", "FunctionType", "LambdaType", "MethodType", "BuiltinFunctionType",
                          "ModuleType", "Thread", "Timer", "Popen", "ZipFile", "TarFile", "FileIO", "BufferedReader",
                          "BufferedWriter", "TextIOWrapper", "InteractiveInterpreter", "InteractiveConsole",
                          "Loader", "UnsafeLoader", "FullLoader"})
DENY_NAMES = frozenset({"torch.load", "torch.save", "torch.compile", "numpy.load", "numpy.save", "numpy.fromfile",
                        "numpy.loadtxt", "numpy.genfromtxt", "copyreg.__newobj__"})
SAFE_BUILTINS = frozenset({"builtins." + n for n in (
    "slice", "range", "frozenset", "object", "int", "float", "str", "bool", "tuple", "list", "dict", "bytes",
    "complex", "set", "bytearray", "NoneType", "Ellipsis", "NotImplemented")})
# Modules whose functions a pickle may call to rebuild plain data (a stubbed call records, runs nothing).
CALL_OK_MODULES = ("numpy", "datetime", "collections", "pathlib", "decimal", "fractions", "uuid", "enum", "copyreg")


def normalise_global(name: str) -> str:
    """Python 2 spellings to Python 3 (`commands.Popen` is `subprocess.Popen`), as pickle would import them."""
    module, _, attr = name.rpartition(".")
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{attr}"


def _under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def unsafe_reason(name: str) -> str | None:
    """Why the pickle global `name` is code (None: it may stand for data, and can be read through a stub)."""
    full = normalise_global(name)
    module, _, attr = full.rpartition(".")
    if module in ("builtins", "__builtin__"):
        return None if full in SAFE_BUILTINS else f"{full} is a Python built-in function"
    if full in DENY_NAMES or _under(module, DENY_MODULES) or _under(full, DENY_MODULES):
        return f"{full} runs code"
    if _under(module, SOFT_DENY_MODULES) and (not attr[:1].isupper() or attr in CODE_CLASSES):
        return f"{full} runs code"
    return None


def called_unsafely(name: str) -> bool:
    """A stubbed global the pickle *called* (REDUCE) that looks like a function rather than a class."""
    full = normalise_global(name)
    module, _, attr = full.rpartition(".")
    if full in SAFE_BUILTINS or _under(module, CALL_OK_MODULES):
        return False
    return not attr[:1].isupper()


def scan_pickle(data: bytes | io.BufferedIOBase) -> tuple[set[str], set[str]]:
    """The globals one pickle names and the opcodes it uses, by parsing it (pickletools), never running it.
    Names are spelled as torch's weights-only unpickler looks them up. Unlike torch's own scan
    (`get_unsafe_globals_in_checkpoint`, zip files and protocol-2 opcodes only), this also reads legacy
    files, tar members and protocol-4 pickles (STACK_GLOBAL), so a payload there is named, not just refused."""
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    names: set[str] = set()
    ops: set[str] = set()
    strings: list[Any] = []
    memo: dict[Any, Any] = {}
    for op, arg, _ in pickletools.genops(stream):
        ops.add(op.name)
        if op.name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            if (module, attr) in NAME_MAPPING:
                module, attr = NAME_MAPPING[(module, attr)]
            elif module in IMPORT_MAPPING:
                module = IMPORT_MAPPING[module]
            names.add(f"{module}.{attr}")
            strings.append(None)
        elif op.name == "STACK_GLOBAL":
            if len(strings) >= 2 and isinstance(strings[-1], str) and isinstance(strings[-2], str):
                names.add(f"{strings[-2]}.{strings[-1]}")
            else:
                names.add("<unknown>.<stack_global>")
        elif isinstance(arg, str) and op.name not in ("PROTO",):
            strings.append(arg)
        elif op.name in ("MEMOIZE",):
            memo[len(memo)] = strings[-1] if strings else None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = strings[-1] if strings else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            strings.append(memo.get(arg))
        else:
            strings.append(None)
        if len(strings) > 64:
            del strings[:-8]
    return names, ops


# ==================================================================================================
# Stubs: inert stand-ins for the globals the safe unpickler refuses
# ==================================================================================================


class Stub:
    """An inert stand-in for a refused global. The unpickler may create one (`__new__`, REDUCE calls
    `__init__` too) and hand it state (`__setstate__`): all three only record. Nothing of the
    student's is ever imported or called."""

    _h_name = "?"
    _h_instances: list
    dump_patches = False  # what torch's legacy loader asks of a module class

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        d = self.__dict__
        d["_h_args"] = args
        d["_h_state"] = None
        d["_h_called"] = False
        cls._h_instances.append(self)
        return self

    def __init__(self, *args, **kwargs):
        self.__dict__["_h_called"] = True  # only a REDUCE (a call) runs __init__; NEWOBJ does not

    def __setstate__(self, state):
        self.__dict__["_h_state"] = state

    def __reduce__(self):
        raise TypeError("a harness stub is never pickled")

    def __repr__(self) -> str:
        return f"<stub {self._h_name}>"


def make_stub(name: str) -> type[Stub]:
    """One fresh stub class per qualified name."""
    module, _, attr = name.rpartition(".")
    cls = type(attr or "Stub", (Stub,), {"_h_name": name, "_h_instances": [], "__module__": "harness.stubs",
                                         "__qualname__": attr or "Stub"})
    return cls


def _is_stub(x: Any) -> bool:
    return isinstance(x, Stub)


def _is_module(x: Any) -> bool:
    """A stubbed nn.Module: its state holds `_parameters` and `_modules`."""
    if not isinstance(x, Stub):
        return False
    state = x._h_state
    return (isinstance(state, dict) and isinstance(state.get("_parameters"), dict)
            and isinstance(state.get("_modules"), dict))


_NP_CODES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "?", "b", "B", "h", "H", "i",
             "I", "l", "L", "q", "Q", "e", "f", "d"}


def _np_dtype(d: Any):
    import numpy as np

    if not (isinstance(d, Stub) and d._h_name == "numpy.dtype"):
        return None
    code = d._h_args[0] if d._h_args and isinstance(d._h_args[0], str) else None
    if code not in _NP_CODES:
        return None
    state = d._h_state
    endian = state[1] if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">") else None
    dt = np.dtype(code)
    return dt.newbyteorder(endian) if endian else dt


def _decode(x: Any) -> Any:
    """NumPy scalars and arrays rebuilt from their stubs' recorded bytes (numeric dtypes only):
    scalars as Python numbers, arrays as tensors. Anything else is returned as it is."""
    if not isinstance(x, Stub):
        return x
    import numpy as np

    name = x._h_name
    try:
        if name.endswith(".multiarray.scalar") and len(x._h_args) == 2:
            dt = _np_dtype(x._h_args[0])
            data = x._h_args[1]
            if dt is not None and isinstance(data, bytes) and len(data) == dt.itemsize:
                return np.frombuffer(data, dtype=dt, count=1)[0].item()
        elif name.endswith(".multiarray._reconstruct"):
            state = x._h_state
            if isinstance(state, tuple) and len(state) == 5:
                _, shape, dtype, fortran, raw = state
                dt = _np_dtype(dtype)
                if (dt is not None and isinstance(raw, bytes) and isinstance(shape, tuple)
                        and all(type(s) is int and s >= 0 for s in shape)
                        and len(raw) == math.prod(shape) * dt.itemsize):
                    arr = np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C")
                    return torch.from_numpy(np.ascontiguousarray(arr.astype(dt.newbyteorder("="))))
        elif name == "numpy.dtype":
            dt = _np_dtype(x)
            return str(dt) if dt is not None else None
    except (ValueError, TypeError):
        return None
    return x


# ==================================================================================================
# Unwrapping: whatever was saved -> one flat state dict, a config and metadata
# ==================================================================================================

PRIMARY_KEYS = ("model", "model_state_dict", "state_dict", "model_state", "net", "network", "module", "weights",
                "params", "parameters", "model_weights", "model_params", "student")
EMA_KEYS = ("ema", "model_ema", "ema_model", "ema_state_dict", "ema_state", "swa_model", "averaged_model", "shadow",
            "ema_weights", "ema_params")
OPTIMIZER_KEYS = frozenset({"optimizer", "optimizer_state_dict", "optim", "optimizer_state", "optimizers",
                            "optimizer_states", "opt_state", "scheduler", "lr_scheduler", "scheduler_state_dict",
                            "lr_schedulers", "scaler", "grad_scaler", "scaler_state_dict", "amp", "rng_state",
                            "rng_states", "random_state", "callbacks", "loops", "trainer_state"})
CONFIG_KEYS = ("model_args", "model_config", "model_cfg", "config", "cfg", "hparams", "hyper_parameters",
               "hyperparameters", "hyper_params", "model_kwargs", "arch", "architecture", "args", "opt", "params",
               "kwargs", "settings", "train_config")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
MAX_DEPTH = 24


class _Budget:
    """How many values a conversion may still visit: shared references (a list holding the same list
    twice, thirty times over) would otherwise unfold into billions."""

    def __init__(self, n: int):
        self.left = n
        self.hit = False

    def take(self) -> bool:
        self.left -= 1
        if self.left < 0:
            self.hit = True
        return self.left >= 0


def _plain(v: Any, budget: _Budget, depth: int = 0) -> Any:
    """`v` as JSON types: stubs as {"__class__": name, attributes...}, stub classes (a function or class
    stored by reference, e.g. an activation) as their qualified name, small tensors as numbers or
    lists, NaN/Inf as None."""
    if not budget.take() or depth > MAX_DEPTH:
        budget.hit = True
        return None
    v = _decode(v)
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v if -(2**63) <= v < 2**64 else str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, str):
        budget.left -= min(len(v), 10000) // 100  # long strings cost more: the answer must stay small
        return v if len(v) <= 10000 else v[:10000] + "…"
    if isinstance(v, complex):
        return None
    if isinstance(v, torch.Tensor):
        if v.layout != torch.strided or v.device.type != "cpu" or v.dtype not in ALLOWED_DTYPES:
            return {"tensor": {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}}
        if v.numel() == 1 and v.dim() <= 1:
            return _plain(v.reshape(()).item(), budget, depth + 1)
        if v.numel() <= 4096 and v.dim() == 1:
            return [_plain(x, budget, depth + 1) for x in v.tolist()]
        return {"tensor": {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}}
    if isinstance(v, (torch.dtype, torch.device)):
        return str(v).replace("torch.", "")
    if isinstance(v, torch.Size):
        return list(v)
    if isinstance(v, (bytes, bytearray)):
        return None
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if isinstance(k, (str, int, float, bool)) or k is None:
                if budget.left <= 0:
                    budget.hit = True
                    break
                out[str(k)] = _plain(x, budget, depth + 1)
        return out
    if isinstance(v, (list, tuple)):
        out_list = []
        for x in v:
            if budget.left <= 0:
                budget.hit = True
                break
            out_list.append(_plain(x, budget, depth + 1))
        return out_list
    if isinstance(v, (set, frozenset)):
        items = [_plain(x, budget, depth + 1) for x in list(v)[:10000]]
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True, default=str))
    if isinstance(v, type) and issubclass(v, Stub):
        return v._h_name
    if isinstance(v, Stub):
        return _stub_plain(v, budget, depth)
    return None


def _stub_attrs(s: Stub) -> dict | None:
    """The attributes a stub was given: its state dict (or dict + slots), None when it has none."""
    state = s._h_state
    if isinstance(state, dict):
        return state
    if isinstance(state, tuple) and len(state) == 2 and all(isinstance(x, dict) or x is None for x in state):
        return {**(state[0] or {}), **(state[1] or {})}
    return None


def _stub_plain(s: Stub, budget: _Budget, depth: int) -> Any:
    name = s._h_name
    if _is_module(s):
        return {"__class__": name, **_module_attrs(s, budget, depth)}
    attrs = _stub_attrs(s)
    if attrs is not None:
        return {"__class__": name, **{str(k): _plain(v, budget, depth + 1) for k, v in attrs.items()
                                      if isinstance(k, str)}}
    args = s._h_args
    if s._h_state is None and s._h_called:
        if "Path" in name and args and all(isinstance(a, str) for a in args):
            return str(PurePosixPath(*args))
        if len(args) == 1:  # an Enum member, a single-value wrapper
            return _plain(args[0], budget, depth + 1)
    out: dict[str, Any] = {"__class__": name}
    if args:
        out["args"] = _plain(list(args), budget, depth + 1)
    if s._h_state is not None:
        out["state"] = _plain(s._h_state, budget, depth + 1)
    return out


def _module_attrs(m: Stub, budget: _Budget, depth: int = 0) -> dict[str, Any]:
    """A stubbed module's plain attributes (`nhead`, `norm_first`, `activation`, `eps`, ...): public
    attributes other than `training`, without submodules or large tensors."""
    out: dict[str, Any] = {}
    for k, v in m._h_state.items():
        if not isinstance(k, str) or k.startswith("_") or k == "training" or _is_module(v):
            continue
        if isinstance(v, torch.Tensor) and v.numel() > 1:
            continue
        out[k] = _plain(v, budget, depth + 1)
    return out


def _as_tensor(v: Any) -> torch.Tensor | None:
    v = _decode(v)
    return v if isinstance(v, torch.Tensor) else None


def _holds_weights(v: Any) -> bool:
    """A tensor with dimensions, or a dict holding one: weights, not metadata."""
    t = _as_tensor(v)
    if t is not None:
        return t.dim() > 0
    return isinstance(v, dict) and any((t := _as_tensor(x)) is not None and t.dim() > 0 for x in v.values())


def _is_optimizer_state(d: Any) -> bool:
    return isinstance(d, dict) and "state" in d and "param_groups" in d


def _peel_wrappers(m: Stub, notes: list[str]) -> Stub:
    """DataParallel / DistributedDataParallel / torch.compile wrappers around a pickled module."""
    while True:
        state = m._h_state
        children = {k: v for k, v in state["_modules"].items() if _is_module(v)}
        own = [k for k, v in {**state["_parameters"], **(state.get("_buffers") or {})}.items() if v is not None]
        if len(children) == 1 and not own and next(iter(children)) in ("module", "_orig_mod"):
            notes.append(f"unwrapped {m._h_name}")
            m = next(iter(children.values()))
            continue
        return m


def flatten_module(m: Stub, budget: _Budget | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A stubbed nn.Module tree as (state dict with dotted keys, {dotted module path: attributes}):
    parameters, then persistent buffers, then children, as `state_dict()` orders them."""
    budget = budget or _Budget(200000)
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, Any] = {}
    stack: list[tuple[str, Stub, int]] = [("", m, 0)]
    while stack:
        prefix, mod, depth = stack.pop()
        if depth > 64 or not budget.take():
            budget.hit = True
            continue
        state = mod._h_state
        nonpersistent = state.get("_non_persistent_buffers_set")
        nonpersistent = nonpersistent if isinstance(nonpersistent, (set, frozenset)) else set()
        for k, v in state["_parameters"].items():
            t = _as_tensor(v)
            if isinstance(k, str) and t is not None:
                tensors[prefix + k] = t
        buffers = state.get("_buffers")
        for k, v in (buffers.items() if isinstance(buffers, dict) else ()):
            t = _as_tensor(v)
            if isinstance(k, str) and t is not None and k not in nonpersistent:
                tensors[prefix + k] = t
        modules[prefix[:-1]] = {"class": mod._h_name, **_module_attrs(mod, budget)}
        children = [(k, v) for k, v in state["_modules"].items() if isinstance(k, str) and _is_module(v)]
        for k, v in reversed(children):
            stack.append((f"{prefix}{k}.", v, depth + 1))
    return tensors, modules


def strip_prefixes(names: list[str]) -> tuple[dict[str, str], list[str]]:
    """{old name: new name} without `_orig_mod.` (torch.compile, anywhere in a name) and a leading
    `module.` shared by every name (DataParallel / DDP), in either order; and what was removed."""
    removed: list[str] = []
    new = {}
    for n in names:
        parts = n.split(".")
        kept = [p for p in parts if p != "_orig_mod"] if len(parts) > 1 else parts
        new[n] = ".".join(kept)
    if any(new[n] != n for n in names):
        removed.append("_orig_mod.")
    while new and all(v.startswith("module.") and len(v) > len("module.") for v in new.values()):
        new = {k: v[len("module."):] for k, v in new.items()}
        removed.append("module.")
    if len(set(new.values())) != len(new):
        return {n: n for n in names}, []
    return new, removed


@dataclass
class Unwrapped:
    tensors: dict[str, torch.Tensor]
    config: dict
    meta: dict
    warnings: list[str]


def _path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path) if path else "(top level)"


def _rank(path: tuple) -> int:
    if not path:
        return 1
    parts = [str(p).lower() for p in path]
    if any(p in EMA_KEYS or "ema" in p.split("_") for p in parts):
        return 2
    return 0 if parts[-1] in PRIMARY_KEYS else 3


def unwrap(obj: Any) -> Unwrapped:
    """Find the model weights in whatever a training script saved, beside optimizer state and configs."""
    warnings: list[str] = []
    notes: dict[str, Any] = {}
    if isinstance(obj, torch.Tensor):
        raise CheckpointError(UNREADABLE, "the file holds a single tensor, not a state dict; save "
                                          "model.state_dict()")
    candidates = []  # (path, tensors, module configs or None)
    queue: deque[tuple[tuple, Any]] = deque([((), obj)])
    seen: set[int] = set()
    visits = 0
    while queue and visits < 100000:
        path, node = queue.popleft()
        visits += 1
        if id(node) in seen or len(path) > 6:
            continue
        seen.add(id(node))
        if _is_module(node):
            peeled = _peel_wrappers(node, warnings)
            tensors, modules = flatten_module(peeled)
            if tensors:
                candidates.append((path, tensors, modules, peeled))
            continue
        if isinstance(node, dict):
            if _is_optimizer_state(node):
                continue
            tensors = {}
            for k, v in node.items():
                t = _as_tensor(v)
                if isinstance(k, str) and t is not None:
                    tensors[k] = t
            if tensors:
                candidates.append((path, tensors, None, None))
            children = [(k, v) for k, v in node.items() if isinstance(k, str) and k.lower() not in OPTIMIZER_KEYS]
        elif isinstance(node, (list, tuple)) and len(path) < 2:
            children = [(str(i), v) for i, v in enumerate(node[:64])]
        else:
            continue
        for k, v in children:
            if isinstance(v, (dict, list, tuple)) or _is_module(v):
                queue.append((path + (k,), v))
    if not candidates:
        raise CheckpointError(UNREADABLE, "the file holds no model weights (no named tensors outside optimizer "
                                          "state); save model.state_dict()")
    sizes = [sum(t.numel() for t in c[1].values()) for c in candidates]
    biggest = max(sizes)
    eligible = [(c, s) for c, s in zip(candidates, sizes) if s * 2 >= biggest]
    eligible.sort(key=lambda cs: (_rank(cs[0][0]), -cs[1], len(cs[0][0]), _path_str(cs[0][0])))
    (path, tensors, modules, module), _ = eligible[0]
    others = [_path_str(c[0]) for c, _ in eligible[1:]]
    if others:
        warnings.append(f"the file also holds weights at {', '.join(others[:3])}; the weights at {_path_str(path)} "
                        "were read")
    notes["weights_at"] = _path_str(path)

    renamed, removed = strip_prefixes(list(tensors))
    tensors = {renamed[k]: t for k, t in tensors.items()}
    if removed:
        notes["prefixes_removed"] = removed

    config: dict[str, Any] = {}
    sources: list[str] = []
    cfg_budget = _Budget(50000)
    if module is not None:
        config.update(_module_attrs(module, cfg_budget))
        mod_renamed, _ = strip_prefixes(list(modules)) if modules else ({}, [])
        config["modules"] = {mod_renamed.get(k, k): v for k, v in modules.items()}
        sources.append(f"{_path_str(path)} ({module._h_name})")
    # Configs stored beside the weights: in the top-level dict and in each dict on the way to them.
    holders = [obj]
    node = obj
    for key in path[:-1] if path else ():
        node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            holders.append(node)
    used_keys: set[str] = set()
    for holder in holders:
        if not isinstance(holder, dict):
            continue
        lowered = {k.lower(): k for k in holder if isinstance(k, str)}
        for key in CONFIG_KEYS:
            real_key = lowered.get(key)
            if real_key is None or (holder is obj and path and real_key == path[0]):
                continue
            value = holder[real_key]
            if _is_optimizer_state(value) or _is_module(value):
                continue
            if isinstance(value, dict) and any(_as_tensor(x) is not None for x in value.values()):
                continue
            if isinstance(value, str) and value.lstrip().startswith("{"):
                try:
                    value = json.loads(value)
                except ValueError:
                    continue
            if isinstance(value, Stub):
                attrs = _stub_attrs(value)
                plain = {str(k): _plain(v, cfg_budget) for k, v in (attrs or {}).items() if isinstance(k, str)}
                label = f"{real_key} ({value._h_name})"
            elif isinstance(value, dict):
                plain = _plain(value, cfg_budget)
                label = real_key
            else:
                continue
            if not plain:
                continue
            for k, v in plain.items():
                config.setdefault(k, v)
            sources.append(label)
            if holder is obj:
                used_keys.add(real_key)
    if sources:
        notes["config_from"] = sources
    if cfg_budget.hit:
        warnings.append("the stored config was too large or too deeply shared and was cut short")

    meta: dict[str, Any] = {}
    if isinstance(obj, dict):
        meta_budget = _Budget(200000)
        for k, v in obj.items():
            if not isinstance(k, str) or k in used_keys or (path and k == path[0]) or k.lower() in OPTIMIZER_KEYS:
                continue
            if _is_module(v) or _is_optimizer_state(v) or _holds_weights(v) or (not path and _as_tensor(v) is not None):
                continue
            meta[k] = _plain(v, meta_budget)
        if meta_budget.hit:
            warnings.append("the checkpoint's metadata was too large or too deeply shared and was cut short")
    meta["_harness"] = notes
    return Unwrapped(tensors=tensors, config=config, meta=meta, warnings=warnings)
