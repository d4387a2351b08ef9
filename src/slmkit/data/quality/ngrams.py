"""Word n-gram hashes of texts, vectorized with numpy: what decontamination (13-grams), near-deduplication
(5-gram shingles) and the statistics share.

Normalisation (as GPT-3's and lm-eval's decontamination): lower case; a word is a run of ASCII letters and digits or
of non-ASCII characters; punctuation and whitespace only separate words. A word's hash is a polynomial over its
UTF-8 bytes, an n-gram's a polynomial over its words' hashes, both mod 2**64 and finished with MurmurHash3's
avalanche step, so they are stable across processes and runs (the eval n-gram cache relies on that). With about
10**7 eval n-grams, the chance that some training n-gram collides with one by accident is below 10**-5 per 10**9
n-grams.

The texts of one call are joined with a NUL byte between them; an n-gram never spans two texts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_P = np.uint64(0x100000001B3)  # byte multiplier (FNV's 64-bit prime)
_Q = np.uint64(0x9E3779B97F4A7C15)  # word multiplier (odd: a bijection mod 2**64)
_WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyz0123456789":
    _WORD_BYTE[_c] = True
_WORD_BYTE[0x80:] = True  # every byte of a non-ASCII character belongs to a word
_POW: list[np.ndarray] = [np.ones(1, dtype=np.uint64)]  # _P ** k, grown on demand


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (an avalanching bijection), elementwise on uint64; wraps as intended."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _powers(n: int) -> np.ndarray:
    """_P ** k for k < n (uint64, wrapping)."""
    if len(_POW[0]) < n:
        size = max(n, 2 * len(_POW[0]))
        with np.errstate(over="ignore"):
            _POW[0] = np.cumprod(np.full(size, _P, dtype=np.uint64)) // _P  # P**0 .. P**(size-1) mod 2**64
        _POW[0][0] = 1
    return _POW[0][:n]


class Words:
    """The words of a batch of texts: `hashes` (uint64, one per word, in order), `doc` (int32, the text each word
    is in), and each word's byte span `starts`/`ends` in `data` (the lower-cased texts joined by NUL)."""

    __slots__ = ("data", "doc", "ends", "hashes", "starts")

    def __init__(self, texts: Sequence[str]):
        raw = "\0".join(texts).lower().encode("utf-8", errors="replace")
        self.data = raw
        b = np.frombuffer(raw, dtype=np.uint8)
        is_word = _WORD_BYTE[b]
        edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
        self.starts = np.flatnonzero(edges == 1)
        self.ends = np.flatnonzero(edges == -1)
        seps = np.flatnonzero(b == 0)
        self.doc = np.searchsorted(seps, self.starts).astype(np.int32)
        if not len(self.starts):
            self.hashes = np.zeros(0, dtype=np.uint64)
            return
        wb = b[is_word].astype(np.uint64)  # the bytes of the words, concatenated
        lengths = self.ends - self.starts
        offs = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offs[1:])
        pos = np.arange(len(wb), dtype=np.int64) - np.repeat(offs, lengths)  # position of each byte in its word
        with np.errstate(over="ignore"):
            terms = (wb + np.uint64(1)) * _powers(int(lengths.max()))[pos]
            self.hashes = fmix64(np.add.reduceat(terms, offs) ^ lengths.astype(np.uint64))

    def __len__(self) -> int:
        return len(self.hashes)

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, first word index) of every n-gram of consecutive words within one text."""
        m = len(self.hashes) - n + 1
        if m <= 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        h = self.hashes
        with np.errstate(over="ignore"):
            acc = h[:m].copy()
            for j in range(1, n):
                acc = acc * _Q + h[j : j + m]
        keep = np.flatnonzero(self.doc[:m] == self.doc[n - 1 :])
        return fmix64(acc[keep]), keep

    def word(self, i: int) -> str:
        return self.data[self.starts[i] : self.ends[i]].decode("utf-8", errors="replace")

    def span_text(self, first: int, n: int) -> str:
        """The normalised text of words first .. first+n-1 (joined by spaces)."""
        return " ".join(self.word(k) for k in range(first, first + n))


def ngram_hashes(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, text index) of every word n-gram of `texts` (see the module docstring)."""
    words = Words(texts)
    h, first = words.ngrams(n)
    return h, words.doc[first]
