"""The tests' oracle for the example class (`harness.demo.example_class`): what a correct grader finds on
each submission, and the reloading helpers only the tests use.

`EXPECTED[id]` is the set of finding codes a correct grader raises on each submission (`expected(scale)`
adds what depends on the class around it); `FORBIDDEN` the codes it must never raise on the ids in
`CLEAN`. `arch-requirements` is in neither: the tiny test models are outside the assignment's sizes on
purpose, the demo's clean models inside them.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from harness.demo.example_class import ids
from harness.demo.students.minigpt import S002_KEYS

CLEAN = ("s004_bert", "nanogpt_clean", "hf_gpt2_clean", "custom_code")

EXPECTED: dict[str, set[str]] = {
    "s000_encoder": {"causal-leak"},
    "s001_pre_ln": {"no-validation-metric"},
    # 49,805 outputs match no tokenizer; the claimed training perplexity is far below the validation one
    "s002_memorise": {"vocab-mismatch", "memorisation", "no-validation-metric"},
    # The report gives no number, but outcome/results_table.csv (where the report sends the reader) holds
    # the sweep's final training losses: those are the claims, and they are training-only.
    "s003_pad_eot": {"pad-is-eot", "no-validation-metric"},
    "s004_bert": set(),
    "nanogpt_clean": set(),  # and similar-weights in the test class, where copied_model holds its weights
    "hf_gpt2_clean": set(),
    "custom_code": set(),
    "broken_file": {"checkpoint-unreadable"},
    "copied_model": {"similar-weights"},
    "hostile_pickle": {"checkpoint-unsafe"},
    "custom_crash": {"model-code-failed"},
    "custom_loop": {"model-code-failed"},  # or grading-timeout, where the grader's own limit comes first
}
FORBIDDEN = frozenset({"causal-leak", "memorisation", "vocab-mismatch", "pad-is-eot", "val-claim-mismatch",
                       "no-validation-metric"})


def expected(scale: str = "demo") -> dict[str, set[str]]:
    """EXPECTED for the ids of one scale's class: in the test class nanogpt_clean shares its weights with
    copied_model, so both get similar-weights."""
    out = {i: set(EXPECTED[i]) for i in ids(scale)}
    if scale == "test":
        out["nanogpt_clean"].add("similar-weights")
    return out


def causal_mask(n: int) -> torch.Tensor:
    """The mask seed 000 forgot: -inf above the diagonal."""
    return nn.Transformer.generate_square_subsequent_mask(n)


def s002_model_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Seed 002's on-disk names back to MiniGPT's (to reload the model it saved)."""
    out = {}
    for k, v in sd.items():
        for a, b in reversed(S002_KEYS):
            k = k.replace(b, a)
        out[k] = v
    return out
