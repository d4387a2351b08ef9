"""Corpus statistics (`slm data stats`): documents, tokens, bytes; length histograms; exact and near duplicate
rates; repeated lines and boilerplate share; character classes and language mix; top tokens, words and word
3-grams; per source of a mixture. Written as stats.json, stats.md and an offline stats.html with PNG charts.

One streaming pass in bounded memory: per document a few numbers (lengths, for the histograms), per distinct line
of a document 12 bytes (its hash and size, for the repeated-line shares), the dedup state of `clean.Cleaner`
(exact and near duplicates counted exactly as `slm data clean` would remove them, MinHash in worker processes),
a token histogram, and word / 3-gram counters over the first `NGRAM_SAMPLE_BYTES` of text only (pruned when large).

"Language" is a cheap proxy, stated as such: a document's dominant script, and for Latin script whether at least
`EN_STOPWORD_SHARE` of its words are common English function words ("en") or not ("latin-other").
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from slmkit.base.atomic import atomic_dir, atomic_write_json, atomic_write_text
from slmkit.base.config import DataConfig
from slmkit.base.console import progress as progress_bar
from slmkit.base.tokenizer import Tokenizer, build_tokenizer
from slmkit.data.dataset import META_FILE, SPLITS, doc_starts, find_tokenizer, read_meta, split_shards
from slmkit.data.quality.clean import PROCESS_MIN_BYTES, Cleaner, CleanSpec, _cpu_count
from slmkit.data.quality.filters import BOILERPLATE_MIN_DOCS
from slmkit.data.quality.ngrams import Words
from slmkit.data.quality.stats_report import write_charts, write_html
from slmkit.data.sources import DataError, Document, iter_documents, source_bytes

NGRAM_SAMPLE_BYTES = 32_000_000  # top words and 3-grams are counted over this much text per source
COUNTER_CAP = 400_000  # a counter past this many keys drops its rarest half
TOP = 25
EN_STOPWORD_SHARE = 0.15
_STOP = ("the of and to a in is was that for it as with on by he be at from his this are an or which have not "
         "had but were they their has one you i we she her its been").split()  # fmt: skip
_WORD = re.compile(r"[a-z0-9']+")
# Character classes: code point ranges (start of each range) and their class; ASCII is split further below.
_RANGES = [(0x0, "control"), (0x20, "ascii"), (0x7F, "control"), (0xA0, "latin"), (0x250, "other"),
           (0x370, "greek/cyrillic"), (0x530, "other"), (0x590, "arabic/hebrew"), (0x700, "other"), (0x900, "indic"),
           (0xE00, "other"), (0x2000, "symbols/emoji"), (0x2E80, "cjk"), (0xA000, "other"), (0xAC00, "cjk"),
           (0xD7B0, "other"), (0xFFFD, "replacement"), (0xFFFE, "other"), (0x1F000, "symbols/emoji"),
           (0x20000, "cjk"), (0x30000, "other")]  # fmt: skip
CLASSES = ["letter", "digit", "space", "punctuation", "control", "latin", "greek/cyrillic", "arabic/hebrew", "indic",
           "cjk", "symbols/emoji", "replacement", "other"]  # fmt: skip
SCRIPTS = ["letter", "latin", "greek/cyrillic", "arabic/hebrew", "indic", "cjk"]  # the classes that are a script
_STARTS = np.array([r[0] for r in _RANGES], dtype=np.uint32)
_RANGE_CLASS = np.array([CLASSES.index(r[1]) if r[1] != "ascii" else -1 for r in _RANGES], dtype=np.int64)
_ASCII = np.full(128, CLASSES.index("punctuation"), dtype=np.int64)
for _c in range(128):
    ch = chr(_c)
    _ASCII[_c] = (CLASSES.index("letter") if ch.isalpha() else CLASSES.index("digit") if ch.isdigit()
                  else CLASSES.index("space") if ch in " \t\n\r" else CLASSES.index("control") if _c < 32 or _c == 127
                  else CLASSES.index("punctuation"))  # fmt: skip
_STOP_HASHES = np.unique(Words(_STOP).hashes)


class _Part:
    """The accumulators of one source."""

    def __init__(self, name: str, vocab: int):
        self.name, self.documents, self.bytes, self.lines = name, 0, 0, 0
        self.doc_bytes: list[int] = []
        self.doc_words: list[int] = []
        self.doc_tokens: list[int] = []
        self.classes = np.zeros(len(CLASSES), dtype=np.int64)
        self.languages: Counter = Counter()
        self.tokens = np.zeros(vocab, dtype=np.int64) if vocab else None
        self.line_hashes: list[np.ndarray] = []
        self.line_bytes: list[np.ndarray] = []
        self._packed = 0  # line_hashes[:_packed] are already packed chunks
        self.words: Counter = Counter()
        self.trigrams: Counter = Counter()
        self.sampled = 0

    def add_lines(self, text: str) -> None:
        seen: dict[int, int] = {}
        for line in text.split("\n"):
            key = line.strip()
            if key:
                self.lines += 1
                seen[hash(key)] = len(key.encode("utf-8", "replace"))
        self.line_hashes.append(np.fromiter((h & 0xFFFFFFFFFFFFFFFF for h in seen), dtype=np.uint64, count=len(seen)))
        self.line_bytes.append(np.fromiter(seen.values(), dtype=np.int64, count=len(seen)))
        if len(self.line_hashes) - self._packed >= 4096:  # one array instead of thousands of small ones
            k = self._packed
            self.line_hashes[k:] = [np.concatenate(self.line_hashes[k:])]
            self.line_bytes[k:] = [np.concatenate(self.line_bytes[k:])]
            self._packed += 1

    def add_ngrams(self, text: str) -> None:
        if self.sampled >= NGRAM_SAMPLE_BYTES:
            return
        self.sampled += len(text)
        words = _WORD.findall(text.lower())
        self.words.update(words)
        self.trigrams.update(zip(words, words[1:], words[2:]))
        for c in (self.words, self.trigrams):
            if len(c) > COUNTER_CAP:
                cut = np.median(np.fromiter(c.values(), dtype=np.int64))
                for k in [k for k, v in c.items() if v <= cut]:
                    del c[k]


def _classify(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(class counts (len(texts), len(CLASSES)), English stop-word share per text)."""
    cp = np.frombuffer("\0".join(texts).encode("utf-32-le"), dtype=np.uint32)
    doc = np.cumsum(cp == 0) - (cp == 0)  # the text each code point is in (separators counted with the one before)
    cls = _RANGE_CLASS[np.searchsorted(_STARTS, cp, side="right") - 1]
    ascii_ = cp < 128
    cls[ascii_] = _ASCII[cp[ascii_]]
    keep = cp != 0
    counts = np.bincount(doc[keep] * len(CLASSES) + cls[keep], minlength=len(texts) * len(CLASSES))
    words = Words(texts)
    stop = np.bincount(words.doc[np.isin(words.hashes, _STOP_HASHES)], minlength=len(texts))
    total = np.bincount(words.doc, minlength=len(texts))
    return counts.reshape(len(texts), len(CLASSES)), stop / np.maximum(total, 1)


def _language(counts: np.ndarray, stop_share: float) -> str:
    script = [counts[CLASSES.index(s)] for s in SCRIPTS]
    if max(script) == 0:
        return "none"
    best = SCRIPTS[int(np.argmax(script))]
    if best in ("letter", "latin"):
        return "en" if stop_share >= EN_STOPWORD_SHARE else "latin-other"
    return best


class CorpusStats:
    """Feeds documents of one or more sources through the accumulators and the dedup of `Cleaner`."""

    def __init__(self, tokenizer: Tokenizer | None, near_threshold: float = DataConfig.near_threshold):
        self.tok = tokenizer
        self.parts: dict[str, _Part] = {}
        self.near_threshold = near_threshold

    def part(self, name: str) -> _Part:
        if name not in self.parts:
            self.parts[name] = _Part(name, self.tok.vocab_size if self.tok is not None else 0)
        return self.parts[name]

    def observe(self, docs: Iterable[tuple[Document, np.ndarray | None]], batch_chars: int = 1 << 20
                ) -> Iterator[Document]:  # fmt: skip
        """Count every (document, its tokens or None) and pass the document on (to the dedup)."""
        batch: list[tuple[Document, np.ndarray | None]] = []
        size = 0
        for doc, toks in docs:
            batch.append((doc, toks))
            size += len(doc.text)
            if size >= batch_chars:
                yield from self._batch(batch)
                batch, size = [], 0
        yield from self._batch(batch)

    def _batch(self, batch: list[tuple[Document, np.ndarray | None]]) -> Iterator[Document]:
        if not batch:
            return
        texts = [d.text for d, _ in batch]
        counts, stop = _classify(texts)
        toks = [t for _, t in batch]
        if self.tok is not None and any(t is None for t in toks):
            enc = getattr(self.tok, "enc", None)
            if enc is not None:  # tiktoken: batches in threads
                ids = enc.encode_ordinary_batch(texts, num_threads=2)
            else:
                ids = [self.tok.encode(t) for t in texts]
            toks = [np.asarray(i, dtype=np.int64) for i in ids]
        for k, (doc, _) in enumerate(batch):
            p = self.part(doc.source)
            p.documents += 1
            n = len(doc.text.encode("utf-8", "replace"))
            p.bytes += n
            p.doc_bytes.append(n)
            p.doc_words.append(len(doc.text.split()))
            p.classes += counts[k]
            p.languages[_language(counts[k], stop[k])] += 1
            if p.tokens is not None:
                p.doc_tokens.append(len(toks[k]))
                p.tokens += np.bincount(toks[k], minlength=len(p.tokens))[: len(p.tokens)]
            p.add_lines(doc.text)
            p.add_ngrams(doc.text)
            yield doc


def _dataset_docs(path: Path, max_bytes: int) -> Iterator[tuple[Document, np.ndarray]]:
    """The documents of a prepared dataset, decoded from its token shards (train then val), with their tokens."""
    meta, tok = read_meta(path), find_tokenizer(path)
    seen = 0
    for split in SPLITS:
        if split not in meta["splits"] or not meta["splits"][split]["tokens"]:
            continue
        arrays = [np.memmap(p, dtype=np.dtype(meta["dtype"]).newbyteorder("<"), mode="r") for p, _ in
                  split_shards(path, split, meta)]  # fmt: skip
        tokens = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        starts = doc_starts(path, split).astype(np.int64)
        ends = np.append(starts[1:], len(tokens))
        for a, b in zip(starts, ends):
            ids = np.asarray(tokens[a + 1 : b], dtype=np.int64)  # after the end-of-text that starts the document
            text = tok.decode(ids.tolist())
            yield Document(text, str(path)), ids
            seen += len(text)
            if max_bytes and seen >= max_bytes:
                return


def _source_docs(source: str, max_bytes: int, text_field: str) -> Iterator[tuple[Document, None]]:
    seen = 0
    for doc in iter_documents(source, text_field=text_field):
        yield Document(doc.text, source, doc.split, doc.first), None
        seen += len(doc.text)
        if max_bytes and seen >= max_bytes:
            return


# ---------------------------------------------------------------------------------------------------------
# The verb.


def _is_dataset(source: str) -> bool:
    return (Path(source) / META_FILE).is_file()


def _pick_tokenizer(sources: Sequence[str], tokenizer: str) -> Tokenizer | None:
    """The tokenizer to count tokens with: "none"; "auto" (the dataset's when a source is a prepared dataset, else
    gpt2); a kind (gpt2, ...) or a tokenizer/dataset/run directory."""
    if tokenizer == "none":
        return None
    if tokenizer == "auto":
        datasets = [s for s in sources if _is_dataset(s)]
        tokenizer = datasets[0] if datasets else "gpt2"
    if Path(tokenizer).is_dir():
        return find_tokenizer(tokenizer)
    if tokenizer.startswith(("char", "bpe")):
        raise DataError(f"--tokenizer {tokenizer} is learned from a corpus; pass gpt2, none, or a tokenizer directory")
    return build_tokenizer(tokenizer)


def corpus_stats(sources: Sequence[str], *, tokenizer: str = "auto", max_bytes: int = 0, text_field: str = "text",
                 near_threshold: float = DataConfig.near_threshold, workers: int = 0,
                 progress: bool = True) -> dict:  # fmt: skip
    """Statistics of each source (a corpus source or a prepared dataset dir) and of all together: a JSON-ready dict
    (see the module docstring). `max_bytes` > 0 reads at most that much text of each source."""
    if not sources:
        raise DataError("no source given; name a corpus source or a prepared dataset directory")
    for s in sources:
        if not _is_dataset(s):
            source_bytes(s)  # DataError for a missing source, before any work
    tok = _pick_tokenizer(sources, tokenizer)
    total = sum(_size(s) for s in sources)
    total = min(total, max_bytes * len(sources)) if max_bytes else total
    acc = CorpusStats(tok, near_threshold)
    spec = CleanSpec(dedup=("exact", "near"), near_threshold=near_threshold)
    cleaner = Cleaner(spec, workers=workers or (_cpu_count() if total >= PROCESS_MIN_BYTES else 1))
    bar = progress_bar(total or None, "stats", "B", enabled=progress, unit_scale=True)

    def docs():
        for s in sources:
            if _is_dataset(s):
                same = tok is not None and tok.fingerprint == find_tokenizer(s).fingerprint
                items = ((d, t if same else None) for d, t in _dataset_docs(Path(s), max_bytes))
            else:
                items = _source_docs(s, max_bytes, text_field)
            for d, t in items:
                bar.update(len(d.text))
                yield d, t

    try:
        for _ in cleaner.run(acc.observe(docs())):
            pass
    finally:
        bar.close()
    return summarize(acc, cleaner, tok)


def _size(source: str) -> int:
    if _is_dataset(source):
        return int(sum(s.get("bytes", 0) for s in read_meta(source)["splits"].values()))
    return source_bytes(source)


def _hist(values: Sequence[int]) -> dict:
    """Counts in powers-of-two bins: {"edges": [1, 2, 4, ...], "counts": [...]} plus quantiles."""
    v = np.asarray(values, dtype=np.int64)
    if not len(v):
        return {"edges": [], "counts": [], "min": 0, "median": 0, "mean": 0, "p90": 0, "max": 0}
    top = int(np.ceil(np.log2(max(2, v.max() + 1))))
    edges = [0] + [2**k for k in range(top + 1)]
    counts, _ = np.histogram(v, bins=edges)
    return {"edges": edges, "counts": counts.tolist(), "min": int(v.min()), "median": float(np.median(v)),
            "mean": round(float(v.mean()), 1), "p90": float(np.percentile(v, 90)), "max": int(v.max())}  # fmt: skip


def _lines(parts: Sequence[_Part]) -> dict[str, dict]:
    """Per part: share of lines repeated across documents and the byte share of boilerplate lines (seen in more
    than BOILERPLATE_MIN_DOCS documents), computed over all parts together."""
    hashes = [np.concatenate(p.line_hashes) if p.line_hashes else np.zeros(0, np.uint64) for p in parts]
    sizes = [np.concatenate(p.line_bytes) if p.line_bytes else np.zeros(0, np.int64) for p in parts]
    every = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    uniq, inv, df = np.unique(every, return_inverse=True, return_counts=True)
    out, start = {}, 0
    for p, h, b in zip(parts, hashes, sizes):
        f = df[inv[start : start + len(h)]]
        start += len(h)
        boiler = float(b[f > BOILERPLATE_MIN_DOCS].sum() / max(1, b.sum()))
        out[p.name] = {"distinct_lines": int(len(h)), "boilerplate_byte_share": round(boiler, 4),
                       "repeated_line_share": round(float(np.mean(f >= 2)) if len(f) else 0.0, 4)}  # fmt: skip
    return out


def _part_summary(p: _Part, removed: dict[str, int], tok: Tokenizer | None) -> dict:
    n = max(1, p.documents)
    out = {"documents": p.documents, "bytes": p.bytes, "lines": p.lines, "words": int(sum(p.doc_words)),
           "exact_duplicate_rate": round(removed.get("exact-duplicate", 0) / n, 4),
           "near_duplicate_rate": round(removed.get("near-duplicate", 0) / n, 4),
           "bytes_per_doc": _hist(p.doc_bytes), "words_per_doc": _hist(p.doc_words),
           "char_classes": {c: round(int(k) / max(1, int(p.classes.sum())), 5) for c, k in zip(CLASSES, p.classes)},
           "languages": {k: round(v / n, 4) for k, v in p.languages.most_common()},
           "top_words": p.words.most_common(TOP),
           "top_3grams": [(" ".join(g), c) for g, c in p.trigrams.most_common(TOP)],
           "ngram_sample_bytes": p.sampled}  # fmt: skip
    if p.tokens is not None and tok is not None:
        out["tokens"] = int(p.tokens.sum())
        out["tokens_per_doc"] = _hist(p.doc_tokens)
        top = np.argsort(p.tokens)[::-1][:TOP]
        out["top_tokens"] = [(tok.decode([int(i)]), int(p.tokens[i])) for i in top if p.tokens[i]]
    return out


def summarize(acc: CorpusStats, cleaner: Cleaner, tok: Tokenizer | None) -> dict:
    """The JSON-ready statistics: per source and, for a mixture, the total."""
    parts = list(acc.parts.values())
    lines = _lines(parts)
    per = {p.name: {**_part_summary(p, cleaner.removed_by_source.get(p.name, {}), tok), **lines[p.name]}
           for p in parts}  # fmt: skip
    out = {"tokenizer": tok.name if tok is not None else None, "near_threshold": acc.near_threshold, "sources": per}
    if len(parts) > 1:
        total = _Part("all", 0)
        for p in parts:
            total.documents += p.documents
            total.bytes += p.bytes
        out["total"] = {"documents": total.documents, "bytes": total.bytes,
                        "tokens": sum(v.get("tokens", 0) for v in per.values()),
                        "exact_duplicate_rate": round(cleaner.removed.get("exact-duplicate", {}).get("documents", 0)
                                                      / max(1, total.documents), 4),
                        "near_duplicate_rate": round(cleaner.removed.get("near-duplicate", {}).get("documents", 0)
                                                     / max(1, total.documents), 4)}  # fmt: skip
    return out


def data_stats(sources: Sequence[str], out: str | Path | None = None, *, overwrite: bool = False, **kw) -> dict:
    """`slm data stats`: `corpus_stats`, and with `out` a folder with stats.json, stats.md, stats.html and PNGs
    (refused when it exists, unless `overwrite`). Returns the statistics with "markdown" added."""
    if out is not None and Path(out).exists() and not (Path(out).is_dir() and overwrite):
        raise DataError(f"{out} exists; pick another --out or pass --overwrite to replace it")
    stats = corpus_stats(sources, **kw)
    md = stats_markdown(stats)
    if out is not None:
        with atomic_dir(out) as tmp:
            atomic_write_json(tmp / "stats.json", stats)
            atomic_write_text(tmp / "stats.md", md)
            charts = write_charts(stats, tmp)
            write_html(stats, md, charts, tmp / "stats.html")
    return {**stats, "markdown": md}


def stats_markdown(stats: dict) -> str:
    """A readable summary: one table row per source, then each source's details."""
    rows = [
        "| source | documents | MB | tokens | exact dup | near dup | repeated lines | boilerplate bytes | en |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in stats["sources"].items():
        rows.append(f"| {name} | {s['documents']:,} | {s['bytes'] / 1e6:,.2f} | {s.get('tokens', 0):,} | "
                    f"{100 * s['exact_duplicate_rate']:.1f}% | {100 * s['near_duplicate_rate']:.1f}% | "
                    f"{100 * s['repeated_line_share']:.1f}% | {100 * s['boilerplate_byte_share']:.1f}% | "
                    f"{100 * s['languages'].get('en', 0):.0f}% |")  # fmt: skip
    if "total" in stats:
        t = stats["total"]
        dup = f"{100 * t['exact_duplicate_rate']:.1f}% | {100 * t['near_duplicate_rate']:.1f}%"
        rows.append(f"| **all** | {t['documents']:,} | {t['bytes'] / 1e6:,.2f} | {t['tokens']:,} | {dup} | | | |")
    out = ["# Corpus statistics", "", f"tokenizer: {stats['tokenizer']}; near duplicates: estimated Jaccard >= "
           f"{stats['near_threshold']} over word 5-grams", "", *rows, ""]  # fmt: skip
    for name, s in stats["sources"].items():
        b, w = s["bytes_per_doc"], s["words_per_doc"]
        classes = ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["char_classes"].items() if v >= 0.0005)
        out += [f"## {name}", "",
                f"- bytes per document: median {b['median']:,.0f}, mean {b['mean']:,.0f}, p90 {b['p90']:,.0f}, "
                f"max {b['max']:,}; words per document: median {w['median']:,.0f}",
                f"- characters: {classes}",
                "- language (script + English function words): "
                + ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["languages"].items()),
                f"- top words: {', '.join(f'{k} ({v:,})' for k, v in s['top_words'][:12])}",
                f"- top 3-grams: {'; '.join(f'{k} ({v:,})' for k, v in s['top_3grams'][:8])}"]  # fmt: skip
        if "top_tokens" in s:
            out.append(f"- top tokens: {', '.join(f'{json.dumps(k)} ({v:,})' for k, v in s['top_tokens'][:12])}")
        out.append("")
    return "\n".join(out)
