"""Gradebook exports of a graded class: a Canvas gradebook CSV to import, and Gradescope autograder results.

- **Canvas**: the grader exports the course's gradebook from Canvas (the template), names the assignment
  column to fill, and imports the CSV written here. Only the identity columns and that one column are
  written, so an import can change nothing else; a roster row without a graded submission keeps the
  value it had, so an import never erases a grade.
- **Gradescope**: `results.json` in the autograder format, one test per rubric criterion, so a
  Gradescope `run_autograder` can call `harness check ... --gradescope PATH`; a ranked submission also
  carries its `leaderboard` entries (`harness.reporting.leaderboard`).

Both are pure functions of `results.json`'s values (a `ClassResults`, or the file's dict: no clock, no file
system) and give identical text for identical inputs; the writers at the bottom are what the CLI calls.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.course.config import LeaderboardSettings
from harness.errors import HarnessError
from harness.files import pretty_json, write_atomic
from harness.grading.results import (ClassResults, Score, SubmissionResult, as_class_results,
                                     as_submission_result)
from harness.intake.submission import safe_id
from harness.reporting.leaderboard import gradescope_entries, standing_entries, standings

# --- Canvas --------------------------------------------------------------------------------------

# Canvas's fixed columns before the assignments. Integration ID and Root Account appear only in some
# institutions' exports; they are never an assignment, but only the first five are written back.
IDENTITY_COLUMNS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Integration ID", "Root Account", "Section")
KEPT_COLUMNS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
READ_ONLY = "(read only)"
# The computed totals ("Current Score", "Assignments Final Points", "Unposted Final Grade", ...): read-only
# in Canvas; recognised by name too, for a template whose Points Possible row was deleted.
_TOTAL = re.compile(r"(^|\s)(Unposted )?(Current|Final|Override) (Score|Points|Grade)$")
_ASSIGNMENT_ID = re.compile(r"^(?P<name>.*\S)\s*\((?P<id>\d+)\)$")
_UID_SUFFIX = re.compile(r"_(\d+)$")
# Canvas's own test student: kept in the CSV like any row, but not worth a warning on every run.
_TEST_STUDENT = {"student, test", "test student"}


@dataclass(frozen=True)
class CanvasMatch:
    """One roster row filled from one graded submission."""

    submission_id: str
    student: str  # the roster's Student cell
    canvas_id: str
    by: str  # "canvas-id" | "sis-id" | "name": the key that matched
    points: str  # the value written into the column


@dataclass(frozen=True)
class CanvasExport:
    text: str  # the CSV to import
    column: str  # the assignment column filled, as the template spells it
    points_possible: float | None  # from the Points Possible row; None: raw rubric totals were written
    matched: tuple[CanvasMatch, ...]
    unmatched_submissions: tuple[str, ...]  # graded submission ids no roster row claimed
    roster_without_submission: tuple[str, ...]  # Student cells of roster rows left as they were
    ambiguous: tuple[str, ...] = ()  # one sentence per roster row left unmatched because two keys fit

    def summary(self, few: int = 5) -> str:
        """One line for the grader: counts, and the names themselves when there are few."""

        def named(items: tuple[str, ...]) -> str:
            return f" ({'; '.join(items)})" if 0 < len(items) <= few else ""  # "; ": Canvas names hold commas

        def count(n: int, what: str) -> str:
            return f"{n} {what}{'' if n == 1 else 's'}"

        scale = f"scaled to {self.points_possible:g} points" if self.points_possible else "rubric points"
        parts = [f"column {self.column!r} ({scale})", f"{len(self.matched)} matched",
                 f"{count(len(self.unmatched_submissions), 'submission')} unmatched"
                 f"{named(self.unmatched_submissions)}",
                 f"{count(len(self.roster_without_submission), 'roster row')} without a submission"
                 f"{named(self.roster_without_submission)}"]
        if self.ambiguous:
            parts.append(f"{len(self.ambiguous)} ambiguous")
        return ", ".join(parts)


@dataclass(frozen=True)
class _Template:
    header: list[str]
    points_row: list[str] | None
    roster: list[list[str]]  # student rows, in the template's order, padded to the header's width
    column: int  # index of the assignment column to fill
    points_possible: float | None


def _cell(row: list[str], header: list[str], name: str) -> str:
    return row[header.index(name)].strip() if name in header else ""


def _parse_template(text: str, column: str | None, source: str) -> _Template:
    text = text.lstrip("\ufeff")  # Excel's and some browsers' UTF-8 BOM
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if not rows or "Student" not in [h.strip() for h in rows[0]] or "ID" not in [h.strip() for h in rows[0]]:
        raise HarnessError("canvas-template-invalid", f"{source} is not a Canvas gradebook export: its first row "
                           "has no Student and ID columns (export it from Canvas: Grades > Export > CSV)")
    header = [h.strip() for h in rows[0]]
    width = len(header)
    points_row, roster = None, []
    for r in rows[1:]:
        r = (r + [""] * width)[:width]
        first = r[0].strip()
        if first == "Points Possible" and points_row is None:
            points_row = r
        elif not first and not _cell(r, header, "ID"):
            continue  # the "Muted" / "Manual Posting" row: no student, nothing to import
        else:
            roster.append(r)

    def read_only(i: int) -> bool:
        return (points_row is not None and points_row[i].strip() == READ_ONLY) or bool(_TOTAL.search(header[i]))

    writable = [i for i, h in enumerate(header) if h and h not in IDENTITY_COLUMNS and not read_only(i)]
    # Canvas names every assignment "Name (id)"; what else is writable (a custom "Notes" column) is no
    # assignment. A hand-made template without ids: every writable column counts.
    assignments = [i for i in writable if _ASSIGNMENT_ID.match(header[i])] or writable
    listing = ", ".join(repr(header[i]) for i in assignments)
    if column is None:
        if len(assignments) != 1:
            if not assignments:
                raise HarnessError("canvas-column-missing", f"{source} has no assignment column to fill: create the "
                                   "assignment in Canvas, then export the gradebook again")
            raise HarnessError("canvas-column-ambiguous", f"{source} has {len(assignments)} assignment columns "
                               f"({listing}); pick one with --canvas-column")
        index = assignments[0]
    else:
        index = _pick_column(column.strip(), header, writable, read_only, listing, source)
    points = None
    if points_row is not None and points_row[index].strip():
        try:
            points = float(points_row[index].strip())
        except ValueError:
            raise HarnessError("canvas-template-invalid", f"{source}: the Points Possible row says "
                               f"{points_row[index]!r} for {header[index]!r}, which is not a number") from None
    # an assignment worth 0 points (ungraded, extra credit) cannot be scaled to: the rubric points are written
    return _Template(header, points_row, roster, index, points if points and points > 0 else None)


def _pick_column(want: str, header: list[str], assignments: list[int], read_only: Callable[[int], bool],
                 listing: str, source: str) -> int:
    """`want` as the exact header, the header without its " (id)" suffix, or the Canvas assignment id."""
    exact = [i for i in assignments if header[i] == want]
    if not exact:
        for i, h in enumerate(header):
            if h == want and (h in IDENTITY_COLUMNS or read_only(i)):
                raise HarnessError("canvas-column-read-only", f"{source}: column {want!r} cannot be imported "
                                   f"(Canvas computes it or it names the student); pick one of {listing}")
    found = exact or [i for i in assignments if (m := _ASSIGNMENT_ID.match(header[i]))
                      and (m["name"] == want or m["id"] == want)]
    if not found:  # a last chance for a name typed in another case
        found = [i for i in assignments if (m := _ASSIGNMENT_ID.match(header[i])) and m["name"].casefold() == want.casefold()]
    if len(found) > 1:
        raise HarnessError("canvas-column-ambiguous", f"{source}: {want!r} names {len(found)} columns ("
                           + ", ".join(repr(header[i]) for i in found) + "); give the full header or the assignment id")
    if not found:
        raise HarnessError("canvas-column-unknown", f"{source} has no assignment column {want!r}; its assignment "
                           f"columns are: {listing or 'none'}")
    return found[0]


def _compact(text: str) -> str:
    """A name as a key: accents, case, spaces and punctuation gone ("O'Brien-Núñez" → "obriennunez")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isalnum() and not unicodedata.combining(c)).casefold()


def _roster_names(student: str) -> set[str]:
    """Canvas writes "Last, First"; a student writes "First Last"; a Canvas bulk download's file names say
    "lastfirst". All three forms are keys of the row."""
    if "," in student:
        last, first = (p.strip() for p in student.split(",", 1))
        keys = {_compact(first + last), _compact(last + first)}
    else:
        keys = {_compact(student)}
    return keys - {""}


def _submission_name(sub: SubmissionResult) -> str:
    # without submission.toml the student is the id, "smithjane_12345" for a Canvas download: drop the uid
    return _compact(_UID_SUFFIX.sub("", str(sub.student or sub.id)))


def _stage_keys(stage: str, row: list[str], header: list[str]) -> set[str]:
    if stage == "canvas-id":
        return {_cell(row, header, "ID")} - {""}
    if stage == "sis-id":
        return {_cell(row, header, c).casefold() for c in ("SIS Login ID", "SIS User ID")} - {""}
    return _roster_names(_cell(row, header, "Student"))


def _submission_keys(stage: str, sub: SubmissionResult) -> set[str]:
    if stage == "canvas-id":
        m = _UID_SUFFIX.search(sub.id)
        return {m[1]} if m else set()
    if stage == "sis-id":
        return {sub.id.casefold()}
    return {_submission_name(sub)} - {""}


def _match(roster: list[list[str]], header: list[str], subs: list[SubmissionResult]
           ) -> tuple[dict[int, tuple[int, str]], set[int]]:
    """Roster row index → (submission index, key), by Canvas user id, then SIS ids, then name. A pair is
    matched at a stage only when each is the other's sole candidate there: a wrong grade in someone else's
    row is worse than a row left for the grader. Returns the matches and the rows that were ambiguous."""
    matched: dict[int, tuple[int, str]] = {}
    taken: set[int] = set()
    ambiguous: set[int] = set()
    for stage in ("canvas-id", "sis-id", "name"):
        sub_keys = {j: _submission_keys(stage, s) for j, s in enumerate(subs) if j not in taken}
        cands = {i: {j for j, ks in sub_keys.items() if ks & _stage_keys(stage, row, header)}
                 for i, row in enumerate(roster) if i not in matched}
        claimers: dict[int, set[int]] = {}
        for i, js in cands.items():
            for j in js:
                claimers.setdefault(j, set()).add(i)
        for i, js in cands.items():
            if len(js) == 1 and claimers[next(iter(js))] == {i}:
                j = next(iter(js))
                matched[i] = (j, stage)
                taken.add(j)
            elif js:
                ambiguous.add(i)
    return matched, ambiguous - set(matched)


def _points(score: Score, points_possible: float | None) -> str:
    total, top = float(score.total), float(score.max or 0)
    value = total / top * points_possible if points_possible and top > 0 else total
    return f"{round(value, 2) + 0.0:g}"  # + 0.0: never "-0"


def canvas_csv(results: ClassResults | dict[str, Any], template_text: str, column: str | None = None, *,
               source: str = "the Canvas template") -> CanvasExport:
    """Fill one assignment column of a Canvas gradebook export with the class's scores.

    `column`: the exact header, the header without its " (id)" suffix, or the assignment id; None when
    the template has exactly one assignment column. Scores are scaled to the column's points possible."""
    t = _parse_template(template_text, column, source)
    subs = list(as_class_results(results).submissions)
    matched, ambiguous = _match(t.roster, t.header, subs)
    kept = [i for i, h in enumerate(t.header) if h in KEPT_COLUMNS]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([t.header[i] for i in kept] + [t.header[t.column]])
    if t.points_row is not None:
        w.writerow([t.points_row[i] for i in kept] + [t.points_row[t.column]])
    matches, without = [], []
    for i, row in enumerate(t.roster):
        value = row[t.column]
        student = _cell(row, t.header, "Student")
        if i in matched:
            j, by = matched[i]
            value = _points(subs[j].score, t.points_possible)
            matches.append(CanvasMatch(subs[j].id, student, _cell(row, t.header, "ID"), by, value))
        elif student.casefold() not in _TEST_STUDENT:
            without.append(student or f"ID {_cell(row, t.header, 'ID')}")
        w.writerow([row[k] for k in kept] + [value])
    used = {j for j, _ in matched.values()}
    notes = tuple(f"{_cell(t.roster[i], t.header, 'Student') or _cell(t.roster[i], t.header, 'ID')} fits more "
                  "than one submission, or shares one with another row: fill it by hand" for i in sorted(ambiguous))
    return CanvasExport(text=buf.getvalue(), column=t.header[t.column], points_possible=t.points_possible,
                        matched=tuple(matches),
                        unmatched_submissions=tuple(sorted(s.id for j, s in enumerate(subs) if j not in used)),
                        roster_without_submission=tuple(without), ambiguous=notes)


def read_canvas_template(path: Path, column: str | None = None) -> str:
    """The template's text, checked (columns, the one to fill) before any grading starts."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise HarnessError("canvas-template-missing", f"{path} does not exist: export the gradebook from Canvas "
                           "(Grades > Export > CSV) and pass that file") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
        raise HarnessError("canvas-template-invalid", f"{path} cannot be read as a UTF-8 CSV file ({e})") from None
    _parse_template(text, column, str(path))
    return text


def write_canvas_csv(results: ClassResults | dict[str, Any], template_text: str, column: str | None, out: Path, *,
                     source: str = "the Canvas template") -> tuple[Path, CanvasExport]:
    """OUT/canvas_grades.csv from a template read (and checked) by `read_canvas_template`."""
    export = canvas_csv(results, template_text, column, source=source)
    return write_atomic(out / "canvas_grades.csv", export.text), export


# --- Gradescope ----------------------------------------------------------------------------------


def _summary(s: SubmissionResult, reference_ppl: float | None) -> str:
    lines = []
    if s.status != "graded":
        message = (s.error.message if s.error else "") or "the submission could not be evaluated"
        lines.append(f"Not gradable: {message}")
    m = s.metrics
    if m is not None and m.loss is not None:
        source, split = (s.data.source, s.data.split) if s.data else (None, None)
        what = " ".join(str(x) for x in ("Recomputed", m.protocol, source and "on", source, split) if x)
        ref = f" (reference {reference_ppl:,.2f})" if reference_ppl else ""
        lines.append(f"{what}: loss {m.loss:.4f}, perplexity {m.ppl:,.2f}{ref} on {m.tokens or 0:,} tokens.")
    lines.append(f"Score: {s.score.total:g} / {s.score.max:g} points.")
    for o in s.score.overrides:
        if o.get("criterion") in ("total", "*"):
            lines.append(f"Total set to {o['points']:g} by the grader: {o.get('reason', '')}")
    error_code = s.error.code if s.error else None  # already said in the "Not gradable" line
    findings = [f for f in s.findings if not f.grader_only and f.code != error_code]
    if findings:
        lines.append("")
        lines.append("Findings:")
        lines += [f"- {f.code} ({f.severity}): {f.message}" for f in findings]
    return "\n".join(lines)


def gradescope_results(submission_result: SubmissionResult | dict[str, Any], reference_ppl: float | None = None,
                       leaderboard: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One submission of results.json in Gradescope's autograder format: one test per rubric criterion,
    and the `leaderboard` entries where there are any.

    An errored submission is scored by its rubric like any other (it earns what it earns), with the error
    in the output. Grader-only findings (similar weights) never reach the student."""
    s = as_submission_result(submission_result)
    tests = [{"name": c.name, "score": c.points, "max_score": c.max, "output": c.why,
              "visibility": "visible"} for c in s.score.criteria]
    out = {"score": s.score.total, "output": _summary(s, reference_ppl),
           "tests": tests, "visibility": "visible", "stdout_visibility": "hidden"}
    if leaderboard:
        out["leaderboard"] = leaderboard
    return out


def reference_ppl(results: ClassResults, submission_result: SubmissionResult) -> float | None:
    ref = results.reference.of(submission_result.model.family if submission_result.model else None)
    return ref.ppl if ref is not None else None


def write_gradescope(results: ClassResults | dict[str, Any], submission_id: str, path: Path,
                     settings: LeaderboardSettings = LeaderboardSettings(),
                     entries: list[dict[str, Any]] | None = None) -> Path:
    """`entries`: the submission's leaderboard entries where the caller has them (default: ranked here)."""
    results = as_class_results(results)
    s = results.submission(submission_id)
    if s is None:
        raise HarnessError("submission-unknown", f"results hold no submission {submission_id!r}")
    if entries is None:
        entries = gradescope_entries(results, submission_id, settings)
    return write_atomic(path, pretty_json(gradescope_results(s, reference_ppl(results, s), entries)))


def write_gradescope_all(results: ClassResults | dict[str, Any], out: Path,
                         settings: LeaderboardSettings = LeaderboardSettings()) -> list[Path]:
    """OUT/gradescope/<id>/results.json for every submission."""
    results = as_class_results(results)
    # ids of `harness grade` are file-name safe already; this keeps a stray "." or "/" from leaving OUT
    safe = {s.id: safe_id(s.id) for s in results.submissions}
    places = {p.id: p for p in standings(results, settings)}  # the class ranked once, not once a submission
    return [write_gradescope(results, sid, out / "gradescope" / name / "results.json", settings,
                             standing_entries(places.get(sid), settings))
            for sid, name in safe.items()]
