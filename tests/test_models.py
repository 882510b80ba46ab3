"""The canonical models against the implementations they claim to reproduce, with real (small) models."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from harness.models import (
    GPT,
    BertConfig,
    BertMLM,
    GPTConfig,
    bert_from_hf,
    export_hf_bert,
    export_hf_gpt2,
    gpt_from_hf_gpt2,
    hf_gpt2_state_dict_to_gpt,
    load_canonical,
    load_hf_bert_state_dict,
    save_canonical,
)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

V, T = 100, 16


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb every parameter: zero biases and unit LayerNorms would hide a wrong key map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def ids(batch: int = 3, length: int = T, vocab: int = V, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    assert err <= tol * expected.abs().max().item(), f"max abs error {err}"


def small_hf_gpt2(activation: str = "gelu_new", tied: bool = True, seed: int = 0):
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=T, activation_function=activation,
        tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None,
    )
    torch.manual_seed(seed)
    return randomize(transformers.GPT2LMHeadModel(cfg), seed)


def small_gpt(**overrides) -> GPT:
    cfg = dict(vocab_size=V, context=T, n_layers=2, d_model=32, n_heads=4)
    cfg.update(overrides)
    torch.manual_seed(0)
    return randomize(GPT(GPTConfig(**cfg)))


def small_hf_bert(seed: int = 0):
    cfg = transformers.BertConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=T, pad_token_id=0,
    )
    torch.manual_seed(seed)
    return randomize(transformers.BertForMaskedLM(cfg), seed)


# --- config ---------------------------------------------------------------------------------------

def test_config_round_trip_and_defaults():
    cfg = GPTConfig(vocab_size=V, context=T, d_model=32, n_heads=4)
    assert cfg.d_ff == 128
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    bert = BertConfig(vocab_size=V, hidden=32, n_heads=4, intermediate=64)
    assert BertConfig.from_dict(bert.to_dict()) == bert


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="n_layer, widht"):
        GPTConfig.from_dict({"vocab_size": V, "widht": 3, "n_layer": 2})
    with pytest.raises(ValueError, match="norm"):
        GPTConfig(norm="sandwich")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="n_layers"):
        GPTConfig(n_layers=True)
    with pytest.raises(ValueError, match="hiden"):
        BertConfig.from_dict({"hiden": 32})


# --- GPT against Hugging Face GPT-2 ----------------------------------------------------------------

@pytest.mark.parametrize("activation,expected", [("gelu_new", "gelu_tanh"), ("gelu", "gelu"), ("relu", "relu")])
def test_gpt_from_hf_gpt2_same_logits(activation, expected):
    hf = small_hf_gpt2(activation)
    gpt = gpt_from_hf_gpt2(hf)
    assert gpt.config.activation == expected and gpt.config.tied
    x = ids()
    with torch.no_grad():
        assert_rel_close(gpt(x), hf(x).logits)


def test_gelu_variants_are_told_apart():
    # Loading a "gelu_new" model as exact GELU must show up in the logits, or the test above proves nothing.
    hf = small_hf_gpt2("gelu_new")
    gpt = gpt_from_hf_gpt2(hf)
    wrong = GPT(GPTConfig(**{**gpt.config.to_dict(), "activation": "gelu"}))
    wrong.load_state_dict(gpt.state_dict())
    x = ids()
    with torch.no_grad():
        assert (wrong.eval()(x) - hf(x).logits).abs().max() > 1e-5


def test_gpt_from_untied_hf_gpt2():
    hf = small_hf_gpt2(tied=False)
    gpt = gpt_from_hf_gpt2(hf)
    assert not gpt.config.tied
    x = ids()
    with torch.no_grad():
        assert_rel_close(gpt(x), hf(x).logits)
    assert gpt.num_params() == sum(p.numel() for p in hf.parameters())


def test_conv1d_weights_are_transposed():
    hf = small_hf_gpt2()
    gpt = gpt_from_hf_gpt2(hf)
    # c_proj is square, so only the values can tell a missed transpose.
    hf_w = hf.transformer.h[0].attn.c_proj.weight
    assert torch.equal(gpt.transformer.h[0].attn.c_proj.weight, hf_w.t())
    assert not torch.equal(gpt.transformer.h[0].attn.c_proj.weight, hf_w)


def test_hf_state_dict_without_tied_head():
    hf = small_hf_gpt2()
    sd = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    out = hf_gpt2_state_dict_to_gpt(sd)
    assert torch.equal(out["lm_head.weight"], out["transformer.wte.weight"])


@pytest.mark.parametrize("activation,tied", [("gelu_tanh", True), ("gelu", True), ("gelu_tanh", False)])
def test_export_hf_gpt2_round_trip(tmp_path, activation, tied):
    gpt = small_gpt(activation=activation, tied=tied)
    export_hf_gpt2(gpt, tmp_path / "hf")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = ids()
    with torch.no_grad():
        assert_rel_close(hf(x).logits, gpt(x))
    back = gpt_from_hf_gpt2(hf)
    assert back.config == gpt.config
    for key, value in gpt.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_export_hf_gpt2_refuses_incompatible(tmp_path):
    with pytest.raises(ValueError, match="norm must be 'pre'.*positions must be 'learned'"):
        export_hf_gpt2(small_gpt(norm="post", positions="sinusoidal"), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# --- GPT against PyTorch's own encoder stacks --------------------------------------------------------

def copy_torch_encoder(gpt: GPT, emb: nn.Embedding, enc: nn.TransformerEncoder, head: nn.Linear) -> None:
    sd = {"transformer.wte.weight": emb.weight, "lm_head.weight": head.weight, "lm_head.bias": head.bias}
    names = {"self_attn.in_proj_": "attn.c_attn.", "self_attn.out_proj.": "attn.c_proj.", "linear1.": "mlp.c_fc.",
             "linear2.": "mlp.c_proj.", "norm1.": "ln_1.", "norm2.": "ln_2."}
    for key, value in enc.state_dict().items():
        _, i, rest = key.split(".", 2)
        for theirs, ours in names.items():
            if rest.startswith(theirs):
                sd[f"transformer.h.{i}.{ours}{rest[len(theirs):]}"] = value
    gpt.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("causal", [True, False])
def test_post_ln_relu_matches_transformer_encoder(causal):
    d, h, ff = 32, 4, 48
    torch.manual_seed(0)
    emb, head = nn.Embedding(V, d), nn.Linear(d, V)
    layer = nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, activation="relu", batch_first=True, norm_first=False)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    for m in (emb, enc, head):
        randomize(m)
    gpt = GPT(GPTConfig(vocab_size=V, context=T, n_layers=2, d_model=d, n_heads=h, d_ff=ff, norm="post",
                        activation="relu", positions="none", tied=False, final_norm=False, head_bias=True,
                        causal=causal)).eval()
    copy_torch_encoder(gpt, emb, enc, head)
    x = ids()
    mask = nn.Transformer.generate_square_subsequent_mask(T) if causal else None
    with torch.no_grad():
        expected = head(enc(emb(x), mask=mask, is_causal=causal))
        assert_rel_close(gpt(x), expected)


def test_word_language_model_style_forward():
    """PyTorch examples/word_language_model's TransformerModel, written out by hand (sequence-first)."""
    d, h, ff = 32, 4, 64
    torch.manual_seed(0)
    encoder, decoder = nn.Embedding(V, d), nn.Linear(d, V)
    stack = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, h, ff, dropout=0.0), 2, enable_nested_tensor=False)
    for m in (encoder, stack, decoder):
        randomize(m)
    pe = torch.zeros(T, d)
    position = torch.arange(0, T, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2).float() * (-math.log(10000.0) / d))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    pe = pe.unsqueeze(0).transpose(0, 1)

    gpt = GPT(GPTConfig(vocab_size=V, context=T, n_layers=2, d_model=d, n_heads=h, d_ff=ff, norm="post",
                        activation="relu", positions="sinusoidal", tied=False, final_norm=False, head_bias=True,
                        embed_scale=math.sqrt(d))).eval()
    copy_torch_encoder(gpt, encoder, stack, decoder)
    x = ids(length=T - 3)
    src = x.t()
    with torch.no_grad():
        s = encoder(src) * math.sqrt(d)
        s = s + pe[: s.size(0)]
        out = decoder(stack(s, nn.Transformer.generate_square_subsequent_mask(len(src))))
        assert_rel_close(gpt(x), out.transpose(0, 1))
    assert gpt.num_params() == sum(p.numel() for m in (encoder, stack, decoder) for p in m.parameters())


def test_causal_flag():
    x = ids()
    y = x.clone()
    y[:, 10] = (y[:, 10] + 1) % V
    with torch.no_grad():
        causal = small_gpt()
        assert torch.equal(causal(x)[:, :10], causal(y)[:, :10])
        leaky = small_gpt(causal=False)
        assert (leaky(x)[:, :10] - leaky(y)[:, :10]).abs().max() > 1e-4


def test_gpt_trains_with_dropout():
    gpt = small_gpt(dropout=0.1, norm="post", positions="sinusoidal").train()
    x = ids()
    logits = gpt(x)
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpt.parameters())
    with pytest.raises(ValueError, match="longer than"):
        gpt(ids(length=T + 1))


def test_num_params():
    hf = small_hf_gpt2()
    gpt = gpt_from_hf_gpt2(hf)
    assert gpt.num_params() == sum(p.numel() for p in hf.parameters())
    untied = GPT(GPTConfig(**{**gpt.config.to_dict(), "tied": False}))
    assert untied.num_params() == gpt.num_params() + V * 32
    sinus = GPT(GPTConfig(**{**gpt.config.to_dict(), "positions": "sinusoidal"}))
    assert sinus.num_params() == gpt.num_params() - T * 32
    hf_bert = small_hf_bert()
    assert bert_from_hf(hf_bert).num_params() == sum(p.numel() for p in hf_bert.parameters())


# --- BERT -------------------------------------------------------------------------------------------

def test_bert_loads_hf_state_dict_unchanged():
    hf = small_hf_bert()
    model = BertMLM(BertConfig(vocab_size=V, hidden=32, n_layers=2, n_heads=4, intermediate=64, max_positions=T))
    assert set(model.state_dict()) == set(hf.state_dict())
    model.load_state_dict(hf.state_dict(), strict=True)
    model.eval()
    x = ids()
    mask = torch.ones_like(x)
    mask[0, 12:] = 0
    mask[1, 5:] = 0
    with torch.no_grad():
        assert_rel_close(model(x), hf(x).logits)
        assert_rel_close(model(x, attention_mask=mask), hf(x, attention_mask=mask).logits)


def test_bert_state_dict_from_other_versions():
    hf = small_hf_bert()
    sd = dict(hf.state_dict())
    sd["bert.embeddings.position_ids"] = torch.arange(T)[None]
    sd["bert.pooler.dense.weight"] = torch.zeros(32, 32)
    sd["bert.pooler.dense.bias"] = torch.zeros(32)
    del sd["cls.predictions.decoder.weight"], sd["cls.predictions.decoder.bias"]
    sd["bert.embeddings.LayerNorm.gamma"] = sd.pop("bert.embeddings.LayerNorm.weight")
    model = bert_from_hf(hf)
    fresh = BertMLM(model.config)
    load_hf_bert_state_dict(fresh, sd)
    x = ids()
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))
    del sd["bert.encoder.layer.1.output.dense.bias"]
    with pytest.raises(ValueError, match="missing bert.encoder.layer.1.output.dense.bias"):
        load_hf_bert_state_dict(BertMLM(model.config), sd)


def test_export_hf_bert_round_trip(tmp_path):
    model = bert_from_hf(small_hf_bert())
    export_hf_bert(model, tmp_path / "hf")
    hf = transformers.BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    x = ids()
    with torch.no_grad():
        assert_rel_close(hf(x).logits, model(x))
    assert bert_from_hf(hf).config == model.config


# --- canonical checkpoints ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: small_gpt(), lambda: small_gpt(norm="post", positions="sinusoidal",
                                                                           tied=False, head_bias=True),
                                  lambda: bert_from_hf(small_hf_bert())])
def test_canonical_round_trip(tmp_path, make):
    model = make()
    save_canonical(model, tmp_path / "a")
    save_canonical(model, tmp_path / "b")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    loaded = load_canonical(tmp_path / "a")
    assert type(loaded) is type(model) and loaded.config == model.config
    x = ids()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    stored = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert sum(t.numel() for t in stored.values()) == model.num_params()
    header = json.loads((tmp_path / "a" / "config.json").read_text())
    assert header["format"] == 1 and header["harness_model"] in ("gpt", "mlm")


def test_canonical_tied_head_stored_once(tmp_path):
    save_canonical(small_gpt(), tmp_path)
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in stored and "transformer.wte.weight" in stored


def test_load_canonical_errors(tmp_path):
    folder = save_canonical(small_gpt(), tmp_path / "m")
    config_path = folder / "config.json"
    header = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**header, "harness_model": "rnn"}))
    with pytest.raises(ValueError, match="unknown harness_model 'rnn'"):
        load_canonical(folder)

    config_path.write_text(json.dumps({**header, "config": {**header["config"], "d_ff": 64}}))
    with pytest.raises(ValueError, match=r"shapes do not match.*mlp\.c_fc\.weight"):
        load_canonical(folder)

    config_path.write_text(json.dumps({**header, "config": {**header["config"], "tied": False}}))
    with pytest.raises(ValueError, match="missing.*lm_head.weight"):
        load_canonical(folder)

    config_path.write_text(json.dumps({**header, "config": {**header["config"], "layers": 2}}))
    with pytest.raises(ValueError, match="unknown GPTConfig key"):
        load_canonical(folder)

    config_path.write_text(json.dumps(header))
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_canonical(folder)

    (folder / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors is missing"):
        load_canonical(folder)


@pytest.mark.parametrize("kind", ["gpt-tied", "gpt-untied", "gpt-sinusoidal", "gpt-rope", "bert-tied", "bert-untied"])
def test_an_empty_model_loaded_is_the_model_loaded(kind):
    """`empty=True` (what grading builds: every weight is loaded after) leaves the init undrawn, and nothing
    else: the same parameters, shared the same way (a tied head; BERT's bias under two names), the same
    fixed buffers (sinusoids, rotary angles) and, loaded, the same logits."""
    torch.manual_seed(0)
    if kind.startswith("gpt"):
        extra = {"gpt-untied": {"tied": False}, "gpt-sinusoidal": {"positions": "sinusoidal"},
                 "gpt-rope": {"positions": "rope"}}.get(kind, {})
        made = randomize(GPT(GPTConfig(vocab_size=V, context=T, n_layers=2, d_model=32, n_heads=4, **extra)))
        empty = GPT(made.config, empty=True)
    else:
        made = randomize(BertMLM(BertConfig(vocab_size=V, hidden=32, n_layers=2, n_heads=4, intermediate=64,
                                            tied=kind == "bert-tied")))
        empty = BertMLM(made.config, empty=True)

    def shared(m):  # which names are one tensor
        groups: dict[int, list[str]] = {}
        for name, p in m.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), []).append(name)
        return sorted(groups.values())

    assert shared(empty) == shared(made) and len(list(empty.parameters())) == len(list(made.parameters()))
    buffers = dict(made.named_buffers())
    assert {k: v.device.type for k, v in empty.named_buffers()} == {k: "cpu" for k in buffers}
    assert all(torch.equal(v, buffers[k]) for k, v in empty.named_buffers())
    assert all(p.device.type == "cpu" for p in empty.parameters())
    empty.load_state_dict(made.state_dict(), strict=True)
    x = ids()
    with torch.no_grad():
        assert torch.equal(empty.eval()(x), made(x))


def test_an_empty_model_costs_no_import():
    """Built empty in a fresh interpreter, a model imports nothing more than one built with its init (the meta
    device would: an Embedding on it imports torch._dynamo, 4 s)."""
    import subprocess
    import sys

    code = ("import sys, torch\nfrom harness.models import GPT, GPTConfig, BertMLM, BertConfig\n"
            "before = set(sys.modules)\n"
            "GPT(GPTConfig(vocab_size=100, context=16, n_layers=1, d_model=16, n_heads=2), empty=True)\n"
            "BertMLM(BertConfig(vocab_size=100, hidden=16, n_layers=1, n_heads=2, intermediate=32), empty=True)\n"
            "print(sorted(set(sys.modules) - before))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
