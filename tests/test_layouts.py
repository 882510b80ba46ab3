"""Every checkpoint layout against the code that writes it.

From one small canonical GPT's weights, each test builds the layout's own model (a faithful re-implementation
of nanoGPT, minGPT, word_language_model, ... or the real Hugging Face class), copies the weights in, saves
its state dict, reads it back with `torch.load(weights_only=True)`, loads it through `build_model`, and
checks that the loss through our model equals the loss through the layout's own forward pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.layouts import LAYOUTS, recognising
from harness.layouts._shared import head_candidates
from harness.models.build import CALIBRATION, CONFIG, HINTS, LAYOUT, UNVERIFIED, WEIGHTS, build_model
from harness.models import GPT, BertConfig, BertMLM, GPTConfig, save_canonical

V, D, L, H, T = 97, 32, 2, 4, 16
HD = D // H


@dataclass
class Raw:
    """What harness.checkpoint.read hands over, as far as build_model reads it."""

    tensors: dict
    config: dict = field(default_factory=dict)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every parameter: zero biases and unit LayerNorms would hide a wrong key map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def base() -> dict[str, torch.Tensor]:
    """The one set of weights every GPT layout is built from: a canonical GPT, untied, with biases."""
    torch.manual_seed(0)
    gpt = randomize(GPT(GPTConfig(vocab_size=V, context=T, n_layers=L, d_model=D, n_heads=H, tied=False)))
    sd = {k: v.detach().clone() for k, v in gpt.state_dict().items()}
    sd["head_bias"] = torch.randn(V, generator=torch.Generator().manual_seed(5)) * 0.1
    return sd


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(1))


def saved(module: nn.Module, tmp_path, name: str = "ckpt.pt") -> dict:
    """The module's state dict as a student's file, read back the safe way."""
    path = tmp_path / name
    torch.save(module.state_dict(), path)
    return torch.load(path, weights_only=True)


def fill(module: nn.Module, sd: dict) -> nn.Module:
    """Copy weights in; every parameter must be given (only buffers may stay as the module made them)."""
    missing, unexpected = module.load_state_dict(sd, strict=False)
    buffers = {k for k, _ in module.named_buffers()}
    assert not unexpected, unexpected
    assert set(missing) <= buffers, sorted(set(missing) - buffers)
    return module.eval()


def clm_loss(logits: torch.Tensor, ids: torch.Tensor) -> float:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(), ids[:, 1:].reshape(-1)).item()


@torch.no_grad()
def ours(loaded, ids) -> float:
    return clm_loss(loaded.model(ids), ids)


def assert_same_loss(expected: float, actual: float, tol: float = 1e-5) -> None:
    assert abs(actual - expected) <= tol * abs(expected), (actual, expected)


def own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # unique Parameters: a tied head once


def check(own: nn.Module, tensors: dict, ids, layout: str, forward=None, **kwargs):
    """Load through build_model and compare with the layout's own forward pass; returns the LoadedModel."""
    assert [l.NAME for l in recognising(tensors, kwargs.get("config"))] == [layout]
    raw = Raw(tensors, kwargs.pop("config", {}) or {})
    loaded = build_model(raw, **kwargs)
    assert loaded.layout == layout
    with torch.no_grad():
        expected = clm_loss(forward(ids) if forward else own(ids), ids)
    assert_same_loss(expected, ours(loaded, ids))
    assert loaded.params == own_params(own)
    assert not loaded.model.training
    json.dumps(loaded.describe())
    return loaded


# --------------------------------------------------------------------------------------------------
# nanoGPT (karpathy/nanoGPT model.py)
# --------------------------------------------------------------------------------------------------


class NanoLayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoAttention(nn.Module):
    def __init__(self, bias, flash):
        super().__init__()
        self.c_attn = nn.Linear(D, 3 * D, bias=bias)
        self.c_proj = nn.Linear(D, D, bias=bias)
        self.flash = flash
        if not flash:
            self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        B, t, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (z.view(B, t, H, C // H).transpose(1, 2) for z in (q, k, v))
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, t, C))


class NanoMLP(nn.Module):
    def __init__(self, bias, act):
        super().__init__()
        self.c_fc = nn.Linear(D, 4 * D, bias=bias)
        self.gelu = act
        self.c_proj = nn.Linear(4 * D, D, bias=bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class NanoBlock(nn.Module):
    def __init__(self, bias, flash, act):
        super().__init__()
        self.ln_1 = NanoLayerNorm(D, bias)
        self.attn = NanoAttention(bias, flash)
        self.ln_2 = NanoLayerNorm(D, bias)
        self.mlp = NanoMLP(bias, act)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's GPT; `tied=False, act=NewGELU` is minGPT's (2022) GPT, whose keys are the same."""

    def __init__(self, bias=True, flash=True, tied=True, act=None):
        super().__init__()
        act = act or nn.GELU()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, D), wpe=nn.Embedding(T, D),
            h=nn.ModuleList([NanoBlock(bias, flash, act) for _ in range(L)]), ln_f=NanoLayerNorm(D, bias)))
        self.lm_head = nn.Linear(D, V, bias=False)
        if tied:
            self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


class NewGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def canonical_subset(base, module, tied=False):
    sd = {k: base[k] for k in module.state_dict() if k in base}
    if tied:
        sd["lm_head.weight"] = sd["transformer.wte.weight"] = base["transformer.wte.weight"]
    return sd


NANO_CONFIG = {"model_args": {"n_layer": L, "n_head": H, "n_embd": D, "block_size": T, "bias": True, "vocab_size": V,
                              "dropout": 0.0}}


def test_nanogpt_tied_with_mask_buffers(base, batch, tmp_path):
    own = NanoGPT(bias=True, flash=False, tied=True)
    fill(own, canonical_subset(base, own, tied=True))
    tensors = saved(own, tmp_path)
    assert "transformer.h.0.attn.bias" in tensors
    loaded = check(own, tensors, batch, "nanogpt", config=NANO_CONFIG)
    assert loaded.tied and loaded.config.tied and loaded.n_outputs == V
    assert loaded.sources["n_heads"] == CONFIG and loaded.config.n_heads == H
    assert loaded.sources["norm"] == LAYOUT and loaded.sources["d_model"] == WEIGHTS
    assert any("mask" in f for f in loaded.facts)


def test_nanogpt_without_biases(base, batch, tmp_path):
    own = NanoGPT(bias=False, flash=True, tied=True)
    fill(own, canonical_subset(base, own, tied=True))
    tensors = saved(own, tmp_path)
    tensors["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)  # what HF-era code left behind
    loaded = check(own, tensors, batch, "nanogpt", hints={"n_heads": H})
    assert not loaded.config.bias and not loaded.config.ln_bias
    assert loaded.sources["n_heads"] == HINTS


# --------------------------------------------------------------------------------------------------
# minGPT (karpathy/minGPT, 2022 on; and the 2020 version, read by the minigpt layout)
# --------------------------------------------------------------------------------------------------


def test_mingpt(base, batch, tmp_path):
    own = NanoGPT(bias=True, flash=False, tied=False, act=NewGELU())
    fill(own, canonical_subset(base, own))
    loaded = check(own, saved(own, tmp_path), batch, "mingpt", hints={"n_heads": H})
    assert not loaded.tied and loaded.config.activation == "gelu_tanh"
    assert loaded.sources["activation"] == UNVERIFIED  # minGPT's NewGELU, or an untied nanoGPT's exact GELU


class OldMinGPTAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.key, self.query, self.value = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.proj = nn.Linear(D, D)
        self.register_buffer("mask", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        B, t, C = x.size()
        k, q, v = (m(x).view(B, t, H, C // H).transpose(1, 2) for m in (self.key, self.query, self.value))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf")), dim=-1)
        return self.proj((att @ v).transpose(1, 2).contiguous().view(B, t, C))


class OldMinGPTBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = OldMinGPTAttention()
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D), nn.Dropout(0.1))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class OldMinGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_emb = nn.Embedding(V, D)
        self.pos_emb = nn.Parameter(torch.zeros(1, T, D))
        self.blocks = nn.Sequential(*[OldMinGPTBlock() for _ in range(L)])
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, V, bias=False)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb[:, : idx.shape[1], :]
        return self.head(self.ln_f(self.blocks(x)))


def test_mingpt_2020_is_a_minigpt(base, batch, tmp_path):
    own = OldMinGPT()
    sd = {"tok_emb.weight": base["transformer.wte.weight"], "pos_emb": base["transformer.wpe.weight"][None],
          "ln_f.weight": base["transformer.ln_f.weight"], "ln_f.bias": base["transformer.ln_f.bias"],
          "head.weight": base["lm_head.weight"]}
    for i in range(L):
        c, b = f"transformer.h.{i}.", f"blocks.{i}."
        q, k, v = base[c + "attn.c_attn.weight"].split(D)
        qb, kb, vb = base[c + "attn.c_attn.bias"].split(D)
        sd.update({b + "attn.query.weight": q, b + "attn.key.weight": k, b + "attn.value.weight": v,
                   b + "attn.query.bias": qb, b + "attn.key.bias": kb, b + "attn.value.bias": vb})
        for theirs, mine in (("attn.proj", "attn.c_proj"), ("mlp.0", "mlp.c_fc"), ("mlp.2", "mlp.c_proj"),
                             ("ln1", "ln_1"), ("ln2", "ln_2")):
            sd[f"{b}{theirs}.weight"], sd[f"{b}{theirs}.bias"] = base[f"{c}{mine}.weight"], base[f"{c}{mine}.bias"]
    fill(own, sd)
    loaded = check(own, saved(own, tmp_path), batch, "minigpt", hints={"n_heads": H, "causal": True})
    assert "qkv_order" not in loaded.sources  # three separate projections: nothing to guess
    # minGPT's own code fixes these: calibration on a weak model once chose post-LN for it
    assert loaded.sources["norm"] == loaded.sources["activation"] == LAYOUT
    assert loaded.config.norm == "pre" and loaded.config.activation == "gelu"


# --------------------------------------------------------------------------------------------------
# Hugging Face GPT-2 and BERT (the real classes)
# --------------------------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_gpt2(base):
    cfg = transformers.GPT2Config(n_layer=L, n_embd=D, n_head=H, vocab_size=V, n_positions=T,
                                  bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(cfg)
    # Conv1D stores [in, out]: the transpose of our nn.Linear weights.
    sd = {k: (base[k].t() if k.endswith(_CONV1D) else base[k]) for k in model.state_dict() if k in base}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return fill(model, sd)


def test_hf_gpt2(base, batch, tmp_path):
    own = hf_gpt2(base)
    loaded = check(own, saved(own, tmp_path), batch, "hf-gpt2", forward=lambda ids: own(ids).logits,
                   config=own.config.to_dict())
    assert loaded.tied and loaded.config.activation == "gelu_tanh"
    assert loaded.sources["activation"] == CONFIG and loaded.sources["n_heads"] == CONFIG


def test_hf_gpt2_save_pretrained_folder(base, batch, tmp_path):
    """A model folder: safetensors keeps the tied head once, config.json says the rest."""
    from safetensors.torch import load_file

    own = hf_gpt2(base)
    own.save_pretrained(tmp_path / "hf")
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    loaded = check(own, tensors, batch, "hf-gpt2", forward=lambda ids: own(ids).logits, config=config)
    assert loaded.tied and loaded.sources["ln_eps"] == CONFIG


def test_hf_gpt2_without_prefix(base, batch, tmp_path):
    own = hf_gpt2(base)
    bare = own.transformer  # a GPT2Model: no `transformer.` prefix and no head

    def forward(ids):
        return bare(ids).last_hidden_state @ bare.wte.weight.t()

    loaded = check(bare, saved(bare, tmp_path), batch, "hf-gpt2", forward=forward, hints={"n_heads": H})
    assert loaded.tied


def test_hf_gpt2_untransposed_conversion_gives_a_different_loss(base, batch, tmp_path):
    own = hf_gpt2(base)
    loaded = build_model(Raw(saved(own, tmp_path), own.config.to_dict()))
    sd = dict(loaded.model.state_dict())
    for i in range(L):  # [d, d]: a missed transpose passes every shape check
        key = f"transformer.h.{i}.attn.c_proj.weight"
        sd[key] = sd[key].t()
    wrong = GPT(loaded.config)
    wrong.load_state_dict(sd, strict=True)
    with torch.no_grad():
        right_loss, wrong_loss = ours(loaded, batch), clm_loss(wrong.eval()(batch), batch)
        assert_same_loss(clm_loss(own(batch).logits, batch), right_loss)
    assert abs(wrong_loss - right_loss) > 1e-3


def test_hf_bert_masked_lm(tmp_path):
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                                  intermediate_size=64, max_position_embeddings=T)
    torch.manual_seed(3)
    own = randomize(transformers.BertForMaskedLM(cfg), seed=3)
    tensors = saved(own, tmp_path)
    assert [l.NAME for l in recognising(tensors)] == ["hf-bert"]
    loaded = build_model(Raw(tensors, cfg.to_dict()), family="mlm")
    assert loaded.family == "mlm" and isinstance(loaded.model, BertMLM) and loaded.tied
    assert loaded.sources["n_heads"] == CONFIG and loaded.config.ln_eps == cfg.layer_norm_eps
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(5, V, (3, T), generator=g)
    chosen = torch.rand(ids.shape, generator=g) < 0.3
    chosen[:, 0] = True
    inputs = ids.masked_fill(chosen, 4)
    labels = ids.masked_fill(~chosen, -100)
    with torch.no_grad():
        expected = own(input_ids=inputs, labels=labels).loss.item()
        logits = loaded.model(inputs)
    actual = F.cross_entropy(logits.reshape(-1, V).double(), labels.reshape(-1), ignore_index=-100).item()
    assert_same_loss(expected, actual)
    assert loaded.params == own_params(own)
    own.save_pretrained(tmp_path / "hf")
    from safetensors.torch import load_file

    again = build_model(Raw(load_file(str(tmp_path / "hf" / "model.safetensors")), cfg.to_dict()), family="gpt")
    assert again.tied and again.layout == "hf-bert"
    assert any("family 'gpt'" in w for w in again.warnings)
    with torch.no_grad():
        assert torch.equal(again.model(inputs), logits)


# --------------------------------------------------------------------------------------------------
# nn.TransformerEncoder language models: a student's, and PyTorch's tutorial's
# --------------------------------------------------------------------------------------------------


class EncoderLM(nn.Module):
    def __init__(self, norm_first=False, activation="relu", masked=True):
        super().__init__()
        self.embedding = nn.Embedding(V, D)
        self.pos_emb = nn.Parameter(torch.zeros(1, T, D))
        layer = nn.TransformerEncoderLayer(D, H, 4 * D, dropout=0.1, activation=activation, batch_first=True,
                                           norm_first=norm_first)
        self.transformer = nn.TransformerEncoder(layer, L, enable_nested_tensor=False)
        self.fc_out = nn.Linear(D, V)
        self.masked = masked

    def forward(self, idx):
        t = idx.shape[1]
        x = self.embedding(idx) + self.pos_emb[:, :t]
        mask = nn.Transformer.generate_square_subsequent_mask(t) if self.masked else None
        return self.fc_out(self.transformer(x, mask=mask, is_causal=self.masked))


def encoder_layers(base, prefix):
    sd = {}
    for i in range(L):
        c, b = f"transformer.h.{i}.", f"{prefix}layers.{i}."
        for theirs, mine in (("self_attn.in_proj_", "attn.c_attn."), ("self_attn.out_proj.", "attn.c_proj."),
                             ("linear1.", "mlp.c_fc."), ("linear2.", "mlp.c_proj."), ("norm1.", "ln_1."),
                             ("norm2.", "ln_2.")):
            sd[f"{b}{theirs}weight"] = base[f"{c}{mine}weight"]
            sd[f"{b}{theirs}bias"] = base[f"{c}{mine}bias"]
    return sd


def encoder_lm(base, **kwargs):
    own = EncoderLM(**kwargs)
    sd = {"embedding.weight": base["transformer.wte.weight"], "pos_emb": base["transformer.wpe.weight"][None],
          "fc_out.weight": base["lm_head.weight"], "fc_out.bias": base["head_bias"]}
    sd.update(encoder_layers(base, "transformer."))
    return fill(own, sd)


def test_torch_encoder_post_ln_relu(base, batch, tmp_path):
    own = encoder_lm(base)
    config = {"vocab_size": V, "d_model": D, "nhead": H, "num_layers": L}
    loaded = check(own, saved(own, tmp_path), batch, "torch-encoder", config=config)
    assert loaded.config.norm == "post" and loaded.config.activation == "relu" and loaded.config.head_bias
    assert loaded.sources["n_heads"] == CONFIG
    assert loaded.sources["norm"] == UNVERIFIED and "norm" in loaded.unverified()


def test_torch_encoder_pre_ln_gelu_from_hints(base, batch, tmp_path):
    own = encoder_lm(base, norm_first=True, activation="gelu")
    hints = {"n_heads": H, "norm": "pre", "activation": "gelu"}
    loaded = check(own, saved(own, tmp_path), batch, "torch-encoder", hints=hints)
    assert {loaded.sources[k] for k in hints} == {HINTS}


def test_torch_encoder_with_per_layer_config_attributes(base, batch, tmp_path):
    own = encoder_lm(base, norm_first=True)
    # A whole pickled module read through inert stubs: each submodule's attributes under its dotted path.
    modules = {"": {"class": "__main__.EncoderLM", "masked": True}}
    for i in range(L):
        p = f"transformer.layers.{i}"
        modules[p] = {"class": "torch.nn.modules.transformer.TransformerEncoderLayer", "norm_first": True,
                      "activation_relu_or_gelu": 1, "activation": "torch.nn.functional.relu"}
        modules[f"{p}.self_attn"] = {"class": "torch.nn.modules.activation.MultiheadAttention", "num_heads": H,
                                     "embed_dim": D, "batch_first": True}
        modules[f"{p}.norm1"] = {"class": "torch.nn.modules.normalization.LayerNorm", "eps": 1e-5}
    config = {"masked": True, "modules": modules}
    loaded = check(own, saved(own, tmp_path), batch, "torch-encoder", config=config)
    assert loaded.config.norm == "pre" and loaded.sources["norm"] == CONFIG
    assert loaded.sources["activation"] == CONFIG and loaded.sources["ln_eps"] == CONFIG


def test_torch_encoder_without_causal_mask_maps_to_a_leaking_model(base, batch, tmp_path):
    own = encoder_lm(base, masked=False)
    loaded = check(own, saved(own, tmp_path), batch, "torch-encoder", hints={"n_heads": H, "causal": False})
    assert loaded.config.causal is False and loaded.sources["causal"] == HINTS
    later = batch.clone()
    later[:, -1] = (later[:, -1] + 1) % V
    with torch.no_grad():
        moved = (loaded.model(batch)[:, 0] - loaded.model(later)[:, 0]).abs().max().item()
    assert moved > 1e-4  # the first position sees the last token: what the causal-leak check will find


class TutorialPositionalEncoding(nn.Module):
    def __init__(self, d_model, max_len=5000):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return x + self.pe[: x.size(0)]


class TutorialModel(nn.Module):
    """PyTorch's "Language Modeling with nn.Transformer" tutorial model (sequence-first)."""

    def __init__(self):
        super().__init__()
        self.pos_encoder = TutorialPositionalEncoding(D)
        self.transformer_encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, 4 * D, 0.1), L,
                                                         enable_nested_tensor=False)
        self.embedding = nn.Embedding(V, D)
        self.d_model = D
        self.linear = nn.Linear(D, V)

    def forward(self, src, src_mask):
        src = self.pos_encoder(self.embedding(src) * math.sqrt(self.d_model))
        return self.linear(self.transformer_encoder(src, src_mask))


def test_torch_encoder_tutorial_with_sinusoidal_buffer(base, batch, tmp_path):
    own = TutorialModel()
    sd = {"embedding.weight": base["transformer.wte.weight"], "linear.weight": base["lm_head.weight"],
          "linear.bias": base["head_bias"]}
    sd.update(encoder_layers(base, "transformer_encoder."))
    fill(own, sd)

    def forward(ids):
        mask = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return own(ids.t(), mask).transpose(0, 1)

    loaded = check(own, saved(own, tmp_path), batch, "torch-encoder", forward=forward, hints={"n_heads": H})
    assert loaded.config.positions == "sinusoidal" and loaded.sources["positions"] == WEIGHTS
    assert loaded.config.embed_scale == pytest.approx(math.sqrt(D))


# --------------------------------------------------------------------------------------------------
# PyTorch examples' word_language_model, both generations
# --------------------------------------------------------------------------------------------------


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout=0.1, max_len=5000):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        pe = torch.zeros(max_len, d_model)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        pe = pe.unsqueeze(0).transpose(0, 1)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return self.dropout(x + self.pe[: x.size(0), :])


def _square_subsequent_mask(sz):
    mask = (torch.triu(torch.ones(sz, sz)) == 1).transpose(0, 1)
    return mask.float().masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, float(0.0))


class WordLMOld(nn.Module):
    """word_language_model's TransformerModel before it subclassed nn.Transformer."""

    def __init__(self, ntoken, ninp, nhead, nhid, nlayers, dropout=0.5):
        super().__init__()
        self.src_mask = None
        self.pos_encoder = PositionalEncoding(ninp, dropout)
        self.transformer_encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(ninp, nhead, nhid, dropout),
                                                         nlayers, enable_nested_tensor=False)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.ninp = ninp
        self.decoder = nn.Linear(ninp, ntoken)

    def forward(self, src, has_mask=True):
        self.src_mask = _square_subsequent_mask(len(src)) if has_mask else None
        src = self.pos_encoder(self.encoder(src) * math.sqrt(self.ninp))
        output = self.decoder(self.transformer_encoder(src, self.src_mask))
        return F.log_softmax(output, dim=-1)


class WordLMNew(nn.Transformer):
    """word_language_model's TransformerModel since it subclasses nn.Transformer."""

    def __init__(self, ntoken, ninp, nhead, nhid, nlayers, dropout=0.5):
        super().__init__(d_model=ninp, nhead=nhead, dim_feedforward=nhid, num_encoder_layers=nlayers)
        self.src_mask = None
        self.pos_encoder = PositionalEncoding(ninp, dropout)
        self.input_emb = nn.Embedding(ntoken, ninp)
        self.ninp = ninp
        self.decoder = nn.Linear(ninp, ntoken)

    def forward(self, src, has_mask=True):
        self.src_mask = _square_subsequent_mask(len(src)) if has_mask else None
        src = self.pos_encoder(self.input_emb(src) * math.sqrt(self.ninp))
        output = self.encoder(src, mask=self.src_mask)
        return F.log_softmax(self.decoder(output), dim=-1)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@pytest.mark.parametrize("generation", ["old", "new"])
def test_word_language_model(base, batch, tmp_path, generation):
    cls, embed, stack = (WordLMOld, "encoder", "transformer_encoder.") if generation == "old" else \
        (WordLMNew, "input_emb", "encoder.")
    own = cls(V, D, H, 4 * D, L)
    sd = {f"{embed}.weight": base["transformer.wte.weight"], "decoder.weight": base["lm_head.weight"],
          "decoder.bias": base["head_bias"]}
    sd.update(encoder_layers(base, stack))
    if generation == "new":  # nn.Transformer's final encoder norm
        sd["encoder.norm.weight"] = base["transformer.ln_f.weight"]
        sd["encoder.norm.bias"] = base["transformer.ln_f.bias"]
    fill(own, sd)
    config = {f"{stack}layers.0.self_attn.num_heads": H, "ninp": D, "model_type": "Transformer"}
    loaded = check(own, saved(own, tmp_path), batch, "word-lm", forward=lambda ids: own(ids.t()).transpose(0, 1),
                   config=config)
    assert loaded.config.positions == "sinusoidal" and loaded.config.context == 5000
    assert loaded.config.final_norm == (generation == "new")
    assert loaded.sources["embed_scale"] == LAYOUT and loaded.sources["n_heads"] == CONFIG


# --------------------------------------------------------------------------------------------------
# Hand-written MiniGPTs (seed 003) and the lecture GPT
# --------------------------------------------------------------------------------------------------


class PositionalEmbedding(nn.Module):
    def __init__(self, max_len, d):
        super().__init__()
        self.emb = nn.Embedding(max_len, d)

    def forward(self, t):
        return self.emb(torch.arange(t))


class MiniAttention(nn.Module):
    def __init__(self, per_head):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.per_head = per_head
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        B, t, C = x.shape
        if self.per_head:  # reshape by head first, then split: rows grouped [head, q|k|v, head_dim]
            q, k, v = self.qkv(x).view(B, t, H, 3 * HD).transpose(1, 2).chunk(3, dim=-1)
        else:
            q, k, v = self.qkv(x).view(B, t, 3, H, HD).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, t, C))


class MiniBlock(nn.Module):
    def __init__(self, per_head):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = MiniAttention(per_head)
        self.ffn = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class MiniGPT(nn.Module):
    """Seed 003's MiniGPT: token_emb, PositionalEmbedding(nn.Embedding), fused qkv, pre-norm, head without bias."""

    def __init__(self, per_head=False):
        super().__init__()
        self.token_emb = nn.Embedding(V, D)
        self.pos_emb = PositionalEmbedding(T, D)
        self.blocks = nn.ModuleList([MiniBlock(per_head) for _ in range(L)])
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, V, bias=False)

    def forward(self, idx):
        x = self.token_emb(idx) + self.pos_emb(idx.shape[1])
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def minigpt(base, per_head=False):
    own = MiniGPT(per_head)
    sd = {"token_emb.weight": base["transformer.wte.weight"], "pos_emb.emb.weight": base["transformer.wpe.weight"],
          "ln_f.weight": base["transformer.ln_f.weight"], "ln_f.bias": base["transformer.ln_f.bias"],
          "head.weight": base["lm_head.weight"]}
    for i in range(L):
        c, b = f"transformer.h.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            w = base[f"{c}attn.c_attn.{part}"]
            if per_head:
                w = w.reshape(3, H, HD, *w.shape[1:]).transpose(0, 1).reshape(w.shape)
            sd[f"{b}attn.qkv.{part}"] = w
            for theirs, mine in (("attn.proj", "attn.c_proj"), ("ffn.0", "mlp.c_fc"), ("ffn.2", "mlp.c_proj"),
                                 ("ln1", "ln_1"), ("ln2", "ln_2")):
                sd[f"{b}{theirs}.{part}"] = base[f"{c}{mine}.{part}"]
    return fill(own, sd)


def test_minigpt_seed_003(base, batch, tmp_path):
    own = minigpt(base)
    config = {"vocab_size": V, "embed_dim": D, "n_heads": H, "n_layers": L, "seq_len": T, "ffn_mult": 4}
    loaded = check(own, saved(own, tmp_path), batch, "minigpt", config=config)
    assert loaded.choices["qkv_order"] == "qkv" and loaded.sources["qkv_order"] == UNVERIFIED
    assert not loaded.tied and not loaded.config.head_bias


def test_minigpt_qkv_grouped_by_head(base, batch, tmp_path):
    own = minigpt(base, per_head=True)
    loaded = check(own, saved(own, tmp_path), batch, "minigpt", hints={"n_heads": H, "qkv_order": "qkv-per-head"})
    assert loaded.sources["qkv_order"] == HINTS


def test_calibration_finds_what_the_weights_cannot_tell(base, batch, tmp_path):
    """An oracle scorer (closest to the student's own logits) must find heads and q/k/v order among the candidates."""
    own = minigpt(base, per_head=True)
    with torch.no_grad():
        target = own(batch)
    calls = []

    def oracle(candidates):
        calls.append(len(candidates))
        with torch.no_grad():
            errors = [(m(batch) - target).abs().mean().item() for m in candidates]
        return errors.index(min(errors))

    loaded = check(own, saved(own, tmp_path), batch, "minigpt", calibrate=oracle)
    assert loaded.config.n_heads == H and loaded.choices["qkv_order"] == "qkv-per-head"
    assert loaded.sources["n_heads"] == loaded.sources["qkv_order"] == loaded.sources["norm"] == CALIBRATION
    assert all(n <= 16 for n in calls)


class LectureHead(nn.Module):
    def __init__(self, scale_by_embd):
        super().__init__()
        self.key, self.query, self.value = (nn.Linear(D, HD, bias=False) for _ in range(3))
        self.register_buffer("tril", torch.tril(torch.ones(T, T)))
        self.scale_by_embd = scale_by_embd

    def forward(self, x):
        B, t, C = x.shape
        k, q = self.key(x), self.query(x)
        wei = q @ k.transpose(-2, -1) * (C if self.scale_by_embd else k.shape[-1]) ** -0.5
        wei = F.softmax(wei.masked_fill(self.tril[:t, :t] == 0, float("-inf")), dim=-1)
        return wei @ self.value(x)


class LectureBlock(nn.Module):
    def __init__(self, scale_by_embd):
        super().__init__()
        self.sa = nn.Module()
        self.sa.heads = nn.ModuleList([LectureHead(scale_by_embd) for _ in range(H)])
        self.sa.proj = nn.Linear(D, D)
        self.ffwd = nn.Module()
        self.ffwd.net = nn.Sequential(nn.Linear(D, 4 * D), nn.ReLU(), nn.Linear(4 * D, D), nn.Dropout(0.2))
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)

    def forward(self, x):
        x = x + self.sa.proj(torch.cat([h(self.ln1(x)) for h in self.sa.heads], dim=-1))
        return x + self.ffwd.net(self.ln2(x))


class LectureGPT(nn.Module):
    def __init__(self, scale_by_embd=False):
        super().__init__()
        self.token_embedding_table = nn.Embedding(V, D)
        self.position_embedding_table = nn.Embedding(T, D)
        self.blocks = nn.Sequential(*[LectureBlock(scale_by_embd) for _ in range(L)])
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, V)

    def forward(self, idx):
        x = self.token_embedding_table(idx) + self.position_embedding_table(torch.arange(idx.shape[1]))
        return self.lm_head(self.ln_f(self.blocks(x)))


@pytest.mark.parametrize("scale_by_embd", [False, True])
def test_lecture_gpt(base, batch, tmp_path, scale_by_embd):
    own = LectureGPT(scale_by_embd)
    sd = {"token_embedding_table.weight": base["transformer.wte.weight"],
          "position_embedding_table.weight": base["transformer.wpe.weight"],
          "ln_f.weight": base["transformer.ln_f.weight"], "ln_f.bias": base["transformer.ln_f.bias"],
          "lm_head.weight": base["lm_head.weight"], "lm_head.bias": base["head_bias"]}
    for i in range(L):
        c, b = f"transformer.h.{i}.", f"blocks.{i}."
        q, k, v = base[c + "attn.c_attn.weight"].split(D)
        for h in range(H):
            rows = slice(h * HD, (h + 1) * HD)
            sd.update({f"{b}sa.heads.{h}.query.weight": q[rows], f"{b}sa.heads.{h}.key.weight": k[rows],
                       f"{b}sa.heads.{h}.value.weight": v[rows]})
        for theirs, mine in (("sa.proj", "attn.c_proj"), ("ffwd.net.0", "mlp.c_fc"), ("ffwd.net.2", "mlp.c_proj"),
                             ("ln1", "ln_1"), ("ln2", "ln_2")):
            sd[f"{b}{theirs}.weight"], sd[f"{b}{theirs}.bias"] = base[f"{c}{mine}.weight"], base[f"{c}{mine}.bias"]
    fill(own, sd)
    hints = {"attn_scale": "d_model"} if scale_by_embd else {}
    loaded = check(own, saved(own, tmp_path), batch, "ng-video-lecture", hints=hints)
    assert loaded.config.n_heads == H and loaded.sources["n_heads"] == WEIGHTS
    assert loaded.config.activation == "relu" and loaded.config.head_bias


class _RenamedLectureGPT(nn.Module):
    """A student MiniGPT found in a public repository (read 2026-12: `model.py` with `SelfAttentionHead`,
    `MultiHeadAttention`, `FeedForward`, `TransformerBlock`, `MiniGPT(vocab_size, block_size, emb_dim,
    n_layers, n_heads)`): the lecture's per-head modules under `token_embedding`, `blocks.{i}.attn.heads.{h}`,
    `attn.proj`, `ff.net.0/2`, scores scaled by the head size. Our own re-implementation with its names."""

    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(V, D)
        self.position_embedding = nn.Embedding(T, D)
        blocks = []
        for _ in range(L):
            b = LectureBlock(False)
            b.attn, b.ff = b.sa, b.ffwd
            del b.sa, b.ffwd
            blocks.append(b)
        self.blocks = nn.Sequential(*blocks)
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, V)

    def forward(self, idx):
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = x + b.attn.proj(torch.cat([h(b.ln1(x)) for h in b.attn.heads], dim=-1))
            x = x + b.ff.net(b.ln2(x))
        return self.lm_head(self.ln_f(x))


def test_lecture_gpt_under_a_students_names(batch, tmp_path):
    own = randomize(_RenamedLectureGPT())
    loaded = check(own, saved(own, tmp_path), batch, "ng-video-lecture", hints={"activation": "relu"})
    assert loaded.config.n_heads == H and loaded.config.head_bias


# --------------------------------------------------------------------------------------------------
# The harness's own checkpoints
# --------------------------------------------------------------------------------------------------


def canonical_raw(model, tmp_path):
    from safetensors.torch import load_file

    folder = save_canonical(model, tmp_path / "canonical")
    return Raw(load_file(str(folder / "model.safetensors")), json.loads((folder / "config.json").read_text()))


def test_canonical_gpt(batch, tmp_path):
    cfg = GPTConfig(vocab_size=V, context=T, n_layers=L, d_model=D, n_heads=H, norm="post", activation="relu",
                    positions="sinusoidal", tied=True, head_bias=True, embed_scale=2.0, ln_eps=1e-6)
    torch.manual_seed(2)
    own = randomize(GPT(cfg), seed=2)
    raw = canonical_raw(own, tmp_path)
    loaded = check(own, raw.tensors, batch, "harness-gpt", config=raw.config)
    assert loaded.config == cfg
    stated = ("n_heads", "norm", "activation", "ln_eps", "embed_scale", "positions")
    assert {loaded.sources[k] for k in stated} == {CONFIG}


def test_canonical_mlm(tmp_path):
    cfg = BertConfig(vocab_size=V, hidden=D, n_layers=L, n_heads=H, intermediate=64, max_positions=T,
                     activation="gelu_tanh", dropout=0.0)
    torch.manual_seed(6)
    own = randomize(BertMLM(cfg), seed=6)
    raw = canonical_raw(own, tmp_path)
    loaded = build_model(raw)
    assert loaded.layout == "harness-mlm" and loaded.config == cfg and loaded.params == own.num_params()
    ids = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids), own(ids), atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Failures and the sources of values
# --------------------------------------------------------------------------------------------------


def test_random_keys_are_layout_unknown():
    g = torch.Generator().manual_seed(0)
    tensors = {"encoder.conv1.weight": torch.randn(8, 3, 3, 3, generator=g), "encoder.bn1.running_mean": torch.zeros(8),
               "classifier.weight": torch.randn(10, 8, generator=g), "foo": torch.randn(3, generator=g)}
    assert recognising(tensors) == []
    with pytest.raises(HarnessError) as err:
        build_model(Raw(tensors))
    assert err.value.code == "layout-unknown"
    assert "encoder" in err.value.message and "classifier" in err.value.message


def test_a_key_with_no_place_is_refused_not_dropped(base, tmp_path):
    own = NanoGPT(tied=True)
    fill(own, canonical_subset(base, own, tied=True))
    tensors = saved(own, tmp_path)
    tensors["transformer.h.0.attn.rotary.inv_freq"] = torch.ones(4, 4)
    with pytest.raises(HarnessError) as err:
        build_model(Raw(tensors))
    assert err.value.code == "layout-unknown" and "rotary" in err.value.message


def test_unsupported_activation_is_refused(base, tmp_path):
    own = encoder_lm(base)
    with pytest.raises(HarnessError) as err:
        build_model(Raw(saved(own, tmp_path), {"activation": "mish"}))
    assert err.value.code == "model-invalid" and "mish" in err.value.message and "silu" in err.value.message


def test_reading_values_from_stored_configs():
    from harness.models.build import SPELLINGS, read_values

    nested = {"model_args": {"n_head": 6}, "modules": {"blocks.0.attn": {"n_heads": 6}}}
    assert read_values(nested, SPELLINGS) == {"n_heads": 6}
    assert read_values({"norm_first": False, "hidden_act": "gelu_new", "layer_norm_epsilon": 1e-6}, SPELLINGS) == \
        {"norm": "post", "activation": "gelu_tanh", "ln_eps": 1e-6}
    gelu_module = {"modules": {"blocks.0.ffn.1": {"class": "torch.nn.modules.activation.GELU", "approximate": "tanh"},
                               "blocks.1.ffn.1": {"class": "torch.nn.modules.activation.GELU", "approximate": "tanh"}}}
    assert read_values(gelu_module, SPELLINGS) == {"activation": "gelu_tanh"}
    assert read_values({"optimizer": {"eps": 1e-8}, "ln_f": {"eps": 1e-6}}, SPELLINGS) == {"ln_eps": 1e-6}
    warnings = []
    assert read_values({"a": {"n_head": 4}, "b": {"n_head": 8}}, SPELLINGS, warnings=warnings) == {"n_heads": 4}
    assert warnings and "conflicting" in warnings[0]


def test_head_size_in_the_config_says_the_heads(nano_tensors):
    loaded = build_model(Raw(nano_tensors, {"modules": {"transformer.h.0.attn": {"head_size": HD}}}))
    assert loaded.config.n_heads == H and loaded.sources["n_heads"] == CONFIG


@pytest.fixture()
def nano_tensors(base, tmp_path):
    own = NanoGPT(tied=True)
    fill(own, canonical_subset(base, own, tied=True))
    return saved(own, tmp_path)


def test_sources_default_without_calibration(nano_tensors):
    loaded = build_model(Raw(nano_tensors))
    assert loaded.sources["n_heads"] == UNVERIFIED and loaded.config.n_heads == head_candidates(D)[0]
    assert loaded.sources["norm"] == loaded.sources["activation"] == LAYOUT
    assert loaded.sources["vocab_size"] == loaded.sources["n_layers"] == WEIGHTS
    described = loaded.describe()
    assert described["architecture"]["n_heads"] == {"value": loaded.config.n_heads, "source": UNVERIFIED}
    assert described["unverified"] == ["n_heads"]


def test_sources_config_beats_hints(nano_tensors):
    loaded = build_model(Raw(nano_tensors, NANO_CONFIG), hints={"n_heads": 2})
    assert loaded.config.n_heads == H and loaded.sources["n_heads"] == CONFIG
    assert any("submission.toml says n_heads = 2" in w for w in loaded.warnings)


def test_a_hint_that_cannot_be_read_is_reported(nano_tensors):
    loaded = build_model(Raw(nano_tensors), hints={"n_heads": H, "norm": "middle"})
    assert loaded.config.norm == "pre" and loaded.sources["norm"] == LAYOUT
    assert any("norm = 'middle' was not understood" in w for w in loaded.warnings)
    with pytest.raises(HarnessError) as err:
        build_model(Raw(nano_tensors), hints={"n_heads": 5})
    assert err.value.code == "model-invalid" and "divisible" in err.value.message


def test_sources_hints_beat_calibration(nano_tensors):
    calls = []
    loaded = build_model(Raw(nano_tensors), hints={"nhead": H}, calibrate=lambda c: calls.append(c) or 0)
    assert loaded.config.n_heads == H and loaded.sources["n_heads"] == HINTS and not calls


def test_sources_calibration_picks_the_index_it_is_given(nano_tensors):
    seen = []

    def fake(candidates):
        seen.append([m.config.n_heads for m in candidates])
        assert all(isinstance(m, GPT) and not m.training for m in candidates)
        assert [c.n_heads for c in candidates.configs] == seen[-1]
        assert candidates.tried == [{"n_heads": h} for h in seen[-1]]
        return 1

    loaded = build_model(Raw(nano_tensors), calibrate=fake)
    assert seen == [head_candidates(D)]
    assert loaded.config.n_heads == head_candidates(D)[1] and loaded.sources["n_heads"] == CALIBRATION
    assert loaded.unverified() == []


def test_calibration_one_value_at_a_time_when_there_are_many(base, tmp_path):
    own = encoder_lm(base)
    sizes = []

    def fake(candidates):
        sizes.append(len(candidates))
        return len(candidates) - 1

    loaded = build_model(Raw(saved(own, tmp_path)), calibrate=fake)
    opened = ("n_heads", "norm", "activation", "causal", "embed_scale")
    assert {loaded.sources[k] for k in opened} == {CALIBRATION}
    assert loaded.config.norm == "pre" and loaded.config.activation == "gelu" and loaded.config.causal is False
    assert loaded.config.n_heads == head_candidates(D)[-1]
    assert max(sizes) <= 8 and len(sizes) == 2 * len(opened)  # a second sweep confirms nothing moves


def test_every_layout_declares_its_names():
    for layout in LAYOUTS:
        assert layout.FAMILY in ("gpt", "mlm") and layout.NAME and layout.DESCRIPTION
        assert callable(layout.recognise) and callable(layout.convert) and callable(layout.cannot_tell)


class _WrappedMhaMiniGPT(nn.Module):
    """A student MiniGPT as found in public repositories (read 2026-12: a `model.py` with `GPTConfig` and
    `MiniGPT`): a CausalSelfAttention that wraps `nn.MultiheadAttention` under `attention.attention`,
    `attention_norm`/`mlp_norm`, `token_embedding`/`position_embedding`, `final_norm`, and an
    `output_head` tied to the token embedding. Our own re-implementation with those names."""

    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(V, D)
        self.position_embedding = nn.Embedding(T, D)
        blocks = []
        for _ in range(L):
            b = nn.Module()
            b.attention_norm, b.mlp_norm = nn.LayerNorm(D), nn.LayerNorm(D)
            b.attention = nn.Module()
            b.attention.attention = nn.MultiheadAttention(D, H, batch_first=True)
            b.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))
            blocks.append(b)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(D)
        self.output_head = nn.Linear(D, V, bias=False)
        self.output_head.weight = self.token_embedding.weight

    def forward(self, idx):
        n = idx.shape[1]
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(n))
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        for b in self.blocks:
            h = b.attention_norm(x)
            x = x + b.attention.attention(h, h, h, attn_mask=mask, need_weights=False)[0]
            x = x + b.mlp(b.mlp_norm(x))
        return self.output_head(self.final_norm(x))


def test_minigpt_with_nn_multihead_attention_inside_a_wrapper(batch, tmp_path):
    own = randomize(_WrappedMhaMiniGPT())
    check(own, saved(own, tmp_path), batch, "minigpt", hints={"n_heads": H, "causal": True})
