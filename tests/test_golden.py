"""Grading's output, byte for byte: the tiny class of `golden_class.py` graded by the real `harness grade`
gives exactly the golden `tests/data/golden/results.json` and `grades.csv`.

Compared after removing only what is not a function of the inputs (`golden_class.VOLATILE`): the
`generated` day, the sandbox boundary this machine offers and the absolute path of the temporary folder
the class is written in (`<root>`). Everything else (every number, key, order and space, the fingerprint of
the data frozen with the MLM's own vocab.txt among them) must match.

The golden files were made on an x86-64 CPU; a change of torch or of the CPU's kernels can move a float's
last digits, and then the files are regenerated. When what grading writes changes on purpose (a new field,
a new finding), regenerate them with

    PYTHONPATH=$PWD python tests/golden_class.py        # or: HARNESS_REGEN_GOLDEN=1 pytest tests/test_golden.py

and say in the commit message why the golden files changed.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from golden_class import GOLDEN, GOLDEN_FILES, grade_golden_class, without_volatile

pytestmark = pytest.mark.slow


def test_grading_the_golden_class_writes_the_golden_bytes(tmp_path: Path):
    out = grade_golden_class(tmp_path)
    for name in GOLDEN_FILES:
        got = without_volatile(name, (out / name).read_bytes(), tmp_path)
        if os.environ.get("HARNESS_REGEN_GOLDEN"):
            GOLDEN.mkdir(parents=True, exist_ok=True)
            (GOLDEN / name).write_bytes(got)
            continue
        want = (GOLDEN / name).read_bytes()
        if got != want:
            diff = "".join(difflib.unified_diff(want.decode().splitlines(True), got.decode().splitlines(True),
                                                f"golden/{name}", f"graded/{name}", n=2))
            pytest.fail(f"{name} differs from the golden file:\n{diff[:6000]}")
