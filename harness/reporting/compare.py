"""Runs compared: reference training runs, sweeps, training logs and graded submissions, loaded as one
shape (`load_runs`: {"name", "curve", "summary", "config", "source"}) and rendered side by side
(`render_comparison`: overlaid curves, metric and config tables) — `harness report compare`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import __version__
from harness.errors import HarnessError
from harness.grading.results import ClassResults, Metrics, ModelInfo, SubmissionResult
from harness.intake.claims import Claims
from harness.intake.logs import METRICS, curve_rows, find_columns, read_rows
from harness.reporting import figures as figs
from harness.reporting.format import DASH, finite, fmt_int, fmt_loss, fmt_num, fmt_ppl
from harness.reporting.pdf import created, figure, page, render_html, write_pdf
from harness.reporting.views import find_submission, student_curve

METRIC_ORDER = ("val_loss", "val_ppl", "train_loss", "train_ppl", "bits_per_byte", "word_ppl", "accuracy", "params",
                "steps", "tokens", "tokens_per_s", "wall_s", "time_s", "score")
# Outcomes of a run, not settings: recognised by name (`max_steps`, `warmup_steps` are settings; `steps` is not).
_METRIC_WORDS = ("loss", "ppl", "perplexity", "accuracy", "bits_per_byte", "score")
_METRIC_NAMES = set(METRIC_ORDER) | {"complete", "wall_time", "time", "elapsed", "duration"}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HarnessError("run-invalid", f"cannot read {path} as JSON: {e}") from None


def _reference_run(folder: Path) -> dict:
    curve = curve_rows(read_rows(folder / "metrics.csv")) if (folder / "metrics.csv").is_file() else []
    info = _read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
    info = info if isinstance(info, dict) else {}
    final = info.get("final") if isinstance(info.get("final"), dict) else {}
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    summary: dict[str, Any] = {k: v for k, v in final.items() if k not in ("evaluation", "train_loss_window")}
    for k in ("params", "tokens", "steps", "wall_s", "tokens_per_s"):  # what `harness reference train` records
        if k in info and k not in summary and not isinstance(info[k], (dict, list)):
            summary[k] = info[k]
    if curve and not any(k in summary for k in ("train_loss", "val_loss")):
        for k in ("train_loss", "val_loss", "train_ppl", "val_ppl"):
            v = next((p[k] for p in reversed(curve) if p.get(k) is not None), None)
            if v is not None:
                summary[k] = v
    flat_config = {k: v for k, v in _flatten(config).items() if not isinstance(v, (list, dict))}
    return {"name": folder.resolve().name, "curve": curve, "summary": summary, "config": flat_config,
            "source": str(folder)}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _submission_run(sub: SubmissionResult, source: str) -> dict:
    m = sub.metrics or Metrics()
    claims = sub.claims or Claims()
    model = sub.model or ModelInfo()
    points, _axis = student_curve(claims)
    summary = {"val_loss": m.loss, "val_ppl": m.ppl, "bits_per_byte": m.bits_per_byte, "accuracy": m.accuracy,
               "params": model.params, "score": sub.score.total}
    config = {k: getattr(model, k) for k in ("family", "n_layers", "d_model", "n_heads", "d_ff", "context", "vocab_size")
              if getattr(model, k) is not None}
    if claims.train_loss is not None:
        summary["train_loss"] = claims.train_loss
    if claims.train_ppl is not None:
        summary["train_ppl"] = claims.train_ppl
    summary = {k: v for k, v in summary.items() if v is not None}
    name = str(sub.id)
    return {"name": name, "curve": points, "summary": summary, "config": config, "source": f"{source}#{name}",
            "note": "validation values recomputed by the harness; training values as claimed"}


def _sweep_runs(folder: Path, table: Path) -> list[dict]:
    rows = read_rows(table)
    if not rows:
        raise HarnessError("run-invalid", f"{table} has no rows")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    columns = find_columns(keys)
    metric_cols = {k: columns[k] for k in METRICS if k in columns}
    name_col = columns.get("run")
    other_metrics = [k for k in keys if k not in metric_cols.values() and k != name_col and _is_metric(k)]
    config_cols = [k for k in keys if k not in metric_cols.values() and k != name_col and k not in other_metrics]
    runs = []
    for i, r in enumerate(rows):
        config = {k: r.get(k) for k in config_cols if r.get(k) is not None}
        name = str(r.get(name_col)) if name_col and r.get(name_col) is not None else \
            (", ".join(f"{k}={fmt_num(v)}" for k, v in config.items()) or f"run {i + 1}")
        summary = {canon: r.get(col) for canon, col in metric_cols.items() if r.get(col) is not None}
        summary.update({k: r.get(k) for k in other_metrics if r.get(k) is not None})
        curve = []
        for cand in (folder / name / "metrics.csv", folder / name / "log.csv", folder / f"metrics_{name}.csv",
                     folder / f"log_{name}.csv", folder / f"{name}.csv"):
            if cand.is_file() and cand != table:
                curve = curve_rows(read_rows(cand))
                break
        runs.append({"name": name, "curve": curve, "summary": summary, "config": config,
                     "source": f"{table}#{name}"})
    return runs


def load_runs(path: str | Path) -> list[dict]:
    """Every run at `path`: a reference run folder (metrics.csv + run.json), a sweep folder (results.csv: one
    row per run; per-run logs `NAME/metrics.csv` or `metrics_NAME.csv` add curves), a `results.json` (each
    submission), or a training log (.csv). `PATH#NAME` keeps the one run called NAME."""
    text = str(path)
    selector = None
    if "#" in text and not Path(text).exists():
        text, selector = text.rsplit("#", 1)
    p = Path(text)
    if not p.exists():
        raise HarnessError("run-missing", f"{p} does not exist; give a run folder, a sweep folder, a results.json"
                           " (optionally #ID) or a training log")
    if p.is_dir():
        table = next((p / n for n in ("results.csv", "results_table.csv", "sweep.csv") if (p / n).is_file()), None)
        if table is not None:
            runs = _sweep_runs(p, table)
        elif (p / "results.json").is_file():
            return load_runs(str(p / "results.json") + (f"#{selector}" if selector else ""))
        elif (p / "metrics.csv").is_file() or (p / "run.json").is_file():
            runs = [_reference_run(p)]
        else:
            raise HarnessError("run-invalid", f"{p} holds no run: expected metrics.csv and run.json (a reference run), "
                               "results.csv (a sweep) or results.json (graded submissions)")
    elif p.suffix.lower() == ".json":
        value = _read_json(p)
        if not isinstance(value, dict) or "submissions" not in value:
            raise HarnessError("run-invalid", f"{p} is not a harness results.json (no submissions)")
        try:
            results = ClassResults.from_json(value)
        except (TypeError, AttributeError, ValueError) as e:
            raise HarnessError("run-invalid", f"{p} is not a harness results.json ({e})") from None
        runs = [_submission_run(s, str(p)) for s in results.submissions if selector is None or s.id == selector]
        if selector is not None and not runs:
            find_submission(results, selector)  # raises with the ids it holds
    elif p.suffix.lower() in (".csv", ".tsv"):
        curve = curve_rows(read_rows(p))
        if not curve:
            raise HarnessError("run-invalid", f"{p} has no loss or perplexity column")
        summary = {k: next((q[k] for q in reversed(curve) if q.get(k) is not None), None)
                   for k in ("train_loss", "val_loss", "train_ppl", "val_ppl")}
        runs = [{"name": p.stem, "curve": curve, "summary": {k: v for k, v in summary.items() if v is not None},
                 "config": {}, "source": str(p)}]
    else:
        raise HarnessError("run-invalid", f"{p} is not a run: give a folder, a results.json or a .csv log")
    if selector is not None:
        runs = [r for r in runs if r["name"] == selector]
        if not runs:
            raise HarnessError("run-missing", f"{text} holds no run named {selector!r}")
    return runs


def load_run(path: str | Path) -> dict:
    """The one run at `path` (see `load_runs`); a source holding several needs `PATH#NAME`."""
    runs = load_runs(path)
    if len(runs) != 1:
        names = ", ".join(r["name"] for r in runs[:8]) + (" …" if len(runs) > 8 else "")
        raise HarnessError("run-ambiguous", f"{path} holds {len(runs)} runs ({names}); pick one with {path}#NAME "
                           "or compare them all")
    return runs[0]


# Students, nanoGPT, Hugging Face and our reference configs name the same settings differently.
_CONFIG_ALIASES = {"embed_dim": "d_model", "n_embd": "d_model", "hidden_size": "d_model", "dim": "d_model",
                   "n_layer": "n_layers", "num_layers": "n_layers", "num_hidden_layers": "n_layers",
                   "layers": "n_layers", "n_head": "n_heads", "num_heads": "n_heads",
                   "num_attention_heads": "n_heads", "heads": "n_heads", "block_size": "context",
                   "seq_len": "context", "max_len": "context", "max_position_embeddings": "context",
                   "intermediate_size": "d_ff", "learning_rate": "lr", "batch": "batch_size", "bs": "batch_size",
                   "epochs": "max_epochs", "num_epochs": "max_epochs"}


def _config_key(key: str) -> str:
    return _CONFIG_ALIASES.get(key, key)


def _is_metric(key: str) -> bool:
    k = key.lower()
    return k in _METRIC_NAMES or any(w in k for w in _METRIC_WORDS)


_METRIC_LABELS = {"val_loss": "val loss", "val_ppl": "val ppl", "train_loss": "train loss", "train_ppl": "train ppl",
                  "bits_per_byte": "bits/byte", "word_ppl": "word ppl", "accuracy": "accuracy", "params": "params",
                  "tokens": "tokens", "tokens_per_s": "tokens/s", "time_s": "time (s)", "wall_s": "wall (s)",
                  "score": "score", "unigram_val_ppl": "unigram ppl"}


def _metric_cell(key: str, v: Any) -> str:
    if v is None:
        return DASH
    if not finite(v):
        return str(v)
    if "ppl" in key or "perplexity" in key:
        return fmt_ppl(v)
    if "loss" in key or key == "bits_per_byte":
        return fmt_loss(v)
    if key == "accuracy":
        return f"{v:.1%}" if v <= 1 else fmt_num(v)
    if key in ("params", "tokens", "tokens_per_s", "steps", "wall_s"):
        return fmt_int(v)
    return fmt_num(v)


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)] or [[]]


def comparison_context(runs: Sequence[dict], *, title: str = "Run comparison", generated: str | None = None) -> dict:
    runs = [dict(r) for item in runs for r in (item if isinstance(item, list) else [item])]
    if not runs:
        raise HarnessError("run-missing", "no runs to compare")
    seen: dict[str, int] = {}
    for r in runs:  # two runs of the same name (two sweeps' "lr=1e-3") get told apart
        name = str(r.get("name") or "run")
        seen[name] = seen.get(name, 0) + 1
        r["name"] = name if seen[name] == 1 else f"{name} ({seen[name]})"
    metrics: dict[str, dict] = {}
    configs: dict[str, dict] = {}
    for r in runs:
        summary = dict(r.get("summary") or {})
        config = dict(r.get("config") or {})
        for k in list(summary):
            if not _is_metric(k) and not isinstance(summary[k], (dict, list)):
                config.setdefault(k, summary.pop(k))
        metrics[r["name"]] = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        configs[r["name"]] = {}
        for k, v in config.items():
            if not isinstance(v, (dict, list)):
                configs[r["name"]].setdefault(_config_key(k), v)
    metric_keys = [k for k in METRIC_ORDER if any(k in m for m in metrics.values())]
    metric_keys += sorted({k for m in metrics.values() for k in m} - set(metric_keys))
    best: dict[str, str] = {}
    for k in metric_keys:
        lower_better = "loss" in k or "ppl" in k or "perplexity" in k or k == "bits_per_byte"
        higher_better = k in ("accuracy", "score")
        vals = [(m[k], name) for name, m in metrics.items() if finite(m.get(k))]
        if len(vals) > 1 and (lower_better or higher_better):
            best[k] = (min(vals) if lower_better else max(vals))[1]
    metric_tables = [{"cols": [(_METRIC_LABELS.get(k, k.replace("_", " ")), k) for k in chunk],
                      "rows": [{"name": r["name"], "cells": [(_metric_cell(k, metrics[r["name"]].get(k)),
                                                              best.get(k) == r["name"]) for k in chunk]} for r in runs]}
                     for chunk in _chunks(metric_keys, 7)]
    config_keys = list(dict.fromkeys(k for c in configs.values() for k in c))
    differing = [k for k in config_keys if len({json.dumps(configs[r['name']].get(k), sort_keys=True, default=str)
                                                for r in runs}) > 1]
    shared = [(k, fmt_num(configs[runs[0]["name"]].get(k))) for k in config_keys if k not in differing]
    config_tables = [{"cols": chunk, "rows": [{"name": r["name"], "cells": [fmt_num(configs[r["name"]].get(k))
                                                                             for k in chunk]} for r in runs]}
                     for chunk in _chunks(differing, 7)] if differing else []
    drawn = figs.comparison_curves(runs)
    sources = [(r["name"], r.get("source") or DASH, r.get("note") or "") for r in runs]
    day = created(generated) if generated else dt.date.today().isoformat()
    return {
        "page": page(kind="compare", title=title, header_left=title, header_right=f"{len(runs)} runs compared",
                     footer=f"harness {__version__}", description="Comparison of training runs",
                     harness_version=None, generated=day),
        "title": title,
        "generated": day,
        "runs": runs,
        "curves": {"svg": figure(drawn[0], "Training curves of the runs") if drawn else None,
                   "caption": (f"Loss (left) and perplexity (right, log scale) of each run; {drawn[1]}. Solid: training, "
                               "dashed: validation.") if drawn else "None of these runs logged a curve."},
        "metric_tables": [t for t in metric_tables if t["cols"]],
        "config_tables": config_tables,
        "shared": shared,
        "sources": sources,
    }


def render_comparison(runs: Sequence[dict], out_pdf: Path | str, *, title: str = "Run comparison",
                      generated: str | None = None) -> Path:
    """Overlaid curves and a table of runs (each {"name", "curve", "summary"[, "config", "source"]}; a list
    inside `runs` — a sweep from `load_runs` — is expanded). `generated` (ISO date) fixes the document date."""
    ctx = comparison_context(runs, title=title, generated=generated)
    return write_pdf(render_html("compare.html", ctx), out_pdf, ctx["page"]["created"])
