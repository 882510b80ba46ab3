"""`trained-on-validation`: a public split the model knows far better than the private one.

A model that never saw either evaluation split does about as well on both, up to how the splits differ
(which the course's reference model, trained on the train split alone, measures) and the noise of a few
hundred documents. A model trained on (part of) the public split recalls those documents: its public loss
sits far below its private loss. So the rule compares the model's gap, public − private, with the
reference's; it fires where the model's is lower by more than `validation_gap_sigmas` standard errors of
the difference and by at least `validation_gap_nats`.

The standard error comes from per-document losses (documents are the sampled unit; each split's mean loss
is a ratio of sums, whose variance is the classic ratio estimator's). Where the reference was scored on
the same documents with the same tokenizer, the differences are paired document by document, so how hard
each document is cancels and the test is much sharper; otherwise the reference's gap (or, with another
tokenizer, none) is subtracted unpaired.

The evidence is per document: the public documents whose loss (paired: less the reference's) sits furthest
below the private documents', and how many sit below every private one (against how many would by chance).
A pure function of per-document losses, tested with real tiny models trained on the public split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from harness.metrics.documents import DocumentLosses

MIN_DOCUMENT_TOKENS = 8  # shorter documents are too noisy to stand as evidence (they still count in the means)
EVIDENCE_DOCUMENTS = 5


@dataclass(frozen=True)
class RecalledDocument:
    """A public document the model knows far better than the private ones."""

    index: int
    title: str | None
    tokens: int
    loss: float  # nats per token
    reference_loss: float | None  # the reference's on the same document (paired), else None
    below_private: float  # how far its (paired) loss sits below the private documents' median, in their spreads
    below_every_private: bool  # lower than every private document's


@dataclass(frozen=True)
class SplitGap:
    """The model's public − private gap against the reference's, and whether it is beyond the noise."""

    public_split: str
    private_split: str
    public_loss: float  # nats per token over the documents' own tokens
    private_loss: float
    gap: float  # public − private
    reference_gap: float | None  # the reference's public − private; None: no comparable reference (taken as 0)
    paired: bool  # the reference scored the same documents with the same tokenizer
    stderr: float  # of gap − reference_gap
    threshold: float  # flagged where gap − reference_gap < −threshold
    flagged: bool
    public_documents: int  # documents with at least MIN_DOCUMENT_TOKENS scored, as evidence
    private_documents: int
    below_every_private: int  # public documents lower than every private one
    expected_below: float  # how many would be by chance
    documents: tuple[RecalledDocument, ...]

    @property
    def excess(self) -> float:
        """How far the model's gap sits below the reference's (positive: more than the reference's)."""
        return (self.reference_gap or 0.0) - self.gap

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["documents"] = [asdict(x) for x in self.documents]
        d["excess"] = self.excess
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}

    def message(self) -> str:
        ref = (f"the reference's is {self.reference_gap:+.3f}" if self.reference_gap is not None
               else "no reference scored with this tokenizer to compare with (taken as 0)")
        text = (f"The public split ({self.public_split}) loss {self.public_loss:.3f} sits {-self.gap:.3f} nats below "
                f"the private split's ({self.private_split}) {self.private_loss:.3f}; {ref}, and the evaluation's "
                f"noise is ± {self.stderr:.3f} (flagged beyond {self.threshold:.3f}): the model has seen "
                f"{self.public_split} documents in training.")
        if self.below_every_private:
            text += (f" {self.below_every_private} of {self.public_documents} {self.public_split} documents score "
                     f"below every one of the {self.private_documents} {self.private_split} documents "
                     f"({self.expected_below:.1f} would by chance)")
            named = [d for d in self.documents if d.below_every_private][:3]
            if named:
                text += ", e.g. " + "; ".join(_doc_text(d) for d in named)
            text += "."
        return text


def _doc_text(d: RecalledDocument) -> str:
    name = f"“{d.title}”" if d.title else f"document {d.index}"
    ref = f" (reference {d.reference_loss:.2f})" if d.reference_loss is not None else ""
    return f"{name} at {d.loss:.2f} nats per token{ref}"


def _arrays(d: DocumentLosses) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(d.nll, dtype=np.float64), np.asarray(d.tokens, dtype=np.int64)


def _ratio_se(y: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Σy/Σt over documents with targets, and its standard error as a ratio estimator over documents."""
    keep = t > 0
    y, t = y[keep], t[keep]
    n, total = int(t.size), int(t.sum())
    if total == 0:
        return math.nan, math.nan
    mean = math.fsum(y.tolist()) / total
    if n < 2:
        return mean, math.inf
    resid = y - mean * t
    return mean, math.sqrt(n / (n - 1) * math.fsum((resid * resid).tolist())) / total


def _same_documents(a: DocumentLosses | None, b: DocumentLosses) -> bool:
    return a is not None and a.tokens == b.tokens


def split_gap(public: DocumentLosses, private: DocumentLosses, *, reference_public: DocumentLosses | None = None,
              reference_private: DocumentLosses | None = None, sigmas: float = 3.0, min_nats: float = 0.05,
              public_titles: Sequence[str] | None = None) -> SplitGap | None:
    """The `trained-on-validation` test of one model's per-document losses on the public and the private
    split against the reference's: pass the reference's only where it was scored with the model's tokenizer
    (else its per-token numbers count other tokens), None where not. Returns None where a split has fewer
    than two scored documents: nothing to compare."""
    yp, tp = _arrays(public)
    yq, tq = _arrays(private)
    if (tp > 0).sum() < 2 or (tq > 0).sum() < 2:
        return None
    pub_loss, pub_se = _ratio_se(yp, tp)
    priv_loss, priv_se = _ratio_se(yq, tq)
    gap = pub_loss - priv_loss
    paired = _same_documents(reference_public, public) and _same_documents(reference_private, private)
    ref_p = ref_q = None
    if paired:
        ref_p, ref_q = _arrays(reference_public)[0], _arrays(reference_private)[0]
        d_pub, se_p = _ratio_se(yp - ref_p, tp)
        d_priv, se_q = _ratio_se(yq - ref_q, tq)
        reference_gap = gap - (d_pub - d_priv)
        stderr = math.hypot(se_p, se_q)
    elif reference_public is not None and reference_private is not None \
            and sum(reference_public.tokens) and sum(reference_private.tokens):
        # (the caller passes a reference only where it shares the model's tokenizer) other documents scored:
        # the reference's gap, and both gaps' noise
        rp, rse_p = _ratio_se(*_arrays(reference_public))
        rq, rse_q = _ratio_se(*_arrays(reference_private))
        reference_gap = rp - rq
        stderr = math.sqrt(pub_se**2 + priv_se**2 + rse_p**2 + rse_q**2)
    else:
        reference_gap = None
        stderr = math.hypot(pub_se, priv_se)
    threshold = max(sigmas * stderr, min_nats)
    flagged = (reference_gap or 0.0) - gap > threshold

    # evidence: each eligible document's loss per token (paired: less the reference's on it)
    def per_doc(y, t, ref):
        own = y / np.maximum(t, 1)
        return own - ref / np.maximum(t, 1) if ref is not None else own

    sp, sq = per_doc(yp, tp, ref_p), per_doc(yq, tq, ref_q)
    ep, eq = tp >= MIN_DOCUMENT_TOKENS, tq >= MIN_DOCUMENT_TOKENS
    documents: list[RecalledDocument] = []
    below = 0
    n_pub, n_priv = int(ep.sum()), int(eq.sum())
    if n_pub and n_priv:
        priv_scores = sq[eq]
        lowest = float(priv_scores.min())
        median = float(np.median(priv_scores))
        spread = 1.4826 * float(np.median(np.abs(priv_scores - median))) or float(priv_scores.std()) or 1.0
        idx = np.flatnonzero(ep)
        below = int((sp[idx] < lowest).sum())
        order = idx[np.argsort(sp[idx], kind="stable")][:EVIDENCE_DOCUMENTS]
        for i in order.tolist():
            documents.append(RecalledDocument(
                index=i, title=public_titles[i] if public_titles is not None and i < len(public_titles) else None,
                tokens=int(tp[i]), loss=round(float(yp[i] / tp[i]), 6),
                reference_loss=round(float(ref_p[i] / tp[i]), 6) if ref_p is not None else None,
                below_private=round((median - float(sp[i])) / spread, 3), below_every_private=bool(sp[i] < lowest)))
    return SplitGap(public_split=public.split, private_split=private.split, public_loss=pub_loss,
                    private_loss=priv_loss, gap=gap, reference_gap=reference_gap, paired=paired, stderr=stderr,
                    threshold=threshold, flagged=bool(flagged), public_documents=n_pub, private_documents=n_priv,
                    below_every_private=below, expected_below=n_pub / (n_priv + 1) if n_priv else 0.0,
                    documents=tuple(documents))



# --- from measurements ---------------------------------------------------------------------------------------


def reference_gap_documents(measured: Any) -> dict[str, Any] | None:
    """A reference's per-document losses on both splits and its tokenizer, from its `Measurement`; None where
    it has none (not measured, failed, or `harness check`, which scores no private split)."""
    docs = getattr(measured, "documents", None) or {}
    if not docs.get("public") or not docs.get("private"):
        return None
    return {"public": DocumentLosses.from_dict(docs["public"]), "private": DocumentLosses.from_dict(docs["private"]),
            "tokenizer_sha256": measured.tokenizer.sha256 if measured.tokenizer else None}


def measured_gap(measured: Any, reference: dict[str, Any] | None, tolerances: Any) -> SplitGap | None:
    """`split_gap` of one submission's `Measurement` against the reference's documents
    (`reference_gap_documents`), which count only where both used the same tokenizer. None where either split
    was not scored, or the numbers are not comparable (partial metrics)."""
    docs = measured.documents or {}
    if not docs.get("public") or not docs.get("private") or measured.metrics is None or measured.metrics.partial:
        return None
    own_tokenizer = measured.tokenizer.sha256 if measured.tokenizer else None
    same = reference is not None and own_tokenizer and reference.get("tokenizer_sha256") == own_tokenizer
    return split_gap(DocumentLosses.from_dict(docs["public"]), DocumentLosses.from_dict(docs["private"]),
                     reference_public=reference["public"] if same else None,
                     reference_private=reference["private"] if same else None,
                     sigmas=tolerances.validation_gap_sigmas, min_nats=tolerances.validation_gap_nats,
                     public_titles=docs["public"].get("titles"))
