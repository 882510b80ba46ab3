"""Reference training: configs, the objective, resuming after a kill, DDP against one process, outputs, sweeps.

Runs are tiny (1 layer, d_model 32, windows of 16 tokens, batches of 8, GPT-2's vocabulary) on a small
folder of wiki-vital articles, with one CPU thread so that two runs can be compared bit for bit.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.course.config import load_course
from harness.errors import HarnessError
from harness.models import load_canonical
from harness.train import (
    REFERENCE,
    LinearCrossEntropy,
    load_config,
    parse_grid,
    sweep,
    torchrun_command,
    train_reference,
    wordpiece_vocabulary,
)
from harness.train.__main__ import main as train_main
from harness.train.config import schedule
from harness.train.data import Batches, prepare_data
from harness.train.run import METRICS_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """80 train and 10 validation articles of wiki-vital, one .txt file each."""
    from harness.course.data import load_wiki_vital

    root = tmp_path_factory.mktemp("small-data")
    src = load_wiki_vital()
    for split, folder, n in (("train", "train", 80), ("validation", "valid", 10)):
        (root / folder).mkdir()
        for i, doc in enumerate(src.splits[split][:n]):
            (root / folder / f"{i:03d}.txt").write_text(doc.text, encoding="utf-8")
    return root


def tiny(data: Path, **extra) -> list[str]:
    values = dict(data=str(data), n_layers=1, d_model=32, n_heads=2, d_ff=64, context=16, batch_size=8,
                  warmup_steps=2, total_steps=12, eval_every=6, checkpoint_every=3, eval_max_tokens=300,
                  final_eval_max_tokens=500, threads=1)
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def without_speed(rows):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# --- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt", "mlm"])
def test_reference_toml_files_are_the_defaults(family):
    assert load_config(family, ROOT / "reference_model" / f"{family}.toml") == load_config(family)


def test_reference_configs_are_the_spec_models():
    gpt, mlm = load_config("gpt"), load_config("mlm")
    assert (gpt.n_layers, gpt.d_model, gpt.n_heads, gpt.d_ff, gpt.dropout, gpt.context) == (2, 128, 4, 512, 0.1, 64)
    assert (gpt.lr, gpt.beta1, gpt.beta2, gpt.weight_decay, gpt.warmup_steps, gpt.grad_clip, gpt.batch_size) == (
        1e-3, 0.9, 0.95, 0.1, 500, 1.0, 32)
    assert (mlm.n_layers, mlm.d_model, mlm.n_heads, mlm.d_ff, mlm.max_positions, mlm.context) == (3, 256, 4, 1024, 512, 128)
    assert (mlm.lr, mlm.warmup_fraction, mlm.grad_clip, mlm.batch_size, mlm.epochs) == (5e-4, 0.06, 1.0, 8, 3)
    assert set(REFERENCE["mlm"]) <= set(gpt.to_dict())


def test_overrides_are_typed_and_unknown_keys_name_the_allowed_ones(tmp_path):
    cfg = load_config("gpt", None, ["lr=5e-4", "n_layers=1", "compile=true", "name=x"])
    assert (cfg.lr, cfg.n_layers, cfg.compile, cfg.name) == (5e-4, 1, True, "x")
    with pytest.raises(HarnessError) as e:
        load_config("gpt", None, ["learning_rate=1e-3"])
    assert e.value.code == "config-unknown-key"
    assert "learning_rate" in e.value.message and "allowed:" in e.value.message and "lr" in e.value.message
    with pytest.raises(HarnessError) as e:
        load_config("gpt", None, ["wordpiece_vocab=100"])  # an mlm-only key
    assert e.value.code == "config-unknown-key"
    for bad in ("n_layers=1.5", "lr=fast", "compile=maybe", "n_layers=0", "d_model=30", "nonsense"):
        with pytest.raises(HarnessError) as e:
            load_config("gpt", None, [bad])
        assert e.value.code == "config-invalid", bad
    toml = tmp_path / "c.toml"
    toml.write_text('lr = 1e-3\nbatchsize = 4\n')
    with pytest.raises(HarnessError) as e:
        load_config("gpt", toml)
    assert e.value.code == "config-unknown-key" and "batchsize" in e.value.message
    toml.write_text('n_layers = "two"\n')
    with pytest.raises(HarnessError) as e:
        load_config("gpt", toml)
    assert e.value.code == "config-invalid"
    toml.write_text('family = "mlm"\n')
    with pytest.raises(HarnessError):
        load_config("gpt", toml)
    assert parse_grid(["lr=5e-4,1e-3", "n_layers=1"]) == {"lr": ["5e-4", "1e-3"], "n_layers": ["1"]}


def test_entry_point_reports_a_bad_key_on_one_line(capsys):
    assert train_main(["gpt", "--set", "nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope" in err[0]


def test_schedule_warms_up_then_decays_linearly():
    cfg = load_config("gpt", None, ["warmup_steps=4"])
    lr = schedule(cfg, 12)
    assert [lr(i) for i in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lr(4) == pytest.approx(1e-3) and lr(8) == pytest.approx(5e-4) and 0 < lr(11) < lr(10)
    frac = schedule(load_config("mlm"), 100)
    assert frac(5) == pytest.approx(5e-4) and frac(4) < 5e-4  # 6% of 100 steps
    with pytest.raises(HarnessError):
        schedule(cfg, 4)


# --- data and objective ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt", "mlm"])
def test_each_rank_takes_its_slice_of_the_same_global_batch(family, small_data, tmp_path):
    extra = {"tokenizer": "wordpiece", "wordpiece_vocab": 500} if family == "mlm" else {}
    cfg = load_config(family, None, tiny(small_data, **extra))
    data = prepare_data(cfg, load_course(), tmp_path)
    batches = Batches(cfg, data)
    for step in (0, 5, batches.steps_per_epoch + 1):
        x, y, rows, count = batches.get(step, 0, 1)
        parts = [batches.get(step, r, 2) for r in range(2)]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        assert all(p[3] == count for p in parts)
        again = batches.get(step, 0, 1)
        assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert not torch.equal(batches.get(0, 0, 1)[0], batches.get(batches.steps_per_epoch, 0, 1)[0])  # reshuffled
    if family == "gpt":
        x, y, _, count = batches.get(3, 0, 1)
        assert x.shape == (8, 16) and count == 8 * 16 and torch.equal(x[:, 1:].reshape(-1), y.view(8, 16)[:, :-1].reshape(-1))
    else:
        special = torch.tensor(sorted(data.tokenizer.special_ids))
        picked, total = 0, 0
        for step in range(40):
            x, y, rows, count = batches.get(step, 0, 1)
            assert not torch.isin(y, special).any()  # never a special token as a target
            picked, total = picked + rows.numel(), total + x.numel()
        assert 0.10 < picked / total < 0.17  # 15% of the non-special tokens


def test_linear_cross_entropy_gives_the_plain_loss_and_gradients():
    torch.manual_seed(0)
    for bias in (None, torch.randn(300)):
        h = torch.randn(70, 24, requires_grad=True)
        w = torch.randn(300, 24, requires_grad=True)
        b = bias.clone().requires_grad_() if bias is not None else None
        t = torch.randint(0, 300, (70,))
        plain = F.cross_entropy(F.linear(h, w, b), t, reduction="sum")
        plain.backward()
        grads = [h.grad.clone(), w.grad.clone()] + ([b.grad.clone()] if b is not None else [])
        h.grad = w.grad = None
        if b is not None:
            b.grad = None
        fused = LinearCrossEntropy.apply(h, w, b, t)
        (fused * 0.5).backward()
        assert float(fused.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)
        got = [h.grad, w.grad] + ([b.grad] if b is not None else [])
        for g_plain, g_fused in zip(grads, got):
            torch.testing.assert_close(g_fused, 0.5 * g_plain, rtol=1e-4, atol=1e-6)


def test_wordpiece_vocabulary_is_deterministic():
    texts = ["The quick brown fox jumps over the lazy dog.", "Foxes jump; dogs sleep. The end!"] * 20
    a, b = wordpiece_vocabulary(texts, 120), wordpiece_vocabulary(list(texts), 120)
    assert a == b and a[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "the" in a and "##s" in a and len(a) == len(set(a)) <= 120


# --- a run and its outputs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt_run(small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt-run") / "gpt"
    return train_reference("gpt", None, tiny(small_data), out)


def test_outputs_exist_and_load(gpt_run):
    out = gpt_run.out
    assert gpt_run.complete and gpt_run.steps == 12 and gpt_run.stopped_by is None
    assert math.isfinite(gpt_run.val_loss) and gpt_run.val_ppl == pytest.approx(math.exp(gpt_run.val_loss))
    assert gpt_run.unigram_val_ppl > 1 and gpt_run.tokens == 12 * 8 * 16 and gpt_run.tokens_per_s > 0
    model = load_canonical(out)
    assert model.config.n_layers == 1 and model.config.vocab_size == 50257
    # the Hugging Face export computes the same logits
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(out / "hf").eval()
    ids = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=1e-4, atol=1e-4)
    # metrics.csv: a train loss per step, validation at eval steps, epoch ends and the end
    rows = read_rows(out / "metrics.csv")
    assert tuple(rows[0]) == METRICS_COLUMNS and [int(r["step"]) for r in rows] == list(range(1, 13))
    assert all(float(r["train_loss"]) > 0 and float(r["tokens_per_s"]) > 0 for r in rows)
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [6, 12]
    assert float(rows[-1]["val_loss"]) == pytest.approx(gpt_run.val_loss)
    assert float(rows[0]["lr"]) == pytest.approx(5e-4) and float(rows[0]["train_ppl"]) == pytest.approx(
        math.exp(float(rows[0]["train_loss"])), rel=1e-6)
    for name in ("loss.png", "ppl.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5000
    for name in ("loss.svg", "ppl.svg"):
        assert b"<svg" in (out / name).read_bytes()[:2000] and (out / name).stat().st_size > 5000
    run = json.loads((out / "run.json").read_text())
    for key in ("config", "data", "tokenizer", "versions", "device", "seed", "world_size", "wall_s", "final",
                "baselines", "params", "checkpoint_sha256"):
        assert key in run, key
    assert run["data"]["manifest_sha256"] and run["tokenizer"]["name"] == "gpt2" and run["world_size"] == 1
    assert run["versions"]["torch"] == torch.__version__ and run["final"]["evaluation"]["protocol"] == "clm-v1"
    assert run["baselines"]["unigram_val_ppl"] == pytest.approx(gpt_run.unigram_val_ppl)
    assert run["final"]["evaluation"]["tokens"] == 500  # final_eval_max_tokens
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == 12 and len(state["rows"]) == 12


def test_a_budget_stop_then_a_continue_equals_one_uninterrupted_run(gpt_run, small_data, tmp_path):
    out = tmp_path / "stepwise"
    first = train_reference("gpt", None, tiny(small_data), out, max_steps=5)
    assert (first.steps, first.complete, first.stopped_by) == (5, False, "max_steps")
    assert (out / "model.safetensors").is_file() and read_rows(out / "metrics.csv")[-1]["val_loss"]
    second = train_reference("gpt", None, tiny(small_data), out)
    assert second.resumed_from == 5 and second.complete
    assert (out / "model.safetensors").read_bytes() == (gpt_run.out / "model.safetensors").read_bytes()
    assert without_speed(read_rows(out / "metrics.csv")) == without_speed(read_rows(gpt_run.out / "metrics.csv"))
    with pytest.raises(HarnessError) as e:  # another configuration cannot continue this run
        train_reference("gpt", None, tiny(small_data, lr=5e-4, total_steps=14), out)
    assert e.value.code == "train-resume-mismatch"


def test_a_finished_run_is_reused_as_it_is(gpt_run, small_data, tmp_path):
    out = tmp_path / "again"
    first = train_reference("gpt", None, tiny(small_data), out)
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    again = train_reference("gpt", None, tiny(small_data), out)
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before  # nothing retrained, re-evaluated or rewritten: a grader's cache key stays valid
    assert (again.complete, again.resumed_from, again.steps) == (True, first.steps, first.steps)
    assert again.val_loss == pytest.approx(first.val_loss) and again.params == first.params


def test_a_time_budget_stops_cleanly_and_writes_everything(small_data, tmp_path):
    r = train_reference("gpt", None, tiny(small_data, total_steps=200), tmp_path / "t", max_minutes=1e-6)
    assert (r.steps, r.stopped_by, r.complete) == (1, "max_minutes", False)
    assert all((tmp_path / "t" / f).is_file() for f in ("model.safetensors", "metrics.csv", "run.json", "loss.png"))
    assert json.loads((tmp_path / "t" / "run.json").read_text())["stopped_by"] == "max_minutes"


def test_resume_after_sigkill_is_bit_identical(gpt_run, small_data, tmp_path):
    """A real kill: the process dies with SIGKILL after a checkpoint; the same command continues it."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "harness.train", "gpt", *sum((["--set", s] for s in tiny(small_data)), []),
           "--out", str(out)]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.monotonic() + 120
    while killed_at is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            state = torch.load(out / "state.pt", weights_only=True)
            if 3 <= state["step"] < 12:
                proc.send_signal(signal.SIGKILL)
                killed_at = state["step"]
        except (FileNotFoundError, RuntimeError, EOFError):
            time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed_at is not None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "run.json").exists()  # it died before writing its outputs
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["resumed_from"] >= killed_at and result["complete"]
    assert (out / "model.safetensors").read_bytes() == (gpt_run.out / "model.safetensors").read_bytes()
    assert without_speed(read_rows(out / "metrics.csv")) == without_speed(read_rows(gpt_run.out / "metrics.csv"))


def test_ddp_with_two_processes_follows_the_one_process_curve(small_data, tmp_path):
    args = tiny(small_data, dropout=0.0, threads=0, total_steps=8, eval_every=4, checkpoint_every=0)
    one = train_reference("gpt", None, args, tmp_path / "one")
    cmd = torchrun_command(2, "gpt", [*sum((["--set", s] for s in args), []), "--out", str(tmp_path / "two")])
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    rows_one, rows_two = read_rows(one.out / "metrics.csv"), read_rows(tmp_path / "two" / "metrics.csv")
    assert len(rows_one) == len(rows_two) == 8
    for a, b in zip(rows_one, rows_two):
        assert a["tokens"] == b["tokens"] and a["lr"] == b["lr"]
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-5)
        assert bool(a["val_loss"]) == bool(b["val_loss"])
        if a["val_loss"]:
            assert float(a["val_loss"]) == pytest.approx(float(b["val_loss"]), abs=1e-5)
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["world_size"] == 2 and run["steps"] == 8


def test_two_nodes_rendezvous_as_the_slurm_example_does(small_data, tmp_path):
    # docs/multinode.md: one torchrun per node, --nnodes 2 --node-rank i, the head node's address; here both
    # "nodes" are this machine (one process each, gloo) and the run folder is shared, as on a cluster
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = tiny(small_data, dropout=0.0, threads=1, total_steps=4, eval_every=2, checkpoint_every=0)
    one = train_reference("gpt", None, args, tmp_path / "one")
    train_args = [*sum((["--set", a] for a in args), []), "--out", str(tmp_path / "two")]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={rank}",
                               "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
                               "-m", "harness.train", "gpt", *train_args],
                              env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outs = [n.communicate(timeout=400) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [o[1][-2000:] for o in outs]
    assert json.loads(outs[0][0].strip().splitlines()[-1])["steps"] == 4 and not outs[1][0].strip()  # one writer
    rows_one, rows_two = read_rows(one.out / "metrics.csv"), read_rows(tmp_path / "two" / "metrics.csv")
    assert [r["tokens"] for r in rows_one] == [r["tokens"] for r in rows_two]
    for a, b in zip(rows_one, rows_two):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-5)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2


def test_mlm_trains_with_the_offline_wordpiece_fallback(small_data, tmp_path, capsys):
    # conftest sets HF_HUB_OFFLINE: without a cached bert-base-uncased the fallback must be used, and said
    from harness.course.tokenizers import get_tokenizer

    try:
        get_tokenizer("bert-base-uncased")
        pytest.skip("bert-base-uncased is in the local cache: no fallback to test")
    except HarnessError:
        pass
    r = train_reference("mlm", None, tiny(small_data, context=32, wordpiece_vocab=600, total_steps=6, eval_every=3,
                                          eval_max_tokens=1500, final_eval_max_tokens=1500), tmp_path / "mlm")
    assert r.tokenizer_fallback and "bert-base-uncased" in r.tokenizer_fallback
    from harness.cli import _train_summary  # what `harness reference train` and `make demo` print of it

    capsys.readouterr()
    _train_summary(r)
    said = " ".join(capsys.readouterr().out.split())
    assert ("tokenizer: a WordPiece trained on the train split, not the course's: tokenizer 'bert-base-uncased' is "
            "not in the local Hugging Face cache") in said
    run = json.loads((tmp_path / "mlm" / "run.json").read_text())
    fb = run["tokenizer"]["fallback"]
    assert fb["wanted"] == "bert-base-uncased" and fb["vocab_size"] == 600 and run["tokenizer"]["vocab_size"] == 600
    assert (tmp_path / "mlm" / "tokenizer" / "vocab.txt").is_file() and (tmp_path / "mlm" / "tokenizer" / "tokenizer.json").is_file()
    assert run["final"]["evaluation"]["protocol"] == "mlm-v1" and math.isfinite(r.val_loss)
    model = load_canonical(tmp_path / "mlm")
    assert model.config.vocab_size == 600 and model.config.hidden == 32
    rows = read_rows(tmp_path / "mlm" / "metrics.csv")
    assert len(rows) == 6 and rows[2]["val_loss"] and rows[-1]["val_loss"]


def test_sweep_writes_one_folder_per_point_and_a_results_table(small_data, tmp_path):
    res = sweep("gpt", ["lr=1e-3,3e-3", "n_layers=1"], None, tmp_path / "sweep",
                overrides=tiny(small_data, total_steps=4, eval_every=0, checkpoint_every=0))
    assert list(res.table["run"]) == ["lr=1e-3,n_layers=1", "lr=3e-3,n_layers=1"]
    assert all((tmp_path / "sweep" / label / "model.safetensors").is_file() for label in res.table["run"])
    table = read_rows(res.path)
    assert len(table) == 2
    for key in ("lr", "n_layers", "train_loss", "train_ppl", "val_loss", "val_ppl", "params", "tokens", "wall_s"):
        assert key in table[0], key
    assert np.isfinite(res.table["val_loss"]).all()
    with pytest.raises(HarnessError) as e:  # a bad point is refused before anything trains
        sweep("gpt", ["lr=1e-3", "layers=1"], None, tmp_path / "bad", overrides=tiny(small_data))
    assert e.value.code == "config-unknown-key" and not (tmp_path / "bad").exists()


def test_llama_style_reference_trains_and_reloads(small_data, tmp_path):
    """The decoder's choices are training keys: a tiny Llama-style run (RMSNorm, RoPE, SwiGLU, GQA, untied)."""
    cfg = load_config("gpt", ROOT / "reference_model" / "llama_quick.toml")
    assert (cfg.norm_type, cfg.positions, cfg.activation, cfg.gated, cfg.n_kv_heads, cfg.bias, cfg.tied) == (
        "rmsnorm", "rope", "silu", True, 2, False, False)
    overrides = tiny(small_data, total_steps=4, eval_every=0, checkpoint_every=0, n_heads=4, n_kv_heads=1,
                     d_ff=48, logit_softcap=10.0, qk_norm="after_rope")
    r = train_reference("gpt", ROOT / "reference_model" / "llama_quick.toml", overrides, tmp_path / "llama")
    assert r.complete and math.isfinite(r.val_loss) and not (tmp_path / "llama" / "hf").exists()
    model = load_canonical(tmp_path / "llama")
    c = model.config
    assert (c.norm_type, c.positions, c.gated, c.n_kv_heads, c.tied, c.logit_softcap, c.qk_norm) == (
        "rmsnorm", "rope", True, 1, False, 10.0, "after_rope")
    with pytest.raises(HarnessError) as e:
        load_config("gpt", None, ["positions=rope", "n_heads=4", "head_dim=5"])
    assert e.value.code == "config-invalid" and "even" in e.value.message
    with pytest.raises(HarnessError) as e:
        load_config("mlm", None, ["gated=true"])
    assert e.value.code == "config-unknown-key"


def test_architecture_keys_at_their_defaults_keep_the_fingerprint():
    """Runs from before the decoder keys existed resume: their keys at defaults leave the fingerprint alone."""
    base = load_config("gpt")
    assert set(base.fingerprint_dict()).isdisjoint({"norm_type", "gated", "positions"})
    assert load_config("gpt", None, ["gated=true"]).fingerprint_dict()["gated"] is True
