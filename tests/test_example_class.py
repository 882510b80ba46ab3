"""The example class at the test scale: every submission is there as its student handed it in, loads
with the safe loader (but the broken and the hostile ones), and really carries its flaw."""

from __future__ import annotations

import math
import tomllib
import zipfile

import pytest
import torch
from safetensors.torch import load_file

import example_oracle as oracle
from harness.demo import example_class as ec
from harness.demo.students import common
from harness.demo.students.broken import HOSTILE_MARKER
from harness.demo.students.custom_code import load_custom
from harness.demo.students.minigpt import MiniGPT
from harness.demo.students.s000_encoder import EncoderLM
from harness.demo.students.s002_memorise import S002_VOCAB
from harness.demo.students.s003_pad_eot import sequences as s003_sequences

pytestmark = pytest.mark.slow

FILES = {
    "s000_encoder": ["mini_gpt_checkpoint.pt", "training_metrics.csv", "report.md"],
    "s001_pre_ln": ["ckpt.pt", "train_log.csv", "report.md"],
    "s002_memorise": ["mini_gpt.pt", "training_log.csv", "report.md"],
    "s003_pad_eot": ["outcome/mini_gpt_baseline.pt", "outcome/results_table.csv", "report.md"],
    "s004_bert": ["model/config.json", "model/model.safetensors", "vocab.txt", "tokenizer.json", "losses.json",
                  "report.md"],
    "nanogpt_clean": ["ckpt.pt", "log.jsonl", "report.md"],
    "hf_gpt2_clean": ["hf_model/config.json", "hf_model/model.safetensors", "trainer_state.json", "report.md"],
    "custom_code": ["model.py", "weights.pt", "losses.csv", "report.md"],
    "broken_file": ["model.pt"],
    "copied_model": ["model.pt"],
    "hostile_pickle": ["model.pt"],
    "custom_crash": ["model.py", "weights.pt"],
    "custom_loop": ["model.py", "weights.pt"],
}
TORCH_FILES = {"s000_encoder": "mini_gpt_checkpoint.pt", "s001_pre_ln": "ckpt.pt", "s002_memorise": "mini_gpt.pt",
               "s003_pad_eot": "outcome/mini_gpt_baseline.pt", "nanogpt_clean": "ckpt.pt",
               "custom_code": "weights.pt", "copied_model": "model.pt", "custom_crash": "weights.pt",
               "custom_loop": "weights.pt"}


@pytest.fixture(scope="module")
def klass(example_class):
    return example_class  # conftest's, written once a session (test_grade grades the same folder)


@pytest.fixture(scope="module")
def data():
    return common.Data()


def _toml(folder):
    return tomllib.loads((folder / "submission.toml").read_text(encoding="utf-8"))


def _held_out(data, n: int, length: int) -> torch.Tensor:
    """Validation windows the models never trained on."""
    return common.fixed_windows(data.val[5000:], n, length)


def test_every_submission_is_there_with_its_files(klass):
    out, written = klass
    assert written == list(ec.ids("test")) == list(FILES)
    assert set(oracle.expected("test")) == set(written) and set(oracle.expected("demo")) == set(ec.DEMO_IDS)
    assert oracle.expected("test")["nanogpt_clean"] == {"similar-weights"} and oracle.expected("demo")["nanogpt_clean"] == set()
    assert not FILES.keys() - oracle.EXPECTED.keys()
    assert all(not (oracle.FORBIDDEN & oracle.EXPECTED[i]) for i in oracle.CLEAN)
    students = set()
    for sid, files in FILES.items():
        folder = out / sid
        for f in files + ["submission.toml"]:
            assert (folder / f).is_file(), f"{sid}/{f}"
        students.add(_toml(folder)["submission"]["student"])
    assert len(students) == len(FILES)  # every hand-in has its own student


def test_checkpoints_load_with_the_safe_loader(klass):
    out, _ = klass
    for sid, name in TORCH_FILES.items():
        obj = torch.load(out / sid / name, weights_only=True)
        assert isinstance(obj, dict) and obj, sid
    for folder in ("s004_bert/model", "hf_gpt2_clean/hf_model"):
        assert load_file(str(out / folder / "model.safetensors"))
    ck = torch.load(out / "s001_pre_ln" / "ckpt.pt", weights_only=True)
    assert all(k.startswith("_orig_mod.") for k in ck["model"]) and ck["best_val_loss"] is None
    ck = torch.load(out / "nanogpt_clean" / "ckpt.pt", weights_only=True)
    assert {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"} <= set(ck)
    copied = torch.load(out / "copied_model" / "model.pt", weights_only=True)
    assert copied.keys() == ck["model"].keys() and all(torch.equal(copied[k], ck["model"][k]) for k in copied)


def test_broken_file_is_a_truncated_checkpoint(klass):
    out, _ = klass
    path = out / "broken_file" / "model.pt"
    assert path.stat().st_size == 1000
    assert path.read_bytes() == (out / "nanogpt_clean" / "ckpt.pt").read_bytes()[:1000]
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)


def test_hostile_pickle_would_run_a_command_and_never_did(klass):
    out, _ = klass
    # Read the pickle's bytes only: never unpickle it.
    with zipfile.ZipFile(out / "hostile_pickle" / "model.pt") as z:
        pickle_bytes = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"system" in pickle_bytes and HOSTILE_MARKER.encode() in pickle_bytes
    assert not (out / HOSTILE_MARKER).exists()


def test_s000_learned_to_read_the_next_token(klass, data):
    """Trained without a causal mask, the model's loss is lower when it may look ahead than when it may
    not: it learned to use the future, so a grader that masks it, or changes later tokens, sees it."""
    out, _ = klass
    ck = torch.load(out / "s000_encoder" / "mini_gpt_checkpoint.pt", weights_only=True)
    assert ck["config"]["max_len"] == 512 and ck["epoch"] == 10 and "optimizer_state_dict" in ck
    model = EncoderLM(**ck["config"])
    model.load_state_dict(ck["model_state_dict"])
    model.eval()
    for length in (16, 64):  # the training windows, and the course's context
        x = _held_out(data, 16, length)
        with torch.no_grad():
            ahead = common.ce(model(x[:, :-1]), x[:, 1:]).item()
            masked = common.ce(model(x[:, :-1], oracle.causal_mask(length)), x[:, 1:]).item()
        assert ahead < masked, (length, ahead, masked)
    # the student's numbers are their leaky model's, and the claims are the table's last row
    claims = _toml(out / "s000_encoder")["claims"]
    assert claims["val_loss"] == pytest.approx(ck["val_losses"][-1], abs=0.01)
    assert claims["train_loss"] == pytest.approx(ck["train_losses"][-1], abs=0.01)


def test_s001_reports_training_numbers_only(klass):
    out, _ = klass
    toml = _toml(out / "s001_pre_ln")
    assert set(toml["claims"]) == {"train_loss", "train_ppl", "log"}
    last = (out / "s001_pre_ln" / "train_log.csv").read_text().splitlines()[-1].split(",")
    assert last[0] == "10" and float(last[1]) == pytest.approx(toml["claims"]["train_loss"], abs=0.01)


def test_s002_has_49805_outputs_and_memorised_its_sample(klass, data):
    out, _ = klass
    sd = torch.load(out / "s002_memorise" / "mini_gpt.pt", weights_only=True)
    assert sd["token_embedding.weight"].shape == (S002_VOCAB, 64) == sd["head.weight"].shape
    assert "blocks.0.attn.qkv.weight" in sd and "position_embedding.weight" in sd
    claims = _toml(out / "s002_memorise")["claims"]
    assert claims["params"] == sum(t.numel() for t in sd.values()) == 6_479_053  # the seed's own count
    model = MiniGPT(S002_VOCAB, 64, 1, 2, 64, dropout=0.3, ffn_dropout=0.3, head_bias=True)
    model.load_state_dict(oracle.s002_model_keys(sd))
    model.eval()
    val = data.val[data.val < S002_VOCAB]
    x = common.fixed_windows(val, 16, 64)
    with torch.no_grad():
        val_loss = common.ce(model(x[:, :-1]), x[:, 1:]).item()
    assert math.exp(val_loss) > 5 * claims["train_ppl"]  # the course's memorisation ratio


def test_s003_never_learned_end_of_text(klass, data):
    out, _ = klass
    folder = out / "s003_pad_eot"
    assert "claims" not in _toml(folder)
    rows = (folder / "outcome" / "results_table.csv").read_text().splitlines()
    assert rows[0] == "experiment,final_loss,final_ppl" and [r.split(",")[0] for r in rows[1:]] == \
        ["baseline", "lr_1e-3", "batch_size_16", "n_layers_1", "embed_dim_64"]
    sd = torch.load(folder / "outcome" / "mini_gpt_baseline.pt", weights_only=True)
    assert "pos_emb.emb.weight" in sd and "blocks.0.attn.qkv.weight" in sd and "lm_head.bias" not in sd
    model = MiniGPT(common.GPT2_VOCAB, sd["token_emb.weight"].shape[1], 2, 4, 64)
    model.load_state_dict(sd)
    model.eval()
    s = data.val[: 64 * 64 + 1]  # clm-v1's stream: EOT before every document
    x, y = s[:-1].view(64, 64), s[1:].view(64, 64)
    with torch.no_grad():
        nll = -torch.log_softmax(model(x), -1).gather(-1, y[..., None])[..., 0]
    eot = y == common.EOT
    assert eot.sum() >= 5
    assert nll[eot].mean().item() > math.log(common.GPT2_VOCAB) > nll[~eot].mean().item() + 1.0
    # the data the student trained on has end-of-text only as padding, never as a counted target
    seqs = s003_sequences(data, 64)
    for row in seqs:
        pads = (row == common.EOT).nonzero()
        assert pads.numel() == 0 or (row[int(pads[0]):] == common.EOT).all()


def test_s004_is_a_bert_with_its_own_vocabulary(klass):
    import json

    out, _ = klass
    folder = out / "s004_bert"
    toml = _toml(folder)
    assert toml["submission"]["family"] == "mlm" and toml["submission"]["tokenizer"] == "vocab.txt"
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    config = json.loads((folder / "model" / "config.json").read_text())
    assert config["vocab_size"] == len(vocab) and config["num_hidden_layers"] == 3
    losses = json.loads((folder / "losses.json").read_text())
    assert len(losses["val_loss"]) == 3
    assert toml["claims"]["val_loss"] == pytest.approx(losses["val_loss"][-1], abs=0.01)


def test_custom_code_names_its_class_and_kwargs(klass):
    out, _ = klass
    for sid, cls in (("custom_code", "TinyTransformer"), ("custom_crash", "Broken"), ("custom_loop", "Stuck")):
        toml = _toml(out / sid)
        assert toml["model"]["code"] == f"model.py:{cls}"
        module_text = (out / sid / "model.py").read_text()
        assert f"class {cls}" in module_text
        weights = torch.load(out / sid / "weights.pt", weights_only=True)
        assert "lookup.weight" in weights and weights["lookup.weight"].shape[1] == toml["model"]["kwargs"]["width"]
    model = load_custom(out / "custom_code", "TinyTransformer")(**_toml(out / "custom_code")["model"]["kwargs"])
    model.load_state_dict(torch.load(out / "custom_code" / "weights.pt", weights_only=True))
    logits, loss = model(torch.zeros(1, 8, dtype=torch.long))
    assert logits.shape == (1, 8, common.GPT2_VOCAB) and loss is None
    crash = load_custom(out / "custom_crash", "Broken")(**_toml(out / "custom_crash")["model"]["kwargs"])
    with pytest.raises(RuntimeError):
        crash(torch.zeros(1, 8, dtype=torch.long))


def test_the_clean_gpts_start_as_the_unigram_model(klass, data):
    """Their logits start at the training split's log-frequencies, which training keeps (ln_f exactly)."""
    torch.manual_seed(0)
    model = common.gpt(common.GPT2_VOCAB, 32, dropout=0.0)
    prior = data.log_unigram(common.GPT2_VOCAB)
    common.start_at_unigram(model.transformer.wte, model.transformer.ln_f, prior)
    windows = _held_out(data, 8, 64)
    unigram = float(torch.nn.functional.cross_entropy(prior.expand(windows[:, 1:].numel(), -1),
                                                      windows[:, 1:].reshape(-1)))
    assert common.mean_loss(model, windows) == pytest.approx(unigram, abs=0.05)
    model(windows[:, :-1]).logsumexp(-1).sum().backward()  # the fixed entries get no gradient
    assert not model.transformer.wte.weight.grad[:, 0].any() and model.transformer.ln_f.bias.grad[0] == 0
    out, _ = klass
    sd = torch.load(out / "nanogpt_clean" / "ckpt.pt", weights_only=True)["model"]
    assert sd["transformer.ln_f.bias"][0] == common.UNIGRAM_SCALE and sd["transformer.ln_f.weight"][0] == 0
    column = sd["transformer.wte.weight"][: common.GPT2_VOCAB, 0]
    assert torch.corrcoef(torch.stack([column, prior]))[0, 1] > 0.999
    custom = torch.load(out / "custom_code" / "weights.pt", weights_only=True)
    assert torch.equal(custom["readout.bias"], prior)


def test_two_processes_write_the_same_files_as_one(klass, tmp_path):
    import hashlib

    out, written = klass
    serial = tmp_path / "serial"
    ec.write_example_class(serial, scale="test", processes=1)

    def digests(root):
        return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(root.rglob("*")) if f.is_file() and "hostile_pickle" not in f.parts}

    assert digests(serial) == digests(out) and len(digests(out)) > 30


def test_unknown_scale_is_refused(tmp_path):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="scale"):
        ec.write_example_class(tmp_path, scale="huge")
    assert not any(tmp_path.iterdir())
