"""Unwrapping: whatever a training script saved, turned into one flat state dict, a config and metadata.

Runs in the reader child on what the safe unpickler (or safetensors) gave: nanoGPT dicts, DDP and
`torch.compile` prefixes, optimizer state beside the weights, EMA copies, a whole pickled `nn.Module`
read through stubs, configs as dicts or objects. `plain` turns any such value into JSON types, within
a budget, so that what crosses back to the grader is data.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import torch

from harness.checkpoint.errors import UNREADABLE, CheckpointError
from harness.checkpoint.pickle_policy import Stub, decode, is_module

# The dtypes model weights use; a tensor of any other is refused (or, in metadata, described by shape).
ALLOWED_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                            torch.float8_e5m2, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                            torch.bool, torch.uint16, torch.uint32, torch.uint64})

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
MAX_DEPTH = 24


class Budget:
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


def plain(v: Any, budget: Budget, depth: int = 0) -> Any:
    """`v` as JSON types: stubs as {"__class__": name, attributes...}, stub classes (a function or class
    stored by reference, e.g. an activation) as their qualified name, small tensors as numbers or
    lists, NaN/Inf as None."""
    if not budget.take() or depth > MAX_DEPTH:
        budget.hit = True
        return None
    v = decode(v)
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
            return plain(v.reshape(()).item(), budget, depth + 1)
        if v.numel() <= 4096 and v.dim() == 1:
            return [plain(x, budget, depth + 1) for x in v.tolist()]
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
                out[str(k)] = plain(x, budget, depth + 1)
        return out
    if isinstance(v, (list, tuple)):
        out_list = []
        for x in v:
            if budget.left <= 0:
                budget.hit = True
                break
            out_list.append(plain(x, budget, depth + 1))
        return out_list
    if isinstance(v, (set, frozenset)):
        items = [plain(x, budget, depth + 1) for x in list(v)[:10000]]
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


def _stub_plain(s: Stub, budget: Budget, depth: int) -> Any:
    name = s._h_name
    if is_module(s):
        return {"__class__": name, **_module_attrs(s, budget, depth)}
    attrs = _stub_attrs(s)
    if attrs is not None:
        return {"__class__": name, **{str(k): plain(v, budget, depth + 1) for k, v in attrs.items()
                                      if isinstance(k, str)}}
    args = s._h_args
    if s._h_state is None and s._h_called:
        if "Path" in name and args and all(isinstance(a, str) for a in args):
            return str(PurePosixPath(*args))
        if len(args) == 1:  # an Enum member, a single-value wrapper
            return plain(args[0], budget, depth + 1)
    out: dict[str, Any] = {"__class__": name}
    if args:
        out["args"] = plain(list(args), budget, depth + 1)
    if s._h_state is not None:
        out["state"] = plain(s._h_state, budget, depth + 1)
    return out


def _module_attrs(m: Stub, budget: Budget, depth: int = 0) -> dict[str, Any]:
    """A stubbed module's plain attributes (`nhead`, `norm_first`, `activation`, `eps`, ...): public
    attributes other than `training`, without submodules or large tensors."""
    out: dict[str, Any] = {}
    for k, v in m._h_state.items():
        if not isinstance(k, str) or k.startswith("_") or k == "training" or is_module(v):
            continue
        if isinstance(v, torch.Tensor) and v.numel() > 1:
            continue
        out[k] = plain(v, budget, depth + 1)
    return out


def _as_tensor(v: Any) -> torch.Tensor | None:
    v = decode(v)
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
        children = {k: v for k, v in state["_modules"].items() if is_module(v)}
        own = [k for k, v in {**state["_parameters"], **(state.get("_buffers") or {})}.items() if v is not None]
        if len(children) == 1 and not own and next(iter(children)) in ("module", "_orig_mod"):
            notes.append(f"unwrapped {m._h_name}")
            m = next(iter(children.values()))
            continue
        return m


def flatten_module(m: Stub, budget: Budget | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A stubbed nn.Module tree as (state dict with dotted keys, {dotted module path: attributes}):
    parameters, then persistent buffers, then children, as `state_dict()` orders them."""
    budget = budget or Budget(200000)
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
        children = [(k, v) for k, v in state["_modules"].items() if isinstance(k, str) and is_module(v)]
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
        if is_module(node):
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
            if isinstance(v, (dict, list, tuple)) or is_module(v):
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
    cfg_budget = Budget(50000)
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
            if _is_optimizer_state(value) or is_module(value):
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
                found = {str(k): plain(v, cfg_budget) for k, v in (attrs or {}).items() if isinstance(k, str)}
                label = f"{real_key} ({value._h_name})"
            elif isinstance(value, dict):
                found = plain(value, cfg_budget)
                label = real_key
            else:
                continue
            if not found:
                continue
            for k, v in found.items():
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
        meta_budget = Budget(200000)
        for k, v in obj.items():
            if not isinstance(k, str) or k in used_keys or (path and k == path[0]) or k.lower() in OPTIMIZER_KEYS:
                continue
            if is_module(v) or _is_optimizer_state(v) or _holds_weights(v) or (not path and _as_tensor(v) is not None):
                continue
            meta[k] = plain(v, meta_budget)
        if meta_budget.hit:
            warnings.append("the checkpoint's metadata was too large or too deeply shared and was cut short")
    meta["_harness"] = notes
    return Unwrapped(tensors=tensors, config=config, meta=meta, warnings=warnings)
