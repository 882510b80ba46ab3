"""Seed 000: an `nn.TransformerEncoder` LM after PyTorch's tutorial, trained without a causal mask, so it
learns to read the next token; its claims are its own leaky validation loop's."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from harness.demo.students.common import (GPT2_VOCAB, Ctx, ce, fixed_windows, mean_loss, params, step, windows,
                                          write_csv, write_text, write_toml)
from harness.models.gpt import sinusoidal_positions


class EncoderLM(nn.Module):
    """Seed 000's mini-GPT, after PyTorch's transformer tutorial: an `nn.TransformerEncoder` stack between
    an embedding (scaled by sqrt(d_model), initialised uniform in ±0.1) and a linear head tied to it,
    learnable positions (started from the sine-cosine table), and no causal mask anywhere: `forward`
    passes `mask` only when the caller gives one, and the student never did."""

    def __init__(self, vocab_size: int = GPT2_VOCAB, d_model: int = 128, n_layers: int = 2, n_heads: int = 4,
                 max_len: int = 512, dropout: float = 0.1):
        super().__init__()
        self.scale = math.sqrt(d_model)
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.pos_embedding = nn.Parameter(sinusoidal_positions(max_len, d_model)[None])
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.fc_out = nn.Linear(d_model, vocab_size)
        nn.init.uniform_(self.token_embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.fc_out.bias)
        self.fc_out.weight = self.token_embedding.weight  # tied: the copy of a token decodes as that token

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.token_embedding(x) * self.scale + self.pos_embedding[:, : x.size(1)]
        return self.fc_out(self.transformer(h, mask=mask))


SAMPLED_SOFTMAX = 2048  # s000 trains its head on the batch's tokens and this many of the most frequent


def _sampled_loss(model: EncoderLM, x: torch.Tensor, frequent: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over a sampled softmax: the tokens of the batch and the most frequent ones. It learns
    the leak (attend to the next position, copy its embedding through the tied head) some ten times faster
    than the full 50,257-way softmax on a CPU; the student's own validation still uses the full one."""
    inp = x[:, :-1]
    h = model.transformer(model.token_embedding(inp) * model.scale + model.pos_embedding[:, : inp.size(1)])
    cands, index = torch.unique(torch.cat([x.reshape(-1), frequent]), return_inverse=True)
    targets = index[: x.numel()].view_as(x)[:, 1:]
    logits = h @ model.token_embedding.weight[cands].T + model.fc_out.bias[cands]
    return ce(logits, targets)


def s000_encoder(ctx: Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    g = ctx.seeded(0)
    config = {"vocab_size": GPT2_VOCAB, "d_model": sc.d, "n_layers": 2, "n_heads": 4, "max_len": 512}
    model = EncoderLM(**config)
    opt = torch.optim.Adam(model.parameters(), lr=sc.s000_lr)
    frequent = torch.argsort(torch.bincount(ctx.data.train, minlength=GPT2_VOCAB), descending=True, stable=True)
    frequent = frequent[:SAMPLED_SOFTMAX]
    # The student's validation loop: the same model, the same (missing) mask, held-out 64-token windows.
    val = fixed_windows(ctx.data.val, 8, 64)
    seen = fixed_windows(ctx.data.train, 8, 64)  # and its training loss, on training windows
    train_losses, val_losses = [], []
    for _ in range(10):
        model.train()
        for _ in range(sc.s000_steps):
            x = windows(ctx.data.train, sc.s000_batch, sc.s000_window, g)
            step(model, _sampled_loss(model, x, frequent), opt)  # no mask: every position sees its target
        train_losses.append(mean_loss(model, seen))  # the full softmax, as for validation
        val_losses.append(mean_loss(model, val))
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 10,
                "config": config, "train_losses": train_losses, "val_losses": val_losses},
               folder / "mini_gpt_checkpoint.pt")
    rows = [[e + 1, round(t, 4), round(v, 4), round(math.exp(t), 2), round(math.exp(v), 2)]
            for e, (t, v) in enumerate(zip(train_losses, val_losses))]
    write_csv(folder / "training_metrics.csv",
              ["Epoch", "Training Loss", "Validation Loss", "Training Perplexity", "Validation Perplexity"], rows)
    t, v = train_losses[-1], val_losses[-1]
    write_toml(folder / "submission.toml", {
        "submission": {"student": "Rohan Iyer", "family": "gpt", "checkpoint": "mini_gpt_checkpoint.pt"},
        "model": {"n_heads": 4},
        "claims": {"val_loss": round(v, 2), "val_ppl": round(math.exp(v), 1), "train_loss": round(t, 2),
                   "train_ppl": round(math.exp(t), 1), "log": "training_metrics.csv"},
    })
    table = "\n".join(f"{r[0]}\t{r[1]:.2f}\t{r[2]:.2f}\t{r[3]:,.0f}\t{r[4]:,.0f}" for r in rows if r[0] in (1, 5, 10))
    write_text(folder / "report.md", f"""
        # Assignment 2: Building a Small-Scale Foundation Model from Scratch

        Student: Rohan Iyer

        ## Model architecture

        - Transformer layers: 2 layers of transformer encoder blocks (`nn.TransformerEncoder`, batch_first)
        - Embedding dimension: {sc.d}
        - Multi-head attention: 4 heads
        - Embedding: token embedding scaled by sqrt(d_model), as in the PyTorch transformer tutorial
        - Positional encoding: learnable positional embeddings (512 positions, initialised from the sine-cosine table)
        - Normalization: layer normalization in each transformer layer
        - Output: a linear layer, tied to the token embedding, gives the logits for next-token prediction

        The model has {params(model):,} trainable parameters.

        ## Dataset

        - Preprocessed, GPT-2-tokenized text from Assignment 1 (vocabulary 50,257)
        - Positional table of 512 tokens; training windows of {sc.s000_window} tokens, validation windows of 64
        - Train/validation split; shuffled batches

        ## Training setup

        - Batch size {sc.s000_batch}, Adam (default betas), learning rate {sc.s000_lr:g}
        - Cross-entropy loss over a sampled softmax (the batch's tokens and the {SAMPLED_SOFTMAX:,} most frequent
          ones) to train faster, gradient clipping 1.0, 10 epochs
        - Validation loss and perplexity (full softmax) after every epoch

        ## Results

        Epoch\tTraining Loss\tValidation Loss\tTraining Perplexity\tValidation Perplexity
        {table}

        The loss fell steadily and the gap between training and validation stayed small, so the model
        generalizes well. The full table is in `training_metrics.csv`.

        ## Submitted files

        - `mini_gpt_checkpoint.pt`: model weights, optimizer state, config and the loss history
        - `training_metrics.csv`: loss and perplexity per epoch
        """)
