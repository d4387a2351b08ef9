"""TokenLoader: batches of (x, y) windows from a prepared dataset's memory-mapped shards.

A split is read as one stream of tokens (its shards concatenated; a window may cross a shard boundary). A window
is `block_size + 1` tokens; x is its first `block_size` tokens and y the last `block_size` (x shifted by one).

Modes:
- "random" (nanoGPT style): the starts of batch k are drawn from a `np.random.Generator` seeded by (seed, rank, k),
  so a batch is a pure function of its index (exact resume with no generator state to carry). With several
  ranks the stream is cut into chunks of `CHUNK_WINDOWS` windows, rank r owns chunks r, r+W, r+2W, ... and its
  windows lie inside its chunks, so the windows of different ranks never share a token.
- "sequential": consecutive windows at starts 0, T, 2T, ... (sharing one token between x and the next y); rank r
  takes windows r, r+W, ...; after the last one the pass starts again (`epoch` counts the passes).
With `align_to_docs` windows start at document starts (their end-of-text tokens) instead: random mode draws
documents, sequential mode walks them; with several ranks, rank r takes documents r, r+W, ...

How ranks share the data (`shard`):
- "windows" (default, above): ranks own disjoint windows (chunks, windows or documents r, r+W, ...); rank r's
  batches depend on the world size.
- "batches" (what the trainer uses): the data is one stream of batches, the one a single process draws; rank r of
  W takes global batches r, r+W, r+2W, ... so its local batch k is global batch k*W + r. No two ranks draw the same
  batch, and at each micro-step the W ranks together hold exactly the batches that one process with W times the
  gradient accumulation would draw in that optimizer step: W processes x accumulation A equal one process x
  accumulation W*A, batch for batch (in sequential mode every window is used once per pass, by exactly one rank).
  The state is that of the single-process stream (world_size 1, global batch count), so a checkpoint resumes
  under any world size that divides its batch count.

With `fim` (a `slmkit.data.fim.FimSpec`, `data.fim_rate` > 0) every window is rearranged after it is read: each
document piece in it, with probability `fim.rate`, becomes prefix/suffix/middle with the FIM sentinels
(`slmkit.data.fim.fim_window`), a pure function of (seed, document index, offset), so batches stay a pure function
of their index and resume stays exact.

With `positions` a batch is (x, y, starts): the offsets of its windows in the split, for a distillation student
whose teacher's logits were cached by position (`slmkit.engine.teacher_cache`).

`state_dict()` / `load_state_dict()` save and restore the exact position (counters): the batches after a restore
are the ones the uninterrupted loader would have produced. The state is the same on every rank, so the state saved
by rank 0 restores all ranks.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from slmkit.data.dataset import doc_starts, read_meta, split_shards
from slmkit.data.fim import FimSpec, fim_window
from slmkit.data.sources import DataError

CHUNK_WINDOWS = 8  # with several ranks (random mode), each rank owns interleaved chunks of this many windows
MODES = ("random", "sequential")
SHARDS = ("windows", "batches")


class LazyShards:
    """A split's shards, memory-mapped on first use and at most MAX_OPEN at a time (least recently used closed
    first): a dataset of many thousands of shards loads without an open file per shard."""

    MAX_OPEN = 64

    def __init__(self, shards: list[tuple[Path, int]], dtype: np.dtype):
        self.shards, self.dtype = shards, dtype
        self._open: OrderedDict[int, np.memmap] = OrderedDict()

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> np.memmap:
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        path, n = self.shards[i]
        self._open[i] = mm = np.memmap(path, dtype=self.dtype, mode="r", shape=(n,))
        if len(self._open) > self.MAX_OPEN:
            self._open.popitem(last=False)  # dropped: numpy unmaps it once no array refers to it
        return mm


class TokenLoader:
    """Batches of token windows from one split of a dataset directory (see the module docstring)."""

    def __init__(
        self,
        dataset_dir: str | Path,
        split: str,
        batch_size: int,
        block_size: int,
        *,
        seed: int = 0,
        mode: str = "random",
        align_to_docs: bool = False,
        rank: int = 0,
        world_size: int = 1,
        shard: str = "windows",
        fim: FimSpec | None = None,
        positions: bool = False,
    ):
        if mode not in MODES:
            raise DataError(f"unknown loader mode {mode!r}; use random or sequential")
        if shard not in SHARDS:
            raise DataError(f"unknown loader shard {shard!r}; use windows or batches")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        if batch_size < 1 or block_size < 1:
            raise DataError(f"batch_size and block_size must be positive, got {batch_size} and {block_size}")
        self.dir, self.split, self.mode, self.align, self.shard = Path(dataset_dir), split, mode, align_to_docs, shard
        self.batch_size, self.block_size, self.seed, self.rank, self.world_size = (
            batch_size, block_size, seed, rank, world_size)  # fmt: skip
        meta = read_meta(self.dir)
        dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        shards = [(p, n) for p, n in split_shards(self.dir, split, meta) if n > 0]
        self._shards = LazyShards(shards, dtype)
        self._ends = np.cumsum([n for _, n in shards], dtype=np.int64)  # end offset of each shard
        self._single = self._shards[0] if len(self._shards) == 1 else None
        if self.num_tokens < block_size + 1:
            raise DataError(f"the {split} split of {self.dir} has {self.num_tokens} tokens, fewer than one window "
                            f"of block_size + 1 = {block_size + 1}; use a smaller block size or more data")  # fmt: skip
        self._starts = self._window_starts()
        self.fim = fim if fim is not None and fim.rate > 0 else None
        if positions and self.fim is not None:
            raise DataError("window positions mean nothing once fill-in-the-middle rearranges the windows")
        self.positions = positions
        self._docs = doc_starts(self.dir, split).astype(np.int64) if self.fim is not None else None
        self.batches = 0  # batches produced so far
        self.epoch = 0  # sequential mode: completed passes
        self._pos = 0  # sequential mode: index of this rank's next window in self._starts

    @property
    def num_tokens(self) -> int:
        """Tokens in this split (all ranks)."""
        return int(self._ends[-1]) if len(self._ends) else 0

    # -- window starts ---------------------------------------------------------------------------------------
    def _window_starts(self) -> np.ndarray | None:
        """The starts this rank may use, or None when random mode draws from a range (no table needed)."""
        T, W, r, last = self.block_size, *self._stream_rank(), self.num_tokens - self.block_size - 1
        if self.align:
            starts = doc_starts(self.dir, self.split).astype(np.int64)
            starts = starts[starts <= last][r::W]
        elif self.mode == "sequential":
            starts = np.arange(0, last + 1, T, dtype=np.int64)[r::W]
        else:
            if W > 1 and self.num_tokens // (CHUNK_WINDOWS * (T + 1)) <= r:
                raise DataError(f"the {self.split} split of {self.dir} is too small for {W} ranks "
                                f"({self.num_tokens} tokens); use a smaller block size or fewer ranks")  # fmt: skip
            return None
        if len(starts) == 0:
            raise DataError(f"no window of {T + 1} tokens for rank {r} of {W} in the {self.split} split of {self.dir}")
        return starts

    def _stream_rank(self) -> tuple[int, int]:
        """(world size, rank) of the stream this loader draws from: (1, 0) when ranks share one stream of batches."""
        return (1, 0) if self.shard == "batches" else (self.world_size, self.rank)

    def _batch_index(self) -> int:
        """Index of the next batch in this loader's stream (the global batch index when shard = "batches")."""
        return self.batches * self.world_size + self.rank if self.shard == "batches" else self.batches

    def _draw_starts(self) -> np.ndarray:
        B, T = self.batch_size, self.block_size
        W, rank = self._stream_rank()
        rng = np.random.default_rng([self.seed, rank, self._batch_index()])
        if self._starts is not None:  # aligned to documents
            return self._starts[rng.integers(0, len(self._starts), size=B)]
        if W == 1:
            return rng.integers(0, self.num_tokens - T, size=B)
        chunk = CHUNK_WINDOWS * (T + 1)
        owned = len(range(rank, self.num_tokens // chunk, W))
        chunks = rank + W * rng.integers(0, owned, size=B)
        return chunks * chunk + rng.integers(0, chunk - T, size=B)

    def _next_starts(self) -> np.ndarray:
        if self.mode == "random":
            return self._draw_starts()
        n = len(self._starts)
        if self.shard == "batches":  # global batch g holds windows g*B ... g*B + B - 1 of the one pass order
            first = self._batch_index() * self.batch_size
            self.epoch = (first + self.batch_size) // n
            return self._starts[(first + np.arange(self.batch_size)) % n]
        idx = self._pos + np.arange(self.batch_size)
        self.epoch += int((self._pos + self.batch_size) // n)
        self._pos = int((self._pos + self.batch_size) % n)
        return self._starts[idx % n]

    # -- reading ---------------------------------------------------------------------------------------------
    def _window(self, start: int) -> np.ndarray:
        """Tokens [start, start + T + 1) of the split, across shard boundaries if needed."""
        end = start + self.block_size + 1
        i = int(np.searchsorted(self._ends, start, side="right"))
        parts = []
        while start < end:
            lo = start - (int(self._ends[i - 1]) if i else 0)
            take = min(end, int(self._ends[i])) - start
            parts.append(self._shards[i][lo : lo + take])
            start += take
            i += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def rows(self, starts: np.ndarray) -> np.ndarray:
        """The windows of `block_size + 1` tokens at `starts` (offsets in the split): a (len(starts), T+1) array."""
        if self._single is not None:  # one shard: a single gather
            return self._single[starts[:, None] + np.arange(self.block_size + 1)]
        rows = np.empty((len(starts), self.block_size + 1), dtype=self._shards.dtype)
        shard = np.searchsorted(self._ends, starts, side="right")
        offsets = starts - np.concatenate(([0], self._ends))[shard]
        for b, (i, lo, s) in enumerate(zip(shard.tolist(), offsets.tolist(), starts.tolist())):
            window = self._shards[i][lo : lo + self.block_size + 1]
            rows[b] = window if len(window) == self.block_size + 1 else self._window(s)
        return rows

    def next_batch(self) -> tuple[torch.Tensor, ...]:
        """x, y: int64 CPU tensors of shape (B, T), y = x shifted by one token; with `positions`, also the (B,)
        offsets of the windows in the split (a cached teacher's logits are looked up by them)."""
        starts = self._next_starts()
        rows = self.rows(starts)
        if self.fim is not None:
            rows = self._fim_rows(rows, starts)
        rows = torch.from_numpy(rows.astype(np.int64))
        self.batches += 1
        if self.positions:
            return rows[:, :-1], rows[:, 1:], torch.from_numpy(starts.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]

    def _fim_rows(self, rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Each row (T+1,) rearranged by `fim_window`; its first token lies in document `doc` at `start - doc start`."""
        docs = np.maximum(np.searchsorted(self._docs, starts, side="right") - 1, 0)
        out = np.empty_like(rows)
        for b, (start, doc) in enumerate(zip(starts.tolist(), docs.tolist())):
            out[b] = fim_window(rows[b], doc, start - int(self._docs[doc]), self.seed, self.fim)
        return out

    def __iter__(self):
        while True:
            yield self.next_batch()

    # -- state -----------------------------------------------------------------------------------------------
    def _identity(self) -> dict:
        return {"split": self.split, "mode": self.mode, "align_to_docs": self.align, "batch_size": self.batch_size,
                "block_size": self.block_size, "seed": self.seed, "world_size": self._stream_rank()[0],
                "num_tokens": self.num_tokens,
                **({"fim": [self.fim.rate, self.fim.spm_rate]} if self.fim is not None else {})}  # fmt: skip

    def state_dict(self) -> dict:
        """A JSON-serialisable position: restoring it makes the next batches those that would have come next."""
        if self.shard == "batches":  # the single-process stream's position after the global batches drawn so far
            done, epoch, pos = self.batches * self.world_size, 0, 0
            if self.mode == "sequential":
                epoch, pos = divmod(done * self.batch_size, len(self._starts))
            return {**self._identity(), "batches": done, "epoch": epoch, "pos": pos}
        return {**self._identity(), "batches": self.batches, "epoch": self.epoch, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        mine = {"fim": None, **self._identity()}  # a state saved with FIM does not fit a loader without it
        diff = [f"{k} {state.get(k)!r} -> {v!r}" for k, v in mine.items() if state.get(k) != v]
        if diff:
            raise DataError(f"loader state does not fit this loader ({'; '.join(diff)}); resume with the same data "
                            "and settings")  # fmt: skip
        if self.shard == "batches":
            if int(state["batches"]) % self.world_size:
                raise DataError(f"the loader position ({state['batches']} batches) is not a multiple of the world "
                                f"size {self.world_size}; resume with a world size that divides it")  # fmt: skip
            self.batches = int(state["batches"]) // self.world_size
            return
        self.batches, self.epoch, self._pos = int(state["batches"]), int(state["epoch"]), int(state["pos"])
