"""An example class: the five seeds' setups, each trained here for seconds on the course's data and handed
in the way that student handed it in, with its flaw really in the weights and the logs; clean
submissions in each format the harness reads; and broken, hostile and misbehaving files.

`write_example_class(out, scale="demo")` writes what `harness demo` grades; `scale="test"` writes the
grading tests' class (tiny models and a few steps, where every flaw still shows, plus the test-only
submissions). Nothing here is a committed binary: every checkpoint is trained by a builder in
`harness.demo.students`, with a fixed seed per model, single-threaded, so the same call writes the same
bytes (the hostile pickle names a marker inside `out_dir`, so only its bytes depend on where the class is
written). What a correct grader finds on each submission is the tests' oracle, `tests/example_oracle.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from harness.demo.students import BUILDERS
from harness.demo.students.common import Ctx, Data, get_scale

DEMO_IDS = ("s000_encoder", "s001_pre_ln", "s002_memorise", "s003_pad_eot", "s004_bert", "nanogpt_clean",
            "hf_gpt2_clean", "custom_code", "broken_file")
TEST_ONLY_IDS = ("copied_model", "hostile_pickle", "custom_crash", "custom_loop")


def ids(scale: str = "demo") -> tuple[str, ...]:
    get_scale(scale)
    return DEMO_IDS + (TEST_ONLY_IDS if scale == "test" else ())


# The two processes' shares of the class (about even on 2 cores at demo scale); nanogpt_clean's share also
# writes what is made from its checkpoint, after it.
_SHARES = (("nanogpt_clean", "broken_file", "copied_model", "s000_encoder", "s001_pre_ln", "s004_bert",
            "hostile_pickle"),
           ("hf_gpt2_clean", "custom_code", "s002_memorise", "s003_pad_eot", "custom_crash", "custom_loop"))


def write_example_class(out_dir: Path, *, scale: str = "demo", seed: int = 0,
                        progress: Callable[[int, int], None] | None = None, processes: int | None = None) -> list[str]:
    """Write the example class into `out_dir/<id>/` and return the ids, in order.

    Every model is trained here, on the course's data (the embedded corpus, frozen with GPT-2 BPE; the
    MLM with its own WordPiece vocabulary), single-threaded and seeded, so two calls write the same
    files, whatever `processes` (default: 2 where there are 2 cores, each writing its share of the class;
    1: all here, one after another). An existing `out_dir/<id>/` is replaced; nothing else in `out_dir`
    is touched."""
    sc = get_scale(scale)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = ids(scale)
    if processes is None:
        processes = min(2, len(os.sched_getaffinity(0)))
    if processes <= 1:
        _write_share(out, sc.name, seed, todo, lambda sid: progress and progress(todo.index(sid) + 1, len(todo)))
        return list(todo)
    shares = [[i for i in share if i in todo] for share in _SHARES]
    shares[-1] += [i for i in todo if not any(i in share for share in _SHARES)]
    _write_in_processes(out, sc.name, seed, shares, len(todo), progress)
    return list(todo)


def _write_share(out: Path, scale: str, seed: int, share, done: Callable[[str], Any]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = Ctx(out, get_scale(scale), seed, Data())
        for sid in share:
            BUILDERS[sid](ctx, sid)  # each seeds itself; nanogpt_clean comes before the ones made from it
            done(sid)
    finally:
        torch.set_num_threads(threads)


def _share_process(out: str, scale: str, seed: int, share: list[str], queue) -> None:
    import traceback

    try:
        _write_share(Path(out), scale, seed, share, lambda sid: queue.put(("done", sid)))
    except BaseException as e:  # noqa: BLE001 (reported to the parent, which raises it)
        queue.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))


def _write_in_processes(out: Path, scale: str, seed: int, shares: list[list[str]], total: int,
                        progress: Callable[[int, int], None] | None) -> None:
    import multiprocessing
    import queue as queue_module

    mp = multiprocessing.get_context("spawn")  # not fork: torch's thread pools do not survive it
    queue = mp.Queue()
    workers = [mp.Process(target=_share_process, args=(str(out), scale, seed, share, queue), daemon=True)
               for share in shares if share]
    for w in workers:
        w.start()
    done = 0
    try:
        while done < total:
            try:
                kind, value = queue.get(timeout=5)
            except queue_module.Empty:
                if any(w.exitcode not in (None, 0) for w in workers) or all(w.exitcode == 0 for w in workers):
                    raise RuntimeError("a process writing the example class ended before its share was written "
                                       f"(exit codes {[w.exitcode for w in workers]})") from None
                continue
            if kind == "error":
                raise RuntimeError(f"writing the example class failed: {value}")
            done += 1
            if progress is not None:
                progress(done, total)
    finally:
        for w in workers:
            if w.is_alive() and done < total:
                w.terminate()
            w.join()
