"""Students' model code runs in a sandbox: same logits as in-process, and hostile code fails alone."""

import textwrap

import pytest
import torch

from harness.errors import HarnessError
from harness.sandbox.run import SandboxedModel, SandboxLimits

MODEL_PY = '''
import torch, torch.nn as nn

class TinyLM(nn.Module):
    def __init__(self, vocab_size=50, d=16, block_size=8):
        super().__init__()
        self.block_size = block_size
        self.tok = nn.Embedding(vocab_size, d)
        self.pos = nn.Embedding(block_size, d)
        self.head = nn.Linear(d, vocab_size)

    def forward(self, idx):
        print("forward called")  # students print; the frames must not care
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        x = torch.cumsum(x, dim=1) / torch.arange(1, idx.shape[1] + 1)[None, :, None]
        return self.head(x), None
'''


def _submission(tmp_path, extra=""):
    (tmp_path / "model.py").write_text(MODEL_PY + textwrap.dedent(extra))
    ns: dict = {}
    exec(MODEL_PY, ns)
    torch.manual_seed(0)
    model = ns["TinyLM"](vocab_size=50, d=16, block_size=8).eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def test_sandboxed_logits_equal_in_process_logits(tmp_path):
    model, sd = _submission(tmp_path)
    ids = torch.randint(0, 50, (3, 8))
    with SandboxedModel(tmp_path, "model.py:TinyLM", sd, kwargs={"vocab_size": 50, "d": 16, "block_size": 8,
                                                                  "ignored": 1}, max_positions=8) as sm:
        got = sm.logits(ids)
        assert sm.n_outputs == 50
    assert torch.equal(got, model(ids)[0].detach())


HOSTILE = {
    "crash": ("class Crash(TinyLM):\n    def forward(self, idx):\n        raise RuntimeError('boom')\n",
              "Crash", "RuntimeError: boom"),
    "loop": ("class Loop(TinyLM):\n    def forward(self, idx):\n        while True: pass\n", "Loop", "took longer than"),
    "network": ("import socket\nclass Net(TinyLM):\n    def forward(self, idx):\n"
                "        socket.create_connection(('127.0.0.1', 9))\n", "Net", "network access is disabled"),
    "writes": ("class Writes(TinyLM):\n    def forward(self, idx):\n        open('model.py', 'a').write('#')\n",
               "Writes", "Permission denied"),
    "memory": ("class Hog(TinyLM):\n    def forward(self, idx):\n        x = bytearray(64 * 2**30)\n", "Hog", "memory"),
    "exit": ("import os\nclass Exit(TinyLM):\n    def forward(self, idx):\n        os._exit(3)\n", "Exit", "exit code 3"),
    "missing": ("", "NoSuchClass", "defines no NoSuchClass"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_model_code_fails_alone_with_a_clear_message(tmp_path, case):
    extra, cls, fragment = HOSTILE[case]
    _, sd = _submission(tmp_path, extra)
    limits = SandboxLimits(call_seconds=5, start_seconds=60)
    with pytest.raises(HarnessError) as e:
        with SandboxedModel(tmp_path, f"model.py:{cls}", sd, kwargs={"vocab_size": 50, "d": 16, "block_size": 8},
                            limits=limits) as sm:
            sm.logits(torch.zeros(1, 4, dtype=torch.long))
    assert e.value.code == "model-code-failed" and fragment in e.value.message, e.value.message
    assert not (tmp_path / "model.py").read_text().endswith("#")  # the submission itself was never touched


def test_model_code_outside_the_submission_is_refused(tmp_path):
    _, sd = _submission(tmp_path)
    with pytest.raises(HarnessError, match="not in the submission"):
        SandboxedModel(tmp_path, "../model.py:TinyLM", sd)


@pytest.mark.parametrize("device, limited", [("cpu", True), ("cuda:0", False)])
def test_the_measuring_process_limits_its_address_space_on_a_cpu_only(device, limited):
    """A CUDA job gets no address-space limit: CUDA's initialisation fails under one ("out of memory", seen
    on an H100); the unpickling child and the sandbox keep theirs."""
    import subprocess
    import sys

    code = ("import resource; from harness.grading.measure import Job, _limit_self; "
            f"_limit_self(Job(id='x', paths=[], course_path=None, device={device!r}, memory_mb=4096)); "
            "print(resource.getrlimit(resource.RLIMIT_AS)[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert (int(out) == 4096 * 2**20) is limited


# Forwards that do not end in one untouched nn.Linear of the vocabulary: the fused head is declined for them.
NOT_A_HEAD = {
    "matmul": ("class Matmul(TinyLM):\n    def forward(self, idx):\n"
               "        return torch.matmul(self.tok(idx), self.head.weight.T) + self.head.bias, None\n", "Matmul"),
    "scaled": ("class Scaled(TinyLM):\n    def forward(self, idx):\n        return super().forward(idx)[0] / 2, None\n",
               "Scaled"),
    "in_place": ("class InPlace(TinyLM):\n    def forward(self, idx):\n        out = super().forward(idx)[0]\n"
                 "        out[..., 0] = -100.0\n        return out, None\n", "InPlace"),
    # a Linear of its own whose forward is not nn.Linear's (loralib's unmerged lora.Linear is one)
    "subclass": ("class Tripled(torch.nn.Linear):\n    def forward(self, x):\n        return super().forward(x) * 3\n"
                 "class Sub(TinyLM):\n    def __init__(self, **kw):\n        super().__init__(**kw)\n"
                 "        self.head = Tripled(16, 50)\n", "Sub"),
    # the student's own forward hook on the head, which changes its output
    "hooked": ("class Hooked(TinyLM):\n    def __init__(self, **kw):\n        super().__init__(**kw)\n"
               "        self.head.register_forward_hook(lambda m, a, out: out * 2)\n", "Hooked"),
}
# The head's input changed in place after the layer ran (a buffer reused): its copy, taken as it ran, is scored.
SCRIBBLED = ("class Scribbled(TinyLM):\n    def forward(self, idx):\n"
             "        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))\n"
             "        x = torch.cumsum(x, dim=1) / torch.arange(1, idx.shape[1] + 1)[None, :, None]\n"
             "        out = self.head(x)\n        x.mul_(0)\n        return out, None\n", "Scribbled")
# A second layer of the vocabulary's width whose output is not returned (an auxiliary head), run after the
# head: the head is still the layer whose output forward returned.
AUX_HEAD = ("class AuxHead(TinyLM):\n    def __init__(self, **kw):\n        super().__init__(**kw)\n"
            "        self.aux = torch.nn.Linear(16, 50)\n    def forward(self, idx):\n"
            "        out = super().forward(idx)\n        self.aux(self.tok(idx))\n        return out\n", "AuxHead")


# Forwards that return the head's output unchanged on the checked windows, and change it only where a window
# holds token 49 (none of the checked ones does): in place, or a new tensor.
LATER = {
    "in_place": ("class LateInPlace(TinyLM):\n    def forward(self, idx):\n        out = super().forward(idx)[0]\n"
                 "        if bool((idx == 49).any()):\n            out[..., 0] = -100.0\n        return out, None\n",
                 "LateInPlace"),
    "scaled": ("class LateScaled(TinyLM):\n    def forward(self, idx):\n        out = super().forward(idx)[0]\n"
               "        return (out / 2 if bool((idx == 49).any()) else out), None\n", "LateScaled"),
    # a masked assignment: the one kind of write torch lets through to a tensor of zero strides
    "masked": ("class LateMasked(TinyLM):\n    def forward(self, idx):\n        out = super().forward(idx)[0]\n"
               "        out[idx == 49] = -100.0\n        return out, None\n", "LateMasked"),
    # one that writes back what it read from a stand-in (zeros times a half): the bits stay, the write counts
    "masked_scaled": ("class LateHalved(TinyLM):\n    def forward(self, idx):\n"
                      "        out = super().forward(idx)[0]\n        out[idx == 49] *= 0.5\n        return out, None\n",
                      "LateHalved"),
    "none": ("", "TinyLM"),  # no change: scored through the fused head to the end
}


@pytest.mark.parametrize("case", sorted(LATER))
def test_custom_code_that_changes_its_logits_only_on_later_windows_is_scored_as_it_answers(tmp_path, case,
                                                                                          monkeypatch):
    """After the checked calls the head's matmul is left out of the student's forward (the grader runs it):
    the layer answers with a stand-in, and the grader asks for more windows a request. A forward that changes
    its logits only on windows unlike the checked ones (in place, by a masked assignment, or into a new
    tensor) does not return that stand-in untouched: that call is run with the layer and checked, the check
    fails, and from then on the fused head is declined: those windows score what the student's forward
    really returns. A forward that changes nothing is scored through the fused head to the end."""
    import torch.nn.functional as F

    import harness.sandbox.run as sandbox_run
    from harness.metrics.fused import FusedScorer

    monkeypatch.setattr(sandbox_run, "CPU_LOGITS_BUDGET", 2 * 4 * 8 * 50)  # two windows of logits a request
    model, sd = _submission(tmp_path, LATER[case][0])
    ns: dict = {}
    exec(MODEL_PY + LATER[case][0], ns)
    own = ns[LATER[case][1]](vocab_size=50, d=16, block_size=8).eval()
    own.load_state_dict(sd)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 49, (3, 6, 8), generator=g)  # three batches of 6 windows without token 49
    late = clean[0].clone()
    late[2, 5] = 49
    targets = torch.randint(0, 50, (48,), generator=g)
    with SandboxedModel(tmp_path, f"model.py:{LATER[case][1]}", sd,
                        kwargs={"vocab_size": 50, "d": 16, "block_size": 8}, max_positions=8) as sm:
        scorer = FusedScorer.for_model(sm, clean[0, :1], 50)  # the first checked call
        assert scorer is not None
        asked = []
        hidden = sm._hidden
        monkeypatch.setattr(sm, "_hidden", lambda ids: asked.append(ids.shape[0]) or hidden(ids))
        got = [scorer.nll(ids, [0] * 6, targets) for ids in (clean[1], clean[2], late)]
        declined, skipped, notes = sm._head is False, sm._head_skipped, sm.notes
    # requests of 2 windows (the first is the last checked call, the second the first without the head's
    # matmul), then of up to 32: the rest of each batch, the late one declined on its first request
    # a masked write on every call, even one that selects nothing, counts: such forwards run their head checked
    # from the first call without it on, in requests of logits, and the late window fails its check
    assert asked == ([2] * 8 if case.startswith("masked") else [2, 2, 2, 6, 6])
    with torch.no_grad():
        want = [F.cross_entropy(own(ids)[0].reshape(-1, 50), targets, reduction="none") for ids in clean[1:]]
        # a declined call's windows run alone (its batch was sized for hidden states)
        want.append(F.cross_entropy(torch.cat([own(late[k:k + 1])[0] for k in range(6)]).reshape(-1, 50), targets,
                                    reduction="none"))
    for g_, w in zip(got, want):
        torch.testing.assert_close(g_, w, rtol=1e-6, atol=1e-6)
    if case == "none":
        assert not declined and skipped is True
        assert not any("on later windows" in n for n in notes)
        return
    assert declined  # for good
    assert not torch.allclose(want[2], F.cross_entropy(model(late)[0].reshape(-1, 50), targets, reduction="none"))
    assert any("on later windows forward did not return its layer head's output unchanged" in n for n in notes)


@pytest.mark.parametrize("case", ["sequence_first", "head_twice", "masked"])
def test_a_forward_that_does_not_take_the_stand_in_as_its_head_is_checked_from_then_on(case):
    """In the child, in-process. Checked at batch 1, then at batch 3 (each window run alone): a forward that
    works sequence first (the layer's input and output transposed) is scored through the stand-in, the
    hidden states in the windows' order; a forward that also calls its head on a last position keeps being
    scored through the fused head, each call checked; a masked assignment to the logits on a later window
    declines."""
    import warnings

    import torch.nn as nn

    from harness.sandbox.student_class import Caller

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.mix, self.head = nn.Embedding(300, 12), nn.Linear(12, 12), nn.Linear(12, 300)

        def hidden(self, idx):
            return torch.tanh(self.mix(self.tok(idx)))

        def forward(self, idx):
            x = self.hidden(idx)
            if case == "sequence_first":
                return self.head(x.transpose(0, 1)).transpose(0, 1)
            if case == "head_twice":
                self.last = self.head(x[:, -1])
            out = self.head(x)
            if case == "masked":
                out[idx == 7] = -100.0
            return out

    torch.manual_seed(0)
    net = Net().eval()
    caller = Caller(net)
    for i, B in enumerate((1, 1, 3, 3)):
        ids = torch.randint(8, 300, (B, 5))
        if case == "masked" and i == 3:
            ids[1, 2] = 7
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation warning on writes to an expanded tensor
            hidden = caller.head_input(ids, 300)
            with torch.no_grad():
                own = net(ids)
        if hidden is None:
            break
        with torch.no_grad():
            fused = torch.nn.functional.linear(hidden, net.head.weight, net.head.bias)
        torch.testing.assert_close(fused, own, rtol=1e-6, atol=1e-6)
    if case == "sequence_first":
        assert hidden is not None and caller.head_skipped is True and not caller.head_declined
        assert not any("on later windows" in n for n in caller.notes)
        return
    if case == "head_twice":
        assert hidden is not None and caller.head_skipped is False and not caller.head_declined
    else:
        assert hidden is None and caller.head_declined and i == 3
    said = "did not take a stand-in" if case == "head_twice" else "did not return its layer head's output unchanged"
    assert any(said in n for n in caller.notes)


def test_the_head_checked_is_left_out_of_forward_and_gives_its_input_as_it_ran():
    """In the child, in-process: the first two calls run the student's head and check it; later calls leave
    its matmul out (a stand-in of zero strides), and hand over the same hidden states, with targets too."""
    import torch.nn as nn
    import torch.nn.functional as F

    from harness.sandbox.student_class import Caller

    class Net(nn.Module):  # nanoGPT's shape: without targets, only the last position's logits
        def __init__(self):
            super().__init__()
            self.tok, self.mix, self.lm_head = nn.Embedding(300, 12), nn.Linear(12, 12), nn.Linear(12, 300)
            self.real_calls = 0
            self.lm_head.register_forward_pre_hook(lambda *a: None)  # a pre-hook cannot change the output

        def forward(self, idx, targets=None):
            x = torch.tanh(self.mix(self.tok(idx)))
            self.real_calls += "forward" not in vars(self.lm_head)
            if targets is None:
                return self.lm_head(x[:, [-1]]), None
            logits = self.lm_head(x)
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    torch.manual_seed(0)
    net = Net().eval()
    caller = Caller(net)
    for i in range(5):
        ids = torch.randint(0, 300, (4, 7))
        hidden = caller.head_input(ids, 300)
        with torch.no_grad():
            assert torch.equal(hidden, torch.tanh(net.mix(net.tok(ids))))
        assert caller.head_skipped is (True if i >= 2 else None)
    assert not caller.head_declined and caller.with_targets and caller.head[0] == "lm_head"
    # the two checked calls' windows, each run alone, and the first window's first try without targets
    assert net.real_calls == 2 * 4 + 1


@pytest.mark.parametrize("case", ["head", "aux_head", "scribbled", *sorted(NOT_A_HEAD)])
def test_custom_code_is_scored_through_the_fused_head_only_where_forward_ends_in_its_linear(tmp_path, case):
    """Where forward's logits are exactly one nn.Linear's output, the grader runs that layer itself on the
    hidden states the sandbox hands over (no logits cross), an auxiliary layer of the same width beside it:
    the same NLLs as the logits path to 1e-6. Where they are not (a matmul head, logits changed
    after the layer, in place too, a Linear subclass with its own forward, a hook of the student's on the
    head), the fused head is declined, for good. The head's input changed after the layer ran is scored as
    it was when the layer ran."""
    import torch.nn.functional as F

    from harness.metrics.fused import FusedScorer

    extra, cls = {"aux_head": AUX_HEAD, "scribbled": SCRIBBLED}.get(case) or NOT_A_HEAD.get(case, ("", "TinyLM"))
    model, sd = _submission(tmp_path, extra)
    if case == "aux_head":
        torch.manual_seed(1)
        sd["aux.weight"], sd["aux.bias"] = torch.randn(50, 16), torch.randn(50)
    g = torch.Generator().manual_seed(0)
    ids, targets = torch.randint(0, 50, (40, 8), generator=g), torch.randint(0, 50, (320,), generator=g)
    with SandboxedModel(tmp_path, f"model.py:{cls}", sd, kwargs={"vocab_size": 50, "d": 16, "block_size": 8},
                        max_positions=8) as sm:
        plain = F.cross_entropy(sm.logits(ids).reshape(-1, 50), targets, reduction="none")
        scorer = FusedScorer.for_model(sm, ids[:1], 50)
        if case not in ("head", "aux_head", "scribbled"):
            assert scorer is None and sm._head is False
            assert sm.hidden_and_head(ids) is None  # for good
            return
        assert scorer is not None and sm._head_name == "head"
        fused = scorer.nll(ids, [0] * 40, targets)
        again = sm.hidden_and_head(ids)[0]  # the third call: the head's matmul left out in the child
        assert again.shape == (40, 8, 16) and sm._head_skipped is True
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(scorer.head.nll(again.reshape(-1, 16), targets), plain, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(plain, F.cross_entropy(model(ids)[0].reshape(-1, 50), targets, reduction="none"))
