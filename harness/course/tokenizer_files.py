"""A tokenizer's own files (a student's: untrusted input), read with size limits and parsed as data, never run.

`tokenizer_from_path` takes a folder or a file: a Hugging Face tokenizer.json, a byte-level BPE vocab.json +
merges.txt, a SentencePiece tokenizer.model or a WordPiece vocab.txt, and the files beside it that name the
special tokens' roles (tokenizer_config.json, special_tokens_map.json). The kinds it builds, and the spec
strings that lead here, are in `harness.course.tokenizers`.

A tokenizer read here is named by its files' names, never by where they are: the name is written into the frozen
data's manifest, whose sha256 is the data fingerprint, so the same files anywhere give the same fingerprint.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from harness.course.tokenizers import (CONVENTIONAL, MAX_CONFIG_BYTES, MAX_TOKENIZER_BYTES, ROLES, HuggingFaceTokenizer,
                                       Role, SentencePieceTokenizer, Tokenizer, _quiet_transformers)
from harness.errors import HarnessError


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
    return _wrap_backend(path.name, backend, path.parent, spec)


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
    return _wrap_backend(f"{vocab_path.name}+{merges_path.name}", backend, vocab_path.parent, None)


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
    return SentencePieceTokenizer(path.name, data, resolve_roles(named, token_id), sp)


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
    return HuggingFaceTokenizer(path.name, tok, roles, tok.all_special_ids)


def tokenizer_from_path(path: Path) -> Tokenizer:
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
