"""Hugging Face BERT masked LM (`BertForMaskedLM`, or `BertForPreTraining` with its NSP head left out).

`bert.embeddings.(word|position|token_type)_embeddings`, `bert.encoder.layer.{i}.attention.self.(query|
key|value)`, ..., `cls.predictions.(bias|transform.*|decoder)`: the canonical BertMLM's own names. A
`save_pretrained` file keeps the tied decoder and its bias once; old ones say gamma/beta.

`config.json` says heads, activation, eps and the padding id; without it the heads are unknown
(BERT's convention is head_dim 64) and the rest are BERT's defaults.
"""

from __future__ import annotations

from ._shared import bert_fields, bert_state_dict, head_candidates

NAME = "hf-bert"
FAMILY = "mlm"
DESCRIPTION = "Hugging Face BERT masked LM (bert.embeddings/encoder.layer.*, cls.predictions)"


def recognise(tensors) -> bool:
    return ("bert.embeddings.word_embeddings.weight" in tensors
            and any(k.startswith("cls.predictions.") for k in tensors))


def convert(tensors, hints):
    notes = []
    dropped = [k for k in tensors if k.startswith(("bert.pooler.", "cls.seq_relationship."))]
    if dropped:
        notes.append("pooler / next-sentence head present (BertForPreTraining); not part of the masked LM")
    sd, tied = bert_state_dict(tensors)
    return bert_fields(sd, tied), sd, {"notes": notes}


def cannot_tell(tensors, fields):
    hidden = fields["hidden"]
    return {
        "n_heads": head_candidates(hidden, preferred=max(1, hidden // 64) if hidden % 64 == 0 else 0),
        "activation": ["gelu"],
        "ln_eps": [1e-12],
        "pad_id": [0],
    }


def unsupported(config: dict, tensors=None) -> list[str]:
    problems = []
    if config.get("position_embedding_type", "absolute") not in ("absolute", None):
        problems.append(f"position_embedding_type = {config['position_embedding_type']!r}")
    if config.get("is_decoder"):
        problems.append("is_decoder (a BERT decoder is not a masked LM)")
    return problems
