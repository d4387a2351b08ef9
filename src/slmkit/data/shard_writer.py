"""Writing one split of a dataset directory: fixed-size token shards `<split>/000000.bin, ...` (raw little-endian
ids) and the document starts `<split>/doc_starts.u64`, appended as `prepare` encodes the corpus.

A writer can take up where a killed prepare stopped (`state`, as `sync()` returned it, with the files already cut
back to it by `slmkit.data.prepare_resume`), and can give back its last tokens (`pop_tail`). `cap_batch` and
`fill_val` apply prepare's max_tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from slmkit.data.dataset import DOC_STARTS_FILE


class SplitWriter:
    """Appends token arrays to fixed-size shards `<dir>/000000.bin, ...` and document starts to doc_starts.u64."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int, state: dict | None = None):
        self.root, self.split, self.dtype, self.shard_tokens = root, split, np.dtype(dtype), shard_tokens
        (root / split).mkdir(parents=True, exist_ok=True)
        state = state or {}
        self.tokens, self.documents = state.get("tokens", 0), state.get("documents", 0)
        self.bytes = state.get("bytes", 0)
        self.shards: list[dict] = [dict(s) for s in state.get("shards", [])]
        self._file = self._open_last() if self.shards else None
        self._starts = open(root / split / DOC_STARTS_FILE, "r+b" if state else "w+b")
        self._starts.seek(0, os.SEEK_END)

    def write(self, arrays: Sequence[np.ndarray], firsts: Sequence[bool], eot: int) -> None:
        """Append the pieces; a piece that starts a document is preceded by end-of-text."""
        starts, parts, pos = [], [], 0
        eot_arr = np.array([eot], dtype=self.dtype)
        for arr, first in zip(arrays, firsts):
            if first:
                starts.append(pos)
                parts.append(eot_arr)
                pos += 1
            parts.append(arr)
            pos += len(arr)
        self.write_tokens(np.concatenate(parts) if parts else np.zeros(0, self.dtype), starts)

    def write_tokens(self, tokens: np.ndarray, starts: Sequence[int]) -> None:
        """Append `tokens` (end-of-text included) whose documents start at positions `starts` within them."""
        (np.asarray(starts, dtype="<u8") + np.uint64(self.tokens)).tofile(self._starts)
        self.documents += len(starts)
        while len(tokens):
            if self._file is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._roll()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            chunk, tokens = tokens[:room], tokens[room:]
            chunk.astype(self.dtype.newbyteorder("<"), copy=False).tofile(self._file)
            self.shards[-1]["tokens"] += len(chunk)
            self.tokens += len(chunk)

    def full_shards(self) -> int:
        return self.tokens // self.shard_tokens

    def _open_last(self):
        f = open(self.root / self.shards[-1]["file"], "r+b")
        f.seek(0, os.SEEK_END)
        return f

    def _roll(self) -> None:
        if self._file is not None:
            _sync(self._file)
            self._file.close()
        name = f"{self.split}/{len(self.shards):06d}.bin"
        self._file = open(self.root / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def pop_tail(self, n: int) -> tuple[np.ndarray, list[int]]:
        """Remove the last `n` tokens; returns them and the positions (within them) of the documents that started
        there, which are dropped from this split."""
        keep = max(0, self.tokens - n)
        parts = []
        while self.tokens > keep:
            shard = self.shards[-1]
            first = self.tokens - shard["tokens"]  # the shard's first position in the split
            cut = max(keep, first)
            self._file.flush()
            item = self.dtype.itemsize
            parts.append(np.fromfile(self._file.name, dtype=self.dtype.newbyteorder("<"), offset=(cut - first) * item))
            self._file.truncate((cut - first) * item)
            self._file.seek(0, os.SEEK_END)
            shard["tokens"], self.tokens = cut - first, cut
            if cut == first:  # the whole shard went
                self._file.close()
                os.unlink(self._file.name)
                self.shards.pop()
                self._file = self._open_last() if self.shards else None
        starts = self._pop_starts(keep)
        tail = np.concatenate(parts[::-1]) if parts else np.zeros(0, self.dtype)
        return tail.astype(self.dtype), [s - keep for s in starts]

    def _pop_starts(self, keep: int) -> list[int]:
        """Drop the recorded document starts at or after `keep`; returns them."""
        self._starts.flush()
        size = self._starts.tell() // 8
        read = 0
        while True:  # read back from the end until a start before `keep` (documents are usually few here)
            read = min(size, max(2 * read, 64))
            self._starts.seek((size - read) * 8)
            tail = np.frombuffer(self._starts.read(read * 8), dtype="<u8")
            if read == size or (len(tail) and tail[0] < keep):
                break
        dropped = [int(s) for s in tail if s >= keep]
        self._starts.truncate((size - len(dropped)) * 8)
        self._starts.seek(0, os.SEEK_END)
        self.documents -= len(dropped)
        return dropped

    def sync(self) -> dict:
        """Flush and fsync the open files; the state a resumed writer starts from."""
        for f in (self._file, self._starts):
            if f is not None:
                _sync(f)
        return self.state()

    def state(self) -> dict:
        shards = [dict(s) for s in self.shards]
        return {"tokens": self.tokens, "documents": self.documents, "bytes": self.bytes, "shards": shards}

    def close(self) -> dict:
        for f in (self._file, self._starts):
            if f is not None and not f.closed:
                _sync(f)
                f.close()
        return self.state()


def _sync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------------
# A token cap (prepare's max_tokens).


def cap_batch(arrays, metas, n_bytes, room: int, decode: Callable) -> tuple[list, list, list, bool]:
    """The pieces of an encoded batch (token arrays, (split, first) metas, UTF-8 sizes) that fit in `room` more
    tokens, counting the end-of-text before each document; the piece that crosses is cut. And whether the cap is
    reached."""
    out_a, out_m, out_b = [], [], []
    for arr, meta, nb in zip(arrays, metas, n_bytes):
        need = len(arr) + meta[1]
        if need > room:
            keep = room - meta[1]
            if keep > 0:
                out_a.append(arr[:keep])
                out_m.append(meta)
                out_b.append(len(decode(arr[:keep].tolist()).encode("utf-8")))
            return out_a, out_m, out_b, True
        out_a.append(arr)
        out_m.append(meta)
        out_b.append(nb)
        room -= need
    return out_a, out_m, out_b, room == 0


def fill_val(train: SplitWriter, val: SplitWriter, val_fraction: float, eot: int, decode: Callable) -> None:
    """A prepare stopped by its cap never reaches the end of the source, where the last document goes to val when no
    other did (`prepare.assign_splits`); so then the last val_fraction of train's tokens go to val, as a document of
    their own (the first token replaced by end-of-text when they start within a document)."""
    if val.tokens or not val_fraction or train.tokens < 4:
        return
    tail, starts = train.pop_tail(max(2, round(train.tokens * val_fraction)))
    if not starts or starts[0] != 0:
        tail[0], starts = eot, [0, *starts]
    moved = len(decode([t for t in tail.tolist() if t != eot]).encode("utf-8"))
    train.bytes, val.bytes = max(0, train.bytes - moved), val.bytes + moved
    val.write_tokens(tail, starts)
