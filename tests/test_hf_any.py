"""Hugging Face folders of any architecture: transformers' own class, our safely read weights, our protocol.

Each case builds a tiny random model with the installed transformers' class (the original: Llama, Mistral,
Qwen2/3, Gemma 1/2/3, GPT-NeoX, Phi, OPT, GPT-J, Falcon; RoBERTa, DistilBERT, ALBERT, ELECTRA, ModernBERT),
writes it with `save_pretrained`, reads it back through `read_checkpoint` + `build_model`, and compares the
clm-v1 / mlm-v1 loss on a small split with the in-memory model's own forward and `labels=` loss (its default
attention implementation; ours is eager) to 1e-6 relative. GPT-2 and BERT folders keep their layouts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.checkpoint.read import read_checkpoint
from harness.course.data import TokenizedSplit
from harness.errors import HarnessError
from harness.metrics.clm import evaluate_clm
from harness.metrics.mlm import evaluate_mlm
from harness.metrics.protocol import as_logits_model
from harness.metrics.windows import mlm_masks, mlm_stream
from harness.metrics.causality import check_causal
from harness.models.build import build_model, checkpoint_family

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REL = 1e-6
V = 260  # bytes 0..255, then end-of-text 256, [CLS] 257, [SEP] 258, [MASK] 259
DOCS = ["Attention is all you need.", "Perplexity: exp of the mean NLL per token.", "",
        "Masked LMs recover 15% of positions."]


class ByteTokenizer:
    """UTF-8 bytes plus four specials: small enough for tiny models, real text all the same."""

    kind = "test"
    vocab_size = V
    pad_id = None

    def __init__(self, mlm: bool):
        self.name = "bytes-mlm" if mlm else "bytes"
        self.sha256 = ("2" if mlm else "3") * 64
        self.eot_id = None if mlm else 256
        self.cls_id, self.sep_id, self.mask_id = (257, 258, 259) if mlm else (None, None, None)
        self.special_ids = frozenset({256, 257, 258, 259})

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def make_split(tok):
    ids = [tok.encode(d) for d in DOCS]
    offsets = np.cumsum([0] + [len(i) for i in ids]).astype(np.int64)
    tokens = np.concatenate([np.asarray(i, dtype=np.int32) for i in ids])
    return TokenizedSplit("validation", tokens, offsets, "m" * 64, tok.sha256)


# Tiny configs: 2 layers, hidden 32, 4 heads (2 key/value heads where the class has grouped-query attention).
BASE = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=160, initializer_range=0.3, pad_token_id=0, bos_token_id=1, eos_token_id=2)
CAUSAL = {
    "llama": dict(num_key_value_heads=2),
    "mistral": dict(num_key_value_heads=2),
    "qwen2": dict(num_key_value_heads=2),
    "qwen3": dict(num_key_value_heads=2, head_dim=8),
    "gemma": dict(num_key_value_heads=1, head_dim=8),
    "gemma2": dict(num_key_value_heads=2, head_dim=8),
    "gemma3_text": dict(num_key_value_heads=2, head_dim=8),
    "gpt_neox": dict(),
    "phi": dict(),
    "opt": dict(ffn_dim=64, word_embed_proj_dim=32),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, n_positions=160, rotary_dim=4),
    "falcon": dict(),
}
MASKED = {
    "roberta": dict(pad_token_id=1, max_position_embeddings=162),  # positions start after the padding id
    "distilbert": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64),
    "albert": dict(embedding_size=16),
    "electra": dict(embedding_size=16),
    "modernbert": dict(global_attn_every_n_layers=1, cls_token_id=257, sep_token_id=258, mask_token_id=259),
}
CLASSES = transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
MLM_CLASSES = transformers.models.auto.modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES


def tiny(model_type: str, **extra):
    """The original class's tiny random model (eval mode), as a student's training script would leave it."""
    mlm = model_type in MASKED or model_type == "bert"
    name = (MLM_CLASSES if mlm else CLASSES).get(model_type)
    if name is None or not hasattr(transformers, name):
        pytest.skip(f"transformers {transformers.__version__} has no {model_type}")
    kwargs = {**BASE, **(MASKED.get(model_type) or CAUSAL.get(model_type) or {}), **extra}
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    return getattr(transformers, name)(cfg).eval()


def saved(model, path):
    model.save_pretrained(path)
    return read_checkpoint(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """(original model, RawCheckpoint of its save_pretrained folder) per model_type, written and read once."""
    cache = {}

    def get(model_type):
        if model_type not in cache:
            ref = tiny(model_type)
            cache[model_type] = ref, saved(ref, tmp_path_factory.mktemp(model_type) / model_type)
        return cache[model_type]

    return get


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.mark.parametrize("model_type", sorted(CAUSAL))
def test_causal_folder_scores_as_its_own_forward(model_type, folder):
    ref, raw = folder(model_type)
    assert raw.format == "hf-folder" and checkpoint_family(raw) == "gpt"
    loaded = build_model(raw)
    assert (loaded.layout, loaded.family) == (f"transformers-{model_type}", "gpt")
    assert type(loaded.model.hf).__name__ == type(ref).__name__
    assert any("transformers' own" in f for f in loaded.facts)
    assert loaded.params == sum(p.numel() for p in ref.parameters())
    d = loaded.describe()["architecture"]
    assert d["n_layers"] == {"value": 2, "source": "checkpoint config"} and d["d_model"]["value"] == 32
    assert d["vocab_size"]["value"] == V and d["causal"]["value"] is True
    assert d["norm"]["value"] == ("layernorm" if model_type in ("gpt_neox", "phi", "opt", "gptj", "falcon") else "rmsnorm")

    tok = ByteTokenizer(mlm=False)
    split = make_split(tok)
    r = evaluate_clm(loaded.model, split, tok, context=128)
    stream = torch.tensor([256, *[t for doc in DOCS for t in (256, *tok.encode(doc))][1:]])[None]
    assert r.context == 128 and stream.shape[1] <= 128 and r.tokens == stream.shape[1] - 1
    with torch.no_grad():
        own = ref(input_ids=stream, labels=stream).loss.item()
    assert rel(r.loss, own) < REL, (r.loss, own)
    assert abs(r.loss - np.log(V)) > 0.05  # the wide initialisation keeps the model far from uniform
    assert check_causal(loaded.model, context=32, vocab_size=V, seed_material=raw.sha256).ok


@pytest.mark.parametrize("model_type", sorted(MASKED))
def test_masked_folder_scores_as_its_own_forward(model_type, folder):
    ref, raw = folder(model_type)
    assert checkpoint_family(raw) == "mlm"
    loaded = build_model(raw)
    assert (loaded.layout, loaded.family) == (f"transformers-{model_type}", "mlm")
    assert loaded.params == sum(p.numel() for p in ref.parameters())

    tok = ByteTokenizer(mlm=True)
    split = make_split(tok)
    r = evaluate_mlm(loaded.model, split, tok, context=128, seed=7)
    stream = mlm_stream(split, tok)
    assert stream.size <= 128 and r.blocks == 1
    inputs, selected = mlm_masks(stream, 0, tok, seed=7)
    labels = np.where(selected, stream, -100)
    with torch.no_grad():
        own = ref(input_ids=torch.from_numpy(inputs)[None], labels=torch.from_numpy(labels)[None]).loss.item()
    assert r.tokens == int(selected.sum()) > 5
    assert loaded.describe()["architecture"]["norm"]["value"] == "layernorm"
    assert rel(r.loss, own) < REL, (r.loss, own)


def test_max_positions_follow_the_position_table(folder):
    """Learned tables bound the window (RoBERTa's less its padding offset, OPT's less its offset of 2);
    rotary models take the course's context."""
    tables = {}
    for model_type in ("roberta", "opt", "llama"):
        loaded = build_model(folder(model_type)[1])
        assert as_logits_model(loaded.model).max_positions == loaded.max_positions  # what the evaluator uses
        tables[model_type] = loaded.max_positions
    assert tables == {"roberta": 162 - 2, "opt": 160, "llama": None}


def test_gpt2_and_bert_folders_keep_their_layouts(tmp_path):
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2,
                                                                n_head=2))
    assert build_model(saved(gpt2, tmp_path / "gpt2")).layout == "hf-gpt2"
    assert build_model(saved(tiny("bert"), tmp_path / "bert")).layout == "hf-bert"


def test_gpt2_folder_with_an_option_the_canonical_gpt_lacks_uses_transformers(tmp_path):
    """scale_attn_by_inverse_layer_idx: the hf-gpt2 layout refuses it; GPT2LMHeadModel computes it."""
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_positions=128, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
        scale_attn_by_inverse_layer_idx=True)).eval()
    loaded = build_model(saved(ref, tmp_path / "gpt2"))
    assert (loaded.layout, loaded.family, loaded.max_positions) == ("transformers-gpt2", "gpt", 128)
    tok = ByteTokenizer(mlm=False)
    r = evaluate_clm(loaded.model, make_split(tok), tok, context=128)
    stream = torch.tensor([256, *[t for doc in DOCS for t in (256, *tok.encode(doc))][1:]])[None]
    with torch.no_grad():
        own = ref(input_ids=stream, labels=stream).loss.item()
    assert rel(r.loss, own) < REL


def test_grouped_query_heads_and_norm_are_reported(folder):
    d = build_model(folder("llama")[1]).describe()
    arch = {k: v["value"] for k, v in d["architecture"].items()}
    assert arch["n_heads"] == 4 and arch["n_kv_heads"] == 2 and arch["d_ff"] == 64
    assert (arch["norm"], arch["positions"], arch["activation"]) == ("rmsnorm", "rope", "silu")
    assert {v["source"] for v in d["architecture"].values()} == {"checkpoint config"}


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_auto_map_is_refused_without_running_anything(tmp_path):
    folder = tmp_path / "remote"
    tiny("llama").save_pretrained(folder)
    (folder / "modeling_evil.py").write_text("raise SystemExit('student code ran')\n")
    _edit_config(folder, auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    with pytest.raises(HarnessError) as e:
        build_model(read_checkpoint(folder))
    assert e.value.code == "layout-unknown"
    assert "never runs code" in e.value.message and "\n" not in e.value.message


def test_unknown_model_type_gets_one_clear_line(tmp_path):
    folder = tmp_path / "mine"
    tiny("opt").save_pretrained(folder)  # key names no harness layout reads
    _edit_config(folder, model_type="my_own_opt")
    raw = read_checkpoint(folder)
    for call in (lambda: build_model(raw), lambda: checkpoint_family(raw)):
        with pytest.raises(HarnessError) as e:
            call()
        assert e.value.code == "layout-unknown" and "\n" not in e.value.message
        assert "'my_own_opt'" in e.value.message and transformers.__version__ in e.value.message


def test_unknown_model_type_with_weights_a_layout_reads_is_graded_by_it_with_a_warning(tmp_path):
    folder = tmp_path / "mine"
    tiny("llama").save_pretrained(folder)
    _edit_config(folder, model_type="my_own_llama")
    loaded = build_model(read_checkpoint(folder))
    assert loaded.layout == "hf-llama"
    assert any("'my_own_llama'" in w and "does not know" in w for w in loaded.warnings)


def test_a_missing_extra_or_misshapen_weight_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    tiny("qwen2").save_pretrained(folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.1.mlp.extra.weight"] = torch.zeros(3)
    tensors["model.layers.0.mlp.down_proj.weight"] = torch.zeros(32, 60)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(HarnessError) as e:
        build_model(read_checkpoint(folder))
    assert e.value.code == "model-invalid"
    assert "missing model.layers.1.mlp.up_proj.weight" in e.value.message
    assert "unexpected model.layers.1.mlp.extra.weight" in e.value.message
    assert "model.layers.0.mlp.down_proj.weight ([32, 60] in the file, [32, 64] by config.json)" in e.value.message


@pytest.mark.slow
def test_harness_eval_cli_on_a_llama_folder(tmp_path):
    ref = tiny("llama", vocab_size=64)
    ref.save_pretrained(tmp_path / "llama")
    text = "the cat sat on the mat; a dog ran after it.\n"
    (tmp_path / "val.txt").write_text(text)
    chars = sorted(set(text))
    (tmp_path / "vocab.txt").write_text("".join(chars))
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "harness", "eval", str(tmp_path / "llama"), "--data",
                           str(tmp_path / "val.txt"), "--tokenizer", f"char:{tmp_path / 'vocab.txt'}", "--context", "64",
                           "--device", "cpu", "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["checkpoint"]["layout"] == "transformers-llama" and result["model"]["family"] == "gpt"
    ids = torch.tensor([chars.index(c) for c in text])[None]
    with torch.no_grad():
        own = ref(input_ids=ids, labels=ids).loss.item()
    assert result["metrics"]["tokens"] == ids.shape[1] - 1
    assert rel(result["metrics"]["loss"], own) < REL


@pytest.mark.slow
def test_harness_check_grades_a_submission_holding_a_llama_folder(tmp_path, monkeypatch):
    """The grading path (`_measure_model`): results.json's model facts, the causality check through the
    wrapper, and the same number as `harness eval` on the same submission."""
    from harness.course.config import default_course_text
    from harness.grading.measure import eval_checkpoint

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text("the quick brown fox jumps over the lazy dog. " * 20)
    (data / "validation.txt").write_text("a lazy dog sleeps; the fox runs over the quick brown hill. " * 6)
    chars = sorted(set((data / "train.txt").read_text() + (data / "validation.txt").read_text()))
    (tmp_path / "vocab.txt").write_text("".join(chars))
    course = tmp_path / "course.toml"
    course.write_text(default_course_text().replace('source = "wiki-vital"', f'source = "{data}"')
                      .replace('tokenizer = "gpt2"', f'tokenizer = "char:{tmp_path / "vocab.txt"}"'))
    ref = tiny("llama", vocab_size=len(chars) + 4)
    sub = tmp_path / "alice"
    ref.save_pretrained(sub / "model")
    (sub / "submission.toml").write_text('[submission]\nstudent = "alice"\nfamily = "gpt"\n[claims]\nval_loss = 3.3\n')
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "harness", "check", str(sub), "--course", str(course), "--out",
                           str(tmp_path / "out"), "--no-reports", "--json"], capture_output=True, text=True,
                          timeout=300, env=env)
    s = json.loads(proc.stdout)
    assert s["status"] == "graded", s["error"]
    model = s["model"]
    assert (model["layout"], model["family"], model["n_heads"], model["n_kv_heads"]) == ("transformers-llama", "gpt", 4, 2)
    assert model["params"] == sum(p.numel() for p in ref.parameters()) and model["positions"] == "rope"
    assert any("LlamaForCausalLM" in f for f in model["facts"])
    assert s["causal"]["ok"] is True and s["metrics"]["context"] == 64
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    evaluated = eval_checkpoint(sub, course_path=course, device="cpu")
    assert evaluated["metrics"]["loss"] == s["metrics"]["loss"]


def test_llama_folder_agrees_with_the_canonical_gpt(folder):
    """Where the canonical GPT can express the architecture (RMSNorm, rotate_half RoPE, GQA, SwiGLU), it gives
    the same clm-v1 loss as transformers' LlamaForCausalLM, which HF folders keep using as the reference. Keys
    mapped as in tests/test_decoder.py (modeling_llama.py: q/k/v/o_proj, gate/up/down_proj, input_ and
    post_attention_layernorm)."""
    from harness.models.gpt import GPT, GPTConfig

    ref, raw = folder("llama")
    hf_cfg, src = ref.config, raw.tensors
    sd = {"transformer.wte.weight": src["model.embed_tokens.weight"], "transformer.ln_f.weight": src["model.norm.weight"],
          "lm_head.weight": src["lm_head.weight"]}
    for i in range(hf_cfg.num_hidden_layers):
        s, p = f"model.layers.{i}.", f"transformer.h.{i}."
        sd[p + "attn.c_attn.weight"] = torch.cat([src[f"{s}self_attn.{n}_proj.weight"] for n in "qkv"])
        for theirs, ours in (("self_attn.o_proj", "attn.c_proj"), ("mlp.gate_proj", "mlp.c_fc"),
                             ("mlp.up_proj", "mlp.c_up"), ("mlp.down_proj", "mlp.c_proj"), ("input_layernorm", "ln_1"),
                             ("post_attention_layernorm", "ln_2")):
            sd[f"{p}{ours}.weight"] = src[f"{s}{theirs}.weight"]
    canonical = GPT(GPTConfig(vocab_size=V, context=hf_cfg.max_position_embeddings, n_layers=2, d_model=32, n_heads=4,
                              n_kv_heads=2, d_ff=64, norm_type="rmsnorm", ln_eps=hf_cfg.rms_norm_eps, positions="rope",
                              rope_theta=hf_cfg.rope_parameters["rope_theta"], activation="silu", gated=True, bias=False,
                              tied=False)).eval()
    canonical.load_state_dict(sd, strict=True)
    tok = ByteTokenizer(mlm=False)
    split = make_split(tok)
    through_transformers = evaluate_clm(build_model(raw).model, split, tok, context=128)
    through_canonical = evaluate_clm(canonical, split, tok, context=128)
    assert through_transformers.tokens == through_canonical.tokens
    assert rel(through_canonical.loss, through_transformers.loss) < REL
