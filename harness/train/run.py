"""One reference run: the loop, its checkpoints and budgets, one process or many, and its outputs."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from harness import __version__
from harness.errors import HarnessError
from harness.files import fingerprint, sha256_file, write_atomic, write_json
from harness.metrics.common import plain
from harness.train.config import load_config, schedule, seed_of
from harness.train.data import Batches, prepare_data
from harness.train.objective import Objective, build_model, make_optimizer

STATE_FILE, RUN_FILE, METRICS_FILE = "state.pt", "run.json", "metrics.csv"
STATE_FORMAT, RUN_FORMAT = "harness-train-state/1", "harness-reference/1"
METRICS_COLUMNS = ("step", "epoch", "tokens", "lr", "train_loss", "train_ppl", "val_loss", "val_ppl", "tokens_per_s")
TRAIN_LOSS_WINDOW = 50  # "final train loss" = mean over the last this many steps
GPU_SYNC_EVERY = 64  # steps a single CUDA process runs between reading its losses back


@dataclass(frozen=True)
class TrainResult:
    out: Path
    family: str
    name: str
    steps: int
    total_steps: int
    complete: bool
    stopped_by: str | None  # max_steps | max_tokens | max_minutes | None
    tokens: int
    wall_s: float
    tokens_per_s: float
    train_loss: float
    train_ppl: float
    val_loss: float
    val_ppl: float
    unigram_val_loss: float
    unigram_val_ppl: float
    params: int
    resumed_from: int | None
    tokenizer: str
    tokenizer_fallback: str | None  # why the course's tokenizer was not used

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        return d


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return format(x, ".9g")
    return str(x)


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(METRICS_COLUMNS)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in METRICS_COLUMNS])
    write_atomic(path, buf.getvalue())


def _replace_dir(tmp: Path, dest: Path) -> None:
    old = dest.with_name(f".{dest.name}.old{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def train_reference(family: str, config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                    out_dir: str | Path | None = None, *, max_steps: int | None = None, max_tokens: int | None = None,
                    max_minutes: float | None = None, progress: Callable[[int, int], None] | None = None,
                    resume: bool = True, course: Any = None) -> TrainResult:
    """Train (or continue) a reference model; see `harness.train`. `course` is a Course, a course.toml
    path or None (the packaged default). Under torchrun every process calls this; rank 0 writes."""
    from harness.course.config import Course, load_course

    cfg = load_config(family, config_path, list(overrides))
    course = course if isinstance(course, Course) else load_course(course)
    for key, value in (("max_steps", max_steps), ("max_tokens", max_tokens), ("max_minutes", max_minutes)):
        if value is not None and not value > 0:
            raise HarnessError("train-budget-invalid", f"{key} must be above 0, not {value!r}")
    run_dir = Path(out_dir) if out_dir is not None else Path("reference_model") / cfg.name
    rank, world, local_rank = dist_env()
    own_group = world > 1 and not dist.is_initialized()
    use_cuda = cfg.device == "cuda" or cfg.device == "auto" and torch.cuda.is_available()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise HarnessError("device-unavailable", "device = cuda was asked for but no CUDA device is available")
    if cfg.batch_size % world:
        raise HarnessError("config-invalid", f"batch_size ({cfg.batch_size}) must be divisible by the {world} processes")
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if own_group:
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        if not use_cuda:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            torch.set_num_threads(cfg.threads or max(1, _cores() // local_world))
            torch.use_deterministic_algorithms(True, warn_only=True)
        return _Run(cfg, course, run_dir, device, rank, world, max_steps, max_tokens, max_minutes, progress,
                    resume).train()
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
        if own_group:
            dist.destroy_process_group()


class _Run:
    def __init__(self, cfg, course, run_dir, device, rank, world, max_steps, max_tokens, max_minutes, progress, resume):
        self.cfg, self.course, self.run_dir, self.device = cfg, course, run_dir, device
        self.rank, self.world, self.progress = rank, world, progress
        self.budgets = {"max_steps": max_steps, "max_tokens": max_tokens, "max_minutes": max_minutes}
        self.writer = rank == 0
        self.started = time.perf_counter()
        if self.writer:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.data = prepare_data(cfg, course, run_dir)
        self._barrier()
        if not self.writer:
            self.data = prepare_data(cfg, course, run_dir)  # reuses what rank 0 froze and trained
        self.batches = Batches(cfg, self.data)
        self.total = cfg.total_steps or cfg.epochs * self.batches.steps_per_epoch
        self.lr_at = schedule(cfg, self.total)
        self.model = build_model(cfg, self.data.tokenizer).to(device)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.optimizer = make_optimizer(self.model, cfg)
        self.fingerprint = fingerprint({"config": cfg.fingerprint_dict(),
                                        "data": self.data.frozen.manifest_sha256})
        self.step, self.tokens, self.wall_before, self.rows = 0, 0, 0.0, []
        self.final_cap = cfg.final_eval_max_tokens or (course.clm if cfg.family == "gpt" else course.mlm).max_tokens
        self.eval_rate = 0.0
        self.resumed_from = self._resume() if resume else None
        objective: nn.Module = Objective(self.model, cfg.family, fused=device.type == "cpu")
        if cfg.compile:
            objective = torch.compile(objective)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
        self.objective = objective

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    # -- state --------------------------------------------------------------------------------------

    def _resume(self) -> int | None:
        path = self.run_dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:
            raise HarnessError("train-state-unreadable", f"{path} cannot be read ({str(e).splitlines()[0][:120]}); "
                               "delete it or pass --no-resume to start afresh") from None
        if state.get("format") != STATE_FORMAT or state.get("fingerprint") != self.fingerprint:
            raise HarnessError("train-resume-mismatch", f"{path} belongs to a run with another configuration or data; "
                               "use another --out, or --no-resume to start this folder afresh")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens, self.wall_before = state["step"], state["tokens"], state["wall_s"]
        self.rows = list(state["rows"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        random.setstate(state["rng"]["python"])
        return self.step

    def _save_state(self) -> None:
        if not self.writer:
            return
        epoch, batch_index = divmod(self.step, self.batches.steps_per_epoch)
        state = {
            "format": STATE_FORMAT, "fingerprint": self.fingerprint, "config": self.cfg.to_dict(),
            "step": self.step, "epoch": epoch, "batch_index": batch_index, "tokens": self.tokens,
            "wall_s": self.wall_before + time.perf_counter() - self.started, "rows": self.rows,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            # Batches and masks are pure functions of (seed, epoch, step) and dropout is reseeded every
            # step, so these are kept for inspection; nothing else is needed to continue exactly.
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": {"bit_generator": "PCG64", "shuffle_seed": [self.cfg.seed, epoch],
                              "mask_seed": [self.cfg.seed, 1, self.step]}},
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        write_atomic(self.run_dir / STATE_FILE, buf.getvalue())

    # -- training -----------------------------------------------------------------------------------

    def _evaluate(self, cap: int | None):
        from dataclasses import replace

        from harness.metrics.score import EvalData, score

        d = self.data
        # the curve needs the loss: no pseudo-perplexity at every evaluation
        settings = replace(self.course.eval_settings(self.cfg.family), max_tokens=cap or 0, pseudo_ppl_tokens=0)
        r = score(self.model, self.cfg.family, EvalData(d.val, d.tokenizer, d.train), settings)
        self.model.train()
        return r

    def _eval_shared(self, cap: int | None):
        t0 = time.perf_counter()
        result = self._evaluate(cap) if self.writer else None
        if self.world > 1:
            box = [result]
            dist.broadcast_object_list(box, src=0)
            result = box[0]
        size = result.tokens if self.cfg.family == "gpt" else result.stream_tokens
        self.eval_rate = size / max(time.perf_counter() - t0, 1e-9)
        return result

    def _final_eval_seconds(self, train_rate: float) -> float:
        """How long the final evaluation will take: its tokens at the rate periodic evaluations ran, or at
        three times the training rate (a forward pass only) before the first one."""
        cap = self.final_cap
        val = self.data.val
        n = int(val.tokens.size) + val.n_documents * (1 if self.cfg.family == "gpt" else 2)
        n = min(n, cap) if cap else n
        rate = self.eval_rate or 3 * train_rate
        return n / rate if rate > 0 else 0.0

    def _completed(self) -> TrainResult | None:
        """The finished run in this folder, as its run.json tells it, when that is this very run (same
        configuration and data, all steps taken, the weights it names): nothing to train or re-evaluate."""
        path, weights = self.run_dir / RUN_FILE, self.run_dir / "model.safetensors"
        if self.resumed_from is None or self.step < self.total or not path.is_file() or not weights.is_file():
            return None
        try:
            m = json.loads(path.read_text())
            if (m.get("format") != RUN_FORMAT or m.get("config_fingerprint") != self.fingerprint
                    or not m.get("complete") or m.get("steps") != self.step
                    or m.get("checkpoint_sha256") != sha256_file(weights)):
                return None
            final, base = m["final"], m["baselines"]
            return TrainResult(
                out=self.run_dir, family=m["family"], name=m["name"], steps=m["steps"], total_steps=m["total_steps"],
                complete=True, stopped_by=m.get("stopped_by"), tokens=m["tokens"], wall_s=m["wall_s"],
                tokens_per_s=0.0, train_loss=_num(final.get("train_loss")), train_ppl=_num(final.get("train_ppl")),
                val_loss=_num(final.get("val_loss")), val_ppl=_num(final.get("val_ppl")),
                unigram_val_loss=_num(base.get("unigram_val_loss")), unigram_val_ppl=_num(base.get("unigram_val_ppl")),
                params=m["params"], resumed_from=self.step, tokenizer=m["tokenizer"]["spec"],
                tokenizer_fallback=(m["tokenizer"].get("fallback") or {}).get("reason"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def train(self) -> TrainResult:
        done = self._completed()
        if done is not None:
            return done  # a finished run is reused as it is: its files stay byte for byte
        cfg, spe = self.cfg, self.batches.steps_per_epoch
        limit_steps = min(self.total, self.budgets["max_steps"] or self.total)
        deadline = self.started + 60 * self.budgets["max_minutes"] if self.budgets["max_minutes"] else math.inf
        cuda = self.device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        # One CUDA process reads its losses back every GPU_SYNC_EVERY steps, not after each one, so that the
        # host queues the next steps while the device runs; a CPU, or DDP (which reduces every step), reads each.
        sync_every = GPU_SYNC_EVERY if cuda and self.world == 1 else 1
        self.model.train()
        session_tokens, train_seconds = 0, 0.0
        pending: list[tuple[dict, torch.Tensor, int]] = []  # rows whose loss is still on the device

        def flush() -> None:
            nonlocal train_seconds, segment
            if not pending:
                return
            losses = torch.stack([loss for _, loss, _ in pending]).cpu().tolist()  # waits for the device
            now = time.perf_counter()
            train_seconds, segment = train_seconds + now - segment, now
            for (row, _, count), loss in zip(pending, losses):
                row.update(train_loss=loss / count, train_ppl=math.exp(min(loss / count, 700.0)),
                           tokens_per_s=session_tokens / train_seconds)
            pending.clear()

        stop = self._budget_hit(math.inf, limit_steps)  # the time budget is checked after a step: one at least
        segment = time.perf_counter()  # training time is counted from here to each flush
        while not stop:
            g = self.step
            inputs, targets, rows, count = self.batches.get(g, self.rank, self.world)
            if cuda:  # pinned: the copies are queued behind the device's work instead of waiting for it
                inputs, targets = inputs.pin_memory(), targets.pin_memory()
                rows = rows.pin_memory() if rows is not None else None
            inputs, targets = inputs.to(self.device, non_blocking=True), targets.to(self.device, non_blocking=True)
            rows = rows.to(self.device, non_blocking=True) if rows is not None else None
            lr = self.lr_at(g)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(seed_of(cfg.seed, 3, g, self.rank))  # dropout: a function of the step alone
            with autocast:
                loss_sum = self.objective(inputs, targets, rows)
            (loss_sum * (self.world / count)).backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step, step_tokens = g + 1, cfg.batch_size * cfg.context
            self.tokens += step_tokens
            session_tokens += step_tokens
            # the time budget covers the final evaluation too: stop when it would no longer fit
            if math.isfinite(deadline):
                so_far = train_seconds + time.perf_counter() - segment
                reserve = self._final_eval_seconds(session_tokens / so_far)
            else:
                reserve = 0.0
            stop = self._budget_hit(deadline - reserve, limit_steps)
            loss = loss_sum.detach().double()
            if self.world > 1:
                stats = torch.stack([loss, torch.tensor(float(stop is not None), dtype=torch.float64,
                                                        device=self.device)])
                dist.all_reduce(stats)  # the global loss sum; any rank out of time stops all
                if stats[1] > 0 and stop is None:
                    stop = "max_minutes"
                loss = stats[0]
            row = {"step": self.step, "epoch": round(self.step / spe, 6), "tokens": self.tokens, "lr": lr,
                   "train_loss": None, "train_ppl": None, "val_loss": None, "val_ppl": None, "tokens_per_s": None}
            self.rows.append(row)
            pending.append((row, loss, count))
            last = stop is not None
            evaluate = not last and (cfg.eval_every and self.step % cfg.eval_every == 0 or self.step % spe == 0)
            save = last or cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
            if evaluate or save or len(pending) >= sync_every:
                flush()
            if evaluate:
                r = self._eval_shared(cfg.eval_max_tokens or None)
                row.update(val_loss=r.loss, val_ppl=r.ppl)
            if save:
                self._save_state()  # before the final evaluation: a continued run sees the rows it would have
            if self.progress is not None and self.writer:
                self.progress(self.step, limit_steps)
            if evaluate or save:
                segment = time.perf_counter()  # evaluations and checkpoints are not training time
        return self._finish(None if stop == "done" else stop)

    def _budget_hit(self, deadline: float, limit_steps: int) -> str | None:
        if self.step >= self.total:
            return "done"
        if self.step >= limit_steps:
            return "max_steps"
        if self.budgets["max_tokens"] and self.tokens >= self.budgets["max_tokens"]:
            return "max_tokens"
        if time.perf_counter() >= deadline:
            return "max_minutes"
        return None

    # -- outputs ------------------------------------------------------------------------------------

    def _finish(self, stopped_by: str | None) -> TrainResult:
        cfg = self.cfg
        result = self._eval_shared(self.final_cap or None)
        rows = [dict(r) for r in self.rows]
        if rows:
            rows[-1].update(val_loss=result.loss, val_ppl=result.ppl)
        recent = [r["train_loss"] for r in rows[-TRAIN_LOSS_WINDOW:]]
        train_loss = sum(recent) / len(recent) if recent else math.nan
        wall = self.wall_before + time.perf_counter() - self.started
        fallback = self.data.fallback
        out = TrainResult(
            out=self.run_dir, family=cfg.family, name=cfg.name, steps=self.step, total_steps=self.total,
            complete=self.step >= self.total, stopped_by=stopped_by, tokens=self.tokens, wall_s=wall,
            tokens_per_s=rows[-1]["tokens_per_s"] if self.rows and rows[-1]["step"] > (self.resumed_from or 0) else 0.0,
            train_loss=train_loss, train_ppl=math.exp(min(train_loss, 700.0)) if recent else math.nan,
            val_loss=result.loss, val_ppl=result.ppl, unigram_val_loss=result.unigram_loss,
            unigram_val_ppl=math.exp(result.unigram_loss), params=self.params, resumed_from=self.resumed_from,
            tokenizer=self.data.spec, tokenizer_fallback=None if fallback is None else fallback["reason"],
        )
        if self.writer:
            self._write_outputs(rows, result, out)
        self._barrier()
        return out

    def _write_outputs(self, rows: list[dict], result, out: TrainResult) -> None:
        from harness.reporting.curves import plot_training_curves
        from harness.models import export_hf_gpt2, hf_gpt2_incompatibilities, save_canonical

        d, cfg = self.run_dir, self.cfg
        model = self.model.to("cpu") if self.device.type != "cpu" else self.model
        tmp = d / f".model.tmp{os.getpid()}"
        save_canonical(model, tmp)
        for name in ("model.safetensors", "config.json"):
            os.replace(tmp / name, d / name)
        shutil.rmtree(tmp, ignore_errors=True)
        files = ["model.safetensors", "config.json", METRICS_FILE, "loss.png", "loss.svg", "ppl.png", "ppl.svg", STATE_FILE]
        if cfg.family == "gpt" and not hf_gpt2_incompatibilities(model.config):  # a Llama-style GPT has no GPT-2 twin
            from transformers.utils import logging as hf_logging

            hf_tmp = d / f".hf.tmp{os.getpid()}"
            bar = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # no "Writing model shards" bar on stderr
            try:
                export_hf_gpt2(model, hf_tmp)
            finally:
                if bar:
                    hf_logging.enable_progress_bar()
            _replace_dir(hf_tmp, d / "hf")
            files.append("hf/")
        if self.data.fallback is not None:
            files.append("tokenizer/")
        _write_csv(d / METRICS_FILE, rows)
        plot_training_curves(rows, d, title=f"{cfg.family} reference {cfg.name!r}", unigram_loss=result.unigram_loss)
        tok = self.data.tokenizer
        manifest = {
            "format": RUN_FORMAT, "harness_version": __version__, "family": cfg.family, "name": cfg.name,
            "config": cfg.to_dict(), "config_fingerprint": self.fingerprint, "seed": cfg.seed,
            "data": {"source": self.data.frozen.manifest["source"], "manifest_sha256": self.data.frozen.manifest_sha256,
                     "train_split": "train", "validation_split": self.data.val.name,
                     "train_tokens": int(self.data.train.tokens.size), "steps_per_epoch": self.batches.steps_per_epoch},
            "tokenizer": {"spec": self.data.spec, "name": tok.name, "sha256": tok.sha256, "vocab_size": tok.vocab_size,
                          "fallback": self.data.fallback},
            "versions": {"harness": __version__, "torch": torch.__version__, "python": platform.python_version(),
                         "numpy": np.__version__},
            "device": {"type": self.device.type, "name": torch.cuda.get_device_name(self.device)
                       if self.device.type == "cuda" else platform.processor() or platform.machine(),
                       "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
                       "autocast": "bfloat16" if self.device.type == "cuda" else None, "compile": cfg.compile},
            "world_size": self.world, "params": self.params,
            "steps": out.steps, "total_steps": out.total_steps, "complete": out.complete, "stopped_by": out.stopped_by,
            "resumed_from": out.resumed_from, "tokens": out.tokens, "wall_s": out.wall_s, "tokens_per_s": out.tokens_per_s,
            "final": {"train_loss": out.train_loss, "train_ppl": out.train_ppl, "train_loss_window": TRAIN_LOSS_WINDOW,
                      "val_loss": out.val_loss, "val_ppl": out.val_ppl, "evaluation": result.to_dict()},
            "baselines": {"unigram_val_loss": out.unigram_val_loss, "unigram_val_ppl": out.unigram_val_ppl,
                          "uniform_loss": result.uniform_loss},
            "checkpoint_sha256": sha256_file(d / "model.safetensors"), "files": files,
        }
        write_json(d / RUN_FILE, plain(manifest))
        if self.device.type != "cpu":
            self.model.to(self.device)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)
