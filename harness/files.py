"""Hashing, canonical JSON and atomic writes: the small file helpers every stage shares."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def named_files(base: Path) -> list[tuple[str, Path]]:
    """A file as (its name, itself), or every file under a folder as (its name relative to the folder, it), in
    path order: what a fingerprint of files names, so that the same files anywhere give the same fingerprint."""
    if base.is_file():
        return [(base.name, base)]
    return [(f.relative_to(base).as_posix(), f) for f in sorted(p for p in base.rglob("*") if p.is_file())]


def sha256_files(named: Iterable[tuple[str, str | os.PathLike]]) -> str:
    """sha256 over files as (name, path) pairs, in the order given: each name and its content's sha256."""
    h = hashlib.sha256()
    for name, path in named:
        h.update(f"{name}\0{sha256_file(path)}\0".encode())
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace: the form every fingerprint hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def fingerprint(value: Any) -> str:
    return sha256_bytes(canonical_json(value).encode("utf-8"))


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, value: Any) -> Path:
    return write_atomic(path, pretty_json(value))
