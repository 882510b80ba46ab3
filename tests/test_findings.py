"""Findings and rubric from values built in the test: each seed's flaw, and clean submissions."""

import math

import pytest

from harness.course.config import load_course
from harness.grading.findings import Evaluation, find, vocab_finding
from harness.grading.rubric import read_overrides, score
from harness.intake.claims import Claims

COURSE = load_course()
GPT_ARCH = {"n_layers": 2, "d_model": 128, "n_heads": 4, "context": 64, "vocab_size": 50257, "params": 6_900_000}
UNIGRAM = 7.3  # nats: ppl ≈ 1480


def metrics(loss, **extra):
    return {"loss": loss, "ppl": math.exp(loss), "tokens": 53_796, "unigram_loss": UNIGRAM,
            "uniform_loss": math.log(50257), **extra}


def ev(**kw):
    base = dict(id="s", student="S", family="gpt", model=dict(GPT_ARCH), metrics=metrics(6.2),
                claims=Claims(val_loss=6.25, train_loss=6.0, params=6_900_000, sources={"val_loss": "submission.toml"}),
                causal={"ok": True}, tokenizer={"name": "gpt2", "vocab_size": 50257, "eot_id": 50256})
    base.update(kw)
    return Evaluation(**base)


def codes(e, ref=None):
    return sorted(f.code for f in find(e, COURSE, ref))


def test_a_clean_submission_has_no_findings_and_full_marks():
    e = ev()
    assert codes(e) == []
    s = score(e, find(e, COURSE), COURSE, reference_ppl=math.exp(6.2))
    assert s.total == s.max == 100
    assert all(c.why for c in s.criteria)


def test_seed_000_encoder_without_causal_mask_is_a_leak_and_its_ppl_invalid():
    e = ev(model={**GPT_ARCH, "context": 512}, metrics=metrics(2.1),
           causal={"ok": False, "message": "position 3 moved by 4.1 when token 9 changed"},
           claims=Claims(val_loss=6.54, val_ppl=693, train_loss=6.10, train_ppl=446, params=6_700_000))
    assert "causal-leak" in codes(e)
    s = score(e, find(e, COURSE), COURSE, reference_ppl=400.0)
    by = {c.name: c for c in s.criteria}
    assert by["No look-ahead"].points == 0 and by["Validation perplexity"].points == 0
    assert "invalid" in by["Validation perplexity"].why


def test_seed_001_training_only_metrics():
    e = ev(claims=Claims(train_loss=5.47, train_ppl=238.59, params=7_800_000))
    got = codes(e)
    assert "no-validation-metric" in got and "val-claim-mismatch" not in got
    s = score(e, find(e, COURSE), COURSE, reference_ppl=math.exp(6.2))
    assert {c.name: c.points for c in s.criteria}["Reports a validation metric"] == 0


def test_seed_002_memorisation_and_an_unknown_vocabulary():
    e = ev(model={**GPT_ARCH, "n_layers": 1, "d_model": 64, "vocab_size": 49805},
           claims=Claims(train_loss=0.23, train_ppl=1.26, params=6_479_053), metrics=metrics(8.9))
    got = codes(e)
    assert {"memorisation", "no-validation-metric", "worse-than-unigram"} <= set(got)
    v = vocab_finding(49805, {"name": "gpt2", "vocab_size": 50257})
    assert v.code == "vocab-mismatch" and "49,805" in v.message and "no known tokenizer" in v.message
    assert vocab_finding(50304, {"name": "gpt2", "vocab_size": 50257}) is None  # nanoGPT's padded head is fine
    assert "bert-base-uncased" in vocab_finding(30522, {"name": "gpt2", "vocab_size": 50257}).message


def test_seed_003_pad_is_eot_from_the_end_of_text_losses():
    e = ev(metrics=metrics(6.3, eot_loss=13.5, eot_targets=510), claims=Claims())
    got = codes(e)
    assert "pad-is-eot" in got and "no-claims" in got
    assert codes(ev(metrics=metrics(6.3, eot_loss=4.0, eot_targets=510))) == []
    # seed 002's 49,805 outputs hold no end-of-text at all: its EOT loss says nothing about padding
    partial = metrics(6.3, eot_loss=20.0, eot_targets=510, partial="49,805 outputs for 50,257 ids")
    assert "pad-is-eot" not in codes(ev(metrics=partial))


def test_seed_004_mlm_claims_checked_against_the_recomputed_loss():
    mlm = {"n_layers": 3, "d_model": 256, "n_heads": 4, "context": 512, "vocab_size": 30522, "params": 10_000_000}
    e = ev(family="mlm", model=mlm, metrics=metrics(6.5), causal=None,
           claims=Claims(val_loss=6.48, val_ppl=657, train_loss=6.43, params=10_000_000))
    assert codes(e) == []
    e = ev(family="mlm", model=mlm, metrics=metrics(7.4), causal=None, claims=Claims(val_loss=6.48))
    assert "val-claim-mismatch" in codes(e)
    s = score(e, find(e, COURSE), COURSE, reference_ppl=math.exp(6.5))
    assert {c.name: c.points for c in s.criteria}["No look-ahead"] == 10  # bidirectional by design


def test_architecture_and_parameter_claims():
    e = ev(model={**GPT_ARCH, "d_model": 512, "params": 30_000_000}, claims=Claims(val_loss=6.2, params=6_700_000))
    got = find(e, COURSE)
    arch = next(f for f in got if f.code == "arch-requirements")
    assert "d_model = 512 (allowed 64–256)" in arch.message
    assert "params-claim-mismatch" in {f.code for f in got}


def test_perplexity_points_scale_between_the_reference_and_the_unigram_baseline():
    ref = math.exp(5.0)
    pts = []
    for loss in (5.0, 6.0, 7.0, 7.3, 7.6):
        e = ev(metrics=metrics(loss))
        pts.append({c.name: c.points for c in score(e, find(e, COURSE), COURSE, ref).criteria}["Validation perplexity"])
    assert pts[0] == 35 and pts[0] > pts[1] > pts[2] > pts[3] == 0 and pts[4] == 0


def test_an_error_scores_zero_where_nothing_was_measured():
    e = ev(metrics=None, model={}, causal=None, error={"code": "checkpoint-unsafe", "message": "code in a pickle"})
    fs = find(e, COURSE)
    assert fs[0].code == "checkpoint-unsafe" and fs[0].severity == "error"
    s = score(e, fs, COURSE)
    assert s.total == 10  # only "reports a validation metric" can stand without a model


def test_overrides_apply_last_and_stay_visible(tmp_path):
    path = tmp_path / "overrides.csv"
    path.write_text("id,criterion,points,reason\ns,Validation perplexity,30,regraded by hand\nt,total,55,late penalty\n")
    rows = read_overrides(path)
    e = ev()
    s = score(e, find(e, COURSE), COURSE, math.exp(6.2), rows)
    assert s.total == 95 and "regraded by hand" in {c.name: c for c in s.criteria}["Validation perplexity"].why
    assert len(s.overrides) == 1
    t = ev(id="t")
    assert score(t, find(t, COURSE), COURSE, math.exp(6.2), rows).total == 55
    path.write_text("id,points\n")
    with pytest.raises(Exception, match="needs the columns"):
        read_overrides(path)
