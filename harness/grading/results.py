"""The typed values grading hands from stage to stage, and their JSON.

(Over 500 lines on purpose: every record of results.json in one file, so its whole shape reads in one place.)

    Measurement        what one worker measured about one submission (`measure.py`; the cache entry)
    SubmissionResult   a measurement with its findings, rubric score and similar submissions (`batch.py`)
    ClassResults       the class: course, data, protocols, reference models, submissions (`results.json`)

Each is a dataclass whose fields are JSON values or nested records, with `to_json()` and `from_json()`:
`X.from_json(x.to_json()) == x`, and `from_json(d).to_json() == d` for every `d` harness writes, so
`results.json` written from `ClassResults.to_json()` has the same bytes as the dicts it replaced.
`from_json` is lenient, for older files and hand-written ones (tests, the demo's): a missing key takes its
default, and a key this version does not know is kept aside and written back unchanged.

Two records hold one of two shapes, told apart by a field: `Metrics` (clm-v1 or mlm-v1, by `protocol`) and
`ModelInfo` (a recognised layout or the student's own code, by `layout`). The other shape's fields read as
None and are not written. A field marked `OMIT_NONE` is written only when it has a value.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Union

from harness.grading.findings import Finding
from harness.grading.rubric import CriterionScore, Score
from harness.intake.claims import CLAIM_KEYS, Claims
from harness.intake.logs import CurvePoint

OMIT_NONE = {"omit_none": True}  # field metadata: absent from the JSON where None


def omitted_when_none() -> Any:
    return field(default=None, metadata=OMIT_NONE)


# --- the JSON mapping ----------------------------------------------------------------------------


class Record:
    """A dataclass of JSON values, nested records, `Claims`, `Finding`s and a `Score`, mapped field by field."""

    # shape -> the fields only that shape has (`_shape()` says which one an instance is)
    SHAPES: ClassVar[dict[str, frozenset[str]]] = {}

    def _shape(self) -> str | None:
        return None

    def to_json(self) -> dict[str, Any]:
        shape = self._shape()
        foreign = {n for s, names in self.SHAPES.items() if s != shape for n in names}
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in foreign or value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = _dump(value)
        out.update(getattr(self, "_unknown", {}))
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]):
        hints = _hints(cls)
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        obj = cls(**{k: _load(hints[k], v) for k, v in d.items() if k in names})
        unknown = {k: v for k, v in d.items() if k not in names}
        if unknown:  # a newer harness's keys: written back as they came
            object.__setattr__(obj, "_unknown", unknown)
        return obj


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dump(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, (Claims, Finding, Score)):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


def claims_from_json(d: dict[str, Any] | None) -> Claims:
    if not d:
        return Claims()
    curve = tuple(CurvePoint(**p) for p in d.get("curve", ()))
    return Claims(**{k: d.get(k) for k in CLAIM_KEYS}, sources=d.get("sources", {}), curve=curve,
                  curve_source=d.get("curve_source"))


def _score_from_json(d: dict[str, Any]) -> Score:
    return Score(total=d.get("total", 0.0), max=d.get("max", 0.0),
                 criteria=tuple(CriterionScore(**c) for c in d.get("criteria", ())),
                 overrides=tuple(d.get("overrides", ())))


_FOREIGN = {Claims: claims_from_json, Finding: lambda d: Finding(**d), Score: _score_from_json}


def _load(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        for a in options:  # `str | list[str]`: the option the value's JSON type fits
            if typing.get_origin(a) in (list, tuple) and isinstance(value, list) \
                    or typing.get_origin(a) is dict and isinstance(value, dict) \
                    or isinstance(a, type) and issubclass(a, (Record, *_FOREIGN)) and isinstance(value, dict):
                return _load(a, value)
        return value
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_json(value)
    if tp in _FOREIGN:
        return _FOREIGN[tp](value)
    if origin is list:
        (arg,) = typing.get_args(tp)
        return [_load(arg, v) for v in value]
    if origin is dict:
        _, arg = typing.get_args(tp)
        return {k: _load(arg, v) for k, v in value.items()}
    return value


# --- what a worker measured ------------------------------------------------------------------------


@dataclass
class ErrorInfo(Record):
    """Why a submission could not be measured: a HarnessError's stable code and its sentence."""

    code: str = "checkpoint-unreadable"
    message: str = ""


@dataclass
class CheckpointInfo(Record):
    path: str | None = None  # relative to the submission
    sha256: str | None = None
    format: str | None = None
    layout: str | None = None


@dataclass
class ModelInfo(Record):
    """The model as graded: a recognised layout's architecture with where each value came from, or what
    the student's own code (run in the sandbox) reported."""

    SHAPES: ClassVar[dict[str, frozenset[str]]] = {
        "layout": frozenset({"tied", "norm", "activation", "positions", "causal_mask", "calibration", "calibration_work",
                             "facts"}),
        "custom-code": frozenset({"code", "built", "sandbox"}),
    }

    family: str | None = None
    layout: str | None = None
    params: int | None = None
    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    d_ff: int | None = None
    vocab_size: int | None = None
    context: int | None = None
    sources: dict[str, str] = field(default_factory=dict)  # field -> where its value came from
    unverified: list[str] = field(default_factory=list)
    n_kv_heads: int | None = omitted_when_none()  # grouped-query attention only
    # a recognised layout
    tied: bool | None = None
    norm: str | None = None
    activation: str | None = None
    positions: str | None = None
    causal_mask: bool | None = None
    calibration: dict[str, Any] | None = None
    # what calibration cost: rounds, candidates, targets scored (summed), rounds stopped early; its seconds
    # stay with the cached measurement (Measurement.calibration_cost), so reruns give the same results.json
    calibration_work: dict[str, int] | None = omitted_when_none()
    facts: dict[str, Any] | None = None
    # the student's code
    code: str | None = None  # "model.py:ClassName"
    built: Any = None
    sandbox: str | None = None

    def _shape(self) -> str:
        return "custom-code" if self.layout == "custom-code" else "layout"


@dataclass
class Metrics(Record):
    """The recomputed numbers (`harness.metrics.clm.ClmResult` / `harness.metrics.mlm.MlmResult`, without
    per-target NLLs), and the baselines' perplexities."""

    SHAPES: ClassVar[dict[str, frozenset[str]]] = {
        "clm": frozenset({"stride", "requested_stride", "documents", "windows", "bytes", "words", "bits_per_byte",
                          "word_ppl", "eot_targets", "eot_loss"}),
        "mlm": frozenset({"seed", "stream_tokens", "blocks", "correct", "accuracy", "pseudo_ppl_tokens",
                          "pseudo_tokens", "pseudo_total_nll", "pseudo_loss", "pseudo_ppl"}),
    }

    protocol: str | None = None  # "clm-v1" | "mlm-v1"
    split: str | None = None
    manifest_sha256: str | None = None
    tokenizer: str | None = None
    tokenizer_sha256: str | None = None
    context: int | None = None
    requested_context: int | None = None
    max_tokens: int | None = None
    n_outputs: int | None = None
    vocab_size: int | None = None
    tokens: int | None = None
    total_nll: float | None = None
    loss: float | None = None
    ppl: float | None = None
    uniform_loss: float | None = None
    unigram_loss: float | None = None
    unigram_source: str | None = None
    uniform_ppl: float | None = omitted_when_none()
    unigram_ppl: float | None = omitted_when_none()
    partial: str | None = omitted_when_none()  # why these numbers are not comparable (a truncated vocabulary)
    # clm-v1
    stride: int | None = None
    requested_stride: int | None = None
    documents: int | None = None
    windows: int | None = None
    bytes: int | None = None
    words: int | None = None
    bits_per_byte: float | None = None
    word_ppl: float | None = None
    eot_targets: int | None = None
    eot_loss: float | None = None
    # mlm-v1
    seed: int | None = None
    stream_tokens: int | None = None
    blocks: int | None = None
    correct: int | None = None
    accuracy: float | None = None
    pseudo_ppl_tokens: int | None = None
    pseudo_tokens: int | None = None
    pseudo_total_nll: float | None = None
    pseudo_loss: float | None = None
    pseudo_ppl: float | None = None

    def _shape(self) -> str:
        return "mlm" if (self.protocol or "").startswith("mlm") else "clm"


@dataclass
class CausalCheck(Record):
    """harness.metrics.causality's verdict: do later tokens move earlier positions' logits."""

    ok: bool = True
    trials: int | None = None
    max_change: float | None = None
    tolerance: float | None = None
    message: str | None = None


@dataclass
class TokenizerInfo(Record):
    name: str | None = None
    vocab_size: int | None = None
    eot_id: int | None = None
    sha256: str | None = None
    named_by_student: bool | None = None
    roles: dict[str, Any] | None = None


@dataclass
class DataInfo(Record):
    """The fixed data a submission was scored on."""

    manifest_sha256: str | None = None
    split: str | None = None
    source: str | None = None


@dataclass
class PrivateSplit(Record):
    """The private split's numbers, measured beside the public split's by `harness grade` only
    (`harness.grading.private`); `harness check` has none."""

    split: str | None = None
    manifest_sha256: str | None = None
    metrics: Metrics | None = None


@dataclass
class ContinuationInfo(Record):
    """A prompt continued (`harness.metrics.samples.Continuation`): the new text only, greedy and sampled."""

    prompt: str = ""
    greedy: str = ""
    sampled: str = ""
    greedy_tokens: int = 0
    sampled_tokens: int = 0
    greedy_ended: bool = False  # the model wrote end-of-text
    sampled_ended: bool = False
    prompt_tokens: int = 0
    error: str | None = None


@dataclass
class FillInInfo(Record):
    token: str = ""
    id: int = 0
    probability: float = 0.0


@dataclass
class MaskedSentenceInfo(Record):
    sentence: str = ""
    masks: list[list[FillInInfo]] = field(default_factory=list)  # per [MASK], best first
    error: str | None = None


@dataclass
class SamplesInfo(Record):
    """What the model writes (`harness.metrics.samples`): continuations of the course's prompts (causal
    LMs) or fill-ins of its masked sentences (masked LMs); `error` where the model failed while writing."""

    kind: str | None = None  # "continuations" | "fill-ins"
    settings: dict[str, Any] = field(default_factory=dict)
    continuations: list[ContinuationInfo] = field(default_factory=list)
    fill_ins: list[MaskedSentenceInfo] = field(default_factory=list)
    version: str | None = None
    error: ErrorInfo | None = omitted_when_none()


@dataclass
class Measurement(Record):
    """Everything one worker measured about one submission (`harness.grading.measure`); errors of the
    submission are part of it (`error`), never exceptions. The cache keeps one per submission."""

    id: str = ""
    student: str = ""
    status: str = "error"  # "graded" | "error"
    error: ErrorInfo | None = None
    checkpoint: CheckpointInfo | None = None
    model: ModelInfo | None = None
    metrics: Metrics | None = None
    claims: Claims | None = None
    causal: CausalCheck | None = None
    nonfinite: list[str] = field(default_factory=list)  # tensors with NaN or Inf
    tokenizer: TokenizerInfo | None = None
    warnings: list[str] = field(default_factory=list)
    pad_id: int | None = None
    harness_version: str | None = None
    device: str = "cpu"
    report_file: str | None = None
    seconds: float | None = None
    measured_on: str | None = None  # the day, kept with the cached measurement
    data: DataInfo | None = omitted_when_none()
    code_fallback: str | None = omitted_when_none()  # why the student's code was not used (a layout was)
    vocab_mismatch: str | None = omitted_when_none()
    signature_key: str | None = omitted_when_none()  # submissions sharing it have comparable weights
    cache_key: str | None = omitted_when_none()
    samples: SamplesInfo | None = omitted_when_none()
    # what calibration took (rounds, candidates, targets, stopped_early, seconds): kept with the cached
    # measurement, never in results.json (its seconds differ from run to run)
    calibration_cost: dict[str, Any] | None = omitted_when_none()
    # seconds per stage (read, calibrate, evaluate, causality, private, samples): the cached measurement only,
    # as `seconds`
    stages_s: dict[str, float] | None = omitted_when_none()
    private: PrivateSplit | None = omitted_when_none()
    # per-document losses of both splits, {"public": {split, nll, tokens, titles}, "private": {...}}, for
    # trained-on-validation (harness.metrics.documents); kept in the cache, not in results.json
    documents: dict[str, Any] | None = omitted_when_none()

    @classmethod
    def failed(cls, sid: str, code: str, message: str, *, version: str | None = None) -> Measurement:
        """A submission whose measuring process crashed, hung or ran out of memory."""
        return cls(id=sid, student=sid, error=ErrorInfo(code, message), harness_version=version)


# --- a submission graded, and the class ----------------------------------------------------------


@dataclass
class SimilarTo(Record):
    id: str = ""
    similarity: float = 0.0


@dataclass
class SimilarPair(Record):
    a: str = ""
    b: str = ""
    similarity: float = 0.0


@dataclass
class Submitted(Record):
    """When a submission was handed in, and how that is known (`harness.intake.deadlines.SubmittedAt`)."""

    at: str | None = None  # ISO time; without a zone where the source gave none; None: unknown
    source: str = ""
    late_mark: bool = False  # the platform said late without saying when (Canvas's LATE)


@dataclass
class SubmissionResult(Record):
    """One submission as results.json holds it: what was measured, what was found, the score."""

    id: str = ""
    student: str = ""
    status: str = "error"
    error: ErrorInfo | None = None
    checkpoint: CheckpointInfo | None = None
    model: ModelInfo | None = None
    metrics: Metrics | None = None
    claims: Claims | None = None
    causal: CausalCheck | None = None
    tokenizer: TokenizerInfo | None = None
    findings: list[Finding] = field(default_factory=list)
    score: Score = field(default_factory=lambda: Score(0.0, 0.0, ()))
    similar_to: list[SimilarTo] = field(default_factory=list)
    data: DataInfo | None = None
    warnings: list[str] = field(default_factory=list)
    device: str = "cpu"
    report_file: str | None = None  # the student's report, relative to the submission
    private: PrivateSplit | None = omitted_when_none()  # `harness grade` only
    split_gap: dict[str, Any] | None = omitted_when_none()  # harness.grading.contamination.SplitGap.to_dict()
    samples: SamplesInfo | None = omitted_when_none()  # what the model writes
    submitted: Submitted | None = omitted_when_none()  # only where the course has a [deadline]


@dataclass
class PrivateNumbers(Record):
    """A reference's numbers on the private split."""

    split: str | None = None
    loss: float | None = None
    ppl: float | None = None
    bits_per_byte: float | None = None


@dataclass
class ReferenceResult(Record):
    """A course reference model, measured like a submission, with its training curve."""

    path: str | None = None  # as course.toml names it
    loss: float | None = None
    ppl: float | None = None
    bits_per_byte: float | None = None
    tokenizer: TokenizerInfo | None = None
    params: int | None = None
    model: ModelInfo | None = None
    checkpoint: CheckpointInfo | None = None
    curve: list[dict[str, float | None]] = field(default_factory=list)  # metrics.csv's rows
    accuracy: float | None = omitted_when_none()  # an MLM's top-1 accuracy, where recorded
    private: PrivateNumbers | None = omitted_when_none()  # `harness grade` only


@dataclass
class References(Record):
    gpt: ReferenceResult | None = None
    mlm: ReferenceResult | None = None

    def of(self, family: str | None) -> ReferenceResult | None:
        """The reference of `family` (a submission of unknown family is compared with the GPT)."""
        return self.mlm if family == "mlm" else self.gpt


@dataclass
class CourseInfo(Record):
    name: str | None = None
    id: str | None = None
    fingerprint: str | None = None
    requirements: dict[str, dict[str, list[int]]] | None = None  # family -> key -> [min, max]
    tolerances: dict[str, float] | None = None
    deadline: dict[str, str | float | None] | None = omitted_when_none()  # [deadline], where the course has one


@dataclass
class ClassData(Record):
    source: str | None = None
    split: str | None = None
    tokenizer: str | None = None
    manifest_sha256: str | list[str] | None = None  # a list where submissions were scored on several
    private_split: str | None = omitted_when_none()  # scored by `harness grade` only


@dataclass
class ClmProtocol(Record):
    protocol: str | None = None
    context: int | None = None
    stride: int | None = None
    max_tokens: int | None = None


@dataclass
class MlmProtocol(Record):
    protocol: str | None = None
    context: int | None = None
    seed: int | None = None
    max_tokens: int | None = None
    tokenizer: str | None = None


@dataclass
class Protocols(Record):
    clm: ClmProtocol = field(default_factory=ClmProtocol)
    mlm: MlmProtocol = field(default_factory=MlmProtocol)


@dataclass
class SandboxRecord(Record):
    """Which boundary custom code ran in on the grading machine, and whether running it without was allowed."""

    boundary: str | None = None
    allow_unsandboxed_code: bool = False
    unsandboxed: list[str] = field(default_factory=list)  # ids whose code ran without a sandbox


@dataclass
class ClassResults(Record):
    """A graded class: `results.json`."""

    harness_version: str | None = None
    generated: str | None = None  # the day of the newest measurement, not of the run
    course: CourseInfo = field(default_factory=CourseInfo)
    data: ClassData = field(default_factory=ClassData)
    protocol: Protocols = field(default_factory=Protocols)
    reference: References = field(default_factory=References)
    rank_metric: str = "ppl"  # what orders submissions of equal score: "ppl" | "bits_per_byte"
    similar_pairs: list[SimilarPair] = field(default_factory=list)
    submissions: list[SubmissionResult] = field(default_factory=list)
    custom_code_sandbox: SandboxRecord | None = omitted_when_none()
    device: str | None = omitted_when_none()  # one device for the whole class, where recorded (hand-written results)

    def submission(self, sid: str) -> SubmissionResult | None:
        return next((s for s in self.submissions if s.id == sid), None)


def as_class_results(value: ClassResults | dict[str, Any]) -> ClassResults:
    """Readers' entry: a ClassResults as it is, or a results.json's dict read into one."""
    return value if isinstance(value, ClassResults) else ClassResults.from_json(value)


def as_submission_result(value: SubmissionResult | dict[str, Any]) -> SubmissionResult:
    return value if isinstance(value, SubmissionResult) else SubmissionResult.from_json(value)
