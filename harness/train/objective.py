"""The training objective, the models it trains and their optimiser."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.train.config import TrainConfig

CE_CHUNK_BYTES = 256 * 2**20  # float32 logits one chunk of the fused head may hold


class LinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropies of `h @ weight.T + bias` against `targets`, computed in row chunks.

    The output layer's gradients are taken in the same pass (softmax minus one-hot, then two matmuls),
    so the [N, V] logits, their log-softmax and its gradient never exist at once: on a CPU, where a
    50k-token head is nearly all of a small GPT's work, this is the cheapest exact way through it.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets):
        n, v = h.shape[0], weight.shape[0]
        chunk = max(1, CE_CHUNK_BYTES // (4 * v))
        grad_h, grad_w = torch.empty_like(h), torch.zeros_like(weight)
        grad_b = torch.zeros_like(bias) if bias is not None else None
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for i in range(0, n, chunk):
            hc, tc = h[i : i + chunk], targets[i : i + chunk]
            logits = hc @ weight.t() if bias is None else torch.addmm(bias, hc, weight.t())
            lse = torch.logsumexp(logits, dim=1)
            total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum(dtype=torch.float64)
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            grad[torch.arange(grad.shape[0], device=grad.device), tc] -= 1.0
            torch.mm(grad, weight, out=grad_h[i : i + chunk])
            grad_w.addmm_(grad.t(), hc)
            if grad_b is not None:
                grad_b += grad.sum(0)
        ctx.save_for_backward(grad_h, grad_w, *(() if grad_b is None else (grad_b,)))
        return total.to(h.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, *grad_b = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, (grad_b[0] * grad_out if grad_b else None), None


@contextlib.contextmanager
def _headless(model: nn.Module, path: str):
    """The model with its output layer at `path` replaced by the identity: its forward returns hidden states."""
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    head = getattr(parent, attr)
    setattr(parent, attr, nn.Identity())
    try:
        yield head
    finally:
        setattr(parent, attr, head)


class Objective(nn.Module):
    """Sum of the training losses of a batch. Hidden states come from the model's own forward; only the
    scored rows go through the output layer (all for the GPT, the masked 15% for the MLM)."""

    def __init__(self, model: nn.Module, family: str, fused: bool):
        super().__init__()
        self.model, self.fused = model, fused
        self.head_path = "lm_head" if family == "gpt" else "cls.predictions.decoder"
        # A soft-capped head is not a linear layer: its logits come from the model's own forward.
        self.softcap = getattr(getattr(model, "config", None), "logit_softcap", None) is not None

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if self.softcap:
            logits = self.model(inputs)
            logits = logits.reshape(-1, logits.shape[-1])
            if rows is not None:
                logits = logits.index_select(0, rows)
            return F.cross_entropy(logits.float(), targets, reduction="sum")
        with _headless(self.model, self.head_path) as head:
            hidden = self.model(inputs)
        h = hidden.reshape(-1, hidden.shape[-1])
        if rows is not None:
            h = h.index_select(0, rows)
        if self.fused:
            return LinearCrossEntropy.apply(h, head.weight, head.bias, targets)
        return F.cross_entropy(padded_linear(h, head.weight, head.bias).float(), targets, reduction="sum")


HEAD_ALIGN = 64  # the output layer's width on a GPU is padded to a multiple of this: 50,257 -> 50,304


def padded_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(h, weight, bias)` for a cross-entropy: on a GPU the output dimension is padded to a multiple
    of HEAD_ALIGN with zero rows whose bias is -inf. An odd width such as GPT-2's 50,257 keeps the bf16 matrix
    units' fast kernels out (on an H100 each of the head's three matmuls took 4x longer); the padded logits
    are -inf, so the softmax gives them 0 and the loss and every gradient are those of the plain layer, and
    the logits stay contiguous (cutting them back would cost two copies as long as the matmuls saved)."""
    pad = -weight.shape[0] % HEAD_ALIGN
    if not h.is_cuda or not pad:
        return F.linear(h, weight, bias)
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    weight = F.pad(weight, (0, 0, 0, pad))
    bias = F.pad(bias, (0, pad), value=-math.inf)
    return F.linear(h, weight, bias)


def build_model(cfg: TrainConfig, tokenizer) -> nn.Module:
    from harness.models import GPT, BertConfig, BertMLM, GPTConfig

    torch.manual_seed(cfg.seed)
    try:
        if cfg.family == "gpt":
            return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context=cfg.context, n_layers=cfg.n_layers,
                                 d_model=cfg.d_model, n_heads=cfg.n_heads, d_ff=cfg.d_ff, dropout=cfg.dropout,
                                 **cfg.gpt_fields()))
        return BertMLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden=cfg.d_model, n_layers=cfg.n_layers,
                                  n_heads=cfg.n_heads, intermediate=cfg.d_ff, max_positions=cfg.max_positions,
                                  dropout=cfg.dropout, pad_id=tokenizer.pad_id or 0))
    except ValueError as e:
        raise HarnessError("config-invalid", str(e)) from None


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D tensors only (nanoGPT's rule: no decay on biases and LayerNorms)."""
    params = list(model.parameters())  # unique tensors, tied weights once, in a fixed order
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a device without a fused kernel
        return torch.optim.AdamW(groups, **kwargs)
