"""The two model families every stage names: `gpt`, a causal LM (scored by clm-v1), and `mlm`, a masked LM
(scored by mlm-v1). submission.toml's `family`, the layouts' `FAMILY`, the course's references and
`harness reference train` all use these names."""

FAMILIES = ("gpt", "mlm")
