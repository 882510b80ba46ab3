"""Seed 002: a 49,805-token embedding (the ids its sample happened to hold, no tokenizer's) and 5,120 tokens
learned by heart; training numbers only."""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.demo.students.common import Ctx, Data, ce, params, step, write_csv, write_text, write_toml
from harness.demo.students.minigpt import MiniGPT, s002_names

S002_VOCAB = 49_805  # seed 002's embedding size: the ids its sample happened to hold, no tokenizer's


def sample_tokens(data: Data, n: int) -> torch.Tensor:
    """The student's sample: GPT-2 ids of the first documents, without the ids their 49,805-row
    embedding has no row for (and without end-of-text: they tokenized text chunks)."""
    tokens = data.train_split.tokens[: 4 * n + 10_000].astype(np.int64)
    return torch.from_numpy(tokens[tokens < S002_VOCAB][:n].copy())


def s002_memorise(ctx: Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    g = ctx.seeded(2)
    sample = sample_tokens(ctx.data, sc.s002_tokens)
    model = MiniGPT(vocab_size=S002_VOCAB, embed_dim=64, n_layers=1, n_heads=2, seq_len=64, ffn_mult=4,
                    dropout=0.3, ffn_dropout=0.3, head_bias=True)
    lr, batch = 1e-2, sc.s002_batch
    n_windows = (len(sample) - 1) // 64
    steps_per_epoch = math.ceil(n_windows / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=sc.s002_epochs * steps_per_epoch)
    rows = []
    for epoch in range(sc.s002_epochs):
        model.train()
        shift = int(torch.randint(0, 64, (1,), generator=g))  # the windows slide a little every epoch
        starts = torch.arange(n_windows) * 64 + shift
        starts = starts[starts + 65 <= len(sample)][torch.randperm(n_windows, generator=g)[: n_windows]]
        losses = []
        for i in range(0, len(starts), batch):
            x = torch.stack([sample[s : s + 65] for s in starts[i : i + batch].tolist()])
            losses.append(step(model, ce(model(x[:, :-1]), x[:, 1:]), opt, sched))
        mean = float(np.mean(losses))
        rows.append([epoch + 1, round(mean, 4), round(math.exp(mean), 2)])
    n_params = params(model)
    torch.save(s002_names(model.state_dict()), folder / "mini_gpt.pt")
    write_csv(folder / "training_log.csv", ["epoch", "loss", "perplexity"], rows)
    loss, ppl = rows[-1][1], rows[-1][2]
    write_toml(folder / "submission.toml", {
        "submission": {"student": "Wen Zhou", "family": "gpt"},
        "model": {"n_heads": 2, "norm": "pre", "activation": "gelu"},
        "claims": {"train_loss": round(loss, 4), "train_ppl": round(ppl, 2), "params": n_params,
                   "log": "training_log.csv"},
    })
    shown = sorted({1, 2, 3, max(1, sc.s002_epochs // 2), sc.s002_epochs})
    table = "\n".join(f"{e}\t{l:.2f}\t{p:.2f}" for e, l, p in rows if e in shown)
    first = rows[0][1]
    write_text(folder / "report.md", f"""
        # Assignment 2: Building a Small-Scale Foundation Model from Scratch

        Wen Zhou

        ## 1 Model architecture and parameters

        Component\tValue
        Embedding Dimension\t64
        Transformer Layers\t1
        Attention Heads\t2
        Feed-Forward Dimension\t256
        Max Sequence Length\t64 tokens
        Dropout Rate\t0.3
        Vocabulary Size\t49,805
        Total Parameters\t{n_params:,}

        Decoder-only: causal multi-head attention (d_k = 32), GELU feed-forward 64 -> 256 -> 64,
        pre-normalization, learned positions up to 64 tokens, residual connections.

        ## 2 Dataset

        10 text chunks (about {len(sample):,} tokens), GPT-2 BPE, windows of 64 tokens, batch size {batch}.
        The vocabulary size is the number of ids the embedding needed for this data: 49,805.

        ## 3 Training setup and results

        AdamW, learning rate {lr:g}, weight decay 0.1, gradient clipping 1.0, cosine annealing,
        {sc.s002_epochs} epochs.

        Epoch\tLoss\tPerplexity
        {table}

        Final metrics: training loss {loss:.4f}, perplexity {ppl:.2f}. Loss fell from {first:.2f} to {loss:.2f}:
        the model memorizes the small sample rather than generalizing.
        """)
