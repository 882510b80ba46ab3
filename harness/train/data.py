"""Training data: the frozen train split as windows (GPT) or blocks (MLM), in a seeded order, and the
offline WordPiece tokenizer an MLM falls back to when the course's cannot be had."""

from __future__ import annotations

import collections
import heapq
import inspect
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError
from harness.files import sha256_file, write_atomic
from harness.train.config import TrainConfig

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass
class TrainData:
    tokenizer: Any
    spec: str
    fallback: dict | None
    frozen: Any
    train: Any
    val: Any


def wordpiece_vocabulary(texts: list[str], vocab_size: int, *, limit_alphabet: int = 1000,
                         min_frequency: int = 2) -> list[str]:
    """A lowercase WordPiece vocabulary learned from `texts`, deterministically.

    BERT's normaliser and pre-tokeniser split the words; merges are learned as in HF's WordPiece trainer
    (BPE over characters, `##` marking a word's inner pieces), but ties are broken by the pair's text, so
    the same texts always give the same vocabulary (the `tokenizers` trainer breaks them by hash order).
    """
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: collections.Counter = collections.Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    chars: collections.Counter = collections.Counter()
    for w, c in counts.items():
        for ch in w:
            chars[ch] += c
    alphabet = set(sorted(chars, key=lambda ch: (-chars[ch], ch))[:limit_alphabet])
    words, freq = [], []
    for w in sorted(counts):
        if all(ch in alphabet for ch in w):  # a word with a rare character stays [UNK], as in WordPiece
            words.append([w[0]] + ["##" + ch for ch in w[1:]])
            freq.append(counts[w])
    vocab = list(BERT_SPECIALS) + sorted({s for sy in words for s in sy})
    known = set(vocab)
    pairs: dict[tuple[str, str], int] = collections.defaultdict(int)
    where: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    for i, sy in enumerate(words):
        for p in zip(sy, sy[1:]):
            pairs[p] += freq[i]
            where[p].add(i)
    heap = [(-c, p) for p, c in pairs.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -neg:
            continue  # a stale entry: the pair's count changed since it was pushed
        if -neg < min_frequency:
            break
        a, b = pair
        new = a + b[2:]
        if new not in known:
            vocab.append(new)
            known.add(new)
        changed = set()
        for i in sorted(where.pop(pair, ())):
            sy, f = words[i], freq[i]
            for p in zip(sy, sy[1:]):
                pairs[p] -= f
                changed.add(p)
            out, j = [], 0
            while j < len(sy):
                if j + 1 < len(sy) and sy[j] == a and sy[j + 1] == b:
                    out.append(new)
                    j += 2
                else:
                    out.append(sy[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pairs[p] += f
                where[p].add(i)
                changed.add(p)
        pairs.pop(pair, None)
        for p in changed:
            if pairs.get(p, 0) > 0:
                heapq.heappush(heap, (-pairs[p], p))
            else:
                pairs.pop(p, None)
    return vocab


def _offline_wordpiece(source, size: int, folder: Path) -> Path:
    """Train (or reuse from the cache) the fallback WordPiece tokenizer and save it as a HF tokenizer folder."""
    from harness.course.data import cache_root

    cached = cache_root() / "tokenizers" / f"wordpiece-{source.sha256[:16]}-{size}"
    if not (cached / "vocab.txt").is_file():
        vocab = wordpiece_vocabulary([d.text for d in source.split("train")], size)
        from transformers import BertTokenizerFast

        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        write_atomic(tmp / "vocab.txt", "\n".join(vocab) + "\n")
        key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
        BertTokenizerFast(**{key: str(tmp / "vocab.txt")}, do_lower_case=True).save_pretrained(str(tmp))
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(tmp, cached)
    if folder.exists() and sha256_file(folder / "vocab.txt") == sha256_file(cached / "vocab.txt"):
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(cached, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def prepare_data(cfg: TrainConfig, course, run_dir: Path) -> TrainData:
    from harness.course.data import freeze, load_source
    from harness.course.tokenizers import get_tokenizer

    source = load_source(course.source_spec() if cfg.data == "course" else cfg.data)
    if "train" not in source.splits or not source.splits["train"]:
        raise HarnessError("data-no-train", f"data source {source.name!r} has no train split to train on; "
                           "use wiki-vital, wikitext-2 or a folder with train* and valid* entries")
    wanted = (course.clm if cfg.family == "gpt" else course.mlm).tokenizer if cfg.tokenizer == "course" else cfg.tokenizer
    fallback = None
    if cfg.family == "mlm" and wanted == "wordpiece":
        fallback = {"wanted": "wordpiece", "reason": "asked for by the config"}
    elif cfg.family == "mlm":
        try:
            tok = get_tokenizer(wanted)
        except HarnessError as e:
            if e.code != "tokenizer-unavailable":
                raise
            fallback = {"wanted": wanted, "reason": e.message}
    else:
        texts = (d.text for docs in source.splits.values() for d in docs) if wanted == "char" else None
        tok = get_tokenizer(wanted, texts=texts)
    spec = wanted
    if fallback is not None:
        folder = _offline_wordpiece(source, cfg.wordpiece_vocab, run_dir / "tokenizer")
        spec = str(folder.resolve())
        tok = get_tokenizer(spec)
        fallback.update(trained="wordpiece (lowercase, BERT special tokens) on the train split",
                        vocab_size=tok.vocab_size, folder=spec, vocab_sha256=sha256_file(folder / "vocab.txt"))
    if cfg.family == "gpt" and tok.eot_id is None and tok.kind != "char":
        raise HarnessError("tokenizer-not-clm", f"tokenizer {tok.name!r} has no end-of-text token for clm-v1")
    if cfg.family == "mlm" and None in (tok.cls_id, tok.sep_id, tok.mask_id):
        raise HarnessError("tokenizer-not-mlm", f"tokenizer {tok.name!r} has no [CLS]/[SEP]/[MASK]; use a BERT-style one")
    frozen = freeze(source, tok)
    val_name = course.data_split if course.data_split in frozen.manifest["splits"] else "validation"
    return TrainData(tok, spec, fallback, frozen, frozen.split("train"), frozen.split(val_name))


class Batches:
    """Global batches as a pure function of the step: windows (GPT) or blocks (MLM) in a seeded order."""

    def __init__(self, cfg: TrainConfig, data: TrainData):
        from harness.metrics.windows import clm_stream, mlm_stream

        self.cfg, self.tok = cfg, data.tokenizer
        if cfg.family == "gpt":
            s = clm_stream(data.train, data.tokenizer)  # EOT before each document, as clm-v1 scores
            span, n = cfg.context + 1, (s.size - 1) // cfg.context
            # window i is s[i*L : i*L + L + 1]: inputs its first L tokens, targets its last L
            self.items = np.lib.stride_tricks.as_strided(s, (n, span), (s.strides[0] * cfg.context, s.strides[0]))
        else:
            s = mlm_stream(data.train, data.tokenizer)  # [CLS] doc [SEP] ...
            n = s.size // cfg.context
            self.items = s[: n * cfg.context].reshape(n, cfg.context)
            self.special = np.array(sorted(data.tokenizer.special_ids), dtype=np.int64)
        self.steps_per_epoch = n // cfg.batch_size
        if self.steps_per_epoch == 0:
            unit = "windows" if cfg.family == "gpt" else "blocks"
            raise HarnessError("data-too-small", f"the train split gives {n} {unit} of {cfg.context} tokens, fewer than "
                               f"one batch of {cfg.batch_size}; lower batch_size or context, or use more data")
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.Generator(np.random.PCG64([self.cfg.seed, epoch]))
            self._order = (epoch, rng.permutation(len(self.items)))
        return self._order[1]

    def get(self, step: int, rank: int, world: int):
        """(inputs, targets, rows, global target count) of this rank's slice of global batch `step`.
        `rows` are the flat positions whose hidden states are scored (MLM) or None (every position)."""
        B = self.cfg.batch_size
        epoch, b = divmod(step, self.steps_per_epoch)
        batch = self.items[self.order(epoch)[b * B : (b + 1) * B]].astype(np.int64)
        lo, hi = rank * B // world, (rank + 1) * B // world
        if self.cfg.family == "gpt":
            return (torch.from_numpy(batch[lo:hi, :-1].copy()), torch.from_numpy(batch[lo:hi, 1:].reshape(-1).copy()),
                    None, batch[:, 1:].size)
        # dynamic masking, the mlm-v1 rule on the whole global batch: 15% of non-special tokens; 80/10/10
        rng = np.random.Generator(np.random.PCG64([self.cfg.seed, 1, step]))
        u, v = rng.random(batch.shape), rng.random(batch.shape)
        r = rng.integers(0, self.tok.vocab_size, batch.shape)
        selected = (u < 0.15) & ~np.isin(batch, self.special)
        inputs = np.where(selected & (v < 0.8), self.tok.mask_id, batch)
        inputs = np.where(selected & (v >= 0.8) & (v < 0.9), r, inputs)
        local = selected[lo:hi].reshape(-1)
        rows = np.flatnonzero(local)
        return (torch.from_numpy(inputs[lo:hi].copy()), torch.from_numpy(batch[lo:hi].reshape(-1)[rows].copy()),
                torch.from_numpy(rows), max(1, int(selected.sum())))
