"""What a measurement depends on, and nothing else: the key of the measurement cache.

A measurement (`harness.grading.measure`) changes with the submission's files, the data (the source's
fingerprint, its split rule, which splits are scored), the tokenizers, the protocols and their parameters,
calibration, the `[samples]` the model writes from, whether custom code ran outside the sandbox, and the code that measures. It does not change with
the rubric, the tolerances, the requirements, the course's name, deadlines or overrides: those are applied
to the cached measurements on every run (`harness.grading.batch.assemble`), so a changed weight re-scores a
class without evaluating one model.

The code's part is a fingerprint of the harness's source files less those that only report or score
(`NOT_MEASURING`): a changed layout or protocol measures again, a changed PDF template or rubric rule does not.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness import __version__
from harness.course.config import Course
from harness.files import fingerprint, named_files, sha256_file

# /5: keyed by what measures (this module), not by the whole course; the private split measured beside the public
CACHE_FORMAT = "harness-measure/5"

# paths under harness/ whose code never changes a measurement: reporting, scoring, the exports, the CLI, the demo,
# training.
# (findings.py lends measure.py one message, vocab-mismatch's wording; a reworded message keeps old entries.)
NOT_MEASURING = ("reporting/", "demo/", "train/", "cli.py", "progress.py", "__main__.py", "resources/",
                 "grading/batch.py", "grading/rubric.py", "grading/findings.py", "grading/contamination.py",
                 "grading/cache_key.py", "grading/outputs.py", "intake/deadlines.py")


@functools.lru_cache(maxsize=1)
def measuring_code() -> str:
    """sha256 over the harness's measuring source files (names and contents)."""
    root = Path(__file__).resolve().parents[1]
    files = {}
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if "__pycache__" in rel or any(rel == x or rel.startswith(x) for x in NOT_MEASURING if x.endswith("/")) \
                or rel in NOT_MEASURING:
            continue
        files[rel] = sha256_file(p)
    return fingerprint(files)


def measuring_course(course: Course, *, source_sha256: str | None, split_rule: str | None,
                     private: bool) -> dict[str, Any]:
    """The part of the course a measurement depends on. `private`: whether the private split is measured
    too (`harness grade`; never `harness check`)."""
    basis: dict[str, Any] = {"source": course.data_source, "source_sha256": source_sha256, "split_rule": split_rule,
                             "public": course.data_split, "private": course.data_private if private else None,
                             "clm": asdict(course.clm), "mlm": asdict(course.mlm),
                             "samples": asdict(course.samples)}  # what the model writes is measured too
    for family, settings in (("clm", course.clm), ("mlm", course.mlm)):
        path = course.resolve(settings.tokenizer)
        if path.exists():  # a tokenizer file or folder beside the course: its contents, not its name
            basis[f"{family}_tokenizer_files"] = fingerprint({name: sha256_file(p) for name, p in named_files(path)})
    return basis


def measurement_basis(course: Course, *, source_sha256: str | None = None, split_rule: str | None = None,
                      private: bool = True) -> dict[str, Any]:
    """Everything but the submission's files that keys its measurement."""
    return {"format": CACHE_FORMAT, "course": measuring_course(course, source_sha256=source_sha256,
                                                               split_rule=split_rule, private=private),
            "code": measuring_code(), "harness": __version__}


def measurement_key(files: str, basis: dict[str, Any], unsandboxed: bool = False) -> str:
    """The cache key of one submission: its files' fingerprint under `basis`."""
    key = {**basis, "files": files}
    if unsandboxed:  # what was measured without the sandbox is never mistaken for what was measured in it
        key["unsandboxed"] = True
    return fingerprint(key)[:24]
