"""Notebook submissions in seed 000's shape: `assignment2_notebook.ipynb` beside `mini_gpt_checkpoint.pt`.

Seed 000 (../shared/seeds/000_*.txt) trained a 2-layer mini-GPT of "transformer encoder blocks" with learned
positions and layer norm in Colab, printed loss and perplexity per epoch, and handed in the notebook. The
notebook below is written by the test as nbformat v4 JSON, as Jupyter saves it: a Colab setup cell
(`!pip`, `drive.mount`), hyperparameter constants, a data cell, the model's class cell (our own `MiniGPT` on
`nn.TransformerEncoderLayer`, norm first, a causal mask), a training cell that would write a file and then
loop forever, its printed epochs, and a markdown table of final results.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.course.config import default_course_text
from harness.course.data import freeze, load_source
from harness.course.tokenizers import get_tokenizer
from harness.errors import HarnessError
from harness.intake.notebook import model_module, notebook_claims, read_cells
from harness.intake.submission import read_submission
from harness.metrics.clm import evaluate_clm

TEXT = ("A notebook trains a small model; its printed losses are its claims, and its class is its model. "
        "Graders rebuild the class from the notebook's definitions only, never from its training loop. ") * 4
VOCAB = sorted(set(TEXT))
V = len(VOCAB)
CONTEXT = 16

SETUP = """\
!pip install -q tiktoken
%matplotlib inline
import math
import torch
import torch.nn as nn
from torch.nn import functional as F
from google.colab import drive
drive.mount('/content/drive')
"""
HYPER = """\
n_embd = 32
n_head = 2
n_layer = 2
block_size = 16
dropout = 0.0
device = 'cuda' if torch.cuda.is_available() else 'cpu'
torch.manual_seed(1337)
"""
DATA = """\
with open('/content/drive/MyDrive/tokens.txt') as f:
    text = f.read()
chars = sorted(set(text))
vocab_size = len(chars)
"""
MODEL = """\
class MiniGPT(nn.Module):
    \"\"\"Token and learned position embeddings, encoder blocks with a causal mask, a linear head.\"\"\"

    def __init__(self, vocab_size, d_model=n_embd, n_heads=n_head, n_layers=n_layer, max_len=block_size):
        super().__init__()
        self.token_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=4 * d_model, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.token_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))
        mask = torch.triu(torch.full((T, T), float('-inf'), device=idx.device), diagonal=1)
        x = self.blocks(x, mask=mask, is_causal=True)
        return self.head(self.ln_f(x))
"""
TRAIN = """\
model = MiniGPT(vocab_size).to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
open({sentinel!r}, 'w').write('the training cell ran')
for epoch in range(10):
    pass
while True:
    pass
torch.save(model.state_dict(), 'mini_gpt_checkpoint.pt')
"""
EPOCHS = [(1, 10.30, 9.78, 29964.12, 17674.41), (5, 6.93, 7.02, 1023.98, 1121.04), (10, 6.10, 6.54, 445.86, 692.9)]
RESULTS = """\
### Final results

| Metric | Value |
|---|---|
| Final validation loss | **6.54** |
| Validation perplexity | 693 |
"""


def _code(source: str, outputs: list[dict] | None = None, count: int | None = None) -> dict:
    return {"cell_type": "code", "execution_count": count, "id": "c" + hashlib.sha1(source.encode()).hexdigest()[:8],
            "metadata": {}, "outputs": outputs or [], "source": source.splitlines(keepends=True)}


def _markdown(source: str) -> dict:
    return {"cell_type": "markdown", "id": "m" + hashlib.sha1(source.encode()).hexdigest()[:8], "metadata": {},
            "source": source.splitlines(keepends=True)}


def write_notebook(path: Path, sentinel: Path) -> None:
    """Seed 000's notebook as Jupyter writes it (nbformat 4.5). Cell numbers: 1 title, 2 setup, 3 constants,
    4 data, 5 model, 6 parameter count, 7 training (with its epochs printed), 8 results table."""
    epochs = "".join(f"Epoch {e}/10 | Train Loss: {tl:.2f} | Val Loss: {vl:.2f} | Train PPL: {tp:,.2f} | "
                     f"Val PPL: {vp:,.2f}\n" for e, tl, vl, tp, vp in EPOCHS)
    cells = [
        _markdown("# Assignment 2: Building a Small-Scale Foundation Model from Scratch\n"),
        _code(SETUP, [{"output_type": "stream", "name": "stdout", "text": ["Mounted at /content/drive\n"]}], 1),
        _code(HYPER, [{"output_type": "execute_result", "execution_count": 2, "metadata": {},
                       "data": {"text/plain": ["<torch._C.Generator at 0x7f>"]}}], 2),
        _code(DATA, [], 3),
        _code(MODEL, [], 4),
        _code("print(f'Total parameters: {sum(p.numel() for p in model.parameters()):,}')\n",
              [{"output_type": "stream", "name": "stdout", "text": ["Total parameters: 6,712,345\n"]}], 5),
        _code(TRAIN.format(sentinel=str(sentinel)),
              [{"output_type": "stream", "name": "stderr", "text": ["100%|██████████| 500/500 [00:10<00:00]\r"]},
               {"output_type": "stream", "name": "stdout", "text": epochs.splitlines(keepends=True)}], 6),
        _markdown(RESULTS),
    ]
    nb = {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                                       "accelerator": "GPU", "colab": {"provenance": []}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")


def own_model():
    """The notebook's class, built here from its constants and class cell (the test trusts its own text)."""
    scope: dict = {"torch": torch, "nn": torch.nn, "math": __import__("math")}
    exec(compile("n_embd, n_head, n_layer, block_size, dropout = 32, 2, 2, 16, 0.0\n" + MODEL, "own", "exec"), scope)
    torch.manual_seed(0)
    model = scope["MiniGPT"](V)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # far from init, so every part shows in the loss
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_claims_and_the_curve_name_their_cells(tmp_path):
    write_notebook(tmp_path / "assignment2_notebook.ipynb", tmp_path / "TRAINED")
    found = notebook_claims(tmp_path / "assignment2_notebook.ipynb")
    where = "assignment2_notebook.ipynb, cell {}".format
    # the results table states the validation numbers; the printed epochs give the rest, the params cell its count
    assert found.values == {"val_loss": 6.54, "val_ppl": 693.0, "train_loss": 6.10, "train_ppl": 445.86,
                            "params": 6_712_345.0}
    assert found.sources == {"val_loss": where(8), "val_ppl": where(8), "train_loss": where(7),
                             "train_ppl": where(7), "params": where(6)}
    assert found.curve_source == where(7)
    assert [(p["step"], p["axis"], p["val_loss"], p["val_ppl"]) for p in found.curve] == \
        [(1.0, "epoch", 9.78, 17674.41), (5.0, "epoch", 7.02, 1121.04), (10.0, "epoch", 6.54, 692.9)]


def test_a_submission_with_a_notebook_claims_from_it(tmp_path):
    write_notebook(tmp_path / "assignment2_notebook.ipynb", tmp_path / "TRAINED")
    (tmp_path / "mini_gpt_checkpoint.pt").write_bytes(b"x")
    c = read_submission("aman", tmp_path).claims
    assert (c.val_loss, c.val_ppl, c.train_loss, c.params) == (6.54, 693.0, 6.10, 6_712_345)
    assert c.sources["val_loss"] == "assignment2_notebook.ipynb, cell 8"
    assert c.curve_source == "assignment2_notebook.ipynb, cell 7" and [p.step for p in c.curve] == [1, 5, 10]
    assert not (tmp_path / "TRAINED").exists()


def test_printed_lines_of_other_trainers_are_read():
    from harness.intake.notebook import _line_metrics, _params

    assert _line_metrics("step 100: train loss 4.2100, val loss 4.5500") == {"train_loss": 4.21, "val_loss": 4.55}
    assert _line_metrics("Epoch 3 | val ppl 123.4") == {"val_ppl": 123.4}
    assert _line_metrics("iter 40: loss 3.9812, time 31.02ms, mfu 1.20%") == {"train_loss": 3.9812}
    assert _params("number of parameters: 0.05M") == 50_000.0
    assert _params("n_layer = 2") is None


def test_a_printed_history_table_is_the_curve(tmp_path):
    """`pd.DataFrame(history)` as the notebook shows it (text/plain, rows led by the index), and seed 000's
    own table printed with tabs."""
    frame = "   epoch  train_loss  val_loss\n0      1       10.30      9.78\n1      2        7.10      7.20\n"
    tabs = "Epoch\tTraining Loss\tValidation Loss\tValidation Perplexity\n1\t10.30\t9.78\t17,674\n10\t6.10\t6.54\t693\n"
    for text, last in ((frame, (2.0, 7.10, 7.20, None)), (tabs, (10.0, 6.10, 6.54, 693.0))):
        nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
            _code("pd.DataFrame(history)\n", [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                                               "data": {"text/plain": text.splitlines(keepends=True)}}], 1)]}
        (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
        found = notebook_claims(tmp_path / "nb.ipynb")
        p = found.curve[-1]
        assert (p["step"], p["train_loss"], p["val_loss"], p["val_ppl"]) == last and found.curve_source == "nb.ipynb, cell 1"
        assert found.values["val_loss"] == last[2] and found.sources["val_loss"] == "nb.ipynb, cell 1"


def test_only_imports_definitions_and_constants_make_the_model_module(tmp_path):
    write_notebook(tmp_path / "nb.ipynb", tmp_path / "TRAINED")
    built = model_module((tmp_path / "nb.ipynb").read_text())
    assert built.kept == (2, 3, 5)
    left = "\n".join(built.left_out)
    for gone in ("drive.mount", "torch.manual_seed(1337)", "with open(", "vocab_size = len(chars)",
                 "model = MiniGPT(vocab_size)", "while True:", "torch.save(", "print(f'Total"):
        assert gone in left, gone
    assert "pip install" not in built.text and "matplotlib" not in built.text
    assert "device = 'cuda' if torch.cuda.is_available() else 'cpu'" in built.text
    # a module that imports cleanly, with the training cell nowhere in it
    scope: dict = {}
    exec(compile(built.text, "nb", "exec"), scope)
    assert isinstance(scope["MiniGPT"], type) and "google" in " ".join(scope["__harness_missing__"])
    assert not (tmp_path / "TRAINED").exists()


@pytest.mark.parametrize("cell, why", [
    ("class M:\n    log = open('/tmp/x', 'w')\n", "class body runs code"),
    ("def f(x=open('/tmp/x', 'w')):\n    pass\n", "decorators or defaults run code"),
    ("@register(open('/tmp/x'))\ndef f():\n    pass\n", "decorators or defaults run code"),
    ("CONFIG = load_config()\n", "computes its value by running code"),
    ("if True:\n    import os\n", "runs code"),
    ("for i in range(3):\n    pass\n", "runs code"),
    ("x = y = 3; train()\n", "runs code"),
])
def test_what_runs_at_definition_is_left_out(cell, why):
    nb = json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [_code(cell)]})
    built = model_module(nb)
    assert any(why in w for w in built.left_out), built.left_out
    assert "open(" not in built.text and "train()" not in built.text


def test_a_cell_magic_and_a_broken_cell_are_left_out_and_future_imports_lead():
    cells = [_code("from __future__ import annotations\nimport torch\n"), _code("%%writefile model.py\nx = 1\n"),
             _code("def f(:\n"), _code("K = 3\n")]
    built = model_module(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}))
    assert built.text.startswith("from __future__ import annotations\n")
    assert built.kept == (1, 4) and "cell 2: a %% cell magic" in built.left_out
    assert any(w.startswith("cell 3: not Python") for w in built.left_out)
    compile(built.text, "nb", "exec")


def test_what_is_not_a_notebook_is_one_sentence():
    with pytest.raises(HarnessError) as e:
        read_cells("not json", "nb.ipynb")
    assert e.value.code == "notebook-invalid" and "nb.ipynb is not a Jupyter notebook" in e.value.message


@pytest.mark.slow  # a child process that imports torch
def test_the_class_is_imported_without_running_the_training_cell(tmp_path):
    """In a child process of its own (the training cell, had it run, would never end)."""
    write_notebook(tmp_path / "nb.ipynb", tmp_path / "TRAINED")
    script = textwrap.dedent(f"""
        from pathlib import Path
        from harness.sandbox.student_class import import_class
        cls, module, notes = import_class(Path({str(tmp_path)!r}), "nb.ipynb:MiniGPT", Path({str(tmp_path / 'scratch')!r}))
        print(cls.__name__, "|".join(notes))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("MiniGPT ") and "cells 2, 3, 5" in proc.stdout
    assert "google" in proc.stdout  # said: the Colab import was skipped
    assert not (tmp_path / "TRAINED").exists()


@pytest.mark.slow  # a reader process and a sandbox process
def test_the_notebook_model_is_graded_through_the_sandbox(tmp_path):
    from harness.grading.measure import Job, measure

    (tmp_path / "data.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "vocab.txt").write_text("".join(VOCAB), encoding="utf-8")
    course = default_course_text()
    for old, new in (('source = "wiki-vital"', f'source = "{tmp_path / "data.txt"}"'),
                     ('tokenizer = "gpt2"', f'tokenizer = "char:{tmp_path / "vocab.txt"}"'),
                     ("context = 64 ", f"context = {CONTEXT} "), ("d_model = [64, 256]", "d_model = [16, 256]")):
        assert old in course, old
        course = course.replace(old, new, 1)
    (tmp_path / "course.toml").write_text(course)
    sub = tmp_path / "aman"
    sub.mkdir()
    write_notebook(sub / "assignment2_notebook.ipynb", tmp_path / "TRAINED")
    model = own_model()
    torch.save(model.state_dict(), sub / "mini_gpt_checkpoint.pt")
    (sub / "submission.toml").write_text('[submission]\nfamily = "gpt"\ncheckpoint = "mini_gpt_checkpoint.pt"\n\n'
                                         '[model]\ncode = "assignment2_notebook.ipynb:MiniGPT"\n\n'
                                         f'[model.kwargs]\nvocab_size = {V}\n')
    tok = get_tokenizer(f"char:{tmp_path / 'vocab.txt'}")
    split = freeze(load_source(str(tmp_path / "data.txt")), tok).split("validation")

    class Own:
        n_outputs, max_positions = V, CONTEXT

        def logits(self, ids, attention_mask=None):
            with torch.no_grad():
                return model(ids)

    own = evaluate_clm(Own(), split, tok, context=CONTEXT).loss
    r = measure(Job(id="aman", paths=[str(sub)], course_path=str(tmp_path / "course.toml")))
    assert r.status == "graded", r.error
    assert r.checkpoint.layout == "custom-code"
    assert r.metrics.loss == pytest.approx(own, rel=1e-6)
    assert r.causal.ok
    notes = " ".join(r.warnings)
    assert "cells 2, 3, 5" in notes and "not run" in notes
    assert r.claims.sources["val_loss"] == "assignment2_notebook.ipynb, cell 8"
    assert not (tmp_path / "TRAINED").exists()


@pytest.mark.slow  # a sandbox process
def test_a_name_only_a_training_cell_assigns_is_named_in_the_error(tmp_path):
    """The lecture's pattern: `vocab_size = len(chars)` in the data cell, the class reading the global."""
    from harness.sandbox.run import SandboxedModel

    cells = [_code("import torch\nimport torch.nn as nn\n"), _code(DATA),
             _code("class Bigram(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                   "        self.table = nn.Embedding(vocab_size, vocab_size)\n\n"
                   "    def forward(self, idx):\n        return self.table(idx)\n")]
    (tmp_path / "nb.ipynb").write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}))
    with pytest.raises(HarnessError) as e:
        SandboxedModel(tmp_path, "nb.ipynb:Bigram", {"table.weight": torch.zeros(5, 5)})
    assert e.value.code == "model-code-failed"
    assert "NameError" in e.value.message and "vocab_size is assigned only in cell 2: `vocab_size = len(chars)`" \
        in e.value.message and "[model.kwargs]" in e.value.message
