"""The PDF reports: rendered from results built here (the grader's results.json contract), read back as
text, and page 1 rasterised to check it is a real A4 page."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pypdf import PdfReader

from harness import __version__
from harness.errors import HarnessError
from harness.demo.example_results import UNIGRAM_LOSS, make_results, reference_curve
from harness.grading.findings import CATALOGUE
from harness.reporting.report import (fmt_ppl, load_run, load_runs, render_class_report, render_comparison,
                            render_student_report)

# --- helpers ---------------------------------------------------------------------------------------


def pages_text(pdf: Path) -> list[str]:
    return [page.extract_text() or "" for page in PdfReader(str(pdf)).pages]


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_a4_png(pdf: Path, tmp: Path) -> None:
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    from PIL import Image

    stem = tmp / f"{pdf.stem}-p1"
    subprocess.run(["pdftoppm", "-r", "40", "-png", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(stem)],
                   check=True, capture_output=True, timeout=60)
    img = Image.open(f"{stem}.png").convert("L")
    w, h = img.size
    assert abs(h / w - 297 / 210) < 0.01, (w, h)
    dark = sum(img.histogram()[:160])
    assert dark > 0.005 * w * h, f"page 1 of {pdf.name} is nearly blank ({dark} dark pixels)"


@pytest.fixture(scope="module")
def results() -> dict:
    return make_results()


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reports")


@pytest.fixture(scope="module")
def gpt_pdf(results, out) -> Path:
    return render_student_report(results, "s01-khan", out / "s01-khan.pdf")


# --- student reports -------------------------------------------------------------------------------


def test_student_report_shows_verdict_rubric_metrics_findings(gpt_pdf, results, out):
    pages = pages_text(gpt_pdf)
    text = flat(" ".join(pages))
    sub = results["submissions"][0]
    assert re.search(r"77\.42 ?/ ?100", text)  # the score, first
    assert "Graded, with 1 warning" in text
    for c in sub["score"]["criteria"]:  # every criterion with its why
        assert c["name"] in text
        assert c["why"][:40] in text
    assert fmt_ppl(sub["metrics"]["ppl"]) == "964.1" and "964.1" in text
    assert "6.871" in text and "6.540" in text and "693.0" in text  # recomputed against claimed
    assert fmt_ppl(results["reference"]["gpt"]["ppl"]) in text and fmt_ppl(math.exp(UNIGRAM_LOSS)) in text
    assert "50,257" in text  # uniform baseline and vocabulary
    assert "val-claim-mismatch" in text and CATALOGUE["val-claim-mismatch"][1] in text
    assert CATALOGUE["val-claim-mismatch"][2][:50] in text  # what it means and how to fix it
    assert "1–6" in text and "submission.toml" in text  # requirements and sources of the architecture
    assert "ab" * 32 in text.replace(" ", "")  # provenance: the full checkpoint hash
    # grader-only material stays out of the student's copy
    assert "similar-weights" not in text and "s06-copy" not in text and "grader's copy" not in text.lower()
    # the student id is on every page, and the page count is right
    assert len(pages) >= 2
    for i, page in enumerate(pages, start=1):
        assert "s01-khan" in page, f"page {i} lacks the student id"
        assert f"page {i} of {len(pages)}" in flat(page)
    assert f"course {results['course']['fingerprint'][:12]}" in flat(pages[-1])
    assert f"checkpoint {'ab' * 6}" in flat(pages[-1])


def test_student_report_figure_text_is_searchable(gpt_pdf):
    text = flat(" ".join(pages_text(gpt_pdf)))
    assert "perplexity (log scale)" in text and "loss (nats per token)" in text
    assert "recomputed (harness)" in text and "epoch" in text
    assert "fraction of training" not in text  # both logged epochs: plotted against epochs


def test_grader_copy_adds_grader_only_findings_and_similarity(results, out):
    pdf = render_student_report(results, "s01-khan", out / "s01-grader.pdf", grader=True)
    pages = pages_text(pdf)
    text = flat(" ".join(pages))
    assert "grader's copy" in text.lower() and "similar-weights" in text and "0.9995" in text and "s06-copy" in text
    assert all("grader's copy" in p for p in pages)


def test_error_submission_gets_a_report(results, out):
    pdf = render_student_report(results, "s03-han", out / "s03-han.pdf")
    text = flat(" ".join(pages_text(pdf)))
    assert "Could not be graded" in text and "49,805 outputs" in text
    assert "vocab-mismatch" in text and CATALOGUE["vocab-mismatch"][2][:50] in text
    assert re.search(r"\b15 ?/ ?100\b", text)
    assert_a4_png(pdf, out)


def test_mlm_report(results, out):
    pdf = render_student_report(results, "s05-bert", out / "s05-bert.pdf")
    text = flat(" ".join(pages_text(pdf)))
    assert "masked LM" in text and "13.7%" in text and fmt_ppl(math.exp(6.5012)) in text
    assert "mlm-v1" in text and "30,522" in text
    assert "No findings" in text
    assert "MLM reference re-trained after the deadline" in text  # the grader's override is visible


def test_causal_leak_and_requirements(results, out):
    pdf = render_student_report(results, "s06-copy", out / "s06.pdf")
    text = flat(" ".join(pages_text(pdf)))
    assert "Graded, with errors" in text and CATALOGUE["causal-leak"][1] in text
    assert "✗ outside" in text and "not valid" in text
    assert 'Sam O\'Brien "Jr"' in text  # quotes survive the header's CSS string


def test_step_curve_against_reference_steps(results, out):
    pdf = render_student_report(results, "s04-sweep", out / "s04.pdf")
    text = flat(" ".join(pages_text(pdf)))
    assert "pad-is-eot" in text and "outcome/results_table.csv" in text
    assert "both runs against steps" in text and "moving mean" in text


def test_page_one_is_a4_and_not_blank(gpt_pdf, out):
    box = PdfReader(str(gpt_pdf)).pages[0].mediabox
    assert abs(float(box.width) - 595.28) < 1 and abs(float(box.height) - 841.89) < 1
    assert_a4_png(gpt_pdf, out)


def test_same_results_same_bytes(results, out, gpt_pdf):
    again = render_student_report(results, "s01-khan", out / "again.pdf")
    assert again.read_bytes() == gpt_pdf.read_bytes()
    meta = PdfReader(str(again)).metadata
    assert meta.creation_date.date().isoformat() == "2026-11-22"


def test_unknown_submission_is_a_clear_error(results, out):
    with pytest.raises(HarnessError, match="no submission 'nobody'.*s01-khan"):
        render_student_report(results, "nobody", out / "x.pdf")


def test_minimal_submission_renders(out):
    """Only the keys every result has: nothing optional may be required."""
    results = {"harness_version": __version__, "course": {"name": "Tiny", "id": "t", "fingerprint": "00" * 32},
               "data": {}, "protocol": {}, "reference": {"gpt": None, "mlm": None}, "generated": "2026-01-02",
               "submissions": [{"id": "x1", "status": "error", "error": {"code": "checkpoint-missing", "message":
                                "no weights"}, "checkpoint": {}, "model": {}, "metrics": None, "claims": {},
                                "findings": [], "score": {"total": 0, "max": 100, "criteria": []}}]}
    pdf = render_student_report(results, "x1", out / "x1.pdf")
    assert "no weights" in flat(" ".join(pages_text(pdf)))
    render_class_report(results, out / "tiny-class.pdf")


# --- class report ----------------------------------------------------------------------------------


def test_class_report(results, out):
    pdf = render_class_report(results, out / "class.pdf")
    pages = pages_text(pdf)
    text = flat(" ".join(pages))
    for s in results["submissions"]:
        assert s["id"] in text
    assert "Aman Khan" in text and "77.42" in text and "964.1" in text
    assert "no-validation-metric" in text and "pad-is-eot" in text and "causal-leak" in text
    assert "Submissions that could not be graded" in text and "49,805 outputs" in text
    assert "Similar weights" in text and "0.9995" in text
    assert "parameters (log scale)" in text and "claimed = recomputed" in text
    assert all(f"of {len(pages)}" in flat(p) for p in pages)
    # the leaderboard ranks by the course's metric (perplexity 497.9, 634.7, 964.1), the MLM apart, then the
    # model that looks ahead (8.19: invalid) and the error, unranked
    lb = text[text.index("Leaderboard"):]
    assert lb.index("s02-nolan") < lb.index("s04-sweep") < lb.index("s01-khan") < lb.index("s05-bert") \
        < lb.index("s06-copy") < lb.index("s03-han")
    assert "78.10" in lb
    assert_a4_png(pdf, out)


def test_class_report_for_students_hides_similarity(results, out):
    text = flat(" ".join(pages_text(render_class_report(results, out / "class-public.pdf", grader=False))))
    assert "Similar weights" not in text and "similar-weights" not in text and "grader's copy" not in text.lower()


# --- runs and comparison ---------------------------------------------------------------------------


def _write_reference_run(folder: Path) -> None:
    folder.mkdir(parents=True)
    cols = ["step", "epoch", "tokens", "lr", "train_loss", "train_ppl", "val_loss", "val_ppl", "tokens_per_s"]
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for p in reference_curve():
            w.writerow([p["step"], f"{p['epoch']:.4f}", p["tokens"], 1e-3, f"{p['train_loss']:.4f}",
                        f"{p['train_ppl']:.2f}", "" if p["val_loss"] is None else f"{p['val_loss']:.4f}",
                        "" if p["val_ppl"] is None else f"{p['val_ppl']:.2f}", 51234.5])
    (folder / "run.json").write_text(json.dumps({  # the shape `harness reference train` writes
        "name": "gpt", "family": "gpt", "params": 6_841_600, "steps": 5000, "tokens": 10_240_000, "wall_s": 812.5,
        "config": {"n_layers": 2, "d_model": 128, "n_heads": 4, "lr": 1e-3, "batch_size": 32, "context": 64,
                   "optimizer": {"betas": [0.9, 0.95], "weight_decay": 0.1}},
        "final": {"train_loss": 5.21, "train_ppl": math.exp(5.21), "train_loss_window": 100, "val_loss": 5.4152,
                  "val_ppl": math.exp(5.4152), "evaluation": {"loss": 5.4152, "tokens": 53_284}}}))


def _write_sweep(folder: Path) -> None:
    folder.mkdir(parents=True)
    rows = [("baseline", 5e-4, 32, 2, 128, 6.91), ("lr_1e-3", 1e-3, 32, 2, 128, 6.52),
            ("batch_size_16", 5e-4, 16, 2, 128, 6.70), ("n_layers_1", 5e-4, 32, 1, 128, 7.05),
            ("embed_dim_64", 5e-4, 32, 2, 64, 7.31)]
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "lr", "batch_size", "n_layers", "embed_dim", "final_loss", "final_perplexity"])
        for name, lr, bs, nl, ed, loss in rows:
            w.writerow([name, lr, bs, nl, ed, loss, round(math.exp(loss), 2)])
    for name, *_rest, loss in rows:  # per-run logs for two of them
        if name in ("baseline", "lr_1e-3"):
            with open(folder / f"metrics_{name}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["step", "loss", "perplexity"])
                for s in range(0, 2000, 50):
                    l = loss + 4 * math.exp(-s / 300)
                    w.writerow([s, round(l, 4), round(math.exp(l), 2)])


def test_load_runs_from_every_source(results, tmp_path):
    _write_reference_run(tmp_path / "reference_model" / "gpt")
    _write_sweep(tmp_path / "sweep")
    (tmp_path / "results.json").write_text(json.dumps(results))
    ref = load_run(tmp_path / "reference_model" / "gpt")
    assert ref["name"] == "gpt" and len(ref["curve"]) == 51 and ref["summary"]["params"] == 6_841_600
    assert ref["curve"][5]["val_loss"] is not None and ref["curve"][4]["val_loss"] is None
    assert ref["config"]["optimizer.weight_decay"] == 0.1
    assert "train_loss_window" not in ref["summary"] and "evaluation" not in ref["summary"]
    sweep = load_runs(tmp_path / "sweep")
    assert [r["name"] for r in sweep][:2] == ["baseline", "lr_1e-3"] and len(sweep) == 5
    assert sweep[1]["config"]["lr"] == 1e-3 and sweep[1]["summary"]["train_loss"] == 6.52
    assert len(sweep[0]["curve"]) == 40 and sweep[2]["curve"] == []
    assert load_run(f"{tmp_path / 'sweep'}#n_layers_1")["config"]["n_layers"] == 1
    sub = load_run(f"{tmp_path / 'results.json'}#s01-khan")
    assert sub["summary"]["val_loss"] == 6.8712 and len(sub["curve"]) == 10 and sub["curve"][0]["epoch"] == 1.0
    assert len(load_runs(tmp_path / "results.json")) == 6
    with pytest.raises(HarnessError, match="holds 5 runs"):
        load_run(tmp_path / "sweep")
    with pytest.raises(HarnessError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(HarnessError, match="no run named"):
        load_run(f"{tmp_path / 'sweep'}#nope")


def test_comparison_pdf(results, tmp_path):
    _write_reference_run(tmp_path / "ref" / "gpt")
    _write_sweep(tmp_path / "sweep")
    (tmp_path / "results.json").write_text(json.dumps(results))
    runs = [load_run(tmp_path / "ref" / "gpt"), load_runs(tmp_path / "sweep"),
            load_run(f"{tmp_path / 'results.json'}#s02-nolan")]
    pdf = render_comparison(runs, tmp_path / "compare.pdf", generated="2026-11-22")
    text = flat(" ".join(pages_text(pdf)))
    for name in ("gpt", "baseline", "lr_1e-3", "embed_dim_64", "s02-nolan"):
        assert name in text
    assert "Settings that differ" in text and "batch_size" in text and "497.9" in text
    assert not re.search(r"\bembed_dim\b(?!_64)", text.split("Settings that differ")[1])  # it is d_model
    assert "x is steps" in text  # every curve logged steps
    assert_a4_png(pdf, tmp_path)


def test_curves_in_different_units_are_normalised():
    """A student logging per epoch against a reference logging per step only: fraction of training."""
    from harness.reporting.figures import training_curves

    student = [{"epoch": float(e), "train_loss": 8 - e / 3} for e in range(1, 6)]
    reference = [{"step": s, "train_loss": 9 - s / 1000, "val_loss": None} for s in range(0, 5000, 100)]
    svg, how = training_curves(student, "epoch", reference, recomputed_loss=6.5)
    assert "fraction of each run's own training" in how and "fraction of training" in svg
    assert "<text" in svg  # text stays text (svg.fonttype none)
    assert training_curves([], None, []) is None


def test_hostile_names_stay_text(out):
    """A course or student name with quotes and markup is printed as text, in the body and the header."""
    results = make_results()
    results["course"]["name"] = 'Deep "LM" </style><b>course</b> \\ 101'
    results["submissions"][0]["student"] = "<script>x</script> O'Neil"
    pdf = render_student_report(results, "s01-khan", out / "hostile.pdf")
    pages = pages_text(pdf)
    assert all('Deep "LM" </style><b>course</b> \\ 101' in p for p in pages)
    assert all("<script>x</script> O'Neil" in p for p in pages)


def test_harness_sweep_folder(tmp_path):
    """`harness reference sweep` writes results.csv (a `run` label per row) and one run folder per label."""
    folder = tmp_path / "gpt-sweep"
    labels = ["lr=0.001,batch_size=16", "lr=0.001,batch_size=32"]
    for label in labels:
        _write_reference_run(folder / label)
    with open(folder / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lr", "batch_size", "run", "train_loss", "train_ppl", "val_loss", "val_ppl", "params", "steps",
                    "tokens", "wall_s", "tokens_per_s", "complete"])
        for label, bs, vl in ((labels[0], 16, 5.52), (labels[1], 32, 5.41)):
            w.writerow([0.001, bs, label, 5.3, 200.3, vl, round(math.exp(vl), 3), 6841600, 5000, 5000 * bs * 64,
                        800.0, 51234.5, True])
    runs = load_runs(folder)
    assert [r["name"] for r in runs] == labels and all(len(r["curve"]) == 51 for r in runs)
    assert runs[0]["config"] == {"lr": 0.001, "batch_size": 16}
    assert runs[1]["summary"]["val_loss"] == 5.41 and runs[1]["summary"]["complete"] is True
    pdf = render_comparison(runs, tmp_path / "sweep.pdf", generated="2026-11-22")
    text = flat(" ".join(pages_text(pdf)))
    assert "x is tokens seen" in text and "batch_size" in text and "5.410" in text


def test_reports_are_rendered_again_only_when_what_they_show_changed(results, tmp_path):
    import copy

    from harness.grading.batch import write_reports

    first = write_reports(results, tmp_path)
    stamps = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first}
    again = write_reports(results, tmp_path)  # unchanged results: nothing rendered, files untouched
    assert [p.name for p in again] == [p.name for p in first]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in again} == stamps
    changed = copy.deepcopy(results)
    changed["submissions"][0]["score"]["total"] += 1
    write_reports(changed, tmp_path)
    assert all(p.stat().st_mtime_ns != stamps[p.name][0] for p in first)
    (tmp_path / first[0].name).unlink()  # a PDF gone: rendered again
    assert write_reports(changed, tmp_path)[0].is_file()


def test_the_perplexity_curve_smooths_the_loss_not_the_perplexity():
    import math

    from harness.reporting.curves import _smooth

    # one spike among steady steps: a mean of perplexities would sit far above every ordinary step
    ppl = [math.exp(7.0)] * 20 + [math.exp(12.0)] + [math.exp(7.0)] * 20
    smooth = _smooth(ppl, log=True)
    assert max(smooth) == pytest.approx(math.exp(8.0)) and smooth[0] == pytest.approx(math.exp(7.0))
    assert max(_smooth(ppl)) > 3 * max(smooth)  # the arithmetic mean of perplexities it replaces
    assert _smooth([1.0, 3.0, 2.0])[1] == pytest.approx(2.0)


def test_the_footer_names_several_data_manifests_by_their_hashes_not_as_a_python_list():
    from harness.grading.results import ClassResults
    from harness.reporting.views import fingerprints

    results = ClassResults.from_json({"course": {"fingerprint": "c" * 64},
                                      "data": {"manifest_sha256": ["a" * 64, "b" * 64, "a" * 64]}})
    text = fingerprints(results)
    assert f"data {'a' * 12} + {'b' * 12}" in text and "[" not in text and "'" not in text
    # a student's report names the data that submission was scored on: one short hex
    assert f"data {'b' * 12}  ·" in fingerprints(results, "d" * 64, "b" * 64)


def test_the_provenance_names_the_data_fingerprints_as_hex_not_as_a_python_list():
    from harness.reporting.class_report import class_context
    from harness.reporting.student import student_context

    results = {"course": {"fingerprint": "c" * 64}, "data": {"manifest_sha256": ["a" * 64, "b" * 64]},
               "submissions": [{"id": "x", "status": "error", "data": {"manifest_sha256": "b" * 64}}]}
    ctx = student_context(results, "x")
    rows = {label: value for group in ctx["provenance"] for label, value, _ in group["rows"]}
    assert rows["Manifest sha256"] == "b" * 64  # the data this submission was scored on
    assert f"data {'b' * 12}  ·" in ctx["page"]["footer"]
    rows = {label: value for group in class_context(results)["provenance"] for label, value, _ in group["rows"]}
    assert rows["Manifest sha256"] == f"{'a' * 64}, {'b' * 64}"


@pytest.mark.parametrize("server", ["fresh", "warm"])
def test_pdfs_rendered_by_two_processes_are_the_bytes_one_process_renders(results, tmp_path, monkeypatch, server,
                                                                          request):
    """`harness grade --workers 2` shares a large class's student PDFs between two processes: fresh
    interpreters while it renders the class report itself, or, where it started the reports' server while
    it measured, processes forked from that server (which imported the renderer and rendered the example
    results once), the class report in a third. Every file equals the one process's, byte for byte,
    relative OUT too."""
    import copy
    import os

    from harness import forkserver
    from harness.grading.batch import PDFS_PER_PROCESS, REPORTS, reports_server, write_reports

    large = copy.deepcopy(results)  # enough students for two processes' shares
    originals = large["submissions"]
    while len(large["submissions"]) < 2 * PDFS_PER_PROCESS:
        twin = copy.deepcopy(originals[len(large["submissions"]) % len(originals)])
        twin["id"] = f"twin{len(large['submissions']):02d}-{twin['id']}"
        large["submissions"].append(twin)
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the PDFs are rendered in this process only")
    one = write_reports(large, tmp_path / "one", processes=1)
    if server == "fresh":
        monkeypatch.setenv("HARNESS_FORKSERVER", "0")
    else:
        request.addfinalizer(forkserver.shutdown)  # later tests start as a grader would: no reports server
        reports_server(len(large["submissions"]), 2)
        assert forkserver.running(REPORTS)
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path)
    two = write_reports(large, Path("two"), processes=2)
    # forked from it: a server that had refused (a thread after its warm-up) would have ended
    assert forkserver.running(REPORTS) == (server == "warm")
    assert [p.name for p in one] == [p.name for p in two] and len(one) == len(large["submissions"]) + 1
    assert all(a.read_bytes() == (tmp_path / b).read_bytes() for a, b in zip(one, two))
