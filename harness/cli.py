"""The command line: parse, call one function of the core, print. No business logic here.

Every `HarnessError` becomes one line on stderr and exit code 2; `--json` puts machine-readable output
on stdout and nothing else there. Nothing printed is read as rich markup, help texts included: a message
that says `[model]` or `pip install 'harness[ray]'` prints those very words (styles come from `Text`).

Stays whole (over 500 lines): options and printing only, one command a function, sharing options and consoles.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness import __version__
from harness.errors import HarnessError
from harness.families import check_family


def _typer(help: str, **kwargs) -> typer.Typer:
    # rich_markup_mode=None: help is printed as written (rich markup would eat `[ray]` in `harness[ray]`)
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None, **kwargs)


app = _typer("A reproducible grading harness for courses that train small transformer language models.",
             name="harness", pretty_exceptions_enable=False, add_completion=False)
data_app = _typer("The course's fixed data: freeze it, look at it.")
reference_app = _typer("Train the reference models that anchor the grades.")
report_app = _typer("PDF reports.")
course_app = _typer("The course file: everything a grade depends on.")
app.add_typer(data_app, name="data")
app.add_typer(reference_app, name="reference")
app.add_typer(report_app, name="report")
app.add_typer(course_app, name="course")

# markup=False: student names, paths and messages are printed as they are, brackets and all
out = Console(soft_wrap=True, markup=False)
if not out.is_terminal:  # pipes and CI logs: wide enough for every table
    out.width = 160
err = Console(stderr=True, markup=False)


def _styled(label: str, style: str, rest: str = "") -> Text:
    """`label` in `style`, then `rest` as plain text."""
    return Text.assemble((label, style), rest)

CourseOpt = Annotated[Optional[Path], typer.Option("--course", help="course.toml (default: the packaged course).")]
DataOpt = Annotated[Optional[str], typer.Option("--data", help="wiki-vital, wikitext-2, wikitext-103 or a path.")]
TokenizerOpt = Annotated[Optional[str], typer.Option("--tokenizer", help="gpt2, char[:FILE], a path or a HF name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def _version(value: bool) -> None:
    if value:
        print(f"harness {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """harness: train reference models, recompute students' metrics, grade, report."""


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


# --- data ----------------------------------------------------------------------------------------


def _freeze(course: Optional[Path], data: Optional[str], tokenizer: Optional[str], out_dir: Optional[Path], quiet: bool):
    from harness.course.config import load_course
    from harness.course.data import freeze, load_source
    from harness.progress import progress_bar

    c = load_course(course)
    source = load_source(data or c.source_spec())
    with progress_bar("tokenizing", enabled=not quiet) as update:
        return freeze(source, tokenizer or c.clm.tokenizer, out_dir, progress=update)


def _data_table(frozen) -> Table:
    from harness.course.data import split_summary

    m = frozen.manifest
    table = Table(title=f"{m['source']['name']} · {m['tokenizer']['name']}", title_justify="left")
    for col in ("split", "documents", "tokens", "stream tokens", "bytes", "words", "ids sha256"):
        table.add_column(col, justify="left" if col in ("split", "ids sha256") else "right")
    for row in split_summary(frozen):
        table.add_row(row["split"], f"{row['documents']:,}", f"{row['tokens']:,}", f"{row['stream_tokens']:,}",
                      f"{row['bytes']:,}", f"{row['words']:,}", row["ids_sha256"][:16])
    return table


def _print_data(frozen, action: str) -> None:
    m = frozen.manifest
    out.print(_data_table(frozen))
    out.print("stream tokens: one end-of-text token before each document, as clm-v1 scores them")
    out.print(f"source sha256     {m['source']['sha256']}")
    out.print(f"tokenizer sha256  {m['tokenizer']['sha256']}")
    out.print(f"manifest          {frozen.folder / 'manifest.json'} ({action})")
    out.print(f"manifest sha256   {frozen.manifest_sha256}")


@data_app.command("prepare")
def data_prepare(
    course: CourseOpt = None,
    data: DataOpt = None,
    tokenizer: TokenizerOpt = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the frozen data (default: the cache).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Freeze the course's fixed data: token streams per split and a manifest."""
    frozen = _freeze(course, data, tokenizer, out_dir, as_json)
    if as_json:
        _print_json({"folder": str(frozen.folder), "manifest_sha256": frozen.manifest_sha256, "manifest": frozen.manifest})
    else:
        _print_data(frozen, "reused" if frozen.reused else "written")


@data_app.command("show")
def data_show(
    course: CourseOpt = None,
    data: DataOpt = None,
    tokenizer: TokenizerOpt = None,
    first: Annotated[int, typer.Option("--first", help="How many first ids per split --json shows.")] = 16,
    as_json: JsonOpt = False,
) -> None:
    """What a source holds: splits, documents, tokens, fingerprints."""
    frozen = _freeze(course, data, tokenizer, None, as_json)
    if as_json:
        from harness.course.data import split_summary

        rows = []
        for row in split_summary(frozen):
            row["first_ids"] = frozen.split(row["split"]).tokens[:first].tolist()
            rows.append(row)
        _print_json({"source": frozen.manifest["source"], "tokenizer": frozen.manifest["tokenizer"],
                     "split_rule": frozen.manifest["split_rule"], "manifest_sha256": frozen.manifest_sha256,
                     "splits": rows})
    else:
        _print_data(frozen, "reused" if frozen.reused else "written")
        out.print(f"split rule        {frozen.manifest['split_rule']}")


# --- course --------------------------------------------------------------------------------------


@course_app.command("init")
def course_init(
    path: Annotated[Path, typer.Argument(help="Where to write the course file.")] = Path("course.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write an editable copy of the default course."""
    from harness.course.config import default_course_text
    from harness.files import write_atomic

    if path.exists() and not force:
        raise HarnessError("exists", f"{path} already exists; pass --force to overwrite it")
    write_atomic(path, default_course_text())
    out.print(f"wrote {path}: edit it, then pass --course {path}")


@course_app.command("show")
def course_show(course: CourseOpt = None, as_json: JsonOpt = False) -> None:
    """The course as parsed, and its fingerprint."""
    from harness.course.config import load_course

    c = load_course(course)
    if as_json:
        _print_json({"fingerprint": c.fingerprint, "origin": c.origin, "course": c.to_dict()})
        return
    out.print(_styled(c.name, "bold", f" ({c.origin})"))
    out.print(f"data       {c.data_source}, public split {c.data_split}, private split {c.data_private or 'none'}")
    for fam, s in (("clm", c.clm), ("mlm", c.mlm)):
        out.print(f"{fam}        {s.protocol}, tokenizer {s.tokenizer}, context {s.context}, "
                  f"stride {s.stride or 'L'}, max tokens {s.max_tokens or 'all'}")
    out.print(f"rubric     {len(c.rubric)} criteria, {c.max_points:g} points")
    out.print(f"fingerprint {c.fingerprint}")


# --- the jobs ------------------------------------------------------------------------------------


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where the demo writes its reports.")] = Path("reports/demo"),
    submissions: Annotated[Path, typer.Option("--submissions", help="The example class's folder.")] = Path("submissions"),
    course: CourseOpt = None,
    workers: Annotated[int, typer.Option("--workers", min=1)] = 2,
    scale: Annotated[str, typer.Option("--scale", help="demo, or test: the same pipeline, tiny budgets.")] = "demo",
) -> None:
    """The whole job offline on the embedded default: data, reference, example class, grading, PDFs."""
    if scale not in ("demo", "test"):
        raise HarnessError("demo-scale", f"--scale {scale!r} is not demo or test")
    from harness.demo.run import run_demo
    from harness.progress import progress_bar

    r = run_demo(out_dir, submissions=submissions, course_path=course, workers=workers,
                 say=lambda line: err.print(line), progress_factory=progress_bar, scale=scale)
    _print_data(r.data, "reused" if r.data.reused else "written")
    for family, t in r.references.items():
        out.print()
        out.print(_styled(f"reference {family}", "bold"))
        _train_summary(t)
    out.print()
    out.print(_class_table(r.grading.results))
    ref = r.grading.results.reference.gpt
    if ref is not None:
        out.print(f"reference GPT (recomputed like a submission): perplexity {ref.ppl:,.1f}"
                  + (f"; on the private split ({ref.private.split}) {ref.private.ppl:,.1f}" if ref.private else ""))
    out.print(f"{len(r.grading.measured)} evaluated, {len(r.grading.cached)} from the cache; "
              f"wall time {r.timings['total']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in r.timings.items()
                                                           if k != "total") + ")")
    out.print(f"submissions  {submissions}/")
    out.print(f"results      {out_dir / 'results.json'}")
    out.print(f"grades       {out_dir / 'grades.csv'}")
    out.print(f"reports      {out_dir}/<id>.pdf, {out_dir / 'class_report.pdf'}")


BudgetSteps = Annotated[Optional[int], typer.Option("--max-steps", min=1, help="Stop after this many steps in all.")]
BudgetTokens = Annotated[Optional[int], typer.Option("--max-tokens", min=1, help="Stop after this many training tokens.")]
BudgetMinutes = Annotated[Optional[float], typer.Option("--max-minutes", min=0.01, help="Stop this call after so long.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: key=value (repeatable).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="reference_model/<name>.toml (default: the SPEC's).")]


def _train_summary(r) -> None:
    out.print(_styled(str(r.out), "bold", f": {r.steps}/{r.total_steps} steps, {r.tokens:,} tokens, {r.wall_s:.0f} s, "
              f"{r.tokens_per_s:,.0f} tokens/s" + ("" if r.complete else f" (stopped by {r.stopped_by}; run again to continue)")))
    if r.val_ppl is not None:
        uni = f" · unigram baseline {r.unigram_val_ppl:,.1f}" if r.unigram_val_ppl else ""
        out.print(f"validation loss {r.val_loss:.4f}, perplexity {r.val_ppl:,.1f}{uni}")
    if r.tokenizer_fallback:
        # what the run did, then why: a reason alone ("... could not be downloaded") reads as a failure
        out.print(_styled("tokenizer:", "yellow", f" a WordPiece trained on the train split, not the course's: "
                          f"{r.tokenizer_fallback}"))


@reference_app.command("train")
def reference_train(
    family: Annotated[str, typer.Argument(help="gpt or mlm")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: reference_model/<name>).")] = None,
    course: CourseOpt = None,
    max_steps: BudgetSteps = None,
    max_tokens: BudgetTokens = None,
    max_minutes: BudgetMinutes = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Processes (DDP through torchrun; GPUs or CPU).")] = 1,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over instead of resuming the run folder.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a reference model (GPU when present, CPU otherwise); resumes an interrupted run."""
    from harness.progress import progress_bar
    from harness.train import train_distributed, train_reference

    check_family(family)
    if nproc > 1:
        raise typer.Exit(train_distributed(nproc, family, config, overrides, out_dir, course=course, max_steps=max_steps,
                                           max_tokens=max_tokens, max_minutes=max_minutes, fresh=fresh))
    with progress_bar(f"training {family} (steps)", enabled=not as_json) as update:
        r = train_reference(family, config, overrides or [], out_dir, max_steps=max_steps, max_tokens=max_tokens,
                            max_minutes=max_minutes, progress=update, resume=not fresh, course=course)
    if as_json:
        from harness.metrics.common import plain

        _print_json(plain(r.to_dict()))
    else:
        _train_summary(r)


@reference_app.command("sweep")
def reference_sweep(
    family: Annotated[str, typer.Argument(help="gpt or mlm")],
    grid: Annotated[list[str], typer.Option("--grid", help="key=v1,v2 (repeatable): one run per combination.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Sweep folder (default: reference_model/<name>-sweep).")] = None,
    course: CourseOpt = None,
    max_steps: BudgetSteps = None,
    max_tokens: BudgetTokens = None,
    max_minutes: BudgetMinutes = None,
) -> None:
    """Train a grid of reference runs, each in its own folder, with a results table."""
    from harness.progress import progress_bar
    from harness.train import sweep

    with progress_bar("sweep (steps)") as update:
        result = sweep(family, grid, config, out_dir, overrides=overrides or [], max_steps=max_steps,
                       max_tokens=max_tokens, max_minutes=max_minutes, progress=update, course=course,
                       on_run=lambda label, i, n: err.print(f"run {i + 1}/{n}: {label}"))
    out.print(result.table.to_string(index=False))
    out.print(f"results  {result.path}")


@app.command()
def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file or folder, or a submission.")],
    course: CourseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What was recognised: format, layout, family, architecture, parameters; what the weights cannot tell is
    calibrated on the course's training text, as grading does."""
    from harness.grading.measure import inspect_checkpoint

    info = inspect_checkpoint(checkpoint, course_path=course)
    if as_json:
        _print_json(info)
        return
    layout = info.get("layout", {})
    out.print(_styled(str(checkpoint), "bold", f"  {info['format']}, {info['tensors']} tensors, sha256 {info['sha256'][:16]}"))
    if layout.get("layout") == "custom-code":
        _print_custom(layout)
    elif "architecture" in layout:
        out.print(f"layout {layout['layout']} · family {layout['family']} · {layout['params']:,} parameters"
                  f"{' (tied head counted once)' if layout['tied'] else ''} · {layout['n_outputs']:,} outputs")
        table = Table("value", "", "source")
        for name, v in layout["architecture"].items():
            table.add_row(name, str(v["value"]), v["source"])
        out.print(table)
        for fact in layout["facts"]:
            out.print(f"  note: {fact}")
        for name, c in layout.get("calibration", {}).items():
            tried = ", ".join(f"{v!r} {loss:.5f}" if loss is not None else repr(v)
                              for v, loss in zip(c["candidates"], c["losses"]))
            apart = f", {c['margin']:.2g} ± {c['stderr']:.2g} nats apart" if c["margin"] is not None else ""
            verdict = "decided" if c["decided"] else "UNVERIFIED: closer than the evaluation can separate"
            out.print(f"  calibration: {name} = {c['chosen']!r} ({verdict}; tried {tried}{apart})")
    else:
        out.print(f"custom model code {layout.get('code')}: run only in the sandbox when graded")
    for w in info["reader_warnings"] + layout.get("warnings", []) + info.get("submission", {}).get("warnings", []):
        out.print(_styled("warning:", "yellow", f" {w}"))
    if info["refused_globals"]:
        out.print(f"read through inert stubs (never imported): {', '.join(info['refused_globals'])}")
    if info["nonfinite"]:
        out.print(_styled("non-finite weights:", "red", f" {', '.join(info['nonfinite'][:5])}"))


def _print_custom(layout: dict) -> None:
    """How the sandbox built and ran the student's own class (their strings printed as they are)."""
    out.print(f"custom model code {layout.get('code')}, run in the sandbox")
    if layout.get("error"):
        out.print(_styled("could not run:", "red", f" {layout['error']['message']}"))
        if layout.get("fallback_layout"):
            out.print("a layout recognises the weights: grading uses it, with a model-code-fallback warning")
        return
    built = layout.get("built") or {}
    out.print(f"built by {built.get('how')} · {layout.get('params') or 0:,} parameters · "
              f"{layout.get('n_outputs') or 0:,} outputs")
    table = Table("value", "", "source")
    for name, v in (layout.get("architecture") or {}).items():
        table.add_row(Text(name), Text(str(v["value"])), Text(str(v["source"])))
    out.print(table)
    if built.get("dropped"):
        out.print(f"  note: [model.kwargs] keys the class has no place for: {', '.join(built['dropped'])}")
    for note in layout.get("notes") or ():
        out.print(f"  note: {note}")


@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file or folder (canonical, Hugging Face, ...).")],
    course: CourseOpt = None,
    data: DataOpt = None,
    split: Annotated[Optional[str], typer.Option("--split", help="train, validation or test.")] = None,
    tokenizer: TokenizerOpt = None,
    context: Annotated[Optional[int], typer.Option("--context", min=1)] = None,
    stride: Annotated[Optional[int], typer.Option("--stride", min=1)] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", min=1)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1 (default: CUDA if present).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recomputed metrics of one checkpoint on the fixed data."""
    from harness.grading.measure import eval_checkpoint
    from harness.progress import progress_bar

    with progress_bar("evaluating (targets)", enabled=not as_json) as update:
        result = eval_checkpoint(checkpoint, course_path=course, data=data, split=split, tokenizer=tokenizer,
                                 context=context, stride=stride, max_tokens=max_tokens, device=device, progress=update)
    if as_json:
        _print_json(result)
        return
    m = result["metrics"]
    for warning in [*result.get("warnings", []), result.get("vocab_mismatch"), m.get("partial")]:
        if warning:
            err.print(_styled("warning:", "yellow", f" {warning}"), highlight=False)
    table = Table("metric", "value", title=f"{checkpoint} · {m['protocol']} on {result['data']['source']} "
                  f"{result['data']['split']}", title_justify="left")
    table.columns[1].justify = "right"
    rows = [("loss (nats)", f"{m['loss']:.4f}"), ("perplexity", f"{m['ppl']:,.2f}")]
    if "accuracy" in m:
        rows.append(("accuracy", f"{m['accuracy']:.4f}"))
    for key, label in (("bits_per_byte", "bits per byte"), ("word_ppl", "word perplexity")):
        if m.get(key) is not None:
            rows.append((label, f"{m[key]:,.4f}"))
    rows.append(("tokens scored", f"{m['tokens']:,}"))
    if m.get("unigram_ppl") is not None:
        rows.append((f"unigram baseline ppl ({m['unigram_source']})", f"{m['unigram_ppl']:,.2f}"))
    if m.get("uniform_ppl") is not None:
        rows.append(("uniform baseline ppl", f"{m['uniform_ppl']:,.0f}"))
    for r in rows:
        table.add_row(*r)
    out.print(table)
    out.print(f"context {m['context']}, stride {m.get('stride', m['context'])}, layout {result['checkpoint']['layout']}, "
              f"{result['model']['params']:,} parameters, device {result['device']}")
    out.print(f"checkpoint sha256 {result['checkpoint']['sha256']}")
    out.print(f"data manifest     {result['data']['manifest_sha256']}")


def _grade_options(workers: int, timeout: float, reports: bool, progress, grader: bool = False, overrides=None,
                   backend: str = "local", address: str | None = None, unsandboxed: bool = False, *, exports):
    from harness.grading.batch import GradeOptions

    return GradeOptions(workers=workers, timeout_s=timeout, reports=reports, progress=progress,
                        grader_reports=grader, overrides=overrides, backend=backend, ray_address=address,
                        allow_unsandboxed_code=unsandboxed, exports=exports)


UnsandboxedOpt = Annotated[bool, typer.Option(
    "--allow-unsandboxed-code", help="Run custom model code even where no sandbox can be made (bubblewrap "
    "missing): it then sees this machine's files. Recorded in results.json. Default: such code is refused.")]


def _class_table(results) -> Table:
    """`results`: a ClassResults; `harness grade`'s has the private split's perplexity beside the public one's."""
    private = results.data.private_split
    table = Table("id", "student", "score", "ppl", *([f"ppl {private}"] if private else []), "loss", "status",
                  "findings", title=results.course.name, title_justify="left")
    for col in (2, 3, 4, 5) if private else (2, 3, 4):
        table.columns[col].justify = "right"
    for s in results.submissions:
        ppl, loss = (s.metrics.ppl, s.metrics.loss) if s.metrics else (None, None)
        pp = s.private.metrics.ppl if s.private and s.private.metrics else None
        codes = ", ".join(f.code for f in s.findings if f.code != "submission-warning")
        table.add_row(s.id, s.student, f"{s.score.total:g}/{s.score.max:g}", f"{ppl:,.1f}" if ppl else "—",
                      *([f"{pp:,.1f}" if pp else "—"] if private else []), f"{loss:.3f}" if loss else "—",
                      s.status, codes or "—")
    return table


@app.command()
def check(
    submission: Annotated[Path, typer.Argument(help="Your submission folder or file.")],
    course: CourseOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where the verdict and your PDF go.")] = Path("harness-check"),
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds allowed for grading it.")] = 900,
    reports: Annotated[bool, typer.Option("--reports/--no-reports", help="Write the PDF report.")] = True,
    gradescope: Annotated[Optional[Path], typer.Option("--gradescope", help="Also write Gradescope's results.json "
                                                       "here (e.g. /autograder/results/results.json).")] = None,
    unsandboxed: UnsandboxedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """A student's self-check: the grader's verdict for one submission."""
    from harness.grading.findings import CATALOGUE
    from harness.grading.batch import check as run_check
    from harness.grading.outputs import Exports
    from harness.progress import progress_bar

    with progress_bar("grading", enabled=not as_json) as update:
        outcome = run_check(submission, out_dir, course, _grade_options(1, timeout, reports, update,
                                                                        unsandboxed=unsandboxed,
                                                                        exports=Exports(gradescope_file=gradescope)))
    s = outcome.results.submissions[0]
    if as_json:
        _print_json(s.to_json())
    else:
        m = s.metrics
        verdict = "graded" if s.status == "graded" else f"NOT gradable: {s.error.message if s.error else ''}"
        out.print(_styled(s.student, "bold", f": {s.score.total:g} / {s.score.max:g} points — {verdict}"))
        if m is not None:
            ref = outcome.results.reference.of(s.model.family if s.model else None)
            out.print(f"recomputed {m.protocol}: loss {m.loss:.4f}, perplexity {m.ppl:,.2f} on "
                      f"{m.tokens:,} tokens" + (f" (reference {ref.ppl:,.2f})" if ref else ""))
        table = Table("criterion", "points", "why")
        for c in s.score.criteria:
            table.add_row(c.name, f"{c.points:g}/{c.max:g}", c.why)
        out.print(table)
        if s.model is not None and s.model.sandbox:
            out.print(f"your model code ran in the sandbox: {s.model.sandbox} (it may read only its own "
                      "submission and the Python environment, write only in a private /tmp, no network)",
                      markup=False)
        for f in s.findings:
            if f.grader_only:
                continue
            out.print(_styled(f.code, "red" if f.severity == "error" else "yellow", f": {f.message}"))
            if f.code in CATALOGUE:
                out.print(f"    {CATALOGUE[f.code][2]}")
        pdf = out_dir / f"{s.id}.pdf"
        if pdf.exists():
            out.print(f"report: {pdf}")
        for line in outcome.exports:
            out.print(line)
    if s.status != "graded":
        raise typer.Exit(1)


@app.command()
def grade(
    directory: Annotated[Path, typer.Argument(help="The folder of submissions.")],
    course: CourseOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where results and reports go.")] = Path("reports"),
    workers: Annotated[int, typer.Option("--workers", min=1, help="Submissions graded at once.")] = 1,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds allowed per submission.")] = 900,
    overrides: Annotated[Optional[Path], typer.Option("--overrides", help="overrides.csv (default: DIR/overrides.csv).")] = None,
    reports: Annotated[bool, typer.Option("--reports/--no-reports", help="Write the PDF reports.")] = True,
    canvas_template: Annotated[Optional[Path], typer.Option("--canvas-template", help="A Canvas gradebook export: "
                                                            "writes OUT/canvas_grades.csv to import.")] = None,
    canvas_column: Annotated[Optional[str], typer.Option("--canvas-column", help="The assignment column to fill: "
                                                         "header, name or assignment id.")] = None,
    gradescope: Annotated[bool, typer.Option("--gradescope", help="Also write OUT/gradescope/<id>/results.json.")] = False,
    leaderboard: Annotated[Optional[Path], typer.Option("--leaderboard", help="Also write a leaderboard page to "
                                                        "publish (HTML, pseudonyms only; see [leaderboard]).")] = None,
    backend: Annotated[str, typer.Option("--backend", help="local: processes on this machine; ray: one Ray task per "
                                         "submission (pip install 'harness[ray]'; paths must be the same on every "
                                         "node).")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="With --backend ray: the cluster to join "
                                                   "(auto, host:port); default: a Ray on this machine.")] = None,
    unsandboxed: UnsandboxedOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Grade a class: results.json, grades.csv, PDFs; a Canvas gradebook CSV and Gradescope results on request."""
    from harness.grading.batch import grade as run_grade
    from harness.grading.outputs import Exports
    from harness.progress import progress_bar

    exports = Exports(canvas_template=canvas_template, canvas_column=canvas_column, gradescope=gradescope,
                      leaderboard=leaderboard)
    with progress_bar("grading (submissions)", enabled=not as_json) as update:
        outcome = run_grade(directory, out_dir, course,
                            _grade_options(workers, timeout, reports, update, overrides=overrides, backend=backend,
                                           address=address, unsandboxed=unsandboxed, exports=exports))
    lines = outcome.exports
    if as_json:
        _print_json(outcome.results.to_json())
        for line in lines:  # stdout holds the JSON alone
            err.print(line, highlight=False)
        return
    out.print(_class_table(outcome.results))
    out.print(f"{len(outcome.measured)} evaluated, {len(outcome.cached)} from the cache"
              + ("; re-scored" if outcome.rescored and not outcome.measured else ""))
    out.print(f"results  {out_dir / 'results.json'}")
    out.print(f"grades   {out_dir / 'grades.csv'}")
    if reports:
        out.print(f"reports  {out_dir}/<id>.pdf, {out_dir / 'class_report.pdf'}")
    for line in lines:
        out.print(line, highlight=False)


@report_app.command("compare")
def report_compare(
    runs: Annotated[list[Path], typer.Argument(help="Runs: reference run folders, sweep folders, results.json[#id], "
                                               "training logs (.csv); PATH#NAME picks one.")],
    out_file: Annotated[Path, typer.Option("--out", help="The PDF to write.")] = Path("comparison.pdf"),
    title: Annotated[str, typer.Option("--title")] = "Run comparison",
) -> None:
    """Side-by-side comparison PDF of runs or submissions."""
    from harness.reporting.compare import load_runs, render_comparison

    loaded = [run for path in runs for run in load_runs(str(path))]
    if not loaded:
        raise HarnessError("run-missing", "no runs found in " + ", ".join(map(str, runs)))
    render_comparison(loaded, out_file, title=title)
    out.print(f"compared {len(loaded)} runs: {', '.join(r['name'] for r in loaded)}")
    out.print(f"wrote {out_file}")


def main() -> None:
    try:
        app()
    except HarnessError as e:
        err.print(_styled("error:", "red", f" {e.message}"), highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
