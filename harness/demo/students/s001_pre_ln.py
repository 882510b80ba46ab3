"""Seed 001: a pre-LN nanoGPT-style model, `torch.compile`d (its keys carry `_orig_mod.`), reporting
training numbers only."""

from __future__ import annotations

import math

import numpy as np
import torch

from harness.demo.students.common import (GPT2_VOCAB, Ctx, ce, gpt, lr_lambda, params, start_at_unigram, step,
                                          windows, write_csv, write_text, write_toml)


def s001_pre_ln(ctx: Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    g = ctx.seeded(1)
    model = gpt(GPT2_VOCAB, sc.d)
    start_at_unigram(model.transformer.wte, model.transformer.ln_f, ctx.data.log_unigram(GPT2_VOCAB))
    lr, total = 1e-3, 10 * sc.s001_steps
    warmup = max(1, total // 10)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, warmup))
    rows = []
    for epoch in range(10):
        model.train()
        losses = []
        for _ in range(sc.s001_steps):
            x = windows(ctx.data.train, sc.clean_batch, 64, g)
            losses.append(step(model, ce(model(x[:, :-1]), x[:, 1:]), opt, sched))
        mean = float(np.mean(losses))
        rows.append([epoch + 1, round(mean, 4), round(math.exp(mean), 2)])
    # torch.compile wraps the model: its state dict keys carry `_orig_mod.`
    sd = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    model_args = {"n_layer": 2, "n_head": 4, "n_embd": sc.d, "block_size": 64, "bias": True,
                  "vocab_size": GPT2_VOCAB, "dropout": 0.1}
    config = {"batch_size": sc.clean_batch, "block_size": 64, "learning_rate": lr, "warmup_iters": warmup,
              "max_iters": total, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0,
              "compile": True, "epochs": 10}
    torch.save({"model": sd, "model_args": model_args, "iter_num": total, "best_val_loss": None, "config": config},
               folder / "ckpt.pt")
    write_csv(folder / "train_log.csv", ["epoch", "loss", "perplexity"], rows)
    loss, ppl = rows[-1][1], rows[-1][2]
    write_toml(folder / "submission.toml", {
        "submission": {"student": "Maya Lindqvist", "family": "gpt", "tokenizer": "gpt2"},
        "model": {"n_heads": 4, "norm": "pre", "activation": "gelu"},
        "claims": {"train_loss": round(loss, 2), "train_ppl": round(ppl, 2), "log": "train_log.csv"},
    })
    table = "\n".join(f"| {e:<5} | {l:<4.2f} | {p:<10.2f} |" for e, l, p in rows if e in (1, 3, 5, 10))
    write_text(folder / "report.md", f"""
        # Assignment 2: Building a Mini-GPT Transformer from Scratch

        ## 1. Model architecture

        | Component           | Specification            |
        |---------------------|--------------------------|
        | Embedding Dimension | {sc.d:<24} |
        | Layers              | 2 transformer blocks     |
        | Attention Heads     | 4                        |
        | Sequence Length     | 64 tokens                |
        | Vocabulary          | 50,257 (GPT-2 BPE)       |
        | Parameters          | {f'{params(model):,}':<24} |
        | Dropout             | 0.1                      |

        Decoder-only, pre-layer normalization, causal self-attention, GELU feed-forward (4x), learned
        positions, output layer tied to the token embedding. The model starts as the unigram model: embedding
        dimension 0 holds the token log-frequencies (scaled) and the final LayerNorm's bias puts out a
        constant there, both kept fixed. Compiled with `torch.compile`.

        ## 2. Training

        AdamW (beta1 0.9, beta2 0.95, weight decay 0.1), learning rate {lr:g} with {warmup}-step warm-up and
        linear decay, gradient clipping 1.0, batch size {sc.clean_batch}, 10 epochs.

        | Epoch | Loss | Perplexity |
        |-------|------|------------|
        {table}

        Final training loss {loss:.2f}, perplexity {ppl:.2f}. No overfitting despite no validation set.

        ## 3. Limitations

        Small model, short context, no validation split, a single hyperparameter configuration.
        """)
