"""Calibration never decides silently: where the candidates' losses are closer than the evaluation can
separate, the layout's default stays and the value is marked unverified, in results.json, the report,
`harness inspect` (which calibrates exactly as grading does) and a finding.

The test model is the lecture GPT of karpathy/ng-video-lecture `gpt.py` (read at commit 4c8e9028, its final
version): one `Head` module per head with bias-free `key`/`query`/`value`, a `tril` buffer, scores scaled
by `k.shape[-1]**-0.5` (the head size; the lecture's first version used `C**-0.5` with C = n_embd),
`sa.proj`, `ffwd.net` = Linear-ReLU-Linear-Dropout, pre-LN `ln1`/`ln2`, `ln_f`, `lm_head` with a bias.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from harness.models.build import CALIBRATION, HINTS, UNDECIDED, build_model
from harness.models.calibration import CALIBRATION_FLOOR_NATS
from test_layouts import D, T, LectureBlock  # the lecture's blocks, d_model 32, 4 heads, context 16

V = 50257  # the GPT-2 vocabulary, so that the course's tokenizer scores it


class LectureGPT(nn.Module):
    def __init__(self, scale_by_embd: bool = False, n_layer: int = 2):
        super().__init__()
        self.token_embedding_table = nn.Embedding(V, D)
        self.position_embedding_table = nn.Embedding(T, D)
        self.blocks = nn.Sequential(*[LectureBlock(scale_by_embd) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, V)

    def forward(self, idx):
        x = self.token_embedding_table(idx) + self.position_embedding_table(torch.arange(idx.shape[1]))
        return self.lm_head(self.ln_f(self.blocks(x)))


class Raw:
    def __init__(self, tensors):
        self.tensors, self.config = tensors, {}


def _tensors(scale_by_embd=False):
    torch.manual_seed(0)
    return {k: v.clone() for k, v in LectureGPT(scale_by_embd).state_dict().items()}


def _scorer(means_and_noise):
    """A scorer that hands back per-target NLLs: candidate i's are mean_i plus its own fixed noise."""
    def calibrate(candidates):
        assert [t["attn_scale"] for t in candidates.tried] == ["head_dim", "d_model"]
        rng = np.random.Generator(np.random.PCG64(7))
        base = rng.normal(3.0, 1.0, 2000)
        return [base + mean + noise * rng.standard_normal(base.size) for mean, noise in means_and_noise]
    return calibrate


def test_a_clear_margin_decides():
    loaded = build_model(Raw(_tensors()), calibrate=_scorer([(0.0, 0.01), (-0.05, 0.01)]))
    c = loaded.calibration["attn_scale"]
    assert loaded.choices["attn_scale"] == "d_model" and loaded.sources["attn_scale"] == CALIBRATION
    assert c["decided"] and c["chosen"] == c["best"] == "d_model" and c["candidates"] == ["head_dim", "d_model"]
    assert c["margin"] == pytest.approx(0.05, abs=0.002) and 0 < c["stderr"] < 0.001 and c["tokens"] == 2000
    assert loaded.unverified() == []


@pytest.mark.parametrize("means_and_noise", [
    [(0.0, 0.5), (-0.01, 0.5)],  # better by 0.01 nats, but the noise of 2,000 targets is larger
    [(0.0, 1e-6), (-CALIBRATION_FLOOR_NATS / 2, 1e-6)],  # consistently better, by less than the floor
])
def test_candidates_that_cannot_be_told_apart_keep_the_default_and_say_so(means_and_noise):
    loaded = build_model(Raw(_tensors()), calibrate=_scorer(means_and_noise))
    c = loaded.calibration["attn_scale"]
    assert c["best"] == "d_model" and c["chosen"] == "head_dim" and not c["decided"]
    assert loaded.choices["attn_scale"] == "head_dim" and loaded.sources["attn_scale"] == UNDECIDED
    assert loaded.unverified() == ["attn_scale"] and loaded.describe()["unverified"] == ["attn_scale"]
    assert c["losses"][1] < c["losses"][0] and c["margin"] > 0


def test_the_students_word_is_not_calibrated():
    asked = []
    loaded = build_model(Raw(_tensors(scale_by_embd=True)), hints={"attn_scale": "d_model"},
                         calibrate=lambda c: asked.append(c) or 0)
    assert not asked and loaded.sources["attn_scale"] == HINTS and loaded.calibration == {}


@pytest.mark.slow
def test_lecture_gpt_graded_inspected_and_reported_alike(tmp_path):
    """The final gpt.py's head-size scaling on random weights: the two scales differ by about 1e-4 nats,
    which calibration cannot separate, so the default (the head size) is kept, marked unverified with a
    finding, and the graded loss is the student's own forward's. `inspect` agrees on all of it."""
    from harness.course.config import capped_course_text, load_course
    from harness.course.data import freeze, load_source
    from harness.metrics.clm import evaluate_clm
    from harness.metrics.protocol import TorchLogitsModel
    from harness.grading.batch import GradeOptions, check
    from harness.grading.measure import inspect_checkpoint
    from harness.reporting.report import student_context

    torch.manual_seed(0)
    own = LectureGPT().eval()
    sub = tmp_path / "lecture"
    sub.mkdir()
    torch.save(own.state_dict(), sub / "model.pt")
    (sub / "submission.toml").write_text('[submission]\nstudent = "Lecture"\n[claims]\nval_loss = 10.8\n')
    course_path = tmp_path / "course.toml"
    course_path.write_text(capped_course_text(512, calibration_tokens=1024))

    outcome = check(sub, tmp_path / "out", course_path, GradeOptions(reports=False, timeout_s=300))
    s = outcome.results.to_json()["submissions"][0]
    assert s["status"] == "graded", s["error"]
    model = s["model"]
    c = model["calibration"]["attn_scale"]
    assert model["sources"]["attn_scale"] == UNDECIDED and model["unverified"] == ["attn_scale"]
    assert c["chosen"] == "head_dim" and not c["decided"] and c["tokens"] == 1024
    assert abs(c["margin"]) < CALIBRATION_FLOOR_NATS and len(c["losses"]) == 2
    found = [f for f in s["findings"] if f["code"] == "calibration-unverified"]
    assert len(found) == 1 and found[0]["severity"] == "info"
    assert "attn_scale = 'head_dim'" in found[0]["message"] and 'attn_scale = "head_dim"' in found[0]["message"]
    assert 'attn_scale = "head_dim" or "d_model"' in found[0]["message"]
    assert s["score"]["total"] > 0 and "calibration-unverified" not in json.dumps(s["score"])

    course = load_course(course_path)
    settings = course.eval_settings("gpt")
    split = freeze(load_source(course.data_source), "gpt2").split(course.data_split)
    from harness.course.tokenizers import get_tokenizer

    mine = evaluate_clm(TorchLogitsModel(own, max_positions=T), split, get_tokenizer("gpt2"),
                        context=settings.context, max_tokens=settings.max_tokens)
    assert s["metrics"]["loss"] == pytest.approx(mine.loss, rel=1e-6)
    assert s["metrics"]["tokens"] == mine.tokens

    info = inspect_checkpoint(sub, course_path=course_path)["layout"]
    assert info["architecture"]["attn_scale"] == {"value": "head_dim", "source": UNDECIDED}
    # the same decisions, candidates and targets; losses to 1e-7 (inspect runs in this process, grading in a
    # worker with its own thread count: float32 matmuls may differ in their last bits)
    a, b = info["calibration"]["attn_scale"], model["calibration"]["attn_scale"]
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if k not in ("losses", "margin", "stderr"))
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-7) and a["margin"] == pytest.approx(b["margin"], abs=1e-6)
    assert a["stderr"] == pytest.approx(b["stderr"], abs=1e-6)
    assert info["unverified"] == model["unverified"]

    arch = student_context(outcome.results, s["id"])["arch"]
    assert len(arch["unverified"]) == 1 and arch["unverified"][0].startswith("attn_scale = head_dim is unverified")


def _minigpt_tensors(d=32, vocab=97, positions=16, layers=2):
    """Seed 003's MiniGPT names (fused `attn.qkv`, `ffn.0/2`, `pos_emb.emb`): two of its open values are
    calibrated together when submission.toml states the rest."""
    g = torch.Generator().manual_seed(3)
    sd = {"token_emb.weight": torch.randn(vocab, d, generator=g), "pos_emb.emb.weight": torch.randn(positions, d, generator=g),
          "ln_f.weight": torch.ones(d), "ln_f.bias": torch.zeros(d), "head.weight": torch.randn(vocab, d, generator=g)}
    for i in range(layers):
        for name, shape in (("ln1", (d,)), ("ln2", (d,)), ("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)),
                            ("ffn.0", (4 * d, d)), ("ffn.2", (d, 4 * d))):
            sd[f"blocks.{i}.{name}.weight"] = torch.randn(*shape, generator=g) * 0.02 if len(shape) == 2 else torch.ones(d)
            sd[f"blocks.{i}.{name}.bias"] = torch.zeros(shape[0])
    return sd


@pytest.mark.parametrize("leak_gain, causal", [(0.2, True), (2.0, False)])
def test_joint_calibration_decides_each_value_on_its_own(leak_gain, causal):
    """qkv_order cannot be told apart (1e-4 nats): its default stays, unverified; "no causal mask" is taken
    only when it gains more than the leak margin, and the recorded losses are the model's own."""
    def calibrate(candidates):
        assert sorted(candidates.tried[0]) == ["causal", "qkv_order"] and len(candidates) == 4
        base = np.random.Generator(np.random.PCG64(5)).normal(4.0, 1.0, 3000)
        return [base - (leak_gain if t["causal"] is False else 0.0) - (1e-4 if t["qkv_order"] == "qkv-per-head" else 0.0)
                for t in candidates.tried]

    loaded = build_model(Raw(_minigpt_tensors()), hints={"n_heads": 4, "norm": "pre", "activation": "gelu"},
                         calibrate=calibrate)
    order, mask = loaded.calibration["qkv_order"], loaded.calibration["causal"]
    assert loaded.choices["qkv_order"] == "qkv" and loaded.sources["qkv_order"] == UNDECIDED and not order["decided"]
    assert order["best"] == "qkv-per-head" and order["margin"] == pytest.approx(1e-4)
    assert loaded.config.causal is causal and loaded.sources["causal"] == CALIBRATION and mask["decided"]
    assert mask["losses"][1] == pytest.approx(mask["losses"][0] - leak_gain)  # [True, False]: no margin added
    assert loaded.unverified() == ["qkv_order"]


def _rounds(means_and_noise, every=64, served=None):
    """The same NLLs as `_scorer`, handed over round by round (cumulative, `every` targets a round), as
    `harness.metrics.candidates` hands them; `served` counts the rounds asked for."""
    full = _scorer(means_and_noise)

    def calibrate(candidates):
        nll = full(candidates)
        for end in range(every, nll[0].size + every, every):
            if served is not None:
                served.append(end)
            yield [x[:end] for x in nll]
    return calibrate


def test_a_clear_winner_stops_calibration_at_the_first_look():
    from harness.models.calibration import CALIBRATION_FIRST_LOOK

    served = []
    loaded = build_model(Raw(_tensors()), calibrate=_rounds([(0.0, 0.01), (-0.05, 0.01)], served=served))
    all_at_once = build_model(Raw(_tensors()), calibrate=_scorer([(0.0, 0.01), (-0.05, 0.01)]))
    c, full = loaded.calibration["attn_scale"], all_at_once.calibration["attn_scale"]
    assert c["decided"] and (c["chosen"], c["best"]) == (full["chosen"], full["best"]) == ("d_model", "d_model")
    assert c["tokens"] == CALIBRATION_FIRST_LOOK == served[-1] < full["tokens"] == 2000  # no round after the look
    assert loaded.calibration_cost["stopped_early"] == 1 and loaded.calibration_cost["targets"] == CALIBRATION_FIRST_LOOK
    assert loaded.calibration_cost["candidates"] == 2 and all_at_once.calibration_cost["stopped_early"] == 0


@pytest.mark.parametrize("means_and_noise", [
    [(0.0, 0.5), (-0.01, 0.5)],
    [(0.0, 1e-6), (-CALIBRATION_FLOOR_NATS / 2, 1e-6)],
])
def test_without_a_clear_winner_every_target_is_used_and_the_decision_is_all_at_onces(means_and_noise):
    loaded = build_model(Raw(_tensors()), calibrate=_rounds(means_and_noise))
    all_at_once = build_model(Raw(_tensors()), calibrate=_scorer(means_and_noise))
    assert loaded.calibration == all_at_once.calibration and loaded.calibration["attn_scale"]["tokens"] == 2000
    assert not loaded.calibration["attn_scale"]["decided"] and loaded.calibration_cost["stopped_early"] == 0


@pytest.mark.slow
def test_grading_scores_the_candidates_on_shared_batches_with_the_protocols_numbers(tmp_path):
    """Grading's calibrator on the course's train text (the lecture GPT: its two attention scales cannot be
    told apart, so every target is used) gives exactly what scoring each candidate alone by clm-v1 gives."""
    from dataclasses import replace

    from harness.course.config import capped_course_text, load_course
    from harness.course.data import freeze, load_source
    from harness.course.tokenizers import get_tokenizer
    from harness.grading.measure import _calibrator
    from harness.metrics.score import EvalData, score

    course_path = tmp_path / "course.toml"
    course_path.write_text(capped_course_text(512, calibration_tokens=512))
    course = load_course(course_path)
    tok = get_tokenizer("gpt2")
    train = freeze(load_source(course.data_source), tok).split("train")
    settings = replace(course.clm, max_tokens=512)

    def alone(candidates):
        return [score(m, "gpt", EvalData(train, tok), settings).nll for m in candidates]

    shared = build_model(Raw(_tensors()), calibrate=_calibrator(course, "gpt", tok, train))
    each = build_model(Raw(_tensors()), calibrate=alone)
    assert shared.calibration == each.calibration and shared.calibration["attn_scale"]["tokens"] == 512
    assert shared.calibration_cost["stopped_early"] == 0 and shared.calibration_cost["candidates"] == 2
