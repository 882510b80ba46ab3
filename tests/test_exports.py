"""Gradebook exports: a Canvas gradebook CSV filled from results.json (matching by Canvas user id, SIS ids,
then name; one column; scaled to its points possible), Gradescope's results.json, and both through the
real command line on a tiny real submission."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import assert_one_line_error
from harness.course.config import capped_course_text
from harness.errors import HarnessError
from harness.reporting.exports import canvas_csv, gradescope_results, read_canvas_template

# --- a Canvas gradebook export, as Canvas writes it --------------------------------------------

HEADER = ("Student,ID,SIS User ID,SIS Login ID,Section,Assignment 1: Bigrams (11111),Transformer LM (22222),"
          "Assignments Current Score,Assignments Final Score,Current Points,Final Points,Current Score,"
          "Unposted Current Score,Final Score,Unposted Final Score,Current Grade,Final Grade")
POINTS = "    Points Possible,,,,,10.00,50.00" + ",(read only)" * 10
POSTING = ",,,,,,Manual Posting" + "," * 10
ROWS = [
    '"Smith, Jane",12345,S001,jsmith,CS 101 Section 1,9.00,,90.00,90.00,9.00,9.00,90.00,90.00,90.00,90.00,A,A',
    '"Núñez, José",23456,S002,JNunez,CS 101 Section 1,7.50,,75.00,75.00,7.50,7.50,75.00,75.00,75.00,75.00,C,C',
    '"O\'Brien, Mary-Kate",34567,S003,mobrien,CS 101 Section 2,10.00,,100.00,100.00,10.00,10.00,100.00,100.00,'
    '100.00,100.00,A,A',
    '"Lee, Sam",45678,S004,slee,CS 101 Section 2,8.00,41,98.00,98.00,49.00,49.00,98.00,98.00,98.00,98.00,A,A',
    '"Student, Test",99999,,,CS 101 Section 1,,,,,,,,,,,,',
]


def template(*, points: bool = True, posting: bool = True, rows: list[str] = ROWS, header: str = HEADER) -> str:
    lines = [header] + ([POINTS] if points else []) + ([POSTING] if posting else []) + rows
    return "\r\n".join(lines) + "\r\n"  # Canvas writes CRLF


def sub(sid: str, student: str | None = None, total: float = 65.0, status: str = "graded",
        findings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    criteria = [{"name": "Checkpoint loads and is evaluated", "points": 20.0 if status == "graded" else 0.0,
                 "max": 20.0, "why": "loaded and evaluated on the course's data"},
                {"name": "Validation perplexity", "points": total - 20.0 if status == "graded" else 0.0,
                 "max": 80.0, "why": "perplexity 120.0 ≤ 130.0"}]
    return {"id": sid, "student": student or sid, "status": status,
            "error": None if status == "graded" else {"code": "checkpoint-unreadable", "message": "model.pt is damaged"},
            "model": {"family": "gpt"}, "metrics": {"protocol": "clm-v1", "loss": 4.7875, "ppl": 120.0, "tokens": 53284}
            if status == "graded" else None, "data": {"source": "wiki-vital", "split": "validation"},
            "findings": findings or [], "score": {"total": total, "max": 100.0, "criteria": criteria, "overrides": []}}


def results(*subs: dict[str, Any]) -> dict[str, Any]:
    return {"submissions": list(subs), "reference": {"gpt": {"ppl": 118.2}}}


CLASS = results(
    sub("smithjane_12345", total=65.0),  # a Canvas bulk download: matched by the Canvas user id
    sub("jnunez", "José Núñez", total=72.5),  # the SIS login, in another case
    sub("mk_project", "Mary Kate OBrien", total=100 / 3),  # by name: "Last, First", accents, punctuation
    sub("ghost", "Nobody Here", total=50.0),
)


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def column(text: str, name: str) -> dict[str, str]:
    rows = parse(text)
    i = rows[0].index(name)
    return {r[0]: r[i] for r in rows[1:]}


# --- Canvas: matching ----------------------------------------------------------------------------


def test_each_key_matches_its_student_and_scores_scale_to_points_possible():
    export = canvas_csv(CLASS, template(), "Transformer LM")
    assert export.column == "Transformer LM (22222)" and export.points_possible == 50.0
    assert {(m.submission_id, m.student, m.by) for m in export.matched} == {
        ("smithjane_12345", "Smith, Jane", "canvas-id"), ("jnunez", "Núñez, José", "sis-id"),
        ("mk_project", "O'Brien, Mary-Kate", "name")}
    values = column(export.text, "Transformer LM (22222)")
    # 65/100 of 50 points; 72.5/100 → 36.25; 33.33/100 → 16.666… rounded to 2 decimals
    assert values["Smith, Jane"] == "32.5" and values["Núñez, José"] == "36.25"
    assert values["O'Brien, Mary-Kate"] == "16.67"
    assert values["    Points Possible"] == "50.00"


def test_rows_without_a_submission_keep_their_grade_and_are_reported():
    export = canvas_csv(CLASS, template(), "22222")
    values = column(export.text, "Transformer LM (22222)")
    assert values["Lee, Sam"] == "41"  # importing never erases a grade
    assert values["Student, Test"] == ""
    assert export.unmatched_submissions == ("ghost",)
    assert export.roster_without_submission == ("Lee, Sam",)  # Canvas's test student is no news
    line = export.summary()
    assert "3 matched" in line and "1 submission unmatched (ghost)" in line
    assert "1 roster row without a submission (Lee, Sam)" in line and "scaled to 50 points" in line


def test_output_keeps_identity_columns_the_one_column_and_the_roster_order():
    text = canvas_csv(CLASS, template(), "Transformer LM (22222)").text
    rows = parse(text)
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Transformer LM (22222)"]
    assert rows[1][0] == "    Points Possible"  # kept as Canvas wrote it; the Manual Posting row is dropped
    assert [r[0] for r in rows[2:]] == ["Smith, Jane", "Núñez, José", "O'Brien, Mary-Kate", "Lee, Sam", "Student, Test"]
    assert rows[2][:5] == ["Smith, Jane", "12345", "S001", "jsmith", "CS 101 Section 1"]
    assert all(len(r) == 6 for r in rows)
    assert text.startswith('Student,ID,') and '"Smith, Jane",12345' in text
    assert canvas_csv(CLASS, template(), "Transformer LM (22222)").text == text  # deterministic


def test_a_utf8_bom_changes_nothing(tmp_path):
    plain = canvas_csv(CLASS, template(), "Transformer LM").text
    assert canvas_csv(CLASS, "\ufeff" + template(), "Transformer LM").text == plain
    path = tmp_path / "gradebook.csv"
    path.write_bytes(b"\xef\xbb\xbf" + template().encode("utf-8"))  # Excel's "CSV UTF-8"
    assert canvas_csv(CLASS, read_canvas_template(path, "Transformer LM"), "Transformer LM").text == plain


def test_without_points_possible_the_rubric_points_are_written():
    export = canvas_csv(CLASS, template(points=False, posting=False), "Transformer LM")
    values = column(export.text, "Transformer LM (22222)")
    assert export.points_possible is None
    assert values["Smith, Jane"] == "65" and values["O'Brien, Mary-Kate"] == "33.33"
    assert parse(export.text)[1][0] == "Smith, Jane"
    assert "rubric points" in export.summary()


def test_errored_submissions_are_exported_with_their_rubric_score():
    export = canvas_csv(results(sub("smithjane_12345", total=0.0, status="error")), template(), "Transformer LM")
    assert column(export.text, "Transformer LM (22222)")["Smith, Jane"] == "0"


def test_ambiguous_names_are_not_matched():
    rows = ['"Smith, Jane",12345,,,S1,,', '"Smith, Jane",12399,,,S2,,', '"Lee, Sam",45678,,,S1,,3']
    header = "Student,ID,SIS User ID,SIS Login ID,Section,Assignment 1: Bigrams (11111),Transformer LM (22222)"
    two_rows = canvas_csv(results(sub("js", "Jane Smith")), template(points=False, rows=rows, header=header),
                          "Transformer LM")
    assert two_rows.matched == () and two_rows.unmatched_submissions == ("js",)
    assert len(two_rows.ambiguous) == 2 and "fill it by hand" in two_rows.ambiguous[0]
    assert "2 ambiguous" in two_rows.summary()
    # two submissions for one name: neither is guessed
    two_subs = canvas_csv(results(sub("a1", "Sam Lee"), sub("a2", "sam  LEE")),
                          template(points=False, rows=rows, header=header), "Transformer LM")
    assert two_subs.matched == () and two_subs.unmatched_submissions == ("a1", "a2")
    assert column(two_subs.text, "Transformer LM (22222)")["Lee, Sam"] == "3"
    # a stronger key settles what the name could not
    by_id = canvas_csv(results(sub("smithjane_12399", "Jane Smith")), template(points=False, rows=rows, header=header),
                       "Transformer LM")
    assert [(m.canvas_id, m.by) for m in by_id.matched] == [("12399", "canvas-id")] and by_id.ambiguous == ()


def test_a_bulk_download_name_without_a_uid_match_still_matches_by_name():
    # "smithjane" is how Canvas spells "Smith, Jane" in its download file names
    export = canvas_csv(results(sub("smithjane_777", total=80.0)), template(), "Transformer LM")
    assert [(m.student, m.by) for m in export.matched] == [("Smith, Jane", "name")]


# --- Canvas: the column --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Transformer LM (22222)", "Transformer LM", "22222", " transformer lm "])
def test_the_column_by_header_name_or_assignment_id(name):
    assert canvas_csv(CLASS, template(), name).column == "Transformer LM (22222)"


def test_two_assignment_columns_need_a_choice():
    with pytest.raises(HarnessError) as e:
        canvas_csv(CLASS, template(), None)
    assert e.value.code == "canvas-column-ambiguous"
    assert "'Assignment 1: Bigrams (11111)', 'Transformer LM (22222)'" in e.value.message
    assert "Current Score" not in e.value.message and "--canvas-column" in e.value.message


def test_one_assignment_column_is_taken_without_asking():
    header = "Student,ID,SIS User ID,SIS Login ID,Section,Notes,Transformer LM (22222),Current Score"
    rows = ['"Smith, Jane",12345,S001,jsmith,S1,late,,90']
    text = template(rows=rows, header=header).replace(POINTS, "    Points Possible,,,,,,50,(read only)")
    export = canvas_csv(CLASS, text, None)  # a custom "Notes" column is no assignment
    assert export.column == "Transformer LM (22222)"
    assert parse(export.text)[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Transformer LM (22222)"]


@pytest.mark.parametrize("name, code", [
    ("Project 3", "canvas-column-unknown"),
    ("99999", "canvas-column-unknown"),
    ("Current Score", "canvas-column-read-only"),
    ("SIS Login ID", "canvas-column-read-only"),
])
def test_a_wrong_column_is_one_clear_error(name, code):
    with pytest.raises(HarnessError) as e:
        canvas_csv(CLASS, template(), name)
    assert e.value.code == code and "Transformer LM (22222)" in e.value.message


def test_two_assignments_of_one_name_need_the_id():
    header = "Student,ID,SIS User ID,SIS Login ID,Section,Quiz (1),Quiz (2)"
    with pytest.raises(HarnessError) as e:
        canvas_csv(CLASS, template(points=False, rows=[], header=header), "Quiz")
    assert e.value.code == "canvas-column-ambiguous" and "assignment id" in e.value.message
    assert canvas_csv(CLASS, template(points=False, rows=[], header=header), "2").column == "Quiz (2)"


def test_not_a_gradebook(tmp_path):
    with pytest.raises(HarnessError) as e:
        canvas_csv(CLASS, "id,student,score\nx,y,1\n", None)
    assert e.value.code == "canvas-template-invalid"
    with pytest.raises(HarnessError) as e:
        canvas_csv(CLASS, template().replace("50.00", "fifty"), "Transformer LM")
    assert e.value.code == "canvas-template-invalid" and "'fifty'" in e.value.message
    with pytest.raises(HarnessError) as e:
        read_canvas_template(tmp_path / "missing.csv")
    assert e.value.code == "canvas-template-missing"


# --- Gradescope ----------------------------------------------------------------------------------


def test_gradescope_results_one_test_per_criterion_and_no_grader_only_findings():
    s = sub("jnunez", "José Núñez", total=72.5, findings=[
        {"code": "val-claim-mismatch", "severity": "warning", "message": "Claimed validation loss 3.1.",
         "grader_only": False},
        {"code": "similar-weights", "severity": "warning", "message": "Weights 0.9999 similar to submission x.",
         "grader_only": True}])
    r = gradescope_results(s, 118.2)
    assert r["score"] == 72.5 and r["visibility"] == "visible" and r["stdout_visibility"] == "hidden"
    assert [(t["name"], t["score"], t["max_score"]) for t in r["tests"]] == [
        ("Checkpoint loads and is evaluated", 20.0, 20.0), ("Validation perplexity", 52.5, 80.0)]
    assert all(t["visibility"] == "visible" and t["output"] for t in r["tests"])
    assert "loss 4.7875, perplexity 120.00 (reference 118.20)" in r["output"]
    assert "val-claim-mismatch" in r["output"]
    assert "similar" not in json.dumps(r)
    json.loads(json.dumps(r, allow_nan=False))


def test_gradescope_results_of_an_errored_submission():
    r = gradescope_results(sub("x", total=0.0, status="error"))
    assert r["score"] == 0.0 and len(r["tests"]) == 2
    assert r["output"].startswith("Not gradable: model.pt is damaged")
    assert r["output"].count("model.pt is damaged") == 1


# --- the command line, on a tiny real submission -------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A one-layer GPT-2 (random weights) as a Hugging Face folder, a broken file, and the default course
    capped to 512 targets with calibration off: a check takes seconds."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=1, n_head=2, n_positions=64))
    good = root / "class" / "smithjane_12345"
    model.save_pretrained(good)
    (good / "submission.toml").write_text('[submission]\nstudent = "Jane Smith"\n\n[claims]\nval_loss = 10.8\n')
    broken = root / "class" / "leesam_45678"
    broken.mkdir()
    (broken / "model.pt").write_bytes(b"not a checkpoint at all")
    capped = capped_course_text(512, calibration_tokens=0)
    assert capped.count("max_tokens = 512") == 1 and "calibration_tokens = 0 " in capped
    (root / "course.toml").write_text(capped)
    return root


def test_check_writes_gradescope_results_even_when_not_gradable(run_cli, tiny):
    target = tiny / "autograder" / "results" / "results.json"
    proc = run_cli("check", tiny / "class" / "leesam_45678", "--course", tiny / "course.toml", "--out",
                   tiny / "check-out", "--no-reports", "--gradescope", target, "--timeout", "120")
    assert proc.returncode == 1, proc.stderr  # not gradable: the exit says so, and the file is there first
    r = json.loads(target.read_text())
    assert r["score"] == 0 and r["stdout_visibility"] == "hidden"
    assert len(r["tests"]) == 6 and sum(t["max_score"] for t in r["tests"]) == 100
    assert r["output"].startswith("Not gradable:")


def test_grade_writes_the_canvas_csv_and_gradescope_results(run_cli, tiny):
    gradebook = tiny / "gradebook.csv"
    gradebook.write_bytes(b"\xef\xbb\xbf" + template().encode("utf-8"))
    out = tiny / "out"
    proc = run_cli("grade", tiny / "class", "--course", tiny / "course.toml", "--out", out, "--no-reports",
                   "--workers", "2", "--timeout", "120", "--canvas-template", gradebook, "--canvas-column", "22222",
                   "--gradescope", check=0)
    assert "2 matched" in proc.stdout and "0 submissions unmatched" in proc.stdout, proc.stdout
    assert "roster rows without a submission (Núñez, José; O'Brien, Mary-Kate)" in proc.stdout, proc.stdout
    values = column((out / "canvas_grades.csv").read_text(encoding="utf-8"), "Transformer LM (22222)")
    graded = {s["id"]: s for s in json.loads((out / "results.json").read_text())["submissions"]}
    jane = graded["smithjane_12345"]
    assert jane["status"] == "graded" and graded["leesam_45678"]["status"] == "error"
    assert values["Smith, Jane"] == f"{round(jane['score']['total'] / 100 * 50, 2):g}"
    assert values["Lee, Sam"] == "0" and values["Núñez, José"] == ""
    for sid in graded:
        r = json.loads((out / "gradescope" / sid / "results.json").read_text())
        assert r["score"] == graded[sid]["score"]["total"]
    assert "Recomputed clm-v1 on wiki-vital validation" in \
        json.loads((out / "gradescope" / "smithjane_12345" / "results.json").read_text())["output"]


def test_grade_refuses_a_bad_template_before_grading(run_cli, tiny):
    gradebook = tiny / "two-columns.csv"
    gradebook.write_text(template())
    out = tiny / "out-refused"
    proc = run_cli("grade", tiny / "class", "--course", tiny / "course.toml", "--out", out,
                   "--canvas-template", gradebook)
    assert_one_line_error(proc, "2 assignment columns", "--canvas-column")
    assert not (out / "results.json").exists()
    assert_one_line_error(run_cli("grade", tiny / "class", "--canvas-column", "x"), "--canvas-template")
