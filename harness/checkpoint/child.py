"""The child process that reads untrusted checkpoints for `harness.checkpoint.read`.

Run by `harness.checkpoint.runner.run_reader` (forked from the reader's server, or started as `python -I`)
in an empty scratch folder with a scrubbed environment and its own session. It reads `request.json` there, limits itself before it touches
the checkpoint (CPU time, file size, no core dumps; after importing torch, whose own address space it
measures, the address space), reads, and writes `tensors.safetensors` and `result.json` beside it.
Expected failures are answers ({"ok": false, "code", "message"}); running out of memory is
{"ok": false, "limit": "memory"} or exit code 3; a limit that kills it is read from its exit signal.
"""

from __future__ import annotations

import json
import os
import re
import sys

from harness.checkpoint.limits import MB

EXIT_MEMORY = 3  # the exit code of a child that ran out of memory


def _setlimit(which: int, soft: int, hard: int | None = None) -> None:
    import resource

    try:
        resource.setrlimit(which, (soft, soft if hard is None else hard))
    except (ValueError, OSError):  # a lower hard limit already in place, or a platform without it
        pass


def _address_space() -> int | None:
    """This process's mapped address space (VmSize) in bytes; None where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _write(name: str, value: dict) -> None:
    with open(name, "w", encoding="utf-8") as f:
        json.dump(value, f, allow_nan=False)


def main(argv: list[str] | None = None) -> int:
    """Reads request.json in the current folder (`argv` is not used: the request carries everything)."""
    import resource

    from harness.processes import die_with_parent

    die_with_parent()  # a batch killed with -9 leaves no reader
    with open("request.json", encoding="utf-8") as f:
        request = json.load(f)
    limits = request["limits"]
    cpu = max(1, int(limits["cpu_seconds"]))
    _setlimit(resource.RLIMIT_CORE, 0, 0)
    _setlimit(resource.RLIMIT_CPU, cpu, cpu + 2)
    _setlimit(resource.RLIMIT_FSIZE, int(request["budget_bytes"]) + 64 * MB)
    for name in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_WEIGHTS_ONLY_LOAD"):
        os.environ.pop(name, None)

    import torch

    torch.set_num_threads(1)
    import numpy  # noqa: F401  (stubs decode NumPy scalars with it: import before the limit)
    import safetensors.torch  # noqa: F401

    # imported before the address-space limit is measured, as torch is
    from harness.checkpoint.errors import UNREADABLE, CheckpointError, short
    from harness.checkpoint.hf_folder import check_safetensors_header  # noqa: F401
    from harness.checkpoint.unwrap import unwrap  # noqa: F401

    base = _address_space()
    if base is not None:
        _setlimit(resource.RLIMIT_AS, base + int(limits["memory_mb"]) * MB)
    display = str(request.get("display") or "the checkpoint")
    try:
        result = _read(request, display)
    except CheckpointError as e:
        _write("result.json", {"ok": False, "code": e.code, "message": e.message})
        return 0
    except MemoryError:
        return _out_of_memory()
    except RecursionError:
        _write("result.json", {"ok": False, "code": UNREADABLE,
                               "message": f"{display} is nested too deeply to read; it is damaged or hostile"})
        return 0
    except Exception as e:  # noqa: BLE001 - whatever a hostile file provokes is an answer, not a crash
        if _is_allocation_failure(e):
            return _out_of_memory()
        _write("result.json", {"ok": False, "code": UNREADABLE,
                               "message": f"{display} could not be read ({short(e)}); save it again and resubmit"})
        return 0
    _write("result.json", result)
    return 0


def _out_of_memory() -> int:
    try:
        _write("result.json", {"ok": False, "limit": "memory"})
    except BaseException:  # noqa: BLE001
        pass
    return EXIT_MEMORY


def _is_allocation_failure(e: BaseException) -> bool:
    text = str(e)
    return any(s in text for s in ("can't allocate memory", "std::bad_alloc", "DefaultCPUAllocator", "out of memory",
                                   "Cannot allocate memory"))


def _read(request: dict, display: str) -> dict:
    from pathlib import Path

    import safetensors.torch

    from harness.checkpoint.errors import UNREADABLE, CheckpointError
    from harness.checkpoint.unwrap import unwrap
    refused: set[str] = set()
    warnings: list[str] = []
    tensors: dict = {}
    config: dict = {}
    meta: dict = {}
    files = request["files"]
    for i, spec in enumerate(files):
        path, kind = spec["path"], spec["kind"]
        where = display if len(files) == 1 else f"{display}/{Path(path).name}"
        if kind == "safetensors":
            obj, extra = _load_safetensors(Path(path), where)
        else:
            obj, names = _load_pickle(path, kind, where)
            refused |= names
            extra = {}
        try:
            unwrapped = unwrap(obj)
        except CheckpointError as e:
            raise CheckpointError(e.code, f"{where}: {e.message}") from None
        del obj
        if request["mode"] == "shards":
            clash = sorted(set(tensors) & set(unwrapped.tensors))
            if clash:
                raise CheckpointError(UNREADABLE, f"{where} repeats tensor {clash[0]!r} of another shard")
        tensors.update(unwrapped.tensors)
        for k, v in unwrapped.config.items():
            config.setdefault(k, v)
        if i == 0:
            meta.update(unwrapped.meta)
        meta.update(extra)
        warnings.extend(w for w in unwrapped.warnings if w not in warnings)
    tensors = _materialize(tensors, int(request["budget_bytes"]), display)
    safetensors.torch.save_file(tensors, "tensors.safetensors")
    result = {"ok": True, "tensor_names": list(tensors), "config": config, "meta": meta,
              "refused_globals": sorted(refused), "warnings": warnings}
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError):
        result["meta"] = {}
        result["warnings"].append("the checkpoint's metadata could not be kept")
    return result


def _load_safetensors(path, display: str):
    from safetensors import safe_open

    from harness.checkpoint.hf_folder import check_safetensors_header
    header = check_safetensors_header(path, display)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        obj = {name: f.get_tensor(name) for name in header if name != "__metadata__"}
    return obj, ({"safetensors_metadata": dict(metadata)} if metadata else {})


def _scan(path: str, kind: str, display: str) -> tuple[set[str], set[str]]:
    """Globals and opcodes of the pickle(s) torch.load will run, read the way torch reads them."""
    import mmap

    import torch

    from harness.checkpoint.errors import UNREADABLE, UNSAFE, CheckpointError, short
    from harness.checkpoint.pickle_policy import scan_pickle
    if kind == "torch-zip":
        with open(path, "rb") as fh:
            try:
                reader = torch.serialization._open_zipfile_reader(fh)
            except RuntimeError as e:
                raise CheckpointError(UNREADABLE, f"{display} is a damaged zip archive ({short(e)}); "
                                                  "save it again and resubmit") from None
            with reader as zf:
                if torch.serialization._is_torchscript_zip(zf):
                    raise CheckpointError(UNSAFE, f"{display} is a TorchScript archive (torch.jit.save), which "
                                                  "holds code; hand in a state_dict or a .safetensors file")
                if not zf.has_record("data.pkl"):
                    raise CheckpointError(UNREADABLE, f"{display} is a zip archive without data.pkl, not a "
                                                      "torch.save checkpoint")
                data = zf.get_record("data.pkl")
        try:
            return scan_pickle(data)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(UNREADABLE, f"{display} has a damaged pickle ({short(e)}); save it "
                                              "again and resubmit") from None
    # Legacy format: magic number, protocol, system info, the object, storage keys; then raw storages.
    names: set[str] = set()
    ops: set[str] = set()
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for i in range(5):
            try:
                n, o = scan_pickle(mm)
            except Exception as e:  # noqa: BLE001
                if i == 0:
                    raise CheckpointError(UNREADABLE, f"{display} is not a readable pickle ({short(e)}); "
                                                      "save it again and resubmit") from None
                break
            names |= n
            ops |= o
            if mm.tell() >= len(mm):
                break
    return names, ops


def _load_pickle(path: str, kind: str, display: str):
    import pickle
    import warnings

    import torch

    from harness.checkpoint.errors import UNREADABLE, UNSAFE, CheckpointError
    from harness.checkpoint.pickle_policy import (MAX_STUBBED_GLOBALS, SAFE_OPCODES, called_unsafely, make_stub,
                                                  normalise_global, unsafe_reason)
    names, ops = _scan(path, kind, display)
    allowed = set(torch._weights_only_unpickler._get_allowed_globals())
    bad = sorted({normalise_global(n) for n in names if n not in allowed and unsafe_reason(n)})
    if bad:
        raise CheckpointError(UNSAFE, f"{display} holds code in its pickle ({', '.join(bad[:4])}); it was "
                                      "not run. Hand in a state_dict saved with "
                                      "torch.save(model.state_dict(), ...)")
    unknown_ops = sorted(ops - SAFE_OPCODES)
    if unknown_ops:
        raise CheckpointError(UNREADABLE, f"{display} uses pickle features the safe loader does not read "
                                          f"({', '.join(unknown_ops[:3])}; a pickle_protocol above 2?); save it "
                                          "with torch.save's default protocol")
    refused = sorted(n for n in names if n not in allowed)
    if len(refused) > MAX_STUBBED_GLOBALS:
        raise CheckpointError(UNREADABLE, f"{display} names {len(refused)} classes and functions in its "
                                          "pickle, too many to read safely")
    stubs = {n: make_stub(n) for n in refused}
    obj = None
    for _ in range(50):
        try:
            with torch.serialization.safe_globals([(cls, n) for n, cls in stubs.items()]), \
                    warnings.catch_warnings(), open(path, "rb") as fh:
                warnings.simplefilter("ignore")
                obj = torch.load(fh, map_location="cpu", weights_only=True, mmap=False)
            break
        except pickle.UnpicklingError as e:
            text = str(e)
            m = re.search(r"GLOBAL (\S+) was not an allowed global", text)
            if m:
                name = m.group(1) if "." in m.group(1) else f"builtins.{m.group(1)}"
                if unsafe_reason(name) or name in stubs:
                    raise CheckpointError(UNSAFE, f"{display} holds code in its pickle ({name}); it was not "
                                                  "run. Hand in a state_dict") from None
                stubs[name] = make_stub(name)
                continue
            if "is blocked" in text:
                module = re.search(r"whose module (\S+) is blocked", text)
                raise CheckpointError(UNSAFE, f"{display} holds code in its pickle (module "
                                              f"{module.group(1) if module else '?'}); it was not run") from None
            raise CheckpointError(UNREADABLE, f"{display} was refused by the safe unpickler "
                                              f"({_unpickler_reason(text)}); save a plain state_dict") from None
        except (MemoryError, RecursionError):
            raise
        except Exception as e:  # noqa: BLE001
            if _is_allocation_failure(e):
                raise MemoryError from None
            raise CheckpointError(UNREADABLE, _load_failure(display, e)) from None
    else:
        raise CheckpointError(UNREADABLE, f"{display} names too many unknown classes to read")
    called = sorted({cls._h_name for cls in stubs.values() for inst in cls._h_instances
                     if inst._h_called and called_unsafely(cls._h_name)})
    if called:
        raise CheckpointError(UNSAFE, f"{display} calls {', '.join(called[:4])} in its pickle; it was not run. "
                                      "Hand in a state_dict saved with torch.save(model.state_dict(), ...)")
    return obj, set(stubs)


def _unpickler_reason(text: str) -> str:
    m = re.search(r"WeightsUnpickler error: (.*)", text)
    line = (m.group(1) if m else text.strip().splitlines()[-1] if text.strip() else "refused")
    from harness.checkpoint.errors import short

    return short(line, 120)


def _load_failure(display: str, e: BaseException) -> str:
    from harness.checkpoint.errors import short

    text = str(e)
    if "record size" in text and "does not match" in text:
        return (f"{display} declares a storage larger than the data it holds ({short(text, 120)}); it is damaged "
                "or hostile")
    if "not resizable" in text or "out of bounds for storage" in text or "setStorage" in text:
        return f"{display} has a tensor whose shape reaches past its storage; it is damaged or hostile"
    if "PytorchStreamReader" in text or "zip archive" in text or "central directory" in text:
        return f"{display} is a damaged or truncated checkpoint ({short(text, 120)}); save it again and resubmit"
    if "Invalid magic number" in text:
        return (f"{display} is a plain pickle, not a torch.save checkpoint; save it with "
                "torch.save(model.state_dict(), ...)")
    if "legacy .tar format" in text:
        return (f"{display} uses PyTorch's legacy .tar format, which cannot be read safely; save it again with "
                "torch.save")
    if isinstance(e, EOFError) or "Ran out of input" in text or "exhausted" in text:
        return f"{display} is truncated; save it again and resubmit"
    return f"{display} could not be read ({type(e).__name__}: {short(text, 120)}); save it again and resubmit"


def _materialize(tensors: dict, budget: int, display: str) -> dict:
    """Plain, contiguous CPU tensors that share no storage, within the byte budget for this file."""
    import torch

    from harness.checkpoint.errors import UNREADABLE, CheckpointError
    from harness.checkpoint.unwrap import ALLOWED_DTYPES
    out = {}
    used = 0
    seen: set[int] = set()
    for name, t in tensors.items():
        t = t.detach()
        if type(t) is not torch.Tensor:
            t = t.as_subclass(torch.Tensor)
        if t.layout != torch.strided or t.is_quantized or t.is_nested:
            raise CheckpointError(UNREADABLE, f"{display}: tensor {name!r} is {t.layout} or quantized; save "
                                              "dense weights")
        if t.device.type != "cpu":
            raise CheckpointError(UNREADABLE, f"{display}: tensor {name!r} has no data (device {t.device}); "
                                              "save real weights")
        if t.dtype not in ALLOWED_DTYPES:
            raise CheckpointError(UNREADABLE, f"{display}: tensor {name!r} has dtype {t.dtype}, which model "
                                              "weights do not use")
        nbytes = t.numel() * t.element_size()
        used += nbytes
        if used > budget:
            raise CheckpointError(UNREADABLE, f"{display}: tensor {name!r} of shape {list(t.shape)} would take "
                                              f"{nbytes / MB:.0f} MB, more than the file could hold (limit "
                                              f"{budget / MB:.0f} MB in all); it is damaged or hostile")
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if not (t.is_contiguous() and t.storage_offset() == 0 and storage.nbytes() == nbytes
                and (ptr == 0 or ptr not in seen)):
            t = t.clone(memory_format=torch.contiguous_format)
        if t.untyped_storage().data_ptr():
            seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


if __name__ == "__main__":
    sys.exit(main())
