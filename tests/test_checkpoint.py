"""The checkpoint reader: hostile and broken files (tests/hostile.py) give one clear code and run nothing;
the ways students save models (nanoGPT dicts, DDP/compile prefixes, config objects, whole pickled
modules, safetensors, Hugging Face folders, zips) are read into one flat state dict and a plain config.

Every read that needs the reader's child process (about two seconds each: it imports torch) runs once,
in parallel, in the module fixture `outcomes`; the tests below only look at the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import io
import json
import os
import pickle
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import hostile
from harness.checkpoint.archive import extract_zip
from harness.checkpoint.errors import CheckpointError
from harness.checkpoint.hf_folder import check_safetensors_header
from harness.checkpoint.limits import Limits
from harness.checkpoint.pickle_policy import called_unsafely, scan_pickle, unsafe_reason
from harness.checkpoint.read import RawCheckpoint, find_weights, read_checkpoint
from harness.checkpoint.runner import _child_env
from harness.checkpoint.unwrap import strip_prefixes, unwrap
from harness.files import fingerprint, sha256_file

# --------------------------------------------------------------------------------------------------
# What students save
# --------------------------------------------------------------------------------------------------


class TinyLM(nn.Module):
    """A student's model class: pickled whole, its class global is refused and read through a stub."""

    def __init__(self):
        super().__init__()
        self.n_heads = 2
        self.block_size = 16
        self.emb = nn.Embedding(32, 8)
        self.layers = nn.ModuleList([nn.TransformerEncoderLayer(8, 2, 16, activation="gelu", norm_first=True,
                                                                batch_first=True)])
        self.head = nn.Linear(8, 32, bias=False)
        self.register_buffer("mask", torch.tril(torch.ones(4, 4)))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)


class Act(enum.Enum):
    GELU = "gelu"
    RELU = "relu"


@dataclasses.dataclass
class GPTConfig:
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 8
    activation: Act = Act.GELU
    dropout: float = 0.1


def sd(seed: int = 0) -> dict[str, torch.Tensor]:
    return hostile.small_state_dict(seed)


def write_plain(folder: Path) -> Path:
    torch.save(sd(), folder / "plain.pt")
    return folder / "plain.pt"


def write_nanogpt(folder: Path) -> Path:
    model = {f"_orig_mod.{k}": v for k, v in sd(1).items()}
    opt = torch.optim.AdamW([nn.Parameter(torch.ones(3))])
    opt.zero_grad()
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    path = folder / "ckpt.pt"
    torch.save({"model": model, "optimizer": opt.state_dict(), "iter_num": 5, "best_val_loss": torch.tensor(3.25),
                "model_args": {"n_layer": 2, "n_head": 4, "n_embd": 8, "block_size": 64, "bias": False,
                               "vocab_size": 16, "dropout": 0.0},
                "config": {"learning_rate": 6e-4, "batch_size": 12, "n_layer": 99}}, path)
    return path


def write_ddp(folder: Path) -> Path:
    path = folder / "ddp.pth"
    torch.save({"epoch": 3, "state_dict": {f"module._orig_mod.{k}": v for k, v in sd(2).items()}}, path)
    return path


def write_namespace(folder: Path) -> Path:
    path = folder / "namespace.pt"
    args = argparse.Namespace(n_head=np.int64(4), lr=np.float64(3e-4), d_model=8, norm="pre", device="cuda:1")
    torch.save({"model_state_dict": sd(3), "config": args, "val_loss": np.float32(6.5)}, path)
    return path


def write_dataclass(folder: Path) -> Path:
    path = folder / "dataclass.pt"
    torch.save({"model": sd(4), "cfg": GPTConfig(), "ema": sd(5)}, path)
    return path


def write_whole_module(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "whole_model.pt"
    torch.save(TinyLM(), path)
    return path


def write_safetensors(folder: Path) -> Path:
    path = folder / "model.safetensors"
    save_file(sd(6), str(path), metadata={"format": "pt", "step": "100"})
    return path


def write_hf_folder(folder: Path) -> Path:
    hf = folder / "hf_model"
    hf.mkdir()
    save_file(sd(7), str(hf / "model.safetensors"))
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 8}))
    (hf / "tokenizer.json").write_text("{}")
    return hf


def write_hf_sharded(folder: Path) -> Path:
    hf = folder / "hf_sharded"
    hf.mkdir()
    tensors = sd(8)
    names = list(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:1], "model-00002-of-00002.safetensors": names[1:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(hf / shard))
        weight_map.update({k: shard for k in keys})
    (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    (hf / "config.json").write_text(json.dumps({"model_type": "bert", "num_attention_heads": 2}))
    return hf


def write_zip_submission(folder: Path) -> Path:
    path = folder / "alice.zip"
    buf = io.BytesIO()
    torch.save({"model": sd(9)}, buf)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("alice/submission.toml", "[submission]\nstudent = 'Alice'\n")
        zf.writestr("alice/ckpt/model.pt", buf.getvalue())
        zf.writestr("alice/report.md", "# report\n")
        zf.writestr("__MACOSX/alice/._report.md", "junk")
    return path


def write_legacy_clean(folder: Path) -> Path:
    path = folder / "legacy.pt"
    torch.save({"model": sd(10), "step": 7}, path, _use_new_zipfile_serialization=False)
    return path


POSITIVE = {
    "plain": write_plain, "nanogpt": write_nanogpt, "ddp": write_ddp, "namespace": write_namespace,
    "dataclass": write_dataclass, "whole_module": write_whole_module, "safetensors": write_safetensors,
    "hf_folder": write_hf_folder, "hf_sharded": write_hf_sharded, "zip_submission": write_zip_submission,
    "legacy_clean": write_legacy_clean,
}
CASES = {case.name: case for case in hostile.CASES}


# --------------------------------------------------------------------------------------------------
# Fixtures: write everything, read everything once, in parallel
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    marker = tmp_path_factory.mktemp("marker") / "PAYLOAD_RAN"
    paths = hostile.write_all(folder / "hostile", marker)
    for name, write in POSITIVE.items():
        sub = folder / "positive" / name
        sub.mkdir(parents=True)
        paths[name] = write(sub)
    return paths, marker


def _read(name: str, path: Path):
    case = CASES.get(name)
    try:
        if case is not None and case.extract:
            return extract_zip(path, path.parent / "unpacked", case.limits)
        if case is not None:
            return read_checkpoint(path, root=path.parent if case.rooted else None, limits=case.limits)
        return read_checkpoint(path)
    except CheckpointError as e:
        return e


@pytest.fixture(scope="module")
def outcomes(corpus):
    """name -> RawCheckpoint | Path (extract_zip) | CheckpointError. The parent's environment asks
    torch to drop weights_only: the reader must ignore it."""
    paths, _ = corpus
    saved = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
            futures = {name: pool.submit(_read, name, path) for name, path in paths.items()}
            return {name: f.result() for name, f in futures.items()}
    finally:
        if saved is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = saved


def ok(outcomes, name) -> RawCheckpoint:
    result = outcomes[name]
    assert isinstance(result, RawCheckpoint), f"{name}: {result!r}"
    for key, t in result.tensors.items():
        assert type(t) is torch.Tensor and t.device.type == "cpu" and t.is_contiguous(), key
    json.dumps(result.config, allow_nan=False)
    json.dumps(result.meta, allow_nan=False)
    return result


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], ordered: bool = True) -> bool:
    """Equal tensors under equal names; pickles keep the state dict's order, safetensors sorts names."""
    names_match = list(a) == list(b) if ordered else set(a) == set(b)
    return names_match and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------
# Hostile and broken files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_gives_one_code_and_runs_nothing(outcomes, corpus, name):
    case = CASES[name]
    result = outcomes[name]
    _, marker = corpus
    if case.code is None:
        assert isinstance(result, RawCheckpoint), result
    else:
        assert isinstance(result, CheckpointError), f"{name} was read: {result!r}"
        assert result.code == case.code, result.message
        assert result.message and "\n" not in result.message and "Traceback" not in result.message
        assert result.as_dict() == {"code": case.code, "message": result.message}
    assert not marker.exists(), f"{name}: a payload ran"


def test_no_payload_ran_and_nothing_escaped(outcomes, corpus):
    paths, marker = corpus
    assert not marker.exists()
    assert not (paths["zip_dotdot"].parent.parent / "escaped.txt").exists()
    assert not (paths["zip_dotdot"].parent / "escaped.txt").exists()
    assert not Path("/tmp/harness_absolute_escape.txt").exists()


def test_limit_messages_say_which_limit(outcomes):
    assert "more than 4096 MB" in outcomes["memory_bomb"].message
    assert "more than 32 MB" in outcomes["deflate_bomb_memory_limit"].message
    assert "4 s of CPU" in outcomes["cpu_bomb"].message
    assert "longer than 8 s" in outcomes["wall_bomb"].message
    assert "decompression bomb" in outcomes["deflate_bomb"].message
    assert "decompression bomb" in outcomes["zip_bomb_submission"].message
    assert "TorchScript" in outcomes["torchscript"].message
    assert "symbolic link" in outcomes["symlink_out"].message
    for name in ("reduce_os_system", "reduce_eval", "reduce_subprocess", "legacy_payload", "protocol4_payload"):
        assert "it was not run" in outcomes[name].message


def test_nan_weights_are_listed_not_fatal(outcomes):
    raw = ok(outcomes, "nan_weights")
    assert raw.nonfinite == ["ln_f.bias", "wte.weight"]
    assert torch.isnan(raw.tensors["wte.weight"][0, 0])


def test_deeply_shared_pickle_is_cut_short(outcomes):
    raw = ok(outcomes, "shared_pickle")
    assert list(raw.tensors) == ["w"] and torch.equal(raw.tensors["w"], torch.arange(4.0))
    assert any("cut short" in w for w in raw.warnings)
    assert len(json.dumps(raw.meta)) < 50 * 2**20


# --------------------------------------------------------------------------------------------------
# The ways students save models
# --------------------------------------------------------------------------------------------------


def test_plain_state_dict(outcomes, corpus):
    raw = ok(outcomes, "plain")
    assert raw.format == "torch-zip"
    assert same(raw.tensors, sd())
    assert raw.sha256 == sha256_file(corpus[0]["plain"])
    assert raw.refused_globals == [] and raw.nonfinite == [] and raw.config == {}


def test_nanogpt_checkpoint(outcomes):
    raw = ok(outcomes, "nanogpt")
    assert same(raw.tensors, sd(1))  # _orig_mod. stripped, optimizer state ignored
    assert raw.config["n_layer"] == 2  # model_args wins over the training config
    assert raw.config["vocab_size"] == 16 and raw.config["learning_rate"] == 6e-4
    assert raw.meta["iter_num"] == 5 and raw.meta["best_val_loss"] == pytest.approx(3.25)
    assert "optimizer" not in raw.meta and "model" not in raw.meta
    assert raw.meta["_harness"]["weights_at"] == "model"


def test_ddp_and_compile_prefixes(outcomes):
    raw = ok(outcomes, "ddp")
    assert same(raw.tensors, sd(2))
    assert raw.meta["epoch"] == 3


def test_argparse_namespace_config_through_a_stub(outcomes):
    raw = ok(outcomes, "namespace")
    assert same(raw.tensors, sd(3))
    assert "argparse.Namespace" in raw.refused_globals
    assert raw.config["n_head"] == 4 and raw.config["lr"] == pytest.approx(3e-4)
    assert raw.config["norm"] == "pre" and raw.config["d_model"] == 8
    assert raw.meta["val_loss"] == pytest.approx(6.5)


def test_dataclass_config_and_ema(outcomes):
    raw = ok(outcomes, "dataclass")
    assert same(raw.tensors, sd(4))  # the model, not the EMA copy
    assert any("ema" in w for w in raw.warnings)
    assert raw.config == {"n_layer": 2, "n_head": 4, "n_embd": 8, "activation": "gelu", "dropout": 0.1}
    assert any(name.endswith("GPTConfig") for name in raw.refused_globals)


def test_whole_pickled_module(outcomes):
    raw = ok(outcomes, "whole_module")
    torch.manual_seed(0)
    expected = TinyLM().state_dict()
    assert same(raw.tensors, dict(expected))
    assert "scratch" not in raw.tensors  # non-persistent buffer
    assert any(name.endswith("TinyLM") for name in raw.refused_globals)
    assert raw.config["n_heads"] == 2 and raw.config["block_size"] == 16
    layer = raw.config["modules"]["layers.0"]
    assert layer["class"].endswith("TransformerEncoderLayer")
    assert layer["norm_first"] is True and layer["activation"].endswith("gelu")
    assert raw.config["modules"]["layers.0.self_attn"]["num_heads"] == 2
    assert raw.config["modules"]["layers.0.norm1"]["eps"] == pytest.approx(1e-5)


def test_safetensors_file(outcomes):
    raw = ok(outcomes, "safetensors")
    assert raw.format == "safetensors" and same(raw.tensors, sd(6), ordered=False)
    assert raw.meta["safetensors_metadata"] == {"format": "pt", "step": "100"}


def test_hugging_face_folder(outcomes, corpus):
    raw = ok(outcomes, "hf_folder")
    folder = corpus[0]["hf_folder"]
    assert raw.format == "hf-folder" and same(raw.tensors, sd(7), ordered=False)
    assert raw.config == {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 8}
    assert raw.sha256 == fingerprint({n: sha256_file(folder / n) for n in ("config.json", "model.safetensors")})


def test_sharded_hugging_face_folder(outcomes):
    raw = ok(outcomes, "hf_sharded")
    assert raw.format == "hf-folder" and same(raw.tensors, sd(8), ordered=False)
    assert raw.config["num_attention_heads"] == 2


def test_zipped_submission(outcomes, corpus):
    raw = ok(outcomes, "zip_submission")
    assert same(raw.tensors, sd(9))
    assert raw.path.endswith("alice.zip!ckpt/model.pt")


def test_legacy_format(outcomes):
    raw = ok(outcomes, "legacy_clean")
    assert raw.format == "torch-legacy" and same(raw.tensors, sd(10)) and raw.meta["step"] == 7


# --------------------------------------------------------------------------------------------------
# Pieces that need no child process
# --------------------------------------------------------------------------------------------------


def test_extract_zip_and_find_weights(tmp_path):
    folder = extract_zip(write_zip_submission(tmp_path), tmp_path / "out")
    assert folder == (tmp_path / "out" / "alice").resolve()
    assert not (tmp_path / "out" / "__MACOSX").exists()
    assert find_weights(folder) == [folder / "ckpt" / "model.pt"]
    with pytest.raises(ValueError):
        extract_zip(write_zip_submission(tmp_path), tmp_path / "out")  # not empty


def test_find_weights_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "hf").mkdir(parents=True)
    for rel in ("z.pt", "b/model.bin", "optimizer.pt", "a/hf/model.safetensors", "b/training_args.bin",
                ".hidden/x.pt", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "a" / "hf" / "config.json").write_text("{}")
    # shallowest weights first (a folder counts as deep as its files), then by path
    assert find_weights(tmp_path) == [tmp_path / "z.pt", tmp_path / "b" / "model.bin", tmp_path / "a" / "hf"]
    assert find_weights(tmp_path / "a" / "hf") == [tmp_path / "a" / "hf"]


def test_missing_and_ambiguous(tmp_path):
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "nope.pt")
    assert e.value.code == "checkpoint-missing"
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path)
    assert e.value.code == "checkpoint-missing"
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "b.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path)
    assert e.value.code == "checkpoint-missing" and "a.pt, b.pt" in e.value.message


def test_symlink_inside_hf_folder_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    save_file(sd(), str(outside))
    hf = tmp_path / "sub" / "hf"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(hf, root=tmp_path / "sub")
    assert e.value.code == "checkpoint-unsafe"


def test_strip_prefixes():
    names = ["module._orig_mod.a.weight", "module._orig_mod.b"]
    assert strip_prefixes(names)[0] == {"module._orig_mod.a.weight": "a.weight", "module._orig_mod.b": "b"}
    assert strip_prefixes(["_orig_mod.module.a", "_orig_mod.module.b"])[0] == {"_orig_mod.module.a": "a",
                                                                            "_orig_mod.module.b": "b"}
    assert strip_prefixes(["h._orig_mod.0.w"])[0] == {"h._orig_mod.0.w": "h.0.w"}
    # `module.` only when every name has it
    assert strip_prefixes(["module.a", "b"])[0] == {"module.a": "module.a", "b": "b"}


def test_unwrap_in_memory():
    opt = {"state": {0: {"exp_avg": torch.ones(100000)}}, "param_groups": [{"lr": 1.0, "params": [0]}]}
    u = unwrap({"net": sd(), "optimizer_state": opt, "hparams": {"n_head": 4}, "step": torch.tensor(12)})
    assert same(u.tensors, sd()) and u.config == {"n_head": 4} and u.meta["step"] == 12
    u = unwrap({**sd(), "epoch": 2})  # a flat state dict with metadata beside the tensors
    assert same(u.tensors, sd()) and u.meta["epoch"] == 2
    u = unwrap({"weights": {"a": torch.ones(2)}, "best": torch.tensor(0.5)})
    assert list(u.tensors) == ["a"] and u.meta["best"] == 0.5
    with pytest.raises(CheckpointError) as e:
        unwrap({"optimizer": opt, "epoch": 1})
    assert e.value.code == "checkpoint-unreadable"
    with pytest.raises(CheckpointError):
        unwrap(torch.ones(3))


def test_globals_classified():
    for name in ("posix.system", "os.system", "builtins.eval", "builtins.exec", "__builtin__.getattr",
                 "subprocess.Popen", "commands.getoutput", "torch.hub.load", "runpy._run_code", "numpy.testing.x"):
        assert unsafe_reason(name), name
    for name in ("types.CodeType", "functools.partial", "operator.attrgetter", "threading.Thread", "code.interact"):
        assert unsafe_reason(name), name
    for name in ("argparse.Namespace", "__main__.GPTConfig", "torch.nn.modules.linear.Linear", "numpy.dtype",
                 "numpy.core.multiarray.scalar", "torch._C._nn.gelu", "builtins.slice", "pathlib.PosixPath",
                 "code.model.GPT", "types.SimpleNamespace", "logging_utils.Config"):
        assert unsafe_reason(name) is None, name
    assert called_unsafely("mylib.do_something") and not called_unsafely("mylib.Config")
    assert not called_unsafely("numpy.core.multiarray.scalar")


def test_scan_sees_protocol4_globals(tmp_path):
    names, ops = scan_pickle(pickle.dumps(hostile.ReduceSystem(tmp_path / "m"), protocol=4))
    assert "posix.system" in names and "STACK_GLOBAL" in ops


def test_safetensors_header_accepts_valid(tmp_path):
    path = write_safetensors(tmp_path)
    header = check_safetensors_header(path, "model.safetensors")
    assert set(header) == {"__metadata__", *sd(6)}


def test_child_environment_is_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    env = _child_env(tmp_path)
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in env and "PYTHONPATH" not in env
    assert env["HOME"] == str(tmp_path) and env["OMP_NUM_THREADS"] == "1" and env["CUDA_VISIBLE_DEVICES"] == ""


def test_limits_defaults():
    assert Limits() == Limits(memory_mb=4096, cpu_seconds=120, wall_seconds=180, max_file_mb=2048,
                              max_zip_total_mb=4096, max_zip_members=10000, max_zip_ratio=200.0)
