"""Seed 004: a BERT masked LM (`BertForMaskedLM`) with its own WordPiece vocabulary, its losses per epoch
in `losses.json`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from harness.demo.students.common import (Ctx, fix_output_bias, log_frequencies, params, save_pretrained, step,
                                          write_text, write_toml)


_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # bert-base-uncased's, at ids 0-4


# Kept, not harness.train.data.wordpiece_vocabulary: that one learns merges, another vocabulary (other bytes).
def _wordpiece(folder: Path, texts: list[str]):
    """A lowercase WordPiece vocabulary of 2,000 pieces from the first ~200k characters of the train split
    (bert-base-uncased cannot be had offline): the specials, the commonest characters (alone and as `##`
    continuations), then the commonest words and word endings. Built by counting, not with a `tokenizers`
    trainer, whose ties fall differently on every run. Writes `vocab.txt` and `tokenizer.json`; returns
    the tokenizer exactly as the grader reads `vocab.txt`."""
    from collections import Counter

    from tokenizers import BertWordPieceTokenizer
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    from harness.course.tokenizers import get_tokenizer

    normalizer, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    words: Counter[str] = Counter()
    n = 0
    for t in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t)))
        n += len(t)
        if n >= 200_000:
            break
    chars: Counter[str] = Counter()
    endings: Counter[str] = Counter()
    for w, c in words.items():
        for ch in w:
            chars[ch] += c
        for i in range(max(1, len(w) - 6), len(w) - 1):
            endings["##" + w[i:]] += c

    def ranked(counts: Counter[str], keep: Callable[[str, int], bool]) -> list[str]:
        return [k for k, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if keep(k, c)]

    alphabet = sorted(ranked(chars, lambda ch, c: c >= 2)[:200])
    vocab = _SPECIALS + alphabet + ["##" + ch for ch in alphabet]
    room = 2000 - len(vocab)
    common = ranked(words, lambda w, c: c >= 2 and len(w) > 1 and w not in vocab)[: room * 3 // 4]
    vocab += common
    vocab += ranked(endings, lambda e, c: c >= 2 and e not in vocab)[: 2000 - len(vocab)]
    (folder / "vocab.txt").write_text("".join(v + "\n" for v in vocab), encoding="utf-8")
    BertWordPieceTokenizer({v: i for i, v in enumerate(vocab)}, lowercase=True).save(str(folder / "tokenizer.json"))
    return get_tokenizer(str(folder / "vocab.txt"))


# Kept, not metrics.windows.mlm_stream: that needs the whole split frozen with this vocabulary, for a few blocks.
def _mlm_blocks(tok, texts: list[str], n_blocks: int, length: int = 128) -> torch.Tensor:
    """`[CLS] document [SEP]` concatenated and cut into blocks of `length`."""
    ids: list[int] = []
    for i in range(0, len(texts), 64):
        for doc in tok.encode_batch(texts[i : i + 64]):
            ids += [tok.cls_id, *doc, tok.sep_id]
        if len(ids) >= n_blocks * length:
            break
    n_blocks = min(n_blocks, len(ids) // length)
    return torch.tensor(ids[: n_blocks * length], dtype=torch.long).view(n_blocks, length)


# Kept, not the masking of harness.train.data.Batches: that draws from numpy's PCG64, other masks (other bytes).
def _mask_tokens(x: torch.Tensor, tok, special: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """DataCollatorForLanguageModeling's dynamic masking: 15% of the non-special tokens are selected; of
    those 80% become [MASK], 10% a random token, 10% stay."""
    selected = (torch.rand(x.shape, generator=g) < 0.15) & ~torch.isin(x, special)
    labels = torch.where(selected, x, torch.full_like(x, -100))
    how = torch.rand(x.shape, generator=g)
    random_ids = torch.randint(0, tok.vocab_size, x.shape, generator=g)
    inputs = torch.where(selected & (how < 0.8), torch.full_like(x, tok.mask_id), x)
    inputs = torch.where(selected & (how >= 0.8) & (how < 0.9), random_ids, inputs)
    return inputs, labels


def s004_bert(ctx: Ctx, sid: str) -> None:
    from transformers import BertConfig, BertForMaskedLM

    sc, folder = ctx.scale, ctx.folder(sid)
    tok = _wordpiece(folder, ctx.data.documents("train"))
    g = ctx.seeded(4)
    batch, epochs = 8, 3
    train = _mlm_blocks(tok, ctx.data.documents("train"), sc.s004_steps * batch)
    val = _mlm_blocks(tok, ctx.data.documents("validation"), 48 if sc.name == "demo" else 16)
    special = torch.tensor(sorted(tok.special_ids))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=sc.bert_hidden, num_hidden_layers=3,
                        num_attention_heads=4, intermediate_size=sc.bert_ffn, max_position_embeddings=512,
                        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, pad_token_id=tok.pad_id)
    model = BertForMaskedLM(config)
    fix_output_bias(model.cls.predictions.bias,
                    log_frequencies(_mlm_blocks(tok, ctx.data.documents("train"), 2000), tok.vocab_size))
    total = epochs * math.ceil(len(train) / batch)
    warmup = max(1, round(0.06 * total))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
    history: dict[str, list] = {"epoch": [], "train_loss": [], "val_loss": [], "val_ppl": []}
    for epoch in range(epochs):
        model.train()
        losses = []
        for i in torch.randperm(len(train), generator=g).split(batch):
            inputs, labels = _mask_tokens(train[i], tok, special, g)
            losses.append(step(model, model(input_ids=inputs, labels=labels).loss, opt, sched))
        model.eval()
        total_nll, count = 0.0, 0
        vg = torch.Generator().manual_seed(1234)  # the same masks every epoch
        with torch.no_grad():
            for b in val.split(16):
                inputs, labels = _mask_tokens(b, tok, special, vg)
                logits = model(input_ids=inputs).logits
                total_nll += F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                             ignore_index=-100, reduction="sum").item()
                count += int((labels != -100).sum())
        val_loss = total_nll / count
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(round(float(np.mean(losses)), 4))
        history["val_loss"].append(round(val_loss, 4))
        history["val_ppl"].append(round(math.exp(val_loss), 2))
    save_pretrained(model, folder / "model")
    (folder / "losses.json").write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
    t, v, p = history["train_loss"][-1], history["val_loss"][-1], history["val_ppl"][-1]
    write_toml(folder / "submission.toml", {
        "submission": {"student": "Priya Raman", "family": "mlm", "checkpoint": "model", "tokenizer": "vocab.txt"},
        "claims": {"train_loss": round(t, 2), "val_loss": round(v, 2), "val_ppl": round(p, 1), "log": "losses.json"},
    })
    write_text(folder / "report.md", f"""
        # Assignment 1: Pre-train a Small Language Model from Scratch

        ## Model configuration

        - Architecture: BERT-style masked language model (`BertForMaskedLM`)
        - Transformer layers: 3
        - Hidden size: {sc.bert_hidden}
        - Attention heads: 4
        - Feed-forward size: {sc.bert_ffn}
        - Maximum position embeddings: 512
        - Dropout: 0.1 (attention and hidden)
        - Output bias: the training text's token log-frequencies, kept fixed (the model starts as the unigram model)
        - Parameters: {params(model):,}

        ## Dataset

        - The course's Wikipedia lead sections
        - Tokenization: bert-base-uncased could not be downloaded, so I trained a lowercase WordPiece
          vocabulary of {tok.vocab_size:,} pieces on the training text (`vocab.txt`, `tokenizer.json`)
        - Blocks of 128 tokens, `[CLS] document [SEP]` concatenated
        - Dynamic masking, 15% (80% [MASK], 10% random, 10% unchanged)

        ## Training setup

        - Epochs: {epochs}; batch size {batch} (validation 16)
        - AdamW, learning rate 1e-3, 6% linear warm-up then linear decay, gradient clipping 1.0

        ## Results

        - Final training loss: ~{t:.2f}
        - Final validation loss: ~{v:.2f}
        - Perplexity: ~{p:,.0f}
        - Training and validation losses per epoch are in `losses.json`.
        """)
