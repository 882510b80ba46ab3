"""Where the submissions are measured: in threads on this machine (`local`), or as tasks of a Ray cluster (`ray`).

Both run every job the same way, `measure_in_process`: `harness.grading.measure.main` in a process of its own
session (forked from the measuring server where the batch started one, else a fresh interpreter), with
the job's wall-time and memory limits, its files in a temporary folder of the machine that runs it. What
comes back is data (the result and the weights signature's bytes), never files: a Ray node need not share
`OUT/.cache` with the grader, and only the grader writes the cache (`finish`).

A backend is a function `(jobs, finish) -> iterator of (job, result)`, yielding as measurements complete,
so that progress and a resumable cache work the same on both.

Ray: each submission is one task asking for `job.threads` CPUs (and one GPU where the cluster has any),
never retried (a crash is recorded, as here). Its paths are read on the node that runs it: on a cluster
they must be the same paths on a shared filesystem, and harness must be installed on every node; a
single-machine cluster just works. Ray is an extra: `pip install 'harness[ray]'`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from harness import __version__, forkserver
from harness.errors import HarnessError
from harness.grading.measure import Job
from harness.grading.results import Measurement

# what the measuring process reads from its environment, sent along to a Ray node whose own may lack it
FORWARDED_ENV = ("HARNESS_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
CANCEL_WAIT_S = 10.0  # how long a stopped batch waits for its cancelled Ray tasks to end their processes


@dataclass
class Measured:
    result: Measurement
    signature: bytes | None = None  # the weights signature, an .npy file's bytes
    cacheable: bool = True  # False: a crash that may be the machine's doing (memory taken by others), or ours


Finish = Callable[[Job, Measured], Measurement]
Backend = Callable[[list[Job], Finish], Iterator[tuple[Job, Measurement]]]


def error_result(sid: str, code: str, message: str) -> Measurement:
    return Measurement.failed(sid, code, message, version=__version__)


# The measuring process's fork server imports what measuring imports (transformers too, where installed:
# an MLM's tokenizer and Hugging Face folders need it), never CUDA: a worker picks its device after the fork;
# and it reads GPT-2's tokenizer once (`measure.warm_up`), which each worker would otherwise read again.
MEASURER = forkserver.Kind(
    name="measure", entry="harness.grading.measure:main", isolated=False,
    preload=("torch", "numpy", "safetensors.torch", "tiktoken", "harness.processes", "harness.grading.measure",
             "harness.grading.private", "harness.checkpoint.read", "harness.course.data",
             "harness.course.tokenizers", "harness.course.tokenizer_files", "harness.intake.submission",
             "harness.metrics.score", "harness.metrics.fused", "harness.metrics.candidates",
             "harness.metrics.causality", "harness.metrics.samples", "harness.models.build", "harness.models.hf",
             "harness.sandbox.custom_code", "harness.sandbox.run", "harness.sandbox.student_class", "numpy.random",
             "tiktoken.load", "transformers", "transformers.tokenization_utils_fast",
             "transformers.models.bert.tokenization_bert"),
    warm="harness.grading.measure:warm_up", lazy=False)


def measure_in_process(job: Job, env: dict[str, str] | None = None) -> Measured:
    """One submission in its own process group; whatever happens, a result comes back."""
    with tempfile.TemporaryDirectory(prefix="harness-job-") as tmp:
        job_file, out_file, sig_file = Path(tmp) / "job.json", Path(tmp) / "out.json", Path(tmp) / "signature.npy"
        log_file = Path(tmp) / "log.txt"
        job_file.write_text(json.dumps(replace(job, signature_path=str(sig_file)).__dict__))
        full_env = {**os.environ, "OMP_NUM_THREADS": str(job.threads)}
        if job.device.startswith("cuda:"):
            full_env["CUDA_VISIBLE_DEVICES"] = job.device.split(":")[1]
        full_env.update(env or {})
        ended = forkserver.run(MEASURER, [str(job_file), str(out_file)], cwd=Path(tmp), env=full_env,
                               stdout=log_file, stderr=log_file, timeout_s=job.timeout_s)
        if ended.timed_out:
            return Measured(error_result(job.id, "grading-timeout", f"grading took longer than {job.timeout_s:g} s "
                                         "and was stopped"))
        if ended.code != 0 or not out_file.exists():
            log = log_file.read_bytes() if log_file.is_file() else b""
            tail = [line for line in log.decode("utf-8", "replace").splitlines() if line.strip()]
            why = "out of memory" if ended.code in (-9, 137) else f"exit code {ended.code}"
            last = tail[-1][:200] if tail else ""
            message = f"grading crashed ({why}){': ' + last if last else ''}"
            return Measured(error_result(job.id, "grading-crashed", message), cacheable=False)
        return Measured(Measurement.from_json(json.loads(out_file.read_text())),
                        sig_file.read_bytes() if sig_file.is_file() else None)


def backend(name: str, *, workers: int, address: str | None = None) -> Backend:
    """The backend called `name`; an unknown name, or Ray not installed, fails here, before any work."""
    if name == "local":
        return functools.partial(run_local, workers=workers)
    if name == "ray":
        _import_ray()
        return functools.partial(run_ray, address=address)
    raise HarnessError("backend-unknown", f"unknown backend {name!r}: choose local or ray")


# --- local: threads, one process per submission ---------------------------------------------------


def _devices(workers: int) -> list[str]:
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:
        n = 0
    return [f"cuda:{i % n}" for i in range(workers)] if n else ["cpu"] * workers


def local_servers(threads: int) -> dict[str, str]:
    """The local backend's fork servers, started now where they are not running (each imports for a couple
    of seconds, beside whatever the caller does meanwhile): the measuring one, whose workers run `threads`
    threads (OMP_NUM_THREADS, as `measure_in_process` sets it), and the checkpoint reader's, which serves
    every measuring process (they are gone before this one). Returns what a measuring process is told."""
    forkserver.address(MEASURER, env={"OMP_NUM_THREADS": str(threads)})  # first: every worker waits for it
    from harness.checkpoint.runner import READER  # it imports torch: not for whoever imports the backends

    read_server = forkserver.address(READER)
    return {READER.address_env: read_server} if read_server else {}


def run_local(jobs: list[Job], finish: Finish, *, workers: int) -> Iterator[tuple[Job, Measurement]]:
    """`workers` threads; each measures one job at a time and caches it (`finish`) as soon as it is done."""
    workers = max(1, workers)
    devices = _devices(workers)
    jobs = [replace(job, device=devices[i % len(devices)]) for i, job in enumerate(jobs)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # servers pay from their second fork on (one job: fresh processes, as `harness check`, unless the
        # caller started them already)
        env = local_servers(jobs[0].threads) if jobs and (len(jobs) > 1 or forkserver.running(MEASURER)) else {}
        futures = {pool.submit(lambda j: finish(j, measure_in_process(j, env)), job): job for job in jobs}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


# --- Ray: one task per submission --------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ImportError:
        raise HarnessError("ray-missing", "the Ray backend needs Ray, which is not installed: "
                           "pip install 'harness[ray]'") from None
    return ray


def _ray_task(job: Job, env: dict[str, str]) -> Measured:
    """On the node: the job is relabelled with the GPU Ray gave the task, which `measure_in_process` makes
    the measuring process's only visible device, as for a local worker; the result names it."""
    for path in job.paths + ([job.course_path] if job.course_path else []):
        if not os.path.exists(path):  # not the submission's fault: fail the batch rather than cache an error
            raise FileNotFoundError(f"{path} cannot be read on Ray node {os.uname().nodename}: every node must see "
                                    "the submissions and the course under the same path (a shared filesystem)")
    if job.device.startswith("cuda"):
        import ray

        job = replace(job, device=f"cuda:{ray.get_gpu_ids()[0]}")
    return measure_in_process(job, env)


def run_ray(jobs: list[Job], finish: Finish, *, address: str | None = None) -> Iterator[tuple[Job, Measurement]]:
    """Every job a Ray task at once; the cluster's free CPUs (and GPUs) decide how many run together. Each
    result is cached by `finish` here, on the grader, as it arrives: a batch stopped half-way resumes."""
    if not jobs:
        return
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            # quiet: the core prints nothing (Ray's own notices would reach the grader's terminal)
            ray.init(address=address or None, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False)
        except ConnectionError as e:
            raise HarnessError("ray-unreachable", f"no Ray cluster at {address}: {e}") from None
    pending: dict[Any, Job] = {}
    try:
        most = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        threads = max(job.threads for job in jobs)
        if threads > most:
            raise HarnessError("ray-too-few-cpus", f"each submission asks for {threads} CPUs and the largest Ray "
                               f"node has {most:g}: raise --workers")
        gpu = ray.cluster_resources().get("GPU", 0) >= 1
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        task = ray.remote(max_retries=0)(_ray_task)
        for job in jobs:
            job = replace(job, device="cuda:0" if gpu else "cpu")
            pending[task.options(num_cpus=job.threads, num_gpus=1 if gpu else 0).remote(job, env)] = job
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ref)
            yield job, finish(job, _ray_get(ray, ref, job))
    finally:
        if pending:  # stopped (Ctrl-C, an error): a KeyboardInterrupt in each task kills its measuring process
            for ref in pending:
                ray.cancel(ref)
            ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
        if started:
            ray.shutdown()


def _ray_get(ray, ref, job: Job) -> Measured:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # our code failed on the node: harness missing, paths unreadable
        why = (str(e.cause if e.cause is not None else e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise HarnessError("ray-task-failed", f"the Ray task measuring {job.id} failed: {why}") from None
    except ray.exceptions.RayError as e:  # its worker or node died (Ray's memory monitor, a lost node)
        return Measured(error_result(job.id, "grading-crashed", f"grading crashed (the Ray worker died: "
                                     f"{type(e).__name__})"), cacheable=False)
