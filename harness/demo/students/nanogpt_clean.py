"""A clean nanoGPT submission: `ckpt.pt` as nanoGPT's `train.py` saves it, its `estimate_loss` log, and an
honest validation claim. Its checkpoint is the source of broken_file and copied_model."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from harness.demo.students.common import (UNIGRAM_SCALE, Ctx, ce, clean_loop, gpt, honest_val, lr_lambda,
                                          start_at_unigram, windows, write_text, write_toml)


def nanogpt_clean(ctx: Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    g = ctx.seeded(5)
    d, vocab = sc.d_clean, 50304  # nanoGPT pads GPT-2's 50,257 up to a multiple of 64
    model = gpt(vocab, d, bias=True, dropout=0.0)  # nanoGPT's default: biases, like GPT-2
    start_at_unigram(model.transformer.wte, model.transformer.ln_f, ctx.data.log_unigram(vocab))
    lr, steps = 3e-3, sc.clean_steps
    warmup = max(1, steps // 10)
    # nanoGPT's configure_optimizers: weight decay on matrices only
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, warmup))
    eval_interval, eval_iters = max(1, steps // 4), 2
    eg = torch.Generator().manual_seed(ctx.seed * 1000 + 55)
    log: list[dict[str, float]] = []

    def estimate() -> dict[str, float]:
        model.eval()
        out = {}
        with torch.no_grad():
            for split, stream in (("train", ctx.data.train), ("val", ctx.data.val)):
                out[split] = float(np.mean([ce(model(x[:, :-1]), x[:, 1:]).item() for x in
                                            (windows(stream, sc.clean_batch, 64, eg) for _ in range(eval_iters))]))
        model.train()
        return out

    def on_step(it: int, loss: float) -> None:
        if it % eval_interval == 0 or it == steps:
            e = estimate()
            log.append({"step": it, "train_loss": round(e["train"], 4), "val_loss": round(e["val"], 4)})

    e0 = estimate()
    log.append({"step": 0, "train_loss": round(e0["train"], 4), "val_loss": round(e0["val"], 4)})
    clean_loop(model, ctx, g, opt, sched, steps, model, on_step)
    val = honest_val(model, ctx.data, sc.eval_tokens)
    best = min(row["val_loss"] for row in log)
    model_args = {"n_layer": 2, "n_head": 4, "n_embd": d, "block_size": 64, "bias": True, "vocab_size": vocab,
                  "dropout": 0.0}
    config = {"out_dir": "out-wiki", "eval_interval": eval_interval, "eval_iters": eval_iters, "dataset": "wiki_vital",
              "gradient_accumulation_steps": 1, "batch_size": sc.clean_batch, "block_size": 64, "n_layer": 2,
              "n_head": 4, "n_embd": d, "dropout": 0.0, "bias": True, "learning_rate": lr, "max_iters": steps,
              "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0, "decay_lr": True,
              "warmup_iters": warmup, "min_lr": lr / 10, "device": "cpu", "dtype": "float32", "compile": False}
    path = folder / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "model_args": model_args,
                "iter_num": steps, "best_val_loss": best, "config": config}, path)
    (folder / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log), encoding="utf-8")
    claims = {"val_loss": round(val, 3), "val_ppl": round(math.exp(val), 1), "train_loss": log[-1]["train_loss"]}
    ctx.nanogpt_sd, ctx.nanogpt_claims, ctx.nanogpt_file = model.state_dict(), claims, path
    write_toml(folder / "submission.toml", {
        "submission": {"student": "Lena Fischer", "family": "gpt", "tokenizer": "gpt2"},
        "claims": {**claims, "log": "log.jsonl"},
    })
    write_text(folder / "report.md", f"""
        # Mini-GPT with nanoGPT

        I trained nanoGPT (`model.py`, `train.py`) on the course's Wikipedia data with GPT-2 BPE:
        2 layers, 4 heads, n_embd {d}, block size 64, biases on, vocabulary padded to 50,304.
        AdamW (0.9/0.95, weight decay 0.1), learning rate {lr:g} with {warmup} warm-up steps and decay,
        {steps} iterations of batch {sc.clean_batch}.

        Initialisation ("init well"): the model starts as the unigram model of the training split. Embedding
        dimension 0 holds each token's centred log-frequency / {UNIGRAM_SCALE:g}, and the final LayerNorm outputs
        the constant {UNIGRAM_SCALE:g} there (weight 0, bias {UNIGRAM_SCALE:g}), so the tied output layer adds the
        log-frequency to every logit; those entries stay fixed during training. Step 0's validation loss in
        `log.jsonl` is the unigram model's.

        I evaluated the final model with `harness check` on the course's validation split:
        validation loss {val:.3f} (perplexity {math.exp(val):,.0f}). The training curve is in `log.jsonl`.
        """)
