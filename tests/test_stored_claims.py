"""Claims the training code stored with the weights, in each project's own save format:

- nanoGPT `train.py` (@3adf61e): `torch.save({'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss',
  'config'}, 'ckpt.pt')`, `best_val_loss` being the tensor `estimate_loss()` returned;
- build-nanogpt `train_gpt2.py`: `{'model', 'config': raw_model.config (a dataclass, which weights_only
  refuses), 'step', 'val_loss': val_loss_accum.item()}` in `model_{step:05d}.pt`;
- nanochat `checkpoint_manager.save_checkpoint`: the bare state dict in `model_{step:06d}.pt` and a JSON
  `meta_{step:06d}.json` beside it holding `step`, `val_bpb`, `model_config`, `user_config`, ...
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness.checkpoint.read import read_checkpoint
from harness.course.config import load_course
from harness.grading.findings import Evaluation, find
from harness.models.gpt import GPT, GPTConfig
from harness.grading.rubric import score
from harness.intake.claims import Claims, checkpoint_claims, with_checkpoint_claims
from harness.intake.submission import read_submission

ARGS = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, bias=True, vocab_size=50257, dropout=0.0)


@dataclass
class BuildNanoGPTConfig:  # build-nanogpt's GPTConfig, pickled by reference like the original
    block_size: int = 16
    vocab_size: int = 50257
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 32


def _model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50257, context=16, n_layers=2, d_model=32, n_heads=4, tied=True))


def _nanogpt_ckpt(folder: Path) -> Path:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long)).float().mean().backward()
    optimizer.step()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "model_args": ARGS,
                "iter_num": 500, "best_val_loss": torch.tensor(5.4321), "config": {**ARGS, "out_dir": "out"}}, path)
    return path


def _stored(path: Path, folder: Path):
    raw = read_checkpoint(path, root=folder)
    return checkpoint_claims(raw.meta, path.relative_to(folder), folder)


@pytest.mark.slow  # the safe reader's child process: seconds on a busy machine
def test_nanogpt_best_val_loss(tmp_path):
    found = _stored(_nanogpt_ckpt(tmp_path), tmp_path)
    assert found.keys() == {"val_loss"}
    value, where = found["val_loss"]
    assert value == pytest.approx(5.4321, abs=1e-6) and where == "ckpt.pt: best_val_loss"


def test_build_nanogpt_val_loss_beside_a_refused_dataclass(tmp_path):
    path = tmp_path / "log" / "model_05000.pt"
    path.parent.mkdir()
    torch.save({"model": _model().state_dict(), "config": BuildNanoGPTConfig(), "step": 5000, "val_loss": 3.2871}, path)
    raw = read_checkpoint(path, root=tmp_path)
    assert raw.refused_globals  # the dataclass was read through a stub, never imported
    found = checkpoint_claims(raw.meta, path.relative_to(tmp_path), tmp_path)
    assert found == {"val_loss": (3.2871, "model_05000.pt: val_loss")}


def test_nanochat_val_bpb_in_the_meta_json_beside_the_weights(tmp_path):
    path = tmp_path / "base_checkpoints" / "d2" / "model_000500.pt"
    path.parent.mkdir(parents=True)
    torch.save(_model().state_dict(), path)
    meta = {"step": 500, "val_bpb": 1.0412, "model_config": {"sequence_len": 16, "vocab_size": 50257, "n_layer": 2,
            "n_head": 4, "n_kv_head": 4, "n_embd": 32}, "user_config": {"depth": 2}, "max_seq_len": 16}
    (path.parent / "meta_000500.json").write_text(json.dumps(meta, indent=2))
    found = _stored(path, tmp_path)
    assert found == {"val_bpb": (1.0412, "base_checkpoints/d2/meta_000500.json: val_bpb")}
    # the meta file is no training log: read_submission takes no claim from it
    sub = read_submission("nc", tmp_path)
    assert not sub.claims.any and sub.weights == path.relative_to(tmp_path)


def test_submission_toml_outranks_the_checkpoint_which_outranks_the_log(tmp_path):
    _nanogpt_ckpt(tmp_path)
    (tmp_path / "metrics.csv").write_text("step,train_loss,val_loss\n1,6.0,6.1\n2,5.5,5.9\n")
    sub = read_submission("s", tmp_path)
    assert sub.claims.sources == {"train_loss": "log metrics.csv", "val_loss": "log metrics.csv"}
    stored = _stored(tmp_path / "ckpt.pt", tmp_path)
    merged = with_checkpoint_claims(sub.claims, stored)
    assert merged.val_loss == pytest.approx(5.4321, abs=1e-6) and merged.sources["val_loss"] == "ckpt.pt: best_val_loss"
    assert merged.train_loss == 5.5 and merged.curve == sub.claims.curve

    (tmp_path / "submission.toml").write_text("[claims]\nval_loss = 5.0\n")
    told = with_checkpoint_claims(read_submission("s", tmp_path).claims, stored)
    assert told.val_loss == 5.0 and told.sources["val_loss"] == "submission.toml"


def _evaluation(claims: Claims) -> Evaluation:
    # 1,000 targets over 4,000 bytes: 2.0 nats per token is 2.0 / ln 2 / 4 = 0.7213 bits per byte
    metrics = {"loss": 2.0, "ppl": 7.389, "bits_per_byte": 0.72135, "tokens": 1000, "bytes": 4000}
    return Evaluation(id="x", student="x", family="gpt", model={"params": 100}, metrics=metrics, claims=claims)


@pytest.mark.parametrize("claimed, mismatch", [(0.75, False), (1.2, True)])
def test_a_claimed_val_bpb_is_compared_in_bits_per_byte(claimed, mismatch):
    course = load_course(None)
    ev = _evaluation(Claims(val_bpb=claimed, sources={"val_bpb": "meta_000500.json: val_bpb"}))
    findings = find(ev, course)
    codes = {f.code for f in findings}
    assert "no-claims" not in codes and "no-validation-metric" not in codes
    assert ("val-claim-mismatch" in codes) == mismatch
    if mismatch:
        message = next(f.message for f in findings if f.code == "val-claim-mismatch")
        assert "bits per byte 1.2" in message and "tolerance 0.09 bits per byte" in message
    validation = next(cs for c, cs in zip(course.rubric, score(ev, findings, course).criteria) if c.kind == "validation")
    assert validation.points == validation.max and "meta_000500.json: val_bpb" in validation.why


@pytest.mark.slow
def test_a_nanogpt_checkpoint_keeps_its_validation_points(tmp_path):
    """Graded whole: the stored best_val_loss is the claim (no `no-claims`), with where it was read."""
    from harness.course.config import capped_course_text
    from harness.grading.batch import GradeOptions, check

    sub = tmp_path / "nano"
    _nanogpt_ckpt(sub)
    course = tmp_path / "course.toml"
    course.write_text(capped_course_text(256, calibration_tokens=0))
    s = check(sub, tmp_path / "out", course, GradeOptions(reports=False, timeout_s=300)).results.to_json()["submissions"][0]
    assert s["status"] == "graded", s["error"]
    assert s["claims"]["val_loss"] == pytest.approx(5.4321, abs=1e-6)
    assert s["claims"]["sources"] == {"val_loss": "ckpt.pt: best_val_loss"}
    codes = {f["code"] for f in s["findings"]}
    assert "no-claims" not in codes and "no-validation-metric" not in codes
    assert any("ckpt.pt: best_val_loss" in c["why"] and c["points"] == c["max"] for c in s["score"]["criteria"])
