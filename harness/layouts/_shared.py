"""What the layouts share: tying, head-count candidates, parameter counts and the canonical GPT's key set.

Not a layout. Each layout file maps its own names onto the canonical ones and hands the result to
`finish_gpt`, which reads what the weights tell (sizes, biases, tying) and refuses keys it cannot place.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

import torch

Tensors = Mapping[str, torch.Tensor]

# The canonical GPT's per-block modules (nanoGPT's names).
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
NORMS = ("ln_1", "ln_2")


def same_tensor(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """One matrix under two names: shared storage (torch.save keeps it), or equal values (safetensors copies)."""
    if a is None or b is None or a.shape != b.shape:
        return False
    if (a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and a.storage_offset() == b.storage_offset() and a.stride() == b.stride()):
        return True
    return bool(torch.equal(a, b))


def head_candidates(d_model: int, preferred: int = 0) -> list[int]:
    """Plausible head counts, most plausible first: divisors with head_dim >= 8, powers of two preferred.

    `preferred` (a head count) goes first when it divides d_model; otherwise the head_dim nearest 32
    (64 above d_model 256) leads, the usual choices of course models and GPT-2 alike.
    """
    target = 32 if d_model <= 256 else 64
    heads = [h for h in range(1, d_model + 1) if d_model % h == 0 and d_model // h >= 8] or [1]

    def rank(h: int) -> tuple:
        hd = d_model // h
        return (h != preferred, hd & (hd - 1) != 0, abs(math.log2(hd) - math.log2(target)), h)

    return sorted(heads, key=rank)[:8]


def layer_indices(keys: Iterable[str], pattern: str) -> int:
    """Number of layers whose keys match `pattern` (one group: the index); they must be 0..n-1."""
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    if found and found != set(range(len(found))):
        raise ValueError(f"layer indices {sorted(found)} are not 0..{len(found) - 1}")
    return len(found)


def count_params(tensors: Tensors, skip: Iterable[str] = ()) -> int:
    """Elements of the parameters, each storage once (a tied head is the embedding's storage)."""
    skip = set(skip)
    seen: set[tuple] = set()
    total = 0
    for key, t in tensors.items():
        if key in skip:
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if ident in seen:
            continue
        seen.add(ident)
        total += t.numel()
    return total


def positions_table(t: torch.Tensor, d_model: int) -> torch.Tensor:
    """A position table as [T, d]: an Embedding [T, d], a Parameter [1, T, d], or a `pe` buffer [T, 1, d]."""
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    elif t.dim() == 3 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 2 or t.shape[1] != d_model:
        raise ValueError(f"position table of shape {tuple(t.shape)} does not fit d_model {d_model}")
    return t


def is_sinusoidal(table: torch.Tensor) -> bool:
    """Whether a stored table is the word_language_model / tutorial sine-cosine table (which we recompute)."""
    from harness.models.gpt import sinusoidal_positions

    T, d = table.shape
    return bool(torch.allclose(table.float(), sinusoidal_positions(T, d), atol=1e-4, rtol=0))


def canonical_gpt_keys(n_layers: int, *, learned: bool, final_norm: bool, bias: bool, ln_bias: bool,
                       head_bias: bool) -> set[str]:
    keys = {"transformer.wte.weight", "lm_head.weight"}
    if learned:
        keys.add("transformer.wpe.weight")
    if head_bias:
        keys.add("lm_head.bias")
    norms = [f"transformer.h.{i}.{n}" for i in range(n_layers) for n in NORMS]
    if final_norm:
        norms.append("transformer.ln_f")
    linears = [f"transformer.h.{i}.{m}" for i in range(n_layers) for m in LINEARS]
    keys |= {f"{n}.weight" for n in norms} | {f"{m}.weight" for m in linears}
    if ln_bias:
        keys |= {f"{n}.bias" for n in norms}
    if bias:
        keys |= {f"{m}.bias" for m in linears}
    return keys


def finish_gpt(sd: dict[str, torch.Tensor], notes: list[str]) -> dict:
    """Read what a canonical-named state dict tells, complete it for the canonical GPT, refuse strays.

    `sd` is changed in place: a missing linear or LayerNorm bias next to present ones is filled with
    zeros (exactly what no bias computes), and a missing or shared head becomes the embedding.
    Returns the GPTConfig fields the weights tell.
    """
    wte = sd.get("transformer.wte.weight")
    if wte is None or wte.dim() != 2:
        raise ValueError("no token embedding found")
    vocab, d = wte.shape
    n_layers = layer_indices(sd, r"^transformer\.h\.(\d+)\.")
    if n_layers == 0:
        raise ValueError("no transformer blocks found")
    fc = [sd.get(f"transformer.h.{i}.mlp.c_fc.weight") for i in range(n_layers)]
    if any(w is None for w in fc):
        raise ValueError("a block has no feed-forward input layer")
    d_ff = fc[0].shape[0]
    if any(w.shape != (d_ff, d) for w in fc):
        raise ValueError(f"feed-forward layers differ in size: {[tuple(w.shape) for w in fc]}")
    for i in range(n_layers):
        c_attn = sd.get(f"transformer.h.{i}.attn.c_attn.weight")
        if c_attn is None or tuple(c_attn.shape) != (3 * d, d):
            got = "none" if c_attn is None else tuple(c_attn.shape)
            raise ValueError(f"block {i}: attention input projection should be [{3 * d}, {d}], got {got}")

    linears = [f"transformer.h.{i}.{m}" for i in range(n_layers) for m in LINEARS]
    norms = [f"transformer.h.{i}.{n}" for i in range(n_layers) for n in NORMS]
    final_norm = "transformer.ln_f.weight" in sd
    if final_norm:
        norms.append("transformer.ln_f")
    fields = {"vocab_size": vocab, "d_model": d, "n_layers": n_layers, "d_ff": d_ff, "final_norm": final_norm}
    for flag, modules in (("bias", linears), ("ln_bias", norms)):
        present = [m for m in modules if f"{m}.bias" in sd]
        fields[flag] = bool(present)
        missing = [m for m in modules if f"{m}.bias" not in sd and f"{m}.weight" in sd]
        if present and missing:
            for m in missing:
                w = sd[f"{m}.weight"]
                sd[f"{m}.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
            notes.append(f"{len(missing)} missing bias(es) filled with zeros (the same computation): "
                         f"{', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")

    head = sd.get("lm_head.weight")
    tied = head is None or same_tensor(head, wte)
    if head is not None and tuple(head.shape) != (vocab, d):
        raise ValueError(f"output layer {tuple(head.shape)} does not match the embedding {tuple(wte.shape)}")
    sd["lm_head.weight"] = wte if tied else head
    fields["tied"] = tied
    fields["head_bias"] = "lm_head.bias" in sd
    wpe = sd.get("transformer.wpe.weight")
    if wpe is not None:
        fields["positions"] = "learned"
        fields["context"] = wpe.shape[0]

    expected = canonical_gpt_keys(n_layers, learned=wpe is not None, final_norm=final_norm, bias=fields["bias"],
                                  ln_bias=fields["ln_bias"], head_bias=fields["head_bias"])
    strays = sorted(set(sd) - expected)
    if strays:
        more = " …" if len(strays) > 8 else ""
        raise ValueError(f"keys with no place in the model: {', '.join(strays[:8])}{more}")
    return fields


def split_qkv(w: torch.Tensor, order: str, n_heads: int) -> torch.Tensor:
    """A fused q/k/v weight (or bias) in the canonical order: q, k, v blocks, each head's rows together.

    `order` names the three blocks as the checkpoint stores them ("qkv", "kqv", ...); a "-per-head"
    suffix says the rows are grouped by head first ([head, q|k|v, head_dim]), as code that reshapes the
    fused output to (B, T, n_heads, 3 * head_dim) before splitting expects.
    """
    letters, _, grouping = order.partition("-")
    if sorted(letters) != ["k", "q", "v"] or grouping not in ("", "per-head"):
        raise ValueError(f"fused q/k/v order {order!r} is not a permutation of 'qkv' (optionally '-per-head')")
    d3 = w.shape[0]
    d = d3 // 3
    rest = tuple(w.shape[1:])
    if grouping == "per-head":
        w = w.reshape(n_heads, 3, d // n_heads, *rest).transpose(0, 1).reshape(d3, *rest)
    blocks = dict(zip(letters, w.split(d, dim=0)))
    return torch.cat([blocks["q"], blocks["k"], blocks["v"]], dim=0)


def map_encoder_layer(src: Tensors, prefix: str, i: int) -> dict[str, torch.Tensor]:
    """One `nn.TransformerEncoderLayer` (`prefix` = ".../layers.{i}.") as a canonical block."""
    names = {
        "self_attn.in_proj_weight": "attn.c_attn.weight", "self_attn.in_proj_bias": "attn.c_attn.bias",
        "self_attn.out_proj.weight": "attn.c_proj.weight", "self_attn.out_proj.bias": "attn.c_proj.bias",
        "linear1.weight": "mlp.c_fc.weight", "linear1.bias": "mlp.c_fc.bias",
        "linear2.weight": "mlp.c_proj.weight", "linear2.bias": "mlp.c_proj.bias",
        "norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
        "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
    }
    out = {}
    for theirs, ours in names.items():
        if prefix + theirs in src:
            out[f"transformer.h.{i}.{ours}"] = src[prefix + theirs]
    return out


def bert_state_dict(tensors: Tensors) -> tuple[dict[str, torch.Tensor], bool]:
    """HF BertForMaskedLM names as the canonical BertMLM's full state dict; also whether the decoder is tied."""
    from harness.models.mlm import normalise_hf_bert_keys

    sd = normalise_hf_bert_keys(tensors)
    word, decoder = "bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"
    tied = decoder not in sd or same_tensor(sd[decoder], sd.get(word))
    if tied and word in sd:
        sd[decoder] = sd[word]
    return sd, tied


def bert_fields(sd: Mapping[str, torch.Tensor], tied: bool) -> dict:
    """The BertConfig fields a canonical-named BERT state dict tells."""
    word = sd.get("bert.embeddings.word_embeddings.weight")
    pos = sd.get("bert.embeddings.position_embeddings.weight")
    types = sd.get("bert.embeddings.token_type_embeddings.weight")
    inter = sd.get("bert.encoder.layer.0.intermediate.dense.weight")
    if word is None or pos is None or types is None or inter is None:
        raise ValueError("a BERT needs word, position and token-type embeddings and an intermediate layer")
    return {
        "vocab_size": word.shape[0], "hidden": word.shape[1],
        "n_layers": layer_indices(sd, r"^bert\.encoder\.layer\.(\d+)\."),
        "intermediate": inter.shape[0], "max_positions": pos.shape[0], "type_vocab_size": types.shape[0],
        "tied": tied,
    }


def rename(tensors: Tensors, names: Mapping[str, str], n_layers: int) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The tensors `names` ({theirs: ours}; `{i}` stands for the layer index) maps, under our names, and the
    names used. Names the checkpoint lacks are skipped: `finish_gpt` says what a model cannot do without."""
    sd: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for theirs, ours in names.items():
        for i in range(n_layers) if "{i}" in theirs else (0,):
            key = theirs.format(i=i)
            if key in tensors:
                sd[ours.format(i=i)] = tensors[key]
                used.add(key)
    return sd, used


def fuse_qkv(tensors: Tensors, modules: tuple[str, str, str], n_layers: int) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Separate q, k and v projections (`modules`, `{i}` the layer) as the canonical fused `attn.c_attn`.

    A bias on some of the three and not on the others is completed with zeros, the same computation.
    """
    sd: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for i in range(n_layers):
        names = [m.format(i=i) for m in modules]
        missing = [f"{n}.weight" for n in names if f"{n}.weight" not in tensors]
        if missing:
            raise ValueError(f"block {i} has no {', '.join(missing)}")
        weights = [tensors[f"{n}.weight"] for n in names]
        sd[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(weights, dim=0)
        biases = [tensors.get(f"{n}.bias") for n in names]
        if any(b is not None for b in biases):
            sd[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat(
                [b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype) for b, w in zip(biases, weights)])
        used |= {f"{n}.{part}" for n in names for part in ("weight", "bias") if f"{n}.{part}" in tensors}
    return sd, used


def refuse_strays(tensors: Tensors, used: Iterable[str]) -> None:
    strays = sorted(set(tensors) - set(used))
    if strays:
        more = " …" if len(strays) > 8 else ""
        raise ValueError(f"keys with no place in the model: {', '.join(strays[:8])}{more}")
