"""Hugging Face's formats, read from their files without running anything: a model folder's
`config.json`, its weights file or sharded index (`weight_map`), and safetensors headers.

`open_hf_folder` says which files a folder's weights are in; `harness.checkpoint.read` reads them in
the child. `check_safetensors_header` validates a safetensors file's header against the file before
anything loads it (single files, shards, and the tensors the child hands back).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

from harness.checkpoint.errors import UNREADABLE, UNSAFE, CheckpointError, short
from harness.checkpoint.limits import MB
from harness.checkpoint.unwrap import Budget, plain

HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
MAX_JSON_BYTES = 16 * MB  # config.json, index files
MAX_SAFETENSORS_HEADER = 100 * MB  # the safetensors library's own limit
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                           "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "C64": 8}


def is_hf_folder(folder: Path) -> bool:
    try:
        return (folder / HF_CONFIG).is_file() and any((folder / n).exists() or (folder / n).is_symlink()
                                                       for n in HF_WEIGHTS)
    except OSError:
        return False


def read_json_file(path: Path, display: str) -> Any:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointError(UNREADABLE, f"{display} is larger than {MAX_JSON_BYTES // MB} MB, too large for a config")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(UNREADABLE, f"{display} is not valid JSON ({short(e)}); fix it and resubmit") from None


@dataclass(frozen=True)
class HFFolder:
    """A Hugging Face model folder as its files describe it, before any weights are read."""

    config: dict  # config.json, as JSON types
    meta: dict[str, Any]  # the index's metadata, if any
    warnings: list[str]
    chosen: str  # the weights file, or the index of shards, that is read
    weight_map: dict[str, str] | None  # tensor name -> shard file, for sharded weights
    shards: list[str]  # the weights files to read, in order

    def check_tensors(self, names: Iterable[str], display: str) -> None:
        """Every tensor the index lists is in the shards."""
        if self.weight_map:
            missing = sorted(set(self.weight_map) - set(names))
            if missing:
                raise CheckpointError(UNREADABLE, f"{display}/{self.chosen} lists {len(missing)} tensors the shards do "
                                                  f"not hold (first: {missing[0]})")


def open_hf_folder(real: Path, display: str, member: Callable[[str], Path]) -> HFFolder:
    """The folder at `real` read as far as its JSON files go. `member(name)` resolves a file of the folder
    (and refuses one whose symbolic link leaves the submission)."""
    config = read_json_file(member(HF_CONFIG), f"{display}/{HF_CONFIG}")
    if not isinstance(config, dict):
        raise CheckpointError(UNREADABLE, f"{display}/{HF_CONFIG} must hold a JSON object")
    config = plain(config, Budget(50000))  # NaN/Infinity, which Python's json accepts, become None
    present = [n for n in HF_WEIGHTS if (real / n).exists() or (real / n).is_symlink()]
    chosen = present[0]
    warnings = []
    if len(present) > 1 and not (chosen.endswith(".index.json") and present[1] == chosen[:-len(".index.json")]):
        warnings.append(f"{display} holds {' and '.join(present)}; {chosen} was read")
    meta: dict[str, Any] = {}
    if chosen.endswith(".index.json"):
        index = read_json_file(member(chosen), f"{display}/{chosen}")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise CheckpointError(UNREADABLE, f"{display}/{chosen} has no weight_map of tensor names to shard files")
        if isinstance(index.get("metadata"), dict):
            meta["index_metadata"] = plain(index["metadata"], Budget(10000))
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
    return HFFolder(config=config, meta=meta, warnings=warnings, chosen=chosen, weight_map=weight_map,
                    shards=shard_names)


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
        raise bad(f"its header is not JSON ({short(e)})") from None
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
