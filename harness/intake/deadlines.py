"""When each submission was handed in, from what the course's platform recorded, and how late that is.

Sources, best first (a file's modification time is never one: a download, an unzip or a copy resets it):

1. Gradescope's autograder file `submission_metadata.json` inside the submission (`created_at`: an ISO time
   with zone; `users`: the submitters); for `harness check` also beside it, where Gradescope puts it
   (`/autograder/submission_metadata.json` next to `/autograder/submission/`).
2. Gradescope's export (`Export Submissions`): `submission_metadata.yml` at the top of the class folder,
   one entry per `submission_<id>` folder, with Ruby-symbol keys `:created_at:` and `:submitters:`.
3. A submissions CSV the grader exports from Canvas (or any LMS) into the class folder,
   `submission_times.csv` (or `submissions.csv`): a column naming the student (`id`, `user_id`, `sis_user_id`,
   `login_id`, `student`) and a time column (`submitted_at` as Canvas's API names it, `submission_time`,
   `created_at`, `time`). A time without a zone is read in the deadline's zone, and said so.
4. Canvas's bulk download: `LATE` in a file name (`smith_jane_LATE_123_456_model.pt`) says late but not
   by how much: charged as one day late, said so, and a CSV with times gives the exact penalty.
5. Else "unknown": no penalty, and the rubric line says why.

Late: after `due` plus `grace` minutes; the days counted are started days after `due` (late by 1 d 3 h
counts 2), each `penalty_per_day` points, at most `cap` points.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from harness.course.config import Deadline

GRADESCOPE_JSON = "submission_metadata.json"
GRADESCOPE_YML = "submission_metadata.yml"
TIMES_CSV = ("submission_times.csv", "submissions.csv")
ID_COLUMNS = ("id", "user_id", "sis_user_id", "login_id", "student", "student_id", "sid", "submission")
TIME_COLUMNS = ("submitted_at", "submission_time", "submitted", "created_at", "time", "timestamp")
_CANVAS_LATE = re.compile(r"^[a-z][a-z0-9_-]*?_late_\d+_\d+_.+$", re.IGNORECASE)
MAX_METADATA_BYTES = 4 << 20


@dataclass(frozen=True)
class SubmittedAt:
    """When a submission was handed in, and how that is known."""

    at: datetime | None  # None: not known
    source: str  # where it was read: "Gradescope submission_metadata.json", "unknown: ..."
    late_mark: bool = False  # the platform says late without saying when (Canvas's LATE)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat() if self.at else None, "source": self.source, "late_mark": self.late_mark}


UNKNOWN = SubmittedAt(None, "unknown: no Gradescope metadata, Canvas LATE mark or submissions CSV names it")


def parse_time(text: Any) -> datetime | None:
    """An ISO time (`2025-10-24T23:59:00-07:00`, `…Z`, Ruby's `2025-10-24 23:59:00.123456000 -0700`), naive
    where it names no zone; None where it is not a time."""
    if isinstance(text, datetime):
        value = text
    else:
        s = str(text or "").strip()
        # Ruby's YAML times: a space before the zone, nanoseconds
        s = re.sub(r"(\.\d{6})\d+", r"\1", s)
        s = re.sub(r"\s+([+-]\d\d:?\d\d|Z|UTC)$", r"\1", s)
        s = re.sub(r"UTC$", "+00:00", s)
        try:
            value = datetime.fromisoformat(s)
        except ValueError:
            return None
    return value


def from_gradescope_json(path: Path) -> SubmittedAt | None:
    """Gradescope's autograder `submission_metadata.json`: its `created_at`."""
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    at = parse_time(data.get("created_at") if isinstance(data, dict) else None)
    return SubmittedAt(at, f"Gradescope {path.name}") if at and at.tzinfo else None


def from_gradescope_yml(path: Path) -> dict[str, SubmittedAt]:
    """Gradescope's export `submission_metadata.yml`: folder name (`submission_123`) -> its `:created_at:`."""
    import yaml

    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            return {}
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    found = {}
    for folder, entry in (data or {}).items() if isinstance(data, dict) else ():
        if not isinstance(entry, dict):
            continue
        at = parse_time(entry.get(":created_at", entry.get("created_at")))
        if at is not None and at.tzinfo is not None:
            found[str(folder)] = SubmittedAt(at, f"Gradescope {path.name}")
    return found


def from_csv(path: Path) -> dict[str, SubmittedAt]:
    """A submissions CSV: student id -> time. A time without a zone stays naive: it is read in the
    deadline's zone when lateness is computed, and its source says so."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return {}
    reader = csv.DictReader(io.StringIO(text))
    headers = {h.strip().lower().replace(" ", "_"): h for h in reader.fieldnames or () if h}
    id_cols = [headers[c] for c in ID_COLUMNS if c in headers]
    time_col = next((headers[c] for c in TIME_COLUMNS if c in headers), None)
    if not id_cols or time_col is None:
        return {}
    found = {}
    for line, row in enumerate(reader, start=2):
        at = parse_time(row.get(time_col))
        if at is None:
            continue
        note = f"{path.name}, line {line}" + (" (no zone given: read in the deadline's)" if at.tzinfo is None else "")
        for col in id_cols:
            key = str(row.get(col) or "").strip()
            if key:
                found.setdefault(key, SubmittedAt(at, note))
    return found


def has_late_mark(paths: Iterable[Path]) -> bool:
    """Canvas's bulk download names a late submission's files `name_LATE_userid_submissionid_file`."""
    return any(_CANVAS_LATE.match(p.name) for p in paths)


def _csv_key(ref_id: str, keys: dict[str, SubmittedAt]) -> SubmittedAt | None:
    """A CSV row for this ref: its id itself, or the Canvas user id that ends a bulk download's id."""
    if ref_id in keys:
        return keys[ref_id]
    m = re.search(r"_(\d+)$", ref_id)
    return keys.get(m.group(1)) if m else None


def submission_times(directory: Path, refs: Iterable[Any]) -> dict[str, SubmittedAt]:
    """Every ref's (`SubmissionRef`: id, paths) submission time, by the sources in the module's order."""
    yml = from_gradescope_yml(directory / GRADESCOPE_YML) if (directory / GRADESCOPE_YML).is_file() else {}
    table: dict[str, SubmittedAt] = {}
    for name in TIMES_CSV:
        if (directory / name).is_file():
            table = from_csv(directory / name)
            break
    out = {}
    for ref in refs:
        out[ref.id] = submitted_at(ref.id, tuple(ref.paths), yml, table)
    return out


def submitted_at(ref_id: str, paths: tuple[Path, ...], yml: dict[str, SubmittedAt] | None = None,
                 table: dict[str, SubmittedAt] | None = None) -> SubmittedAt:
    for p in paths:
        inside = p / GRADESCOPE_JSON if p.is_dir() else None
        if inside is not None and inside.is_file():
            found = from_gradescope_json(inside)
            if found is not None:
                return found
    for p in paths:
        if p.name in (yml or {}):
            return yml[p.name]
    found = _csv_key(ref_id, table or {})
    if found is not None:
        return found
    if has_late_mark(paths):
        return SubmittedAt(None, "Canvas marks it LATE in its file names, without a time", late_mark=True)
    return UNKNOWN


def check_time(submission: Path) -> SubmittedAt:
    """`harness check`'s one submission: Gradescope's metadata inside it, or beside it as an autograder sees
    it (`/autograder/submission_metadata.json` next to `/autograder/submission/`)."""
    for path in (submission / GRADESCOPE_JSON, submission.parent / GRADESCOPE_JSON):
        found = from_gradescope_json(path) if submission.is_dir() and path.is_file() else None
        if found is not None:
            return found
    return UNKNOWN


# --- how late, and what it costs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Lateness:
    points: float  # the penalty, >= 0
    why: str


def duration_text(delta: timedelta) -> str:
    """`1 d 3 h`, `2 h 5 min`, `40 min`: days, hours, minutes (a started minute counts)."""
    minutes = math.ceil(delta.total_seconds() / 60)
    d, rest = divmod(minutes, 24 * 60)
    h, m = divmod(rest, 60)
    parts = [f"{d} d"] if d else []
    parts += [f"{h} h"] if h else []
    parts += [f"{m} min"] if m and not d else []
    return " ".join(parts) or "0 min"


def lateness(deadline: Deadline, submitted: SubmittedAt) -> Lateness:
    """The penalty of a submission handed in at `submitted` and why, in a sentence a student reads."""
    due = deadline.due_time
    per_day = f"{deadline.penalty_per_day:g} point{'s' if deadline.penalty_per_day != 1 else ''} per started day"
    cap = f", at most {deadline.cap:g}" if deadline.cap is not None else ""
    if submitted.at is None and submitted.late_mark:
        points = _capped(deadline, 1)
        return Lateness(points, f"late ({submitted.source}): charged as 1 day late, {per_day}{cap}; "
                                f"a submissions CSV with times gives the exact penalty")
    if submitted.at is None:
        return Lateness(0.0, f"submission time {submitted.source}; no penalty applied")
    at = submitted.at if submitted.at.tzinfo is not None else submitted.at.replace(tzinfo=due.tzinfo)
    when = f"handed in {at.isoformat(timespec='minutes')} ({submitted.source})"
    late = at - due
    if late <= timedelta(0):
        return Lateness(0.0, f"on time: {when}, due {due.isoformat(timespec='minutes')}")
    if late <= timedelta(minutes=deadline.grace):
        return Lateness(0.0, f"within the {deadline.grace:g}-minute grace: late by {duration_text(late)}; {when}")
    days = math.ceil(late / timedelta(days=1))
    points = _capped(deadline, days)
    return Lateness(points, f"late by {duration_text(late)}: {days} started day{'s' if days != 1 else ''} × "
                            f"{per_day.split(' per')[0]}{cap} = −{points:g} points; {when}, "
                            f"due {due.isoformat(timespec='minutes')}")


def _capped(deadline: Deadline, days: int) -> float:
    points = days * deadline.penalty_per_day
    return float(min(points, deadline.cap) if deadline.cap is not None else points)
