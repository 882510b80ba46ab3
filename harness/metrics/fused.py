"""clm-v1's per-target NLL without a batch's full logits: the output layer and its log-sum-exp, fused.

For the course's mini-GPTs 94% of an evaluation's arithmetic is the output layer ([K, d] x [d, 50,257]) and
its log-softmax. The plain path writes every batch's logits to memory, then reads them back to take the
log-softmax: at d_model 128 that traffic, not the multiplications, sets the pace. Here the model hands over
its final hidden states and its head (`OutputHead`: weight, optional bias, optional logit soft-cap), and
`FusedHead.nll` runs the head over vocabulary chunks that stay in the core's cache, taking each chunk's
exponentials and sums while the tile is hot (llm.c's fused classifier, Liger's chunked cross-entropy):

- the first chunk's row maxima `m` are the rows' shift; from then on the shift rides in the matmul as one
  more column (`[h, 1, -m] @ [W, b, 1]^T` gives `x + b - m`), so a tile takes one exp and one sum, no
  max or subtraction pass;
- each tile's row sums are kept in float32 and added in float64; the target's shifted logit is read from
  its tile, so `nll = log(sum) - (x_t - m)` stands on the same numbers as the sum;
- a row whose shifted exponentials overflow (its maximum more than ~80 nats above the first chunk's, or a
  non-finite hidden state) is recomputed the plain way: `F.cross_entropy` of its full row of logits.

Each tile runs on one thread from start to end with torch's intra-op count at 1, the tiles spread over
the pool's threads (`_tiles_one_thread_each`): an op split across threads is not bit-stable (MKL's exp),
and grading's numbers must not depend on how many threads a worker has.

Only rows that are scored are handed in (with stride S < L that is S of each window's L positions), in
float32: a model in another dtype keeps the plain path. Tile sizes come from the machine's per-core cache
(`tiling_for`), so they are the same on every run on that machine; a row's NLL agrees with the plain
path's to float32's rounding of its log-sum-exp (about 1e-7 of it), whatever the tiling.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

# per-core L2 when the machine does not say: what most x86 server cores of the last decade have or exceed
_DEFAULT_L2 = 1 * 2**20
_GPU_ROWS, _GPU_CHUNK = 4096, 8192  # a 128 MiB tile of float32 logits


def pad_with_floor(logits: torch.Tensor, n: int) -> torch.Tensor:
    """`logits` [..., V] widened to `n` outputs, each added one the row's lowest logit: how a model with fewer
    outputs than the tokenizer has ids is scored (`protocol.TruncatedVocabulary`)."""
    if n <= logits.shape[-1]:
        return logits
    floor = logits.min(dim=-1, keepdim=True).values
    return torch.cat([logits, floor.expand(*logits.shape[:-1], n - logits.shape[-1])], dim=-1)


@dataclass(frozen=True)
class OutputHead:
    """A causal LM's output layer: `logits = h @ weight.T + bias`, then `softcap * tanh(logits / softcap)`
    when soft-capped (Gemma 2, nanochat)."""

    weight: torch.Tensor  # [n_outputs, d]
    bias: torch.Tensor | None = None  # [n_outputs]
    softcap: float | None = None
    # outputs past the weight's rows, up to `pad_to`, each take the row's lowest logit: a model with fewer
    # outputs than the tokenizer has ids, scored all the same (`protocol.TruncatedVocabulary`)
    pad_to: int | None = None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own logits of `hidden` [..., d]: what the plain path scores."""
        out = F.linear(hidden, self.weight, self.bias)
        if self.softcap is not None:
            out = self.softcap * torch.tanh(out / self.softcap)
        return pad_with_floor(out, self.pad_to) if self.pad_to is not None else out


@dataclass(frozen=True)
class Tiling:
    """Rows of hidden states and vocabulary entries per tile of the fused head, and scored rows per
    forward of the body (`batch_rows`)."""

    rows: int
    vocab_chunk: int
    batch_rows: int


def l2_bytes() -> int:
    """The per-core L2 cache of this machine (Linux sysfs), else 1 MiB."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in sorted(base.glob("index*")):
            if (index / "level").read_text().strip() == "2" and (index / "type").read_text().strip() != "Instruction":
                text = (index / "size").read_text().strip().upper()
                scale = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
                return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return _DEFAULT_L2


@lru_cache(maxsize=None)
def tiling_for(device_type: str, d_model: int, l2: int | None = None) -> Tiling:
    """Tile sizes for a head of width `d_model` on this machine: on a CPU a tile of logits takes half the
    per-core L2 and a chunk of the head's weight a quarter of it, so both stay in cache while the tile is
    exponentiated and summed; on a GPU large tiles (its caches are not what bounds it)."""
    if device_type != "cpu":
        return Tiling(_GPU_ROWS, _GPU_CHUNK, 4 * _GPU_ROWS)
    l2 = l2 or l2_bytes()
    # a narrow head would get one huge chunk and a handful of rows: the matmul wants both dimensions
    chunk = min(4096, max(64, (l2 // 4 // (4 * (d_model + 2))) // 64 * 64))
    rows = max(64, (l2 // 2 // (4 * chunk)) // 16 * 16)
    return Tiling(rows=rows, vocab_chunk=chunk, batch_rows=max(1024, 4 * rows))


class FusedHead:
    """An `OutputHead` prepared for `nll`: its weight widened by the bias and shift columns, once.

    `n_outputs` is the softmax's width: the head's rows, or its `pad_to`. Only float32 heads are taken
    (`accepts`).
    """

    def __init__(self, head: OutputHead, tiling: Tiling | None = None):
        w = head.weight.detach()
        self.head = head
        self.n_own, self.d_model = int(w.shape[0]), int(w.shape[1])
        self.n_outputs = max(self.n_own, int(head.pad_to or 0))
        self.device = w.device
        self.tiling = tiling or tiling_for(w.device.type, self.d_model)
        self.softcap = head.softcap
        # the shift column only where the tile needs no work between the matmul and exp: a soft-cap's tanh
        # must see the unshifted logits
        self.shift_in_matmul = head.softcap is None
        cols = [w]
        if head.bias is not None:
            cols.append(head.bias.detach().reshape(-1, 1))
        if self.shift_in_matmul:
            cols.append(torch.ones(self.n_own, 1, dtype=w.dtype, device=w.device))
        weight = torch.cat(cols, dim=1) if len(cols) > 1 else w
        self.width = int(weight.shape[1])
        # each vocabulary chunk's columns [width, chunk], contiguous: the matmul reads its B operand in the
        # layout the kernel wants, not a transposed view (up to 1.1x on a CPU; the same NLLs bit for bit in
        # BENCHMARKS' runs, and the tests hold them to the plain path's to 1e-6)
        self.chunk = min(self.tiling.vocab_chunk, self.n_own)
        self.chunks = [weight[j : j + self.chunk].t().contiguous() for j in range(0, self.n_own, self.chunk)]

    @staticmethod
    def accepts(head: Any, n_outputs: int) -> bool:
        """Whether `head` is a float32 `OutputHead` of `n_outputs` rows the fused path can score exactly."""
        if not isinstance(head, OutputHead) or not isinstance(head.weight, torch.Tensor):
            return False
        w, b = head.weight, head.bias
        if w.dim() != 2 or w.dtype != torch.float32:
            return False
        pad = head.pad_to
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < int(w.shape[0])):
            return False
        if (pad or int(w.shape[0])) != int(n_outputs):
            return False
        if b is not None and (not isinstance(b, torch.Tensor) or b.dtype != torch.float32
                              or tuple(b.shape) != (w.shape[0],) or b.device != w.device):
            return False
        cap = head.softcap
        return cap is None or (isinstance(cap, (int, float)) and not isinstance(cap, bool) and 0 < cap < math.inf)

    def same_head(self, head: OutputHead) -> bool:
        """Whether `head` is the head this was prepared from (the same tensors, unchanged)."""
        mine = self.head
        return (head.weight is mine.weight and head.bias is mine.bias and head.softcap == mine.softcap
                and head.pad_to == mine.pad_to)

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """NLL (float32) of `targets` [K] under the head applied to `hidden` [K, d], one per row."""
        hidden = hidden.to(self.device, torch.float32)
        targets = targets.to(self.device, torch.long)
        k = int(hidden.shape[0])
        out = torch.empty(k, dtype=torch.float32, device=self.device)
        r = self.tiling.rows
        blocks = range(0, k, r)

        def block(i: int) -> None:
            h, t = hidden[i : i + r], targets[i : i + r]
            got = self._block(h, t)
            bad = ~torch.isfinite(got)
            if bool(bad.any()):  # recomputed a tile at a time, on its thread: the same bits however the
                where = bad.nonzero().squeeze(1)  # rows were handed in (a matmul's bits follow its row count)
                got[where] = self.plain_nll(h[where], t[where])
            out[i : i + r] = got

        with torch.autocast(self.device.type, enabled=False):  # the protocol's float32, whoever called
            if self.device.type == "cpu":
                _tiles_one_thread_each(block, blocks)
            else:
                for i in blocks:
                    block(i)
        return out

    def plain_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The plain path's NLL of a few rows: their full logits and one log-softmax each."""
        return F.cross_entropy(self.head.logits(hidden).float(), targets, reduction="none")

    def _block(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r, d, V = int(h.shape[0]), self.d_model, self.n_own
        padded = self.n_outputs > V  # the outputs past V: the row's lowest logit each
        t_own = t.clamp(max=V - 1) if padded else t
        C = self.chunk
        n_chunks = len(self.chunks)
        dev = h.device
        ha = torch.empty(r, self.width, dtype=torch.float32, device=dev)
        ha[:, :d] = h
        if self.head.bias is not None:
            ha[:, d] = 1.0
        if self.shift_in_matmul:
            ha[:, -1] = 0.0  # no shift for the first chunk: its maxima become the shift
        # targets grouped by chunk; `at` indexes each target's logit in its (row-major) tile
        chunk_of = torch.div(t_own, C, rounding_mode="floor")
        order = torch.argsort(chunk_of, stable=True)
        counts = torch.bincount(chunk_of, minlength=n_chunks).tolist()
        last_c = V - (n_chunks - 1) * C
        width = torch.where(chunk_of == n_chunks - 1, last_c, C)
        at = (order * width[order] + (t_own[order] - chunk_of[order] * C))
        xt_sorted = torch.empty(r, dtype=torch.float32, device=dev)
        sums = torch.empty(r, n_chunks, dtype=torch.float32, device=dev)
        lows = torch.empty(r, n_chunks, dtype=torch.float32, device=dev) if padded else None
        buf = torch.empty(r * C, dtype=torch.float32, device=dev)
        m = None
        pos = 0
        for k in range(n_chunks):
            j = k * C
            c = min(C, V - j)
            tile = buf[: r * c].view(r, c)
            torch.mm(ha, self.chunks[k], out=tile)
            if self.softcap is not None:
                tile.div_(self.softcap).tanh_().mul_(self.softcap)
            if m is None:
                m = tile.amax(dim=1)
                tile.sub_(m[:, None])
                if self.shift_in_matmul:
                    ha[:, -1] = -m
            elif not self.shift_in_matmul:
                tile.sub_(m[:, None])
            n = counts[k]
            if n:
                torch.take(tile, at[pos : pos + n], out=xt_sorted[pos : pos + n])
                pos += n
            if lows is not None:
                torch.amin(tile, dim=1, out=lows[:, k])
            torch.sum(tile.exp_(), dim=1, out=sums[:, k])
        xt = torch.empty_like(xt_sorted)
        xt[order] = xt_sorted
        total = sums.sum(dim=1, dtype=torch.float64)
        if lows is not None:  # the padded outputs: the row's lowest (shifted) logit, n_outputs - V times
            floor = lows.amin(dim=1)
            total += (self.n_outputs - V) * floor.double().exp()
            xt = torch.where(t >= V, floor, xt)
        return (total.log() - xt.double()).float()


class FusedScorer:
    """clm-v1's scoring of a batch of windows through the fused head: the model's hidden states, the
    scored rows only (a window's positions from `first_scored` on), their NLLs.

    `for_model` returns None where the model only gives logits; the evaluator then keeps the plain path.
    A model offers the fused path with `hidden_and_head(input_ids)` -> (hidden [B, T, d], OutputHead), or
    None where it cannot (a Hugging Face class whose logits are not its head of its last hidden state).
    """

    def __init__(self, model: Any, head: FusedHead):
        self.model, self.head = model, head

    @classmethod
    def for_model(cls, model: Any, probe: torch.Tensor, n_outputs: int,
                  tiling: Tiling | None = None) -> FusedScorer | None:
        """Asks the model about `probe` [1, t], a few tokens; None if it declines or its head does not fit.
        `tiling`: the tiles (default: this machine's, `tiling_for`)."""
        ask = getattr(model, "hidden_and_head", None)
        if not callable(ask):
            return None
        got = ask(probe)
        if got is None:
            return None
        hidden, head = got
        if not FusedHead.accepts(head, n_outputs) or not _fits(hidden, probe, head):
            return None
        return cls(model, FusedHead(head, tiling))

    @property
    def tiling(self) -> Tiling:
        return self.head.tiling

    def batch_tokens(self, length: int, scored: int) -> int:
        """Input positions per forward for windows of `length` that score `scored` targets each: enough
        windows to give the head `tiling.batch_rows` rows."""
        return length * max(1, -(-self.tiling.batch_rows // max(1, scored)))

    def nll(self, inputs: torch.Tensor, first_scored: list[int], targets: torch.Tensor) -> torch.Tensor:
        """NLL (float32) of `targets`, the scored positions of each window of `inputs` [B, T] in order."""
        [(_, values)] = self.pieces(inputs, first_scored, targets)  # without `rows`: one piece, all of them
        return values

    def pieces(self, inputs: torch.Tensor, first_scored: list[int], targets: torch.Tensor,
               rows: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """`nll` a piece at a time: (offset, NLLs) of `targets[offset:]`'s next rows, each piece at least
        `rows` rows (default: all) and a whole number of the head's tiles, so that every row's NLL is the
        bits `nll` gives it (a tile's rows are the same rows either way). Calibration's rounds: a model with
        long windows is looked at after a piece of one, its body run once for the whole batch."""
        got = self.model.hidden_and_head(inputs)
        if got is None:
            yield 0, self._plain(inputs, first_scored, targets)
            return
        hidden, head = got
        if not self.head.same_head(head):  # a model may hand back a fresh head object: prepare it again
            if not FusedHead.accepts(head, self.head.n_outputs):
                yield 0, self._plain(inputs, first_scored, targets)
                return
            self.head = FusedHead(head, self.head.tiling)
        if not _fits(hidden, inputs, head):
            yield 0, self._plain(inputs, first_scored, targets)
            return
        if not any(first_scored):
            h = hidden.reshape(-1, hidden.shape[-1])
        else:
            h = torch.cat([hidden[k, f:] for k, f in enumerate(first_scored)])
        k, tile = int(h.shape[0]), self.head.tiling.rows
        if rows is None:
            step = max(k, 1)
        else:  # whole tiles, one for each of the threads that share them (`_tiles_one_thread_each`)
            share = tile * (max(1, torch.get_num_threads()) if self.head.device.type == "cpu" else 1)
            step = max(1, -(-int(rows) // share)) * share
        for a in range(0, max(k, 1), step):
            yield a, self.head.nll(h[a : a + step], targets[a : a + step])

    def _plain(self, inputs: torch.Tensor, first_scored: list[int], targets: torch.Tensor) -> torch.Tensor:
        """A model that declined after its probe: the plain path, one window at a time (the batch was sized
        for hidden states, not for full rows of logits)."""
        parts, o = [], 0
        for k, f in enumerate(first_scored):
            rows = self.model.logits(inputs[k : k + 1])[0, f:].float()
            parts.append(F.cross_entropy(rows, targets[o : o + rows.shape[0]].to(rows.device), reduction="none"))
            o += rows.shape[0]
        return torch.cat(parts)


def _tiles_one_thread_each(work: Callable[[int], None], blocks: range) -> None:
    """`work(i)` for every block `i`, each block on one thread from start to end, the blocks spread over as
    many threads as torch's intra-op pool has (llm.c's one tile per core).

    So a row's NLL does not depend on the thread count: an op split across threads is not bit-stable. MKL's
    vectorised exp (torch's `exp_` on a float32 CPU tensor) gave the same tile's exponentials in two
    variants over 300 runs at two threads, and one at one thread. Here every op of a tile runs with torch's
    intra-op threads at 1 (OpenMP's and MKL's counts are per thread: each thread sets its own) and the threads share the
    blocks, not the ops. The intra-op count is put back on return.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if n <= 1 or len(blocks) <= 1:
            for i in blocks:
                work(i)
            return
        todo = iter(blocks)
        lock = threading.Lock()
        failed: list[BaseException] = []

        def run() -> None:
            torch.set_num_threads(1)  # this thread's OpenMP and MKL counts (each thread has its own)
            with torch.inference_mode():
                while not failed:
                    with lock:
                        i = next(todo, None)
                    if i is None:
                        return
                    try:
                        work(i)
                    except BaseException as e:  # handed to the caller's thread below
                        failed.append(e)

        helpers = [threading.Thread(target=run, daemon=True) for _ in range(min(n, len(blocks)) - 1)]
        for t in helpers:
            t.start()
        run()
        for t in helpers:
            t.join()
        if failed:
            raise failed[0]
    finally:
        torch.set_num_threads(n)


def _fits(hidden: Any, inputs: torch.Tensor, head: OutputHead) -> bool:
    return (isinstance(hidden, torch.Tensor) and hidden.dtype == torch.float32 and hidden.dim() == 3
            and tuple(hidden.shape[:2]) == tuple(inputs.shape) and hidden.shape[-1] == head.weight.shape[1])


def tiling_note() -> str:
    """Where the fused path's tile sizes came from, for benchmark notes."""
    t = tiling_for("cpu", 128)
    return f"L2 {l2_bytes() // 2**10} KiB per core: tiles of {t.rows} rows x {t.vocab_chunk} outputs at d 128"

