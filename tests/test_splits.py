"""Public and private splits (issue #17 item 1): the course keys, both splits frozen, per-document losses
that add up to the protocol's own, and `trained-on-validation` on real tiny models trained here: one that saw
half of the validation documents is caught, one trained on the train split alone is not, nor the reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.course.config import default_course_text, load_course, parse_course
from harness.course.data import freeze, load_source
from harness.course.tokenizers import get_tokenizer
from harness.errors import HarnessError
from harness.grading.contamination import split_gap
from harness.metrics.documents import DocumentLosses, document_losses
from harness.metrics.clm import evaluate_clm
from harness.metrics.mlm import evaluate_mlm
from harness.models import GPT, BertConfig, BertMLM, GPTConfig

RUBRIC = '\n[[rubric]]\nname = "a"\nkind = "perplexity"\npoints = 1\n'


# --- the course keys ---------------------------------------------------------------------------------------


def test_the_default_course_has_a_public_and_a_private_split_and_scores_the_private_one():
    c = load_course()
    assert (c.data_split, c.data_private) == ("validation", "test")
    assert next(x for x in c.rubric if x.kind == "perplexity").split == "private"
    assert c.tolerances.validation_gap_sigmas == 3.0 and c.tolerances.validation_gap_nats == 0.05


@pytest.mark.parametrize("data, public, private", [
    ("", "validation", "test"),  # a named source: its test split is private unless the course says otherwise
    ("split = 'validation'", "validation", "test"),  # the older key means the public split
    ("public = 'test'", "test", None),
    ("public = 'test'\nprivate = 'validation'", "test", "validation"),
    ("private = 'none'", "validation", None),
    ("source = 'corpus/'", "validation", None),  # a path may have no splits: no private one unless named
    ("source = 'corpus/'\nprivate = 'test'", "validation", "test"),
])
def test_the_course_names_the_public_and_the_private_split(data, public, private):
    c = parse_course(f"[data]\n{data}\n" + RUBRIC)
    assert (c.data_split, c.data_private) == (public, private)


@pytest.mark.parametrize("text, fragment", [
    ("[data]\nprivate = 'validation'\n" + RUBRIC, "data.private = 'validation' is the public split too"),
    ("[data]\nprivate = 'train'\n" + RUBRIC, "data.private = 'train' is not allowed; use one of: validation, test, none"),
    ("[data]\nsplit = 'validation'\npublic = 'validation'\n" + RUBRIC, "keep data.public"),
    ("[data]\nprivate = 'none'\n" + RUBRIC.replace("points = 1", "points = 1\nsplit = 'private'"),
     "rubric[0].split = 'private' but the course has no private split"),
    (RUBRIC.replace("points = 1", "points = 1\nsplit = 'hidden'"), "rubric[0].split = 'hidden' is not allowed"),
])
def test_a_wrong_split_key_names_the_key(text, fragment):
    with pytest.raises(HarnessError) as e:
        parse_course(text)
    assert e.value.code == "course-invalid" and fragment in e.value.message, e.value.message


def test_a_rubric_split_changes_the_fingerprint():
    text = default_course_text()
    assert parse_course(text).fingerprint != parse_course(text.replace('split = "private"', 'split = "public"')).fingerprint


# --- data: a corpus with three splits, frozen ---------------------------------------------------------------

ALPHABET = "abcdefghijklmnop"
DOC_CHARS = 32  # = the context: every document is one clm-v1 window of the char stream


def _random_docs(rng: np.random.Generator, n: int) -> list[str]:
    """Documents nothing can predict but memory: uniform random letters."""
    return ["".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), DOC_CHARS)) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.Generator(np.random.PCG64(2026))
    splits = {"train": _random_docs(rng, 8), "validation": _random_docs(rng, 24), "test": _random_docs(rng, 24)}
    data = root / "data"
    data.mkdir()
    for name, docs in splits.items():
        (data / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    vocab = root / "vocab.txt"
    vocab.write_text(ALPHABET, encoding="utf-8")
    tokenizer = get_tokenizer(f"char:{vocab}")
    frozen = freeze(load_source(str(data)), tokenizer)
    return {"root": root, "data": data, "vocab": vocab, "docs": splits, "tokenizer": tokenizer, "frozen": frozen}


def test_freezing_keeps_the_public_and_the_private_split(corpus):
    frozen = corpus["frozen"]
    assert frozen.split_names == ["train", "validation", "test"]
    for name in ("validation", "test"):
        split = frozen.split(name)
        assert split.n_documents == 24 and split.tokens.size == 24 * DOC_CHARS


# --- tiny models, trained here ------------------------------------------------------------------------------


def _train(texts: list[str], seed: int, steps: int = 80) -> GPT:
    """A 2-layer d_model-32 GPT trained full-batch on `texts`, one document per window (as clm-v1 reads
    them): enough steps to recall every document it saw, and nothing to learn about any other."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=len(ALPHABET), context=DOC_CHARS, n_layers=2, d_model=32, n_heads=2))
    stoi = {c: i for i, c in enumerate(ALPHABET)}
    s = torch.tensor([stoi[c] for t in texts for c in t] + [0])
    x, y = s[:-1].view(len(texts), DOC_CHARS), s[1:].view(len(texts), DOC_CHARS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(steps):
        loss = F.cross_entropy(model(x).reshape(-1, len(ALPHABET)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def models(corpus) -> dict[str, GPT]:
    docs = corpus["docs"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only waits for the first (and far longer on a busy machine)
    try:
        return {"reference": _train(docs["train"], seed=1), "clean": _train(docs["train"], seed=2),
                "contaminated": _train(docs["train"] + docs["validation"][:12], seed=3)}
    finally:
        torch.set_num_threads(threads)


def _docs(model, corpus, split: str) -> DocumentLosses:
    s = corpus["frozen"].split(split)
    r = evaluate_clm(model, s, corpus["tokenizer"], context=DOC_CHARS)
    d = document_losses(r, s, corpus["tokenizer"])
    # the documents' losses add up to the protocol's total (no end-of-text here: every target is a document's)
    assert math.fsum(d.nll) == pytest.approx(r.total_nll, rel=1e-12) and sum(d.tokens) == r.tokens
    return d


def _gap(model, corpus, reference=None, **kw):
    ref = {} if reference is None else {"reference_public": _docs(reference, corpus, "validation"),
                                        "reference_private": _docs(reference, corpus, "test")}
    titles = [f"validation document {i}" for i in range(24)]
    return split_gap(_docs(model, corpus, "validation"), _docs(model, corpus, "test"), public_titles=titles, **ref, **kw)


def test_a_model_trained_on_half_the_validation_split_is_caught(corpus, models):
    g = _gap(models["contaminated"], corpus, models["reference"])
    assert g.flagged and g.paired and g.excess > g.threshold
    # the evidence: the documents it saw, each below every held-out document
    seen = {d.index for d in g.documents if d.below_every_private}
    assert seen and seen <= set(range(12)) and g.below_every_private >= 8
    assert "validation document" in g.message() and "below every one of the 24 test documents" in g.message()
    json.dumps(g.to_dict())  # results.json takes it as is


def test_the_clean_model_and_the_reference_are_not(corpus, models):
    for name in ("clean", "reference"):
        g = _gap(models[name], corpus, models["reference"])
        assert not g.flagged, (name, g.to_dict())
    assert g.excess == pytest.approx(0, abs=1e-12)  # the reference against itself: the loop's last


def test_without_a_reference_the_gap_alone_still_catches_it(corpus, models):
    caught = _gap(models["contaminated"], corpus)
    assert caught.flagged and caught.reference_gap is None and not caught.paired
    assert "no reference" in caught.message()
    assert not _gap(models["clean"], corpus).flagged


# --- per-document losses against the protocols --------------------------------------------------------------


def test_clm_document_losses_are_each_documents_own_targets(tmp_path):
    """With an end-of-text token before each document: a document's loss is its own tokens' NLL with the
    stream before it as context; the end-of-text targets belong to no document."""
    data = tmp_path / "data"
    data.mkdir()
    texts = ["The fox jumps over the dog.", "Small models predict tokens.", "Rivers and birds."]
    for name in ("train", "validation"):
        (data / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = get_tokenizer("gpt2")
    split = freeze(load_source(str(data)), tok).split("validation")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context=64, n_layers=1, d_model=32, n_heads=2)).eval()
    r = evaluate_clm(model, split, tok, context=64)
    d = document_losses(r, split, tok)
    stream = [t for i in range(split.n_documents) for t in [tok.eot_id, *split.document(i).tolist()]]
    with torch.inference_mode():
        nll = F.cross_entropy(model(torch.tensor(stream[:-1])[None])[0].double(), torch.tensor(stream[1:]),
                              reduction="none")
    at = 0  # nll[k] is the target s[k + 1]: document 0 starts at s[1]
    for i in range(split.n_documents):
        n = len(split.document(i))
        assert d.tokens[i] == n and d.nll[i] == pytest.approx(float(nll[at : at + n].sum()), rel=1e-5)
        at += n + 1  # the next document's end-of-text target
    assert r.eot_targets == split.n_documents - 1


def test_mlm_document_losses_add_up_to_the_masked_positions(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.Generator(np.random.PCG64(5))
    texts = [" ".join(ALPHABET[i] for i in rng.integers(0, 16, int(rng.integers(5, 60)))) for _ in range(12)]
    (data / "validation.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (data / "train.jsonl").write_text(json.dumps({"text": texts[0]}) + "\n")
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *ALPHABET]) + "\n")
    tok = get_tokenizer(str(tmp_path / "vocab.txt"))
    split = freeze(load_source(str(data)), tok).split("validation")
    torch.manual_seed(0)
    model = BertMLM(BertConfig(vocab_size=tok.vocab_size, hidden=32, n_layers=1, n_heads=2, intermediate=64,
                               max_positions=32, dropout=0.0)).eval()
    r = evaluate_mlm(model, split, tok, context=32, max_tokens=300)
    d = document_losses(r, split, tok)
    assert sum(d.tokens) == r.tokens and math.fsum(d.nll) == pytest.approx(r.total_nll, rel=1e-12)
    assert all(t <= len(split.document(i)) for i, t in enumerate(d.tokens))
    assert d.tokens[-1] == 0 or sum(split.document(i).size + 2 for i in range(12)) <= 300  # the cap cut the end off
    assert DocumentLosses.from_dict(json.loads(json.dumps(d.to_dict()))) == d


# --- through `harness grade` and `harness check` ------------------------------------------------------------


def _write_class(root: Path, corpus: dict, models: dict) -> dict:
    from harness.models import save_canonical

    class_dir = root / "class"
    for sid in ("clean", "contaminated"):
        sub = class_dir / sid
        save_canonical(models[sid], sub / "model")
        (sub / "submission.toml").write_text(f'[submission]\nstudent = "Student {sid}"\nfamily = "gpt"\n'
                                             f'checkpoint = "model"\n[claims]\nval_loss = 2.5\n', encoding="utf-8")
    save_canonical(models["reference"], root / "reference")
    course = root / "course.toml"
    course.write_text(f"""
[data]
source = "{corpus['data']}"
public = "validation"
private = "test"
[eval.clm]
tokenizer = "char:{corpus['vocab']}"
context = {DOC_CHARS}
calibration_tokens = 0
[reference]
gpt = "{root / 'reference'}"
mlm = "{root / 'no-mlm-reference'}"
[[rubric]]
name = "Loads"
kind = "loads"
points = 20
[[rubric]]
name = "Held-out perplexity"
kind = "perplexity"
points = 35
split = "private"
""", encoding="utf-8")
    return {"class": class_dir, "course": course}


@pytest.fixture(scope="module")
def graded(tmp_path_factory, corpus, models, run_cli_module):
    root = tmp_path_factory.mktemp("graded")
    paths = _write_class(root, corpus, models)
    out = root / "out"
    args = ("grade", paths["class"], "--out", out, "--course", paths["course"], "--workers", "1", "--no-reports")
    proc = run_cli_module(*args)
    assert proc.returncode == 0, proc.stderr
    return {**paths, "root": root, "out": out, "args": args, "proc": proc,
            "results": json.loads((out / "results.json").read_text())}


@pytest.fixture(scope="module")
def run_cli_module():
    import os
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], capture_output=True, text=True,
                              timeout=600, env=os.environ.copy())
    return run


@pytest.mark.slow
def test_grade_scores_both_splits_and_finds_the_contaminated_model(graded):
    r = graded["results"]
    subs = {s["id"]: s for s in r["submissions"]}
    assert r["data"]["split"] == "validation" and r["data"]["private_split"] == "test"
    assert r["reference"]["gpt"]["private"]["split"] == "test"
    for sid, s in subs.items():
        assert s["private"]["split"] == "test" and s["private"]["metrics"]["tokens"] == 24 * DOC_CHARS - 1
        assert s["split_gap"]["paired"], sid
    codes = {sid: {f["code"] for f in s["findings"]} for sid, s in subs.items()}
    assert "trained-on-validation" in codes["contaminated"] and "trained-on-validation" not in codes["clean"]
    gap = subs["contaminated"]["split_gap"]
    assert gap["flagged"] and gap["below_every_private"] >= 8
    assert all(d["title"].startswith("validation.jsonl:") for d in gap["documents"])
    # the documents it was trained on are the ones named: lines 1-12 of validation.jsonl
    assert {int(d["title"].split(":")[1]) for d in gap["documents"] if d["below_every_private"]} <= set(range(1, 13))
    message = next(f["message"] for f in subs["contaminated"]["findings"] if f["code"] == "trained-on-validation")
    assert "validation.jsonl:" in message
    # the rubric scores the private split
    why = {c["name"]: c["why"] for c in subs["clean"]["score"]["criteria"]}["Held-out perplexity"]
    assert why.startswith("private split (test):")


@pytest.mark.slow
def test_a_rubric_change_rescores_from_the_cache_without_evaluating(graded, run_cli_module):
    """Issue #17 item 6: a changed weight keeps every measurement (the key holds what measures, not the rubric)."""
    course = graded["course"]
    before = graded["results"]
    course.write_text(course.read_text().replace("points = 35", "points = 50"), encoding="utf-8")
    try:
        proc = run_cli_module(*graded["args"])
        assert proc.returncode == 0, proc.stderr
        assert "0 evaluated, 3 from the cache; re-scored" in proc.stdout
        after = json.loads((graded["out"] / "results.json").read_text())
    finally:
        course.write_text(course.read_text().replace("points = 50", "points = 35"), encoding="utf-8")
    for a, b in zip(before["submissions"], after["submissions"]):
        assert (a["metrics"], a["private"], a["split_gap"]) == (b["metrics"], b["private"], b["split_gap"])
        assert a["score"]["max"] == 55 and b["score"]["max"] == 70 and a["score"]["total"] != b["score"]["total"]
    assert before["course"]["fingerprint"] != after["course"]["fingerprint"]


@pytest.mark.slow
def test_check_shows_the_public_split_only(graded, run_cli_module):
    out = graded["root"] / "check"
    proc = run_cli_module("check", graded["class"] / "contaminated", "--course", graded["course"], "--out", out,
                          "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    graded_s = next(x for x in graded["results"]["submissions"] if x["id"] == "contaminated")
    assert "private" not in s and "split_gap" not in s and s["metrics"] == graded_s["metrics"]
    assert "trained-on-validation" not in {f["code"] for f in s["findings"]}
    # no private number anywhere: neither in what it printed nor in what it wrote, nor in its cache
    private_loss = graded_s["private"]["metrics"]["total_nll"]
    written = proc.stdout + "".join(p.read_text() for p in out.rglob("*.json"))
    assert repr(private_loss) not in written and '"test"' not in written
    why = {c["name"]: c["why"] for c in s["score"]["criteria"]}["Held-out perplexity"]
    assert why.startswith("public split (validation):") and "where `harness grade` scores it" in why
    from pypdf import PdfReader

    pdf = " ".join(" ".join(p.extract_text() or "" for p in PdfReader(str(out / "contaminated.pdf")).pages).split())
    assert "Perplexity" in pdf and "Perplexity, private split" not in pdf and "Public − private" not in pdf


@pytest.mark.slow
def test_the_graders_pdf_shows_both_splits_and_the_evidence(graded, tmp_path):
    from pypdf import PdfReader

    from harness.reporting.report import render_class_report, render_student_report

    def text(pdf):
        return " ".join(" ".join(p.extract_text() or "" for p in PdfReader(str(pdf)).pages).split())

    results = graded["results"]
    student = text(render_student_report(results, "contaminated", tmp_path / "c.pdf", grader=True))
    assert "Perplexity, private split (test)" in student and "Trained on the evaluation data" in student
    assert "validation.jsonl:" in student and "Public − private loss" in student
    clean = text(render_student_report(results, "clean", tmp_path / "ok.pdf", grader=True))
    assert "Perplexity, private split (test)" in clean and "Trained on the evaluation data" not in clean
    assert "Private" in text(render_class_report(results, tmp_path / "class.pdf"))


# --- the cache key: what measures, nothing else -------------------------------------------------------------


def test_the_measurement_key_follows_what_measures_and_nothing_else():
    from harness.grading.cache_key import measurement_basis, measurement_key, measuring_code

    text = default_course_text()

    def key(t: str, **kw) -> str:
        return measurement_key("files", measurement_basis(parse_course(t), source_sha256="s", split_rule="r", **kw))

    base = key(text)
    for same in (text.replace("points = 35", "points = 50"), text.replace("val_loss_nats = 0.25", "val_loss_nats = 0.5"),
                 text.replace('name = "Small', 'name = "Big'), text.replace("d_model = [64, 256]", "d_model = [32, 256]"),
                 text.replace('split = "private"', 'split = "public"'), text.replace("full_ratio = 1.10", "full_ratio = 1.2")):
        assert same != text and key(same) == base
    for other in (text.replace("context = 64 ", "context = 32 "), text.replace('private = "test"', 'private = "validation"').replace('public = "validation"', 'public = "test"'),
                  text.replace("calibration_tokens = 4096    #", "calibration_tokens = 1024    #"),
                  text.replace('tokenizer = "gpt2"', 'tokenizer = "char:vocab.txt"'),
                  text.replace("max_new_tokens = 40 ", "max_new_tokens = 20 ")):
        assert other != text and key(other) != base
    assert key(text, private=False) != base  # `harness check` never takes a grader's entry, nor the other way
    assert measurement_key("files", measurement_basis(parse_course(text), source_sha256="t", split_rule="r")) != base
    assert measurement_key("other files", measurement_basis(parse_course(text), source_sha256="s", split_rule="r")) != base
    assert len(measuring_code()) == 64
