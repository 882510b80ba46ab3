"""The canonical masked language model: BERT, with Hugging Face `BertForMaskedLM`'s exact key names.

Keeping HF's names (down to `attention.self`) means a student's HF checkpoint loads with no key map at
all, and an export back to HF is a plain `load_state_dict`. No pooler and no next-sentence head:
masked-token prediction is all the course grades.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gpt import ACTIVATIONS, activation_fn, check_choice, check_config_dict, check_int, unset_weights


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 256
    n_layers: int = 3
    n_heads: int = 4
    intermediate: int = 1024
    max_positions: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    ln_eps: float = 1e-12
    activation: str = "gelu"
    pad_id: int = 0
    tied: bool = True  # the decoder shares the word embeddings, as in BERT

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden", "n_layers", "n_heads", "intermediate", "max_positions", "type_vocab_size"):
            check_int("BertConfig", name, getattr(self, name))
        check_int("BertConfig", "pad_id", self.pad_id, minimum=0)
        if self.pad_id >= self.vocab_size:
            raise ValueError(f"BertConfig.pad_id ({self.pad_id}) must be below vocab_size ({self.vocab_size})")
        if self.hidden % self.n_heads:
            raise ValueError(f"BertConfig.hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"BertConfig.dropout must be in [0, 1), got {self.dropout!r}")
        check_choice("BertConfig", "activation", self.activation, ACTIVATIONS)
        self.dropout = float(self.dropout)
        self.ln_eps = float(self.ln_eps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BertConfig:
        check_config_dict(cls, data)
        return cls(**data)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=cfg.pad_id)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)
        # HF's order of the sums, so float rounding matches it too.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(torch.zeros_like(input_ids))
        x = x + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for lin in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return y.transpose(1, 2).contiguous().view(B, T, C)


class BertDenseNorm(nn.Module):
    """HF's `BertSelfOutput` / `BertOutput`: project, dropout, then post-LN around the residual."""

    def __init__(self, cfg: BertConfig, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertDenseNorm(cfg, cfg.hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.intermediate)
        self.act = activation_fn(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertDenseNorm(cfg, cfg.intermediate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.n_layers))


class BertModel(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.act = activation_fn(cfg.activation)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        # `bias` is registered before `decoder` so that a de-duplicated save keeps HF's primary name.
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.transform = BertPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden, cfg.vocab_size)
        # HF keeps the output bias under both names; one tensor, so both state_dict keys exist as in HF.
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg)


class BertMLM(nn.Module):
    def __init__(self, cfg: BertConfig, *, empty: bool = False):
        """`empty`: the weights left unset, for a caller that loads every one of them (as `GPT`'s)."""
        super().__init__()
        self.config = cfg
        with unset_weights(empty):
            self.bert = BertModel(cfg)
            self.cls = BertOnlyMLMHead(cfg)
        if not empty:
            self.apply(self._init_weights)
        if cfg.tied:
            self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's init: N(0, 0.02) everywhere, zero biases, and a zero vector for the padding token.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def num_params(self) -> int:
        """Unique parameter tensors once: the tied decoder and the shared bias count once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, vocab_size], bidirectional; `attention_mask` [B, T] is 1 for real tokens, 0 for padding."""
        T = input_ids.shape[1]
        if T > self.config.max_positions:
            raise ValueError(f"sequence of {T} tokens is longer than the model's {self.config.max_positions} positions")
        mask = None
        if attention_mask is not None:
            # Padding is hidden as a key only; padded queries still get (ignored) outputs, never NaN.
            mask = attention_mask.to(torch.bool)[:, None, None, :]
        x = self.bert.embeddings(input_ids)
        for layer in self.bert.encoder.layer:
            x = layer(x, mask)
        return self.cls.predictions(x)


# Keys an HF BERT checkpoint may carry that the MLM does not use: buffers of older versions, the pooler,
# and the next-sentence head of BertForPreTraining.
_IGNORED_PREFIXES = ("bert.pooler.", "cls.seq_relationship.")
_IGNORED_KEYS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")


def normalise_hf_bert_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `BertForMaskedLM` / `BertForPreTraining` state dict, whatever HF version wrote it, under today's
    names: the pooler, NSP head and old buffers left out, TF-era `gamma`/`beta` renamed, and the decoder
    bias that HF keeps under two names filled from the one saved."""
    sd: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in _IGNORED_KEYS or key.startswith(_IGNORED_PREFIXES):
            continue
        if key.endswith(".gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[: -len("beta")] + "bias"
        sd[key] = value
    bias, decoder_bias = "cls.predictions.bias", "cls.predictions.decoder.bias"
    # One tensor under two names in HF; older checkpoints saved only `cls.predictions.bias`.
    if bias not in sd and decoder_bias in sd:
        sd[bias] = sd[decoder_bias]
    if bias in sd:
        sd[decoder_bias] = sd[bias]
    return sd


def load_hf_bert_state_dict(model: BertMLM, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a `BertForMaskedLM` / `BertForPreTraining` state dict, whatever HF version wrote it; fills the
    tied decoder weight from the word embeddings when a checkpoint saved it once."""
    sd = normalise_hf_bert_keys(state_dict)
    word, decoder = "bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"
    if model.config.tied:
        if decoder in sd and word in sd and not torch.equal(sd[decoder], sd[word]):
            raise ValueError("the checkpoint's MLM decoder is not tied to its word embeddings; "
                             "build the model with BertConfig(tied=False)")
        if word in sd:
            sd[decoder] = sd[word]
    else:
        if decoder not in sd and word in sd:
            sd[decoder] = sd[word]
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}" + (" …" if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:8])}" + (" …" if len(unexpected) > 8 else ""))
        raise ValueError(f"not a BertForMaskedLM state dict for this config: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if wrong:
        raise ValueError(f"BERT weight shapes do not match the config: {', '.join(wrong[:8])}")
    model.load_state_dict(sd, strict=True)
