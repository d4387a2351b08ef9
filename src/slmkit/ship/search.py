"""`slm index` and `slm search`: semantic search over documents with any run's sentence embeddings.

    manifest = build_index("runs/wiki-embed", "docs/", "docs.index")         # passages embedded, written atomically
    hits = search("docs.index", "who built the first telescope?", k=5)      # [{rank, score, source, line, text, ...}]
    index = SearchIndex("docs.index"); index.query(["q1", "q2"], k=10)       # many queries, the model loaded once

DOCS is a text file (one document), a .jsonl file (one document a record: its `text_field`), a .parquet file (one
document a row: its `text_field` column), or a directory of such files (hidden entries and __pycache__ skipped, files
with NUL bytes skipped and counted). A document longer than `chunk` tokens (0: the model's context, one token less
with eos pooling, which appends end-of-text) is split into passages: its paragraphs (blank-line separated) are packed
in order while their token counts fit; a paragraph longer than that is split at its lines, a line at its words. The
packing adds the pieces' token counts (plus one a join), so a passage whose joined text encodes longer (rare: byte
BPE merges across the join usually shorten it) is cut by the encoder, and counted as truncated in the manifest.

The index is a directory, written atomically (a crash never leaves a half-built one):

    vectors.npy      (N, C) float32, unit length: row i is passage i
    passages.jsonl   {"id": i, "doc": d, "source": file, "line": n | "row": r, "offset": c, "text": ...} a passage:
                     doc numbers the documents from 0 in reading order; line (text and .jsonl files, 1-based) is
                     where the passage starts in its file, row (.parquet, 0-based) its row; offset is the character
                     offset of the passage in its document's text
    manifest.json    the run and checkpoint step, the tokenizer's name and fingerprint, pooling, query instruction,
                     chunk, counts, and the format version

Documents are embedded without a prefix; a query is embedded the same way (same run, checkpoint, pooling) with the
index's query instruction before it (`instruction`, default the run's embed.instruction, as embed-train prefixes only
its anchors). Scores are exact cosine similarities: one matrix-vector product over the unit vectors. A search loads
the run the manifest names; another run (`run=`, e.g. after a move) is refused when its tokenizer's fingerprint or
its vector width differs from the index's.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from slmkit.base.atomic import atomic_dir, atomic_write_json
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer, TokenizerError
from slmkit.data.sources import jsonl_records
from slmkit.engine.embedding import check_pooling, embed_texts
from slmkit.model.gpt import GPT
from slmkit.runs.checkpoint import load_model, read_state

FORMAT_VERSION = 1
MANIFEST, VECTORS, PASSAGES = "manifest.json", "vectors.npy", "passages.jsonl"
_LEVELS = (re.compile(r"\n[ \t]*\n\s*"), re.compile(r"\n\s*"), re.compile(r"\s+"))  # paragraphs, lines, words


class SearchError(SlmError):
    """Bad input to `slm index` / `slm search`: empty documents, an existing index, a bad k or query, a mismatch."""


@dataclass
class Passage:
    """One piece of a document, as embedded and as a hit reports it."""

    text: str
    doc: int
    source: str
    offset: int
    line: int | None = None
    row: int | None = None

    def record(self, i: int) -> dict:
        rec = {"id": i, **{k: v for k, v in asdict(self).items() if v is not None and k != "text"}}
        return {**rec, "text": self.text}


@dataclass
class Document:
    text: str
    source: str
    line: int | None = None  # where the document starts in its file (text: 1; .jsonl: its record's line)
    row: int | None = None  # .parquet: its row
    whole_file: bool = False  # the text is a file's whole content, so its lines are the file's


# ---------------------------------------------------------------------------------------------------------
# Reading documents


def _read_text(path: Path, stats: dict) -> str | None:
    """A file's text, or None for a binary file (NUL bytes in its first 8 KB: counted in stats["binary_skipped"]).
    Bytes that are not UTF-8 are replaced (U+FFFD) and the file counted in stats["non_utf8_files"]."""
    raw = path.read_bytes()
    if b"\0" in raw[:8192]:
        stats["binary_skipped"] += 1
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats["non_utf8_files"] += 1
        return raw.decode("utf-8", errors="replace")


def _jsonl_docs(path: Path, text: str, text_field: str) -> Iterator[Document]:
    for n, _, value in jsonl_records(path, text.splitlines(), text_field):
        yield Document(value, str(path), line=n)


def _parquet_docs(path: Path, text_field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq  # local: pyarrow is slow to import and only .parquet input needs it

    try:
        table = pq.read_table(path, columns=[text_field])
    except (KeyError, ValueError) as e:  # pyarrow names a missing column in either
        raise SearchError(f"{path}: no column {text_field!r} ({e}); pass --text-field") from None
    for row, value in enumerate(table.column(0).to_pylist()):
        if isinstance(value, str):
            yield Document(value, str(path), row=row)


def _files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
        part.startswith(".") or part == "__pycache__" for part in p.relative_to(root).parts))  # fmt: skip
    if not files:
        raise SearchError(f"{root} is a directory with no files in it; pass documents to index")
    return files


def read_documents(path: str | Path, text_field: str = "text", stats: dict | None = None) -> list[Document]:
    """The documents of DOCS (see the module docstring), blank ones dropped; `stats` gets the counts of files
    skipped as binary (binary_skipped) and of files read with replaced bytes (non_utf8_files)."""
    path, stats = Path(path), stats if stats is not None else {}
    if not path.exists():
        raise SearchError(f"{path} does not exist; pass a text file, .jsonl, .parquet or a directory of them")
    docs: list[Document] = []
    stats.update(binary_skipped=0, non_utf8_files=0)
    for f in _files(path) if path.is_dir() else [path]:
        if f.suffix == ".parquet":
            docs.extend(_parquet_docs(f, text_field))
            continue
        text = _read_text(f, stats)
        if text is None:
            continue
        if f.suffix == ".jsonl":
            docs.extend(_jsonl_docs(f, text, text_field))
        else:
            docs.append(Document(text, str(f), line=1, whole_file=True))
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise SearchError(f"{path} holds no text to index ({stats['binary_skipped']} binary files skipped)")
    return docs


# ---------------------------------------------------------------------------------------------------------
# Splitting documents into passages


def _split(text: str, start: int, end: int, sep: re.Pattern) -> list[tuple[int, int]]:
    """(start, end) of the non-blank pieces of text[start:end] between matches of `sep`, whitespace trimmed."""
    out, pos = [], start
    for m in [*sep.finditer(text, start, end), None]:
        s, e = pos, m.start() if m else end
        piece = text[s:e]
        if piece.strip():
            s += len(piece) - len(piece.lstrip())
            out.append((s, s + len(piece.strip())))
        pos = m.end() if m else end
    return out


def _pieces(text: str, start: int, end: int, count: Callable[[str], int], budget: int,
            level: int = 0) -> list[tuple[int, int, int]]:  # fmt: skip
    """(start, end, tokens) pieces of text[start:end] of at most `budget` tokens: split at paragraphs, then lines,
    then words (a word that alone exceeds the budget stays whole)."""
    n = count(text[start:end])
    if n <= budget or level == len(_LEVELS):
        return [(start, end, n)]
    parts = _split(text, start, end, _LEVELS[level])
    return [p for s, e in parts for p in _pieces(text, s, e, count, budget, level + 1)]


def split_passages(doc: Document, index: int, tokenizer: Tokenizer, budget: int) -> list[Passage]:
    """The passages of one document: its pieces (`_pieces`) packed in order while their tokens, plus one a join, fit
    in `budget`."""

    def count(t: str) -> int:
        try:
            return len(tokenizer.encode(t))
        except TokenizerError as e:
            where = f"row {doc.row}" if doc.row is not None else f"line {doc.line}"
            raise SearchError(f"{doc.source} ({where}): {e}") from None

    text = doc.text
    spans, used = [], 0
    for s, e, n in _pieces(text, len(text) - len(text.lstrip()), len(text.rstrip()), count, budget):
        if spans and used + 1 + n <= budget:
            spans[-1], used = (spans[-1][0], e), used + 1 + n
        else:
            spans.append((s, e))
            used = n
    out, line, seen = [], doc.line, 0
    for s, e in spans:  # a file's own text: the passage's line in it; a .jsonl record: its line, offset within
        if doc.whole_file:
            line, seen = line + text.count("\n", seen, s), s  # counted on from the last passage: linear in the text
        out.append(Passage(text[s:e], index, doc.source, s, line=line, row=doc.row))
    return out


# ---------------------------------------------------------------------------------------------------------
# slm index


def check_index_out(out: Path, overwrite: bool) -> None:
    """Refuse an existing INDEX without `overwrite`, and, even with it, a path that is a file or a non-empty
    directory that is not an index (so --overwrite never deletes a folder of something else)."""
    if not out.exists():
        return
    if not overwrite:
        raise SearchError(f"{out} exists; pass --overwrite to replace it, or name another --out")
    if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file()):
        raise SearchError(f"{out} exists and is not a search index; --overwrite replaces only an index: pick "
                          "another --out")  # fmt: skip


def _budget(chunk: int, pooling: str, block_size: int) -> int:
    if chunk < 0:
        raise SearchError(f"--chunk must be 0 (the model's context) or more tokens, got {chunk}")
    if chunk > block_size:
        raise SearchError(f"--chunk {chunk} exceeds the model's context of {block_size} tokens; pass at most that")
    budget = (chunk or block_size) - (pooling == "eos")  # eos pooling appends one token
    if budget < 1:
        raise SearchError(f"--chunk {chunk} leaves no room for text with eos pooling; pass 2 or more")
    return budget


def _checkpoint_step(run: Path, ckpt: Path) -> int | None:
    """The step of the checkpoint loaded (None for a quantized artifact, which is one snapshot)."""
    return None if ckpt.resolve() == run.resolve() else read_state(ckpt).get("step")


def build_index(run: str | Path, input: str | Path, out: str | Path, *, pooling: str | None = None,
                instruction: str | None = None, chunk: int = 0, checkpoint: str = "best", text_field: str = "text",
                batch_size: int = 64, overwrite: bool = False, progress: bool = True) -> dict:  # fmt: skip
    """`slm index`: split the documents of `input` into passages, embed them with `run` and write the index `out`.
    Returns the manifest. `instruction`: the prefix a query gets at search time (None: the run's
    embed.instruction); `chunk`: tokens per passage at most (0: the model's context)."""
    out = Path(out)
    check_index_out(out, overwrite)
    if batch_size < 1:
        raise SearchError(f"--batch-size must be 1 or more, got {batch_size}")
    stats: dict = {}
    docs = read_documents(input, text_field, stats)  # before the model loads: bad input costs nothing
    model, tokenizer, cfg, ckpt = load_model(run, checkpoint)
    pooling = pooling or cfg.embed.pooling
    instruction = cfg.embed.instruction if instruction is None else instruction
    check_pooling(pooling, tokenizer)
    budget = _budget(chunk, pooling, model.config.block_size)
    passages = [p for i, d in enumerate(docs) for p in split_passages(d, i, tokenizer, budget)]
    vectors, estats = embed_texts(model, tokenizer, [p.text for p in passages], pooling=pooling,
                                  batch_size=batch_size, max_len=budget + (pooling == "eos"),
                                  progress=progress)  # fmt: skip
    manifest = {"format_version": FORMAT_VERSION, "run": str(Path(run).resolve()),
                "checkpoint_step": _checkpoint_step(Path(run), ckpt),
                "tokenizer": {"name": tokenizer.name, "fingerprint": tokenizer.fingerprint},
                "pooling": pooling, "instruction": instruction, "chunk_tokens": budget, "dim": int(vectors.shape[1]),
                "input": str(Path(input).resolve()), "text_field": text_field, "documents": len(docs),
                "passages": len(passages), "truncated": estats["truncated"], "tokens": estats["tokens"],
                "binary_skipped": stats["binary_skipped"], "non_utf8_files": stats["non_utf8_files"],
                "seconds": round(estats["seconds"], 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    with atomic_dir(out) as tmp:
        with open(tmp / VECTORS, "wb") as f:
            np.save(f, vectors)
        with open(tmp / PASSAGES, "w", encoding="utf-8") as f:
            for i, p in enumerate(passages):
                f.write(json.dumps(p.record(i), ensure_ascii=False) + "\n")
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def index_summary(manifest: dict, out: str | Path) -> str:
    """One line for the console: what was indexed, how, and where."""
    cut = f", {manifest['truncated']} cut to {manifest['chunk_tokens']} tokens" if manifest["truncated"] else ""
    skipped = f", {manifest['binary_skipped']} binary files skipped" if manifest["binary_skipped"] else ""
    skipped += f", {manifest['non_utf8_files']} files not UTF-8 (bytes replaced)" if manifest["non_utf8_files"] else ""
    return (f"indexed {manifest['documents']} documents as {manifest['passages']} passages of <= "
            f"{manifest['chunk_tokens']} tokens ({manifest['pooling']} pooling{cut}{skipped}) in "
            f"{manifest['seconds']:.1f} s; wrote {out}")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# slm search


def read_manifest(path: Path) -> dict:
    if not (path / MANIFEST).is_file():
        what = "does not exist" if not path.exists() else "is not a search index (no manifest.json)"
        raise SearchError(f"{path} {what}; build one with `slm index RUN --input DOCS --out {path}`")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SearchError(f"{path / MANIFEST} cannot be read ({e}); rebuild the index with slm index") from None
    if not isinstance(manifest, dict) or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise SearchError(f"{path / MANIFEST} is not an index manifest this slmkit reads; rebuild it or upgrade")
    return manifest


def check_compatible(manifest: dict, tokenizer: Tokenizer, model: GPT, run: str | Path) -> None:
    """Refuse a run whose tokenizer or vector width differs from the ones the index was built with."""
    want = manifest["tokenizer"]["fingerprint"]
    if tokenizer.fingerprint != want:
        raise SearchError(f"{run} has tokenizer {tokenizer.name} (fingerprint {tokenizer.fingerprint}), but the index "
                          f"was built with {manifest['tokenizer']['name']} (fingerprint {want}); search it with "
                          f"the run that built it ({manifest['run']}) or rebuild the index")  # fmt: skip
    if model.config.n_embd != manifest["dim"]:
        raise SearchError(f"{run} gives {model.config.n_embd}-wide vectors, the index holds {manifest['dim']}-wide "
                          f"ones; search it with the run that built it ({manifest['run']})")  # fmt: skip


class SearchIndex:
    """An index opened for queries: its vectors, passages and the encoder (loaded once)."""

    def __init__(self, path: str | Path, run: str | Path | None = None, checkpoint: str | None = None):
        self.path = Path(path)
        self.manifest = m = read_manifest(self.path)
        run = run or m["run"]
        if checkpoint is None:  # the checkpoint that built the index (a quantized artifact has only one)
            checkpoint = "best" if m.get("checkpoint_step") is None else str(m["checkpoint_step"])
        try:
            self.model, self.tokenizer, _, _ = load_model(run, checkpoint)
        except SlmError as e:
            raise SearchError(f"cannot load the run of index {self.path} ({e}); pass --run and --checkpoint") from None
        check_compatible(m, self.tokenizer, self.model, run)
        self.vectors = np.load(self.path / VECTORS, mmap_mode="r")  # (N, C) float32, unit rows
        with open(self.path / PASSAGES, encoding="utf-8") as f:
            self.passages = [json.loads(line) for line in f]
        if self.vectors.shape != (len(self.passages), m["dim"]):
            raise SearchError(f"{self.path} is damaged: {VECTORS} has shape {self.vectors.shape} for "
                              f"{len(self.passages)} passages; rebuild it with slm index")  # fmt: skip

    def query(self, queries: list[str], k: int = 5) -> list[list[dict]]:
        """The k best passages for each query, best first: {rank, score (cosine), id, doc, source, line | row,
        offset, text}. Fewer than k when the index holds fewer passages."""
        check_query(queries, k)
        m, limit = self.manifest, self.model.config.block_size - (self.manifest["pooling"] == "eos")
        for q in queries:
            n = len(self.tokenizer.encode(m["instruction"] + q))
            if n > limit:
                raise SearchError(f"the query has {n} tokens (with the index's instruction); this model reads at most "
                                  f"{limit}: shorten it")  # fmt: skip
        q, _ = embed_texts(self.model, self.tokenizer, queries, pooling=m["pooling"], instruction=m["instruction"])
        scores = q @ np.asarray(self.vectors).T  # (Q, N) cosine similarities
        k = min(k, scores.shape[1])
        out = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k]
            top = top[np.lexsort((top, -row[top]))]  # best first; equal scores in index order
            out.append([{"rank": r + 1, "score": float(row[i]), **self.passages[i]} for r, i in enumerate(top)])
        return out


def check_query(queries: list[str], k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SearchError(f"-k must be 1 or more, got {k}")
    if not queries or any(not q.strip() for q in queries):
        raise SearchError("the query is empty; pass the text to search for")


def search(index: str | Path, query: str, k: int = 5, *, run: str | Path | None = None,
           checkpoint: str | None = None) -> list[dict]:  # fmt: skip
    """`slm search`: the k passages of `index` closest to `query` (see SearchIndex.query); `run`/`checkpoint`
    load another copy of the encoder than the one the manifest names (its tokenizer must match)."""
    check_query([query], k)  # before the index and model load
    return SearchIndex(index, run, checkpoint).query([query], k)[0]


def format_hits(hits: list[dict], width: int = 160) -> str:
    """Hits as text: rank, score, where (file:line or file row N, +offset) and the start of the passage."""
    lines = []
    for h in hits:
        where = f"{h['source']}:{h['line']}" if "line" in h else f"{h['source']} row {h['row']}"
        where += f" +{h['offset']}" if h["offset"] else ""
        text = " ".join(h["text"].split())
        lines.append(f"{h['rank']:>3}. {h['score']:.4f}  {where}\n     {text[:width]}{'...' * (len(text) > width)}")
    return "\n".join(lines)
