"""Seed 003: padding with the end-of-text id, ignored in the loss, so the model never learns where a
document ends; a five-run sweep whose final training losses are its only numbers."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from harness.demo.students.common import EOT, GPT2_VOCAB, Ctx, Data, step, write_csv, write_text, write_toml
from harness.demo.students.minigpt import MiniGPT


# The student's five runs, each against the baseline (5e-4, batch 32, 2 layers, 128 wide), here as
# factors of this scale's baseline: twice the learning rate, half the batch, one layer, half the width.
_SWEEP = (("baseline", {}), ("lr_1e-3", {"lr": 2.0}), ("batch_size_16", {"batch": 0.5}),
          ("n_layers_1", {"n_layers": 0.5}), ("embed_dim_64", {"embed_dim": 0.5}))


def sequences(data: Data, n: int) -> torch.Tensor:
    """Each document cut into chunks of 64 tokens, the last one padded with PAD_TOKEN_ID = 50256 (the
    end-of-text id): EOT only ever appears as padding, never as a target the loss counts."""
    split, chunks = data.train_split, []
    for i in range(split.n_documents):
        doc = split.document(i).astype(np.int64)
        for a in range(0, len(doc), 64):
            piece = doc[a : a + 64]
            if len(piece) >= 2:
                chunks.append(np.pad(piece, (0, 64 - len(piece)), constant_values=EOT))
        if len(chunks) >= n:
            break
    return torch.from_numpy(np.stack(chunks[:n]))


def s003_pad_eot(ctx: Ctx, sid: str) -> None:
    sc, folder = ctx.scale, ctx.folder(sid)
    seqs = sequences(ctx.data, 4 * sc.s003_steps * sc.s003_batch)
    base = {"lr": 5e-4 * sc.s003_lr_scale, "batch": sc.s003_batch, "n_layers": 2, "embed_dim": sc.d}
    rows = []
    for k, (name, factors) in enumerate(_SWEEP):
        g = ctx.seeded(30 + k)
        cfg = {key: type(v)(v * factors.get(key, 1)) for key, v in base.items()}
        steps = sc.s003_steps if name == "baseline" else sc.s003_other_steps
        model = MiniGPT(GPT2_VOCAB, cfg["embed_dim"], cfg["n_layers"], 4, 64, dropout=0.1)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
        loss_fn = nn.CrossEntropyLoss(ignore_index=EOT)  # PAD_TOKEN_ID: padding must not count
        model.train()
        for _ in range(steps):
            x = seqs[torch.randint(0, len(seqs), (cfg["batch"],), generator=g)]
            # the last step's loss, as the student's table reports it; this student clipped nothing
            final = step(model, loss_fn(model(x[:, :-1]).reshape(-1, GPT2_VOCAB), x[:, 1:].reshape(-1)), opt,
                          clip=None)
        rows.append([name, round(final, 4), round(math.exp(final), 2)])
        if name == "baseline":
            (folder / "outcome").mkdir()
            torch.save(model.state_dict(), folder / "outcome" / "mini_gpt_baseline.pt")
    write_csv(folder / "outcome" / "results_table.csv", ["experiment", "final_loss", "final_ppl"], rows)
    write_toml(folder / "submission.toml", {
        "submission": {"student": "Tomás Okafor", "family": "gpt", "checkpoint": "outcome/mini_gpt_baseline.pt"},
        "model": {"n_heads": 4, "norm": "pre", "activation": "gelu"},
    })
    write_text(folder / "report.md", f"""
        # Small-Scale Foundation Model Training: Report

        ## 1. Model architecture and parameters

        MiniGPT is a decoder-only transformer for next-token prediction, implemented in `model.py` and
        configured in `config.py`.

        - Token embedding: `nn.Embedding(vocab_size, embed_dim)`, no padding index
        - Positional encoding: learned, `PositionalEmbedding: nn.Embedding(max_len, embed_dim)`
        - Blocks: pre-norm; LayerNorm, multi-head self-attention (one linear projects to Q, K, V; causal
          mask), residual; LayerNorm, FFN (GELU, hidden `embed_dim * 4`), residual
        - Output: final LayerNorm and a linear LM head without bias

        Parameter\tValue
        vocab_size\t50,257
        seq_len\t64
        embed_dim\t{sc.d}
        n_heads\t4
        n_layers\t2
        ffn_mult\t4
        dropout\t0.1 (in attention)

        ## 2. Dataset

        GPT-2 token ids, `VOCAB_SIZE = 50257`, `PAD_TOKEN_ID = 50256`. Sequences are cut into chunks of
        `SEQ_LEN = 64`; shorter ones are padded with `PAD_TOKEN_ID` to length 64.

        ## 3. Training setup and hyperparameter experiments

        Next-token prediction: logits at positions 0..L-2 against labels at 1..L-1, with
        `CrossEntropyLoss(ignore_index=PAD_TOKEN_ID)` so that padding does not count. AdamW, one epoch,
        loss and perplexity recorded per step. The model state dict is saved as
        `outcome/mini_gpt_<experiment_name>.pt`.

        Experiment\tOverride\tDescription
        baseline\t-\tlr={base['lr']:g}, batch_size={sc.s003_batch}, n_layers=2, embed_dim={sc.d}, n_heads=4
        lr_1e-3\tlr={2 * base['lr']:g}\tHigher learning rate
        batch_size_16\tbatch_size={sc.s003_batch // 2}\tSmaller batch size
        n_layers_1\tn_layers=1\tSingle transformer layer
        embed_dim_64\tembed_dim={sc.d // 2}\tSmaller embedding

        ## 4. Observations

        With one epoch the curves show how quickly each setup descends; the numbers are in
        `outcome/results_table.csv`.
        """)
