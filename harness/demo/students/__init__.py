"""The example class's students: one module per submission (or per tightly related group), each with a
builder `<id>(ctx, sid)` that trains its model on the course's data and writes the folder as that
student handed it in. `common` holds what they share; `BUILDERS` maps each id to its builder."""

from __future__ import annotations

from typing import Callable

from harness.demo.students.broken import broken_file, copied_model, hostile_pickle
from harness.demo.students.common import Ctx
from harness.demo.students.custom_code import custom_code, custom_crash, custom_loop
from harness.demo.students.hf_gpt2_clean import hf_gpt2_clean
from harness.demo.students.nanogpt_clean import nanogpt_clean
from harness.demo.students.s000_encoder import s000_encoder
from harness.demo.students.s001_pre_ln import s001_pre_ln
from harness.demo.students.s002_memorise import s002_memorise
from harness.demo.students.s003_pad_eot import s003_pad_eot
from harness.demo.students.s004_bert import s004_bert

BUILDERS: dict[str, Callable[[Ctx, str], None]] = {
    "s000_encoder": s000_encoder, "s001_pre_ln": s001_pre_ln, "s002_memorise": s002_memorise,
    "s003_pad_eot": s003_pad_eot, "s004_bert": s004_bert, "nanogpt_clean": nanogpt_clean,
    "hf_gpt2_clean": hf_gpt2_clean, "custom_code": custom_code, "broken_file": broken_file,
    "copied_model": copied_model, "hostile_pickle": hostile_pickle, "custom_crash": custom_crash,
    "custom_loop": custom_loop,
}
