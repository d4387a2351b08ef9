"""Resuming a killed prepare: the work folder, its progress record and its lock.

`prepare` builds a dataset in `.NAME.prepare.partial` beside `NAME` (hidden, so it never looks complete) and renames
it into place at the end. After every batch in which a shard filled up it records `progress.json` (atomically, after
fsyncing the shards): how many batches of the source stream were written, how many characters they held, and each
split's tokens, documents, bytes and shard list. The record carries a key: the settings, the slmkit version and a
signature of the source's files (path, size, modification time).

A rerun with the same key re-reads the source up to that point without tokenizing it (so the split draw, the
cleaner and the source counts come out the same), checks that it read the same text, cuts the files back to the
recorded sizes and goes on: the result is byte for byte the dataset an uninterrupted prepare writes. A record with
another key is discarded with one line saying what changed. Only one process works in a folder at a time: a second
waits for the first (an advisory lock, `fcntl.flock`, released by the kernel when a process dies).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from slmkit import __version__
from slmkit.base.atomic import atomic_write_json, move_into_place
from slmkit.data.dataset import DOC_STARTS_FILE, SPLITS, TOKENIZER_DIR
from slmkit.data.sources import resolve_files

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one prepare per output folder is then up to the user
    fcntl = None

WORK_SUFFIX = ".prepare.partial"
PROGRESS_FILE = "progress.json"
LOCK_FILE = "lock"
PROGRESS_VERSION = 1


class ResumeMismatch(Exception):
    """The work folder cannot be continued (the source read differently, a file is short): start over."""


def work_path(out: Path) -> Path:
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def job_key(settings: dict, source: str, include: Sequence[str], exclude: Sequence[str]) -> dict:
    """What must be the same for a killed prepare to be continued: settings, slmkit version, source files."""
    kind, files = resolve_files(source, include, exclude)
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    key = {"version": PROGRESS_VERSION, "slmkit": __version__, "settings": settings,
           "source_files": f"{kind}:{len(files)}:{h.hexdigest()}"}  # fmt: skip
    return json.loads(json.dumps(key))  # as it reads back from progress.json (tuples become lists)


def _what_changed(old: dict, new: dict) -> str:
    a, b = old.get("settings", {}), new["settings"]
    diff = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        return "other settings (" + "; ".join(diff) + ")"
    if old.get("source_files") != new["source_files"]:
        return "source files that changed since"
    return f"slmkit {old.get('slmkit')} (now {new['slmkit']})"


class WorkFolder:
    """The folder a prepare of `out` writes in; `with` holds its lock (waiting for another prepare of `out`)."""

    def __init__(self, out: Path, verbose: bool = True):
        self.out, self.path, self.verbose = out, work_path(out), verbose
        self.waited = False
        self._lock = None

    def __enter__(self) -> WorkFolder:
        while True:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = open(self.path / LOCK_FILE, "a+")
            if fcntl is None:
                break
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self.waited:
                    self._say(f"another process is preparing {self.out}; waiting for it to finish")
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.waited = True
            try:  # the process we waited for may have renamed or removed the folder: then take a new one
                if os.path.samestat(os.fstat(lock.fileno()), os.stat(self.path / LOCK_FILE)):
                    break
            except FileNotFoundError:
                pass
            lock.close()
        self._lock = lock
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def _say(self, line: str) -> None:
        if self.verbose:
            print(f"prepare: {line}", file=sys.stderr)

    def load(self, key: dict) -> dict | None:
        """The progress of a killed prepare with the same `key`, its files cut back to it; else None, and the
        folder emptied (saying why when there was progress of another prepare)."""
        record = None
        with contextlib.suppress(OSError, ValueError):
            record = json.loads((self.path / PROGRESS_FILE).read_text(encoding="utf-8"))
        record = record if isinstance(record, dict) else None
        if record is not None and record.get("key") != key:
            self._say(f"{self.path} holds an interrupted prepare with {_what_changed(record.get('key') or {}, key)}; "
                      "starting over")  # fmt: skip
            record = None
        if record is not None:
            try:
                self._cut_back(record)
            except (ResumeMismatch, KeyError, TypeError, ValueError, OSError) as e:  # damaged folder or record
                self._say(f"cannot continue the interrupted prepare in {self.path} ({e}); starting over")
                record = None
        if record is None:
            self.reset()
            return None
        s = record["splits"]
        tokens, shards = sum(v["tokens"] for v in s.values()), sum(len(v["shards"]) for v in s.values())
        self._say(f"continuing the interrupted prepare of {self.out}: {tokens:,} tokens in {shards} shards already "
                  "written (re-reading the source up to there)")  # fmt: skip
        return record

    def _cut_back(self, record: dict) -> None:
        """Remove what was written after the record: later shards and stray files; cut files to recorded sizes."""
        itemsize = record["itemsize"]
        if not (self.path / TOKENIZER_DIR).is_dir():
            raise ResumeMismatch(f"no {TOKENIZER_DIR}/")
        for p in self.path.iterdir():
            if p.name not in {TOKENIZER_DIR, PROGRESS_FILE, LOCK_FILE, *SPLITS}:
                _remove(p)  # e.g. a temporary file of a killed progress write
        for split in SPLITS:
            state = record["splits"][split]
            folder = self.path / split
            wanted = {Path(s["file"]).name: s["tokens"] * itemsize for s in state["shards"]}
            wanted[DOC_STARTS_FILE] = state["documents"] * 8
            present = {p.name: p for p in folder.iterdir()} if folder.is_dir() else {}
            for name, size in wanted.items():
                if name not in present or present[name].stat().st_size < size:
                    raise ResumeMismatch(f"{split}/{name} is shorter than recorded")
                os.truncate(present[name], size)
            for name in set(present) - set(wanted):
                _remove(present[name])

    def reset(self) -> None:
        """Empty the folder (the lock file stays)."""
        for p in self.path.iterdir():
            if p.name != LOCK_FILE:
                _remove(p)

    def save(self, key: dict, state: dict) -> None:
        """Record the progress (the shard files are fsynced before this)."""
        atomic_write_json(self.path / PROGRESS_FILE, {"key": key, **state})

    def finish(self) -> None:
        """Rename the finished folder into place as `out` (replacing an old `out` only at that instant)."""
        for name in (PROGRESS_FILE, LOCK_FILE):
            (self.path / name).unlink(missing_ok=True)  # the lock is held through the open file until __exit__
        move_into_place(self.path, self.out)

    def discard(self) -> None:
        """Remove the folder: bad input leaves nothing behind."""
        shutil.rmtree(self.path, ignore_errors=True)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def skip_written(batches: Iterator[tuple], record: dict, bar) -> tuple[int, int]:
    """Read past the (texts, metas) batches a killed prepare wrote, without encoding them, checking that they hold
    as many characters as recorded; (batches, characters) read."""
    n, chars = 0, 0
    for texts, _ in itertools.islice(batches, record["batches"]):
        n, chars = n + 1, chars + sum(map(len, texts))
        bar.update(sum(len(t.encode("utf-8")) for t in texts))
    if (n, chars) != (record["batches"], record["chars"]):
        raise ResumeMismatch(f"the source reads differently now: {chars:,} characters in {n} batches, where "
                             f"{record['chars']:,} in {record['batches']} were recorded")  # fmt: skip
    return n, chars
