"""Quality filters: each decides, for one document, keep or drop (naming the rule), and may rewrite its text.

The published heuristics come from `datatrove` (the pipeline behind FineWeb): `gopher` (Gopher's quality rules:
50..100,000 words, mean word length 3..10, symbol, bullet, ellipsis and alphabetic-word ratios, stop words),
`gopher-repetition` (Gopher's repetition rules: duplicated lines/paragraphs, top 2-4-gram and duplicated 5-10-gram
shares: keyword spam), `c4` (C4's line rules: drops lines without terminal punctuation, with "javascript" or policy
text, then documents with fewer than 5 sentences, "lorem ipsum" or curly brackets) and `fineweb` (FineWeb's line
punctuation, short-line, duplicated-character and newline ratios). datatrove splits English into words with spaCy
(a large, separately downloaded model); here its filters get a whitespace word splitter and a punctuation sentence
splitter instead (`_Splitter`), which is what Gopher's paper describes and needs nothing offline.

Our own, small rules: `short` (fewer than `SHORT_WORDS` whitespace-separated words), `encoding` (replacement
characters, mojibake and control characters over `ENCODING_MAX_SHARE` of the text) and `boilerplate` (lines
seen in `BOILERPLATE_MIN_DOCS` or more earlier documents: navigation, cookie banners, footers), which keeps state
across documents and so runs in the main process (`Boilerplate`). Names and order: `FILTER_ORDER`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from slmkit.base.checks import QUALITY_FILTERS
from slmkit.data.sources import DataError

SHORT_WORDS = 50  # Gopher's minimum document length in words
ENCODING_MAX_SHARE = 0.005  # more than this share of suspicious characters drops a document
BOILERPLATE_MIN_DOCS = 2  # a line seen in this many earlier documents is boilerplate from then on
BOILERPLATE_MIN_CHARS = 8  # shorter lines ("}", "Notes") are never counted
_SKETCH_BITS = 26  # two rows of 2**26 one-byte counters (calloc'd: only touched pages take memory)
FILTER_ORDER = ("boilerplate", "short", "encoding", "gopher", "gopher-repetition", "c4", "fineweb")
"""The order filters run in: line removal first (a page left with nothing but its boilerplate removed is then
short), cheap rules before expensive ones."""
assert set(FILTER_ORDER) == set(QUALITY_FILTERS), "base/checks.QUALITY_FILTERS and FILTER_ORDER disagree"

_MOJIBAKE = re.compile("[\u00c2\u00c3][\u0080-\u00bf]|\u00e2\u20ac|[\ufffd\x00-\x08\x0b\x0e-\x1f\x7f]")
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")

Verdict = tuple[bool, str, "str | None"]
"""(keep, rule that dropped it or "", new text when the filter rewrote it else None)."""


def check_filters(names: Sequence[str]) -> list[str]:
    """The names in run order, validated; DataError listing the valid ones for an unknown name."""
    bad = [n for n in names if n not in QUALITY_FILTERS]
    if bad:
        raise DataError(f"unknown filter {bad[0]!r}; valid filters: {', '.join(FILTER_ORDER)}")
    return [n for n in FILTER_ORDER if n in names]


# ---------------------------------------------------------------------------------------------------------
# Our rules.


def short_filter(text: str) -> Verdict:
    return (len(text.split()) >= SHORT_WORDS, "short", None)


def encoding_filter(text: str) -> Verdict:
    bad = len(_MOJIBAKE.findall(text))
    return (bad <= ENCODING_MAX_SHARE * max(1, len(text)), "encoding", None)


class Boilerplate:
    """Removes lines seen in `BOILERPLATE_MIN_DOCS` or more earlier documents. Lines are counted once per
    document in a two-row count-min sketch of saturating byte counters (bounded memory whatever the corpus: a
    false positive needs a collision in both rows). Hashes are Python's (salted per process): this state lives
    in one process for one pass."""

    def __init__(self) -> None:
        self.rows = np.zeros((2, 1 << _SKETCH_BITS), dtype=np.uint8)
        self.mask = (1 << _SKETCH_BITS) - 1
        self.lines_removed = 0

    def __call__(self, text: str) -> Verdict:
        lines = text.split("\n")
        keys = [line.strip() for line in lines]
        counted = sorted({hash(k) & 0xFFFFFFFFFFFFFFFF for k in keys if len(k) >= BOILERPLATE_MIN_CHARS})
        if not counted:
            return True, "boilerplate", None
        h = np.array(counted, dtype=np.uint64)
        i0 = (h & np.uint64(self.mask)).astype(np.int64)
        i1 = ((h >> np.uint64(32)) & np.uint64(self.mask)).astype(np.int64)
        seen = np.minimum(self.rows[0, i0], self.rows[1, i1])
        common = {int(k) for k, s in zip(h, seen) if s >= BOILERPLATE_MIN_DOCS}
        for row, idx in ((0, i0), (1, i1)):
            vals = self.rows[row, idx]
            self.rows[row, idx] = np.where(vals < 255, vals + 1, vals)
        if not common:
            return True, "boilerplate", None
        kept = [ln for ln, k in zip(lines, keys) if (hash(k) & 0xFFFFFFFFFFFFFFFF) not in common
                or len(k) < BOILERPLATE_MIN_CHARS]  # fmt: skip
        self.lines_removed += len(lines) - len(kept)
        new = "\n".join(kept)
        return bool(new.strip()), "boilerplate", new


# ---------------------------------------------------------------------------------------------------------
# datatrove's rules.


def _datatrove_filters() -> dict[str, Callable[[], object]]:
    """Factories of datatrove's filters, with our offline word/sentence splitter (imported on first use: datatrove
    takes about a second to import)."""
    from datatrove.pipeline.filters import (  # optional and slow to import
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.utils.word_tokenizers import WordTokenizer  # optional and slow to import

    class _Splitter(WordTokenizer):
        """Words split at whitespace (Gopher's definition), sentences at . ! ? and line ends."""

        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in _SENTENCE.finditer(text)]

    splitter = _Splitter("en")
    return {
        "gopher": lambda: GopherQualityFilter(language=splitter),
        "gopher-repetition": lambda: GopherRepetitionFilter(language=splitter),
        "c4": lambda: C4QualityFilter(language=splitter),
        "fineweb": lambda: FineWebQualityFilter(language=splitter),
    }


def _wrap(name: str, flt) -> Callable[[str], Verdict]:
    from datatrove.data import Document as DtDocument  # optional and slow to import

    def run(text: str) -> Verdict:
        doc = DtDocument(text=text, id="0")
        out = flt.filter(doc)
        keep, why = (out, "") if isinstance(out, bool) else out
        return bool(keep), f"{name}:{why}" if why else name, doc.text if doc.text != text else None

    return run


def stateless_filters(names: Sequence[str]) -> list[tuple[str, Callable[[str], Verdict]]]:
    """(name, function) of the stateless filters among `names`, in run order (boilerplate excluded)."""
    names = [n for n in check_filters(names) if n != "boilerplate"]
    out: list[tuple[str, Callable[[str], Verdict]]] = []
    factories = None
    for n in names:
        if n == "short":
            out.append((n, short_filter))
        elif n == "encoding":
            out.append((n, encoding_filter))
        else:
            try:
                factories = factories or _datatrove_filters()
            except ImportError:
                raise DataError(f"filter {n!r} needs datatrove: pip install 'slmkit[quality]'") from None
            out.append((n, _wrap(n, factories[n]())))
    return out


def apply_filters(filters: Sequence[tuple[str, Callable[[str], Verdict]]], text: str) -> Verdict:
    """Run `filters` in order on `text`: the first that drops it decides; rewrites carry on to the next."""
    changed = None
    for _, flt in filters:
        keep, rule, new = flt(text)
        if new is not None:
            text = changed = new
        if not keep:
            return False, rule, changed
    return True, "", changed
