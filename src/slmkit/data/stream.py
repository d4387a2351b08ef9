"""Stream mode: training batches read straight from a source of any size (`data.stream = true`), nothing written.

One rank's documents of one source come in this order (`DocStream`):
- epoch e lists the source's units (`slmkit.data.stream_reader`: parquet row groups, jsonl byte ranges, files),
  shuffled by (seed, e); with W ranks and at least W units rank r reads units r, r+W, ... of that order, with fewer
  units every rank reads all of them and keeps documents d with d % W == r;
- worker processes (`data.stream_workers`; 0: one background thread) read and tokenize tasks, at most a few ahead of
  training (bounded memory), results taken in order;
- the documents are shuffled in blocks of `data.shuffle_buffer`: a block is the next S documents of the epoch,
  permuted by a generator seeded with (seed, where the block starts).

`Packer` cuts windows of block_size + 1 tokens from that sequence (end-of-text before each document), the next window
starting at the last token of the previous one (as the prepared loader's sequential mode). `StreamLoader` draws each
row of a batch from one of its sources: the source furthest below its weight's share of windows so far (deterministic,
so mixture proportions hold to within one window), and applies fill-in-the-middle per window when asked.

Exact resume: a position is (epoch, unit k, document d) where the current shuffle block starts, the index i of the
current document in the block, and the token offset in it. Restoring re-reads that block (at most S documents) and
continues: the batches after a restore are those an uninterrupted loader gives. No token or text is in the state.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch

from slmkit.base.console import say
from slmkit.base.tokenizer import Tokenizer
from slmkit.data.fim import FimSpec, fim_window
from slmkit.data.parallel import ordered_map
from slmkit.data.sources import DataError
from slmkit.data.stream_reader import (
    HF_TASK_DOCS,
    Reader,
    TaskResult,
    Unit,
    check_bad,
    init_worker,
    read_hf,
    run_in_worker,
    unit_tasks,
)

SHUFFLE_SALT = 0x5348  # "SH": keeps block permutations apart from other draws of the same seed
UNITS_SALT = 0x554E  # "UN"


def make_executor(reader: Reader, tok: Tokenizer, workers: int) -> tuple[Executor, object]:
    """(executor, task function): `workers` spawned processes that load the tokenizer, or (0) one thread."""
    if workers <= 0:
        return ThreadPoolExecutor(1), reader.unbound().bind(tok).run
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=(reader,)), run_in_worker


@dataclass
class Pos:
    """Where one source's stream stands (see the module docstring); `docs` counts documents passed, `windows` the
    windows cut, `tokens` their tokens, `epoch_docs` documents passed in this epoch."""

    epoch: int = 0
    k: int = 0
    d: int = 0
    i: int = 0
    offset: int = 0
    docs: int = 0
    windows: int = 0


class DocStream:
    """One rank's documents of one source in training order: (epoch, k, d, i, tokens), i the index in its block."""

    def __init__(self, name: str, units: list[Unit], run_task, executor: Executor, *, seed: int, shuffle: bool,
                 shuffle_buffer: int, rank: int, world_size: int, in_flight: int,
                 text_field: str = "text"):  # fmt: skip
        self.name, self.units, self.run_task, self.ex, self.text_field = name, units, run_task, executor, text_field
        self.seed, self.shuffle, self.buffer = seed, shuffle, max(1, shuffle_buffer)
        self.rank, self.world, self.in_flight = rank, world_size, in_flight
        # enough units: each rank reads its own; else all ranks read all and keep every W-th document
        self.split_units = len(units) >= world_size
        self.step, self.phase = (1, 0) if self.split_units else (world_size, rank)
        self.records = self.bad = self.unknown_chars = 0
        self.first_bad = ""
        self.removed: dict[str, int] = {}  # documents cleaning dropped, by rule (since this process started)
        self.overlap: dict[str, int] = {}  # documents sharing a 13-gram with an eval task, by task

    def epoch_units(self, epoch: int) -> list[Unit]:
        order = list(range(len(self.units)))
        if self.shuffle and len(order) > 1:
            order = np.random.default_rng([self.seed, UNITS_SALT, epoch]).permutation(len(order)).tolist()
        if self.split_units:
            order = order[self.rank :: self.world]
        return [self.units[j] for j in order]

    def _tasks(self, epoch: int, k: int, d: int) -> Iterator[tuple[tuple, tuple]]:
        """(task, (epoch, k)) from unit k at document d on, through every later epoch."""
        while True:
            for kk, unit in enumerate(self.epoch_units(epoch)[k:], k):
                if unit.kind == "hf":
                    yield from self._hf_tasks(unit, epoch, kk, d)
                else:
                    for task in unit_tasks(unit, d, self.step, self.phase):
                        yield task, (epoch, kk)
                d = 0
            epoch, k = epoch + 1, 0

    def _hf_tasks(self, unit: Unit, epoch: int, k: int, first: int) -> Iterator[tuple[tuple, tuple]]:
        texts, at = [], first
        for d, text in enumerate(read_hf(unit.path, self.text_field)):
            if d < first:
                continue
            texts.append(text)
            if len(texts) == HF_TASK_DOCS:
                yield (unit, at, at + len(texts), self.step, self.phase, texts), (epoch, k)
                texts, at = [], d + 1
        if texts:
            yield (unit, at, at + len(texts), self.step, self.phase, texts), (epoch, k)

    def _raw(self, epoch: int, k: int, d: int) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """(epoch, k, d, tokens) of every kept document from (epoch, k, d) on; DataError for an epoch with none."""
        current, found = epoch, 0
        for (e, kk), res in ordered_map(self.ex, self.run_task, self._tasks(epoch, k, d), self.in_flight):
            if e != current:
                if not found:
                    raise self._empty()
                current, found = e, 0
            self._count(res)
            for dd, tokens, _ in res.docs:
                found += 1
                yield e, kk, dd, tokens

    def _count(self, res: TaskResult) -> None:
        self.records += res.records
        self.bad += res.bad
        self.first_bad = self.first_bad or res.first_bad
        self.unknown_chars += res.unknown_chars
        check_bad(self.bad, self.records, self.first_bad)
        for rule, n in res.removed.items():
            self.removed[rule] = self.removed.get(rule, 0) + n
        for task, n in res.overlap.items():
            if task not in self.overlap:
                say(f"data: {self.name}: a training document shares 13-grams with {task} "
                    f"(counted as data/overlap/{task}; data.contamination=remove drops such documents)")  # fmt: skip
            self.overlap[task] = self.overlap.get(task, 0) + n

    def _empty(self) -> DataError:
        why = f" ({self.bad} bad records, first: {self.first_bad})" if self.bad else ""
        who = f" for rank {self.rank} of {self.world}" if self.world > 1 else ""
        return DataError(f"source {self.name!r} has no readable training documents{who}{why}; check the source, "
                         "data.text_field and data.val_fraction")  # fmt: skip

    def documents(self, pos: Pos) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
        """(epoch, k, d, i, tokens) from `pos` (its block start and index i) on: documents in shuffled blocks."""
        raw = self._raw(pos.epoch, pos.k, pos.d)
        skip = pos.i
        pending = next(raw)
        while True:
            block = [pending]
            pending = next(raw)
            while len(block) < self.buffer and pending[0] == block[0][0]:
                block.append(pending)
                pending = next(raw)
            e, k, d = block[0][:3]
            order = range(len(block))
            if self.buffer > 1 and len(block) > 1:
                order = np.random.default_rng([self.seed, SHUFFLE_SALT, e, k, d]).permutation(len(block)).tolist()
            for i in list(order)[skip:]:
                yield e, k, d, skip, block[i][3]
                skip += 1
            skip = 0


class Packer:
    """Windows of T + 1 tokens from one DocStream, each starting at the previous window's last token."""

    def __init__(self, stream: DocStream, block_size: int):
        self.stream, self.T = stream, block_size
        self.pos = Pos()
        self._docs: Iterator | None = None
        self._ahead: deque = deque()  # (epoch, k, d, i, tokens) from the current document on
        self._avail = 0  # tokens in _ahead after pos.offset

    def _pull(self) -> None:
        if self._docs is None:
            self._docs = self.stream.documents(self.pos)
        doc = next(self._docs)
        self._ahead.append(doc)
        self._avail += len(doc[4]) - (self.pos.offset if len(self._ahead) == 1 else 0)

    def window(self) -> tuple[np.ndarray, int, int]:
        """(tokens (T+1,), index of the document holding its first token, offset of that token in it)."""
        need = self.T + 1
        while self._avail < need:
            self._pull()
        parts, have, off = [], 0, self.pos.offset
        for doc in self._ahead:
            part = doc[4][off : off + need - have]
            parts.append(part)
            have += len(part)
            off = 0
            if have == need:
                break
        first_doc, first_off = self.pos.docs, self.pos.offset
        self._advance(self.T)
        self.pos.windows += 1
        return np.concatenate(parts) if len(parts) > 1 else parts[0], first_doc, first_off

    def _advance(self, n: int) -> None:
        self._avail -= n
        while n >= len(self._ahead[0][4]) - self.pos.offset:
            n -= len(self._ahead[0][4]) - self.pos.offset
            self._ahead.popleft()
            self.pos.offset, self.pos.docs = 0, self.pos.docs + 1
        self.pos.offset += n
        e, k, d, i, _ = self._ahead[0]
        self.pos.epoch, self.pos.k, self.pos.d, self.pos.i = e, k, d, i

    def state(self) -> dict:
        return asdict(self.pos)

    def restore(self, state: dict) -> None:
        self.pos = Pos(**{k: int(v) for k, v in state.items() if k in Pos.__dataclass_fields__})
        self._docs, self._ahead, self._avail = None, deque(), 0


@dataclass
class MixSource:
    """One source of a stream: its name (metrics: data/tokens/<name>), weight, units and identity."""

    name: str
    source: str
    weight: float
    units: list[Unit]
    identity: str


class StreamLoader:
    """Batches (x, y) of shape (B, T) from streamed sources; the TokenLoader interface (next_batch, state_dict,
    load_state_dict) plus `metrics()` (epochs, documents and tokens per source). Each rank has its own position
    (`per_rank_state`): the trainer checkpoints all of them as {"ranks": [...]}, and each rank restores its own."""

    per_rank_state = True

    def __init__(self, sources: list[MixSource], reader: Reader, tokenizer: Tokenizer, batch_size: int,
                 block_size: int, *, seed: int = 0, shuffle_buffer: int = 1000, workers: int = 0, rank: int = 0,
                 world_size: int = 1, fim: FimSpec | None = None, identity: dict | None = None,
                 allow_changed: bool = False):  # fmt: skip
        self.B, self.T, self.seed, self.rank, self.world = batch_size, block_size, seed, rank, world_size
        self.sources = sources
        self.ex, run = make_executor(reader, tokenizer, workers)
        total = sum(s.weight for s in sources)
        self.weights = np.array([s.weight / total for s in sources])
        in_flight = 2 * max(1, workers) + 1
        self.packers = [Packer(DocStream(s.name, s.units, run, self.ex, seed=seed, shuffle=True,
                                         shuffle_buffer=shuffle_buffer, rank=rank, world_size=world_size,
                                         in_flight=in_flight, text_field=reader.text_field), block_size)
                        for s in sources]  # fmt: skip
        self.fim = fim if fim is not None and fim.rate > 0 else None
        self.identity = identity or {}
        self.allow_changed = allow_changed
        self.batches = 0

    def prime(self) -> None:
        """Start reading: the first document of every source (DataError now for a source with none)."""
        for p in self.packers:
            if not p._ahead:
                p._pull()

    def _pick(self) -> int:
        """The source furthest below its share: argmax of weight * (n + 1) - windows so far (first on ties)."""
        counts = np.array([p.pos.windows for p in self.packers])
        return int(np.argmax(self.weights * (counts.sum() + 1) - counts))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: int64 CPU tensors of shape (B, T), y = x shifted by one token."""
        rows = np.empty((self.B, self.T + 1), dtype=np.int64)
        for b in range(self.B):
            s = self._pick()
            window, doc, offset = self.packers[s].window()
            if self.fim is not None:  # per (seed, source, document index, offset): the same after a resume
                window = fim_window(window, doc, offset, self.seed + 7919 * s, self.fim)
            rows[b] = window
        self.batches += 1
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def __iter__(self):
        while True:
            yield self.next_batch()

    def metrics(self) -> dict[str, float]:
        """data/epoch (of the first source), data/docs (documents passed, all sources), data/tokens/<name>; with
        cleaning on the fly, data/removed/<rule> and data/overlap/<eval task> (documents read since this process
        started, read-ahead included)."""
        out = {"data/epoch": self.packers[0].pos.epoch, "data/docs": sum(p.pos.docs for p in self.packers)}
        for s, p in zip(self.sources, self.packers):
            out[f"data/tokens/{s.name}"] = p.pos.windows * self.T
        skipped = sum(p.stream.unknown_chars for p in self.packers)
        if skipped:
            out["data/skipped_docs"] = skipped
        for kind in ("removed", "overlap"):  # cleaning on the fly: documents by rule / by eval task
            for p in self.packers:
                for key, n in getattr(p.stream, kind).items():
                    out[f"data/{kind}/{key}"] = out.get(f"data/{kind}/{key}", 0) + n
        return out

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"stream": True, "batch_size": self.B, "block_size": self.T, "seed": self.seed,
                "world_size": self.world, "rank": self.rank, "batches": self.batches, **self.identity,
                "sources": {s.name: {"identity": s.identity, **p.state()} for s, p in zip(self.sources, self.packers)},
                **({"fim": [self.fim.rate, self.fim.spm_rate]} if self.fim is not None else {})}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if "ranks" in state:  # saved by several processes: this rank's own
            if len(state["ranks"]) != self.world:
                raise DataError(f"the stream position was saved by {len(state['ranks'])} processes; resume with as "
                                f"many (--nproc {len(state['ranks'])}), not {self.world}")  # fmt: skip
            state = state["ranks"][self.rank]
        elif self.world > 1:
            raise DataError(f"the stream position was saved by one process; resume it in one process, not {self.world}")
        mine = {k: v for k, v in self.state_dict().items() if k not in ("batches", "sources", "rank")}
        diff = [f"{k} {state.get(k)!r} -> {v!r}" for k, v in {"fim": None, **mine}.items() if state.get(k) != v]
        if not state.get("stream"):
            diff = ["prepared data -> stream"]
        saved = state.get("sources", {})
        names = [s.name for s in self.sources]
        if sorted(saved) != sorted(names):
            diff.append(f"sources {sorted(saved)} -> {sorted(names)}")
        for s in self.sources:
            old = saved.get(s.name, {}).get("identity")
            if old is not None and old != s.identity:
                diff.append(f"source {s.name} files changed (plan {old} -> {s.identity})")
        if diff and not self.allow_changed:
            raise DataError(f"the saved stream position does not fit this data ({'; '.join(diff)}); resume with "
                            "the same data and settings, or pass --allow-changed to read the new data from its "
                            "start")  # fmt: skip
        self.batches = int(state.get("batches", 0))
        for s, p in zip(self.sources, self.packers):
            if s.name in saved and (not diff or saved[s.name].get("identity") == s.identity):
                p.restore(saved[s.name])
