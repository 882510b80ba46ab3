"""`course.toml`: everything a grade depends on, parsed into typed values and fingerprinted.

Validation names the offending key and the values it allows. The fingerprint hashes the parsed course
in canonical form, so comments and formatting do not change it but every value does.
"""

from __future__ import annotations

import importlib.resources
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.families import FAMILIES
from harness.files import fingerprint

PROTOCOLS = {"clm": ("clm-v1",), "mlm": ("mlm-v1",)}
RUBRIC_KINDS = ("loads", "architecture", "perplexity", "validation", "claims", "causal")
REQUIREMENT_KEYS = ("n_layers", "d_model", "n_heads", "context", "d_ff", "params")
# what the perplexity criterion compares with the reference's: perplexity, bits per byte (comparable across
# tokenizers), or auto: perplexity where the submission's tokenizer is the reference's, bits per byte where not
PERPLEXITY_METRICS = ("auto", "ppl", "bits_per_byte")
SPLIT_NAMES = ("train", "validation", "test")
NO_SPLIT = "none"  # `private = "none"`: no private split (a path without splits has none to offer)
# the sources whose splits are known without loading them: their test split is the private one by default
NAMED_SOURCES = ("wiki-vital", "wikitext-2", "wikitext-103")


@dataclass(frozen=True)
class EvalSettings:
    protocol: str
    tokenizer: str
    context: int
    stride: int = 0  # clm only; 0 means stride = L
    max_tokens: int = 0  # 0 means no cap
    seed: int = 1234  # mlm only
    pseudo_ppl_tokens: int = 0  # mlm only
    calibration_tokens: int = 4096  # train-split targets that settle what weights cannot tell; 0: never


@dataclass(frozen=True)
class Tolerances:
    val_loss_nats: float = 0.25
    params_relative: float = 0.10
    memorisation_ratio: float = 5.0
    similar_weights: float = 0.999
    # trained-on-validation: public − private loss below the reference's by more than this many standard
    # errors of the difference, and by at least this many nats
    validation_gap_sigmas: float = 3.0
    validation_gap_nats: float = 0.05


MASK_MARKER = "[MASK]"  # where a [samples] masked sentence hides a token (any tokenizer's mask token)


@dataclass(frozen=True)
class SampleSettings:
    """What the model writes (harness.metrics.samples): each causal model continues each prompt greedily and
    by seeded sampling; each masked LM fills in each MASK_MARKER of each masked sentence."""
    prompts: tuple[str, ...] = ()
    max_new_tokens: int = 40
    temperature: float = 0.8
    top_k: int = 40  # 0: the whole vocabulary
    seed: int = 1234
    masked: tuple[str, ...] = ()
    top: int = 5  # fill-ins shown per masked position


@dataclass(frozen=True)
class Criterion:
    name: str
    kind: str
    points: float
    full_ratio: float = 1.10  # perplexity: full points up to this multiple of the reference's ppl
    metric: str = "auto"  # perplexity: one of PERPLEXITY_METRICS
    split: str = "public"  # perplexity: the split it scores, public or private (`harness check`: public always)


@dataclass(frozen=True)
class LeaderboardSettings:
    """`[leaderboard]`: what the published page (`harness grade --leaderboard`) and Gradescope's entries show.
    They change no grade, so they are outside the course's fingerprint (and the measurement cache's key)."""

    show_private: bool = False  # the private split's numbers on the page; until then, the public split's only
    split: str = "public"  # the split that ranks: "private" only where show_private (its order would tell)
    secret: str = field(default="", repr=False)  # keys the pseudonyms; "": derived from the submission ids


@dataclass(frozen=True)
class Deadline:
    """`[deadline]`: late submissions lose `penalty_per_day` points per started day after `due` (a time with
    its zone), none within `grace` minutes, at most `cap` points (None: no cap). See harness.intake.deadlines."""

    due: str
    grace: float = 0.0
    penalty_per_day: float = 0.0
    cap: float | None = None

    @property
    def due_time(self) -> datetime:
        return datetime.fromisoformat(self.due)


@dataclass(frozen=True)
class Course:
    name: str
    id: str
    data_source: str
    data_split: str  # the public split: what `harness check` shows students
    clm: EvalSettings
    mlm: EvalSettings
    requirements: dict[str, dict[str, tuple[float, float]]]
    tolerances: Tolerances
    references: dict[str, str]
    rubric: tuple[Criterion, ...]
    data_private: str | None = None  # the private split only `harness grade` scores; None: none
    samples: SampleSettings = SampleSettings()
    deadline: Deadline | None = None  # no [deadline]: lateness is not graded
    base_dir: Path = field(default=Path("."), compare=False)
    origin: str = field(default="<packaged default>", compare=False)
    leaderboard: LeaderboardSettings = field(default=LeaderboardSettings(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("base_dir")
        d.pop("origin")
        d.pop("leaderboard")  # publishing settings: no grade depends on them (and the secret stays out of results)
        d["requirements"] = {f: {k: list(v) for k, v in r.items()} for f, r in self.requirements.items()}
        d["rubric"] = [asdict(c) for c in self.rubric]
        if self.deadline is None:  # courses without one keep the fingerprint they had
            d.pop("deadline")
        if not self.samples.prompts and not self.samples.masked:  # no [samples]: nothing written, as before
            d.pop("samples")
        return d

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.to_dict())

    @property
    def max_points(self) -> float:
        return sum(c.points for c in self.rubric)

    def eval_settings(self, family: str) -> EvalSettings:
        return self.clm if family == "gpt" else self.mlm

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def source_spec(self) -> str:
        """`data_source` as `load_source` takes it: a named source as it is, a path from this course's folder
        (as the course file says relative paths are read), not from wherever the command runs."""
        return self.data_source if self.data_source in NAMED_SOURCES else str(self.resolve(self.data_source))


class _Reader:
    """Reads one TOML table, remembering its dotted name for messages and refusing unknown keys."""

    def __init__(self, where: str, table: Any, allowed: tuple[str, ...]):
        if not isinstance(table, dict):
            raise HarnessError("course-invalid", f"{where.rstrip('.')} must be a table")
        where = f"{where}." if where else ""
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise HarnessError(
                "course-invalid", f"{where}{unknown[0]} is not a course key; {f'[{where[:-1]}]' if where else 'the top level'} allows: "
                f"{', '.join(allowed)}"
            )
        self.where, self.table = where, table

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., choices: tuple = ()) -> Any:
        if key not in self.table:
            if default is ...:
                raise HarnessError("course-invalid", f"{self.where}{key} is missing")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise HarnessError("course-invalid", f"{self.where}{key} must be {names}, not {value!r}")
        if choices and value not in choices:
            raise HarnessError(
                "course-invalid", f"{self.where}{key} = {value!r} is not allowed; use one of: {', '.join(map(str, choices))}"
            )
        return value

    def positive(self, key: str, default: Any = ..., zero_ok: bool = False) -> int:
        value = self.get(key, int, default)
        if value < 0 or value == 0 and not zero_ok:
            raise HarnessError("course-invalid", f"{self.where}{key} must be {'≥ 0' if zero_ok else '> 0'}, not {value}")
        return value


def _eval(where: str, table: dict, family: str) -> EvalSettings:
    r = _Reader(where, table, ("protocol", "tokenizer", "context", "stride", "max_tokens", "seed", "pseudo_ppl_tokens",
                                 "calibration_tokens"))
    settings = EvalSettings(
        protocol=r.get("protocol", str, PROTOCOLS[family][0], choices=PROTOCOLS[family]),
        tokenizer=r.get("tokenizer", str, "gpt2" if family == "clm" else "bert-base-uncased"),
        context=r.positive("context", 64 if family == "clm" else 128),
        stride=r.positive("stride", 0, zero_ok=True),
        max_tokens=r.positive("max_tokens", 0, zero_ok=True),
        seed=r.get("seed", int, 1234),
        pseudo_ppl_tokens=r.positive("pseudo_ppl_tokens", 0, zero_ok=True),
        calibration_tokens=r.positive("calibration_tokens", 4096, zero_ok=True),
    )
    if settings.stride > settings.context:
        raise HarnessError("course-invalid", f"{where}.stride ({settings.stride}) must not exceed context ({settings.context})")
    return settings


def _requirements(table: dict) -> dict[str, dict[str, tuple[float, float]]]:
    r = _Reader("requirements", table, FAMILIES)
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for family in FAMILIES:
        fam = _Reader(f"requirements.{family}", r.get(family, dict, {}), REQUIREMENT_KEYS)
        out[family] = {}
        for key in REQUIREMENT_KEYS:
            if key in fam.table:
                value = fam.get(key, list)
                if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) \
                        or value[0] > value[1]:
                    raise HarnessError(
                        "course-invalid", f"requirements.{family}.{key} must be [min, max] with min <= max, not {value!r}"
                    )
                out[family][key] = (value[0], value[1])
    return out


def _rubric(items: Any) -> tuple[Criterion, ...]:
    if not isinstance(items, list) or not items:
        raise HarnessError("course-invalid", "rubric must be a non-empty list of [[rubric]] tables")
    criteria = []
    for i, item in enumerate(items):
        r = _Reader(f"rubric[{i}]", item, ("name", "kind", "points", "full_ratio", "metric", "split"))
        points = r.get("points", (int, float))
        if points < 0:
            raise HarnessError("course-invalid", f"rubric[{i}].points must be ≥ 0, not {points}")
        ratio = r.get("full_ratio", (int, float), 1.10)
        if ratio < 1:
            raise HarnessError("course-invalid", f"rubric[{i}].full_ratio must be ≥ 1, not {ratio}")
        metric = r.get("metric", str, "auto", choices=PERPLEXITY_METRICS)
        split = r.get("split", str, "public", choices=("public", "private"))
        criteria.append(Criterion(r.get("name", str), r.get("kind", str, choices=RUBRIC_KINDS), float(points), float(ratio),
                                  metric, split))
    names = [c.name for c in criteria]
    if len(set(names)) != len(names):
        raise HarnessError("course-invalid", "rubric criteria must have distinct names")
    return tuple(criteria)


def _splits(data: _Reader, source: str) -> tuple[str, str | None]:
    """The public split (`public`, or the older `split`, which means the same) and the private one: what the
    course names, `none` for none; unnamed, the test split of a named source and none for a path (which
    may have no splits)."""
    if "split" in data.table and "public" in data.table:
        raise HarnessError("course-invalid", "data.split and data.public name the same thing (the public split); "
                           "keep data.public")
    key = "public" if "public" in data.table else "split"
    public = data.get(key, str, "validation", choices=SPLIT_NAMES)
    default = "test" if source in NAMED_SOURCES and public != "test" else NO_SPLIT
    # never train: every model is trained on it, so its loss there says nothing held out
    private = data.get("private", str, default, choices=("validation", "test", NO_SPLIT))
    if private == public:
        raise HarnessError("course-invalid", f"data.private = {private!r} is the public split too; name another split "
                           f"or \"{NO_SPLIT}\"")
    return public, None if private == NO_SPLIT else private


def _samples(table: dict) -> SampleSettings:
    r = _Reader("samples", table, tuple(SampleSettings.__dataclass_fields__))

    def texts(key: str) -> tuple[str, ...]:
        value = r.get(key, list, [])
        if not all(isinstance(t, str) and t.strip() for t in value):
            raise HarnessError("course-invalid", f"samples.{key} must be a list of non-empty strings")
        return tuple(value)

    masked = texts("masked")
    for sentence in masked:
        if MASK_MARKER not in sentence:
            raise HarnessError("course-invalid", f"samples.masked sentence {sentence!r} has no {MASK_MARKER}")
    temperature = float(r.get("temperature", (int, float), 0.8))
    if not 0 < temperature <= 100:
        raise HarnessError("course-invalid", f"samples.temperature must be > 0 (and at most 100), not {temperature}")
    samples = SampleSettings(prompts=texts("prompts"), max_new_tokens=r.positive("max_new_tokens", 40),
                             temperature=temperature, top_k=r.positive("top_k", 40, zero_ok=True),
                             seed=r.get("seed", int, 1234), masked=masked, top=r.positive("top", 5))
    if samples.max_new_tokens > 1024:
        raise HarnessError("course-invalid", f"samples.max_new_tokens must be at most 1024, not {samples.max_new_tokens}")
    return samples


def _deadline(table: dict | None) -> Deadline | None:
    if table is None:
        return None
    r = _Reader("deadline", table, ("due", "grace", "penalty_per_day", "cap"))
    due = r.get("due", (str, datetime))
    at = due if isinstance(due, datetime) else None
    if at is None:
        try:
            at = datetime.fromisoformat(due.strip())
        except ValueError:
            raise HarnessError("course-invalid", f"deadline.due = {due!r} is not a time; write it like "
                               "\"2025-10-24T23:59:00-07:00\"") from None
    if at.tzinfo is None:
        raise HarnessError("course-invalid", f"deadline.due = {str(due)!r} has no time zone; write it like "
                           "\"2025-10-24T23:59:00-07:00\" (or Z for UTC)")
    values = {k: float(r.get(k, (int, float), default)) for k, default in (("grace", 0), ("penalty_per_day", 0))}
    cap = r.get("cap", (int, float), None)
    for k, v in {**values, "cap": cap}.items():
        if v is not None and v < 0:
            raise HarnessError("course-invalid", f"deadline.{k} must be ≥ 0, not {v}")
    return Deadline(due=at.isoformat(), cap=None if cap is None else float(cap), **values)


def parse_course(text: str, *, base_dir: Path = Path("."), origin: str = "<string>") -> Course:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HarnessError("course-invalid", f"{origin} is not valid TOML ({e})") from None
    top = _Reader("", raw, ("course", "data", "eval", "requirements", "tolerances", "reference", "rubric",
                                 "samples", "deadline",
                                 "leaderboard"))
    course = _Reader("course", top.get("course", dict, {}), ("name", "id"))
    data = _Reader("data", top.get("data", dict, {}), ("source", "split", "public", "private"))
    ev = _Reader("eval", top.get("eval", dict, {}), ("clm", "mlm"))
    tol = _Reader("tolerances", top.get("tolerances", dict, {}), tuple(Tolerances.__dataclass_fields__))
    ref = _Reader("reference", top.get("reference", dict, {}), FAMILIES)
    tolerances = Tolerances(**{k: float(tol.get(k, (int, float))) for k in tol.table})
    for k, v in asdict(tolerances).items():
        if v <= 0:
            raise HarnessError("course-invalid", f"tolerances.{k} must be > 0, not {v}")
    source = data.get("source", str, "wiki-vital")
    public, private = _splits(data, source)
    rubric = _rubric(top.get("rubric", list))
    for i, c in enumerate(rubric):
        if c.split == "private" and private is None:
            raise HarnessError("course-invalid", f"rubric[{i}].split = 'private' but the course has no private split; "
                               "name one with [data] private = \"test\", or score the public split")
    return Course(
        name=course.get("name", str, "Untitled course"),
        id=course.get("id", str, "course"),
        data_source=source,
        data_split=public,
        data_private=private,
        clm=_eval("eval.clm", ev.get("clm", dict, {}), "clm"),
        mlm=_eval("eval.mlm", ev.get("mlm", dict, {}), "mlm"),
        requirements=_requirements(top.get("requirements", dict, {})),
        tolerances=tolerances,
        references={f: ref.get(f, str, f"reference_model/{f}") for f in FAMILIES},
        rubric=rubric,
        samples=_samples(top.get("samples", dict, {})),
        deadline=_deadline(top.get("deadline", dict, None)),
        base_dir=base_dir,
        origin=origin,
        leaderboard=_leaderboard(top.get("leaderboard", dict, {})),
    )


def _leaderboard(table: dict) -> LeaderboardSettings:
    r = _Reader("leaderboard", table, ("show_private", "split", "secret"))
    settings = LeaderboardSettings(show_private=r.get("show_private", bool, False),
                                   split=r.get("split", str, "public", choices=("public", "private")),
                                   secret=r.get("secret", str, ""))
    if settings.split == "private" and not settings.show_private:
        raise HarnessError("course-invalid", "leaderboard.split = 'private' ranks by the private split, and the order "
                           "alone tells its numbers; set leaderboard.show_private = true to publish them")
    return settings


def default_course_text() -> str:
    return importlib.resources.files("harness").joinpath("resources/course.toml").read_text(encoding="utf-8")


_FULL_EVAL = "max_tokens = 0               # 0: every target of the split"
_CALIBRATION = "calibration_tokens = 4096    #"


def capped_course_text(max_tokens: int, calibration_tokens: int | None = None) -> str:
    """The packaged course with clm-v1 capped at `max_tokens` targets (and the calibration slice at
    `calibration_tokens`, 0: off): the same course, quicker, for dry runs, benchmarks and tests."""
    text = default_course_text()
    if _FULL_EVAL not in text or _CALIBRATION not in text:
        raise AssertionError("the packaged course.toml no longer has the lines capped_course_text edits")
    text = text.replace(_FULL_EVAL, f"max_tokens = {max_tokens}")
    if calibration_tokens is not None:
        text = text.replace(_CALIBRATION, f"calibration_tokens = {calibration_tokens:<8}#")
    return text


def load_course(path: str | Path | None = None) -> Course:
    """The course at `path`, or the packaged default (whose relative paths start in the current folder)."""
    if path is None:
        return parse_course(default_course_text(), base_dir=Path.cwd(), origin="<packaged default>")
    path = Path(path).expanduser()
    if not path.is_file():
        raise HarnessError("course-missing", f"course file {path} does not exist; `harness course init` writes one")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HarnessError("course-invalid", f"{path} is not UTF-8 text") from None
    return parse_course(text, base_dir=path.resolve().parent, origin=str(path))
