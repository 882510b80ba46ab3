"""Grading a submission that names its own model code (`[model] code = "file.py:Name"`).

The code runs only in the sandbox (sandbox.py, student_class.py). What the grader gets back: the model as a
`LogitsModel`, its architecture with a source for every value (`None` and "not verified" where neither the
weights, the values it was built with nor the built module tell), and notes on how the code was built and
called. When the code cannot run (it does not import, its constructor fails, the weights do not fit it,
its forward fails) but a layout recognises the weights, the submission is graded through that layout
instead, with a `model-code-fallback` finding that says why: the student's weights are what is graded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

from harness.sources import NOT_VERIFIED
FIELDS = ("n_layers", "d_model", "n_heads", "context", "d_ff", "vocab_size")


@dataclass
class CustomModel:
    """A sandboxed student model and what grading reports about it."""

    model: Any  # SandboxedModel
    family: str
    info: dict[str, Any]  # the measurement's `model` (harness.grading.results.ModelInfo's JSON)

    def finish(self, result) -> None:
        """After evaluation: what the calls found out about forward (into the Measurement's warnings), then
        the sandbox ends."""
        result.warnings += [f"model code: {n}" for n in self.model.notes]
        self.model.close()


def _limits(job):
    from harness.sandbox.run import SandboxLimits

    # one call must time out well before the worker does, so the verdict names the model code
    if not job.timeout_s:
        return SandboxLimits()
    return SandboxLimits(call_seconds=max(10.0, job.timeout_s / 4), start_seconds=max(20.0, job.timeout_s / 3))


def _stored(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}


def load_custom(job, sub, root: Path, raw, window: int) -> CustomModel | str:
    """The student's code in the sandbox, tried on two windows of up to `window` tokens (the course's
    context); or, where it fails and a layout recognises the weights, the sentence that says why it could
    not be used (the caller grades through the layout). Raises the code's HarnessError where no layout would
    do either."""
    import torch

    from harness.sandbox.run import SandboxedModel

    context = sub.model.get("context")
    model = None
    try:
        model = SandboxedModel(root, sub.code, raw.tensors, kwargs=sub.model.get("kwargs") or {},
                               stored=_stored(raw.config), model_table=sub.model, max_positions=context,
                               limits=_limits(job), allow_unsandboxed=job.allow_unsandboxed_code)
        length = max(2, min(window, model.max_positions or window))
        # what evaluation will ask, asked now: a forward that fails only on real windows is caught here
        model.logits(torch.arange(2 * length).remainder(model.n_outputs).reshape(2, length))
    except HarnessError as e:
        if model is not None:
            model.close()
        if e.code != "model-code-failed" or not _layout_recognises(raw, sub.family):
            raise
        return (f"The model code {sub.code} could not be used ({e.message}); the weights were graded through "
                "the layout the harness recognises in them.")
    family = sub.family or "gpt"
    arch = {k: dict(v) for k, v in model.architecture.items()}
    if context is not None:
        arch["context"] = {"value": int(context), "source": "submission.toml"}
    for f in FIELDS:
        arch.setdefault(f, {"value": None, "source": NOT_VERIFIED})
    params = model.params if model.params is not None else \
        sum(int(t.numel()) for t in {id(t): t for t in raw.tensors.values()}.values())
    info = {"family": family, "layout": "custom-code", "params": params, "code": sub.code,
            **{f: arch[f]["value"] for f in FIELDS},
            "sources": {"params": "the built module's parameters", **{f: arch[f]["source"] for f in FIELDS}},
            "unverified": sorted(f for f in FIELDS if arch[f]["value"] is None),
            "built": model.built,
            "sandbox": model.boundary.describe() if model.sandboxed else
            f"none: run unsandboxed (--allow-unsandboxed-code; {model.boundary.detail})"}
    info["vocab_size"] = model.n_outputs
    return CustomModel(model, family, info)


def _layout_recognises(raw, family: str | None) -> bool:
    from harness.models.build import pick_layout

    try:
        pick_layout(raw.tensors, raw.config, family)
    except HarnessError:
        return False
    return True


def inspect_custom(sub, root: Path, raw) -> dict[str, Any]:
    """`harness inspect` of a submission with model code: how the class was built, its architecture with
    sources, and what its first calls showed; or why it could not run (and whether a layout would grade
    the weights instead)."""
    from harness.sandbox.run import SandboxedModel

    info: dict[str, Any] = {"layout": "custom-code", "code": sub.code}
    try:
        with SandboxedModel(root, sub.code, raw.tensors, kwargs=sub.model.get("kwargs") or {},
                            stored=_stored(raw.config), model_table=sub.model,
                            max_positions=sub.model.get("context")) as model:
            info.update(built=model.built, architecture=model.architecture, params=model.params,
                        n_outputs=model.n_outputs, notes=list(model.notes))
    except HarnessError as e:
        info["error"] = e.as_dict()
        info["fallback_layout"] = _layout_recognises(raw, sub.family)
    return info
