"""A Python environment holding only the main dependencies (`[project] dependencies` of pyproject.toml and
what they require, transitively), built in a couple of seconds from the environment the tests run in.

`make demo` and `make bench` run in the venv that `scripts/setup.sh` makes without `--test`: the main
dependencies and nothing else. The tests run where pytest, lm-eval and ray are importable, so a command that
leans on them (the failure of issue #19: `benchmarks/report.py` imported a test module, which imports pytest)
passes the suite and breaks for a new user. This module builds that user's environment for real:

- a venv made by `python -m venv --without-pip` (no system site-packages, so no user site either);
- in its site-packages, symlinks to exactly the files of the installed distributions that the main
  dependencies need: the requirement closure is read from pyproject.toml and the installed distributions'
  own metadata (`Requires-Dist`, markers evaluated for this Python and the extras asked for), and the files
  from each distribution's RECORD, `.dist-info` included, so `importlib.metadata` sees them as installed;
  a top-level entry that only those distributions own is one link, one shared with another distribution
  (a namespace package) is linked file by file, so nothing of the other leaks in;
- `harness` itself: a link to the tree under test's `harness/` (as an editable install would), and the
  console scripts of `[project.scripts]` written as pip writes them.

`python -m benchmarks` run from the repository root finds `benchmarks/` through the working directory, as
`make bench` does. `MainEnv.check()` proves the result: pytest, lm-eval and ray do not import, harness
resolves to the tree under test, and every distribution the environment sees is in the closure.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# what the test extra adds and the main job must never need
TEST_ONLY = ("pytest", "lm_eval", "ray")
# variables that would put other packages on the path of the commands run in the environment
_PATH_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONSAFEPATH", "VIRTUAL_ENV",
              "PYTHONEXECUTABLE")


def main_closure(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, md.Distribution]:
    """Canonical name -> installed distribution, for every distribution the main dependencies need."""
    project = tomllib.loads(pyproject.read_text())["project"]
    self_name = canonicalize_name(project["name"])
    todo = [Requirement(r) for r in project["dependencies"]]
    needed: dict[str, md.Distribution] = {}
    extras_seen: dict[str, set[str]] = {}
    missing = []
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == self_name:
            continue
        new_extras = set(req.extras) - extras_seen.get(name, set())
        if name in needed and not new_extras:
            continue
        try:
            dist = needed.get(name) or md.distribution(req.name)
        except md.PackageNotFoundError:
            missing.append(str(req))
            continue
        first = name not in needed
        needed[name] = dist
        extras_seen.setdefault(name, set()).update(req.extras)
        extras = ([""] if first else []) + sorted(new_extras)
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    if missing:
        raise RuntimeError(f"main dependencies not installed where the tests run: {', '.join(sorted(missing))}")
    return needed


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists() and not dst.is_symlink():
        dst.symlink_to(src, target_is_directory=src.is_dir())


@dataclass(frozen=True)
class MainEnv:
    prefix: Path
    python: Path
    allowed: frozenset[str]

    @property
    def bin(self) -> Path:
        return self.python.parent

    def environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _PATH_VARS}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONNOUSERSITE"] = "1"
        return {**env, **extra}

    def run(self, args: list[str], cwd: Path, timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess:
        """`args[0]` is looked up in the environment's bin/ first (python, harness)."""
        exe = self.bin / args[0]
        cmd = [str(exe) if exe.exists() else args[0], *args[1:]]
        return subprocess.run(cmd, cwd=cwd, env=self.environ(**extra_env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def check(self) -> None:
        probe = ("import importlib.metadata as md, importlib.util as u, json, harness\n"
                 f"print(json.dumps({{'absent': [m for m in {list(TEST_ONLY)!r} if u.find_spec(m) is None],"
                 " 'harness': harness.__file__,"
                 " 'dists': sorted({d.metadata['Name'] for d in md.distributions()})}))")
        proc = self.run(["python", "-c", probe], cwd=self.prefix)
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout)
        assert seen["absent"] == list(TEST_ONLY), f"test-only packages importable: {seen}"
        assert Path(seen["harness"]).resolve() == (ROOT / "harness" / "__init__.py").resolve(), seen["harness"]
        extra = {canonicalize_name(n) for n in seen["dists"]} - self.allowed
        assert not extra, f"distributions beyond the main dependencies: {sorted(extra)}"


def build(prefix: Path) -> MainEnv:
    closure = main_closure()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, capture_output=True)
    python = prefix / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))

    # who owns each top-level entry of each site folder, over every installed distribution
    owners: dict[tuple[Path, str], set[str]] = {}
    files: dict[str, list[tuple[Path, Path]]] = {}
    for dist in md.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        base = Path(dist.locate_file(""))
        for f in dist.files or []:
            if f.is_absolute() or not f.parts or f.parts[0] in ("..", "__pycache__"):
                continue  # scripts in bin/, data outside the site folder, bytecode
            owners.setdefault((base, f.parts[0]), set()).add(name)
            if name in closure:
                files.setdefault(name, []).append((base, Path(f)))
    empty = sorted(n for n, d in closure.items() if not d.files)
    if empty:
        raise RuntimeError(f"installed without a RECORD, so their files are unknown: {', '.join(empty)}")

    for name in sorted(files):
        for base, rel in files[name]:
            top = rel.parts[0]
            if owners[(base, top)] <= closure.keys():
                _link(base / top, site / top)
            elif (base / rel).exists():  # shared with a distribution outside the closure: file by file
                _link(base / rel, site / rel)

    # harness as an editable install of the tree under test, and its console scripts as pip writes them
    _link(ROOT / "harness", site / "harness")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    for script, target in scripts.items():
        module, func = target.split(":")
        path = python.parent / script
        path.write_text(f"#!{python}\nimport sys\nfrom {module} import {func}\n"
                        f"if __name__ == '__main__':\n    sys.exit({func}())\n")
        path.chmod(0o755)
    return MainEnv(prefix=prefix, python=python, allowed=frozenset(closure))
