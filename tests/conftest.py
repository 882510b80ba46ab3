import os
import subprocess
import sys
from pathlib import Path

import pytest

# No test may reach a hub: this machine and CI have no internet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Every test run gets its own data cache, so no test leans on a developer's."""
    os.environ["HARNESS_CACHE"] = str(tmp_path_factory.mktemp("harness-cache"))


@pytest.fixture(scope="session")
def example_class(tmp_path_factory):
    """The test-scale example class, written once a session by two processes (half a minute: it trains a
    dozen small models): (its folder, what write_example_class returned). Tests read it and never change it."""
    from harness.demo.example_class import write_example_class

    out = tmp_path_factory.mktemp("example-class")
    return out, write_example_class(out, scale="test", progress=lambda done, total: None)


@pytest.fixture(scope="session")
def main_env(tmp_path_factory):
    """A venv with only the main dependencies, `harness` the tree under test (see main_env.py)."""
    from main_env import build

    env = build(tmp_path_factory.mktemp("main-env") / "venv")
    env.check()
    return env


@pytest.fixture()
def run_cli():
    """Run the real `harness` command line in a subprocess."""

    def run(*args, cwd=None, env=None, check=None):
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=600)
        if check is not None:
            assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        return proc

    return run


def assert_one_line_error(proc, *fragments):
    """Bad input: a non-zero exit, one line on stderr that says what is wrong, no traceback."""
    assert proc.returncode != 0, proc.stdout
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
