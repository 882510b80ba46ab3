"""The canonical models: one causal GPT and one BERT-style MLM that every checkpoint layout maps into."""

from .gpt import GPT, GPTConfig
from .io import (
    bert_config_from_hf,
    bert_from_hf,
    export_hf_bert,
    export_hf_gpt2,
    gpt_config_from_hf_gpt2,
    gpt_from_hf_gpt2,
    gpt_state_dict_to_hf_gpt2,
    hf_gpt2_incompatibilities,
    hf_gpt2_state_dict_to_gpt,
    load_canonical,
    save_canonical,
)
from .mlm import BertConfig, BertMLM, load_hf_bert_state_dict

__all__ = [
    "GPT",
    "GPTConfig",
    "BertConfig",
    "BertMLM",
    "load_hf_bert_state_dict",
    "save_canonical",
    "load_canonical",
    "gpt_config_from_hf_gpt2",
    "gpt_from_hf_gpt2",
    "hf_gpt2_state_dict_to_gpt",
    "gpt_state_dict_to_hf_gpt2",
    "hf_gpt2_incompatibilities",
    "export_hf_gpt2",
    "bert_config_from_hf",
    "bert_from_hf",
    "export_hf_bert",
]
