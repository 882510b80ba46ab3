"""One submission, from its files to what was measured: the work each grading worker does.

submission (files, claims) → checkpoint (safe read) → model (layout, inferred values; or sandboxed code)
→ metrics (the course's protocol on its fixed data) and the causality check. The result is a
`Measurement` (harness.grading.results): findings and the score are derived from it by the grader (so a
changed rubric or an override never needs a re-evaluation).

`python -m harness.grading.measure JOB.json OUT.json` runs one job in its own process: the batch starts one per
submission, with limits, so that a crash or a hang takes only that submission down.

(Just over 500 lines: the one measuring path that grade, check, eval and the references share, kept whole
so that what a measurement does can be read from top to bottom.)
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import __version__
from harness.course.config import Course, load_course
from harness.errors import HarnessError
from harness.files import named_files, sha256_files, write_json
from harness.grading.results import (CausalCheck, CheckpointInfo, DataInfo, ErrorInfo, Measurement,
                                     ModelInfo, SamplesInfo, TokenizerInfo)

if TYPE_CHECKING:
    from harness.course.data import FrozenData, TokenizedSplit
    from harness.models.build import LoadedModel
    from harness.course.tokenizers import Tokenizer

SIGNATURE_VALUES = 1 << 15  # weights sampled per submission for the similarity check
TIMEOUT_S = 900.0  # grading's time per submission (`--timeout`); custom code's sandbox limits follow from it


@dataclass
class Job:
    id: str
    paths: list[str]  # a folder, a file, a zip, or the files of an LMS bulk download
    course_path: str | None
    signature_path: str | None = None  # where to save the weights signature (.npy), if wanted
    device: str = "cpu"
    threads: int = 0
    memory_mb: int = 0  # address-space limit of the worker itself; 0: none
    timeout_s: float = 0  # the worker ends itself after this long, even if its parent died; 0: never
    allow_unsandboxed_code: bool = False  # run custom code even where no sandbox boundary can be made
    tokenizer: str | None = None  # overrules the submission's and the course's (`harness eval --tokenizer`)
    private: bool = False  # also score the course's private split (`harness grade`; `harness check` never)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(**d)


def submission_fingerprint(paths: list[Path]) -> str:
    """sha256 over every file of a submission (relative names and contents): the cache key's part."""
    return sha256_files(pair for base in sorted(paths) for pair in named_files(base))


def _materialise(job: Job, tmp: Path) -> Path:
    """The submission as a folder or a single file we may read: zips extracted, bulk files gathered."""
    from harness.checkpoint.archive import extract_zip
    from harness.intake.submission import lms_file_name

    paths = [Path(p) for p in job.paths]
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0]
    if len(paths) == 1 and paths[0].suffix.lower() == ".zip":
        return extract_zip(paths[0], tmp / "unzipped")
    if len(paths) == 1:
        return paths[0]
    folder = tmp / "gathered"
    folder.mkdir()
    for p in paths:  # an LMS bulk download: one student's files under their own names
        if p.suffix.lower() == ".zip":
            inner = extract_zip(p, tmp / f"unzipped-{p.stem}")
            shutil.copytree(inner, folder, dirs_exist_ok=True)
        else:
            shutil.copy2(p, folder / lms_file_name(p))
    return folder


def _signature(state: dict[str, Any]) -> tuple[str, np.ndarray]:
    """A fixed sample of the weights (same positions for every submission of the same shapes), and a key
    that only submissions of identical tensor names and shapes share."""
    names = sorted(state)
    shapes = [(n, tuple(state[n].shape)) for n in names]
    total = sum(int(state[n].numel()) for n in names) or 1
    parts = []
    for n in names:
        flat = state[n].detach().float().reshape(-1).cpu().numpy()
        k = max(1, round(SIGNATURE_VALUES * flat.size / total))
        rng = np.random.Generator(np.random.PCG64(flat.size))
        idx = np.sort(rng.choice(flat.size, size=min(k, flat.size), replace=False))
        parts.append(flat[idx])
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16], np.concatenate(parts).astype(np.float32)


def _calibrator(course: Course, family: str, tokenizer, train_split):
    """Scores candidate models by the course's protocol on the start of the *train* split (never on the
    graded split), all of them on the same batches, round by round: `harness.models.build` stops them
    as soon as one clearly wins, or decides on every target; None where the course turns calibration off."""
    from harness.metrics.candidates import score_candidates
    from harness.metrics.protocol import TruncatedVocabulary
    from harness.models.calibration import CALIBRATION_FIRST_LOOK
    from harness.metrics.score import EvalData

    settings = course.eval_settings(family)
    if settings.calibration_tokens <= 0:
        return None
    # the start of the train split, every window apart (stride L), no pseudo-perplexity
    settings = replace(settings, max_tokens=settings.calibration_tokens, stride=0, pseudo_ppl_tokens=0)
    data = EvalData(train_split, tokenizer)

    def calibrate(candidates):
        models = [TruncatedVocabulary(model, config.vocab_size, tokenizer.vocab_size)
                  if config.vocab_size < tokenizer.vocab_size else model  # seed 002's 49,805: scorable all the same
                  for model, config in zip(candidates, candidates.configs)]
        # rounds of at most the first look's targets, so a clear winner stops there
        return score_candidates(models, family, data, settings, batch_tokens=CALIBRATION_FIRST_LOOK)

    return calibrate


def _tokenizer_for(family: str, sub, course: Course, root: Path, warnings: list[str] | None = None):
    """The tokenizer a submission is scored with, and whether the student named it: the one they named
    (a path inside the submission, or a name), else the course's; where the course's cannot be had
    (`bert-base-uncased` offline), a tokenizer the submission ships (tokenizer.json, vocab.txt), noted.
    `sub` None: a bare checkpoint (`harness eval`), scored like a submission that names nothing."""
    from harness.course.tokenizers import get_tokenizer

    folder = root if root.is_dir() else None
    if sub is not None and sub.tokenizer:
        # `char:FILE` names a file of the submission just as a bare path does (the lecture's input.txt)
        prefix, name = ("char:", sub.tokenizer[5:]) if sub.tokenizer.startswith("char:") else ("", sub.tokenizer)
        inside = folder / name if folder is not None else None
        named = Path(name)
        if named.is_absolute() or ".." in named.parts or inside is not None and inside.exists() \
                and not inside.resolve().is_relative_to(folder.resolve()):
            raise HarnessError("submission-invalid", f"submission.toml names tokenizer {sub.tokenizer!r}, outside "
                               "the submission; name a file or folder inside it, or a tokenizer's name")
        if inside is not None and inside.exists():
            return get_tokenizer(prefix + str(inside)), True
        return get_tokenizer(sub.tokenizer), True
    spec = course.eval_settings(family).tokenizer
    try:
        return get_tokenizer(str(course.resolve(spec)) if course.resolve(spec).exists() else spec), False
    except HarnessError as e:
        if e.code != "tokenizer-unavailable" or folder is None:
            raise
        shipped = [p for name in ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt")
                   for p in sorted(folder.rglob(name))]
        if not shipped:
            raise
        if warnings is not None:
            warnings.append(f"the course's tokenizer {spec!r} cannot be had here; scored with the submission's own "
                            f"{shipped[0].relative_to(folder).as_posix()}")
        return get_tokenizer(str(shipped[0])), False


def _frozen(source, tokenizer):
    """The source frozen with `tokenizer`, and its train split where it has one (calibration's text and the
    unigram baseline's counts), else None."""
    from harness.course.data import freeze

    frozen = freeze(source, tokenizer)
    return frozen, frozen.split("train") if source.has_splits and "train" in frozen.split_names else None


@dataclass
class Scored:
    """A model as grading scores it, with its tokenizer and the data frozen with that tokenizer."""
    loaded: LoadedModel
    tokenizer: Tokenizer
    named: bool  # the student named the tokenizer
    frozen: FrozenData
    train: TokenizedSplit | None


def _build_scored(raw, sub, course: Course, root: Path, source, warnings: list[str],
                  tokenizer_spec: str | None = None) -> Scored:
    """The model as grading scores it, and its tokenizer (and whether the student named it): the family
    from submission.toml or a first look at the weights, that family's tokenizer (`tokenizer_spec`
    overrules), and what the weights cannot tell calibrated on the train split. Where the weights overrule
    a wrong family in submission.toml, the tokenizer (and the frozen data) follow. `harness eval` and
    grading share it, so the same submission gives the same number."""
    from harness.models.build import build_model, checkpoint_family
    from harness.course.tokenizers import get_tokenizer

    hints, named_family = (sub.model, sub.family) if sub is not None else (None, None)

    def tokenizer_of(family: str):
        if tokenizer_spec:
            return get_tokenizer(tokenizer_spec), False
        return _tokenizer_for(family, sub, course, root, warnings)

    family = named_family or checkpoint_family(raw)
    tokenizer, named = tokenizer_of(family)
    frozen, train = _frozen(source, tokenizer)
    calibrate = _calibrator(course, family, tokenizer, train) if train is not None else None
    loaded = build_model(raw, hints=hints, family=named_family, calibrate=calibrate)
    if loaded.family != family:
        tokenizer, named = tokenizer_of(loaded.family)
        frozen, train = _frozen(source, tokenizer)
    return Scored(loaded, tokenizer, named, frozen, train)


def measure(job: Job, *, course: Course | None = None, progress=None) -> Measurement:
    """Everything measured about one submission: the one measuring path of `harness grade`, `harness check`,
    the reference models and `harness eval`. Errors of the submission are part of the result (`error`),
    never exceptions. `course` (default: the job's) may be changed by the caller (`harness eval --context`);
    `progress(done, total)` counts the evaluation's scored targets."""
    from harness.intake.submission import read_submission

    course = course if course is not None else load_course(job.course_path)
    started = time.monotonic()
    result = Measurement(id=job.id, student=job.id, harness_version=__version__, device=job.device)
    with tempfile.TemporaryDirectory(prefix="harness-measure-") as tmp:
        try:
            root = _materialise(job, Path(tmp))
            sub = read_submission(job.id, root)
            result.student = sub.student
            result.claims = sub.claims
            result.warnings = list(sub.warnings)
            result.report_file = sub.report.as_posix() if sub.report else None
            _measure_model(job, course, sub, root, result, progress)
        except HarnessError as e:
            result.error = ErrorInfo(e.code, e.message)
    result.seconds = round(time.monotonic() - started, 3)
    result.measured_on = time.strftime("%Y-%m-%d", time.gmtime())  # kept with the cached measurement
    if result.error is None:
        result.status = "graded"
    return result


def _measure_model(job: Job, course: Course, sub, root: Path, result: Measurement, progress=None) -> None:
    from harness.metrics.causality import check_causal
    from harness.checkpoint.read import read_checkpoint
    from harness.course.data import load_source
    from harness.course.tokenizers import get_tokenizer
    from harness.grading.findings import vocab_finding
    from harness.metrics.protocol import TruncatedVocabulary
    from harness.metrics.score import EvalData, score
    from harness.models.build import SPELLINGS, read_values
    from harness.intake.claims import checkpoint_claims, with_checkpoint_claims

    if sub.weights is None:
        raise HarnessError("checkpoint-missing", "the submission holds no weights file (.pt, .pth, .bin, "
                           ".safetensors or a Hugging Face folder)")
    weights = root / sub.weights if root.is_dir() else root
    lap = _Laps(result)
    raw = read_checkpoint(weights, root=root if root.is_dir() else root.parent)
    lap("read")
    stored = checkpoint_claims(raw.meta, sub.weights, root if root.is_dir() else None)
    if stored:
        result.claims = with_checkpoint_claims(sub.claims, stored)
    result.checkpoint = CheckpointInfo(path=sub.weights.as_posix(), sha256=raw.sha256, format=raw.format)
    result.nonfinite = list(raw.nonfinite)
    result.warnings += list(raw.warnings)

    source = load_source(course.source_spec())
    custom = None
    if sub.code:
        from harness.sandbox.custom_code import load_custom

        custom = load_custom(job, sub, root, raw, course.eval_settings(sub.family or "gpt").context)
        lap("read")  # the student's class constructed in the sandbox
        if isinstance(custom, str):
            result.code_fallback, custom = custom, None
    if custom is not None:
        family, model, n_outputs, state = custom.family, custom.model, custom.model.n_outputs, raw.tensors
        tokenizer, named = ((get_tokenizer(job.tokenizer), False) if job.tokenizer else
                            _tokenizer_for(family, sub, course, root, result.warnings))
        frozen, train = _frozen(source, tokenizer)
        result.checkpoint.layout = "custom-code"
        result.model = ModelInfo.from_json(custom.info)
    else:
        scored = _build_scored(raw, sub, course, root, source, result.warnings, job.tokenizer)
        lap("calibrate")  # recognising the layout, building the model and calibrating what weights cannot tell
        loaded, tokenizer, named, frozen, train = (scored.loaded, scored.tokenizer, scored.named, scored.frozen,
                                                   scored.train)
        family = loaded.family
        model, n_outputs, state = loaded.model, loaded.n_outputs, loaded.model.state_dict()
        d, cfg = loaded.describe(), loaded.config
        result.checkpoint.layout = loaded.layout
        result.model = ModelInfo(
            family=family, layout=loaded.layout, params=loaded.params, tied=loaded.tied,
            n_layers=cfg.n_layers, d_model=getattr(cfg, "d_model", getattr(cfg, "hidden", None)),
            n_heads=cfg.n_heads, d_ff=getattr(cfg, "d_ff", getattr(cfg, "intermediate", None)),
            vocab_size=n_outputs, context=loaded.max_positions,
            norm=getattr(cfg, "norm", "post"), activation=cfg.activation,
            positions=getattr(cfg, "positions", "learned"), causal_mask=getattr(cfg, "causal", None),
            sources={k: v["source"] for k, v in d["architecture"].items()},
            unverified=d["unverified"], calibration=d["calibration"], facts=d["facts"],
        )
        if getattr(cfg, "n_kv_heads", None) not in (None, cfg.n_heads):  # grouped-query attention
            result.model.n_kv_heads = cfg.n_kv_heads
        result.warnings += d["warnings"]
        result.calibration_cost = loaded.calibration_cost  # in the measurement; not in results.json (seconds)
        if loaded.calibration_cost and loaded.calibration_cost.get("rounds"):
            result.model.calibration_work = {k: v for k, v in loaded.calibration_cost.items() if k != "seconds"}
        result.pad_id = read_values(raw.config, {"pad_id": SPELLINGS["pad_id"]}).get("pad_id")
    result.tokenizer = TokenizerInfo(name=tokenizer.name, vocab_size=tokenizer.vocab_size, eot_id=tokenizer.eot_id,
                                     sha256=tokenizer.sha256, named_by_student=named,
                                     roles=tokenizer.describe().get("roles"))

    if job.signature_path:
        key, sig = _signature(state)
        np.save(job.signature_path, sig, allow_pickle=False)
        result.signature_key = key

    if job.device.startswith("cuda") and custom is None:
        from harness.metrics.protocol import as_logits_model

        # the worker sees its one GPU only (CUDA_VISIBLE_DEVICES): "cuda:3" of the grader is cuda:0 here
        model = as_logits_model(model, device="cuda")
    mismatch = vocab_finding(n_outputs, {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size})
    if mismatch is not None:
        result.vocab_mismatch = mismatch.message
        if n_outputs < tokenizer.vocab_size:
            model = TruncatedVocabulary(model, n_outputs, tokenizer.vocab_size)
    if raw.nonfinite:
        return  # NaN weights: every number would be NaN

    split = frozen.split(course.data_split)
    settings = course.eval_settings(family)
    r = score(model, family, EvalData(split, tokenizer, train), settings, progress=progress)
    lap("evaluate")
    if family != "mlm":
        result.causal = CausalCheck.from_json(
            check_causal(model, context=r.context, vocab_size=min(tokenizer.vocab_size, n_outputs),
                         seed_material=raw.sha256).to_dict())
    lap("causality")
    from harness.grading.private import measure_private, metrics_of

    metrics = metrics_of(r)
    if isinstance(model, TruncatedVocabulary):
        metrics.partial = (f"the model has {model.n_own:,} outputs for {model.n_outputs:,} token ids: ids it lacks "
                           "were scored at its lowest logit; not comparable with complete models")
    result.metrics = metrics
    result.data = DataInfo(manifest_sha256=frozen.manifest_sha256, split=course.data_split, source=source.name)

    measure_private(job, course, family, model, frozen, tokenizer, train, source, r, result)
    lap("private")

    from harness.metrics.samples import measured_samples

    samples = measured_samples(model, tokenizer, family, course)
    result.samples = SamplesInfo.from_json(samples) if samples is not None else None
    lap("samples")
    if custom is not None:
        custom.finish(result)


class _Laps:
    """Seconds per stage of one measurement, in `result.stages_s` (the cached measurement keeps them, as it
    keeps `seconds`; results.json does not): what benchmarks/grade.py adds up over a class."""

    def __init__(self, result: Measurement):
        if result.stages_s is None:
            result.stages_s = {}
        self.stages = result.stages_s
        self.t = time.monotonic()

    def __call__(self, stage: str) -> None:
        now = time.monotonic()
        self.stages[stage] = round(self.stages.get(stage, 0.0) + now - self.t, 4)
        self.t = now


def _limit_self(job: Job) -> None:
    if job.timeout_s:
        import signal

        signal.alarm(int(job.timeout_s) + 30)  # the parent kills at timeout_s; this catches orphans
    # On a GPU no address-space limit: CUDA reserves far more address space than any such limit allows (its
    # initialisation fails with "out of memory" under one). What is untrusted there runs in children with
    # their own limits: the checkpoint's unpickling (checkpoint/child.py) and student code (the sandbox, on the CPU).
    if job.memory_mb and not job.device.startswith("cuda"):
        mem = job.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)


def warm_up() -> None:
    """What every forked measurement would otherwise pay on its own (the measuring fork server's `warm`):
    GPT-2's tokenizer, the default course's and nanoGPT's, read and checked once (~0.2 s a submission)."""
    from harness.course.tokenizers import get_tokenizer

    get_tokenizer("gpt2")


def main(argv: list[str]) -> int:
    job = Job.from_dict(json.loads(Path(argv[0]).read_text()))
    _limit_self(job)
    try:
        result = measure(job)
    except MemoryError:
        result = Measurement.failed(job.id, "limits", f"grading needed more than {job.memory_mb} MB")
    write_json(argv[1], result.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# --- single checkpoints: `harness inspect` and `harness eval` --------------------------------------


def _read_for_tools(path: Path):
    """A checkpoint file or folder, or a submission folder (its weights, hints and family)."""
    from harness.checkpoint.read import read_checkpoint
    from harness.intake.submission import read_submission

    if not path.exists():
        raise HarnessError("checkpoint-missing", f"{path} does not exist")
    sub = None
    if path.is_dir() and (path / "submission.toml").is_file() or path.is_dir() and not (path / "config.json").is_file():
        sub = read_submission(path.name, path)
        if sub.weights is None:
            raise HarnessError("checkpoint-missing", f"{path} holds no weights file")
        raw = read_checkpoint(path / sub.weights, root=path)
    else:
        raw = read_checkpoint(path, root=path if path.is_dir() else path.parent)
    return raw, sub


def inspect_checkpoint(path: Path, *, course_path: Path | None = None) -> dict[str, Any]:
    """What was recognised: format, layout, family, every inferred value with its source. What the weights
    cannot tell is calibrated exactly as grading calibrates it (`_build_scored`, the course's train split),
    so inspect and grade agree on what was chosen and on what stays unverified."""
    from harness.course.data import load_source
    from harness.models.build import build_model

    raw, sub = _read_for_tools(path)
    info: dict[str, Any] = {"path": str(path), "sha256": raw.sha256, "format": raw.format,
                            "refused_globals": list(raw.refused_globals), "nonfinite": list(raw.nonfinite),
                            "reader_warnings": list(raw.warnings), "tensors": len(raw.tensors)}
    if sub is not None:
        from harness.intake.claims import checkpoint_claims, with_checkpoint_claims

        claims = with_checkpoint_claims(sub.claims, checkpoint_claims(raw.meta, sub.weights, path))
        info["submission"] = {"student": sub.student, "weights": sub.weights.as_posix(), "family": sub.family,
                              "model": sub.model, "claims": claims.to_dict(), "warnings": list(sub.warnings)}
        if sub.code:
            from harness.sandbox.custom_code import inspect_custom

            info["layout"] = inspect_custom(sub, path if path.is_dir() else path.parent, raw)
            return info
    course = load_course(course_path)
    warnings: list[str] = []
    try:
        loaded = _build_scored(raw, sub, course, path if path.is_dir() else path.parent,
                               load_source(course.source_spec()), warnings).loaded
    except HarnessError as e:
        if not e.code.startswith(("tokenizer-", "data-")):
            raise
        # the weights can still be described; grading would stop at the same tokenizer or data
        loaded = build_model(raw, hints=sub.model if sub else None, family=sub.family if sub else None)
        warnings.append(f"not calibrated as grading would: {e.message}")
    info["layout"] = loaded.describe()
    info["layout"]["warnings"] = warnings + info["layout"]["warnings"]
    return info


def eval_checkpoint(path: Path, *, course_path: Path | None = None, data: str | None = None,
                    split: str | None = None, tokenizer: str | None = None, context: int | None = None,
                    stride: int | None = None, max_tokens: int | None = None, device: str | None = None,
                    progress=None) -> dict[str, Any]:
    """`harness eval`: one checkpoint or submission measured by grading's own `measure` (the sandbox for
    custom code, truncated vocabularies, calibration, the causality check), so that it gives grading's number
    and grading's errors, raised here. The options change the course for this run: its data and split, the
    protocol's context, stride and token cap; `tokenizer` overrules the submission's and the course's."""
    import torch

    from harness.course.data import load_source

    if not path.exists():
        raise HarnessError("checkpoint-missing", f"{path} does not exist")
    course = load_course(course_path)
    source = load_source(data or course.source_spec())
    split_name = split or (course.data_split if source.has_splits else "validation")

    def changed(s):
        return replace(s, context=context or s.context, stride=stride or s.stride, max_tokens=max_tokens or s.max_tokens)

    course = replace(course, data_source=data or course.data_source, data_split=split_name, clm=changed(course.clm),
                     mlm=changed(course.mlm))
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda:"):
        torch.cuda.set_device(dev)  # `measure` places the model on "cuda", the current device
    job = Job(id=path.stem or "checkpoint", paths=[str(path.resolve())],
              course_path=str(course_path.resolve()) if course_path else None, device=dev,
              timeout_s=TIMEOUT_S, tokenizer=tokenizer)
    result = measure(job, course=course, progress=progress)
    if result.error is not None:
        raise HarnessError(result.error.code, result.error.message)
    if result.metrics is None:
        names = ", ".join(result.nonfinite[:3])
        raise HarnessError("weights-nonfinite", f"the checkpoint holds NaN or Inf weights ({names}); every number "
                           "would be NaN")
    return {"course_fingerprint": course.fingerprint, **result.to_json()}
