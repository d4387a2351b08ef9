"""Corpus sources: turn a source string into a stream of documents, never holding the corpus in memory.

A source string is one of
- a built-in name (`BUILTINS`): `python-stdlib` (always offline: the `.py` files of this interpreter's standard
  library), `tinyshakespeare`, `tinystories`, `wikitext-2` (read from `$SLM_DATA_DIR`, else downloaded once from a
  pinned URL, checked against a pinned sha256 and cached in `$SLM_CACHE_DIR` or `~/.cache/slmkit`);
- a file: `.jsonl` (one JSON object per line, text in `text_field`), `.parquet` (text in column `text_field`),
  anything else is read as UTF-8 text (one document, read in pieces);
- a directory (every file under it, hidden entries and `__pycache__` skipped, filtered by include/exclude globs) or
  a glob (`src/**/*.py`); each file is read by its extension as above;
- `hf:<dataset>[:<config>[:<split>]]`: a Hugging Face dataset streamed with `datasets` (the train split unless
  named), only when named.

Files with NUL bytes in their first block are taken for binary and skipped; other bytes that are not UTF-8 are
decoded with replacement. Both are counted in `SourceStats`, which also records file counts, sizes and hashes.
"""

from __future__ import annotations

import codecs
import glob as globlib
import hashlib
import itertools
import json
import os
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from fnmatch import fnmatch
from pathlib import Path

from slmkit.base.atomic import atomic_path
from slmkit.base.errors import SlmError

BLOCK_BYTES = 1 << 20  # a large text file is read and yielded in pieces of about this size, cut at line ends
JSONL_MAX_BAD = 1000  # fail when more jsonl lines than this are bad ...
JSONL_MAX_BAD_FRACTION = 0.1  # ... or when more than this fraction are (once more than 10 are bad)
_REPLACEMENT = "\ufffd"


class DataError(SlmError, ValueError):
    """Bad corpus input: a missing path, an empty corpus, malformed records, an incomplete dataset."""


@dataclass
class Document:
    """One document, or one piece of a large one (`first` is False for the pieces after the first)."""

    text: str
    source: str
    split: str | None = None  # "train" / "val" when the source decides the split itself; None lets prepare draw it
    first: bool = True


@dataclass
class SourceStats:
    """What was read from a source: the record `meta.json` keeps under `sources`."""

    source: str
    kind: str = ""
    files: int = 0
    bytes: int = 0
    documents: int = 0
    sha256: str = ""
    non_utf8_files: int = 0  # decoded with replacement
    binary_files_skipped: int = 0
    bad_lines: int = 0  # jsonl lines / parquet rows that are not JSON objects or lack the text field
    first_bad_line: str = ""  # "path:line"
    _hash: object = field(default=None, repr=False)
    _single_hash: str = field(default="", repr=False)
    _root: str = field(default="", repr=False)  # files are hashed under their path relative to this

    def add_file(self, path: Path, size: int, digest: str) -> None:
        rel = Path(os.path.relpath(path, self._root)).as_posix() if self._root else path.name
        if self._hash is None:
            self._hash = hashlib.sha256()
        self.files += 1
        self.bytes += size
        self._single_hash = digest
        self._hash.update(f"{rel}\t{size}\t{digest}\n".encode())

    def to_meta(self) -> dict:
        """A JSON-ready dict. One file: its content sha256; several: sha256 over sorted (relpath, size, sha256)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        if self.files == 1:
            out["sha256"] = self._single_hash
        elif self._hash is not None:
            out["sha256"] = self._hash.hexdigest()
        return out


@dataclass(frozen=True)
class Builtin:
    """A named corpus: its files (relative to `$SLM_DATA_DIR/<name>/`), where to download them, their hashes."""

    name: str
    description: str
    files: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    sha256: tuple[str, ...] = ()


_GH = "https://raw.githubusercontent.com"
_WIKI = f"{_GH}/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2"
BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            "python-stdlib",
            "the .py files of this Python's standard library (offline; tests and site-packages excluded)",
        ),  # fmt: skip
        Builtin(
            "tinyshakespeare",
            "Karpathy's TinyShakespeare, 1.1 MB",
            ("input.txt",),
            (f"{_GH}/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",),
            ("86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",),
        ),  # fmt: skip
        Builtin(
            "tinystories",
            "the first 0.8 MB of the TinyStories validation split",
            ("tinystories_val.txt",),
            (f"{_GH}/yuninxia/moe-routing-bench/bb9bb0bd461aa77cf6ab89423b758f586a6f75d1/data/tinystories_val.txt",),
            ("5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6",),
        ),  # fmt: skip
        Builtin(
            "wikitext-2",
            "WikiText-2 (tokenized release) valid and test splits, one document per article",
            ("valid.txt", "test.txt"),
            (f"{_WIKI}/valid.txt", f"{_WIKI}/test.txt"),
            (
                "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
            ),
        ),  # fmt: skip
    )
}


# ---------------------------------------------------------------------------------------------------------
# Resolving a source string to files.


def stdlib_files() -> list[Path]:
    """Every `.py` file of the running interpreter's standard library, sorted; `test`/`tests` folders and
    `site-packages` are left out (the tests are large, repetitive and full of deliberately odd code)."""
    root = Path(os.__file__).parent
    skip = {"site-packages", "dist-packages", "test", "tests", "__pycache__", "idle_test"}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        out += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(out)


def cache_dir() -> Path:
    return Path(os.environ.get("SLM_CACHE_DIR") or Path.home() / ".cache" / "slmkit")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK_BYTES):
            h.update(block)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256: str) -> None:
    """Fetch `url` into `dest` atomically; refuse it when its sha256 is not the pinned one."""
    with atomic_path(dest) as tmp:
        h = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
            while block := resp.read(BLOCK_BYTES):
                h.update(block)
                f.write(block)
        if h.hexdigest() != sha256:
            raise DataError(f"download of {url} has sha256 {h.hexdigest()}, expected {sha256}; not using it")


def builtin_files(name: str, *, download: bool = True) -> list[Path]:
    """The local files of a built-in corpus: `$SLM_DATA_DIR/<name>/`, else the cache, else downloaded once."""
    spec = BUILTINS[name]
    if name == "python-stdlib":
        return stdlib_files()
    data_dir = os.environ.get("SLM_DATA_DIR")
    out = []
    for fname, url, sha in zip(spec.files, spec.urls, spec.sha256):
        local = Path(data_dir) / name / fname if data_dir else None
        cached = cache_dir() / name / fname
        if local is not None and local.is_file():
            out.append(local)
            continue
        if not cached.is_file() and download:
            try:
                _download(url, cached, sha)
            except OSError as e:
                where = f"{local} (from $SLM_DATA_DIR)" if local else "$SLM_DATA_DIR (not set)"
                raise DataError(
                    f"built-in corpus {name!r}: {fname} is not in {where} nor in {cached.parent}, and downloading "
                    f"{url} failed ({type(e).__name__}: {e}); put the file in $SLM_DATA_DIR/{name}/ or the cache"
                ) from None
        out.append(cached)
    return out


def _is_glob(source: str) -> bool:
    return any(c in source for c in "*?[")


def _dir_files(root: Path, include: Sequence[str], exclude: Sequence[str]) -> list[Path]:
    """Files under `root`, sorted; hidden entries and `__pycache__` skipped; globs match the relative path or name."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue
            path = Path(dirpath) / fname
            rel = path.relative_to(root).as_posix()
            if _selected(rel, include, exclude):
                out.append(path)
    return out


def _selected(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    match = lambda pats: any(fnmatch(rel, p) or fnmatch(name, p) for p in pats)
    return (not include or match(include)) and not match(exclude)


def resolve_files(source: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> tuple[str, list[Path]]:
    """(kind, files) of a local source; raises DataError for a missing path. `hf:` sources have no files."""
    if source.startswith("hf:"):
        return "hf", []
    if source in BUILTINS:
        return "builtin", builtin_files(source)
    path = Path(source).expanduser()
    if path.is_file():
        return "file", [path]
    if path.is_dir():
        return "directory", _dir_files(path, include, exclude)
    if _is_glob(source):
        files = sorted(Path(p) for p in globlib.glob(os.path.expanduser(source), recursive=True) if Path(p).is_file())
        files = [p for p in files if _selected(p.as_posix(), include, exclude)]
        if files:
            return "glob", files
        raise DataError(f"no files match {source!r}; check the pattern (use ** for sub-folders)")
    raise DataError(
        f"no such file, directory or built-in corpus: {source!r}; built-ins are {', '.join(BUILTINS)}, "
        "remote datasets are named hf:<dataset>[:<config>[:<split>]]"
    )


def source_bytes(source: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> int:
    """Total size of a local source's files (0 for hf:), for progress bars."""
    return sum(p.stat().st_size for p in resolve_files(source, include, exclude)[1])


def single_text_file(source: str) -> Path | None:
    """The file when `source` is one plain text file (split by position rather than by document), else None."""
    try:
        _, files = resolve_files(source)
    except DataError:
        return None
    if len(files) == 1 and _file_kind(files[0]) == "text":
        return files[0]
    return None


# ---------------------------------------------------------------------------------------------------------
# Reading files.


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def _line_chunks(f) -> Iterator[bytes]:
    """Blocks of about BLOCK_BYTES from a binary file, each ending at a line end (or at the end of the file)."""
    rest = b""
    while block := f.read(BLOCK_BYTES):
        buf = rest + block
        k = buf.rfind(b"\n") + 1
        if k == 0 and len(buf) < 16 * BLOCK_BYTES:  # no line end yet: read on (a huge line is cut at 16 MB)
            rest = buf
            continue
        k = k or len(buf)
        rest = buf[k:]
        yield buf[:k]
    if rest:
        yield rest


def _decode_pieces(path: Path, stats: SourceStats, cut_at: int = -1) -> Iterator[tuple[str, bool]]:
    """Yield (text, before_cut) pieces of a text file cut at line ends; binary files yield nothing.

    `cut_at` >= 0 forces a piece boundary at the first line end at or after that byte offset; pieces before it
    have before_cut True. The file's size and sha256 go into `stats` once it is read to the end.
    """
    h = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    bad, pos, before = False, 0, True
    with open(path, "rb") as f:
        if b"\0" in f.read(8192):
            stats.binary_files_skipped += 1
            return
        f.seek(0)
        for chunk in _line_chunks(f):
            h.update(chunk)
            parts = [(chunk, before)]
            if before and 0 <= cut_at < pos + len(chunk):
                nl = chunk.find(b"\n", max(0, cut_at - pos))
                k = nl + 1 if nl >= 0 else len(chunk)
                parts, before = [(chunk[:k], True), (chunk[k:], False)], False
            pos += len(chunk)
            for part, is_before in parts:
                text = decoder.decode(part)
                bad |= text.count(_REPLACEMENT) > part.count(b"\xef\xbf\xbd")
                if text:
                    yield text, is_before
        tail = decoder.decode(b"", final=True)  # an incomplete UTF-8 sequence at the very end
        if tail:
            bad = True
            yield tail, before
    stats.non_utf8_files += bad
    stats.add_file(path, pos, h.hexdigest())


def _iter_text_file(path: Path, stats: SourceStats, split_at: float | None = None) -> Iterator[Document]:
    """A text file as one document (in pieces); with `split_at`, pieces before that fraction of the file (cut at
    a line end) are hinted "train", the rest "val" and start a new document."""
    cut = int(path.stat().st_size * split_at) if split_at is not None else -1
    first, prev_split = True, None
    for text, before in _decode_pieces(path, stats, cut):
        split = None if split_at is None else ("train" if before else "val")
        if split != prev_split and prev_split is not None:
            first = True
        if first:
            stats.documents += 1
        yield Document(text, str(path), split, first)
        first, prev_split = False, split


def _iter_wikitext(path: Path, stats: SourceStats) -> Iterator[Document]:
    """WikiText as one document per article: an article starts at a ` = Title = ` line."""
    buf: list[str] = []
    for text, _ in _decode_pieces(path, stats):
        for line in text.splitlines(keepends=True):
            if line.startswith(" = ") and not line.startswith(" = = ") and buf and "".join(buf).strip():
                stats.documents += 1
                yield Document("".join(buf), str(path))
                buf = []
            buf.append(line)
    if "".join(buf).strip():
        stats.documents += 1
        yield Document("".join(buf), str(path))


def _bad_record(stats: SourceStats, where: str, total: int) -> None:
    stats.bad_lines += 1
    stats.first_bad_line = stats.first_bad_line or where
    if stats.bad_lines > JSONL_MAX_BAD or (stats.bad_lines > 10 and stats.bad_lines > JSONL_MAX_BAD_FRACTION * total):
        raise DataError(
            f"{stats.bad_lines} of {total} records so far are not JSON objects with a string field (first bad: "
            f"{stats.first_bad_line}, latest: {where}); fix the file or pass the right --text-field"
        )


def jsonl_records(path: Path, lines: Iterable[str], text_field: str) -> Iterator[tuple[int, dict, str]]:
    """(line number, record, text) of every non-empty line of a .jsonl file that a verb reads strictly (slm score,
    embed, index): the first line that is not a JSON object with a string `text_field` is a DataError naming it."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n} is not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
            raise DataError(f"{path}:{n} has no string field {text_field!r}; pass --text-field NAME")
        yield n, rec, rec[text_field]


def _iter_jsonl(path: Path, stats: SourceStats, text_field: str) -> Iterator[Document]:
    h, size, n = hashlib.sha256(), path.stat().st_size, 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            h.update(raw)
            if not raw.strip():
                continue
            n += 1
            try:
                rec = json.loads(raw.decode("utf-8", errors="replace"))
                text = rec[text_field] if isinstance(rec, dict) else None
            except (json.JSONDecodeError, KeyError):
                text = None
            if not isinstance(text, str):
                _bad_record(stats, f"{path}:{lineno}", n)
                continue
            if text:
                stats.documents += 1
                yield Document(text, str(path))
    stats.add_file(path, size, h.hexdigest())


def _iter_parquet(path: Path, stats: SourceStats, text_field: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading .parquet needs pyarrow: pip install pyarrow") from None
    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise DataError(f"{path} has no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                        "pass --text-field")  # fmt: skip
    n = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            n += 1
            if not isinstance(text, str):
                _bad_record(stats, f"{path}:row {n}", n)
            elif text:
                stats.documents += 1
                yield Document(text, str(path))
    stats.add_file(path, path.stat().st_size, _sha256_file(path))


def _iter_hf(source: str, stats: SourceStats, text_field: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source} needs the Hugging Face `datasets` package: pip install datasets") from None
    name, config, split = (source[3:].split(":") + ["", ""])[:3]  # hf:<dataset>[:<config>[:<split>]]
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
    except Exception as e:  # network, unknown dataset or split, ...
        raise DataError(
            f"could not open {source} ({_reason(e)}); the form is hf:<dataset>[:<config>[:<split>]]"
        ) from None
    records = iter(ds)
    for i in itertools.count():
        try:
            rec = next(records)
        except StopIteration:
            return
        except Exception as e:  # the connection dropped, a damaged file, ...
            raise DataError(f"reading {source} failed after {i:,} records ({_reason(e)}); run again to retry") from None
        text = rec.get(text_field) if isinstance(rec, dict) else None
        if not isinstance(text, str):
            _bad_record(stats, f"{source}:record {i}", i + 1)
        elif text:
            stats.documents += 1
            stats.bytes += len(text.encode("utf-8"))
            yield Document(text, source)


def _reason(e: Exception) -> str:
    """An exception from a library as a short phrase on one line."""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _iter_file(path: Path, stats: SourceStats, text_field: str, wikitext: bool = False) -> Iterator[Document]:
    kind = _file_kind(path)
    if kind == "jsonl":
        return _iter_jsonl(path, stats, text_field)
    if kind == "parquet":
        return _iter_parquet(path, stats, text_field)
    return _iter_wikitext(path, stats) if wikitext else _iter_text_file(path, stats)


def iter_documents(
    source: str,
    *,
    text_field: str = "text",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    stats: SourceStats | None = None,
    split_at: float | None = None,
) -> Iterator[Document]:
    """Stream the documents of `source` (see the module docstring); fill `stats` as it goes.

    Raises DataError at once for a missing path. `split_at` (single text files only) hints the first
    `split_at` of the file as "train" and the rest as "val", cut at a line end.
    """
    stats = stats if stats is not None else SourceStats(source)
    kind, files = resolve_files(source, include, exclude)
    stats.kind = kind
    if files:
        stats._root = os.path.commonpath([str(p.parent) for p in files])
    return _iter_documents(source, kind, files, stats, text_field, split_at)


def _iter_documents(source, kind, files, stats, text_field, split_at) -> Iterator[Document]:
    if kind == "hf":
        yield from _iter_hf(source, stats, text_field)
        return
    if split_at is not None and len(files) == 1 and _file_kind(files[0]) == "text":
        yield from _iter_text_file(files[0], stats, split_at)
        return
    for path in files:
        yield from _iter_file(path, stats, text_field, wikitext=source == "wikitext-2")


def iter_texts(source: str, *, max_bytes: int = 0, **kw) -> Iterator[str]:
    """Plain texts of `source` (documents or pieces of them); stop once `max_bytes` of UTF-8 were yielded (0: all)."""
    seen = 0
    for doc in iter_documents(source, **kw):
        yield doc.text
        seen += len(doc.text.encode("utf-8"))
        if max_bytes and seen >= max_bytes:
            return
