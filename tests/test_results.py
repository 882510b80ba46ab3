"""The typed results (harness.grading.results): JSON in, the same JSON out, and typed values in between."""

from __future__ import annotations

import copy
import json

from golden_class import GOLDEN
from harness.files import pretty_json
from harness.grading.findings import Finding
from harness.grading.results import ClassResults, Measurement, Metrics, ModelInfo, SubmissionResult
from harness.grading.rubric import Score
from harness.intake.claims import Claims
from harness.intake.logs import CurvePoint


def test_the_golden_results_json_round_trips_byte_for_byte():
    text = (GOLDEN / "results.json").read_text(encoding="utf-8")
    results = ClassResults.from_json(json.loads(text))
    assert pretty_json(results.to_json()) == text
    assert ClassResults.from_json(results.to_json()) == results
    by_id = {s.id: s for s in results.submissions}
    gpt, mlm, broken = by_id["hf_gpt2"], by_id["bert_mlm"], by_id["broken"]
    assert isinstance(gpt.metrics, Metrics) and gpt.metrics.bits_per_byte > 0 and gpt.metrics.accuracy is None
    assert mlm.metrics.protocol == "mlm-v1" and mlm.metrics.accuracy is not None and mlm.metrics.bits_per_byte is None
    assert isinstance(gpt.claims, Claims) and gpt.claims.curve and isinstance(gpt.claims.curve[0], CurvePoint)
    assert isinstance(gpt.score, Score) and all(isinstance(f, Finding) for f in gpt.findings)
    assert broken.metrics is None and broken.error.code == "checkpoint-unreadable"
    assert results.reference.of("gpt") is results.reference.gpt and results.reference.of("mlm") is None


MEASURED = {
    "id": "s1", "student": "Ada", "status": "graded", "error": None,
    "checkpoint": {"path": "m.pt", "sha256": "ab" * 32, "format": "torch", "layout": "custom-code"},
    "model": {"family": "mlm", "layout": "custom-code", "params": 1234, "code": "model.py:Net", "n_layers": 2,
              "d_model": 32, "n_heads": None, "context": 64, "d_ff": None, "vocab_size": 100,
              "sources": {"params": "the built module's parameters"}, "unverified": ["n_heads"],
              "built": {"dropped": []}, "sandbox": "bubblewrap"},
    "metrics": None,  # the golden BERT's, with a key of a newer harness (below)
    "claims": {"val_loss": None, "val_ppl": None, "val_bpb": None, "train_loss": 3.0, "train_ppl": None,
               "params": None, "sources": {"train_loss": "submission.toml"}, "curve_source": None, "curve": []},
    "causal": None, "nonfinite": [], "tokenizer": {"name": "vocab.txt", "vocab_size": 100, "eot_id": None,
                                                  "sha256": "cd" * 32, "named_by_student": True, "roles": None},
    "warnings": ["model code: a note"], "pad_id": None, "harness_version": "0.1.0", "device": "cpu",
    "report_file": None, "seconds": 1.5, "measured_on": "2026-12-06", "signature_key": "k" * 16,
}


def test_a_measurement_of_either_shape_round_trips_and_keeps_keys_it_does_not_know():
    golden = json.loads((GOLDEN / "results.json").read_text(encoding="utf-8"))
    measured = {**copy.deepcopy(MEASURED), "metrics": {**golden["submissions"][0]["metrics"], "future_key": [1, 2]}}
    assert measured["metrics"]["protocol"] == "mlm-v1"
    m = Measurement.from_json(copy.deepcopy(measured))
    assert isinstance(m.model, ModelInfo) and m.model.code == "model.py:Net" and m.model.tied is None
    assert m.metrics.accuracy is not None and m.metrics.bits_per_byte is None
    assert m.to_json() == measured  # a custom-code model: no layout fields; mlm metrics: no clm fields
    assert "tied" not in m.to_json()["model"] and "bits_per_byte" not in m.to_json()["metrics"]
    assert "data" not in m.to_json() and "cache_key" not in m.to_json()  # written only where they have a value
    m.cache_key = "x" * 24
    assert m.to_json()["cache_key"] == "x" * 24


def test_hand_written_results_read_leniently():
    results = ClassResults.from_json({"submissions": [{"id": "a", "metrics": {"ppl": 12.0}}]})
    s = results.submissions[0]
    assert isinstance(s, SubmissionResult) and s.metrics.ppl == 12.0 and s.metrics.loss is None
    assert s.findings == [] and s.score.total == 0 and s.claims is None and results.reference.gpt is None
    assert Measurement.failed("b", "grading-timeout", "took too long").to_json()["error"] == {
        "code": "grading-timeout", "message": "took too long"}
