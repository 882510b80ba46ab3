import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error
from harness.course.data import (
    freeze,
    load_local,
    load_source,
    load_wiki_vital,
    load_wikitext,
    read_frozen,
    split_summary,
    wiki_vital_path,
    wiki_vital_split,
)
from harness.errors import HarnessError
from harness.files import sha256_file
from harness.course.tokenizers import get_tokenizer


@pytest.fixture(scope="module")
def wiki_vital_gpt2():
    return freeze("wiki-vital", "gpt2")


def test_wiki_vital_splits_by_the_title_hash_in_title_order():
    src = load_wiki_vital()
    assert [len(src.splits[s]) for s in ("train", "validation", "test")] == [9043, 511, 479]
    for name, docs in src.splits.items():
        titles = [d.title for d in docs]
        assert titles == sorted(titles)
        assert all(wiki_vital_split(t) == name for t in titles)
    raw = json.loads(wiki_vital_path().read_text())
    assert sum(len(d) for d in src.splits.values()) == len(raw) == 10033


def test_wiki_vital_with_gpt2_has_the_documented_sizes(wiki_vital_gpt2):
    rows = {r["split"]: r for r in split_summary(wiki_vital_gpt2)}
    # SPEC.md: about 937k / 54k / 49k tokens in the clm stream (one EOT before each document)
    assert [rows[s]["stream_tokens"] for s in ("train", "validation", "test")] == [937022, 53796, 48987]
    assert [rows[s]["tokens"] for s in ("train", "validation", "test")] == [927979, 53285, 48508]
    val = wiki_vital_gpt2.split("validation")
    assert val.n_documents == 511 and val.tokens.dtype == np.int32
    tok = get_tokenizer("gpt2")
    first = load_wiki_vital().splits["validation"][0]
    assert val.document(0).tolist() == tok.encode(first.text)
    assert val.manifest_sha256 == wiki_vital_gpt2.manifest_sha256


def test_wrong_sha256_is_refused():
    with pytest.raises(HarnessError) as e:
        load_wiki_vital(expected_sha256="0" * 64)
    assert e.value.code == "data-hash-mismatch"


def test_preparing_twice_gives_identical_files(tmp_path, run_cli):
    for out in ("a", "b"):
        run_cli("data", "prepare", "--out", tmp_path / out, check=0)
    a = {p.name: sha256_file(p) for p in sorted((tmp_path / "a").iterdir())}
    b = {p.name: sha256_file(p) for p in sorted((tmp_path / "b").iterdir())}
    assert a == b and set(a) == {"manifest.json"} | {f"{s}.{k}.npy" for s in ("train", "validation", "test")
                                                      for k in ("tokens", "offsets")}
    again = run_cli("data", "prepare", "--out", tmp_path / "a", check=0)
    assert "(reused)" in again.stdout
    assert {p.name: sha256_file(p) for p in sorted((tmp_path / "a").iterdir())} == a


def test_a_damaged_frozen_file_is_prepared_afresh(tmp_path):
    first = freeze("wiki-vital", "gpt2", tmp_path)
    (tmp_path / "validation.tokens.npy").write_bytes(b"garbage")
    again = freeze("wiki-vital", "gpt2", tmp_path)
    assert not again.reused and again.manifest_sha256 == first.manifest_sha256
    assert read_frozen(tmp_path).split("validation").tokens.size == 53285


def test_a_frozen_folder_whose_manifest_says_otherwise_is_prepared_afresh(tmp_path):
    """Same key, another description: an older harness named a student's vocab.txt by its absolute path. Not
    reused, so that the manifest's sha256 (the data fingerprint) is what this freeze writes, wherever it runs."""
    (tmp_path / "t.txt").write_text("the cat sat on the mat")
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat"]))
    first = freeze(str(tmp_path / "t.txt"), str(tmp_path / "vocab.txt"), tmp_path / "frozen")
    assert first.manifest["tokenizer"]["name"] == "vocab.txt"
    old = json.loads((tmp_path / "frozen" / "manifest.json").read_text())
    old["tokenizer"]["name"] = str(tmp_path / "vocab.txt")
    (tmp_path / "frozen" / "manifest.json").write_text(json.dumps(old))
    again = freeze(str(tmp_path / "t.txt"), str(tmp_path / "vocab.txt"), tmp_path / "frozen")
    assert not again.reused and again.manifest_sha256 == first.manifest_sha256
    assert freeze(str(tmp_path / "t.txt"), str(tmp_path / "vocab.txt"), tmp_path / "frozen").reused


def test_local_text_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "one.txt").write_text("A whole document.\nTwo lines.")
    (tmp_path / "two.jsonl").write_text(json.dumps({"text": "first row"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    pq.write_table(pa.table({"text": ["parquet one", "parquet two"], "id": [1, 2]}), tmp_path / "three.parquet")
    src = load_local(tmp_path)
    assert not src.has_splits and list(src.splits) == ["validation"]
    assert [d.text for d in src.splits["validation"]] == [
        "A whole document.\nTwo lines.", "parquet one", "parquet two", "first row", "second"]  # name order
    single = load_source(str(tmp_path / "one.txt"))
    assert [d.text for d in single.splits["validation"]] == ["A whole document.\nTwo lines."]
    frozen = freeze(src, "gpt2", tmp_path / "frozen")
    assert frozen.manifest["splits"]["validation"]["documents"] == 5
    assert frozen.manifest["source"]["has_splits"] is False


def test_local_folder_with_splits(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text(f"the {split} text")
    src = load_local(tmp_path)
    assert src.has_splits and sorted(src.splits) == ["test", "train", "validation"]
    assert src.splits["validation"][0].text == "the valid text"


def _write_wikitext_copy(root: Path):
    """A local folder laid out like the hub's Salesforce/wikitext (the hub itself is out of reach here)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = {
        "train": ["", " = Alpha = \n", "", " Alpha is a letter . \n", " = = Usage = = \n", " It is used . \n",
                  " = Beta = \n", " Beta follows alpha . \n"],
        "validation": ["", " = Gamma = \n", " Gamma is third . \n"],
        "test": ["", " = Delta = \n", " Delta is fourth . \n"],
    }
    folder = root / "wikitext-2-raw-v1"
    folder.mkdir(parents=True)
    for split, rows in lines.items():
        pq.write_table(pa.table({"text": rows}), folder / f"{split}-00000-of-00001.parquet")
    return root


def test_wikitext_through_datasets_groups_articles(tmp_path):
    repo = _write_wikitext_copy(tmp_path / "wikitext")
    src = load_wikitext("wikitext-2", repo=str(repo))
    train = src.splits["train"]
    assert [d.title for d in train] == ["Alpha", "Beta"]
    assert "= = Usage = =" in train[0].text and "It is used" in train[0].text
    assert src.splits["validation"][0].text == " = Gamma = \n Gamma is third . \n"
    frozen = freeze(src, "gpt2", tmp_path / "frozen")
    assert frozen.manifest["source"]["origin"].endswith(":wikitext-2-raw-v1")


def test_wikitext_unreachable_is_one_clear_error(tmp_path):
    with pytest.raises(HarnessError) as e:
        load_wikitext("wikitext-2", repo=str(tmp_path / "nowhere"))
    assert e.value.code == "data-unavailable" and "HARNESS_WIKITEXT_REPO" in e.value.message


def test_a_character_tokenizer_takes_the_source_characters(tmp_path):
    (tmp_path / "t.txt").write_text("abcab")
    frozen = freeze(str(tmp_path / "t.txt"), "char", tmp_path / "frozen")
    assert frozen.manifest["tokenizer"]["vocab_size"] == 3
    assert frozen.split("validation").tokens.tolist() == [0, 1, 2, 0, 1]


@pytest.mark.parametrize(
    "setup, args, fragment",
    [
        (lambda p: None, ["--data", "{p}/missing.txt"], "does not exist"),
        (lambda p: (p / "bad.txt").write_bytes(b"caf\xe9 latin-1"), ["--data", "{p}/bad.txt"], "not UTF-8"),
        (lambda p: (p / "empty.txt").write_text(""), ["--data", "{p}/empty.txt"], "has no tokens"),
        (lambda p: (p / "rows.jsonl").write_text('{"txt": 1}\n'), ["--data", "{p}/rows.jsonl"], "no string field 'text'"),
        (lambda p: None, ["--data", "nonsense"], "unknown data source"),
        (lambda p: (p / "x.txt").write_text("x"), ["--data", "{p}/x.txt", "--tokenizer", "no-such-org/tok"],
         "could not be downloaded"),
        (lambda p: (p / "train.txt").write_text("t"), ["--data", "{p}"], "no splits"),
    ],
)
def test_bad_data_is_one_clear_line(tmp_path, run_cli, setup, args, fragment):
    setup(tmp_path)
    proc = run_cli("data", "prepare", *[a.format(p=tmp_path) for a in args], "--out", tmp_path / "out")
    if fragment == "no splits":  # a folder of only train.txt is one whole text: valid, used as validation
        assert proc.returncode == 0, proc.stderr
        return
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_course_reads_its_relative_data_path_from_its_own_folder_and_names_it_by_name(tmp_path, run_cli):
    """`source = "corpus.txt"` in a course file is read from the course's folder (as the course file says
    relative paths are), whatever the folder the command runs in; and the data's fingerprint (the manifest's
    sha256) is the same wherever the course lives: a local source is named by its name, not its path."""
    from harness.course.config import default_course_text

    shown = []
    for where in ("here", "moved/deeper"):
        folder = tmp_path / where
        folder.mkdir(parents=True)
        (folder / "corpus.txt").write_text("\n\n".join(f"Document {i} says the same few words." for i in range(40)))
        text = default_course_text()
        assert 'source = "wiki-vital"' in text
        (folder / "course.toml").write_text(text.replace('source = "wiki-vital"', 'source = "corpus.txt"', 1))
        elsewhere = tmp_path / f"cwd-{len(shown)}"
        elsewhere.mkdir()
        proc = run_cli("data", "show", "--course", folder / "course.toml", cwd=elsewhere,
                       env={"HARNESS_CACHE": str(tmp_path / "cache")}, check=0)
        shown.append({line.split()[0] + " " + line.split()[1]: line.split()[-1] for line in proc.stdout.splitlines()
                      if line.startswith(("manifest sha256", "source sha256"))})
        assert "corpus.txt" in proc.stdout and str(tmp_path) not in proc.stdout.replace(str(tmp_path / "cache"), "")
    assert shown[0] == shown[1] and len(shown[0]) == 2
