"""Prepare: stream a source's documents, tokenize them in parallel, write train/val token shards and meta.json.

The corpus is never held in memory: documents are read in pieces, grouped in batches of about `BATCH_CHARS`,
encoded by a bounded pool of workers (threads by default: tiktoken releases the GIL; processes on request) and
appended to fixed-size shards as they come back, in order. End-of-text is put *before* every document, so every
document start is an end-of-text position (recorded in `<split>/doc_starts.u64`).

Split: a seeded draw per document (`val_fraction` of them go to val; the first document always goes to train and,
when no other went to val, the last one does). A source that is one plain text file is split by position instead
(nanoGPT's way): its first 1 - val_fraction, cut at a line end, is train and the rest val.

The directory is built under a hidden name (`.NAME.prepare.partial`) and renamed into place with `meta.json` written
last, so an interrupted prepare never leaves a directory that looks complete; run again with the same settings, a
killed prepare continues from its last complete shard (`slmkit.data.prepare_resume`). `max_tokens` caps the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from slmkit import __version__
from slmkit.base.atomic import atomic_write_json, fsync_tree
from slmkit.base.config import DataConfig, TokenizerConfig
from slmkit.base.console import progress as progress_bar
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer, TokenizerError, build_tokenizer, load_tokenizer, parse_kind
from slmkit.data.dataset import META_FILE, SPLITS, TOKENIZER_DIR, find_tokenizer, read_meta
from slmkit.data.parallel import ordered_map
from slmkit.data.prepare_resume import ResumeMismatch, WorkFolder, job_key, skip_written, work_path
from slmkit.data.quality.clean import PROCESS_MIN_BYTES as CLEAN_PROCESS_MIN_BYTES
from slmkit.data.quality.clean import Cleaner, CleanSpec
from slmkit.data.quality.decontam import EvalNGrams
from slmkit.data.shard_writer import SplitWriter, cap_batch, fill_val
from slmkit.data.sources import (
    DataError,
    Document,
    SourceStats,
    iter_documents,
    iter_texts,
    resolve_files,
    single_text_file,
    source_bytes,
)

BATCH_CHARS = 1 << 20  # text per encode task
HOLD_CHARS = 16 << 20  # the last document is held back (to go to val if none did) only while smaller than this
BPE_SAMPLE_BYTES = 100_000_000  # bpe tokenizers are trained on the first this-many bytes of the corpus
PROCESS_MIN_BYTES = 64_000_000  # backend "auto" uses worker processes from this corpus size (they take ~1 s to start)
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------
# Encoding: one function text -> token array, run in a pool.


def fast_encoder(tok: Tokenizer, dtype: np.dtype) -> Callable[[str], np.ndarray]:
    """A function text -> 1-D array of token ids (ordinary text, specials not parsed) avoiding Python lists."""
    enc = getattr(tok, "enc", None)
    if enc is not None:  # tiktoken: straight into a buffer
        return lambda text: enc.encode_to_numpy(text, disallowed_special=()).astype(dtype, copy=False)
    if tok.kind == "char":
        codes = np.array([ord(c) for c in tok.chars], dtype=np.int64)
        table = np.full(max(codes.max(initial=0) + 1, 1), -1, dtype=np.int64)
        table[codes] = np.arange(len(codes))

        def encode_chars(text: str) -> np.ndarray:
            cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            ids = table[np.minimum(cp, len(table) - 1)]
            if (ids < 0).any() or (cp >= len(table)).any():
                tok.encode(text)  # raises TokenizerError naming the unknown character
            return ids.astype(dtype)

        return encode_chars
    return lambda text: np.asarray(tok.encode(text), dtype=dtype)


def _encode_batch(encode: Callable[[str], np.ndarray], texts: Sequence[str]) -> tuple[list[np.ndarray], list[int]]:
    """Token arrays and UTF-8 sizes of `texts`."""
    return [encode(t) for t in texts], [len(t.encode("utf-8")) for t in texts]


_WORKER_ENCODE: Callable[[str], np.ndarray] | None = None


def _init_worker(tok_dir: str, dtype: str) -> None:
    global _WORKER_ENCODE
    _WORKER_ENCODE = fast_encoder(load_tokenizer(tok_dir), np.dtype(dtype))


def _worker_encode(texts: Sequence[str]) -> tuple[list[np.ndarray], list[int]]:
    assert _WORKER_ENCODE is not None
    return _encode_batch(_WORKER_ENCODE, texts)


def _make_pool(backend: str, workers: int, tok: Tokenizer, tok_dir: Path, dtype: np.dtype):
    """(executor, task function) for `backend` 'thread' or 'process'."""
    if backend == "thread":
        encode = fast_encoder(tok, dtype)
        return ThreadPoolExecutor(workers), lambda texts: _encode_batch(encode, texts)
    if backend == "process":
        import multiprocessing

        ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                                 initargs=(str(tok_dir), dtype.str))  # fmt: skip
        return ex, _worker_encode
    raise DataError(f"unknown prepare backend {backend!r}; use thread or process")


# ---------------------------------------------------------------------------------------------------------
# Splitting and batching.


def assign_splits(docs: Iterable[Document], val_fraction: float, seed: int) -> Iterator[tuple[Document, str]]:
    """(piece, split) for every document piece: the source's hint, else a seeded draw per document (see module)."""
    rng = np.random.default_rng(seed)
    held: list[tuple[Document, str]] = []  # the latest document, while small enough to move to val at the end
    held_chars, n_docs, seen_val, split, drawn = 0, 0, False, "train", False
    for doc in docs:
        if doc.first:
            yield from held
            held, held_chars, n_docs = [], 0, n_docs + 1
            drawn = doc.split is None
            if drawn:
                split = "val" if rng.random() < val_fraction and n_docs > 1 else "train"
            else:
                split = doc.split
            seen_val |= split == "val"
        if held_chars + len(doc.text) <= HOLD_CHARS and (held or doc.first):
            held.append((doc, split))
            held_chars += len(doc.text)
        else:
            yield from held
            held, held_chars = [], HOLD_CHARS + 1  # this document is too large to hold back
            yield doc, split
    if held and drawn and not seen_val and val_fraction > 0 and n_docs > 1:
        held = [(d, "val") for d, _ in held]
    yield from held


def batch_pieces(pieces: Iterable[tuple[Document, str]], batch_chars: int = BATCH_CHARS) -> Iterator[tuple]:
    """Group (piece, split) into (texts, metas) batches of about `batch_chars` characters; metas: (split, first)."""
    texts: list[str] = []
    metas: list[tuple[str, bool]] = []
    size = 0
    for doc, split in pieces:
        texts.append(doc.text)
        metas.append((split, doc.first))
        size += len(doc.text)
        if size >= batch_chars:
            yield texts, metas
            texts, metas, size = [], [], 0
    if texts:
        yield texts, metas


# ---------------------------------------------------------------------------------------------------------
# The verb.


def _tokenizer_spec(tokenizer: str) -> str:
    """Validate `tokenizer` early: a kind (char, gpt2, bpe:N) or a tokenizer/dataset/run directory."""
    if Path(tokenizer).is_dir():
        return str(Path(tokenizer))
    parse_kind(tokenizer)  # TokenizerError for an unknown kind
    return tokenizer


def _build_tokenizer(spec: str, texts: Callable[[int], Iterator[str]], progress: bool) -> Tokenizer:
    """The tokenizer: loaded (directory, gpt2), or learnt from the corpus (char: one full pass; bpe: a sample)."""
    if Path(spec).is_dir():
        return find_tokenizer(spec)
    base, vocab = parse_kind(spec)
    if base == "gpt2":
        return build_tokenizer(spec)
    if progress:
        what = "collecting characters" if base == "char" else f"training {spec} on up to {BPE_SAMPLE_BYTES:,} bytes"
        print(f"prepare: {what} ...", file=sys.stderr)
    sample = texts(0 if base == "char" else BPE_SAMPLE_BYTES)
    n_chars = [0]

    def counted():
        for t in sample:
            n_chars[0] += len(t)
            yield t

    try:
        return build_tokenizer(spec, counted())
    except TokenizerError:
        if n_chars[0] == 0:
            raise DataError("empty corpus: the source holds no text") from None
        raise


def _already_prepared(out: Path, settings: dict, spec: str, force: bool) -> bool:
    """True when `out` is complete and was made with the same settings; refuse to overwrite a different one."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory; choose another --out")
    if force or not out.exists():
        return False
    if not (out / META_FILE).is_file():
        ours = {META_FILE, TOKENIZER_DIR, *SPLITS}
        if set(os.listdir(out)) - ours:
            raise DataError(f"{out} exists and is not a dataset directory; choose another --out (or --force)")
        return False  # an incomplete dataset of ours: rebuild
    meta = read_meta(out)
    recorded = meta["tokenizer"]["fingerprint"]
    if Path(spec).is_dir() or spec == "gpt2":
        asked = _build_tokenizer(spec, lambda n: iter(()), progress=False).fingerprint
        if asked != recorded:
            raise TokenizerError(
                f"{out} was prepared with tokenizer {meta['tokenizer']['name']} (fingerprint {recorded}), not the "
                f"one asked for ({spec}, fingerprint {asked}); choose another --out or pass --force to rebuild it"
            )
    old = meta.get("settings", {})
    diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v and k != "tokenizer_dir"]
    if diff:
        raise DataError(f"{out} was prepared with other settings ({'; '.join(diff)}); "
                        "pass --force to rebuild it or choose another --out")  # fmt: skip
    return True


def _clean_partials(out: Path) -> None:
    """Remove hidden `.NAME.*.partial` folders left by a prepare of `out` of an older slmkit (random names, not
    resumable); the resumable work folder (`prepare_resume`) stays."""
    if out.parent.is_dir():
        for p in out.parent.glob(f".{out.name}.*.partial"):
            if p != work_path(out):
                shutil.rmtree(p, ignore_errors=True)


@dataclass
class _Job:
    """What one prepare reads and how (the arguments of `prepare` once checked)."""

    source: str
    spec: str
    settings: dict
    doc_kw: dict
    val_fraction: float
    seed: int
    workers: int
    shard_tokens: int
    backend: str
    max_bytes: int
    max_tokens: int | None
    clean: CleanSpec
    eval_index: Callable[[], EvalNGrams | None] | None
    progress: bool


def prepare(
    source: str,
    *,
    tokenizer: str = TokenizerConfig.kind,
    out: str | Path,
    val_fraction: float = DataConfig.val_fraction,
    seed: int = DataConfig.seed,
    text_field: str = DataConfig.text_field,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    workers: int = 0,
    shard_tokens: int = 100_000_000,
    force: bool = False,
    progress: bool = True,
    max_bytes: int = 0,
    max_tokens: int | None = None,
    backend: str = "auto",
    clean: CleanSpec | None = None,
    eval_index: Callable[[], EvalNGrams | None] | None = None,
) -> Path:
    """Tokenize `source` into the dataset directory `out` (see the module docstring); returns `out`.

    When `out` already holds a complete dataset made from the same source, tokenizer and settings it is returned
    at once, unless `force`; a killed prepare of the same is continued (`prepare_resume`). `workers` 0 means one per
    CPU; `max_bytes` > 0 stops after that much text; `max_tokens` caps the dataset at that many tokens, train and
    val together (end-of-text included; the last document is cut; when nothing went to val by then, the last
    val_fraction of the tokens do). `backend`: "thread" (tiktoken and numpy release the GIL), "process" (worker
    processes; fastest on large corpora in benchmarks/bench_prepare.py) or "auto" (processes from PROCESS_MIN_BYTES
    of text, else threads). `clean` filters and deduplicates the documents on the way (`data.quality.clean`);
    `eval_index`, called only when the dataset is really built, gives the eval 13-grams to check against
    (clean.contamination: warn names each overlapping task and its count; remove drops those documents). meta.json
    records the cleaning report. A char or bpe tokenizer is learned from the text as read, before cleaning.
    """
    out = Path(out)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be positive, got {shard_tokens}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise DataError(f"max_tokens must be a whole number of at least 1 (None: no cap), got {max_tokens!r}")
    spec = _tokenizer_spec(tokenizer)
    include, exclude = list(include), list(exclude)
    resolve_files(source, include, exclude)  # DataError for a missing path, before anything is written
    settings = {"source": source, "tokenizer": spec, "val_fraction": val_fraction, "seed": seed,
                "text_field": text_field, "include": include, "exclude": exclude, "shard_tokens": shard_tokens,
                "max_bytes": max_bytes}  # fmt: skip
    if max_tokens:  # (absent when unset, so that datasets prepared before the option stay valid)
        settings["max_tokens"] = max_tokens
    clean = clean or CleanSpec()
    if clean.changes_text:  # a warning-only check leaves the data as it is, and older datasets' settings valid
        settings["clean"] = clean.to_meta()
    if _already_prepared(out, settings, spec, force):
        if progress:
            print(f"prepare: {out} is already prepared (pass --force to rebuild it)", file=sys.stderr)
        return out
    _clean_partials(out)
    doc_kw = {"text_field": text_field, "include": include, "exclude": exclude}
    job = _Job(source, spec, settings, doc_kw, val_fraction, seed, workers or _cpu_count(), shard_tokens, backend,
               max_bytes, max_tokens, clean, eval_index, progress)  # fmt: skip
    key = job_key(settings, source, include, exclude)
    with WorkFolder(out, progress) as work:
        if work.waited and not force and _already_prepared(out, settings, spec, False):
            work.discard()  # the other process made it
            return out
        try:
            record = work.load(key)
            try:
                meta, cleaner, tok = _build(job, work, key, record)
            except ResumeMismatch as e:
                if progress:
                    print(f"prepare: cannot continue the interrupted prepare ({e}); starting over", file=sys.stderr)
                work.reset()
                meta, cleaner, tok = _build(job, work, key, None)
            work.finish()
        except SlmError:  # bad input: nothing stays behind (a crash or Ctrl-C keeps the folder to continue from)
            work.discard()
            raise
    if progress:
        tr, va = meta["splits"]["train"], meta["splits"]["val"]
        print(f"prepare: {out}: train {tr['tokens']:,} tokens ({tr['documents']:,} docs), val {va['tokens']:,} "
              f"tokens ({va['documents']:,} docs), {tok.name} fingerprint {tok.fingerprint}, {meta['elapsed_s']}s"
              + (f" (stopped at --max-tokens {max_tokens:,})" if meta.get("capped") else ""),
              file=sys.stderr)  # fmt: skip
    if cleaner is not None and cleaner.contamination is not None:
        _warn_overlap(cleaner, out)
    return out


def _job_tokenizer(job: _Job, root: Path, record: dict | None) -> Tokenizer:
    """The tokenizer: built (or learnt) afresh, or, continuing, the one a killed prepare learnt and saved."""
    sample = lambda n: iter_texts(job.source, max_bytes=min(n or job.max_bytes, job.max_bytes or n), **job.doc_kw)
    learnt = not (Path(job.spec).is_dir() or job.spec == "gpt2")
    if record is None or not learnt:
        tok = _build_tokenizer(job.spec, sample, job.progress)
        if record is not None and load_tokenizer(root / TOKENIZER_DIR).fingerprint != tok.fingerprint:
            raise ResumeMismatch(f"the tokenizer {job.spec} changed")
        return tok
    return load_tokenizer(root / TOKENIZER_DIR)


def _build(job: _Job, work: WorkFolder, key: dict, record: dict | None) -> tuple[dict, Cleaner | None, Tokenizer]:
    """Write the dataset into the work folder (continuing `record`), meta.json last; (meta, cleaner, tokenizer)."""
    t0 = time.perf_counter()
    root, source = work.path, job.source
    tok = _job_tokenizer(job, root, record)
    split_at = 1.0 - job.val_fraction if single_text_file(source) else None
    stats = SourceStats(source)
    docs = _limited(iter_documents(source, stats=stats, split_at=split_at, **job.doc_kw), job.max_bytes)
    total = job.max_bytes or source_bytes(source, job.doc_kw["include"], job.doc_kw["exclude"])
    cleaner = _cleaner(job.clean, job.eval_index, total)
    docs = cleaner.run(docs) if cleaner is not None else docs
    tok_dir = root / TOKENIZER_DIR
    if record is None:
        tok.save(tok_dir)
        fsync_tree(tok_dir)
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    if record is not None and record["itemsize"] != dtype.itemsize:
        raise ResumeMismatch("the token size differs")
    backend = job.backend
    if backend == "auto":
        backend = "process" if job.workers > 1 and (total == 0 or total >= PROCESS_MIN_BYTES) else "thread"
    bar = progress_bar(total or None, f"prepare {source}", "B", enabled=job.progress, unit_scale=True)
    before = record["elapsed_s"] if record is not None else 0.0
    save = lambda state: work.save(key, {**state, "elapsed_s": before + time.perf_counter() - t0})
    splits, capped, read = _write_splits(root, tok, tok_dir, dtype, docs, job, backend, bar, record, save, stats)
    if splits["train"]["tokens"] + splits["val"]["tokens"] == 0:
        seen = f"{stats.files} files, {stats.binary_files_skipped} binary skipped, {stats.bad_lines} bad records"
        raise DataError(f"empty corpus: {source} holds no text ({seen})")
    meta = _meta(tok, dtype, splits, read, job.settings, before + time.perf_counter() - t0, split_at)
    if job.max_tokens:
        meta["capped"] = capped
    if cleaner is not None:
        meta["cleaning"] = cleaner.report()
    atomic_write_json(root / META_FILE, meta)
    return meta, cleaner, tok


def _cleaner(spec: CleanSpec, eval_index, total_bytes: int) -> Cleaner | None:
    """The cleaner for `spec` (None when there is nothing to do): worker processes only for a large corpus with
    filters or dedup (a contamination check alone is cheap)."""
    index = eval_index() if eval_index is not None and spec.contamination != "off" else None
    if not spec.changes_text and index is None:
        return None
    heavy = bool(spec.filters or spec.dedup) and total_bytes >= CLEAN_PROCESS_MIN_BYTES
    return Cleaner(spec, index, workers=_cpu_count() if heavy else 1)


def _warn_overlap(cleaner: Cleaner, out: Path) -> None:
    """One line per eval task the corpus overlaps: what was found, and what was done about it."""
    removed = cleaner.spec.contamination == "remove"
    for line in cleaner.contamination.lines():
        print(f"prepare: {'removed' if removed else 'warning'}: {line}", file=sys.stderr)
    if cleaner.contamination.documents and not removed:
        print(f"prepare: {out} keeps those documents; data.contamination=remove (slm prepare --decontaminate) drops "
              "them; counts are in meta.json under cleaning.contamination", file=sys.stderr)  # fmt: skip


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _limited(docs: Iterator[Document], max_bytes: int) -> Iterator[Document]:
    seen = 0
    for doc in docs:
        yield doc
        seen += len(doc.text.encode("utf-8"))  # the same measure as iter_texts, which fed the tokenizer
        if max_bytes and seen >= max_bytes:
            return


def _write_splits(root, tok, tok_dir, dtype, docs, job: _Job, backend, bar, record, save, stats) -> tuple:
    """Encode and write every batch after those a killed prepare wrote (`record`), calling `save` with the progress
    after each batch that filled a shard; (splits, whether max_tokens stopped it, the source's record)."""
    recorded = record["splits"] if record is not None else {}
    writers = {s: SplitWriter(root, s, dtype, job.shard_tokens, recorded.get(s)) for s in SPLITS}
    batches = batch_pieces(assign_splits(docs, job.val_fraction, job.seed), BATCH_CHARS)
    ex, capped, read = None, False, None
    t0, n_batches, chars = time.perf_counter(), 0, 0
    try:
        if record is not None:
            n_batches, chars = skip_written(batches, record, bar)
        ex, task = _make_pool(backend, job.workers, tok, tok_dir, dtype)
        items = ((texts, (metas, sum(map(len, texts)), stats.to_meta() if job.max_tokens else None))
                 for texts, metas in batches)  # fmt: skip
        full, start = sum(w.full_shards() for w in writers.values()), sum(w.tokens for w in writers.values())
        for (metas, n_chars, snapshot), (arrays, n_bytes) in ordered_map(ex, task, items, 2 * job.workers):
            if job.max_tokens:
                room = job.max_tokens - sum(w.tokens for w in writers.values())
                arrays, metas, n_bytes, capped = cap_batch(arrays, metas, n_bytes, room, tok.decode)
            for split in SPLITS:
                idx = [i for i, (s, _) in enumerate(metas) if s == split]
                if idx:
                    writers[split].write([arrays[i] for i in idx], [metas[i][1] for i in idx], tok.eot_id)
                    writers[split].bytes += sum(n_bytes[i] for i in idx)
            n_batches, chars = n_batches + 1, chars + n_chars
            n_tokens = sum(w.tokens for w in writers.values())
            bar.update(sum(n_bytes))
            bar.set_postfix_str(f"{(n_tokens - start) / max(1e-9, time.perf_counter() - t0):,.0f} tok/s", refresh=False)
            if capped:
                read = snapshot  # what was read to make the last batch: not what workers read ahead
                break
            if sum(w.full_shards() for w in writers.values()) > full:  # a shard is complete: record the progress
                full = sum(w.full_shards() for w in writers.values())
                splits = {s: w.sync() for s, w in writers.items()}
                save({"batches": n_batches, "chars": chars, "itemsize": dtype.itemsize, "splits": splits})
        if capped:
            fill_val(writers["train"], writers["val"], job.val_fraction, tok.eot_id, tok.decode)
    finally:
        batches.close()
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
        bar.close()
        splits = {s: w.close() for s, w in writers.items()}
    return splits, capped, read if capped else stats.to_meta()


def _meta(tok: Tokenizer, dtype, splits: dict, source: dict, settings: dict, elapsed: float, split_at) -> dict:
    n_tokens = sum(s["tokens"] for s in splits.values())
    return {
        "format_version": FORMAT_VERSION,
        "slmkit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": {
            "kind": tok.kind,
            "name": tok.name,
            "fingerprint": tok.fingerprint,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "dir": TOKENIZER_DIR,
        },  # fmt: skip
        "dtype": dtype.name,
        "byte_order": "little",
        "eot": "before each document; doc_starts.u64 holds the end-of-text positions",
        "split_by": "position (single text file)" if split_at is not None else "document (seeded draw)",
        "splits": splits,
        "tokens": n_tokens,
        "documents": sum(s["documents"] for s in splits.values()),
        "sources": [source],
        "settings": settings,
        "elapsed_s": round(elapsed, 3),
        "tokens_per_s": round(n_tokens / max(elapsed, 1e-9)),
    }


# ---------------------------------------------------------------------------------------------------------
# Prepare on first use: where a run's data goes, and preparing it once.


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "data"


def default_dataset_dir(source: str, tokenizer_kind: str, root: str | Path = "data") -> Path:
    """Where a source prepared with a tokenizer goes by default: e.g. data/python-stdlib-bpe4096."""
    if source.startswith("hf:"):
        name = source[3:].split("/", 1)[-1]
    elif "*" in source or "?" in source or "[" in source:
        name = source
    else:
        name = Path(source.rstrip("/")).name
        for ext in (".jsonl", ".parquet", ".txt"):
            name = name.removesuffix(ext)
    tok = Path(tokenizer_kind.rstrip("/")).name if Path(tokenizer_kind).is_dir() else tokenizer_kind.replace(":", "")
    return Path(root) / f"{_slug(name)}-{_slug(tok)}"


def ensure_prepared(data_cfg, tokenizer_kind: str, eval_index: Callable[[], EvalNGrams | None] | None = None) -> Path:
    """The dataset directory for a run's data config: `data.dir` as it is when complete, else prepared (with a
    progress bar) on first use and reused afterwards. The data config's cleaning fields (dedup, filters,
    contamination) apply on the way; a cleaned dataset's default folder name ends in -clean-<digest of them>."""
    explicit = bool(data_cfg.dir)
    spec = CleanSpec.from_config(data_cfg)
    out = Path(data_cfg.dir) if explicit else default_dataset_dir(data_cfg.source, tokenizer_kind)
    if not explicit and spec.changes_text:  # a cleaned corpus is another dataset: its own folder
        out = out.with_name(f"{out.name}-clean-{_spec_digest(spec)}")
    if explicit and (out / META_FILE).is_file():
        return out
    return prepare(data_cfg.source, tokenizer=tokenizer_kind, out=out, val_fraction=data_cfg.val_fraction,
                   seed=data_cfg.seed, text_field=data_cfg.text_field, include=tuple(data_cfg.include),
                   exclude=tuple(data_cfg.exclude), progress=True, clean=spec, eval_index=eval_index)  # fmt: skip


def _spec_digest(spec: CleanSpec) -> str:
    return hashlib.sha256(json.dumps(spec.to_meta(), sort_keys=True).encode()).hexdigest()[:8]
