"""The leaderboard: ranked by the course's chosen metric, under stable pseudonyms; Gradescope's `leaderboard`
entries; the published page, opened in a headless Chromium and read back, shows no name, id or private number."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from conftest import assert_one_line_error
from harness.course.config import LeaderboardSettings, capped_course_text, default_course_text, parse_course
from harness.errors import HarnessError
from harness.reporting.exports import gradescope_results, write_gradescope
from harness.reporting.leaderboard import (gradescope_entries, leaderboard_context, pseudonyms, render_leaderboard,
                                           standings)

STUDENTS = {"smithjane_12345": "Jane Smith", "nunezjose_23456": "José Núñez", "leesam_45678": "Sam Lee",
            "obrienmk_34567": "Mary-Kate O'Brien", "wuli_56789": "Li Wu", "raman_67890": "Priya Raman"}


def sub(sid: str, ppl: float | None, *, family: str = "gpt", bpb: float | None = None, private: float | None = None,
        findings: tuple[str, ...] = (), status: str = "graded") -> dict[str, Any]:
    metrics = None if ppl is None else {"ppl": ppl, "loss": 1.0, "bits_per_byte": bpb}
    return {"id": sid, "student": STUDENTS.get(sid, sid), "status": status, "model": {"family": family},
            "metrics": metrics, "findings": [{"code": c, "severity": "error", "message": f"{STUDENTS.get(sid)} {c}"}
                                             for c in findings],
            "error": None if status == "graded" else {"code": "checkpoint-unreadable", "message": f"{sid}/model.pt"},
            "score": {"total": 50.0, "max": 100.0, "criteria": []},
            **({"private": {"split": "test", "metrics": {"ppl": private, "bits_per_byte": None}}} if private else {})}


def klass(*subs: dict[str, Any], rank_metric: str = "ppl") -> dict[str, Any]:
    return {"course": {"name": "Transformer LMs", "id": "cs-lm"}, "generated": "2026-12-06", "rank_metric": rank_metric,
            "data": {"split": "validation", "private_split": "test"},
            "reference": {"gpt": {"ppl": 400.0, "private": {"split": "test", "ppl": 410.0}}, "mlm": {"ppl": 30.0}},
            "submissions": list(subs)}


CLASS = klass(sub("smithjane_12345", 512.5, private=530.25), sub("nunezjose_23456", 480.0, private=501.0),
              sub("leesam_45678", 480.0, private=470.0), sub("obrienmk_34567", 12.0, findings=("causal-leak",)),
              sub("wuli_56789", None, status="error"), sub("raman_67890", 25.0, family="mlm"))


def test_ranked_by_the_metric_ties_share_a_rank_and_invalid_ones_are_unranked():
    rows = {s.id: s for s in standings(CLASS)}
    assert [(s.id, s.rank) for s in standings(CLASS) if s.family == "gpt" and s.rank] == [
        ("leesam_45678", 1), ("nunezjose_23456", 1), ("smithjane_12345", 3)]
    assert rows["obrienmk_34567"].rank is None and "looks ahead" in rows["obrienmk_34567"].unranked
    assert rows["wuli_56789"].rank is None and rows["wuli_56789"].unranked == "could not be evaluated"
    assert rows["raman_67890"].family == "mlm" and rows["raman_67890"].rank == 1  # ranked among the MLMs only


def test_bits_per_byte_rank_where_the_course_chose_them_and_masked_lms_keep_perplexity():
    c = klass(sub("a", 100.0, bpb=1.9), sub("b", 50.0, bpb=2.1), sub("m", 20.0, family="mlm"),
              rank_metric="bits_per_byte")
    rows = standings(c)
    assert [(s.id, s.metric, s.rank) for s in rows] == [("a", "bits_per_byte", 1), ("b", "bits_per_byte", 2),
                                                         ("m", "ppl", 1)]
    assert gradescope_entries(c, "a") == [{"name": "Bits per byte", "value": 1.9, "order": "asc"}]


def test_the_private_split_ranks_only_where_the_course_says_so():
    private = LeaderboardSettings(show_private=True, split="private")
    assert [s.id for s in standings(CLASS, private) if s.rank][:2] == ["leesam_45678", "nunezjose_23456"]
    assert [s.rank for s in standings(CLASS, private) if s.id == "smithjane_12345"] == [3]
    with pytest.raises(HarnessError, match="show_private") as e:
        parse_course(default_course_text().replace('split = "public"', 'split = "private"'))
    assert e.value.code == "course-invalid"


def test_pseudonyms_are_stable_keyed_by_the_secret_and_distinct():
    ids = sorted(STUDENTS)
    first = pseudonyms(ids, course_id="cs-lm")
    assert first == pseudonyms(list(reversed(ids)), course_id="cs-lm")  # the order of a class changes nothing
    assert first != pseudonyms(ids, secret="s3cret", course_id="cs-lm")
    assert pseudonyms(ids, secret="s3cret") == pseudonyms(ids, secret="s3cret", course_id="another")
    assert all(len(p.split()) == 3 for p in first.values())
    many = [f"student{i:05d}" for i in range(30_000)]  # enough to share two words and four digits somewhere
    names = pseudonyms(many, course_id="cs-lm")
    assert len(set(names.values())) == len(many)
    assert any(len(p.split()[2]) > 4 for p in names.values())  # the clash was parted by more digits


def test_settings_change_no_fingerprint_and_stay_out_of_the_course_record():
    base = parse_course(default_course_text())
    text = default_course_text().replace('secret = ""', 'secret = "hunter2"').replace(
        "show_private = false", "show_private = true")
    changed = parse_course(text)
    assert changed.leaderboard == LeaderboardSettings(show_private=True, secret="hunter2")
    assert changed.fingerprint == base.fingerprint and "hunter2" not in json.dumps(changed.to_dict())
    assert "hunter2" not in repr(changed)


def test_gradescope_results_carry_the_leaderboard_entries(tmp_path):
    assert gradescope_entries(CLASS, "nunezjose_23456") == [{"name": "Perplexity", "value": 480.0, "order": "asc"}]
    shown = LeaderboardSettings(show_private=True)
    assert gradescope_entries(CLASS, "nunezjose_23456", shown)[1] == {
        "name": "Perplexity, private split", "value": 501.0, "order": "asc"}
    assert gradescope_entries(CLASS, "obrienmk_34567") == [] and gradescope_entries(CLASS, "wuli_56789") == []
    assert "leaderboard" not in gradescope_results(CLASS["submissions"][3])
    path = write_gradescope(CLASS, "smithjane_12345", tmp_path / "results.json")
    assert json.loads(path.read_text())["leaderboard"] == [{"name": "Perplexity", "value": 512.5, "order": "asc"}]


def test_the_page_hides_private_numbers_until_the_course_shows_them():
    hidden = render_leaderboard(CLASS)
    assert "530.2" not in hidden and "501.0" not in hidden and "not published yet" in hidden
    shown = render_leaderboard(CLASS, LeaderboardSettings(show_private=True))
    assert "530.2" in shown and "501.0" in shown and "not published" not in shown and "Perplexity, test" in shown
    assert "400.0" in shown and "410.0" not in shown  # the reference on the ranking split
    by_private = render_leaderboard(CLASS, LeaderboardSettings(show_private=True, split="private"))
    assert "410.0" in by_private and "recomputed on the test split" in by_private
    ctx = leaderboard_context(CLASS, LeaderboardSettings())
    assert [r["rank"] for r in ctx["tables"][0]["rows"]] == [1, 1, 3]


# --- the published page, in a real browser ---------------------------------------------------------


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("style", "script")

    def handle_endtag(self, tag):
        self._skip -= tag in ("style", "script")

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def _browser_text(page: Path, tmp: Path) -> str:
    """The page as Chromium renders it (its DOM after loading, with no network), as text."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp}",
                           "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "<table" in proc.stdout, proc.stderr[-2000:]
    parser = _Text()
    parser.feed(proc.stdout)
    return "\n".join(parser.parts)


def _names_in(text: str) -> list[str]:
    words = {w for name in STUDENTS.values() for w in name.replace("-", " ").replace("'", " ").split() if len(w) > 2}
    return sorted(w for w in words | set(STUDENTS) if w.casefold() in text.casefold())


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="chromium is not installed (scripts/setup.sh --test installs it)")
@pytest.mark.slow
def test_grade_writes_a_page_a_browser_shows_without_names(run_cli, tmp_path):
    """A real class graded through the command line: two tiny GPT-2s and a broken file."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path / "class"
    for i, sid in enumerate(("smithjane_12345", "nunezjose_23456")):
        torch.manual_seed(i)
        GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64)).save_pretrained(root / sid)
        (root / sid / "submission.toml").write_text(f'[submission]\nstudent = "{STUDENTS[sid]}"\n', encoding="utf-8")
    (root / "leesam_45678").mkdir()
    (root / "leesam_45678" / "model.pt").write_bytes(b"not a checkpoint at all")
    (root / "leesam_45678" / "submission.toml").write_text('[submission]\nstudent = "Sam Lee"\n')
    course = tmp_path / "course.toml"
    course.write_text(capped_course_text(256, calibration_tokens=0))
    page = tmp_path / "public" / "leaderboard.html"
    proc = run_cli("grade", root, "--course", course, "--out", tmp_path / "out", "--no-reports", "--timeout", "120",
                   "--leaderboard", page, "--gradescope", check=0)
    assert f"leaderboard {page}: pseudonyms derived from the submission ids" in proc.stdout.replace("\n", " "), \
        proc.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    names = pseudonyms([s["id"] for s in results["submissions"]], course_id="default")

    text = _browser_text(page, tmp_path / "chromium")
    assert not _names_in(text), text
    assert "Leaderboard" in text and "Perplexity, validation" in text
    for s in results["submissions"]:
        assert names[s["id"]] in text
    ranked = [s for s in results["submissions"] if s["status"] == "graded"]
    best = min(ranked, key=lambda s: s["metrics"]["ppl"])
    assert text.index(names[best["id"]]) < min(text.index(names[s["id"]]) for s in results["submissions"]
                                              if s is not best)
    assert "could not be evaluated" in text
    gs = json.loads((tmp_path / "out" / "gradescope" / best["id"] / "results.json").read_text())
    assert gs["leaderboard"] == [{"name": "Perplexity", "value": round(best["metrics"]["ppl"], 4), "order": "asc"}]


def test_a_wrong_leaderboard_key_is_refused_before_grading(run_cli, tmp_path):
    course = tmp_path / "course.toml"
    course.write_text(default_course_text().replace("show_private = false", "show_private = 1"))
    (tmp_path / "class").mkdir()
    proc = run_cli("grade", tmp_path / "class", "--course", course, "--out", tmp_path / "out", "--leaderboard",
                   tmp_path / "lb.html")
    assert_one_line_error(proc, "leaderboard.show_private must be bool")
    assert not (tmp_path / "out" / "results.json").exists()
