"""The leaderboard: graded submissions ranked by the course's chosen metric, under pseudonyms.

- **Standings** (`standings`): the perplexity criterion's metric (`results.json`'s `rank_metric`: perplexity,
  or bits per byte where the course or the class's tokenizers call for it; masked LMs always by their own
  perplexity, ranked apart), lower is better, on the public split unless `[leaderboard] split = "private"`.
  Competition ranking (1, 1, 3). A model that looks ahead (`causal-leak`), a partial evaluation and a
  submission that could not be evaluated are listed unranked, with a reason that names nothing of theirs.
- **Pseudonyms** (`pseudonyms`): "Amber Otter 3f2a", from HMAC-SHA256 of the submission id keyed by the
  course's `[leaderboard] secret`; without one, keyed by the course id, which anyone who can guess a
  submission id (a Canvas download names the student) can recompute: the CLI says so.
- **The page** (`render_leaderboard`): one self-contained HTML file (inline style, no script, nothing fetched)
  a course can publish: no names, ids, e-mails or messages, and the private split's numbers only where
  `[leaderboard] show_private = true`.
- **Gradescope** (`gradescope_entries`): the `leaderboard` entries of an autograder results.json
  (`{"name", "value", "order": "asc"}`, gradescope-autograders.readthedocs.io/en/latest/leaderboards/);
  Gradescope shows them under the pseudonyms students choose there.

Everything here reads a few attributes of a `ClassResults` (or a results.json's dict) and the course's
`LeaderboardSettings`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from harness.course.config import LeaderboardSettings
from harness.families import FAMILIES
from harness.files import write_atomic
from harness.grading.results import ClassResults, SubmissionResult, as_class_results
from harness.reporting.format import finite
from harness.reporting.views import family as family_of

LABELS = {"ppl": "Perplexity", "bits_per_byte": "Bits per byte"}
SECTION_TITLES = {"gpt": "Causal language models", "mlm": "Masked language models"}  # the page's tables

_ADJECTIVES = ("Agile", "Amber", "Azure", "Bold", "Brave", "Bright", "Brisk", "Calm", "Clever", "Cobalt", "Coral",
               "Crimson", "Dusky", "Eager", "Fleet", "Frosty", "Gentle", "Gilded", "Golden", "Hardy", "Indigo",
               "Ivory", "Jade", "Jolly", "Keen", "Lively", "Lucid", "Lunar", "Mellow", "Misty", "Nimble", "Noble",
               "Ochre", "Plucky", "Polar", "Quick", "Quiet", "Rapid", "Russet", "Sable", "Silver", "Sleek", "Solar",
               "Steady", "Stellar", "Sunny", "Swift", "Tawny", "Teal", "Umber", "Velvet", "Vivid", "Wary", "Witty",
               "Zesty", "Cosmic", "Dapper", "Fabled", "Humble", "Mossy", "Rustic", "Spry", "Tidal", "Verdant")
_ANIMALS = ("Otter", "Heron", "Badger", "Falcon", "Lynx", "Marmot", "Ibex", "Koala", "Lemur", "Newt", "Ocelot",
            "Panda", "Puffin", "Quokka", "Raven", "Salmon", "Tapir", "Urchin", "Vole", "Walrus", "Yak", "Zebra",
            "Beaver", "Bison", "Condor", "Dingo", "Egret", "Ferret", "Gecko", "Hare", "Iguana", "Jackal", "Kestrel",
            "Llama", "Magpie", "Narwhal", "Osprey", "Pelican", "Quail", "Stoat", "Toucan", "Weasel", "Wombat",
            "Alpaca", "Axolotl", "Bobcat", "Caribou", "Dolphin", "Eland", "Finch", "Gazelle", "Hedgehog", "Ibis",
            "Jaguar", "Kiwi", "Lobster", "Mongoose", "Nightjar", "Oriole", "Penguin", "Plover", "Shrike", "Tern",
            "Viper")


@dataclass(frozen=True)
class Standing:
    """One submission's place: `rank` None where it is not ranked (`unranked` says why, in words that name
    nothing of the submission's: the page is public)."""

    id: str
    family: str  # "gpt" | "mlm"
    metric: str  # "ppl" | "bits_per_byte": what ranks this family
    value: float | None  # the metric on the ranking split
    public: float | None
    private: float | None
    rank: int | None
    unranked: str | None = None


def _field(obj: Any, name: str) -> Any:
    """`obj.name`, None where `obj` is None or has no such field."""
    return getattr(obj, name, None)


def _private(obj: Any, metric: str) -> Any:
    """The private split's `metric` of a submission or a reference (`private.metrics.<metric>`, or a
    reference's `private.<metric>`), where `harness grade` scored one (`data.private_split` names it)."""
    private = _field(obj, "private")
    metrics = _field(private, "metrics")
    return _field(private if metrics is None else metrics, metric)


def family_metric(results: ClassResults, family: str) -> str:
    """What ranks a family: the course's chosen metric for causal LMs; an MLM's own (pseudo-)perplexity,
    since bits per byte are defined for causal LMs only."""
    return (results.rank_metric or "ppl") if family == "gpt" else "ppl"


def _why_unranked(sub: SubmissionResult, value: Any, split: str) -> str | None:
    if sub.status != "graded" or sub.metrics is None:
        return "could not be evaluated"
    if any(f.code == "causal-leak" for f in sub.findings):
        return "looks ahead: its number is invalid"
    if sub.metrics.partial:
        return "evaluated only in part"
    if not finite(value):
        return f"no number on the {split} split"
    return None


def standings(results: ClassResults | Mapping[str, Any],
              settings: LeaderboardSettings = LeaderboardSettings()) -> list[Standing]:
    """Every submission's standing: causal LMs, then masked LMs, each best first, the unranked last (by id)."""
    results = as_class_results(results)
    out: list[Standing] = []
    for family in FAMILIES:
        metric = family_metric(results, family)
        rows = []
        for sub in results.submissions:
            if family_of(sub) != family:
                continue
            public = _field(sub.metrics, metric)
            private = _private(sub, metric)
            value = private if settings.split == "private" else public
            why = _why_unranked(sub, value, settings.split)
            rows.append((why is not None, value if why is None else math.inf, sub.id,
                         public if finite(public) else None, private if finite(private) else None, why))
        rows.sort(key=lambda r: r[:3])
        prev, rank = None, 0
        for i, (unranked, value, sid, public, private, why) in enumerate(rows):
            if not unranked and value != prev:
                rank, prev = i + 1, value
            out.append(Standing(sid, family, metric, None if unranked else value, public, private,
                                None if unranked else rank, why))
    return out


# --- pseudonyms ------------------------------------------------------------------------------------


def _digest(submission_id: str, key: bytes) -> bytes:
    return hmac.new(key, submission_id.encode("utf-8"), hashlib.sha256).digest()


def pseudonyms(ids: list[str], *, secret: str = "", course_id: str = "") -> dict[str, str]:
    """A stable pseudonym per submission id: two words and a few hex digits of HMAC-SHA256(id), keyed by
    the course's secret (or, without one, by the course id). Where two ids would share one, both get more
    digits, until they differ."""
    key = secret.encode("utf-8") if secret else f"harness-leaderboard:{course_id}".encode("utf-8")
    digests = {sid: _digest(sid, key) for sid in ids}
    names: dict[str, str] = {}
    for sid, d in digests.items():
        names[sid] = f"{_ADJECTIVES[d[0] % len(_ADJECTIVES)]} {_ANIMALS[d[1] % len(_ANIMALS)]}"
    digits = {sid: 4 for sid in ids}
    while True:
        shown = {sid: f"{names[sid]} {digests[sid][2:].hex()[: digits[sid]]}" for sid in ids}
        seen: dict[str, list[str]] = {}
        for sid, text in shown.items():
            seen.setdefault(text, []).append(sid)
        clashes = [sid for group in seen.values() if len(group) > 1 for sid in group]
        if not clashes:
            return shown
        for sid in clashes:  # distinct ids have distinct digests: more digits part them
            digits[sid] += 2


def pseudonym_source(settings: LeaderboardSettings) -> str:
    return ("keyed by the course's secret" if settings.secret else
            "derived from the submission ids (no [leaderboard] secret: anyone who can guess an id can recompute them)")


# --- Gradescope ------------------------------------------------------------------------------------


def gradescope_entries(results: ClassResults | Mapping[str, Any], submission_id: str,
                       settings: LeaderboardSettings = LeaderboardSettings()) -> list[dict[str, Any]]:
    """Gradescope's `leaderboard` entries for one submission: its public-split number (and the private
    one where the course publishes them), lower first; none for a submission that is not ranked."""
    return standing_entries(next((s for s in standings(results, settings) if s.id == submission_id), None), settings)


def standing_entries(mine: Standing | None, settings: LeaderboardSettings = LeaderboardSettings()
                     ) -> list[dict[str, Any]]:
    """`gradescope_entries` of one submission's standing (None: not in the class), for a caller that ranked
    the class once."""
    if mine is None or mine.rank is None:
        return []
    label = LABELS[mine.metric] + (" (MLM)" if mine.family == "mlm" else "")
    entries = [{"name": label, "value": round(mine.public, 4), "order": "asc"}] if mine.public is not None else []
    if settings.show_private and mine.private is not None:
        entries.append({"name": f"{label}, private split", "value": round(mine.private, 4), "order": "asc"})
    return entries


# --- the page --------------------------------------------------------------------------------------


def _fmt(metric: str, x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" if metric == "bits_per_byte" else f"{x:,.1f}"


def leaderboard_context(results: ClassResults | Mapping[str, Any], settings: LeaderboardSettings) -> dict[str, Any]:
    """What the page shows, and nothing else: pseudonyms and numbers, never a name, an id or a message."""
    results = as_class_results(results)
    public_split = results.data.split or "public"
    private_split = results.data.private_split or "private"
    rows = standings(results, settings)
    names = pseudonyms(sorted({r.id for r in rows}), secret=settings.secret, course_id=results.course.id or "")
    tables = []
    for family in FAMILIES:
        title = SECTION_TITLES[family]
        mine = [r for r in rows if r.family == family]
        if not mine:
            continue
        metric = mine[0].metric
        ref = results.reference.of(family)
        ref_value = _private(ref, metric) if settings.split == "private" else _field(ref, metric)
        ranked = sorted((r for r in mine if r.rank is not None), key=lambda r: (r.rank, names[r.id]))
        tables.append({
            "title": title, "metric": LABELS[metric],
            "reference": _fmt(metric, ref_value) if finite(ref_value) else None,
            "rows": [{"rank": r.rank, "name": names[r.id], "public": _fmt(metric, r.public),
                      "private": _fmt(metric, r.private)} for r in ranked],
            "unranked": sorted(({"name": names[r.id], "why": r.unranked} for r in mine if r.rank is None),
                               key=lambda u: u["name"]),
        })
    return {
        "course": results.course.name or "",
        "generated": results.generated or "",
        "public_split": public_split,
        "private_split": private_split,
        "show_private": settings.show_private,
        "has_private": bool(results.data.private_split) or any(r.private is not None for r in rows),
        "ranked_by": private_split if settings.split == "private" else public_split,
        "tables": tables,
        "pseudonyms": "keyed by a course secret" if settings.secret else "derived from the submission ids",
    }


def render_leaderboard(results: ClassResults | Mapping[str, Any],
                       settings: LeaderboardSettings = LeaderboardSettings()) -> str:
    from harness.reporting.pdf import render_html

    return render_html("leaderboard.html", leaderboard_context(results, settings))


def write_leaderboard(results: ClassResults | Mapping[str, Any], settings: LeaderboardSettings, path: Path) -> Path:
    return write_atomic(Path(path), render_leaderboard(results, settings))
