"""The batch: every submission of a class measured in its own process, then findings, rubric and outputs.

- Each submission runs as `python -m harness.grading.measure` with a wall-time and a memory limit; a crash, a
  hang or a hostile file takes down only its own process, and is recorded with its reason. Where the
  processes run is the backend's business (`harness.grading.backends`: threads here, or tasks of a Ray cluster);
  the results, the cache and the outputs do not depend on it.
- Each measurement is cached in `OUT/.cache/` under a key of the submission's files, the course, the
  data and the harness version; a rerun recomputes nothing, a changed submission only itself, and a
  batch killed half-way resumes where it stopped.
- Findings and scores are derived from the measurements here, cheaply, every run: a changed rubric or
  `overrides.csv` never re-evaluates a model.
- `results.json` and `grades.csv` are written atomically and hold no clock: unchanged inputs give
  byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness import __version__, forkserver
from harness.grading.backends import Measured, backend, local_servers
from harness.grading.cache_key import measurement_basis, measurement_key
from harness.course.config import Course, load_course
from harness.errors import HarnessError
from harness.families import FAMILIES
from harness.files import fingerprint, named_files, pretty_json, sha256_file, write_atomic, write_json
from harness.grading.contamination import measured_gap, reference_gap_documents
from harness.grading.findings import Evaluation, find, finding
from harness.grading.measure import TIMEOUT_S, Job, submission_fingerprint
from harness.grading.outputs import Exports, check_exports, write_exports
from harness.grading.results import (ClassData, ClassResults, ClmProtocol, CourseInfo, Measurement, MlmProtocol,
                                     PrivateNumbers, Protocols, ReferenceResult, References, SandboxRecord, SimilarPair,
                                     SimilarTo, SubmissionResult, Submitted)
from harness.grading.rubric import LATE_PENALTY, read_overrides, score
from harness.intake.deadlines import UNKNOWN, SubmittedAt, check_time, submission_times
from harness.intake.claims import Claims
from harness.intake.logs import number, read_rows
from harness.intake.submission import SubmissionRef, discover, names_model_code

# /2: the MLM unigram baseline counts the train split, as the SPEC says (it counted the evaluated split)
# /3: calibration keeps the default where candidates cannot be told apart, and records its statistics
# /4: calibration scores its candidates in step and stops once one clearly wins; its cost is recorded
# /5 and on: harness.grading.cache_key.CACHE_FORMAT (keyed by what measures, not the whole course)


@dataclass
class GradeOptions:
    workers: int = 1
    timeout_s: float = TIMEOUT_S
    memory_mb: int = 8192
    overrides: Path | None = None
    reports: bool = True
    grader_reports: bool = False  # per-student PDFs with grader-only findings
    progress: Callable[[int, int], None] | None = None
    on_result: Callable[[Measurement], None] | None = None
    backend: str = "local"  # local: processes on this machine; ray: a Ray task per submission
    ray_address: str | None = None  # for ray.init: None starts a Ray on this machine (or joins RAY_ADDRESS); "auto"
    allow_unsandboxed_code: bool = False  # custom code runs even where no sandbox can be made (recorded)
    private: bool = True  # score the course's private split too (`harness check`: never)
    exports: Exports = field(default_factory=Exports)  # Canvas and Gradescope files written after grading


@dataclass
class GradeOutcome:
    out: Path
    results: ClassResults
    measured: list[str] = field(default_factory=list)  # ids evaluated in this run (not from the cache)
    cached: list[str] = field(default_factory=list)
    rescored: bool = False  # results.json was there and changed: scores recomputed from what was measured
    exports: list[str] = field(default_factory=list)  # what the exports wrote, a line each


def _cache_key(ref: SubmissionRef, basis: dict[str, Any], unsandboxed: bool = False) -> str:
    """Keyed by what measures (`harness.grading.cache_key`): a rubric, tolerance or deadline change keeps every
    entry."""
    return measurement_key(submission_fingerprint(list(ref.key_paths or ref.paths)), basis, unsandboxed)


# Model code costs about this many times what a layout does per byte of weights (measured at the demo's scale:
# its sandbox starts in ~2 s and the student's forward computes its full head besides the grader's fused one;
# 0.9 s/MB against 0.2-0.6 s/MB for the layouts).
MODEL_CODE_WORK = 3


def expected_work(ref: SubmissionRef) -> int:
    """What measuring `ref` should cost, relative to the others, before anything is read: the bytes of its
    files, times MODEL_CODE_WORK where its submission.toml names model code. The batch starts the costliest
    first, so that no worker is left alone with a long one at the end; only the order work starts in depends
    on it, never a result."""
    size, code = 0, False
    for base in ref.paths:
        for name, f in named_files(base):
            try:
                size += f.stat().st_size
            except OSError:
                continue
            code = code or (name.rsplit("/", 1)[-1] == "submission.toml" and names_model_code(f))
    return size * (MODEL_CODE_WORK if code else 1)


def cache_entry(cache_dir: Path, sid: str, key: str, suffix: str = ".json") -> Path:
    """A submission's entry in the measurements' cache: `<id>.<key>.json` its measurement, `<id>.<key>.npy`
    its weights' signature (the key is hex without dots: an id, dots and all, is what comes before it)."""
    return cache_dir / f"{sid}.{key}{suffix}"


def _store(m: Measured, cache_dir: Path, sid: str, key: str) -> Measurement:
    """A measurement into the cache (the signature first, then the result that names it); a crash is not
    cached: a dead worker may be the machine's doing (memory taken by others) or ours."""
    result = m.result
    result.cache_key = key
    if not m.cacheable or result.error is not None and result.error.code == "sandbox-unavailable":
        return result  # the machine's doing: graded again once it has a sandbox
    if m.signature is not None:
        write_atomic(cache_entry(cache_dir, sid, key, ".npy"), m.signature)
    write_json(cache_entry(cache_dir, sid, key), result.to_json())  # the cache entry: written whole or not at all
    return result


def evaluation_of(m: Measurement) -> Evaluation:
    """The input of findings and rubric (plain values: they are pure functions tested on values)."""
    return Evaluation(id=m.id, student=m.student or m.id, family=m.model.family if m.model else None,
                      model=m.model.to_json() if m.model else {}, metrics=m.metrics.to_json() if m.metrics else None,
                      claims=m.claims or Claims(), causal=m.causal.to_json() if m.causal else None,
                      nonfinite=tuple(m.nonfinite), tokenizer=m.tokenizer.to_json() if m.tokenizer else {},
                      error=m.error.to_json() if m.error else None, warnings=tuple(m.warnings), pad_id=m.pad_id,
                      private_metrics=m.private.metrics.to_json() if m.private and m.private.metrics else None)


def similarity_pairs(measured: list[Measurement], cache_dir: Path, threshold: float) -> list[SimilarPair]:
    """Pairs of submissions whose weights (same names and shapes) are nearly identical: cosine ≥ threshold
    of the centred weight samples."""
    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    for m in sorted(measured, key=lambda m: m.id):  # not in the order they finished: a pair is (first id, second)
        path = cache_entry(cache_dir, m.id, m.cache_key, ".npy")
        if m.signature_key and path.exists():
            v = np.load(path, allow_pickle=False).astype(np.float64)
            groups.setdefault(m.signature_key, []).append((m.id, v))
    pairs = []
    for members in groups.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                (a, va), (b, vb) = members[i], members[j]
                ca, cb = va - va.mean(), vb - vb.mean()
                denom = float(np.linalg.norm(ca) * np.linalg.norm(cb))
                sim = float(ca @ cb / denom) if denom > 0 else 1.0
                if sim >= threshold:
                    pairs.append(SimilarPair(a, b, round(sim, 6)))
    return sorted(pairs, key=lambda p: (p.a, p.b))


REFERENCE_ID = "_reference_{}"


def reference_refs(course: Course) -> list[SubmissionRef]:
    """The course's reference models, measured exactly like submissions (same worker, same cache)."""
    refs = []
    for family in FAMILIES:
        folder = course.resolve(course.references[family])
        weights = (folder / "model.safetensors", folder / "config.json")
        if all(p.is_file() for p in weights):
            # keyed on the model alone: a resumed or re-run training rewrites its curves and run.json
            refs.append(SubmissionRef(REFERENCE_ID.format(family), (folder,), key_paths=weights))
    return refs


def _reference(course: Course, measured: dict[str, Measurement]) -> References:
    """The reference models' recomputed numbers, and their training curves, for the rubric and reports."""
    out = References()
    for family in FAMILIES:
        m = measured.pop(REFERENCE_ID.format(family), None)
        if m is None or m.metrics is None:
            continue
        folder = course.resolve(course.references[family])
        curve = []
        if (folder / "metrics.csv").is_file():
            curve = [{k: number(v) for k, v in row.items()} for row in read_rows(folder / "metrics.csv")]
        setattr(out, family, ReferenceResult(
            path=course.references[family], loss=m.metrics.loss, ppl=m.metrics.ppl,
            bits_per_byte=m.metrics.bits_per_byte, tokenizer=m.tokenizer, params=m.model.params if m.model else None,
            model=m.model, checkpoint=m.checkpoint, curve=curve,
            private=PrivateNumbers(split=m.private.split, loss=m.private.metrics.loss, ppl=m.private.metrics.ppl,
                                   bits_per_byte=m.private.metrics.bits_per_byte)
            if m.private is not None and m.private.metrics is not None else None))
    return out


def rank_metric(course: Course, measured: list[Measurement]) -> str:
    """What orders submissions of equal score: `ppl`, or `bits_per_byte` where the course's perplexity
    criterion says so or (`auto`) where the graded causal models do not all share one tokenizer."""
    metric = next((c.metric for c in course.rubric if c.kind == "perplexity"), "auto")
    if metric != "auto":
        return metric
    tokenizers = {m.tokenizer.sha256 if m.tokenizer else None for m in measured
                  if m.model is not None and m.model.family == "gpt" and m.metrics is not None}
    return "bits_per_byte" if len(tokenizers - {None}) > 1 else "ppl"


def assemble(course: Course, measured: list[Measurement], reference: References, cache_dir: Path,
             overrides: list[dict[str, Any]], times: dict[str, SubmittedAt] | None = None,
             reference_documents: dict[str, Any] | None = None) -> ClassResults:
    """`times`: when each submission was handed in (harness.intake.deadlines), for the course's [deadline];
    `reference_documents`: the references' per-document losses (trained-on-validation), by family."""
    pairs = similarity_pairs(measured, cache_dir, course.tolerances.similar_weights)
    subs = []
    manifests = sorted({m.data.manifest_sha256 for m in measured if m.data is not None} - {None})
    for m in sorted(measured, key=lambda m: m.id):
        ev = evaluation_of(m)
        ref = reference.of(ev.family)
        ref_ppl, ref_json = (ref.ppl, ref.to_json()) if ref is not None else (None, {})
        fs = find(ev, course, ref_ppl)
        if m.vocab_mismatch:
            fs.insert(0, finding("vocab-mismatch", m.vocab_mismatch))
        if m.code_fallback:
            fs.insert(0, finding("model-code-fallback", m.code_fallback))
        similar = [SimilarTo(p.b if p.a == ev.id else p.a, p.similarity) for p in pairs if ev.id in (p.a, p.b)]
        for s in similar:
            fs.append(finding("similar-weights", f"Weights {s.similarity:.4f} similar to submission {s.id}.",
                              grader_only=True))
        gap = measured_gap(m, (reference_documents or {}).get(ev.family or "gpt"), course.tolerances)
        if gap is not None and gap.flagged:
            fs.append(finding("trained-on-validation", gap.message()))
        submitted = (times or {}).get(ev.id, UNKNOWN)
        sc = score(ev, fs, course, ref_ppl, overrides, reference=ref_json, submitted=submitted)
        subs.append(SubmissionResult(
            id=ev.id, student=ev.student, status=m.status, error=m.error, checkpoint=m.checkpoint, model=m.model,
            metrics=m.metrics, claims=m.claims, causal=m.causal, tokenizer=m.tokenizer, findings=fs, score=sc,
            similar_to=similar, data=m.data, warnings=m.warnings, device=m.device, report_file=m.report_file,
            private=m.private, split_gap=gap.to_dict() if gap is not None else None,
            samples=m.samples,
            # only with a [deadline]: results of courses without one stay as they were
            submitted=Submitted(**submitted.to_dict()) if course.deadline is not None else None))
    dates = sorted(m.measured_on or "" for m in measured)
    return ClassResults(
        harness_version=__version__,
        # the day of the newest measurement, not of this run: unchanged inputs give identical files
        generated=dates[-1] if dates and dates[-1] else None,
        course=CourseInfo(name=course.name, id=course.id, fingerprint=course.fingerprint,
                          requirements={f: {k: list(v) for k, v in r.items()} for f, r in course.requirements.items()},
                          tolerances=course.to_dict()["tolerances"], deadline=course.to_dict().get("deadline")),
        data=ClassData(source=course.data_source, split=course.data_split, tokenizer=course.clm.tokenizer,
                       manifest_sha256=manifests[0] if len(manifests) == 1 else manifests,
                       private_split=next((m.private.split for m in measured if m.private is not None), None)),
        protocol=Protocols(
            clm=ClmProtocol(protocol=course.clm.protocol, context=course.clm.context,
                            stride=course.clm.stride or course.clm.context, max_tokens=course.clm.max_tokens or None),
            mlm=MlmProtocol(protocol=course.mlm.protocol, context=course.mlm.context, seed=course.mlm.seed,
                            max_tokens=course.mlm.max_tokens or None, tokenizer=course.mlm.tokenizer)),
        reference=reference,
        rank_metric=rank_metric(course, measured),
        similar_pairs=pairs,
        submissions=subs,
    )


GRADES_COLUMNS = ("id", "student", "score", "max", "ppl", "loss", "bits_per_byte", "status", "findings")


def grades_csv(results: ClassResults) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    late = results.course.deadline is not None  # the late columns only where the course has a deadline
    w.writerow(GRADES_COLUMNS + (LATE_COLUMNS if late else ()))
    for s in results.submissions:
        m = s.metrics
        codes = ";".join(f.code for f in s.findings if not f.grader_only) or ""
        w.writerow([s.id, s.student, f"{s.score.total:g}", f"{s.score.max:g}",
                    f"{m.ppl:.4f}" if m is not None and m.ppl is not None else "",
                    f"{m.loss:.6f}" if m is not None and m.loss is not None else "",
                    f"{m.bits_per_byte:.6f}" if m is not None and m.bits_per_byte is not None else "",
                    s.status, codes] + (_late_cells(s) if late else []))
    return buf.getvalue()


LATE_COLUMNS = ("late_penalty", "submitted_at")


def _late_cells(s: SubmissionResult) -> list[str]:
    line = next((c for c in s.score.criteria if c.name == LATE_PENALTY), None)
    return [f"{line.points:g}" if line else "", s.submitted.at if s.submitted and s.submitted.at else "unknown"]


def grade(directory: Path, out: Path, course_path: Path | None = None, opts: GradeOptions = GradeOptions()) -> GradeOutcome:
    """Grade a class folder into `out`: results.json, grades.csv, the PDFs, the exports asked for."""
    template = check_exports(opts.exports)
    course = load_course(course_path)  # a wrong course or [leaderboard] fails now, not after the grading
    overrides = read_overrides(opts.overrides if opts.overrides else directory / "overrides.csv")
    refs = discover(directory)
    outcome = grade_refs(refs, out, course_path, opts, overrides, times=submission_times(directory, refs),
                         course=course)
    outcome.exports = write_exports(outcome.results, out, opts.exports, template, course.leaderboard)
    return outcome


def check(submission: Path, out: Path, course_path: Path | None = None, opts: GradeOptions = GradeOptions()) -> GradeOutcome:
    """A student's self-check: the very pipeline the grader runs, on one submission."""
    if not submission.exists():
        raise HarnessError("submission-missing", f"{submission} does not exist")
    template = check_exports(opts.exports)
    course = load_course(course_path)
    sid = submission.name if submission.is_dir() else submission.stem
    opts = replace(opts, private=False)  # the student's view: the private split is neither scored nor shown
    outcome = grade_refs([SubmissionRef(sid or "submission", (submission,))], out, course_path, opts, [],
                         times={sid or "submission": check_time(submission)}, course=course)
    # a submission that is not gradable still gets its Gradescope score
    outcome.exports = write_exports(outcome.results, out, opts.exports, template, course.leaderboard)
    return outcome


def grade_refs(refs: list[SubmissionRef], out: Path, course_path: Path | None, opts: GradeOptions,
               overrides: list[dict[str, Any]], times: dict[str, SubmittedAt] | None = None,
               course: Course | None = None) -> GradeOutcome:
    """`course`: the course at `course_path`, where the caller has loaded it already."""
    run = backend(opts.backend, workers=opts.workers, address=opts.ray_address)
    course = course or load_course(course_path)
    students = len(refs)
    refs = refs + reference_refs(course)
    cache_dir = (out / ".cache").resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, opts.workers))  # the same on every backend
    if opts.backend == "local" and students > 1 and not {ref.id for ref in refs} <= _cached_ids(cache_dir):
        # a class with a submission never measured here: the measuring servers import while the data is frozen
        # and the cache keys computed (hashing every file of the class), where they would start after them
        # (`harness check`'s one submission keeps fresh processes, as `run_local` gives one job)
        local_servers(threads)

    # the data is frozen once here, not by every worker at the same moment
    from harness.course.data import freeze, load_source

    source = load_source(course.source_spec())
    try:
        freeze(source, course.clm.tokenizer)
    except HarnessError:
        pass
    # data without the private split (a path of one text, the default course's source replaced) is graded on
    # its public split alone: results.json's data.private_split says none was, the rubric's why says so
    private = opts.private and course.data_private is not None and course.data_private in source.splits
    basis = measurement_basis(course, source_sha256=source.sha256, split_rule=source.split_rule, private=private)

    measured: dict[str, Measurement] = {}
    todo = []
    outcome = GradeOutcome(out, ClassResults())
    for ref in refs:
        key = _cache_key(ref, basis, opts.allow_unsandboxed_code)
        cached = cache_entry(cache_dir, ref.id, key)
        if cached.is_file():
            try:
                measured[ref.id] = Measurement.from_json(json.loads(cached.read_text()))
                outcome.cached.append(ref.id)
                continue
            except (json.JSONDecodeError, TypeError, AttributeError):  # damaged: measured again
                pass
        todo.append((ref, key))
    todo.sort(key=lambda t: (-expected_work(t[0]), t[0].id))  # the longest first

    total, done = len(refs), len(measured)  # the references count as work too
    if opts.progress:
        opts.progress(done, total)
    jobs = [Job(id=ref.id, paths=[str(p.resolve()) for p in ref.paths],
                course_path=str(course_path.resolve()) if course_path else None, threads=threads,
                memory_mb=opts.memory_mb, timeout_s=opts.timeout_s,
                allow_unsandboxed_code=opts.allow_unsandboxed_code, private=private) for ref, _ in todo]
    keys = {ref.id: key for ref, key in todo}
    # the reports' server starts once the first measurement is in, not beside the measuring servers' own start,
    # which every worker waits for (a rerun that measures nothing may well render nothing either)
    reports_due = opts.reports and bool(todo)
    for job, result in run(jobs, lambda job, m: _store(m, cache_dir, job.id, keys[job.id])):
        if reports_due:
            reports_server(students, opts.workers)
            reports_due = False
        measured[job.id] = result
        outcome.measured.append(job.id)
        done += 1
        if opts.on_result:
            opts.on_result(result)
        if opts.progress:
            opts.progress(done, total)

    keep = {cache_entry(cache_dir, m.id, m.cache_key).stem for m in measured.values()}
    reference_documents = {f: reference_gap_documents(measured.get(REFERENCE_ID.format(f))) for f in FAMILIES}
    reference = _reference(course, measured)
    results = assemble(course, list(measured.values()), reference, cache_dir, overrides, times,
                       reference_documents=reference_documents)
    results.custom_code_sandbox = _sandbox_record(measured.values(), opts.allow_unsandboxed_code)
    text = pretty_json(results.to_json())
    try:
        before = (out / "results.json").read_text(encoding="utf-8")
    except OSError:
        before = None
    outcome.rescored = before is not None and before != text
    write_atomic(out / "results.json", text)
    write_atomic(out / "grades.csv", grades_csv(results))
    outcome.results = results
    _prune_cache(cache_dir, keep)
    if opts.reports:
        write_reports(results, out, grader=opts.grader_reports, class_report=len(results.submissions) > 1,
                      processes=opts.workers)
    return outcome


def _sandbox_record(measured, allowed: bool) -> SandboxRecord:
    """Which boundary custom code ran in on this machine, and whether the grader allowed running it without."""
    from harness.sandbox.jail import boundary

    return SandboxRecord(boundary=boundary().describe(), allow_unsandboxed_code=allowed,
                         unsandboxed=sorted(m.id for m in measured
                                            if m.model is not None and str(m.model.sandbox or "").startswith("none")))


def _cached_ids(cache_dir: Path) -> set[str]:
    """The ids with an entry in the cache (`cache_entry`), whatever its key."""
    return {e.name[: -len(".json")].rsplit(".", 1)[0] for e in os.scandir(cache_dir) if e.name.endswith(".json")}


def _prune_cache(cache_dir: Path, keep: set[str]) -> None:
    """Entries of submissions that changed or left: gone, so the cache holds one entry per submission."""
    for p in cache_dir.iterdir():
        if p.stem not in keep:  # `<id>.<key>`, whichever the suffix
            p.unlink(missing_ok=True)


REPORTS_STAMP = ".reports.json"  # in OUT: what the PDFs there were rendered from


def _report_code_fingerprint() -> str:
    """The templates and the code that render the PDFs: a changed template renders again."""
    here = Path(__file__).resolve().parents[1] / "reporting"
    files = sorted(p for p in here.rglob("*") if p.suffix in (".py", ".html", ".css"))
    return fingerprint({f.relative_to(here).as_posix(): sha256_file(f) for f in files if f.is_file()})


PDFS_PER_PROCESS = 6  # fewer student PDFs than this a process: rendered here (a process's start costs ~2 PDFs)
# a share of the student PDFs, or the class report, in a process of its own (harness.forkserver runs it: no
# main module imported again as multiprocessing's spawn would). Forked from a server that imported the
# renderer and rendered the example results once, where `harness grade` started one while it measured
# (`reports_server`); else a fresh interpreter that pays both (~3 s)
REPORTS = forkserver.Kind(name="reports", entry="harness.reporting.student:render_main", isolated=False,
                          preload=("weasyprint", "harness.reporting.student", "harness.reporting.class_report"),
                          warm="harness.reporting.student:warm_up", lazy=False)


def pdf_processes(students: int, workers: int) -> int:
    """How many processes share a class's student PDFs (`write_reports`): 1 renders them here."""
    return max(1, min(workers, os.cpu_count() or 1, students // PDFS_PER_PROCESS))


def reports_server(students: int, workers: int) -> None:
    """Starts the reports' fork server now, where `write_reports` will share the PDFs among processes: it
    imports and warms up while the class is measured, and each process it forks renders at once."""
    if pdf_processes(students, workers) > 1:
        forkserver.address(REPORTS)


def _render_share(tmp: Path, i: int, ids: list[str] | None, out: Path, grader: bool) -> None:
    """Student PDFs `ids` in a process of their own; `ids` None: the class report."""
    err = tmp / f"stderr-{i}.txt"
    argv = [str(tmp / "results.json"), str(out.resolve()),
            *(["class"] if ids is None else ["1" if grader else "0", *ids])]
    ended = forkserver.run(REPORTS, argv, cwd=tmp, env=dict(os.environ), stderr=err)
    if ended.code != 0:
        tail = [line for line in err.read_text(errors="replace").splitlines() if line.strip()][-1:] \
            if err.is_file() else []
        what = "the class report" if ids is None else f"{len(ids)} student PDFs"
        raise RuntimeError(f"rendering {what} stopped with exit {ended.code}" + (f": {tail[0][:300]}" if tail else ""))


def write_reports(results: ClassResults, out: Path, *, grader: bool = False, class_report: bool = True,
                  processes: int = 1) -> list[Path]:
    """Every student's PDF and the class report. Rendered again only when what they show changed:
    a rerun on unchanged inputs leaves the PDFs (and their bytes) as they are. With `processes` > 1 and
    enough students, the student PDFs are shared among that many processes of their own (`REPORTS`: fresh
    interpreters, while this one renders the class report; where the reports' fork server runs,
    `reports_server`, processes forked from it, warm, the class report in one more): the same bytes (a PDF
    depends on the results alone, not on the process that renders it)."""
    from harness.reporting.class_report import render_class_report
    from harness.reporting.student import render_student_reports

    if not isinstance(results, ClassResults):  # a results.json's dict
        results = ClassResults.from_json(results)
    planned = [f"{s.id}.pdf" for s in results.submissions] + (["class_report.pdf"] if class_report else [])
    key = fingerprint({"results": results.to_json(), "grader": grader, "class_report": class_report,
                       "code": _report_code_fingerprint(), "harness": __version__})
    stamp = out / REPORTS_STAMP
    try:
        before = json.loads(stamp.read_text())
    except (OSError, ValueError):
        before = {}
    if before.get("key") == key and sorted(before.get("files", {})) == sorted(planned) and all(
            (out / name).is_file() and sha256_file(out / name) == sha for name, sha in before["files"].items()):
        return [out / name for name in planned]
    ids = [s.id for s in results.submissions]
    processes = pdf_processes(len(ids), processes)
    if processes == 1:
        written = render_student_reports(results, ids, out, grader=grader)
        class_pdf = render_class_report(results, out / "class_report.pdf", grader=True) if class_report else None
    else:
        forked = class_report and forkserver.running(REPORTS)
        with tempfile.TemporaryDirectory(prefix="harness-reports-") as tmp, \
                ThreadPoolExecutor(processes + int(forked)) as pool:
            (Path(tmp) / "results.json").write_text(json.dumps(results.to_json()), encoding="utf-8")
            futures = [pool.submit(_render_share, Path(tmp), i, ids[i::processes], out, grader)
                       for i in range(processes)]
            if forked:
                futures.append(pool.submit(_render_share, Path(tmp), processes, None, out, grader))
                class_pdf = out / "class_report.pdf"
            else:
                class_pdf = render_class_report(results, out / "class_report.pdf", grader=True) \
                    if class_report else None
            for f in futures:
                f.result()
        written = [out / f"{sid}.pdf" for sid in ids]
    if class_pdf is not None:
        written.append(class_pdf)
    write_json(stamp, {"key": key, "files": {p.name: sha256_file(p) for p in written}})
    return written
