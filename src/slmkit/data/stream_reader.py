"""Stream mode, reading: a source as a list of units, and the task that turns part of a unit into token arrays.

A unit is the smallest piece of a source that can be read on its own and whose order can be shuffled:
- `.parquet`: one row group (its row count is in the file's footer, so no data is read to plan), only the text column;
- `.jsonl`: a byte range of about `RANGE_BYTES`; a line belongs to the range it starts in;
- `.jsonl.gz` / `.jsonl.zst`: the whole file (a compressed stream cannot be entered in the middle);
- any other file: the whole file as text, cut into pieces of about `PIECE_BYTES` at line ends; each piece is one
  "document" for the val split (and FIM), only the first one starts with end-of-text;
- `hf:<dataset>[:<config>[:<split>]]`: the whole dataset, one unit, read with `datasets` streaming in this process.

A task is (unit, first document, last document, step, phase): documents `d` of the unit with first <= d < last and
d % step == phase (step > 1 splits one unit between ranks). `Reader.run` reads it, keeps the training or the held-out
documents (a hash of the text, `is_held_out`), cleans them on the fly when asked (the stateless quality filters of
`data.filters`; documents sharing a 13-gram with an eval task counted, or dropped with `data.contamination=remove`)
and tokenizes them; it runs in worker processes (`init_worker` / `run_in_worker`) or in a background thread. Cleaning
is per document, so a resumed stream reads the same documents; deduplication and the boilerplate filter need the
corpus in order and are `slm data clean`'s (or preparing's) work.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from slmkit.base.tokenizer import Tokenizer, TokenizerError, build_tokenizer
from slmkit.data.prepare import fast_encoder
from slmkit.data.quality.decontam import EvalNGrams
from slmkit.data.quality.filters import apply_filters, stateless_filters
from slmkit.data.sources import JSONL_MAX_BAD, JSONL_MAX_BAD_FRACTION, DataError, resolve_files

TASK_ROWS = 256  # parquet rows per task: small tasks make the first step come quickly
PARQUET_BATCH_ROWS = 64  # rows decoded at a time within a task
RANGE_BYTES = 4 << 20  # plain .jsonl files are planned as byte ranges of this size
PIECE_BYTES = 16 << 10  # text files: one document per piece of about this size (cut at a line end)
HF_TASK_DOCS = 256  # hf: documents read in this process per tokenizing task
HOLD_OUT_SALT = b"slmkit-val"


@dataclass(frozen=True)
class Unit:
    """One shufflable piece of a source (see the module docstring)."""

    path: str
    kind: str  # parquet | jsonl | jsonl.gz | jsonl.zst | text | hf
    group: int = 0  # parquet row group
    start: int = 0  # jsonl byte range
    end: int = 0
    rows: int = -1  # parquet: rows of the row group; -1 unknown (read to the end)


@dataclass
class TaskResult:
    """What one task read: (document index in its unit, tokens, UTF-8 bytes) of the kept documents, and counts."""

    docs: list[tuple[int, np.ndarray, int]] = field(default_factory=list)
    records: int = 0  # records read (kept or not)
    bad: int = 0  # jsonl lines that are not JSON objects with a string text field
    first_bad: str = ""
    unknown_chars: int = 0  # documents skipped: characters the (sampled) char tokenizer does not know
    removed: dict[str, int] = field(default_factory=dict)  # documents dropped by cleaning, by rule
    overlap: dict[str, int] = field(default_factory=dict)  # documents sharing a 13-gram with an eval task, by task


def file_kind(path: Path) -> str:
    name = path.name.lower()
    for ext in ("jsonl.gz", "jsonl.zst", "jsonl", "parquet"):
        if name.endswith("." + ext):
            return ext
    return "text"


def is_held_out(text: str, fraction: float, seed: int) -> bool:
    """True for the documents of the val split: a keyed hash of the text below `fraction`, the same in every run,
    rank and resume (and independent of where the document lies in the source)."""
    if fraction <= 0:
        return False
    key = HOLD_OUT_SALT + seed.to_bytes(8, "little", signed=False)
    h = hashlib.blake2b(text.encode("utf-8", errors="replace"), digest_size=8, key=key).digest()
    return int.from_bytes(h, "little") < fraction * 2.0**64


# ---------------------------------------------------------------------------------------------------------
# Planning: source -> units (footers only, no data read).


def plan_units(source: str, text_field: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[Unit]:
    """The units of `source` in their natural order; DataError for a missing source or a parquet file without the
    text column (naming the columns it has)."""
    kind, files = resolve_files(source, include, exclude)
    if kind == "hf":
        return [Unit(source, "hf")]
    units: list[Unit] = []
    for path in files:
        fk = file_kind(path)
        if fk == "parquet":
            units += _parquet_units(path, text_field)
        elif fk == "jsonl":
            size = path.stat().st_size
            units += [Unit(str(path), fk, start=a, end=min(a + RANGE_BYTES, size)) for a in range(0, size, RANGE_BYTES)]
        else:
            units.append(Unit(str(path), fk))
    if not units:
        raise DataError(f"{source!r} has no readable files; check the path and data.include / data.exclude")
    return units


def _parquet_units(path: Path, text_field: str) -> list[Unit]:
    try:
        import pyarrow.parquet as pq  # optional and slow to import: only parquet sources need it
    except ImportError:
        raise DataError("reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as e:  # a damaged footer: pyarrow raises ArrowInvalid / OSError
        raise DataError(f"{path} is not a readable parquet file ({type(e).__name__}: {e})") from None
    names = meta.schema.to_arrow_schema().names
    if text_field not in names:
        raise DataError(f"{path} has no column {text_field!r} (columns: {', '.join(names)}); set data.text_field")
    return [Unit(str(path), "parquet", group=g, rows=meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]


def plan_identity(units: list[Unit]) -> str:
    """A short digest of what a plan reads (files, sizes, row groups): a resume refuses a source that changed."""
    h = hashlib.sha256()
    seen = set()
    for u in units:
        size = os.path.getsize(u.path) if u.kind != "hf" else 0
        if (u.path, u.group) not in seen:
            seen.add((u.path, u.group))
            h.update(f"{Path(u.path).name}\t{size}\t{u.group}\t{u.rows}\n".encode())
    return h.hexdigest()[:16]


def unit_tasks(unit: Unit, first: int, step: int, phase: int) -> list[tuple]:
    """The tasks reading documents first, first+1, ... of `unit` (those with d % step == phase)."""
    if unit.kind == "parquet":
        return [(unit, a, min(a + TASK_ROWS, unit.rows), step, phase) for a in range(first, unit.rows, TASK_ROWS)]
    return [(unit, first, -1, step, phase)]


# ---------------------------------------------------------------------------------------------------------
# Reading a unit's documents.


def _read_parquet(unit: Unit, text_field: str, lo: int, hi: int) -> Iterator[tuple[int, object]]:
    import pyarrow.parquet as pq  # optional and slow to import (see _parquet_units)

    # rows lo..hi only, a small batch at a time: the whole row group (tens of MB of text) is never held at once
    at = 0
    for batch in pq.ParquetFile(unit.path).iter_batches(PARQUET_BATCH_ROWS, row_groups=[unit.group],
                                                        columns=[text_field], use_threads=False):  # fmt: skip
        n = batch.num_rows
        if at + n > lo:
            col = batch.column(0).slice(max(0, lo - at), hi - max(lo, at)).to_pylist()
            yield from enumerate(col, max(lo, at))
        at += n
        if at >= hi:
            return


def _lines(f, where) -> Iterator[tuple[int, object, str]]:
    """(record index, record or None when bad, location) of a binary jsonl stream; blank lines are not records.
    `where(line number)` names the line (1-based, counted from the start of the stream)."""
    n = 0
    for lineno, raw in enumerate(f, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8", errors="replace"))
        except json.JSONDecodeError:
            rec = None
        yield n, rec, where(lineno)
        n += 1


def _read_jsonl(unit: Unit, text_field: str) -> Iterator[tuple[int, object, str]]:
    if unit.kind == "jsonl.zst":
        try:
            import zstandard  # optional: only .jsonl.zst sources need it
        except ImportError:
            raise DataError(f"{unit.path}: reading .jsonl.zst needs zstandard: pip install zstandard") from None
        with open(unit.path, "rb") as raw:
            yield from _records(io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw)), unit, text_field)
        return
    if unit.kind == "jsonl.gz":
        with gzip.open(unit.path, "rb") as f:
            yield from _records(f, unit, text_field)
        return
    with open(unit.path, "rb") as f:
        f.seek(max(unit.start - 1, 0))
        if unit.start > 0:
            f.readline()  # the line holding byte start-1 belongs to the previous range
        yield from _records(_range_lines(f, unit.end), unit, text_field)


def _range_lines(f, end: int) -> Iterator[bytes]:
    while f.tell() < end:
        line = f.readline()
        if not line:
            return
        yield line


def _records(lines, unit: Unit, text_field: str) -> Iterator[tuple[int, object, str]]:
    if unit.start == 0:
        name = lambda line: f"{unit.path}:{line}"
    else:
        name = lambda line: f"{unit.path}: line {line} after byte {unit.start}"
    for n, rec, where in _lines(lines, name):
        text = rec.get(text_field) if isinstance(rec, dict) else None
        yield n, text, where


def _read_text(unit: Unit) -> Iterator[tuple[int, str]]:
    """Pieces of about PIECE_BYTES of a text file, cut at line ends; binary files (NUL bytes up front) yield none."""
    with open(unit.path, "rb") as f:
        data = f.read()
    if b"\0" in data[:8192]:
        return
    pos, n = 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos + PIECE_BYTES)
        end = len(data) if nl < 0 else nl + 1
        yield n, data[pos:end].decode("utf-8", errors="replace")
        pos, n = end, n + 1


def read_hf(source: str, text_field: str) -> Iterator[str]:
    """The texts of an `hf:` source, streamed with `datasets`; non-string records are skipped (counted by caller)."""
    try:
        import datasets  # optional and slow to import: only hf: sources need it
    except ImportError:
        raise DataError(f"{source} needs the Hugging Face `datasets` package: pip install datasets") from None
    name, config, split = (source[3:].split(":") + ["", ""])[:3]
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
    except Exception as e:  # network, unknown dataset or split, ...
        raise DataError(f"could not open {source} ({type(e).__name__}: {e})") from None
    for rec in ds:
        yield rec.get(text_field)


# ---------------------------------------------------------------------------------------------------------
# The task: read, split, tokenize.


@dataclass
class Reader:
    """Reads and tokenizes tasks. `tokenizer` is a ref workers can load (a tokenizer dir or "gpt2")."""

    tokenizer: str
    text_field: str
    val_fraction: float
    val_seed: int
    dtype: str = "<u4"
    filters: tuple[str, ...] = ()  # stateless quality filters (data.filters)
    eval_index: str = ""  # a saved EvalNGrams to check documents against ("": no check)
    contamination: str = "off"  # warn: count overlapping documents; remove: drop them too
    _encode: object = field(default=None, repr=False)

    def cleaning(self) -> dict:
        """What this reader's cleaning removes (part of the val set's cache key); {} when it removes nothing."""
        out: dict = {"filters": list(self.filters)} if self.filters else {}
        if self.eval_index and self.contamination == "remove":
            out["decontaminate"] = Path(self.eval_index).name  # the index file is named by its tasks' files
        return out

    def unbound(self, **changes) -> Reader:
        """A copy with `changes`, not yet bound."""
        return replace(self, _encode=None, **changes)

    def bind(self, tok: Tokenizer | None = None) -> Reader:
        """Load the tokenizer (or use `tok`), the filters and the eval index: called once per worker."""
        tok = tok if tok is not None else build_tokenizer(self.tokenizer)
        self._eot = tok.eot_id
        self._encode = fast_encoder(tok, np.dtype(self.dtype))
        self._filters = stateless_filters(self.filters)
        self._index = None
        if self.eval_index and self.contamination != "off":
            self._index = EvalNGrams.load(self.eval_index)
            if self._index is None:
                raise DataError(f"cannot read the eval 13-gram index {self.eval_index}; delete it to rebuild it")
        return self

    def run(self, task: tuple, held_out: bool = False) -> TaskResult:
        """Tokenize the training documents of `task` (or, `held_out`, the val ones)."""
        unit, lo, hi, step, phase = task[:5]
        texts = task[5] if unit.kind == "hf" else None  # hf texts are read in the main process
        out, kept = TaskResult(), []
        for d, text, where in self._documents(unit, lo, hi, texts):
            if d % step != phase:
                continue
            out.records += 1
            if not isinstance(text, str):
                out.bad += 1
                out.first_bad = out.first_bad or where
                continue
            if not text or is_held_out(text, self.val_fraction, self.val_seed) != held_out:
                continue
            kept.append((d, text))
        for d, text in self._clean(kept, out):
            try:
                ids = self._encode(text)
            except TokenizerError:
                out.unknown_chars += 1
                continue
            first = unit.kind != "text" or d == 0
            tokens = np.concatenate([np.array([self._eot], dtype=ids.dtype), ids]) if first else ids
            if len(tokens):
                out.docs.append((d, tokens, len(text.encode("utf-8", errors="replace"))))
        return out

    def _clean(self, docs: list[tuple[int, str]], out: TaskResult) -> list[tuple[int, str]]:
        """`docs` (d, text) less those a filter drops (texts as the filters rewrote them) and, with
        contamination=remove, those sharing a 13-gram with an eval task; counts both in `out`."""
        if self._filters:
            kept = []
            for d, text in docs:
                keep, rule, new = apply_filters(self._filters, text)
                if keep:
                    kept.append((d, text if new is None else new))
                else:
                    out.removed[rule] = out.removed.get(rule, 0) + 1
            docs = kept
        if self._index is None or not docs:
            return docs
        kept = []
        for (d, text), hits in zip(docs, self._index.matches([t for _, t in docs])):
            for t in hits:
                name = self._index.tasks[t]
                out.overlap[name] = out.overlap.get(name, 0) + 1
            if hits and self.contamination == "remove":
                out.removed["contamination"] = out.removed.get("contamination", 0) + 1
            else:
                kept.append((d, text))
        return kept

    def _documents(self, unit: Unit, lo: int, hi: int, texts) -> Iterator[tuple[int, object, str]]:
        if unit.kind == "parquet":
            hi = unit.rows if hi < 0 else hi
            for d, text in _read_parquet(unit, self.text_field, lo, hi):
                yield d, text, f"{unit.path} row group {unit.group} row {d}"
        elif unit.kind == "hf":
            for d, text in enumerate(texts, lo):
                yield d, text, f"{unit.path} record {d}"
        elif unit.kind == "text":
            for d, text in _read_text(unit):
                if d >= lo:
                    yield d, text, unit.path
        else:
            for d, text, where in _read_jsonl(unit, self.text_field):
                if d >= lo:
                    yield d, text, where


def check_bad(bad: int, records: int, first_bad: str) -> None:
    """DataError when too many records were bad (the thresholds of `slmkit.data.sources`), naming the first."""
    if bad > JSONL_MAX_BAD or (bad > 10 and bad > JSONL_MAX_BAD_FRACTION * records):
        raise DataError(f"{bad} of {records} records read so far are not JSON objects with a string text field "
                        f"(first bad: {first_bad}); fix the file or set data.text_field")  # fmt: skip


_WORKER: Reader | None = None


def init_worker(reader: Reader) -> None:
    global _WORKER
    # Arrow's default allocator (mimalloc) keeps what a read freed; the system one returns it (~50 MB a worker)
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    _WORKER = reader.bind()


def run_in_worker(task: tuple, held_out: bool = False) -> TaskResult:
    assert _WORKER is not None, "init_worker was not run in this process"
    return _WORKER.run(task, held_out)
