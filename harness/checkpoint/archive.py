"""Archive safety: what a zip may hold before anything is unpacked or unpickled from it.

Every zip is judged by its central directory first: member names that stay inside the submission
(no absolute path, no `..`, no drive letter, no symbolic link, no duplicate, no file that is also a
folder), and sizes and compression ratios under the caps of `Limits` (a decompression bomb is refused
by what it declares, and `extract_zip` never writes more than a member declared).
"""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path, PurePosixPath

from harness.checkpoint.errors import MISSING, UNREADABLE, UNSAFE, CheckpointError, short
from harness.checkpoint.limits import MB, Limits


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
        raise CheckpointError(UNREADABLE, f"{display} is not a readable zip archive ({short(e)}); zip the "
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
                                                  f"({short(e)}); zip the submission again") from None
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


def check_zip_sizes(infos: list[zipfile.ZipInfo], display: str, limits: Limits) -> None:
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
        raise CheckpointError(UNREADABLE, f"{display}: member {info.filename!r} cannot be unpacked ({short(e)}); "
                                          "zip the submission again") from None
