"""The exports a grading run writes on request beside results.json: Canvas's gradebook CSV, Gradescope's results.

`check_exports` runs before any grading (a wrong template or column fails now, not after the whole class is
graded); `write_exports` runs after, and returns the lines that say what it wrote, for the CLI to print.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError
from harness.grading.results import ClassResults

if TYPE_CHECKING:
    from harness.course.config import LeaderboardSettings


@dataclass(frozen=True)
class Exports:
    canvas_template: Path | None = None  # a Canvas gradebook export: OUT/canvas_grades.csv is written from it
    canvas_column: str | None = None  # the assignment column to fill: header, name or assignment id
    gradescope: bool = False  # OUT/gradescope/<id>/results.json for every submission
    gradescope_file: Path | None = None  # `harness check`: the one submission's Gradescope results.json
    leaderboard: Path | None = None  # a leaderboard page to publish (pseudonyms; the course's [leaderboard])


def check_exports(exports: Exports) -> str | None:
    """The Canvas template's text, checked (None without one)."""
    from harness.reporting.exports import read_canvas_template

    if exports.canvas_column is not None and exports.canvas_template is None:
        raise HarnessError("canvas-template-missing", "--canvas-column needs --canvas-template FILE (the gradebook "
                           "exported from Canvas)")
    if exports.canvas_template is None:
        return None
    return read_canvas_template(exports.canvas_template, exports.canvas_column)


def write_exports(results: ClassResults, out: Path, exports: Exports, template_text: str | None,
                  board: LeaderboardSettings | None = None) -> list[str]:
    """The exports asked for; the lines that name them. `board`: the course's [leaderboard] settings (the
    Gradescope leaderboard entries and the page follow them)."""
    from harness.course.config import LeaderboardSettings
    from harness.reporting import exports as formats

    board = board or LeaderboardSettings()
    lines = []
    if template_text is not None:
        path, export = formats.write_canvas_csv(results, template_text, exports.canvas_column, out,
                                                source=str(exports.canvas_template))
        lines.append(f"canvas   {path}: {export.summary()}")
        lines += [f"         ambiguous: {note}" for note in export.ambiguous]
    if exports.gradescope:
        formats.write_gradescope_all(results, out, board)
        lines.append(f"gradescope {out}/gradescope/<id>/results.json")
    if exports.gradescope_file is not None:
        formats.write_gradescope(results, results.submissions[0].id, exports.gradescope_file, board)
        lines.append(f"gradescope: {exports.gradescope_file}")
    if exports.leaderboard is not None:
        from harness.reporting.leaderboard import pseudonym_source, write_leaderboard

        write_leaderboard(results, board, exports.leaderboard)
        lines.append(f"leaderboard {exports.leaderboard}: pseudonyms {pseudonym_source(board)}")
    return lines
