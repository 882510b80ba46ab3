"""clm-v1 through the fused output layer (harness.metrics.fused) against the plain logits path, to 1e-6.

Every layout family: each model is written the way its project writes it (the faithful re-implementations
of tests/test_layouts.py and tests/test_layouts_modern.py, transformers' own classes), read back through
the grading path (`read_checkpoint` / `build_model`), and scored twice by `evaluate_clm` on the same real
text: `fused=False` (a full row of logits and one log-softmax per target) and the fused path, with this
machine's tiles and with tiles of 32 outputs, which the vocabulary of 97 does not divide. Totals and
every document's sum agree to 1e-6 relative, at stride L and L/2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.checkpoint.read import read_checkpoint
from harness.course.data import TokenizedSplit
from harness.metrics.clm import evaluate_clm
from harness.metrics.fused import FusedHead, FusedScorer, OutputHead, Tiling, tiling_for
from harness.metrics.protocol import as_logits_model
from harness.models import GPT, GPTConfig
from harness.models.build import build_model

from test_layouts import (NanoGPT, NewGELU, Raw, V, base, canonical_raw, canonical_subset, fill,  # noqa: F401
                          hf_gpt2, randomize, saved)
from test_layouts_modern import hf_causal

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

REL = 1e-6
T = 16  # the test models' positions
SMALL = Tiling(rows=16, vocab_chunk=32, batch_rows=40)  # 97 outputs: 3 chunks of 32 and one of 1

DOCS = [
    "Attention lets every position of a window look at every earlier one in a single step; a causal mask "
    "hides the later ones, so the model predicts each token from its past alone.",
    "Perplexity is the exponential of the mean negative log-likelihood per token.",
    "",
    "The output layer maps each hidden state to one logit per vocabulary entry. For a small model with a "
    "large vocabulary it is most of the arithmetic of an evaluation, and its log-softmax most of the rest.",
    "Short one.",
]


class CharTokenizer:
    """Printable ASCII as ids 0..94, end-of-text 95, one id never used: 97 ids, the test models' vocabulary."""

    name = "ascii-97"
    kind = "test"
    vocab_size = V
    eot_id = 95
    cls_id = sep_id = mask_id = pad_id = None
    special_ids = frozenset({95})
    sha256 = "a" * 64

    def encode(self, text):
        return [ord(c) - 32 for c in text]

    def decode(self, ids):
        return "".join(chr(i + 32) for i in ids if i < 95)


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer()


@pytest.fixture(scope="module")
def split(tok):
    ids = [tok.encode(d) for d in DOCS]
    offsets = np.cumsum([0] + [len(i) for i in ids]).astype(np.int64)
    tokens = np.concatenate([np.asarray(i, dtype=np.int32) for i in ids])
    return TokenizedSplit("validation", tokens, offsets, "f" * 64, CharTokenizer.sha256)


def document_sums(result, split) -> list[float]:
    """Each document's summed NLL: its targets are its EOT (predicted from the previous document) and its
    tokens, stream positions offsets[i] + i … offsets[i+1] + i."""
    offsets = np.asarray(split.offsets)
    nll = np.concatenate([[0.0], result.nll])  # nll[p]: the target at stream position p
    return [math.fsum(nll[max(1, offsets[i] + i): offsets[i + 1] + i + 1].tolist()) for i in range(len(offsets) - 1)]


def assert_fused_equals_plain(model, split, tok):
    """The fused path is taken, and its numbers are the plain path's to 1e-6, at stride L and L/2, with
    this machine's tiles and with small ones."""
    m = as_logits_model(model)
    assert FusedScorer.for_model(m, torch.zeros(1, 4, dtype=torch.long), V) is not None, "the model declined"
    for stride in (T, T // 2):
        plain = evaluate_clm(m, split, tok, context=T, stride=stride, fused=False)
        plain_docs = document_sums(plain, split)
        for fused in (True, SMALL):
            r = evaluate_clm(m, split, tok, context=T, stride=stride, fused=fused)
            assert r.tokens == plain.tokens and r.windows == plain.windows
            assert abs(r.total_nll - plain.total_nll) <= REL * abs(plain.total_nll), (stride, fused)
            for a, b in zip(document_sums(r, split), plain_docs):
                assert abs(a - b) <= REL * abs(b), (stride, fused, a, b)
            assert np.allclose(r.nll, plain.nll, rtol=1e-5, atol=1e-6)
            assert r.to_dict().keys() == plain.to_dict().keys()


def loaded_model(tensors, **kwargs):
    return build_model(Raw(tensors, kwargs.pop("config", {}) or {}), **kwargs).model


def test_nanogpt(base, split, tok, tmp_path):
    own = NanoGPT(bias=True, flash=False, tied=True)
    fill(own, canonical_subset(base, own, tied=True))
    model = loaded_model(saved(own, tmp_path), hints={"n_heads": 4})
    assert_fused_equals_plain(model, split, tok)


def test_mingpt_untied(base, split, tok, tmp_path):
    own = NanoGPT(bias=True, flash=False, tied=False, act=NewGELU())
    fill(own, canonical_subset(base, own))
    model = loaded_model(saved(own, tmp_path), hints={"n_heads": 4})
    assert not model.config.tied
    assert_fused_equals_plain(model, split, tok)


def test_hf_gpt2(base, split, tok, tmp_path):
    own = hf_gpt2(base)
    model = loaded_model(saved(own, tmp_path), config=own.config.to_dict())
    assert_fused_equals_plain(model, split, tok)


def test_llama_style_canonical_gpt_from_a_bare_state_dict(split, tok, tmp_path):
    """RoPE, RMSNorm, SwiGLU, grouped-query attention: transformers' Llama saved as a bare state dict, read by
    the hf-llama layout onto the canonical GPT."""
    own = hf_causal("llama", 10, rms_norm_eps=1e-6)
    torch.save(own.state_dict(), tmp_path / "llama.pt")
    loaded = build_model(read_checkpoint(tmp_path / "llama.pt"), hints={"n_heads": 4})
    assert loaded.layout == "hf-llama" and loaded.config.gated and loaded.config.kv_heads == 2
    assert_fused_equals_plain(loaded.model, split, tok)


def test_soft_capped_head_with_a_bias(split, tok, tmp_path):
    """A soft-capped head (nanochat, Gemma 2) with a bias (word_language_model's decoder), through the
    canonical GPT's own save format."""
    cfg = GPTConfig(vocab_size=V, context=T, n_layers=2, d_model=32, n_heads=4, tied=False, head_bias=True,
                    logit_softcap=2.0, norm_type="rmsnorm", positions="rope", activation="relu2")
    torch.manual_seed(3)
    raw = canonical_raw(randomize(GPT(cfg), seed=3), tmp_path)
    model = build_model(raw).model
    assert model.config.logit_softcap == 2.0 and model.lm_head.bias is not None
    assert_fused_equals_plain(model, split, tok)


@pytest.mark.parametrize("kind", ["llama", "gpt_neox"])
def test_transformers_built_model(kind, split, tok, tmp_path):
    """A save_pretrained folder built with transformers' own class (layout transformers-<type>)."""
    cls, config_cls = {"llama": ("LlamaForCausalLM", "LlamaConfig"),
                       "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig")}[kind]
    args = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64, tie_word_embeddings=False, initializer_range=0.3)
    if kind == "llama":
        args["num_key_value_heads"] = 2
    torch.manual_seed(5)
    own = getattr(transformers, cls)(getattr(transformers, config_cls)(**args)).eval()
    own.save_pretrained(tmp_path / kind)
    loaded = build_model(read_checkpoint(tmp_path / kind))
    assert loaded.layout == f"transformers-{kind}"
    assert_fused_equals_plain(loaded.model, split, tok)


def test_a_transformers_class_whose_logits_are_not_its_head_keeps_the_plain_path(split, tok, tmp_path):
    """Cohere scales its logits after the head: the model declines the fused path, and the numbers are the
    plain path's."""
    cfg = transformers.CohereConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, logit_scale=0.5)
    torch.manual_seed(6)
    randomize(transformers.CohereForCausalLM(cfg), seed=6).save_pretrained(tmp_path / "cohere")
    loaded = build_model(read_checkpoint(tmp_path / "cohere"))
    m = as_logits_model(loaded.model)
    assert FusedScorer.for_model(m, torch.zeros(1, 4, dtype=torch.long), V) is None
    a = evaluate_clm(m, split, tok, context=T, fused=True)
    b = evaluate_clm(m, split, tok, context=T, fused=False)
    assert a.total_nll == b.total_nll


def test_kernel_rows_that_overflow_the_shift_are_recomputed_exactly():
    """Outputs far above the first chunk's maximum (more than fp32's exp can take after the shift) and a
    non-finite hidden state: those rows take the plain log-softmax; the others agree to 1e-6."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 8, generator=g)
    w[250:] *= 40.0  # logits of hundreds in the last chunks only
    h = torch.randn(37, 8, generator=g)
    h[5] = math.nan
    t = torch.randint(0, 300, (37,), generator=g)
    head = OutputHead(w, torch.randn(300, generator=g), None)
    expected = F.cross_entropy(head.logits(h), t, reduction="none")
    got = FusedHead(head, Tiling(rows=8, vocab_chunk=64, batch_rows=8)).nll(h, t)
    assert torch.isnan(got[5]) and torch.isnan(expected[5])
    keep = torch.arange(37) != 5
    assert torch.allclose(got[keep], expected[keep], rtol=REL, atol=0)


def test_tiles_come_from_the_cache_and_fit_it():
    l2 = 2 * 2**20
    for d in (32, 128, 768):
        t = tiling_for("cpu", d, l2)
        assert t == tiling_for("cpu", d, l2)  # the same machine, the same tiles
        assert t.vocab_chunk % 64 == 0 and t.rows >= 64 and t.batch_rows >= t.rows
    t = tiling_for("cpu", 128, l2)
    assert 4 * t.rows * t.vocab_chunk <= l2 // 2 and 4 * t.vocab_chunk * 130 <= l2 // 4


def test_a_head_in_another_dtype_keeps_the_plain_path():
    head = OutputHead(torch.zeros(10, 4, dtype=torch.bfloat16))
    assert not FusedHead.accepts(head, 10)
    assert not FusedHead.accepts(OutputHead(torch.zeros(10, 4)), 11)
    assert FusedHead.accepts(OutputHead(torch.zeros(10, 4), torch.zeros(10), 30.0), 10)


def test_each_tile_runs_on_one_thread_and_the_threads_share_the_tiles():
    """The mechanism that makes a row's NLL thread-count-free: every block of rows is worked on one thread
    whose intra-op count is 1, each block exactly once, the blocks spread over the pool's threads, the
    caller's count put back, and a block's exception raised in the caller."""
    import threading

    from harness.metrics.fused import _tiles_one_thread_each

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen: list[tuple[int, int, int]] = []
        lock = threading.Lock()

        def work(i: int) -> None:
            x = torch.randn(64, 256) @ torch.randn(256, 512)  # some real work, so both threads get blocks
            x.exp_()
            with lock:
                seen.append((i, torch.get_num_threads(), threading.get_ident()))

        _tiles_one_thread_each(work, range(0, 40 * 7, 7))
        assert sorted(i for i, _, _ in seen) == list(range(0, 280, 7))
        assert {n for _, n, _ in seen} == {1}
        assert len({t for _, _, t in seen}) == 2
        assert torch.get_num_threads() == 2

        def fails(i: int) -> None:
            if i == 3:
                raise ValueError("block 3")

        with pytest.raises(ValueError, match="block 3"):
            _tiles_one_thread_each(fails, range(8))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_rows_nll_has_the_same_bits_at_any_thread_count():
    """The grading worker's thread count (1 with two workers, 2 with one) must not reach results.json: the
    fused head at 1, 2 and 3 intra-op threads, repeated, gives one set of bits (the GPT-2 vocabulary, the
    seeds' width, rows that do not fill the last tile)."""
    before = torch.get_num_threads()
    g = torch.Generator().manual_seed(3)
    w = torch.randn(50257, 32, generator=g) * 0.3
    head = FusedHead(OutputHead(w))
    h = torch.randn(3 * head.tiling.rows + 5, 32, generator=g) * 2
    t = torch.randint(0, 50257, (h.shape[0],), generator=g)
    try:
        got = set()
        with torch.inference_mode():
            for threads in (1, 2, 3, 2, 1, 2):
                torch.set_num_threads(threads)
                for _ in range(5):
                    got.add(head.nll(h, t).numpy().tobytes())
        assert len(got) == 1
        plain = F.cross_entropy(h @ w.T, t, reduction="none")
        assert torch.allclose(torch.from_numpy(np.frombuffer(got.pop(), dtype=np.float32).copy()), plain,
                              rtol=1e-6, atol=1e-6)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_a_model_with_fewer_outputs_than_the_tokenizer_has_ids(softcap, split, tok):
    """Seed 002's case (49,805 outputs for GPT-2's 50,257 ids): the ids the model lacks are scored at the
    row's lowest logit (`TruncatedVocabulary`); the fused head pads the same way without the padded logits,
    for targets it has and targets it lacks (the text's p to z and end-of-text are past its 80 outputs)."""
    from harness.metrics.protocol import TruncatedVocabulary

    cfg = GPTConfig(vocab_size=80, context=T, n_layers=1, d_model=32, n_heads=4, tied=softcap is None,
                    head_bias=softcap is not None, logit_softcap=softcap)
    model = randomize(GPT(cfg), seed=5).eval()
    wrapped = TruncatedVocabulary(model, 80, V)
    assert any(t >= 80 for t in np.asarray(split.tokens)), "the text must hold ids past the model's outputs"
    assert_fused_equals_plain(wrapped, split, tok)
    with torch.inference_mode():
        hidden, head = wrapped.hidden_and_head(torch.tensor([[1, 2, 3]]))
        assert head.pad_to == V and torch.equal(head.logits(hidden), wrapped.logits(torch.tensor([[1, 2, 3]])))


def test_a_round_smaller_than_a_window_gets_the_windows_rows_in_whole_tiles_with_the_same_bits(split, tok):
    """Calibration's rounds (`clm_nll` with `batch_tokens` below a window's scored rows): the body runs once a
    window, the head's rows come back in pieces of whole tiles, each as soon as it is scored, and every row's
    NLL is the bits of the unsplit batch."""
    from harness.metrics.clm import clm_nll, plan_clm

    torch.manual_seed(3)
    cfg = GPTConfig(vocab_size=V, context=64, n_layers=1, d_model=32, n_heads=4, dropout=0.0)
    model = as_logits_model(GPT(cfg).eval())
    plan = plan_clm(model, split, tok, context=64)
    whole = list(clm_nll(model, plan, batch_tokens=64, fused=SMALL))
    pieces = list(clm_nll(model, plan, batch_tokens=20, fused=SMALL))  # 20 rows: pieces of 2 tiles of 16
    assert len(whole) == len(plan.windows) and len(pieces) > len(whole)
    assert np.array_equal(np.concatenate([p for p, _ in pieces]), np.concatenate([p for p, _ in whole]))
    assert np.array_equal(np.concatenate([v for _, v in pieces]), np.concatenate([v for _, v in whole]))
    sizes = [p.size for p, _ in pieces]
    share = 16 * torch.get_num_threads()  # whole tiles, one for each thread that shares a call's tiles
    step = -(-20 // share) * share
    assert sizes[0] == step and all(s <= step for s in sizes)  # a window's last piece: what is left of it
    # a window's pieces follow its scored positions in order
    assert all(np.array_equal(p, np.arange(p[0], p[0] + p.size)) for p, _ in pieces)


@pytest.mark.parametrize("threads", [1, 2])
def test_rows_recomputed_the_plain_way_keep_their_bits_in_pieces(threads):
    """A row whose logits overflow the first chunk's shift is recomputed the plain way a tile at a time, on
    the tile's thread: its NLL (and every other row's) is the same bits whether the rows come in one call
    or in calibration's pieces, at any thread count."""
    torch.manual_seed(0)
    d, vocab, t = 128, 8192, 64
    w, b = torch.randn(vocab, d), torch.randn(vocab)
    hidden = torch.randn(1, t, d) * 0.5
    spike = w[5000] / w[5000].norm() * (400.0 / w[5000].norm())  # its logit ~400 nats above the rest
    overflow = [3, 20, 21, 40]
    for r in overflow:
        hidden[0, r] += spike

    class Model:
        def hidden_and_head(self, inputs):
            return hidden[:, : inputs.shape[1]].clone(), OutputHead(w, b)

    inputs = torch.zeros(1, t, dtype=torch.long)
    targets = torch.randint(0, vocab, (t,))
    scorer = FusedScorer(Model(), FusedHead(OutputHead(w, b), Tiling(rows=16, vocab_chunk=1024, batch_rows=64)))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            whole = scorer.nll(inputs, [0], targets)
            split = torch.cat([v for _, v in scorer.pieces(inputs, [0], targets, 16)])
            plain = F.cross_entropy(F.linear(hidden[0], w, b), targets, reduction="none")
    finally:
        torch.set_num_threads(before)
    assert torch.isfinite(whole).all() and torch.equal(whole, split)
    assert torch.allclose(whole[overflow], plain[overflow], rtol=1e-6)
    assert not torch.isfinite(FusedHead(OutputHead(w, b), Tiling(16, 1024, 64))._block(hidden[0, :16], targets[:16])).all()


def test_an_empty_call_scores_nothing():
    w = torch.randn(97, 8)

    class Model:
        def hidden_and_head(self, inputs):
            return torch.zeros(1, 0, 8), OutputHead(w)

    scorer = FusedScorer(Model(), FusedHead(OutputHead(w), SMALL))
    with torch.inference_mode():
        out = scorer.nll(torch.zeros(1, 0, dtype=torch.long), [0], torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
