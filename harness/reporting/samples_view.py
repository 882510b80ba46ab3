"""The "What the model writes" section of the student report: the samples of results.json, made safe to show.

Everything here is the model's (or the course's) text, so it is shown, never interpreted: the templates
autoescape it (markup stays text), and `visible` turns what would act rather than show — control
characters, bidirectional overrides, zero-width and other format characters, line and paragraph
separators — into their `\\xNN` / `\\uNNNN` escapes. Line breaks and tabs the model wrote stay what they are.
"""

from __future__ import annotations

import unicodedata
from typing import Any

_KEPT = {"\n", "\t"}
_ACTING = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}  # controls, format, separators, surrogates, private, unassigned


def visible(text: Any) -> str:
    """`text` with every character that would act on the page written as its escape."""
    out = []
    for ch in str(text):
        if ch not in _KEPT and unicodedata.category(ch) in _ACTING:
            n = ord(ch)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _percent(p: Any) -> str:
    return f"{100 * p:.1f}%" if isinstance(p, (int, float)) else "—"


def samples_view(samples: Any) -> dict[str, Any] | None:
    """What the template shows of a submission's samples (a `SamplesInfo` or its JSON), or None where
    nothing was written (no [samples] in the course, no model)."""
    if hasattr(samples, "to_json"):
        samples = samples.to_json()
    if not isinstance(samples, dict):
        return None
    if samples.get("error"):
        error = samples["error"]
        message = error.get("message") if isinstance(error, dict) else error
        return {"kind": "error", "note": visible(f"The model could not write: {message}"), "items": []}
    s = samples.get("settings") or {}
    if samples.get("kind") == "fill-ins":
        items = []
        for m in samples.get("fill_ins") or ():
            masks = [[{"token": visible(f.get("token")), "p": _percent(f.get("probability"))} for f in mask]
                     for mask in m.get("masks") or ()]
            items.append({"sentence": visible(m.get("sentence")), "error": visible(m["error"]) if m.get("error") else None,
                          "masks": masks})
        lead = (f"For each [MASK] of each sentence, the {s.get('top', 5)} tokens your model finds most likely "
                "and the probability it gives each (from one forward pass; the course chose the sentences).")
        return {"kind": "fill-ins", "lead": lead, "items": items, "note": None}
    items = []
    for c in samples.get("continuations") or ():
        end = " [end of text]"
        items.append({"prompt": visible(c.get("prompt")), "error": visible(c["error"]) if c.get("error") else None,
                      "greedy": visible(c.get("greedy", "")), "greedy_end": end if c.get("greedy_ended") else "",
                      "sampled": visible(c.get("sampled", "")), "sampled_end": end if c.get("sampled_ended") else ""})
    top_k = s.get("top_k")
    lead = (f"Your model's continuations of the course's prompts, up to {s.get('max_new_tokens')} tokens each. "
            "Greedy: the most likely token at every step. Sampled: drawn at temperature "
            f"{s.get('temperature')}{f' from the {top_k} most likely tokens' if top_k else ''}, with seed "
            f"{s.get('seed')}, so the same text on every rerun. The prompt is in bold; the model wrote the rest.")
    return {"kind": "continuations", "lead": lead, "items": items, "note": None}
