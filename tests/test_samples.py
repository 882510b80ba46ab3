"""What the model writes (harness.metrics.samples): continuations and fill-ins, through the LogitsModel seam.

Real files throughout: the weights are saved by the test and read back by fresh processes run with other
CPU thread counts; the student's code runs in the sandbox; the tokenizers are a character vocabulary file
and a WordPiece vocab.txt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.course.config import SampleSettings, parse_course, default_course_text
from harness.course.tokenizers import get_tokenizer
from harness.errors import HarnessError
from harness.metrics.protocol import TorchLogitsModel
from harness.metrics.samples import (
    LOGIT_GRID,
    continue_prompts,
    fill_masks,
    greedy_pick,
    rounded_logits,
    sample_pick,
)

from test_sandbox import MODEL_PY  # a student's TinyLM: embeddings, a causal running mean, a head
from harness.models.gpt import GPT, GPTConfig

CHARS = " .,abcdefghijklmnopqrstuvwxyzTIW"
SETTINGS = SampleSettings(prompts=("The river", "In a", "zz"), max_new_tokens=24, temperature=0.9, top_k=8,
                          seed=77)


def _char_tokenizer(folder: Path):
    (folder / "vocab.txt").write_text(CHARS, encoding="utf-8")
    return get_tokenizer(f"char:{folder / 'vocab.txt'}")


def _gpt(context: int = 16) -> GPT:
    """A seeded GPT with a wide initialisation, so its next token depends on the context."""
    torch.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=len(CHARS), context=context, n_layers=2, d_model=32, n_heads=4)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model


def _settings_json(samples) -> str:
    return json.dumps(samples.to_dict(), sort_keys=True, ensure_ascii=False)


# --- the decisions ---------------------------------------------------------------------------------------


def test_ties_go_to_the_lowest_id_and_survive_last_bit_noise():
    row = np.array([0.5, 2.0, 2.0, -1.0], dtype=np.float32)
    noisy = row.copy()
    noisy[2] = np.nextafter(np.float32(2.0), np.float32(3.0))  # one float32 ulp: another thread count's sum
    allowed = np.ones(4, dtype=bool)
    for r in (row, noisy):
        x = rounded_logits(torch.from_numpy(r), 4)
        assert greedy_pick(x, allowed) == 1
        # top_k = 1 keeps both tied tokens; u just below one half lands on the first, above it on the second
        assert sample_pick(x, allowed, temperature=1.0, top_k=1, u=0.49) == 1
        assert sample_pick(x, allowed, temperature=1.0, top_k=1, u=0.51) == 2
    assert rounded_logits(torch.tensor([1.0 + LOGIT_GRID / 3]), 1)[0] == 1.0


def test_sampling_follows_the_tempered_top_k_distribution():
    x = rounded_logits(torch.tensor([0.0, 1.0, 3.0, 2.0, -5.0]), 5)
    allowed = np.array([True, True, True, True, False])
    w = np.exp(np.array([1.0, 3.0, 2.0]) / 0.5)  # top 3 of the allowed, temperature 0.5, in id order
    cdf = np.cumsum(w) / w.sum()
    for u in np.linspace(0, 0.999, 37):
        expected = [1, 2, 3][int(np.searchsorted(cdf, u, side="right"))]
        assert sample_pick(x, allowed, temperature=0.5, top_k=3, u=float(u)) == expected
    assert greedy_pick(x, np.array([True, True, False, False, False])) == 1  # a disallowed maximum is skipped


# --- causal models ---------------------------------------------------------------------------------------


def test_greedy_is_the_models_argmax_cropped_to_its_context(tmp_path):
    tok = _char_tokenizer(tmp_path)
    model = _gpt(context=8)  # 8 positions: prompts of up to 9 characters plus 24 new ones must be cropped
    got = continue_prompts(model, tok, SETTINGS, context=64)
    assert got.settings["context"] == 8
    for c in got.continuations:
        ids = tok.encode(c.prompt)
        with torch.no_grad():
            for _ in range(SETTINGS.max_new_tokens):
                ids.append(int(model(torch.tensor([ids[-8:]]))[0, -1].argmax()))
        assert c.greedy == tok.decode(ids[len(tok.encode(c.prompt)):])
        assert c.greedy_tokens == c.sampled_tokens == SETTINGS.max_new_tokens and c.error is None
    assert any(c.greedy != c.sampled for c in got.continuations)
    other = continue_prompts(model, tok, SampleSettings(**{**SETTINGS.__dict__, "seed": 78}), context=64)
    assert [c.greedy for c in other.continuations] == [c.greedy for c in got.continuations]
    assert [c.sampled for c in other.continuations] != [c.sampled for c in got.continuations]


def test_a_prompt_the_tokenizer_cannot_write_is_said_and_the_others_written(tmp_path):
    tok = _char_tokenizer(tmp_path)
    got = continue_prompts(_gpt(), tok, SampleSettings(prompts=("The river", "Ünïcode"), max_new_tokens=3), context=16)
    assert got.continuations[0].error is None and len(got.continuations[0].greedy) == 3
    assert "cannot be tokenized" in got.continuations[1].error and got.continuations[1].greedy == ""


_RUN = textwrap.dedent("""
    import json, sys, torch
    from safetensors.torch import load_file
    threads = int(sys.argv[3])
    torch.set_num_threads(threads)
    from harness.course.config import SampleSettings
    from harness.course.tokenizers import get_tokenizer
    from harness.metrics.samples import continue_prompts
    from harness.models.gpt import GPT, GPTConfig
    model = GPT(GPTConfig(**json.loads(sys.argv[2])))
    model.load_state_dict(load_file(sys.argv[1]), strict=False)
    model.eval()
    s = SampleSettings(prompts=("The river", "In a", "zz"), max_new_tokens=24, temperature=0.9, top_k=8, seed=77)
    samples = continue_prompts(model, get_tokenizer("char:" + sys.argv[4]), s, context=64)
    sys.stdout.write(json.dumps(samples.to_dict(), sort_keys=True, ensure_ascii=False))
""")


@pytest.mark.slow  # three fresh Pythons importing torch
def test_samples_are_byte_identical_on_rerun_and_across_thread_counts(tmp_path):
    from safetensors.torch import save_file

    tok = _char_tokenizer(tmp_path)
    model = _gpt(context=16)
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    config = json.dumps({"vocab_size": len(CHARS), "context": 16, "n_layers": 2, "d_model": 32, "n_heads": 4})
    outs = []
    for threads in (1, 2, 1):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        proc = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path / "model.safetensors"), config, str(threads),
                               str(tmp_path / "vocab.txt")], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(proc.stdout)
    assert outs[0] == outs[1] == outs[2]
    here = _settings_json(continue_prompts(model, tok, SETTINGS, context=64))
    assert outs[0] == here  # and the same as in this process (whatever its thread count)
    written = json.loads(outs[0])
    assert written["kind"] == "continuations" and len(written["continuations"]) == 3
    assert all(len(c["sampled"]) == 24 for c in written["continuations"])


# --- student code, through the sandbox --------------------------------------------------------------------



@pytest.mark.slow  # a sandboxed Python importing torch
def test_student_code_writes_through_the_sandbox_as_it_does_in_process(tmp_path):
    from harness.sandbox.run import SandboxedModel

    tok = _char_tokenizer(tmp_path)
    (tmp_path / "model.py").write_text(MODEL_PY)
    ns: dict = {}
    exec(MODEL_PY, ns)
    torch.manual_seed(5)
    local = ns["TinyLM"](vocab_size=len(CHARS), block_size=12).eval()

    in_process = TorchLogitsModel(local, n_outputs=len(CHARS), max_positions=12)  # the same module, here

    sd = {k: v.clone() for k, v in local.state_dict().items()}
    with SandboxedModel(tmp_path, "model.py:TinyLM", sd, kwargs={"vocab_size": len(CHARS), "block_size": 12},
                        max_positions=12) as sm:
        sandboxed = continue_prompts(sm, tok, SETTINGS, context=64)
        windows = torch.randint(0, len(CHARS), (2, 12))
        assert torch.equal(sm.last_logits(windows), sm.logits(windows)[:, -1])  # only the last rows travel
    assert sandboxed.settings["context"] == 12
    assert _settings_json(sandboxed) == _settings_json(continue_prompts(in_process, tok, SETTINGS, context=64))
    assert all(c.greedy_tokens == 24 for c in sandboxed.continuations)


# --- masked LMs ------------------------------------------------------------------------------------------

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "capital", "of", "france", "is", "paris", "water",
         "made", "hydrogen", "and", "oxygen", "planet", "largest", "a", "in", ".", ",", "##s", "city", "river"]


@pytest.mark.slow  # transformers' WordPiece tokenizer
def test_masked_lm_fills_in_each_mask_with_its_top_tokens(tmp_path):
    from harness.models.mlm import BertConfig, BertMLM

    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    tok = get_tokenizer(str(tmp_path / "vocab.txt"))
    torch.manual_seed(11)
    model = BertMLM(BertConfig(vocab_size=len(WORDS), hidden=32, n_layers=2, n_heads=4, intermediate=64,
                               max_positions=16, dropout=0.0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    settings = SampleSettings(masked=("The capital of France is [MASK].", "[MASK] is made of hydrogen and [MASK].",
                                      "the " * 20 + "[MASK]"), top=5)
    model = TorchLogitsModel(model, max_positions=16)  # as grading hands it over: positions from the config
    got = fill_masks(model, tok, settings, context=128)
    first, second, too_long = got.fill_ins
    assert got.kind == "fill-ins" and len(first.masks) == 1 and len(second.masks) == 2
    assert "longer than the model's 16 positions" in too_long.error

    ids = [tok.cls_id] + tok.encode("The capital of France is ") + [tok.mask_id] + tok.encode(".") + [tok.sep_id]
    with torch.no_grad():
        p = torch.softmax(model.module(torch.tensor([ids]))[0, ids.index(tok.mask_id)].double(), -1)
    special = {0, 1, 2, 3, 4} & tok.special_ids
    order = [i for i in p.argsort(descending=True).tolist() if i not in special][:5]
    assert [f.id for f in first.masks[0]] == order
    assert [f.token for f in first.masks[0]] == [WORDS[i] for i in order]
    # from logits on the 2^-12 grid, to 4 decimals: within a few 1e-4 of the exact softmax
    assert np.allclose([f.probability for f in first.masks[0]], [float(p[i]) for i in order], atol=3e-4, rtol=0)
    assert first.masks[0][0].probability > 2 / len(WORDS)  # the wide initialisation makes it prefer something
    again = fill_masks(model, tok, settings, context=128)
    assert _settings_json(again) == _settings_json(got)


# --- the course ------------------------------------------------------------------------------------------


def test_the_default_course_asks_for_a_few_short_samples():
    course = parse_course(default_course_text())
    s = course.samples
    assert len(s.prompts) == 3 and s.max_new_tokens <= 40 and len(s.masked) == 3 and s.top == 5
    assert all("[MASK]" in m for m in s.masked)


@pytest.mark.parametrize("table, fragment", [
    ('masked = ["no marker here"]', "has no [MASK]"),
    ("temperature = 0", "samples.temperature must be > 0"),
    ("top_k = -1", "samples.top_k must be ≥ 0"),
    ("prompts = [1]", "samples.prompts must be a list of non-empty strings"),
    ("length = 3", "samples.length is not a course key"),
])
def test_bad_samples_keys_are_named(table, fragment):
    text = default_course_text()
    start, end = text.index("[samples]"), text.index("# Rubric")
    text = text[:start] + f"[samples]\n{table}\n\n" + text[end:]
    with pytest.raises(HarnessError) as e:
        parse_course(text)
    assert e.value.code == "course-invalid" and fragment in e.value.message, e.value.message


# --- the student's PDF -----------------------------------------------------------------------------------

HOSTILE = "<b>[red]x[/red]</b>\x1b[31m"


def test_the_pdf_shows_what_the_model_writes_as_text_never_interpreted(tmp_path):
    from pypdf import PdfReader

    from harness.demo.example_results import make_results
    from harness.reporting.report import render_student_report

    results = make_results()
    long = "word " * 120 + "x" * 300  # wraps, and an unbroken run wraps too
    results["submissions"][0]["samples"] = {
        "kind": "continuations", "version": "samples-v1",
        "settings": {"max_new_tokens": 40, "temperature": 0.8, "top_k": 40, "seed": 1234, "context": 64},
        "continuations": [
            {"prompt": "The river", "greedy": " " + HOSTILE, "sampled": " flows\u202eevil", "greedy_ended": True,
             "sampled_ended": False, "error": None},
            {"prompt": "In a", "greedy": long, "sampled": "", "greedy_ended": False, "sampled_ended": False,
             "error": None},
        ],
        "fill_ins": []}
    pdf = render_student_report(results, results["submissions"][0]["id"], tmp_path / "s.pdf")
    text = "".join(page.extract_text() or "" for page in PdfReader(str(pdf)).pages)
    assert "What the model writes" in text
    assert "<b>[red]x[/red]</b>\\x1b[31m" in text  # markup as text, the escape character made visible
    assert "\x1b" not in text and "\u202e" not in text and "flows\\u202eevil" in text
    assert "[end of text]" in text and "temperature 0.8" in text
    squeezed = "".join(text.split())
    assert "x" * 300 in squeezed and ("word" * 120) in squeezed  # nothing of the long text is lost


def test_the_pdf_shows_a_masked_lms_fill_ins(tmp_path):
    from pypdf import PdfReader

    from harness.demo.example_results import make_results
    from harness.reporting.report import render_student_report

    results = make_results()
    sub = results["submissions"][0]
    sub["samples"] = {"kind": "fill-ins", "version": "samples-v1", "settings": {"top": 5},
                      "continuations": [],
                      "fill_ins": [{"sentence": "The capital of France is [MASK].", "error": None,
                                    "masks": [[{"token": "paris", "id": 10, "probability": 0.4321},
                                               {"token": HOSTILE, "id": 11, "probability": 0.01}]]}]}
    pdf = render_student_report(results, sub["id"], tmp_path / "m.pdf")
    text = "".join(page.extract_text() or "" for page in PdfReader(str(pdf)).pages)
    assert "What the model writes" in text and "The capital of France is [MASK]." in text
    assert "paris 43.2%" in text and "<b>[red]x[/red]</b>\\x1b[31m 1.0%" in text


def test_a_course_without_samples_asks_for_none_and_keeps_its_fingerprint():
    text = default_course_text()
    start, end = text.index("[samples]"), text.index("# Rubric")
    without = parse_course(text[:start] + text[end:])
    assert without.samples.prompts == () and without.samples.masked == ()
    assert "samples" not in without.to_dict() and "samples" in parse_course(text).to_dict()
