"""`--backend ray`: a small class graded on a two-CPU Ray cluster on this machine gives the very files the
local backend gives, fills the same cache, and a rerun or a resumed batch measures only what is missing.
Without Ray installed, the backend fails in one sentence that says what to install."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.course.config import capped_course_text
from harness.errors import HarnessError
from harness.grading.batch import GradeOptions, grade

OUTPUTS = ("results.json", "grades.csv")


def _class(root: Path) -> tuple[Path, Path]:
    """Three submissions: a nanoGPT ckpt.pt (random weights), a copy of it and a file that is no checkpoint;
    and the default course capped to 512 targets, calibration off: each is measured in about 5 s."""
    import torch

    from harness.models.gpt import GPT, GPTConfig

    class_dir = root / "class"
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50304, context=64, n_layers=2, d_model=64, n_heads=4, dropout=0.0, bias=False,
                          ln_bias=False))
    model_args = {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64, "bias": False, "vocab_size": 50304,
                  "dropout": 0.0}
    for sid, student in (("nanogpt_ann", "Ann Lee"), ("nanogpt_bob", "Bob Roy")):
        (class_dir / sid).mkdir(parents=True)
        (class_dir / sid / "submission.toml").write_text(f'[submission]\nstudent = "{student}"\n\n[claims]\n'
                                                         'val_loss = 10.9\n')
    ckpt = class_dir / "nanogpt_ann" / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model_args, "iter_num": 0}, ckpt)
    shutil.copy(ckpt, class_dir / "nanogpt_bob" / "ckpt.pt")
    (class_dir / "broken.pt").write_bytes(b"not a checkpoint at all")
    capped = capped_course_text(512, calibration_tokens=0)
    assert capped.count("max_tokens = 512") == 1 and "calibration_tokens = 0 " in capped
    (root / "course.toml").write_text(capped)
    return class_dir, root / "course.toml"


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    ray = pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("ray")
    class_dir, course = _class(root)
    opts = dict(workers=2, timeout_s=120, reports=False)
    local = grade(class_dir, root / "out-local", course, GradeOptions(**opts))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, logging_level="warning")
    seen, progress = [], []
    try:
        remote = grade(class_dir, root / "out-ray", course,
                       GradeOptions(**opts, backend="ray", on_result=seen.append,
                                    progress=lambda done, total: progress.append((done, total))))
        yield {"root": root, "class": class_dir, "course": course, "opts": opts, "local": local, "ray": remote,
               "seen": seen, "progress": progress}
    finally:
        ray.shutdown()


def _assert_same_cache(a: Path, b: Path) -> None:
    """The same entries; the same signatures byte for byte (a result holds its run's seconds)."""
    ca, cb = ({p.name: p.read_bytes() for p in (out / ".cache").iterdir()} for out in (a, b))
    assert sorted(ca) == sorted(cb)
    assert {n: ca[n] for n in ca if n.endswith(".npy")} == {n: cb[n] for n in cb if n.endswith(".npy")}


@pytest.mark.slow
def test_ray_writes_the_very_files_the_local_backend_writes(graded):
    local, remote = graded["local"].out, graded["ray"].out
    for name in OUTPUTS:
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name
    results = graded["ray"].results
    errors = {s.id: s.error.code for s in results.submissions if s.status == "error"}
    assert errors == {s.id: s.error.code for s in graded["local"].results.submissions if s.status == "error"}
    assert list(errors) == ["broken"]
    assert sorted(graded["ray"].measured) == ["broken", "nanogpt_ann", "nanogpt_bob"]
    # the weights signatures came back from the tasks: the copy is found
    assert [(p.a, p.b) for p in results.similar_pairs] == [("nanogpt_ann", "nanogpt_bob")]
    _assert_same_cache(local, remote)


@pytest.mark.slow
def test_progress_and_each_result_are_reported_as_tasks_finish(graded):
    assert sorted(r.id for r in graded["seen"]) == ["broken", "nanogpt_ann", "nanogpt_bob"]
    assert graded["progress"] == [(0, 3), (1, 3), (2, 3), (3, 3)]


@pytest.mark.slow
def test_a_rerun_measures_nothing_and_a_lost_entry_only_itself(graded):
    out = graded["ray"].out
    before = {n: (out / n).read_bytes() for n in OUTPUTS}
    opts = GradeOptions(**graded["opts"], backend="ray")
    again = grade(graded["class"], out, graded["course"], opts)
    assert again.measured == [] and len(again.cached) == 3
    for p in (out / ".cache").glob("nanogpt_bob.*"):  # as if the batch had been stopped before it
        p.unlink()
    resumed = grade(graded["class"], out, graded["course"], opts)
    assert resumed.measured == ["nanogpt_bob"] and len(resumed.cached) == 2
    assert {n: (out / n).read_bytes() for n in OUTPUTS} == before
    _assert_same_cache(graded["local"].out, out)


def test_without_ray_the_backend_fails_in_one_sentence_before_any_work(tmp_path):
    (tmp_path / "class").mkdir()
    (tmp_path / "class" / "broken.pt").write_bytes(b"not a checkpoint")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # what Python does when ray is not installed: import fails
        from pathlib import Path
        from harness.errors import HarnessError
        from harness.grading.batch import GradeOptions, grade
        try:
            grade(Path({str(tmp_path / "class")!r}), Path({str(tmp_path / "out")!r}), None,
                  GradeOptions(backend="ray", reports=False))
        except HarnessError as e:
            print(e.code)
            print(e.message)
            sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines()[0] == "ray-missing"
    message = proc.stdout.splitlines()[1:]
    assert len(message) == 1 and "pip install 'harness[ray]'" in message[0], proc.stdout
    assert not (tmp_path / "out").exists()


def test_an_unknown_backend_is_named(tmp_path):
    (tmp_path / "class").mkdir()
    (tmp_path / "class" / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError) as e:
        grade(tmp_path / "class", tmp_path / "out", None, GradeOptions(backend="dask", reports=False))
    assert e.value.code == "backend-unknown" and "dask" in e.value.message
