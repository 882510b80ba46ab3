"""The two model families every stage names: `gpt`, a causal LM (scored by clm-v1), and `mlm`, a masked LM
(scored by mlm-v1). submission.toml's `family`, the layouts' `FAMILY`, the course's references and
`harness reference train` all use these names; the reports call them by `FAMILY_LABELS`."""

from harness.errors import HarnessError

FAMILIES = ("gpt", "mlm")
FAMILY_LABELS = {"gpt": "causal LM", "mlm": "masked LM"}  # what a reader is told the family is
FAMILY_STYLES = {"gpt": "GPT-style", "mlm": "BERT-style"}


def check_family(family: str) -> str:
    """`family`, or the error that names the two there are."""
    if family not in FAMILIES:
        raise HarnessError("family-unknown", f"family {family!r} is not gpt or mlm")
    return family
