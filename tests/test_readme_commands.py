"""Every command the README tells a user to type works where the README's set-up puts it.

The commands are read from README.md itself, so a command added there is checked without touching this file:
the lines of the bash block under "The two commands" and every code span in the first column of a table
whose header starts `| command |` (`harness data prepare` / `harness data show` are two commands). A `make`
command is read through the Makefile: its set-up line (`bash scripts/setup.sh`, with `--test` only for the
suite itself) says which environment its job runs in, and its job line (`.venv/bin/...`) is run there.

The environment: tests/main_env.py builds a venv whose site-packages holds links to exactly the files of the
main dependencies' requirement closure (read from pyproject.toml and the installed metadata), with `harness`
the tree under test — what `bash scripts/setup.sh` (no `--test`) gives a new user, built in about 2 s from
the packages already installed, with no download. Its `check()` proves that pytest, lm-eval and ray do not
import there and that it sees no distribution outside the closure. Issue #19 was exactly this: `make bench` imported a test module (and so pytest) and failed for a new
user while the suite, where pytest is installed, passed.

In that environment every command runs `--help` (each option the README names must be in it), and the
commands in REAL also run for real at a tiny scale (a 1-layer width-32 GPT-2, 64-128 targets, 2 training
steps). Left at `--help`: `harness demo` (9 minutes; at test scale in test_cli's HARNESS_E2E test),
`harness reference sweep` (one `reference train` per grid point: that path runs for real here), and the
suite itself (`make test`). `python -m benchmarks --tiny` runs in this environment in test_benchmarks.py.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Callable

import pytest

from conftest import ROOT
from main_env import MainEnv

README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"
WIDE = {"COLUMNS": "200"}  # so that rich never shortens an option name in a help screen
TINY_GPT = ["--set", "d_model=32", "--set", "n_layers=1", "--set", "n_heads=2", "--set", "batch_size=4",
            "--set", "eval_max_tokens=128", "--set", "final_eval_max_tokens=128"]


# ----------------------------------------------------------------------------------------------------------
# what the README names
# ----------------------------------------------------------------------------------------------------------


def readme_commands(text: str) -> list[str]:
    commands = []
    two = re.search(r"^## The two commands\n(.*?)(?=^## )", text, re.S | re.M)
    assert two, "README has no '## The two commands' section"
    for block in re.findall(r"```bash\n(.*?)```", two.group(1), re.S):
        commands += [line.split(" #")[0].strip() for line in block.splitlines() if line.split(" #")[0].strip()]
    in_table = False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0] == "command":
            in_table = True
        elif in_table and not set(cells[0]) <= set("-: "):
            commands += [span.replace("\\|", "|") for span in re.findall(r"`([^`]+)`", cells[0])]
    return commands


def make_recipe(target: str) -> list[str]:
    lines = MAKEFILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def harness_path(words: list[str]) -> list[str]:
    """The subcommands a `harness ...` line names, read off the command line's own tree."""
    import typer

    from harness.cli import app

    node, path = typer.main.get_command(app), []
    for word in words:
        sub = getattr(node, "commands", {}).get(word)
        if sub is None:
            break
        node, path = sub, [*path, word]
    return path


def resolve(command: str) -> tuple[list[str], list[str]]:
    """(the argv that runs the command in the main environment, the options the README names for it)."""
    words = shlex.split(command.replace("|", " "))
    options = sorted({o for o in re.findall(r"(?<![\w-])--[a-z][a-z-]*", command)})
    if words[0] == "harness":
        path = harness_path(words[1:])
        assert len(path) >= 1, f"README names `{command}`, which is no harness command"
        return ["harness", *path], options
    if words[:3] == ["python", "-m", "benchmarks"]:
        return words[:3], options
    if words[0] == "make":
        recipe = make_recipe(words[1])
        setup, job = recipe[0].split(), recipe[-1].split()
        assert setup[:2] == ["bash", "scripts/setup.sh"], f"`{command}`: its set-up is not scripts/setup.sh"
        assert job[0].startswith(".venv/bin/"), f"`{command}`: its job does not run in .venv: {recipe[-1]}"
        return [job[0].removeprefix(".venv/bin/"), *job[1:]], options
    raise AssertionError(f"README names `{command}`: this check does not know how to run it; teach resolve()")


COMMANDS = readme_commands(README.read_text())


def test_the_readme_commands_are_all_read():
    names = {" ".join(resolve(c)[0]) for c in COMMANDS}
    for expected in ("harness demo", "harness grade", "harness check", "harness eval", "harness inspect",
                     "harness reference train", "harness reference sweep", "harness report compare",
                     "harness data prepare", "harness data show", "harness course init", "harness course show",
                     "python -m benchmarks", "python -m pytest -q"):
        assert expected in names, (expected, sorted(names))
    assert {"make demo", "make test", "make bench"} <= set(COMMANDS)
    assert "--canvas-template" in resolve(next(c for c in COMMANDS if c.startswith("harness grade")))[1]


def test_only_the_suite_sets_up_the_test_extras():
    """`make demo` and `make bench` get the main dependencies only, so that is where they are checked below."""
    for command in (c for c in COMMANDS if c.startswith("make ")):
        setup = make_recipe(command.split()[1])[0]
        assert ("--test" in setup.split()) == (command == "make test"), (command, setup)
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'EXTRAS="[test]"' in setup and 'pip install -q -e ".$EXTRAS"' in setup


def test_nothing_outside_tests_imports_from_tests():
    """What benchmarks and tests both need lives in the package or in benchmarks/ (issue #19)."""
    import ast

    test_modules = {"tests", *(p.stem for p in (ROOT / "tests").glob("*.py"))}
    skip = {"tests", ".venv", ".git", "build", "dist", "reports", "submissions", "reference_model"}
    for path in sorted(ROOT.rglob("*.py")):
        if skip & set(path.relative_to(ROOT).parts):
            continue
        source = path.read_text(encoding="utf-8")
        assert not re.search(r"sys\.path\.\w+\(.*[\"'/]tests\b", source), f"{path} puts tests/ on sys.path"
        for node in ast.walk(ast.parse(source)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                assert name.split(".")[0] not in test_modules, f"{path}:{node.lineno} imports {name} from tests/"


# ----------------------------------------------------------------------------------------------------------
# run in the main environment
# ----------------------------------------------------------------------------------------------------------


def ok(proc, *fragments):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    for f in fragments:
        assert f in proc.stdout + proc.stderr, (f, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A class of one untrained 1-layer width-32 Hugging Face GPT-2 and a damaged file, and a course capped
    at 128 targets without the calibration slice."""
    import torch
    import transformers

    from harness.course.config import capped_course_text

    root = tmp_path_factory.mktemp("readme")
    sub = root / "class" / "tiny_gpt2"
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(sub / "hf_model")
    (sub / "submission.toml").write_text('[submission]\nstudent = "Tiny"\nfamily = "gpt"\ncheckpoint = "hf_model"\n'
                                         'tokenizer = "gpt2"\n')
    (root / "class" / "broken").mkdir()
    (root / "class" / "broken" / "model.pt").write_bytes(b"PK\x03\x04" + bytes(996))
    (root / "course.toml").write_text(capped_course_text(128, 0))
    return root


def run_course(env: MainEnv, tiny: Path, tmp: Path) -> None:
    ok(env.run(["harness", "course", "init", str(tmp / "course.toml")], cwd=tmp), "wrote")
    shown = json.loads(ok(env.run(["harness", "course", "show", "--course", str(tmp / "course.toml"), "--json"],
                                  cwd=tmp)).stdout)
    assert len(shown["fingerprint"]) == 64


def run_data(env: MainEnv, tiny: Path, tmp: Path) -> None:
    # into the session's cache, where the commands before it (in README order) froze it already
    prepared = json.loads(ok(env.run(["harness", "data", "prepare", "--json"], cwd=tmp)).stdout)
    assert (Path(prepared["folder"]) / "manifest.json").is_file()
    shown = json.loads(ok(env.run(["harness", "data", "show", "--json", "--first", "2"], cwd=tmp)).stdout)
    assert shown["manifest_sha256"] == prepared["manifest_sha256"]


def run_inspect(env: MainEnv, tiny: Path, tmp: Path) -> None:
    ok(env.run(["harness", "inspect", str(tiny / "class" / "tiny_gpt2")], cwd=tmp), "hf-gpt2")


def run_eval(env: MainEnv, tiny: Path, tmp: Path) -> None:
    got = json.loads(ok(env.run(["harness", "eval", str(tiny / "class" / "tiny_gpt2" / "hf_model"), "--max-tokens",
                                 "64", "--json"], cwd=tmp)).stdout)
    assert got["checkpoint"]["layout"] == "hf-gpt2" and got["metrics"]["tokens"] == 64, got


def run_check(env: MainEnv, tiny: Path, tmp: Path) -> None:
    ok(env.run(["harness", "check", str(tiny / "class" / "tiny_gpt2"), "--course", str(tiny / "course.toml"),
                "--out", str(tmp / "check"), "--gradescope", str(tmp / "gs.json")], cwd=tmp, timeout=300))
    assert (tmp / "check" / "tiny_gpt2.pdf").stat().st_size > 10_000
    assert json.loads((tmp / "gs.json").read_text())["tests"]


def run_grade(env: MainEnv, tiny: Path, tmp: Path) -> None:
    ok(env.run(["harness", "grade", str(tiny / "class"), "--course", str(tiny / "course.toml"), "--out",
                str(tmp / "out"), "--no-reports", "--gradescope"], cwd=tmp, timeout=300))
    rows = (tmp / "out" / "grades.csv").read_text().splitlines()
    assert len(rows) == 3 and (tmp / "out" / "gradescope" / "tiny_gpt2" / "results.json").is_file()


def run_train_and_compare(env: MainEnv, tiny: Path, tmp: Path) -> None:
    ok(env.run(["harness", "reference", "train", "gpt", *TINY_GPT, "--max-steps", "2", "--out", str(tmp / "run")],
               cwd=tmp, timeout=300), "validation loss")
    ok(env.run(["harness", "report", "compare", str(tmp / "run"), "--out", str(tmp / "cmp.pdf")], cwd=tmp),
       "compared 1 runs")
    assert (tmp / "cmp.pdf").stat().st_size > 10_000


def run_benchmark_imports(env: MainEnv, tiny: Path, tmp: Path) -> None:
    """What `make bench` imports, every benchmark's module included (they load when their turn comes, so
    `--help` alone would not reach them); the tiny run of all of them is in test_benchmarks.py."""
    code = ("import importlib, benchmarks.__main__ as m\n"
            "for name in m.BENCHMARKS: importlib.import_module('benchmarks.' + name)\n"
            "print('imported', *m.BENCHMARKS)")
    ok(env.run(["python", "-c", code], cwd=ROOT), "imported eval")


# the command (as resolve() gives it) -> a real run at a tiny scale; slow: several seconds on 2 cores
REAL: dict[str, tuple[Callable[[MainEnv, Path, Path], None], bool]] = {
    "harness course init": (run_course, False), "harness course show": (run_course, False),
    "harness data prepare": (run_data, True), "harness data show": (run_data, True),
    "harness inspect": (run_inspect, True), "harness eval": (run_eval, True),
    "harness check": (run_check, True), "harness grade": (run_grade, True),
    "harness reference train": (run_train_and_compare, True), "harness report compare": (run_train_and_compare, True),
    "python -m benchmarks": (run_benchmark_imports, False),
}
_ran: set[Callable] = set()  # a runner that covers two commands runs once


def _params():
    seen = set()
    for command in COMMANDS:
        argv, options = resolve(command)
        if argv[:3] == ["python", "-m", "pytest"]:
            continue  # `make test` is the suite itself, in the test extras' environment
        key = " ".join(argv)
        if key in seen and not options:
            continue
        seen.add(key)
        slow = REAL.get(" ".join(argv[:3]) if argv[0] == "python" else key, (None, False))[1]
        yield pytest.param(command, argv, options, id=command.split(" [")[0][:60],
                           marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("command, argv, options", list(_params()))
def test_readme_command_runs_with_only_the_main_dependencies(command, argv, options, main_env, tiny, tmp_path):
    # `python -m` commands run from the repository root, as the README and the Makefile run them
    helped = ok(main_env.run([*argv, "--help"], cwd=ROOT if argv[0] == "python" else tmp_path, **WIDE))
    for option in options:
        assert option in helped.stdout, f"README names {option} for `{command}`; its --help does not"
    key = " ".join(argv[:3]) if argv[0] == "python" else " ".join(argv)
    if key in REAL and REAL[key][0] not in _ran:
        _ran.add(REAL[key][0])
        REAL[key][0](main_env, tiny, tmp_path)
