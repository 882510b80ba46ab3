"""Reading a student's checkpoint, which is untrusted input, into plain tensors and plain configs.

The entry point of `harness.checkpoint`: `read_checkpoint` takes a weights file, a Hugging Face folder,
a folder holding one weights file, or a zipped submission, and gives a `RawCheckpoint`. What can be
looked at without running anything happens here, in the grader's process: the file's kind by its
first bytes (never its name), symbolic links, and through `archive` (zip members, sizes and ratios)
and `hf_folder` (config.json, shards, safetensors headers). Everything that unpickles or inflates runs
in the reader child (`runner`, `child`) under limits; pickles go only through the safe unpickler with
the stubs and refusals of `pickle_policy`, and `unwrap` finds the weights in whatever was saved.

Tensors come back to this process as a safetensors file and configs as JSON, never as a pickle.
"""

from __future__ import annotations

import re
import stat
import struct
import tarfile
import tempfile
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.checkpoint import WEIGHT_SUFFIXES
from harness.checkpoint.archive import check_zip_sizes, extract_zip
from harness.checkpoint.errors import MISSING, UNREADABLE, UNSAFE, CheckpointError, short
from harness.checkpoint.hf_folder import check_safetensors_header, is_hf_folder, open_hf_folder, read_json_file
from harness.checkpoint.limits import MB, Limits, tensor_budget
from harness.checkpoint.pickle_policy import normalise_global, scan_pickle, unsafe_reason
from harness.checkpoint.runner import run_reader
from harness.checkpoint.unwrap import ALLOWED_DTYPES, Budget, plain
from harness.files import fingerprint, sha256_file

# Files a training framework writes beside the weights that are not model weights.
AUX_WEIGHT_NAMES = re.compile(r"^(optimizer|optim|scheduler|lr_scheduler|scaler|rng_state.*|training_args|"
                              r"trainer_state)(\.|_)", re.I)
SKIP_DIRS = {"__MACOSX", "__pycache__", "node_modules", ".git", ".ipynb_checkpoints"}


@dataclass(frozen=True)
class RawCheckpoint:
    """What reading gives: plain tensors, plain configs and metadata, and what was refused or odd."""

    path: str  # the weights file or folder that was read
    sha256: str  # the file's sha256; a folder: fingerprint of {relative path: sha256} of its weight+config files
    format: str  # "torch-zip" | "torch-legacy" | "safetensors" | "hf-folder"
    tensors: dict[str, torch.Tensor]  # flat model weights, prefixes stripped, CPU, contiguous
    config: dict  # merged plain configs found (JSON types only)
    meta: dict  # other plain top-level metadata (epoch, step, val_loss, ...), JSON types only
    refused_globals: list[str]  # qualified names read through inert stubs
    nonfinite: list[str]  # tensor names with NaN/Inf
    warnings: list[str] = field(default_factory=list)


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
        if is_hf_folder(real):
            return _read_hf_folder(path, real, root, display, limits)
        found = _one_weights(real, display, "; add the checkpoint to the submission")
        return read_checkpoint(found, root=root if root is not None else real, limits=limits)
    kind = _sniff(real, display, limits)
    if kind == "zip-archive":
        return _read_zipped_submission(path, real, display, limits)
    raw = run_reader({"display": display, "mode": "single", "files": [{"path": str(real), "kind": kind}],
                      "budget_bytes": tensor_budget(real.stat().st_size, limits)}, limits, display)
    fmt = "torch-zip" if kind == "torch-zip" else "torch-legacy" if kind == "torch-pickle" else "safetensors"
    config, sidecar = _sidecar_config(path, real, root, display)
    result = _finish(str(path), sha256_file(real), fmt, raw, config, {})
    if sidecar:
        notes = result.meta.setdefault("_harness", {})
        notes["config_from"] = [*notes.get("config_from", []), sidecar]
    return result


def find_weights(folder: Path) -> list[Path]:
    """Candidate weights in a submission folder: Hugging Face model folders (as one entry each) and
    weights files, shallowest first, then by path. Symbolic links are listed (reading refuses those
    that leave the submission) but never followed while walking."""
    folder = Path(folder)
    if is_hf_folder(folder):
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
                if name.lower().endswith(WEIGHT_SUFFIXES) or (entry.is_dir() and is_hf_folder(entry)):
                    found.append((depth, rel, entry))
                continue
            if entry.is_dir():
                if name in SKIP_DIRS or name.startswith("."):
                    continue
                if is_hf_folder(entry):
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
        raise CheckpointError(UNREADABLE, f"{display} is a damaged or truncated zip archive ({short(e)}); save "
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
        check_zip_sizes(infos, display, limits)
        return "torch-zip"
    if path.suffix.lower() == ".zip":
        return "zip-archive"
    raise CheckpointError(UNREADABLE, f"{display} is a zip archive but not a PyTorch checkpoint (no data.pkl); "
                                      "save the model with torch.save(model.state_dict(), ...)")


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


# ==================================================================================================
# Folders and zipped submissions holding one checkpoint
# ==================================================================================================


def _one_weights(folder: Path, display: str, advice: str = "") -> Path:
    """The one weights file or model folder in `folder`; none or several is an error."""
    found = find_weights(folder)
    if not found:
        raise CheckpointError(MISSING, f"{display} holds no weights file ({', '.join(WEIGHT_SUFFIXES)}) and no "
                                       f"Hugging Face model folder{advice}")
    if len(found) > 1:
        names = ", ".join(p.relative_to(folder).as_posix() for p in found[:5])
        raise CheckpointError(MISSING, f"{display} holds several weights ({names}); name the one to grade "
                                       "with `checkpoint = ...` in submission.toml")
    return found[0]


def _read_zipped_submission(path: Path, real: Path, display: str, limits: Limits) -> RawCheckpoint:
    with tempfile.TemporaryDirectory(prefix="harness-unzip-") as tmp:
        folder = extract_zip(real, Path(tmp) / "submission", limits)
        found = _one_weights(folder, display)
        inner = read_checkpoint(found, root=folder, limits=limits)
        rel = found.relative_to(folder).as_posix()
        return RawCheckpoint(path=f"{path}!{rel}", sha256=inner.sha256, format=inner.format, tensors=inner.tensors,
                             config=inner.config, meta=inner.meta, refused_globals=inner.refused_globals,
                             nonfinite=inner.nonfinite, warnings=inner.warnings)


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
        value = read_json_file(_contained(side, root, side_display), side_display)
        if not isinstance(value, dict):
            raise CheckpointError(UNREADABLE, f"{side_display} must hold a JSON object")
        return plain(value, Budget(50000)), name
    return {}, None


def _read_hf_folder(path: Path, real: Path, root: Path | None, display: str, limits: Limits) -> RawCheckpoint:
    """A Hugging Face model folder: its JSON files read by `open_hf_folder`, its weights files sniffed here
    and read in the child, all at once (shards) or the one weights file."""
    files: dict[str, Path] = {}  # relative name -> resolved file, for the fingerprint

    def member(name: str) -> Path:
        p = real / name
        rel_display = f"{display.rstrip('/')}/{name}"
        r = _contained(p, root, rel_display)  # without a root (a model folder, a cache snapshot), links may leave
        files[name] = r
        return r

    folder = open_hf_folder(real, display, member)
    requests = []
    total = 0
    for name in folder.shards:
        p = member(name)
        kind = _sniff(p, f"{display}/{name}", limits)
        if kind not in ("safetensors", "torch-zip", "torch-pickle"):
            raise CheckpointError(UNREADABLE, f"{display}/{name} is not a weights file")
        total += p.stat().st_size
        requests.append({"path": str(p), "kind": kind})
    raw = run_reader({"display": display, "mode": "shards" if folder.weight_map else "single", "files": requests,
                      "budget_bytes": tensor_budget(total, limits)}, limits, display)
    folder.check_tensors(raw["tensors"], display)
    sha = fingerprint({name: sha256_file(p) for name, p in sorted(files.items())})
    return _finish(str(path), sha, "hf-folder", raw, folder.config, folder.meta, folder.warnings)


# ==================================================================================================
# The child's answer, checked
# ==================================================================================================


def _finish(path: str, sha: str, fmt: str, raw: dict, config: dict, meta: dict,
            warnings: list[str] | None = None) -> RawCheckpoint:
    """The child's tensors checked once more here (dtype, layout, NaN/Inf) and merged with the configs read here."""
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
