"""Metrics: a model's numbers on the course's fixed data, by a documented protocol.

- `protocol.py`: the model seam (`LogitsModel`, `TorchLogitsModel`, `TruncatedVocabulary`, `first_logits`).
- `windows.py`: the pure plans: clm-v1 streams and windows, mlm-v1 streams, blocks and masks.
- `nll.py`: logits to per-target NLLs, batch by batch, under a memory budget.
- `fused.py`: the output layer and its log-sum-exp fused, for models that hand over hidden states and head.
- `common.py`: input checks, the unigram baseline, JSON-ready results.
- `clm.py` (clm-v1, causal) and `mlm.py` (mlm-v1, masked): the protocols.
- `score.py`: `score(model, family, data, settings)`, the one dispatch from a family to its protocol.
- `causality.py`: does a causal LM look ahead?
"""
