"""The harness's own masked LM checkpoint (`save_canonical`): `config.json` says `"harness_model": "mlm"`.

The keys are Hugging Face BertForMaskedLM's (the tied decoder and the decoder bias saved once), and the
stored config says heads, activation, eps and the padding id.
"""

from __future__ import annotations

from harness.models.mlm import BertConfig

from ._shared import bert_fields, bert_state_dict, head_candidates

NAME = "harness-mlm"
FAMILY = "mlm"
DESCRIPTION = "the harness's canonical BERT MLM (config.json harness_model = mlm)"


def recognise(tensors, config=None) -> bool:
    return (config or {}).get("harness_model") == "mlm" and "bert.embeddings.word_embeddings.weight" in tensors


def convert(tensors, hints):
    sd, tied = bert_state_dict(tensors)
    return bert_fields(sd, tied), sd, {"notes": []}


def cannot_tell(tensors, fields):
    default = BertConfig()
    return {
        "n_heads": head_candidates(fields["hidden"]),
        "activation": [default.activation],
        "ln_eps": [default.ln_eps],
        "pad_id": [default.pad_id],
    }
