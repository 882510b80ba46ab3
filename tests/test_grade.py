"""`harness grade` on a class written by the tests: every seed's flaw found on its own submission and on
no other, hostile and broken ones isolated, reruns cached and byte-identical, a killed batch resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.course.config import capped_course_text

pytestmark = pytest.mark.slow

SEED_FLAWS = ("causal-leak", "no-validation-metric", "memorisation", "vocab-mismatch", "pad-is-eot")


def _course(path: Path) -> Path:
    """The default course with the evaluation capped, so that a test class grades in a couple of minutes."""
    text = capped_course_text(4096, calibration_tokens=1024)
    assert "max_tokens = 4096" in text and "calibration_tokens = 1024" in text
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory, example_class):
    root = tmp_path_factory.mktemp("class")
    class_dir = example_class[0]  # conftest's test-scale example class, graded as it is (never changed)
    course = _course(root / "course.toml")
    out = root / "out"
    cmd = [sys.executable, "-m", "harness", "grade", str(class_dir), "--out", str(out), "--course", str(course),
           "--workers", "2", "--timeout", "60", "--no-reports"]  # custom_loop: 15 s a call
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "class": class_dir, "course": course, "out": out, "cmd": cmd, "proc": proc,
            "seconds": time.monotonic() - start, "results": json.loads((out / "results.json").read_text())}


def _codes(results):
    return {s["id"]: {f["code"] for f in s["findings"]} for s in results["submissions"]}


def test_the_class_is_graded_and_the_bad_ones_fail_alone(graded):
    from example_oracle import EXPECTED

    subs = {s["id"]: s for s in graded["results"]["submissions"]}
    assert len(subs) >= 10 and set(EXPECTED) <= set(subs)
    for sid in ("broken_file", "hostile_pickle", "custom_crash", "custom_loop"):
        assert subs[sid]["status"] == "error" and subs[sid]["error"]["message"], sid
    for sid in ("s000_encoder", "s001_pre_ln", "s003_pad_eot", "s004_bert", "nanogpt_clean", "hf_gpt2_clean",
                "custom_code", "copied_model"):
        assert subs[sid]["status"] == "graded" and subs[sid]["metrics"]["loss"] > 0, (sid, subs[sid]["error"])
    assert subs["hostile_pickle"]["error"]["code"] == "checkpoint-unsafe"
    assert not list(graded["class"].rglob("*MARKER*")) and not list(graded["root"].rglob("*MARKER*"))


def _check_flaws(graded, flaws):
    from example_oracle import EXPECTED

    codes = _codes(graded["results"])
    for sid, expected in EXPECTED.items():
        want = expected & set(flaws) if set(expected) & set(SEED_FLAWS) else expected
        assert want <= codes[sid], (sid, want - codes[sid], codes[sid])
    for flaw in flaws:
        owners = {sid for sid, exp in EXPECTED.items() if flaw in exp}
        assert {sid for sid, c in codes.items() if flaw in c} == owners, flaw


def test_each_seed_flaw_is_found_on_its_submission_and_on_no_other(graded):
    _check_flaws(graded, [f for f in SEED_FLAWS if f != "causal-leak"])


def test_the_encoder_without_a_causal_mask_is_caught_at_test_scale(graded):
    _check_flaws(graded, ["causal-leak"])


def test_grades_csv_is_ready_for_a_gradebook(graded):
    lines = (graded["out"] / "grades.csv").read_text().splitlines()
    assert lines[0] == "id,student,score,max,ppl,loss,bits_per_byte,status,findings"
    assert len(lines) == 1 + len(graded["results"]["submissions"])
    row = next(l for l in lines if l.startswith("nanogpt_clean,"))
    assert ",graded," in row


def test_a_rerun_evaluates_nothing_and_writes_identical_files(graded):
    out = graded["out"]
    before = {n: (out / n).read_bytes() for n in ("results.json", "grades.csv")}
    proc = subprocess.run(graded["cmd"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "0 evaluated" in proc.stdout
    assert {n: (out / n).read_bytes() for n in before} == before


def test_a_batch_killed_half_way_resumes_without_redoing_or_losing_anything(graded):
    out = graded["root"] / "out-killed"
    cmd = [c if c != str(graded["out"]) else str(out) for c in graded["cmd"]]
    cmd[cmd.index("--workers") + 1] = "1"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cache = out / ".cache"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(list(cache.glob("*.json"))) < 3:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.json")}
    assert 3 <= len(done_before) < len(graded["results"]["submissions"]) and not (out / "results.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.json")}
    assert all(after[name] == mtime for name, mtime in done_before.items())  # finished work was not redone
    resumed = json.loads((out / "results.json").read_text())
    first = graded["results"]
    assert [(s["id"], s["status"]) for s in resumed["submissions"]] == [(s["id"], s["status"]) for s in first["submissions"]]
    graded["resumed"] = out


def test_independent_runs_give_byte_identical_results(graded):
    # the killed-and-resumed batch ran with one worker (two threads per submission), the first with two
    # (one thread each): float noise of the thread count must not reach results.json
    resumed = graded.get("resumed")
    assert resumed is not None
    assert (resumed / "results.json").read_bytes() == (graded["out"] / "results.json").read_bytes()


def test_harness_eval_on_a_submission_gives_the_graded_number(graded):
    """`harness eval` measures by grading's own path: the same calibration (s000: no causal mask), the sandbox
    for custom code, a truncated vocabulary (s002), an MLM and a plain nanoGPT give results.json's metrics
    exactly, with the unigram baseline; a submission grading refuses fails with grading's words."""
    subs = {s["id"]: s for s in graded["results"]["submissions"]}
    for sid in ("s000_encoder", "s004_bert", "custom_code", "s002_memorise", "nanogpt_clean", "hostile_pickle"):
        proc = subprocess.run([sys.executable, "-m", "harness", "eval", str(graded["class"] / sid), "--course",
                               str(graded["course"]), "--json"], capture_output=True, text=True, timeout=600)
        if subs[sid]["status"] == "error":
            assert proc.returncode != 0 and subs[sid]["error"]["message"] in " ".join(proc.stderr.split()), sid
            continue
        assert proc.returncode == 0, proc.stderr
        mine = json.loads(proc.stdout)
        assert mine["metrics"] == subs[sid]["metrics"] and mine["causal"] == subs[sid]["causal"], sid
        assert mine["model"]["layout"] == subs[sid]["model"]["layout"], sid
        assert mine["metrics"]["unigram_ppl"] > 1 and mine["metrics"]["unigram_source"] == "train", sid
    assert subs["s002_memorise"]["metrics"]["partial"] and subs["custom_code"]["model"]["layout"] == "custom-code"


def test_every_unigram_baseline_counts_the_train_split(graded):
    """SPEC: the unigram baseline is the train split's (the MLM's too, with the student's own tokenizer)."""
    metrics = {s["id"]: s["metrics"] for s in graded["results"]["submissions"] if s.get("metrics")}
    assert "s004_bert" in metrics and metrics["s004_bert"]["protocol"] == "mlm-v1"
    assert {m["unigram_source"] for m in metrics.values()} == {"train"}


def test_every_graded_model_writes_its_samples(graded):
    """The course's prompts continued by every kind of causal model (a layout, Hugging Face, custom code in
    its sandbox), and the masked LM's fill-ins, in results.json."""
    subs = {s["id"]: s for s in graded["results"]["submissions"]}
    for sid in ("s001_pre_ln", "nanogpt_clean", "hf_gpt2_clean", "custom_code"):
        samples = subs[sid]["samples"]
        assert samples["kind"] == "continuations" and len(samples["continuations"]) == 3, sid
        assert all(c["error"] is None for c in samples["continuations"]), sid
        assert sum(c["greedy_tokens"] + c["sampled_tokens"] for c in samples["continuations"]) > 0, sid
        assert samples["settings"]["max_new_tokens"] == 40 and samples["settings"]["seed"] == 1234
    bert = subs["s004_bert"]["samples"]
    assert bert["kind"] == "fill-ins" and len(bert["fill_ins"]) == 3
    assert all(len(mask) == 5 for f in bert["fill_ins"] for mask in f["masks"])
    assert subs["broken_file"].get("samples") is None


def test_calibration_stops_once_a_candidate_clearly_wins(graded):
    """The seeds' layouts needing calibration decide as they did on all 1,024 calibration targets (the values
    below), on fewer: the candidates' losses part by far more than 3 standard errors early; the measurement
    says what it took."""
    before = {"s000_encoder": {"causal": False, "norm": "post", "activation": "relu"},
              "s002_memorise": {"causal": True, "qkv_order": "qkv-per-head"},
              "s003_pad_eot": {"causal": True, "qkv_order": "qkv"}}
    for sid, chosen in before.items():
        m = json.loads(next((graded["out"] / ".cache").glob(f"{sid}.*.json")).read_text())
        calibration, cost = m["model"]["calibration"], m["calibration_cost"]
        assert {k: calibration[k]["chosen"] for k in chosen} == chosen and all(c["decided"] for c in calibration.values())
        assert cost["stopped_early"] == cost["rounds"] >= 1 and cost["targets"] < 1024 * cost["rounds"], sid
        assert all(c["tokens"] < 1024 for c in calibration.values()) and cost["candidates"] >= 2 and cost["seconds"] > 0
        # results.json says what it cost, without the seconds (they differ from run to run)
        shown = next(s for s in graded["results"]["submissions"] if s["id"] == sid)["model"]["calibration_work"]
        assert shown == {k: v for k, v in cost.items() if k != "seconds"}, sid


def test_no_example_model_is_found_trained_on_validation(graded):
    """Issue #17: the example class trains on the train split only, so the private split finds none of it."""
    subs = {s["id"]: s for s in graded["results"]["submissions"]}
    assert graded["results"]["data"]["private_split"] == "test"
    gaps = {sid: s["split_gap"] for sid, s in subs.items() if s["status"] == "graded" and s.get("split_gap")}
    assert {"nanogpt_clean", "hf_gpt2_clean", "s001_pre_ln"} <= set(gaps)
    assert not [sid for sid, s in subs.items() if "trained-on-validation" in {f["code"] for f in s["findings"]}]


def test_similar_pairs_do_not_depend_on_which_measurement_finished_first(tmp_path):
    """Workers finish in any order; a pair names its two submissions in id order, and the pairs are sorted."""
    import numpy as np

    from harness.grading.batch import similarity_pairs
    from harness.grading.results import Measurement

    rng = np.random.default_rng(0)
    base = rng.standard_normal(4096).astype(np.float32)
    signatures = {"zed": base, "amy": base + 1e-4 * rng.standard_normal(4096).astype(np.float32),
                  "kim": base.copy(), "other": rng.standard_normal(4096).astype(np.float32)}
    measured = []
    for sid, v in signatures.items():
        np.save(tmp_path / f"{sid}.k.npy", v)
        measured.append(Measurement(id=sid, status="graded", cache_key="k", signature_key="same-shapes"))
    pairs = [similarity_pairs(order, tmp_path, 0.99) for order in (measured, measured[::-1])]
    assert pairs[0] == pairs[1]
    assert [(p.a, p.b) for p in pairs[0]] == [("amy", "kim"), ("amy", "zed"), ("kim", "zed")]


def test_the_costliest_submissions_start_first(example_class, tmp_path):
    """Work is started longest first (custom code, then by size), so that no worker ends alone with a long
    one: the order of the example class's jobs, and a damaged submission.toml only guessed at."""
    from harness.grading.batch import MODEL_CODE_WORK, expected_work
    from harness.intake.submission import discover

    refs = {r.id: r for r in discover(example_class[0])}
    work = {sid: expected_work(r) for sid, r in refs.items()}
    order = sorted(work, key=lambda sid: (-work[sid], sid))
    code = [sid for sid in refs if 'code = "' in (example_class[0] / sid / "submission.toml").read_text()]
    assert code and set(order[:len(code)]) == set(code), order  # model code first (3x its bytes: 13 MB -> 39)
    size = {sid: sum(f.stat().st_size for f in (example_class[0] / sid).rglob("*") if f.is_file()) for sid in refs}
    assert all(work[sid] == size[sid] * (MODEL_CODE_WORK if sid in code else 1) for sid in refs)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "submission.toml").write_text("[model\ncode = 'x.py:M'\n")  # not TOML: no guess
    assert expected_work(discover(tmp_path)[0]) == len("[model\ncode = 'x.py:M'\n")
