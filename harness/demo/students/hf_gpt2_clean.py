"""A clean Hugging Face submission: a `GPT2LMHeadModel` from a fresh config, `save_pretrained`, and the
Trainer's `trainer_state.json`."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from harness.demo.students.common import (EOT, GPT2_VOCAB, Ctx, clean_loop, honest_val, lr_lambda,
                                          save_pretrained, start_at_unigram, write_text, write_toml)


def hf_gpt2_clean(ctx: Ctx, sid: str) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    sc, folder = ctx.scale, ctx.folder(sid)
    g = ctx.seeded(6)
    d = sc.d_clean
    config = GPT2Config(vocab_size=GPT2_VOCAB, n_positions=128, n_embd=d, n_layer=2, n_head=4, bos_token_id=EOT,
                        eos_token_id=EOT)
    model = GPT2LMHeadModel(config)
    start_at_unigram(model.transformer.wte, model.transformer.ln_f, ctx.data.log_unigram(GPT2_VOCAB))
    lr, steps = 3e-3, sc.clean_steps
    warmup = max(1, steps // 10)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, warmup))
    history: list[dict[str, float]] = []
    every = max(1, steps // 8)

    def on_step(it: int, loss: float) -> None:
        if it % every == 0 or it == steps:
            history.append({"step": it, "epoch": round(it / steps, 3), "loss": round(loss, 4),
                            "learning_rate": float(f"{sched.get_last_lr()[0]:.6g}")})

    clean_loop(model, ctx, g, opt, sched, steps, lambda x: model(input_ids=x).logits, on_step)
    val = honest_val(model, ctx.data, sc.eval_tokens)
    history.append({"step": steps, "epoch": 1.0, "eval_loss": round(val, 4)})
    save_pretrained(model, folder / "hf_model")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": steps, "log_history": history}, indent=2)
                                               + "\n", encoding="utf-8")
    train_loss = float(np.mean([h["loss"] for h in history if "loss" in h][-2:]))
    write_toml(folder / "submission.toml", {
        "submission": {"student": "Samuel Adeyemi", "family": "gpt", "checkpoint": "hf_model", "tokenizer": "gpt2"},
        "claims": {"val_loss": round(val, 3), "val_ppl": round(math.exp(val), 1), "train_loss": round(train_loss, 3)},
    })
    write_text(folder / "report.md", f"""
        # GPT-2 from scratch with Hugging Face

        A `GPT2LMHeadModel` from a fresh `GPT2Config` (2 layers, 4 heads, n_embd {d}, 128 positions, the
        GPT-2 tokenizer), trained for {steps} steps on 64-token windows of the course's training split
        (AdamW, learning rate {lr:g}). Saved with `save_pretrained` in `hf_model/`. It starts as the unigram
        model of the training split (token frequencies through `wte` dimension 0 and `ln_f`'s bias, kept
        fixed), so that a short training only has to add what the context says.

        Validation loss on the course's validation split: {val:.3f} (perplexity {math.exp(val):,.0f}).
        """)
