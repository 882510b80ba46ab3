import json
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.intake.claims import claims_from_report
from harness.intake.logs import curve_from_log, curve_rows, read_rows
from harness.intake.submission import discover, lms_file_name, read_submission

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"


@pytest.mark.skipif(not SEEDS.is_dir(), reason="../shared/seeds is not beside the checkout")
def test_claims_read_from_the_five_seed_reports():
    got = {p.name[:3]: claims_from_report(p) for p in sorted(SEEDS.glob("*.txt"))}
    s0, s1, s2, s3, s4 = (got[k] for k in ("000", "001", "002", "003", "004"))
    assert (s0.train_loss, s0.val_loss, s0.train_ppl, s0.val_ppl, s0.params) == (6.10, 6.54, 446, 693, 6_700_000)
    assert (s1.train_loss, s1.train_ppl, s1.params) == (5.47, 238.59, 7_800_000) and not s1.has_validation
    assert (s2.train_loss, s2.train_ppl, s2.params) == (0.23, 1.26, 6_479_053) and not s2.has_validation
    assert not s3.any  # seed 003 reports no numbers at all
    assert (s4.train_loss, s4.val_loss, s4.val_ppl, s4.params) == (6.43, 6.48, 657, 10_000_000)
    assert all("(best effort)" in src for src in s0.sources.values())


def test_discovery_of_folders_files_zips_and_lms_bulk_downloads(tmp_path):
    (tmp_path / "alice").mkdir()
    (tmp_path / "bob.pt").write_bytes(b"x")
    (tmp_path / "carol.zip").write_bytes(b"x")
    (tmp_path / "smith_jane_12345_67890_model.pt").write_bytes(b"x")
    (tmp_path / "smith_jane_12345_67891_metrics.csv").write_text("epoch,loss\n1,2\n")
    (tmp_path / "doe_late_222_333_ckpt.pt").write_bytes(b"x")
    (tmp_path / "Jo Lee_4444_assignsubmission_file_gpt.pt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".DS_Store").write_text("ignored")
    refs = discover(tmp_path)
    assert [r.id for r in refs] == ["Jo_Lee_4444", "alice", "bob", "carol", "doe_222", "smith_jane_12345"]
    jane = next(r for r in refs if r.id == "smith_jane_12345")
    assert sorted(lms_file_name(p) for p in jane.paths) == ["metrics.csv", "model.pt"]
    with pytest.raises(HarnessError) as e:
        discover(tmp_path / "nothing")
    assert e.value.code == "submissions-missing"


def test_submission_toml_and_a_per_epoch_log(tmp_path):
    (tmp_path / "mini_gpt.pt").write_bytes(b"x")
    (tmp_path / "other.pt").write_bytes(b"x")
    (tmp_path / "metrics.csv").write_text(
        "Epoch,Training Loss,Validation Loss,Training Perplexity,Validation Perplexity\n"
        "1,10.30,9.78,29964,17674\n5,6.93,7.02,1024,1121\n10,6.10,6.54,446,693\n")
    (tmp_path / "submission.toml").write_text(
        '[submission]\nstudent = "Aman"\nfamily = "gpt"\ncheckpoint = "mini_gpt.pt"\n'
        '[model]\nn_heads = 4\nnorm = "pre"\n[claims]\nval_loss = 6.5\n')
    sub = read_submission("aman", tmp_path)
    assert sub.student == "Aman" and sub.family == "gpt" and sub.weights == Path("mini_gpt.pt")
    assert sub.model == {"n_heads": 4, "norm": "pre"}
    c = sub.claims
    assert c.val_loss == 6.5 and c.sources["val_loss"] == "submission.toml"  # the toml wins over the log
    assert (c.train_loss, c.val_ppl, c.train_ppl) == (6.10, 693, 446) and c.sources["val_ppl"] == "log metrics.csv"
    assert [p.step for p in c.curve] == [1, 5, 10] and c.curve[0].axis == "epoch" and c.curve_source == "metrics.csv"


def test_jsonl_and_column_json_logs(tmp_path):
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps({"step": s, "loss": 5 - s / 100}) for s in (100, 200)))
    points, final = curve_from_log(tmp_path / "log.jsonl")
    assert [p.step for p in points] == [100, 200] and final == {"train_loss": 3.0}
    (tmp_path / "hist.json").write_text(json.dumps({"train_loss": [3, 2], "val_loss": [3.5, 2.5]}))
    points, final = curve_from_log(tmp_path / "hist.json")
    assert final == {"train_loss": 2, "val_loss": 2.5} and points[1].step == 2


def test_one_reader_for_claims_and_comparison(tmp_path):
    """A tab-separated log with a byte-order mark and headers as people write them: intake's claims and
    `harness report compare` read the same columns from it."""
    (tmp_path / "log.csv").write_text("\ufeffStep\tTrain Loss\tval-loss\tLearning Rate\n100\t5.5\t\t1e-3\n"
                                      "200\t4.5\t4.75\t5e-4\n", encoding="utf-8")
    points, final = curve_from_log(tmp_path / "log.csv")
    assert [(p.step, p.train_loss, p.val_loss) for p in points] == [(100, 5.5, None), (200, 4.5, 4.75)]
    assert final == {"train_loss": 4.5, "val_loss": 4.75}
    rows = curve_rows(read_rows(tmp_path / "log.csv"))
    assert rows == [{"step": 100, "lr": 1e-3, "train_loss": 5.5, "val_loss": None},
                    {"step": 200, "lr": 5e-4, "train_loss": 4.5, "val_loss": 4.75}]


def test_a_sweep_table_gives_the_row_of_the_graded_run(tmp_path):
    (tmp_path / "results_table.csv").write_text(
        "experiment,final_loss,final_ppl\nbaseline,6.2,492.7\nlr_1e-3,5.9,365.0\nn_layers_1,6.4,601.8\n")
    points, final = curve_from_log(tmp_path / "results_table.csv", Path("outcome/mini_gpt_lr_1e-3.pt"))
    assert points == [] and final == {"train_loss": 5.9, "train_ppl": 365.0}


@pytest.mark.parametrize("toml, fragment", [
    ("[submission]\nfamily = 'rnn'\n", "family = 'rnn'; use gpt or mlm"),
    ("[submission]\ncheckpoint = '../x.pt'\n", "must be a path inside the submission"),
    ("[submission]\ncheckpoint = 'gone.pt'\n", "names checkpoint gone.pt, which is not there"),
    ("[claims]\nval_loss = 'low'\n", "[claims] val_loss must be a finite number"),
    ("[claims]\naccuracy = 1\n", "[claims] has no key 'accuracy'"),
    ("[grades]\nme = 100\n", "[grades] is not a section"),
    ("[model]\ncode = 'model.py'\n", "code must look like"),
    ("[submission\n", "not valid TOML"),
])
def test_a_bad_submission_toml_is_one_clear_sentence(tmp_path, toml, fragment):
    (tmp_path / "w.pt").write_bytes(b"x")
    (tmp_path / "submission.toml").write_text(toml)
    with pytest.raises(HarnessError) as e:
        read_submission("x", tmp_path)
    assert e.value.code == "submission-invalid" and fragment in e.value.message, e.value.message


def test_several_weights_files_warn_and_a_hugging_face_folder_is_one_candidate(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"x")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"x")
    sub = read_submission("x", tmp_path)
    assert sub.weights == Path("a.pt") and "several weights files (a.pt, hf)" in sub.warnings[0]
