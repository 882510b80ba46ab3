"""Deadlines: submission times from what Gradescope and Canvas record, the late penalty as a rubric line, and
its waiver in overrides.csv.

The files are written in the platforms' own shapes:
- Gradescope's autograder `submission_metadata.json` (gradescope-autograders.readthedocs.io, "Submission
  Metadata"; gradescope/autograder_samples `advanced.md`): `id`, `created_at` with zone, `assignment`
  {`due_date`, `late_due_date`, …}, `users`, `previous_submissions`.
- Gradescope's "Export Submissions" `submission_metadata.yml`: one `submission_<id>` entry per folder with
  Ruby-symbol keys `:submitters:` (`:name:`, `:sid:`, `:email:`), `:created_at:` (`2025-10-24 23:30:12.345678000
  -07:00`), `:score:`, `:history:` (as parsed by Otter-Grader's GradescopeParser and course scripts).
- Canvas's bulk download names, `lastname_firstname[_LATE]_userid_submissionid_file`, and a submissions
  CSV the grader exports with Canvas's API field names (`user_id`, `submitted_at`).
"""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from harness.course.config import default_course_text, parse_course
from harness.errors import HarnessError
from harness.grading.findings import Evaluation
from harness.grading.rubric import LATE_PENALTY, read_overrides, score
from harness.intake.deadlines import SubmittedAt, duration_text, lateness, submission_times
from harness.intake.submission import discover

PACIFIC = timezone(timedelta(hours=-7))
DUE = "2025-10-24T23:59:00-07:00"


def course(deadline: str = f'due = "{DUE}"\ngrace = 15\npenalty_per_day = 5\ncap = 20\n'):
    return parse_course(default_course_text() + f"\n[deadline]\n{deadline}")


def gradescope_json(folder: Path, created_at: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "submission_metadata.json").write_text(json.dumps({
        "id": 123456,
        "created_at": created_at,
        "assignment": {"due_date": "2025-10-24T23:59:00.000000-07:00", "group_size": None, "group_submission": False,
                       "id": 25828, "course_id": 1234, "late_due_date": "2025-10-31T23:59:00.000000-07:00",
                       "release_date": "2025-10-01T00:00:00.000000-07:00", "title": "Assignment 2",
                       "total_points": "100.0"},
        "submission_method": "upload",
        "users": [{"email": "aman@example.edu", "id": 1234, "name": "Aman Khan"}],
        "previous_submissions": [{"submission_time": "2025-10-24T20:01:02.000000-07:00", "score": 0.0,
                                  "results": {}}],
    }, indent=2))
    (folder / "mini_gpt.pt").write_bytes(b"weights")


def test_gradescope_autograder_metadata_gives_the_time_and_the_penalty_line(tmp_path):
    gradescope_json(tmp_path / "class" / "aman", "2025-10-26T02:59:00.123456-07:00")
    refs = discover(tmp_path / "class")
    got = submission_times(tmp_path / "class", refs)["aman"]
    assert got.at == datetime(2025, 10, 26, 2, 59, 0, 123456, tzinfo=PACIFIC)
    assert got.source == "Gradescope submission_metadata.json"
    late = lateness(course().deadline, got)
    assert late.points == 10  # 1 d 3 h: two started days, 5 points each
    assert late.why.startswith("late by 1 d 3 h: 2 started days × 5 points, at most 20 = −10 points")
    assert "Gradescope submission_metadata.json" in late.why


def test_the_gradescope_autograder_layout_for_harness_check(tmp_path):
    """On Gradescope the metadata lies beside the submission: /autograder/submission_metadata.json."""
    from harness.intake.deadlines import check_time

    gradescope_json(tmp_path / "autograder", "2025-10-24T23:00:00-07:00")
    (tmp_path / "autograder" / "submission").mkdir()
    got = check_time(tmp_path / "autograder" / "submission")
    assert got.at == datetime(2025, 10, 24, 23, 0, tzinfo=PACIFIC) and lateness(course().deadline, got).points == 0


def test_gradescope_export_yml_names_each_submission_folder(tmp_path):
    root = tmp_path / "assignment_25828_export"
    for sid in ("submission_111", "submission_222"):
        (root / sid).mkdir(parents=True)
        (root / sid / "mini_gpt.pt").write_bytes(b"weights")
    (root / "submission_metadata.yml").write_text(textwrap.dedent("""\
        submission_111:
          :submitters:
          - :name: Aman Khan
            :sid: '002050777'
            :email: aman@example.edu
          :created_at: 2025-10-24 23:30:12.345678000 -07:00
          :score: 0.0
          :history: []
        submission_222:
          :submitters:
          - :name: Jo Lee
            :sid: '002050778'
            :email: jo@example.edu
          :created_at: 2025-10-25 00:10:00.000000000 -07:00
          :score: 0.0
          :history:
          - :id: 221
            :created_at: 2025-10-24 22:00:00.000000000 -07:00
            :score: 0.0
        """))
    times = submission_times(root, discover(root))
    assert times["submission_111"].at == datetime(2025, 10, 24, 23, 30, 12, 345678, tzinfo=PACIFIC)
    assert times["submission_111"].source == "Gradescope submission_metadata.yml"
    c = course()
    assert lateness(c.deadline, times["submission_111"]).why.startswith("on time: handed in 2025-10-24T23:30-07:00")
    grace = lateness(c.deadline, times["submission_222"])  # 11 minutes late, inside the 15-minute grace
    assert grace.points == 0 and grace.why.startswith("within the 15-minute grace: late by 11 min")


def test_canvas_late_marks_and_a_submissions_csv_with_times(tmp_path):
    root = tmp_path / "canvas"
    root.mkdir()
    (root / "khan_aman_LATE_4411_98001_mini_gpt.pt").write_bytes(b"w")
    (root / "lee_jo_LATE_4412_98002_mini_gpt.pt").write_bytes(b"w")
    (root / "park_su_4413_98003_mini_gpt.pt").write_bytes(b"w")
    refs = discover(root)
    assert [r.id for r in refs] == ["khan_aman_4411", "lee_jo_4412", "park_su_4413"]
    marks = submission_times(root, refs)
    assert marks["lee_jo_4412"].late_mark and marks["lee_jo_4412"].at is None
    assert marks["park_su_4413"].at is None and not marks["park_su_4413"].late_mark
    c = course()
    charged = lateness(c.deadline, marks["lee_jo_4412"])
    assert charged.points == 5 and "charged as 1 day late" in charged.why and "Canvas marks it LATE" in charged.why
    unknown = lateness(c.deadline, marks["park_su_4413"])
    assert unknown.points == 0 and unknown.why.startswith("submission time unknown")

    # the grader's export of the same submissions, with times: exact penalties, a zone-less time read in the due's zone
    (root / "submission_times.csv").write_text(
        "name,user_id,submitted_at,late\n"
        "Aman Khan,4411,2025-10-29T08:00:00Z,true\n"
        "Jo Lee,4412,2025-10-25 00:30:00,true\n")
    times = submission_times(root, refs)
    assert times["khan_aman_4411"].at == datetime(2025, 10, 29, 8, 0, tzinfo=timezone.utc)
    assert times["khan_aman_4411"].source == "submission_times.csv, line 2"
    late = lateness(c.deadline, times["khan_aman_4411"])  # 4 d 1 h 1 min late: 5 days × 5, capped at 20
    assert late.points == 20 and late.why.startswith("late by 4 d 1 h: 5 started days")
    assert times["lee_jo_4412"].at == datetime(2025, 10, 25, 0, 30)  # read in the due's zone when scored
    assert "no zone given" in times["lee_jo_4412"].source
    assert lateness(c.deadline, times["lee_jo_4412"]).points == 5  # 31 min: past the grace, one started day


def test_file_times_are_never_used(tmp_path):
    """A folder with nothing recorded: unknown, whatever its files' modification times say."""
    root = tmp_path / "class"
    (root / "aman").mkdir(parents=True)
    (root / "aman" / "mini_gpt.pt").write_bytes(b"w")
    import os
    os.utime(root / "aman" / "mini_gpt.pt", (2e9, 2e9))  # 2033: would be very late
    got = submission_times(root, discover(root))["aman"]
    assert got.at is None and got.source.startswith("unknown")


def test_the_penalty_is_a_rubric_line_and_overrides_csv_waives_it(tmp_path):
    c = course()
    ev = Evaluation(id="aman", student="Aman", family="gpt", model={}, metrics=None)
    submitted = SubmittedAt(datetime(2025, 10, 26, 2, 59, tzinfo=PACIFIC), "Gradescope submission_metadata.json")
    sc = score(ev, [], c, submitted=submitted)
    line = sc.criteria[-1]
    assert (line.name, line.points, line.max) == (LATE_PENALTY, -10, 0)
    assert sc.max == c.max_points and sc.total == 0  # nothing earned, and never below zero

    (tmp_path / "overrides.csv").write_text("id,criterion,points,reason\n"
                                            f"aman,{LATE_PENALTY},0,extension granted (illness)\n")
    waived = score(ev, [], c, overrides=read_overrides(tmp_path / "overrides.csv"), submitted=submitted)
    assert waived.criteria[-1].points == 0
    assert "late by 1 d 3 h" in waived.criteria[-1].why and "overridden to 0: extension granted" in waived.criteria[-1].why
    assert waived.to_dict()["overrides"][0]["criterion"] == LATE_PENALTY


def test_without_a_deadline_nothing_changes():
    c = parse_course(default_course_text())
    assert c.deadline is None and "deadline" not in c.to_dict()
    ev = Evaluation(id="x", student="x", family="gpt", model={}, metrics=None)
    assert all(cs.name != LATE_PENALTY for cs in score(ev, [], c).criteria)


@pytest.mark.parametrize("table, fragment", [
    ('due = "2025-10-24 23:59"\n', "has no time zone"),
    ('due = "next friday"\n', "is not a time"),
    (f'due = "{DUE}"\npenalty_per_day = -5\n', "deadline.penalty_per_day must be ≥ 0"),
    (f'due = "{DUE}"\nlate = 3\n', "deadline.late is not a course key"),
])
def test_a_bad_deadline_is_one_sentence(table, fragment):
    with pytest.raises(HarnessError) as e:
        course(table)
    assert e.value.code == "course-invalid" and fragment in e.value.message


def test_a_toml_datetime_is_a_due_time_and_durations_read_as_people_write_them():
    assert course("due = 2025-10-24T23:59:00-07:00\n").deadline.due_time == datetime(2025, 10, 24, 23, 59, tzinfo=PACIFIC)
    assert duration_text(timedelta(days=1, hours=3)) == "1 d 3 h"
    assert duration_text(timedelta(hours=2, minutes=4, seconds=1)) == "2 h 5 min"
    assert duration_text(timedelta(seconds=20)) == "1 min"


@pytest.mark.slow  # a class graded end to end: a worker process per submission and the PDFs
def test_the_penalty_shows_in_results_grades_csv_and_the_pdf(tmp_path):
    """A Canvas bulk download with LATE marks, the grader's submissions CSV with times, graded for real (the
    weights are unreadable, so the rubric's only points are for the reported validation metric)."""
    from pypdf import PdfReader

    from harness.grading.batch import GradeOptions, grade
    from harness.reporting.report import render_student_report

    text = "A tiny course text, enough for a character vocabulary and a split. " * 20
    (tmp_path / "data.txt").write_text(text)
    (tmp_path / "vocab.txt").write_text("".join(sorted(set(text))))
    course_text = default_course_text()
    for old, new in (('source = "wiki-vital"', f'source = "{tmp_path / "data.txt"}"'),
                     ('tokenizer = "gpt2"', f'tokenizer = "char:{tmp_path / "vocab.txt"}"')):
        course_text = course_text.replace(old, new, 1)
    (tmp_path / "course.toml").write_text(course_text + f'\n[deadline]\ndue = "{DUE}"\npenalty_per_day = 2\n')
    root = tmp_path / "canvas"
    root.mkdir()
    for name, uid, late in (("khan_aman", 4411, "_LATE"), ("park_su", 4413, "")):
        (root / f"{name}{late}_{uid}_9{uid}1_mini_gpt.pt").write_bytes(b"not a checkpoint")
        (root / f"{name}{late}_{uid}_9{uid}2_submission.toml").write_text("[claims]\nval_loss = 6.54\n")
    (root / "submission_times.csv").write_text("user_id,submitted_at\n4411,2025-10-26T02:59:00-07:00\n"
                                               "4413,2025-10-24T21:00:00-07:00\n")
    out = tmp_path / "out"
    grade(root, out, tmp_path / "course.toml", GradeOptions(timeout_s=120, reports=False))

    results = json.loads((out / "results.json").read_text())
    assert results["course"]["deadline"] == {"due": DUE, "grace": 0.0, "penalty_per_day": 2.0, "cap": None}
    subs = {s["id"]: s for s in results["submissions"]}
    aman, su = subs["khan_aman_4411"], subs["park_su_4413"]
    assert aman["submitted"] == {"at": "2025-10-26T02:59:00-07:00", "source": "submission_times.csv, line 2",
                                 "late_mark": False}
    line = aman["score"]["criteria"][-1]
    assert (line["name"], line["points"], line["max"]) == (LATE_PENALTY, -4, 0)
    assert line["why"].startswith("late by 1 d 3 h: 2 started days × 2 points = −4 points")
    assert aman["score"]["total"] == 6 and su["score"]["total"] == 10
    assert su["score"]["criteria"][-1]["why"].startswith("on time")

    csv_lines = (out / "grades.csv").read_text().splitlines()
    assert csv_lines[0].endswith(",findings,late_penalty,submitted_at")
    assert next(l for l in csv_lines if l.startswith("khan_aman_4411,")).endswith(",-4,2025-10-26T02:59:00-07:00")

    # a changed deadline re-scores the class from the cache: nothing is measured again
    (tmp_path / "course.toml").write_text(course_text + f'\n[deadline]\ndue = "{DUE}"\npenalty_per_day = 3\n')
    rescored = grade(root, out, tmp_path / "course.toml", GradeOptions(timeout_s=120, reports=False))
    assert rescored.measured == [] and sorted(rescored.cached) == ["khan_aman_4411", "park_su_4413"]
    assert rescored.results.submission("khan_aman_4411").score.total == 4  # 10 − 2 days × 3

    render_student_report(results, "khan_aman_4411", out / "khan_aman_4411.pdf")  # as grade's reports do
    pdf = " ".join(" ".join((p.extract_text() or "").split()) for p in PdfReader(str(out / "khan_aman_4411.pdf")).pages)
    assert "Late penalty" in pdf and "late by 1 d 3 h" in pdf
