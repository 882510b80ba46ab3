"""Reference-run configuration: typed, parsed from TOML and `key=value` overrides, refused when unknown.

The defaults are the SPEC's reference models; `reference_model/gpt.toml` and `mlm.toml` spell them out.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.errors import HarnessError
from harness.families import FAMILIES


@dataclass(frozen=True)
class TrainConfig:
    """One reference run. Defaults are the GPT reference (SPEC "Reference models"); `REFERENCE["mlm"]`
    holds the MLM's. `reference_model/<family>.toml` writes the same values out."""

    family: str = "gpt"
    name: str = "gpt"
    data: str = "course"  # "course": the course's data source; else wiki-vital, wikitext-2, a path
    tokenizer: str = "course"  # "course": the course's tokenizer for the family; mlm also "wordpiece"
    # model
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    context: int = 64  # GPT: positions and window; MLM: block length
    max_positions: int = 512  # mlm only
    wordpiece_vocab: int = 8000  # mlm only: size of the offline fallback vocabulary
    # gpt only: the canonical decoder's choices (harness.models.gpt.GPTConfig); 0 means "the usual"
    norm: str = "pre"
    norm_type: str = "layernorm"
    norm_weight: bool = True
    ln_bias: bool = True
    ln_eps: float = 1e-5
    embed_norm: bool = False
    final_norm: bool = True
    qk_norm: str = "none"
    positions: str = "learned"
    rope_theta: float = 10000.0
    rope_fraction: float = 1.0
    rope_pairs: str = "half"
    n_kv_heads: int = 0  # 0: n_heads
    head_dim: int = 0  # 0: d_model // n_heads
    attn_scale: float = 0.0  # 0: 1 / sqrt(head_dim)
    activation: str = "gelu"
    gated: bool = False
    bias: bool = True
    residual: str = "sequential"
    tied: bool = True
    logit_softcap: float = 0.0  # 0: none
    # optimisation
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # 2-D weights only (matrices and embeddings), as nanoGPT
    grad_clip: float = 1.0  # 0: off
    warmup_steps: int = 500
    warmup_fraction: float = 0.0  # used when warmup_steps = 0
    batch_size: int = 32  # global: split across processes
    epochs: int = 10
    total_steps: int = 0  # 0: epochs x steps per epoch; else the schedule's length
    seed: int = 1337
    # evaluation, checkpoints, machine
    eval_every: int = 250  # 0: only at epoch ends and at the end
    eval_max_tokens: int = 0  # cap of periodic evaluations (0: the whole split)
    final_eval_max_tokens: int = 0  # cap of the final evaluation (0: the course's cap, else the whole split)
    checkpoint_every: int = 250  # 0: only at the end
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    threads: int = 0  # CPU threads per process; 0: the cores this process may use / local processes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def gpt_fields(self) -> dict[str, Any]:
        """The GPTConfig fields this run sets (its architecture choices, 0 read as the default)."""
        values = {k: getattr(self, k) for k in GPT_ARCHITECTURE}
        for key in ("n_kv_heads", "head_dim", "attn_scale", "logit_softcap"):
            values[key] = values[key] or None
        return values

    def fingerprint_dict(self) -> dict[str, Any]:
        """What decides the weights: without run-only keys, and without architecture keys at their defaults
        (so runs from before those keys existed keep their fingerprint and resume)."""
        default = TrainConfig()
        return {k: v for k, v in self.to_dict().items()
                if k not in NOT_IN_FINGERPRINT and not (k in GPT_ARCHITECTURE and v == getattr(default, k))}


# GPTConfig fields a reference GPT may set, with 0 standing for GPTConfig's None.
GPT_ARCHITECTURE = ("norm", "norm_type", "norm_weight", "ln_bias", "ln_eps", "embed_norm", "final_norm", "qk_norm",
                    "positions", "rope_theta", "rope_fraction", "rope_pairs", "n_kv_heads", "head_dim", "attn_scale",
                    "activation", "gated", "bias", "residual", "tied", "logit_softcap")
FAMILY_ONLY = {"gpt": GPT_ARCHITECTURE, "mlm": ("max_positions", "wordpiece_vocab")}
REFERENCE: dict[str, dict[str, Any]] = {
    "gpt": {},
    "mlm": dict(family="mlm", name="mlm", n_layers=3, d_model=256, n_heads=4, d_ff=1024, dropout=0.1, context=128,
                lr=5e-4, beta2=0.999, weight_decay=0.01, warmup_steps=0, warmup_fraction=0.06, batch_size=8,
                epochs=3, eval_every=500, checkpoint_every=500),
}
# Keys that do not change the weights: a run may be resumed with other values for them.
NOT_IN_FINGERPRINT = ("name", "eval_every", "eval_max_tokens", "final_eval_max_tokens", "checkpoint_every",
                      "device", "compile", "threads")
_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def allowed_keys(family: str) -> list[str]:
    other = {k for fam, keys in FAMILY_ONLY.items() if fam != family for k in keys}
    return [f.name for f in fields(TrainConfig) if f.name != "family" and f.name not in other]


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise HarnessError("train-family-unknown", f"unknown model family {family!r}; use gpt or mlm")


def _typed(key: str, value: Any, where: str) -> Any:
    """A TOML value, or an override's text, as the key's type; anything else is a HarnessError."""
    kind = _TYPES[key]
    if isinstance(value, str) and kind != "str":
        text = value.strip()
        try:
            if kind == "bool":
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return text.lower() in ("true", "1", "yes")
            return int(text) if kind == "int" else float(text)
        except ValueError:
            raise HarnessError("config-invalid", f"{where}{key} must be {_KIND_WORDS[kind]}, not {value!r}") from None
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}[kind]
    if not ok(value):
        raise HarnessError("config-invalid", f"{where}{key} must be {_KIND_WORDS[kind]}, not {value!r}")
    return float(value) if kind == "float" else value


_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _apply(values: dict[str, Any], family: str, updates: dict[str, Any], where: str) -> None:
    allowed = allowed_keys(family)
    for key, value in updates.items():
        if key not in allowed:
            raise HarnessError("config-unknown-key",
                               f"{where}{key} is not a {family} training key; allowed: {', '.join(allowed)}")
        values[key] = _typed(key, value, where)


def load_config(family: str, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The reference config of `family`, updated by the TOML file at `path`, then by `key=value` overrides."""
    _check_family(family)
    values = {**TrainConfig().to_dict(), **REFERENCE[family]}
    if path is not None:
        path = Path(path)
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HarnessError("config-missing", f"training config {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise HarnessError("config-invalid", f"{path} is not valid TOML ({e})") from None
        declared = table.pop("family", family)
        if declared != family:
            raise HarnessError("config-invalid", f"{path} is a {declared!r} config, not {family!r}")
        _apply(values, family, table, f"{path.name}: ")
    parsed: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HarnessError("config-invalid", f"--set {item!r} must look like key=value")
        parsed[key.strip()] = value
    _apply(values, family, parsed, "--set ")
    cfg = TrainConfig(**values)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    def bad(key: str, what: str) -> HarnessError:
        return HarnessError("config-invalid", f"{key} must be {what}, not {getattr(cfg, key)!r}")

    for key in ("n_layers", "d_model", "n_heads", "d_ff", "context", "max_positions", "wordpiece_vocab",
                "batch_size", "epochs"):
        if getattr(cfg, key) < 1:
            raise bad(key, "at least 1")
    for key in ("total_steps", "warmup_steps", "eval_every", "eval_max_tokens", "final_eval_max_tokens",
                "checkpoint_every", "threads", "seed"):
        if getattr(cfg, key) < 0:
            raise bad(key, "0 or more")
    if cfg.d_model % cfg.n_heads and not cfg.head_dim:
        raise HarnessError("config-invalid", f"d_model ({cfg.d_model}) must be divisible by n_heads ({cfg.n_heads})")
    for key in ("n_kv_heads", "head_dim", "attn_scale", "logit_softcap"):
        if getattr(cfg, key) < 0:
            raise bad(key, "0 (the default) or more")
    if cfg.family == "gpt":
        from harness.models.gpt import GPTConfig

        try:  # every architecture value is checked before any data is read
            GPTConfig(vocab_size=1, context=cfg.context, n_layers=cfg.n_layers, d_model=cfg.d_model,
                      n_heads=cfg.n_heads, d_ff=cfg.d_ff, **cfg.gpt_fields())
        except ValueError as e:
            raise HarnessError("config-invalid", str(e).removeprefix("GPTConfig.")) from None
    if not 0.0 <= cfg.dropout < 1.0:
        raise bad("dropout", "in [0, 1)")
    if not 0.0 <= cfg.warmup_fraction < 1.0:
        raise bad("warmup_fraction", "in [0, 1)")
    for key in ("beta1", "beta2"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise bad(key, "in [0, 1)")
    for key in ("lr", "eps"):
        if not getattr(cfg, key) > 0:
            raise bad(key, "above 0")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0:
        raise HarnessError("config-invalid", "weight_decay and grad_clip must be 0 or more")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise bad("device", "auto, cpu or cuda")
    if cfg.family == "mlm" and cfg.context > cfg.max_positions:
        raise HarnessError("config-invalid", f"context ({cfg.context}) must not exceed max_positions ({cfg.max_positions})")


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`["lr=5e-4,1e-3", "n_layers=1,2"]` as `{"lr": ["5e-4", "1e-3"], "n_layers": ["1", "2"]}`."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise HarnessError("config-invalid", f"--grid {item!r} must look like key=v1,v2")
        grid[key.strip()] = vals
    return grid


def schedule(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    """Learning rate of 0-based step `i`: linear warm-up to `lr` over the first steps, then linear decay
    towards 0 at `total` (the last step still moves)."""
    warm = cfg.warmup_steps or round(cfg.warmup_fraction * total)
    if warm >= total:
        raise HarnessError("config-invalid", f"the warm-up ({warm} steps) must be shorter than the run ({total} steps); "
                           "lower warmup_steps or raise total_steps/epochs")

    def lr(i: int) -> float:
        if i < warm:
            return cfg.lr * (i + 1) / warm
        return cfg.lr * (total - i) / (total - warm)

    return lr


def seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)
