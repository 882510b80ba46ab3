"""A tiny class graded by the real command line, whose `results.json` and `grades.csv` are kept as golden
files (`tests/data/golden/`): the proof that a refactoring changed no byte of what grading writes.

Every submission is written here with fixed seeds and random weights (no training), small enough that the
whole class grades in seconds:

- `hf_gpt2/`: a Hugging Face GPT-2 folder (2 layers, d 32, GPT-2's vocabulary), a submission.toml naming the
  student and claiming a validation loss, and a per-epoch `metrics.csv` (a curve);
- `nano_ckpt/`: nanoGPT's `ckpt.pt` (`model`, `model_args`, `best_val_loss` stored with the weights), with
  97 outputs: a vocabulary mismatch, scored through the truncated vocabulary (partial metrics);
- `bert_mlm/`: a Hugging Face BERT masked LM with its own WordPiece `vocab.txt`, named in submission.toml;
- `broken.pt`: not a checkpoint at all;
- the course's reference GPT (`reference_model/gpt`, canonical format, with a `metrics.csv` curve).

The nanoGPT model is test_layouts' `NanoGPT` (karpathy/nanoGPT model.py's names). The course is the packaged
one with both protocols capped at 512 targets and calibration off.

`python tests/golden_class.py` regenerates the golden files (say why in the commit message).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "golden"
GOLDEN_FILES = ("results.json", "grades.csv")

# fields of results.json that are not a function of the inputs: removed before comparing (and from the
# golden file). `generated` is the day of the newest measurement; the sandbox boundary is this machine's. The
# class's own temporary folder, in absolute paths, is written `<root>` (`without_volatile`).
VOLATILE = (("generated",), ("custom_code_sandbox", "boundary"))

WORDS = ("the of and in to a is was for as on by with he that at from his it an are were which be this "
         "first new had also or their has one its after two who her they been state world city film").split()


def _course_text() -> str:
    from harness.course.config import capped_course_text

    text = capped_course_text(512, calibration_tokens=0)
    head, mlm = text.split("[eval.mlm]", 1)
    mlm_table, rest = mlm.split("\n\n", 1)
    mlm_table = mlm_table.replace("max_tokens = 0", "max_tokens = 512").replace("calibration_tokens = 4096",
                                                                                 "calibration_tokens = 0")
    assert "max_tokens = 512" in mlm_table and "calibration_tokens = 0" in mlm_table
    return head + "[eval.mlm]" + mlm_table + "\n\n" + rest


def _hf_gpt2(folder: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64)).save_pretrained(folder)
    (folder / "submission.toml").write_text('[submission]\nstudent = "Ada Lovelace"\n\n[claims]\nval_loss = 10.7\n'
                                            'params = 1700000\n')
    (folder / "metrics.csv").write_text("epoch,train_loss,val_loss\n1,10.9,10.85\n2,10.8,10.78\n3,10.75,10.74\n")


def _nano_ckpt(folder: Path) -> None:
    import torch

    from test_layouts import D, H, L, T, V, NanoGPT, randomize

    torch.manual_seed(1)
    model = randomize(NanoGPT(bias=True, flash=True, tied=True), seed=1)
    folder.mkdir(parents=True)
    model_args = {"n_layer": L, "n_head": H, "n_embd": D, "block_size": T, "bias": True, "vocab_size": V,
                  "dropout": 0.0}
    torch.save({"model": model.state_dict(), "model_args": model_args, "iter_num": 200,
                "best_val_loss": torch.tensor(4.25), "config": {"learning_rate": 6e-4}}, folder / "ckpt.pt")


def _bert_mlm(folder: Path) -> None:
    import torch
    import transformers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,;:'\"()-") + \
        [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)] + WORDS
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(2)
    transformers.BertForMaskedLM(cfg).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "submission.toml").write_text('[submission]\nfamily = "mlm"\ntokenizer = "vocab.txt"\n\n'
                                            '[claims]\ntrain_loss = 3.1\n')


def _reference(folder: Path) -> None:
    import torch

    from harness.models import GPT, GPTConfig, save_canonical

    torch.manual_seed(3)
    save_canonical(GPT(GPTConfig(vocab_size=50257, context=64, n_layers=2, d_model=32, n_heads=4)).eval(), folder)
    (folder / "metrics.csv").write_text("step,train_loss,val_loss\n100,9.5,9.6\n200,8.5,8.75\n")


def write_golden_class(root: Path) -> tuple[Path, Path]:
    """The class folder and the course file, under `root`."""
    class_dir = root / "class"
    class_dir.mkdir(parents=True)
    _hf_gpt2(class_dir / "hf_gpt2")
    _nano_ckpt(class_dir / "nano_ckpt")
    _bert_mlm(class_dir / "bert_mlm")
    (class_dir / "broken.pt").write_bytes(b"this is not a checkpoint\n")
    _reference(root / "reference_model" / "gpt")
    course = root / "course.toml"
    course.write_text(_course_text())
    return class_dir, course


def grade_golden_class(root: Path) -> Path:
    """Writes and grades the class with `harness grade` in a subprocess (CPU only); returns the output folder."""
    class_dir, course = write_golden_class(root)
    out = root / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "harness", "grade", str(class_dir), "--out", str(out), "--course", str(course),
           "--workers", "2", "--timeout", "600", "--no-reports"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env, cwd=root)
    if proc.returncode != 0:
        raise AssertionError(f"harness grade failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return out


def without_volatile(name: str, data: bytes, root: Path) -> bytes:
    """`data` with the value of each VOLATILE field of results.json replaced by `"<volatile>"` (on its own
    line, as written) and the temporary folder the class was written in (`root`, in any absolute path into it;
    none is written today) by `<root>`; every other byte as written."""
    text = data.decode("utf-8").replace(str(root.resolve()), "<root>")
    if name != "results.json":
        return text.encode("utf-8")
    for path in VOLATILE:
        indent = "  " * len(path)
        pattern = re.compile(rf'^({indent}"{re.escape(path[-1])}": )(?:"[^"\n]*"|null|true|false|[-0-9.e]+)(,?)$',
                             re.MULTILINE)
        text, n = pattern.subn(r'\1"<volatile>"\2', text)
        if n != 1:
            raise AssertionError(f"results.json: {'.'.join(path)} found {n} times where once was expected")
    return text.encode("utf-8")


def regenerate() -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="harness-golden-") as tmp:
        out = grade_golden_class(Path(tmp))
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for name in GOLDEN_FILES:
            (GOLDEN / name).write_bytes(without_volatile(name, (out / name).read_bytes(), Path(tmp)))
            print(f"wrote {GOLDEN / name}")


if __name__ == "__main__":
    regenerate()
