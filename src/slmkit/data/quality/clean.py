"""Cleaning a stream of documents: quality filters, exact and near deduplication, eval decontamination, with a
report of what each rule removed; and `clean`, which writes a cleaned corpus that `slm prepare` reads.

The order: MinHash signatures and 13-gram eval matches of the texts as read (pure: worker processes on a large
corpus, in batches, results in input order) -> exact dedup -> near dedup (first copy kept) -> boilerplate lines
(main process: stateful) -> the other filters (workers) -> decontamination. Deduplicating first judges each copy
whole: the boilerplate step would otherwise trim later copies down to their few edited lines, which no longer look
like their original. Documents read in pieces (a large text file) are cleaned piece by
piece; a piece that starts a document hands that role to the next kept piece.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from slmkit.base.atomic import atomic_dir, atomic_write_json, atomic_write_text
from slmkit.base.checks import CONTAMINATION_MODES, DEDUP_METHODS
from slmkit.base.config import DataConfig
from slmkit.base.console import progress as progress_bar
from slmkit.data.parallel import ordered_map
from slmkit.data.quality.decontam import Contamination, EvalNGrams
from slmkit.data.quality.dedup import NUM_PERM, ExactDedup, NearIndex, signatures
from slmkit.data.quality.filters import Boilerplate, apply_filters, check_filters, stateless_filters
from slmkit.data.sources import DataError, Document, SourceStats, iter_documents, source_bytes

BATCH_CHARS = 1 << 20  # text per worker task
BATCH_DOCS = 512
PROCESS_MIN_BYTES = 8_000_000  # worker processes (about a second each to start) only from this corpus size
EXAMPLES = 3  # removed documents quoted per rule in the report
FORMATS = ("jsonl", "parquet")


@dataclass(frozen=True)
class CleanSpec:
    """What to clean: the data config's dedup, filters, near_threshold and contamination fields."""

    dedup: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    near_threshold: float = DataConfig.near_threshold
    contamination: str = "off"  # warn | remove | off

    def __post_init__(self) -> None:
        bad = [d for d in self.dedup if d not in DEDUP_METHODS]
        if bad:
            raise DataError(f"unknown dedup method {bad[0]!r}; valid: {', '.join(DEDUP_METHODS)}")
        check_filters(self.filters)
        if self.contamination not in CONTAMINATION_MODES:
            raise DataError(f"unknown contamination mode {self.contamination!r}; valid: "
                            f"{', '.join(CONTAMINATION_MODES)}")  # fmt: skip
        if not 0 < self.near_threshold <= 1:
            raise DataError(f"near_threshold must be in (0, 1], got {self.near_threshold}")

    @classmethod
    def from_config(cls, data_cfg) -> CleanSpec:
        return cls(tuple(data_cfg.dedup), tuple(data_cfg.filters), data_cfg.near_threshold, data_cfg.contamination)

    @property
    def changes_text(self) -> bool:
        """Whether cleaning can remove anything (a warning-only contamination check cannot)."""
        return bool(self.dedup or self.filters or self.contamination == "remove")

    def to_meta(self) -> dict:
        return {"dedup": list(self.dedup), "filters": check_filters(self.filters),
                "near_threshold": self.near_threshold, "contamination": self.contamination}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# The pure per-document work, run in worker processes on a large corpus.

_STATE: dict = {}


def _init_worker(spec: CleanSpec, index: EvalNGrams | None) -> None:
    _STATE.update(filters=stateless_filters(spec.filters), near="near" in spec.dedup, index=index)


def _sketch(texts: Sequence[str]) -> list[tuple]:
    """Stage 1, on the texts as read: (MinHash signature or None, eval hits) per text."""
    sigs = signatures(texts, NUM_PERM) if _STATE["near"] else [None] * len(texts)
    index = _STATE["index"]
    hits = index.matches(texts) if index is not None else [{}] * len(texts)
    return list(zip(sigs, hits))


def _filter(texts: Sequence[str]) -> list[tuple]:
    """Stage 2, on the deduplicated texts with boilerplate lines removed: the filters' verdicts."""
    return [apply_filters(_STATE["filters"], t) for t in texts]


# ---------------------------------------------------------------------------------------------------------
# The cleaner: the stateful steps and the report.


class Cleaner:
    """Streams documents through `spec` (and the eval index, when given); `report()` says what was removed."""

    def __init__(self, spec: CleanSpec, index: EvalNGrams | None = None, workers: int = 1):
        self.spec, self.workers = spec, max(1, workers)
        self.index = index if spec.contamination != "off" else None
        self.boiler = Boilerplate() if "boilerplate" in spec.filters else None
        self.exact = ExactDedup() if "exact" in spec.dedup else None
        self.near = NearIndex(spec.near_threshold) if "near" in spec.dedup else None
        self.contamination = Contamination(self.index) if self.index is not None else None
        self.removed: dict[str, dict] = {}
        self.removed_by_source: dict[str, dict[str, int]] = {}  # source -> rule -> documents
        self.counts = {"documents_in": 0, "bytes_in": 0, "documents_out": 0, "bytes_out": 0}

    def _drop(self, rule: str, text: str, n_bytes: int, source: str) -> None:
        by = self.removed_by_source.setdefault(source, {})
        by[rule] = by.get(rule, 0) + 1
        r = self.removed.setdefault(rule, {"documents": 0, "bytes": 0, "examples": []})
        r["documents"] += 1
        r["bytes"] += n_bytes
        if len(r["examples"]) < EXAMPLES:
            r["examples"].append(" ".join(text.split())[:240])

    def _batches(self, docs: Iterable[Document]) -> Iterator[tuple[list[str], list]]:
        """(texts, [(doc, bytes)]) batches of about BATCH_CHARS."""
        texts, metas, size = [], [], 0
        for doc in docs:
            n = len(doc.text.encode("utf-8", "replace"))
            self.counts["documents_in"] += 1
            self.counts["bytes_in"] += n
            texts.append(doc.text)
            metas.append((doc, n))
            size += len(doc.text)
            if size >= BATCH_CHARS or len(metas) >= BATCH_DOCS:
                yield texts, metas
                texts, metas, size = [], [], 0
        if metas:
            yield texts, metas

    def _dedup(self, stage1: Iterable[tuple]) -> Iterator[tuple[list[str], list]]:
        """Exact and near dedup on the texts as read (so a copy is judged whole, before the boilerplate step
        trims it), then the boilerplate step; batches of the survivors' texts for the filters. A dropped document
        stays in the metas with text None (the first-piece hand-over needs the order)."""
        for metas, sketches in stage1:
            texts, out = [], []
            for (doc, n), (sig, hits) in zip(metas, sketches):
                text = doc.text
                if self.exact is not None and self.exact.seen(text):
                    self._drop("exact-duplicate", text, n, doc.source)
                    text = None
                elif self.near is not None and sig is not None and self.near.duplicate_of(sig) is not None:
                    self._drop("near-duplicate", text, n, doc.source)
                    text = None
                elif self.boiler is not None:
                    keep, _, new = self.boiler(text)
                    if not keep:
                        self._drop("boilerplate", text, n, doc.source)
                        text = None
                    elif new is not None:
                        text = new
                if text is not None:
                    texts.append(text)
                out.append((doc, n, text, hits))
            yield texts, out

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        """The kept documents (texts possibly rewritten by line filters), in input order."""
        ex = None
        if self.workers > 1:
            ex = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker, initargs=(self.spec, self.index))  # fmt: skip
        else:
            _init_worker(self.spec, self.index)
        hand_over = False  # the first piece of a document was dropped: the next kept piece starts it
        try:
            stage1 = ordered_map(ex, _sketch, self._batches(docs), 2 * self.workers)
            for metas, verdicts in ordered_map(ex, _filter, self._dedup(stage1), 2 * self.workers):
                verdicts = iter(verdicts)
                for doc, n, text, hits in metas:
                    if doc.first:
                        hand_over = False
                    out = self._decide(text, n, next(verdicts), hits, doc.source) if text is not None else None
                    if out is None:
                        hand_over |= doc.first
                        continue
                    self.counts["documents_out"] += 1
                    self.counts["bytes_out"] += len(out.encode("utf-8", "replace"))
                    yield Document(out, doc.source, doc.split, doc.first or hand_over)
                    hand_over = False
        finally:
            if ex is not None:
                ex.shutdown(wait=True, cancel_futures=True)

    def _decide(self, text: str, n: int, verdict: tuple, hits: dict, source: str) -> str | None:
        keep, rule, new = verdict
        text = new if new is not None else text
        if not keep:
            self._drop(rule, text, n, source)
            return None
        if self.contamination is not None and self.contamination.record(text, hits):
            if self.spec.contamination == "remove":
                self._drop("contamination", text, n, source)
                return None
        return text

    def report(self) -> dict:
        """JSON-ready: the spec, counts in and out, per rule the documents and bytes removed with examples, the
        boilerplate lines removed, the contamination summary."""
        out = {"spec": self.spec.to_meta(), **self.counts,
               "removed": dict(sorted(self.removed.items(), key=lambda kv: -kv[1]["documents"]))}  # fmt: skip
        if self.boiler is not None:
            out["boilerplate_lines_removed"] = self.boiler.lines_removed
        if self.contamination is not None:
            out["contamination"] = self.contamination.summary()
        return out


# ---------------------------------------------------------------------------------------------------------
# The verb: a cleaned corpus on disk.


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Writer:
    """corpus.jsonl ({"text", "source"} lines) or corpus.parquet (columns text, source; row groups of 4096)."""

    def __init__(self, path: Path, fmt: str):
        self.fmt, self.path, self.rows = fmt, path, []
        if fmt == "parquet":
            try:
                import pyarrow as pa  # optional dependency (slmkit[data])
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError("--format parquet needs pyarrow: pip install pyarrow") from None
            self.pa, self.schema = pa, pa.schema([("text", pa.string()), ("source", pa.string())])
            self.file = pq.ParquetWriter(path, self.schema, compression="zstd")
        else:
            self.file = open(path, "w", encoding="utf-8")

    def write(self, doc: Document) -> None:
        if self.fmt == "jsonl":
            self.file.write(json.dumps({"text": doc.text, "source": doc.source}, ensure_ascii=False) + "\n")
            return
        self.rows.append(doc)
        if len(self.rows) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            cols = [[d.text for d in self.rows], [d.source for d in self.rows]]
            self.file.write_table(self.pa.Table.from_arrays(cols, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        if self.fmt == "parquet":
            self.flush()
        self.file.close()


def _joined(docs: Iterable[Document], cap: int = 16 << 20) -> Iterator[Document]:
    """Whole documents: the pieces of a large text file joined into one record, up to `cap` characters a record
    (a larger file becomes several records, so memory stays bounded)."""
    cur: Document | None = None
    for doc in docs:
        if cur is not None and (doc.first or len(cur.text) >= cap):
            yield cur
            cur = None
        cur = Document(doc.text, doc.source, doc.split, True) if cur is None else Document(
            cur.text + doc.text, cur.source, cur.split, True)  # fmt: skip
    if cur is not None:
        yield cur


def clean(source: str, out: str | Path, spec: CleanSpec, *, index: EvalNGrams | None = None, fmt: str = "jsonl",
          text_field: str = "text", include: Sequence[str] = (), exclude: Sequence[str] = (), overwrite: bool = False,
          workers: int = 0, progress: bool = True, notes: Sequence[str] = ()) -> dict:  # fmt: skip
    """Write the cleaned documents of `source` to `out`/corpus.jsonl (or .parquet) with report.json and report.md;
    returns the report. DataError (nothing written) for an existing `out` without `overwrite`, an unreadable
    file, or a result with no documents left."""
    out = Path(out)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if out.exists() and not (out.is_dir() and overwrite):
        raise DataError(f"{out} exists; pick another --out or pass --overwrite to replace it")
    try:  # DataError for a missing source, before anything is written
        total = source_bytes(source, include, exclude)
    except OSError as e:  # a file listed but not readable (a broken link, no permission)
        raise DataError(f"cannot read {e.filename or source}: {e.strerror or e}") from None
    workers = workers or (_cpu_count() if total >= PROCESS_MIN_BYTES else 1)
    cleaner = Cleaner(spec, index, workers)
    stats = SourceStats(source)
    bar = progress_bar(total or None, f"clean {source}", "B", enabled=progress, unit_scale=True)
    docs = _counted(iter_documents(source, text_field=text_field, include=include, exclude=exclude, stats=stats), bar)
    with atomic_dir(out) as tmp:
        writer = _Writer(tmp / f"corpus.{fmt}", fmt)
        try:
            for doc in _joined(_readable(cleaner.run(docs))):
                writer.write(doc)
        finally:
            writer.close()
            bar.close()
        report = {"source": stats.to_meta(), **cleaner.report(), "output": f"corpus.{fmt}", "notes": list(notes)}
        if report["documents_out"] == 0:
            raise DataError(f"nothing left of {source} after cleaning ({report['documents_in']:,} documents in, "
                            f"{_removed_line(report)}); loosen --filters/--dedup; nothing was written")  # fmt: skip
        atomic_write_json(tmp / "report.json", report)
        atomic_write_text(tmp / "report.md", report_markdown(report, str(out / f"corpus.{fmt}")))
    if progress:
        print(f"clean: {out / f'corpus.{fmt}'}: kept {report['documents_out']:,} of {report['documents_in']:,} "
              f"documents ({_removed_line(report)})", file=sys.stderr)  # fmt: skip
    return report


def _counted(docs: Iterable[Document], bar) -> Iterator[Document]:
    for doc in docs:
        bar.update(len(doc.text.encode("utf-8", "replace")))
        yield doc


def _readable(docs: Iterable[Document]) -> Iterator[Document]:
    """`docs`, with an unreadable file turned into one DataError line naming it."""
    try:
        yield from docs
    except OSError as e:
        raise DataError(f"cannot read {e.filename or 'the input'}: {e.strerror or e}") from None


def _removed_line(report: dict) -> str:
    parts = [f"{r['documents']:,} {rule}" for rule, r in report["removed"].items()]
    return "removed: " + (", ".join(parts) if parts else "nothing")


def report_markdown(report: dict, corpus: str) -> str:
    """The cleaning report as markdown: counts, a table of rules, examples, contamination."""
    mb = lambda b: f"{b / 1e6:,.2f} MB"
    lines = [f"# Cleaning report: {report['source']['source']}", "",
             f"- spec: `{json.dumps(report['spec'])}`",
             f"- in: {report['documents_in']:,} documents, {mb(report['bytes_in'])}",
             f"- out: {report['documents_out']:,} documents, {mb(report['bytes_out'])} -> `{corpus}` "
             f"(`slm prepare {corpus} --out DIR`)", ""]  # fmt: skip
    if "boilerplate_lines_removed" in report:
        lines.insert(-1, f"- boilerplate lines removed: {report['boilerplate_lines_removed']:,}")
    lines += ["| rule | documents | share | bytes |", "| --- | ---: | ---: | ---: |"]
    for rule, r in report["removed"].items():
        share = 100 * r["documents"] / max(1, report["documents_in"])
        lines.append(f"| {rule} | {r['documents']:,} | {share:.1f}% | {mb(r['bytes'])} |")
    lines += ["", "## Examples of removed documents", ""]
    for rule, r in report["removed"].items():
        lines += [f"**{rule}**", ""] + [f"- `{e}`" for e in r["examples"]] + [""]
    cont = report.get("contamination")
    if cont:
        lines += ["## Eval contamination (13-gram overlap)", "", f"tasks checked: {', '.join(cont['tasks_checked'])}",
                  ""]  # fmt: skip
        for name, v in cont["overlap"].items():
            lines.append(f"- {name}: {v['documents']:,} documents overlap {v['items']:,} of {v['of_items']:,} items")
        if not cont["overlap"]:
            lines.append("- no overlap found")
    lines += [f"- note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines) + "\n"
