"""Eval contamination: 13-gram overlap between training documents and the eval tasks' items.

As GPT-3 (Brown et al. 2020, appendix C) and lm-eval's decontamination: both sides are lower-cased and split into
words (`ngrams`), and a training document that shares any word 13-gram with an item overlaps that item. Items
with fewer than 13 words cannot be checked this way; they are counted (`short_items`).

`EvalNGrams` holds every 13-gram hash of every item, sorted, with its task and item number (built once from the
texts the engine reads from the task files, saved as .npz and reloaded in milliseconds). `Contamination`
checks documents against it and counts, per task, the overlapping documents and the distinct items they hit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmkit.base.atomic import atomic_path
from slmkit.data.quality.ngrams import Words

NGRAM = 13
FORMAT = 1  # bump when the hashing or the file layout changes (old caches are then rebuilt)
_BATCH_CHARS = 1 << 20
_BLOOM_BITS = 25  # a table of 2^25 bits (4 MB): ~7% of them set by the 2.6 M eval 13-grams


@dataclass
class EvalNGrams:
    """Sorted 13-gram hashes of the eval items with, for each, its task (index into `tasks`) and item number."""

    hashes: np.ndarray  # (N,) uint64, sorted
    task_ids: np.ndarray  # (N,) uint16
    item_ids: np.ndarray  # (N,) uint32
    tasks: list[str]
    items: list[int]  # items per task
    short_items: list[int]  # items per task with fewer than NGRAM words

    @classmethod
    def build(cls, tasks: Sequence[str], texts: Iterable[tuple[int, int, str]]) -> EvalNGrams:
        """From (task index, item number, text) triples; an item may come in several texts (e.g. one per choice)."""
        parts, tids, iids = [], [], []
        n_items = [0] * len(tasks)
        long_items: list[set[int]] = [set() for _ in tasks]
        batch: list[tuple[int, int, str]] = []
        size = 0

        def flush():
            words = Words([t for _, _, t in batch])
            h, first = words.ngrams(NGRAM)
            doc = words.doc[first]
            meta = np.array([(t, i) for t, i, _ in batch], dtype=np.int64).reshape(-1, 2)
            parts.append(h)
            tids.append(meta[doc, 0].astype(np.uint16))
            iids.append(meta[doc, 1].astype(np.uint32))
            for t, i in set(map(tuple, meta[np.unique(doc)].tolist())):
                long_items[t].add(i)

        for t, i, text in texts:
            n_items[t] = max(n_items[t], i + 1)
            batch.append((t, i, text))
            size += len(text)
            if size >= _BATCH_CHARS:
                flush()
                batch, size = [], 0
        if batch:
            flush()
        h = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        t = np.concatenate(tids) if tids else np.zeros(0, dtype=np.uint16)
        it = np.concatenate(iids) if iids else np.zeros(0, dtype=np.uint32)
        order = np.lexsort((it, t, h))  # by hash, then task, then item
        h, t, it = h[order], t[order], it[order]
        new = np.ones(len(h), dtype=bool)  # drop repeated (hash, task, item) rows
        new[1:] = (h[1:] != h[:-1]) | (t[1:] != t[:-1]) | (it[1:] != it[:-1])
        short = [n_items[k] - len(long_items[k]) for k in range(len(tasks))]
        return cls(h[new], t[new], it[new], list(tasks), n_items, short)

    def _maybe(self, h: np.ndarray) -> np.ndarray:
        """Whether each hash may be an eval n-gram, from a bit table over the top _BLOOM_BITS bits of the hashes:
        False means surely not (a random read in a sorted array of millions costs ~1 us; this is ~20x cheaper).
        Packed 8 to a byte: every stream worker holds one."""
        if getattr(self, "_table", None) is None:
            top = self.hashes >> np.uint64(64 - _BLOOM_BITS)
            self._table = np.zeros(1 << (_BLOOM_BITS - 3), dtype=np.uint8)
            np.bitwise_or.at(self._table, top >> np.uint64(3), (1 << (top & np.uint64(7))).astype(np.uint8))
        top = h >> np.uint64(64 - _BLOOM_BITS)
        return ((self._table[top >> np.uint64(3)] >> (top & np.uint64(7)).astype(np.uint8)) & 1).astype(bool)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            arrays = {"hashes": self.hashes, "task_ids": self.task_ids, "item_ids": self.item_ids}
            np.savez(f, format=FORMAT, tasks=np.array(self.tasks), items=np.array(self.items),
                     short=np.array(self.short_items), **arrays)  # fmt: skip

    @staticmethod
    def is_valid(path: str | Path) -> bool:
        """Whether `path` is a saved index of this format (only its format field is read)."""
        try:
            with np.load(path) as z:
                return int(z["format"]) == FORMAT
        except (OSError, ValueError, KeyError):
            return False

    @classmethod
    def load(cls, path: str | Path) -> EvalNGrams | None:
        """The saved index, or None when the file is unreadable or of another format (then it is rebuilt)."""
        try:
            with np.load(path) as z:
                if int(z["format"]) != FORMAT:
                    return None
                return cls(z["hashes"], z["task_ids"], z["item_ids"], [str(s) for s in z["tasks"]],
                           [int(x) for x in z["items"]], [int(x) for x in z["short"]])  # fmt: skip
        except (OSError, ValueError, KeyError):
            return None

    def matches(self, texts: Sequence[str]) -> list[dict[int, set[int]]]:
        """For each text: {task index: item numbers} of the items it shares a 13-gram with (empty: clean)."""
        out: list[dict[int, set[int]]] = [{} for _ in texts]
        if not len(self.hashes) or not texts:
            return out
        words = Words(texts)
        h, first = words.ngrams(NGRAM)
        maybe = np.flatnonzero(self._maybe(h))  # cheap pre-check, ~7% false hits
        pos = np.searchsorted(self.hashes, h[maybe])
        hit = maybe[self.hashes[np.minimum(pos, len(self.hashes) - 1)] == h[maybe]]
        if not len(hit):
            return out
        docs = words.doc[first[hit]]
        lo = np.searchsorted(self.hashes, h[hit], side="left")
        hi = np.searchsorted(self.hashes, h[hit], side="right")
        for d, a, b in zip(docs.tolist(), lo.tolist(), hi.tolist()):
            for t, i in zip(self.task_ids[a:b].tolist(), self.item_ids[a:b].tolist()):
                out[d].setdefault(t, set()).add(i)
        return out


@dataclass
class Contamination:
    """Counts, per task, the documents that overlap it and the distinct items hit; keeps one example each."""

    index: EvalNGrams
    documents: dict[str, int] = field(default_factory=dict)
    items: dict[str, set[int]] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    checked: int = 0

    def record(self, text: str, hits: dict[int, set[int]]) -> bool:
        """Count one checked document with its `matches` result; True when it overlaps some task."""
        self.checked += 1
        for t, items in hits.items():
            name = self.index.tasks[t]
            self.documents[name] = self.documents.get(name, 0) + 1
            self.items.setdefault(name, set()).update(items)
            self.examples.setdefault(name, " ".join(text.split())[:200])
        return bool(hits)

    def summary(self) -> dict:
        """JSON-ready: tasks checked, and per overlapping task its documents, items hit and their share."""
        per = {}
        for k, name in enumerate(self.index.tasks):
            if name in self.documents:
                n = self.index.items[k]
                per[name] = {"documents": self.documents[name], "items": len(self.items[name]), "of_items": n,
                             "item_share": round(len(self.items[name]) / max(1, n), 5),
                             "example": self.examples[name]}  # fmt: skip
        return {"ngram": NGRAM, "tasks_checked": list(self.index.tasks), "documents_checked": self.checked,
                "short_items": dict(zip(self.index.tasks, self.index.short_items)), "overlap": per}  # fmt: skip

    def lines(self) -> list[str]:
        """One warning line per overlapping task (none when clean)."""
        return [f"{name}: {v['documents']:,} training documents share {NGRAM}-grams with {v['items']:,} of its "
                f"{v['of_items']:,} items ({100 * v['item_share']:.2f}%)"
                for name, v in self.summary()["overlap"].items()]  # fmt: skip
