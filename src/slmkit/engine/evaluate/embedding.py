"""Embedding tasks of `slm eval`, scored as MTEB scores them.

    sts-b, sts-b-dev   STS Benchmark test / dev            Spearman of cosine similarity vs gold score, x100
    sick-r             SICK TEST relatedness               (MTEB's STS main score: cosine Spearman)
    sts12 ... sts16    SemEval STS 2012-2016, every scored pair of the year together
    wiki-retrieval     held-out Wikipedia (wiki-03.parquet, not in the pretraining files wiki-00..02): each
                       article's first sentence is the query, the next RETRIEVAL_DOC_CHARS characters of the
                       article its one relevant document among all articles'; nDCG@10 and MRR@10 (BEIR's pytrec
                       measures), x100

Files are under $SLM_DATA_DIR (SOURCES.md sections 7 and 8). The scorers take any encoder, `texts -> (N, D)`
vectors, so the benchmark scores a TF-IDF baseline with exactly the same code. The retrieval task's instruction
(embed.instruction) goes before queries only; STS tasks embed both sides plainly (symmetric).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer
from slmkit.data.pairs import read_senteval_sts, read_sick, read_sts_benchmark, split_sentences
from slmkit.engine.embedding import embed_texts
from slmkit.model.gpt import GPT

Encoder = Callable[[Sequence[str]], np.ndarray]
"""texts -> (N, D) float vectors (need not be unit length: scores use cosine)."""

RETRIEVAL_QUERIES = 1000
"""Articles (queries) of wiki-retrieval; eval.limit / --limit lowers it."""
RETRIEVAL_DOC_CHARS = 1000
"""Each document is the article text after its first sentence, cut at the last space before this many characters
(about 200-250 tokens: within the context of small models, so no system sees text another cannot)."""
TOP_K = 10


class EmbedTaskError(SlmError):
    """Missing files of an embedding task."""


@dataclass(frozen=True)
class EmbedTaskSpec:
    name: str
    kind: str  # "sts" or "retrieval"
    files: tuple[str, ...]  # relative to $SLM_DATA_DIR
    description: str


def _sts_year(year: int) -> EmbedTaskSpec:
    return EmbedTaskSpec(f"sts{year}", "sts", (f"embed/sts12-16/STS{year}-en-test",),
                         f"SemEval STS 20{year} test (SentEval copy, lower-cased), all sets")  # fmt: skip


EMBED_TASKS: dict[str, EmbedTaskSpec] = {
    t.name: t
    for t in (
        EmbedTaskSpec("sts-b", "sts", ("embed/stsbenchmark/sts-test.csv",), "STS Benchmark test, 1,379 pairs"),
        EmbedTaskSpec("sts-b-dev", "sts", ("embed/stsbenchmark/sts-dev.csv",), "STS Benchmark dev, 1,500 pairs"),
        EmbedTaskSpec("sick-r", "sts", ("embed/sick/SICK.txt",), "SICK relatedness, TEST split (4,906 pairs here)"),
        *(_sts_year(y) for y in range(12, 17)),
        EmbedTaskSpec("wiki-retrieval", "retrieval", ("wikipedia/wiki-03.parquet",),
                      f"held-out Wikipedia: first sentence -> rest of the article, {RETRIEVAL_QUERIES} queries"),
    )
}  # fmt: skip


def data_dir() -> Path:
    return Path(os.environ.get("SLM_DATA_DIR", "data"))


def embed_task_files(name: str, root: str | Path | None = None) -> list[Path]:
    """Paths of an embedding task's files; EmbedTaskError naming where they were looked for."""
    spec = EMBED_TASKS[name]
    base = Path(root) if root is not None else data_dir()
    paths = [base / f for f in spec.files]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise EmbedTaskError(f"task {name}: missing {', '.join(map(str, missing))}; point SLM_DATA_DIR at the shared "
                             "data folder (SOURCES.md sections 7-8 describe the files)")  # fmt: skip
    return paths


# ---------------------------------------------------------------------------------------------------------
# Items


def sts_items(name: str, root: str | Path | None = None, limit: int = 0) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, gold score) of an STS task; with `limit` > 0, that many spread evenly over the file
    (every k-th item): the STS files are ordered by genre (STS-B test starts with ~600 image captions, far easier
    than its news and forum pairs), so its first items alone would score one genre."""
    (path,) = embed_task_files(name, root)
    if name == "sick-r":
        items = [(a, b, score) for a, b, _, score in read_sick(path, "TEST")]
    elif name.startswith("sts-b"):
        items = read_sts_benchmark(path)
    else:
        items = read_senteval_sts(path)
    return spread(items, limit)


def spread(items: list, limit: int) -> list:
    """`limit` items taken evenly across `items` (all of them when limit is 0 or not smaller)."""
    if not limit or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def first_sentence_pairs(path: str | Path, n: int) -> tuple[list[str], list[str]]:
    """(first sentences, the text after each) of the first `n` articles of a Wikipedia parquet file whose first
    sentence has >= 5 words and whose rest is >= 200 characters; the rest is cut to RETRIEVAL_DOC_CHARS at a word
    boundary. wiki-retrieval's items, and the retrieval pairs benchmarks/bench_embed.py trains on."""
    try:
        import pyarrow.parquet as pq  # local: optional dependency (the data extra), needed by this task only
    except ImportError:
        raise EmbedTaskError("task wiki-retrieval reads parquet: pip install pyarrow") from None
    queries, docs = [], []
    for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=512):
        for text in batch.column(0).to_pylist():
            sentences = split_sentences(" ".join((text or "").split()))
            if len(sentences) < 2 or len(sentences[0].split()) < 5:
                continue
            rest = " ".join(sentences[1:])
            if len(rest) < 200:
                continue
            cut = rest[:RETRIEVAL_DOC_CHARS]
            queries.append(sentences[0])
            docs.append(cut if len(rest) <= RETRIEVAL_DOC_CHARS else cut[: cut.rfind(" ")])
            if len(queries) >= n:
                return queries, docs
    return queries, docs


def retrieval_items(root: str | Path | None = None, limit: int = 0) -> tuple[list[str], list[str]]:
    """(queries, documents) of wiki-retrieval, query i's relevant document being document i: the first articles
    of wiki-03.parquet (in file order) that `first_sentence_pairs` accepts."""
    (path,) = embed_task_files("wiki-retrieval", root)
    return first_sentence_pairs(path, limit or RETRIEVAL_QUERIES)


# ---------------------------------------------------------------------------------------------------------
# Scores


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their average rank), as scipy.stats.spearmanr."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def _ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_a)) + 1]  # first index of each run of equal values
    ends = np.r_[starts[1:], len(a)]
    ranks = np.empty(len(a))
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2  # average of the 1-based ranks s+1 .. e
    return ranks


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def score_sts(encode: Encoder, items: Sequence[tuple[str, str, float]]) -> dict:
    """{"spearman": Spearman(cosine, gold) x 100, "pearson": Pearson(cosine, gold) x 100}: MTEB's cosine scores."""
    a, b = _unit(encode([i[0] for i in items])), _unit(encode([i[1] for i in items]))
    cos, gold = (a * b).sum(1), np.array([i[2] for i in items])
    return {"spearman": 100 * spearman(cos, gold), "pearson": 100 * float(np.corrcoef(cos, gold)[0, 1])}


def rank_of_relevant(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """1-based rank of document i among all documents for query i, by cosine (ties: the relevant one last)."""
    sims = _unit(q) @ _unit(d).T  # (Q, D)
    return (sims >= np.diag(sims)[:, None]).sum(1)  # documents scoring at least as high, itself included


def score_retrieval(encode_queries: Encoder, encode_docs: Encoder, queries: list[str], docs: list[str]) -> dict:
    """nDCG@10 and MRR@10 (x 100) with one relevant document per query: nDCG@10 = 1/log2(1 + rank) and
    MRR@10 = 1/rank when rank <= 10, else 0 (BEIR's definitions for binary relevance), plus recall@10."""
    ranks = rank_of_relevant(encode_queries(queries), encode_docs(docs))
    hit = ranks <= TOP_K
    return {"ndcg@10": 100 * float(np.mean(np.where(hit, 1 / np.log2(1 + ranks), 0.0))),
            "mrr@10": 100 * float(np.mean(np.where(hit, 1 / ranks, 0.0))),
            "recall@10": 100 * float(hit.mean())}  # fmt: skip


def score_encoder(name: str, encode: Encoder, *, encode_queries: Encoder | None = None, limit: int = 0,
                  root: str | Path | None = None) -> tuple[dict, int]:  # fmt: skip
    """(metrics, items scored) of an embedding task for any encoder (encode_queries: the query side of retrieval,
    default encode)."""
    if EMBED_TASKS[name].kind == "retrieval":
        queries, docs = retrieval_items(root, limit)
        return score_retrieval(encode_queries or encode, encode, queries, docs), len(queries)
    items = sts_items(name, root, limit)
    return score_sts(encode, items), len(items)


def run_embed_task(model: GPT, tokenizer: Tokenizer, name: str, *, pooling: str = "mean", instruction: str = "",
                   limit: int = 0, batch_size: int = 64, root: str | Path | None = None,
                   progress: bool = False) -> dict:  # fmt: skip
    """Score one embedding task with a model: metrics, counts (texts, truncated) and timing, as run_task's."""
    stats = {"texts": 0, "truncated": 0}

    def encoder(prefix: str) -> Encoder:
        def encode(texts: Sequence[str]) -> np.ndarray:
            vecs, s = embed_texts(model, tokenizer, texts, pooling=pooling, instruction=prefix,
                                  batch_size=batch_size, progress=progress)  # fmt: skip
            stats["texts"] += s["texts"]
            stats["truncated"] += s["truncated"]
            return vecs

        return encode

    t0 = time.perf_counter()
    metrics, n = score_encoder(name, encoder(""), encode_queries=encoder(instruction), limit=limit, root=root)
    seconds = time.perf_counter() - t0
    return {"task": name, "n": n, "texts": stats["texts"], "metrics": metrics, "chance": None,
            "truncated": stats["truncated"], "limit": limit, "pooling": pooling, "instruction": instruction,
            "seconds": seconds,
            "texts_per_s": stats["texts"] / seconds if seconds else None}  # fmt: skip
