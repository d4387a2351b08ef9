"""A unigram model of a domain's tokens: the reference that `slm anomaly fit --score ratio` divides by.

A text's loss under a language model mixes two things: how rare its words are and how unexpected their order and
combination are. A paragraph full of names and dates is "surprising" token by token to any model, in or out of
domain. Subtracting the same tokens' loss under a unigram model of the domain (each token's frequency, nothing
else) leaves the part a context-free model cannot explain: a per-token log-likelihood ratio. Counts come from the
run's prepared training data (`count_split`) or from in-domain text (`count_texts`); `Unigram.loss` gives the mean
negative log-probability of a unit's tokens, and with `leave_out` it first removes those tokens from the counts, so
text that was counted is not scored against itself (calibration text that is also the reference).

Add-alpha smoothing (alpha 0.5) keeps unseen tokens finite.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from slmkit.data.dataset import read_meta, split_shards
from slmkit.data.sources import DataError

ALPHA = 0.5
MAX_COUNT_TOKENS = 200_000_000  # the counts of a bigger training split come from its first shards up to this many
CHUNK = 16_000_000  # tokens counted at a time (bounds memory)


class Unigram:
    """Token counts over a vocabulary and the losses they give (nats per token)."""

    def __init__(self, counts: Iterable[int] | np.ndarray, alpha: float = ALPHA):
        self.counts = np.asarray(counts, dtype=np.int64)
        if self.counts.ndim != 1 or len(self.counts) == 0 or (self.counts < 0).any():
            raise DataError("unigram counts must be a non-empty list of whole numbers >= 0, one per token id")
        self.alpha = float(alpha)
        self.total = int(self.counts.sum())
        denom = self.total + self.alpha * len(self.counts)
        self.nll = -np.log((self.counts + self.alpha) / denom)  # (V,) nats of each token id

    def loss(self, ids: np.ndarray, leave_out: bool = False) -> float:
        """Mean negative log-probability of `ids` (nats per token); `leave_out`: with these very tokens taken out of
        the counts first (they were counted, e.g. calibration text that is also the reference)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            raise ValueError("no tokens to score")
        if ids.min() < 0 or ids.max() >= len(self.counts):
            raise DataError(f"token id {int(ids.max())} is outside the unigram counts' vocabulary of "
                            f"{len(self.counts)}")  # fmt: skip
        if not leave_out:
            return float(self.nll[ids].mean())
        own = np.bincount(ids, minlength=len(self.counts))
        if (own > self.counts).any():
            raise DataError("leave_out: these tokens were not all counted")
        rest = self.counts - own
        denom = (self.total - len(ids)) + self.alpha * len(self.counts)
        return float(-np.log((rest[ids] + self.alpha) / denom).mean())


def count_split(dataset: str | Path, split: str, vocab_size: int,
                limit: int = MAX_COUNT_TOKENS) -> tuple[np.ndarray, int]:  # fmt: skip
    """(counts per token id, tokens counted) of a prepared dataset's split, from its first shards up to `limit`
    tokens, read in chunks."""
    meta = read_meta(dataset)
    dtype = np.dtype(meta.get("dtype", "uint16")).newbyteorder("<")
    counts = np.zeros(vocab_size, dtype=np.int64)
    seen = 0
    for path, tokens in split_shards(dataset, split, meta):
        arr = np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))
        for s in range(0, tokens, CHUNK):
            chunk = np.asarray(arr[s : min(s + CHUNK, tokens, s + limit - seen)])
            if len(chunk) and int(chunk.max()) >= vocab_size:
                raise DataError(f"{path} holds token id {int(chunk.max())}, outside the vocabulary of {vocab_size}")
            counts += np.bincount(chunk, minlength=vocab_size)
            seen += len(chunk)
            if seen >= limit:
                return counts, seen
    return counts, seen


def count_texts(token_lists: Iterable[np.ndarray], vocab_size: int) -> tuple[np.ndarray, int]:
    """(counts per token id, tokens counted) of already-encoded texts."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    seen = 0
    for ids in token_lists:
        if len(ids):
            counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size)
            seen += len(ids)
    return counts, seen
