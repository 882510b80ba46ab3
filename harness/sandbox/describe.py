"""A built student model described, inside the sandboxed child only: the architecture from the weights'
shapes, the values the model was built with and the built module, each with its source; what none of them
tells stays None ("not verified")."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from harness.sandbox.student_class import _is_mask, _scalar

SPELLINGS = {
    "n_layers": ("n_layers", "n_layer", "num_layers", "num_hidden_layers", "nlayers", "depth", "layers"),
    "d_model": ("d_model", "n_embd", "n_embed", "emb_dim", "embed_dim", "hidden_size", "dim", "width", "d_emb"),
    "n_heads": ("n_heads", "n_head", "nhead", "num_heads", "num_attention_heads", "heads", "n_attn_heads"),
    "context": ("context_length", "block_size", "context", "max_seq_len", "max_seq_length", "seq_len", "n_ctx",
                "max_position_embeddings", "n_positions", "max_len", "window", "context_size"),
    "d_ff": ("d_ff", "dim_feedforward", "intermediate_size", "ffn_dim", "d_hidden", "hidden_dim", "n_inner"),
    "vocab_size": ("vocab_size", "n_vocab", "vocab", "ntoken"),
}


def _config_values(model: nn.Module, account: dict[str, Any], module: Any) -> list[tuple[dict, str]]:
    """Where values were stated, best first: what built the model, its config attribute, module globals."""
    out = [(account.get("config") or {}, "the values it was built with")]
    for attr in ("config", "cfg", "args", "hparams", "conf"):
        c = getattr(model, attr, None)
        if c is None:
            continue
        d = c if isinstance(c, dict) else vars(c) if hasattr(c, "__dict__") else {}
        out.append(({k: v for k, v in d.items() if _scalar(v)}, f"the model's {attr}"))
    if account.get("how", "").startswith("no arguments"):
        out.append(({k: v for k, v in vars(module).items() if isinstance(v, int) and not isinstance(v, bool)},
                    "the module's own values"))
    return out


def _stated(field: str, configs: list[tuple[dict, str]], origin: dict[str, str]) -> tuple[Any, str] | None:
    for values, where in configs:
        for name in SPELLINGS[field]:
            v = values.get(name)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                if where == "the values it was built with" and name in origin:
                    where = f"built with the {origin[name]}'s value"  # checkpoint config or submission.toml
                return v, f"{where} ({name})"
    return None


def _layer_stack(model: nn.Module) -> tuple[str, nn.Module, int] | None:
    """The repeated blocks: the list (ModuleList, Sequential) of same-class modules holding most parameters."""
    best = None
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or len(m) == 0:
            continue
        kids = list(m)
        if len({type(k) for k in kids}) != 1:
            continue
        n = sum(p.numel() for p in m.parameters())
        if n and (best is None or n > best[3]):
            best = (name, kids[0], len(kids), n)
    return best[:3] if best else None


def describe(model: nn.Module, n_outputs: int, account: dict[str, Any], module: Any) -> dict[str, dict[str, Any]]:
    """n_layers, d_model, n_heads, context, d_ff, vocab_size: each {value, source}; value None where nothing
    tells it ("not verified")."""
    configs = _config_values(model, account, module)
    arch: dict[str, dict[str, Any]] = {"vocab_size": {"value": n_outputs, "source": "the model's output"}}
    params = {n: p for n, p in model.named_parameters()}
    tables = [(n, p) for n, p in params.items() if p.dim() == 2 and p.shape[0] == n_outputs]
    d_model = int(tables[0][1].shape[1]) if tables else None
    if d_model:
        arch["d_model"] = {"value": d_model, "source": f"weights ({tables[0][0]})"}
    stack = _layer_stack(model)
    if stack:
        arch["n_layers"] = {"value": stack[2], "source": f"module structure ({stack[0]}: {stack[2]} blocks)"}
        block = stack[1]
        if d_model:
            outs = {int(p.shape[0]) for p in block.parameters() if p.dim() == 2 and p.shape[1] == d_model}
            ins = {int(p.shape[1]) for p in block.parameters() if p.dim() == 2 and p.shape[0] == d_model}
            ff = sorted((outs & ins) - {d_model})
            if ff:
                arch["d_ff"] = {"value": ff[-1], "source": "weights (the feed-forward's width)"}
        heads = _heads_in(block)
        if heads:
            arch["n_heads"] = heads
    top = [(n, p) for n, p in params.items() if p.dim() == 2 and d_model and p.shape[1] == d_model
           and p.shape[0] != n_outputs and (not stack or not n.startswith(stack[0] + "."))]
    if len(top) == 1:
        arch["context"] = {"value": int(top[0][1].shape[0]), "source": f"weights ({top[0][0]}: position table)"}
    for field in ("n_heads", "context", "n_layers", "d_model", "d_ff"):
        if field not in arch:
            stated = _stated(field, configs, account.get("from") or {})
            if stated:
                arch[field] = {"value": stated[0], "source": stated[1]}
    if "context" not in arch:
        masks = [(n, b) for n, b in model.named_buffers() if _is_mask(b)]
        if masks:
            arch["context"] = {"value": int(masks[0][1].shape[-1]), "source": f"causal mask ({masks[0][0]})"}
    for field in ("n_layers", "d_model", "n_heads", "context", "d_ff"):
        arch.setdefault(field, {"value": None, "source": "not verified"})
    return arch


def _heads_in(block: nn.Module) -> dict[str, Any] | None:
    for name, m in block.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            return {"value": int(m.num_heads), "source": f"module attribute ({name}.num_heads)"}
        for attr in SPELLINGS["n_heads"]:
            v = vars(m).get(attr, m._modules.get(attr))
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return {"value": v, "source": f"module attribute ({name + '.' if name else ''}{attr})"}
            if isinstance(v, nn.ModuleList) and len(v) > 0:  # ng-video-lecture: one module per head
                return {"value": len(v), "source": f"module structure ({name}.{attr}: one module per head)"}
    return None
