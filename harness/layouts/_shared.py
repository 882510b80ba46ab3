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
                       head_bias: bool, norm_weight: bool = True, embed_norm: bool = False, qk_norm: bool = False,
                       gated: bool = False, shared_norm: bool = False) -> set[str]:
    """The canonical GPT's state-dict keys; `qk_norm`: whether q/k norms exist, `shared_norm`: no `ln_2`
    (parallel_shared). Weightless norms (`norm_weight` False) have no keys at all."""
    keys = {"transformer.wte.weight", "lm_head.weight"}
    if learned:
        keys.add("transformer.wpe.weight")
    if head_bias:
        keys.add("lm_head.bias")
    block_norms = [n for n in NORMS if not (shared_norm and n == "ln_2")]
    if qk_norm:
        block_norms += ["attn.q_norm", "attn.k_norm"]
    norms = [f"transformer.h.{i}.{n}" for i in range(n_layers) for n in block_norms]
    if final_norm:
        norms.append("transformer.ln_f")
    if embed_norm:
        norms.append("transformer.ln_e")
    modules = LINEARS + (("mlp.c_up",) if gated else ())
    linears = [f"transformer.h.{i}.{m}" for i in range(n_layers) for m in modules]
    keys |= {f"{m}.weight" for m in linears}
    if norm_weight:
        keys |= {f"{n}.weight" for n in norms}
        if ln_bias:
            keys |= {f"{n}.bias" for n in norms}
    if bias:
        keys |= {f"{m}.bias" for m in linears}
    return keys


def _attention_shape(sd: Mapping[str, torch.Tensor], n_layers: int, d: int, known: Mapping) -> dict:
    """n_heads / n_kv_heads / head_dim as far as the q/k/v and output projections (and q-norms) tell.

    c_proj [d, n_heads*head_dim] gives the query width, c_attn's remaining rows twice the key width; their
    ratio is n_heads / n_kv_heads, but the head size itself needs a q-norm weight [head_dim] or a known
    `head_dim` / `n_heads` (the layout's code or hints).
    """
    shapes = set()
    for i in range(n_layers):
        c_attn, c_proj = (sd.get(f"transformer.h.{i}.attn.{m}.weight") for m in ("c_attn", "c_proj"))
        if c_attn is None or c_proj is None or c_attn.dim() != 2 or c_proj.dim() != 2:
            raise ValueError(f"block {i}: attention input or output projection missing")
        if c_attn.shape[1] != d or c_proj.shape[0] != d:
            raise ValueError(f"block {i}: attention projections {tuple(c_attn.shape)} and {tuple(c_proj.shape)} "
                             f"do not fit d_model {d}")
        shapes.add((c_attn.shape[0], c_proj.shape[1]))
    if len(shapes) != 1:
        raise ValueError(f"attention projections differ between blocks: {sorted(shapes)}")
    rows, q_width = shapes.pop()
    kv_width, odd = divmod(rows - q_width, 2)
    if odd or kv_width < 1 or q_width % kv_width:
        raise ValueError(f"attention input projection has {rows} rows, which is not q ({q_width}) plus two "
                         f"equal k and v blocks")
    if rows == 3 * d and q_width == d:
        return {}  # today's multi-head attention: the head count is not the weights' to tell
    q_norm = sd.get("transformer.h.0.attn.q_norm.weight")
    head_dim = known.get("head_dim") or (q_norm.shape[0] if q_norm is not None else None)
    if head_dim is None and known.get("n_heads"):
        head_dim = q_width // known["n_heads"]
    if not head_dim:
        return {}  # the layout settles n_heads first; the hinted second conversion completes this
    if q_width % head_dim or kv_width % head_dim:
        raise ValueError(f"query width {q_width} and key width {kv_width} are not whole heads of {head_dim}")
    out = {"n_kv_heads": kv_width // head_dim} if kv_width != q_width else {}
    if q_width != d:
        out["head_dim"] = head_dim
    if q_norm is not None or known.get("head_dim"):
        out["n_heads"] = q_width // head_dim
    return out


def finish_gpt(sd: dict[str, torch.Tensor], notes: list[str], known: Mapping | None = None) -> dict:
    """Read what a canonical-named state dict tells, complete it for the canonical GPT, refuse strays.

    `sd` is changed in place: a missing linear or LayerNorm bias next to present ones is filled with
    zeros (exactly what no bias computes), and a missing or shared head becomes the embedding.
    `known`: values the layout's code or hints settle that shapes alone cannot (`n_heads` or `head_dim`
    to split a grouped-query c_attn). Returns the GPTConfig fields the weights tell; the new structural
    ones (gated, norm_weight, embed_norm, residual, n_kv_heads, head_dim) only where they are not the
    defaults. Without norm weights anywhere the norms are weightless, and then whether ln_f, ln_e,
    q/k norms exist is the layout's to say, not the weights'.
    """
    known = dict(known or {})
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
    up = [sd.get(f"transformer.h.{i}.mlp.c_up.weight") for i in range(n_layers)]
    gated = any(w is not None for w in up)
    if gated and any(w is None or w.shape != (d_ff, d) for w in up):
        raise ValueError("gated feed-forward layers (mlp.c_up) are missing or differ in size from mlp.c_fc")
    if known.get("n_heads") is None and "n_heads" in known:
        del known["n_heads"]
    attention = _attention_shape(sd, n_layers, d, known)

    def has(name: str) -> bool:
        return f"{name}.weight" in sd

    blocks = [f"transformer.h.{i}" for i in range(n_layers)]
    norm_weight = any(has(f"{b}.{n}") for b in blocks for n in ("ln_1", "ln_2", "attn.q_norm", "attn.k_norm")) \
        or has("transformer.ln_f") or has("transformer.ln_e")
    shared_norm = norm_weight and all(has(f"{b}.ln_1") and not has(f"{b}.ln_2") for b in blocks)
    qk_norm = norm_weight and has("transformer.h.0.attn.q_norm")
    final_norm = has("transformer.ln_f") if norm_weight else known.get("final_norm", True)
    embed_norm = has("transformer.ln_e") if norm_weight else known.get("embed_norm", False)
    if not norm_weight:
        qk_norm = known.get("qk_norm", "none") != "none"
        shared_norm = known.get("residual") == "parallel_shared"
    for b in blocks:
        for n in ("ln_1", "ln_2", "attn.q_norm", "attn.k_norm"):
            expected = norm_weight and not (n == "ln_2" and shared_norm) and (qk_norm or not n.startswith("attn"))
            if has(f"{b}.{n}") != expected:
                raise ValueError(f"{b}.{n}.weight is {'missing' if expected else 'unexpected'}: the blocks' norms "
                                 f"differ")
    modules = LINEARS + (("mlp.c_up",) if gated else ())
    linears = [f"{b}.{m}" for b in blocks for m in modules]
    norms = [f"{b}.{n}" for b in blocks for n in NORMS if not (n == "ln_2" and shared_norm)]
    norms += [f"{b}.attn.{n}" for b in blocks for n in ("q_norm", "k_norm") if qk_norm]
    norms += [n for n, on in (("transformer.ln_f", final_norm), ("transformer.ln_e", embed_norm)) if on]
    fields = {"vocab_size": vocab, "d_model": d, "n_layers": n_layers, "d_ff": d_ff}
    if norm_weight:
        fields["final_norm"] = final_norm
    for flag, modules_ in (("bias", linears), ("ln_bias", norms)):
        present = [m for m in modules_ if f"{m}.bias" in sd]
        fields[flag] = bool(present)
        missing = [m for m in modules_ if f"{m}.bias" not in sd and f"{m}.weight" in sd]
        if present and missing:
            for m in missing:
                w = sd[f"{m}.weight"]
                sd[f"{m}.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
            notes.append(f"{len(missing)} missing bias(es) filled with zeros (the same computation): "
                         f"{', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
    if fields["ln_bias"]:
        fields["norm_type"] = "layernorm"  # only a LayerNorm shifts
    if gated:
        fields["gated"] = True
    if not norm_weight:
        fields["norm_weight"] = False
    if norm_weight and embed_norm:
        fields["embed_norm"] = True
    if shared_norm:
        fields["residual"] = "parallel_shared"
    fields.update(attention)

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
                                  ln_bias=fields["ln_bias"], head_bias=fields["head_bias"], norm_weight=norm_weight,
                                  embed_norm=embed_norm, qk_norm=qk_norm, gated=gated, shared_norm=shared_norm)
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
