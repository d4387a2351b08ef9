"""Deduplication: exact (the same text) and near (MinHash over word 5-grams, with `datasketch`).

Both keep the first copy and drop later ones, in one streaming pass. Exact: an 8-byte BLAKE2 digest of the text
with its whitespace runs collapsed, in a set (~100 bytes a document). Near: each document's word 5-gram set
(`ngrams.Words`, 32-bit shingle hashes) becomes a `datasketch.MinHash` signature (`signatures`, pure, run in
worker processes); `NearIndex` bands the signatures as `datasketch.MinHashLSH` does for the threshold (its own
optimiser picks bands x rows), then confirms a candidate by the signatures' estimated Jaccard similarity.

Why not `MinHashLSH` as the index itself: it keeps a set per bucket and every key's band list, about 3.7 KB a
document (over 1 GB for a 1 GB web crawl of short pages); dedup only asks "was a similar document kept before?",
so one dict from band hash to the first document's number (~0.1 KB per band) and the kept signatures suffice.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from slmkit.base.config import DataConfig
from slmkit.data.quality.ngrams import Words

SHINGLE = 5  # words per shingle (datatrove's MinHash default)
NUM_PERM = 128
_SPACES = re.compile(r"\s+")


class ExactDedup:
    """Remembers digests of whitespace-normalised texts; `seen(text)` says whether it came before (and adds it)."""

    def __init__(self) -> None:
        self.digests: set[bytes] = set()

    def seen(self, text: str) -> bool:
        d = hashlib.blake2b(_SPACES.sub(" ", text).strip().encode("utf-8", "replace"), digest_size=8).digest()
        if d in self.digests:
            return True
        self.digests.add(d)
        return False


def _template(num_perm: int, seed: int):
    from datasketch import MinHash  # optional dependency (slmkit[quality])

    return MinHash(num_perm=num_perm, seed=seed, hashfunc=int)


def signatures(texts: Sequence[str], num_perm: int = NUM_PERM, seed: int = 1) -> list[np.ndarray | None]:
    """One MinHash signature (uint32, `num_perm` values) per text, from its distinct word 5-grams (its words when
    it has fewer than 5); None for a text without words."""
    template = _template(num_perm, seed)
    words = Words(texts)
    h, first = words.ngrams(SHINGLE)
    docs = words.doc[first]
    out: list[np.ndarray | None] = []
    starts = np.searchsorted(docs, np.arange(len(texts) + 1))
    wstarts = np.searchsorted(words.doc, np.arange(len(texts) + 1))
    for i in range(len(texts)):
        sh = h[starts[i] : starts[i + 1]]
        if not len(sh):
            sh = words.hashes[wstarts[i] : wstarts[i + 1]]  # a text shorter than one shingle: its words
        if not len(sh):
            out.append(None)
            continue
        m = template.copy()
        m.update_batch(np.unique((sh & np.uint64(0xFFFFFFFF)).astype(np.uint32)).tolist())
        out.append(np.asarray(m.hashvalues, dtype=np.uint32))
    return out


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) that datasketch's MinHashLSH picks for this threshold (equal weights on both error kinds)."""
    from datasketch import MinHashLSH  # optional dependency (slmkit[quality])

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


class NearIndex:
    """Kept documents' signatures, banded; `duplicate_of(sig)` returns the number of an earlier kept document
    whose estimated Jaccard similarity is >= threshold, else indexes `sig` and returns None."""

    def __init__(self, threshold: float = DataConfig.near_threshold, num_perm: int = NUM_PERM):
        self.threshold, self.num_perm = threshold, num_perm
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.buckets: dict[int, int] = {}
        self._sigs = np.zeros((1024, num_perm), dtype=np.uint32)
        self.kept = 0

    def _keys(self, sig: np.ndarray) -> list[int]:
        r = self.rows
        return [hash((b, sig[b * r : (b + 1) * r].tobytes())) for b in range(self.bands)]

    def duplicate_of(self, sig: np.ndarray) -> int | None:
        keys = self._keys(sig)
        for cand in dict.fromkeys(self.buckets[k] for k in keys if k in self.buckets):
            if float(np.mean(self._sigs[cand] == sig)) >= self.threshold:
                return cand
        if self.kept == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.zeros_like(self._sigs)])
        self._sigs[self.kept] = sig
        for k in keys:
            self.buckets.setdefault(k, self.kept)
        self.kept += 1
        return None
