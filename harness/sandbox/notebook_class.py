"""A model class from a Jupyter notebook, inside the sandboxed child only (`student_class.import_class` hands
`notebook.ipynb:Name` here): the notebook's imports, class/def cells and constants
(`harness.intake.notebook.model_module`) written as a module into the child's scratch folder and imported
from there, so that its training cells never run; and, for a NameError later, which left-out cell the
name was assigned in.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

_NOT_RUN: dict[str, str] = {}  # names that only a notebook's left-out statements assign -> which statement


def not_run_hint(e: BaseException) -> str:
    """For a NameError of a notebook's model: the cell that assigns the name and why it was not run."""
    name = getattr(e, "name", None) if isinstance(e, NameError) else None
    if name not in _NOT_RUN:
        return ""
    return (f" ({name} is assigned only in {_NOT_RUN[name]}, which grading does not run: make it a constant, "
            "or give it in [model.kwargs] of submission.toml)")


def import_notebook(path: Path, target: str, cls_name: str, scratch: Path) -> tuple[type, Any, list[str]]:
    """The class from a notebook's imports, definitions and constants only (`harness.intake.notebook`), written
    as a module into the scratch folder and imported from there: its training cells never run."""
    from harness.intake.notebook import model_module

    built = model_module(path.read_text(encoding="utf-8", errors="replace"), target)
    module_file = scratch / "notebook_modules" / f"{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}.py"
    module_file.parent.mkdir(parents=True, exist_ok=True)
    module_file.write_text(built.text, encoding="utf-8")
    if str(path.parent) not in sys.path:  # its own helper files beside it, as Jupyter's working folder
        sys.path.insert(0, str(path.parent))
    name = module_file.stem if module_file.stem.isidentifier() and module_file.stem not in sys.modules \
        else "student_notebook"
    spec = importlib.util.spec_from_file_location(name, module_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    _NOT_RUN.update(built.unset)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    cells = ", ".join(map(str, built.kept)) or "none"
    notes = [f"built from {target}'s imports, definitions and constants (cells {cells}); its other "
             f"statements were not run ({len(built.left_out)})"]
    if built.left_out:
        shown = "; ".join(built.left_out[:6]) + ("; …" if len(built.left_out) > 6 else "")
        notes.append(f"not run: {shown}")
    missing = [str(m) for m in getattr(module, "__harness_missing__", ())]
    if missing:
        notes.append(f"imports that are not installed here were skipped: {'; '.join(missing)[:300]}")
    cls = getattr(module, cls_name, None)
    if not isinstance(cls, type):
        why = next((w for w in built.left_out if f" {cls_name}" in w or f"class {cls_name}" in w), None)
        raise LookupError(f"{target} defines no {cls_name} in its import and class/def cells"
                          + (f" ({why})" if why else ""))
    return cls, module, notes
