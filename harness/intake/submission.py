"""Submissions: find them in a class folder and read each one's `submission.toml`.

A class folder holds one entry per student: `DIR/<id>/`, `DIR/<id>.pt` (or another weights file),
`DIR/<id>.zip`, or the flat files of an LMS bulk download (`lastname_firstname_12345_67890_file.pt`,
grouped by student). `read_submission` lists a submission's files, picks its weights, reads
`submission.toml` ([submission], [model], [claims]) and gathers its claims (`harness.intake.claims`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.checkpoint import WEIGHT_SUFFIXES
from harness.errors import HarnessError
from harness.families import FAMILIES
from harness.intake.claims import CLAIM_KEYS, Claims, claims_from_report, gather_claims

REPORT_SUFFIXES = (".md", ".txt", ".pdf")

# LMS bulk downloads. Canvas: name[_LATE]_userid_submissionid_file; Moodle: Full Name_id_assignsubmission_file_file
_CANVAS = re.compile(r"^(?P<student>[a-z][a-z0-9_-]*?)(?:_late)?_(?P<uid>\d+)_(?P<sid>\d+)_(?P<file>.+)$", re.IGNORECASE)
_MOODLE = re.compile(r"^(?P<student>.+?)_(?P<uid>\d+)_assignsubmission_(?:file|onlinetext)_(?P<file>.*)$")


@dataclass(frozen=True)
class SubmissionRef:
    """One student's entry in a class folder, before anything is read."""

    id: str
    paths: tuple[Path, ...]  # a folder, a single file, a zip, or the grouped files of a bulk download
    # the files whose contents key its cached measurement; None: every file under `paths`
    key_paths: tuple[Path, ...] | None = None


@dataclass(frozen=True)
class Submission:
    id: str
    root: Path
    student: str
    files: tuple[Path, ...]  # every file in the submission, relative to root, in name order
    weights: Path | None  # relative to root
    family: str | None
    tokenizer: str | None
    model: dict[str, Any]  # [model] of submission.toml: what weights cannot tell
    code: str | None  # "file.py:Name": custom model code, run only in the sandbox
    claims: Claims
    report: Path | None
    warnings: tuple[str, ...] = ()


# --- discovery -----------------------------------------------------------------------------------


def safe_id(text: str) -> str:
    """`text` as an id that is also a safe file name: discovery's ids, the exports' folders."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "submission"


def discover(directory: Path) -> list[SubmissionRef]:
    """The submissions in a class folder, in id order. Hidden files and `submission.toml`-less stray
    files that are not weights or zips are ignored."""
    if not directory.is_dir():
        raise HarnessError("submissions-missing", f"{directory} is not a folder of submissions")
    refs: dict[str, list[Path]] = {}
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            refs.setdefault(safe_id(entry.name), []).append(entry)
            continue
        m = _CANVAS.match(entry.name) or _MOODLE.match(entry.name)
        if m:
            refs.setdefault(safe_id(f"{m['student']}_{m['uid']}"), []).append(entry)
        elif entry.suffix.lower() in WEIGHT_SUFFIXES + (".zip",):
            refs.setdefault(safe_id(entry.stem), []).append(entry)
    if not refs:
        raise HarnessError("submissions-empty", f"{directory} holds no submissions (folders, weights files or zips)")
    return [SubmissionRef(i, tuple(p)) for i, p in sorted(refs.items())]


def lms_file_name(path: Path) -> str:
    """A bulk-download file's own name: `smith_jane_123_456_model.pt` → `model.pt`."""
    m = _CANVAS.match(path.name) or _MOODLE.match(path.name)
    return m["file"] if m else path.name


# --- reading one submission ----------------------------------------------------------------------


def _list_files(root: Path) -> tuple[Path, ...]:
    if root.is_file():
        return (Path(root.name),)
    files = [p.relative_to(root) for p in root.rglob("*") if (p.is_file() or p.is_symlink()) and not any(
        part.startswith(".") or part == "__pycache__" for part in p.relative_to(root).parts)]
    return tuple(sorted(files, key=lambda p: p.as_posix()))


def _weights_candidates(root: Path, files: tuple[Path, ...]) -> list[Path]:
    cands = [f for f in files if f.suffix.lower() in WEIGHT_SUFFIXES]
    # a Hugging Face folder counts as one candidate: the folder holding config.json beside its weights
    hf_dirs = sorted({f.parent for f in files if f.name == "config.json"
                      and any(g.parent == f.parent and g.suffix.lower() in WEIGHT_SUFFIXES for g in files)})
    for d in hf_dirs:
        cands = [c for c in cands if c.parent != d] + [d]
    return sorted(cands, key=lambda p: p.as_posix())


def _toml(root: Path) -> dict[str, Any]:
    path = root / "submission.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise HarnessError("submission-invalid", f"submission.toml is not valid TOML ({e})") from None


def names_model_code(path: Path) -> bool:
    """Whether the submission.toml at `path` names model code ([model] code): a guess made before the
    submission is read (any error: False), for what only orders work."""
    try:
        model = _toml(path.parent).get("model")
    except (HarnessError, OSError):
        return False
    return isinstance(model, dict) and bool(model.get("code"))


def _table(data: dict, name: str, allowed: tuple[str, ...] | None) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise HarnessError("submission-invalid", f"submission.toml: [{name}] must be a table")
    if allowed is not None:
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise HarnessError(
                "submission-invalid",
                f"submission.toml: [{name}] has no key {unknown[0]!r}; it allows: {', '.join(allowed)}",
            )
    return table


def read_submission(ref_id: str, root: Path) -> Submission:
    """Read a submission whose files lie under `root` (a folder, or a single weights file)."""
    files = _list_files(root)
    folder = root if root.is_dir() else root.parent
    data = _toml(folder) if root.is_dir() else {}
    unknown = sorted(set(data) - {"submission", "model", "claims"})
    if unknown:
        raise HarnessError("submission-invalid", f"submission.toml: [{unknown[0]}] is not a section; "
                           "use [submission], [model], [claims]")
    sub = _table(data, "submission", ("student", "family", "checkpoint", "tokenizer"))
    model = _table(data, "model", None)
    claims_t = _table(data, "claims", CLAIM_KEYS + ("log",))
    warnings: list[str] = []

    family = sub.get("family")
    if family is not None and family not in FAMILIES:
        raise HarnessError("submission-invalid", f"submission.toml: family = {family!r}; use gpt or mlm")

    if root.is_file():
        weights: Path | None = Path(root.name)
    elif "checkpoint" in sub:
        weights = Path(str(sub["checkpoint"]))
        if weights.is_absolute() or ".." in weights.parts:
            raise HarnessError("submission-invalid", "submission.toml: checkpoint must be a path inside the submission")
        if not (folder / weights).exists():
            raise HarnessError("submission-invalid", f"submission.toml names checkpoint {weights}, which is not there")
    else:
        cands = _weights_candidates(folder, files)
        weights = cands[0] if cands else None
        if len(cands) > 1:
            warnings.append(f"several weights files ({', '.join(c.as_posix() for c in cands)}); graded "
                            f"{weights.as_posix()} — name one with `checkpoint` in submission.toml")

    code = model.get("code")
    if code is not None and (not isinstance(code, str) or ":" not in code):
        raise HarnessError("submission-invalid", "submission.toml: [model] code must look like \"model.py:ClassName\"")

    log_name = claims_t.get("log")
    claims = gather_claims(folder if root.is_dir() else None, files, claims_t, log_name, weights)
    report = next((f for f in files if f.suffix.lower() in REPORT_SUFFIXES and f.name.lower() not in
                   ("requirements.txt",) and not f.name.startswith("vocab")), None)
    if not claims.any and report is not None and root.is_dir():
        claims = claims_from_report(folder / report, base=claims)
    return Submission(
        id=ref_id,
        root=folder,
        student=str(sub.get("student") or ref_id),
        files=files,
        weights=weights,
        family=family,
        tokenizer=sub.get("tokenizer"),
        model={k: v for k, v in model.items()},
        code=code,
        claims=claims,
        report=report,
        warnings=tuple(warnings),
    )
