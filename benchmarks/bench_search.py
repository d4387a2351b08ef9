"""Semantic search on real text: find a held-out Wikipedia article from its first sentence with `slm index` /
`slm search` (slmkit.ship.search), against a TF-IDF baseline measured in the same run.

Articles: the first --articles of wiki-03.parquet (never in the pretraining files wiki-00..02) whose first sentence
has >= 5 words and whose rest is >= 200 characters (the selection of the wiki-retrieval eval task). The query is the
first sentence; the document is the rest of the article (its line structure kept; its first --max-chars characters,
cut at a line end, so that two models index in minutes on 2 busy cores), which `build_index` splits into passages of
at most the model's context (--chunk). A query finds an article when one of the article's passages is among
the best; passages are ranked by cosine and each article counted at its best passage (the top 100 passages are read).
Scores: recall@1, recall@5 and MRR@10 over the articles. Baselines: chance (k / articles) and TF-IDF cosine
(scikit-learn's TfidfVectorizer, sublinear tf, fitted on the same passages, ranked the same way). Also the batcher
behind `slm serve`'s /v1/embeddings: the queries sent as separate requests at once, embedded one forward per request
vs batched (queries/s, with the threads `slm serve` uses here).

    nice -n 5 python benchmarks/bench_search.py --runs /work/bench/runs/wiki-4x256 [RUN_2 ...]   # ~5-15 min, 2 CPUs

Writes benchmarks/results/NAME.json and NAME.md (NAME: search).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from slmkit.data.pairs import split_sentences
from slmkit.runs.checkpoint import load_model
from slmkit.ship.search import SearchIndex, build_index
from slmkit.ship.serve.embeddings import EmbeddingBatcher
from slmkit.ship.serve.engine import default_threads

RESULTS = Path(__file__).parent / "results"
READ_PASSAGES = 100  # passages read per query to rank articles at their best passage


def articles(n: int, max_chars: int) -> tuple[list[str], list[str], list[str]]:
    """(titles, queries, documents): first sentence -> the rest of the article, as the module docstring says."""
    path = Path(os.environ.get("SLM_DATA_DIR", "/work/shared/data")) / "wikipedia" / "wiki-03.parquet"
    titles, queries, docs = [], [], []
    for batch in pq.ParquetFile(path).iter_batches(columns=["title", "text"], batch_size=512):
        for title, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            head, _, after = (text or "").strip().partition("\n")  # the first sentence is in the first line
            sentences = split_sentences(head)
            if not sentences or len(sentences[0].split()) < 5:
                continue
            rest = (" ".join(sentences[1:]) + "\n" + after).strip()  # the rest keeps its lines
            if max_chars and len(rest) > max_chars:  # cut at the last line end (else space) before max_chars
                cut = rest.rfind("\n", 0, max_chars)
                rest = rest[: cut if cut > max_chars // 2 else rest.rfind(" ", 0, max_chars)]
            if len(rest) < 200:
                continue
            titles.append(title)
            queries.append(sentences[0])
            docs.append(rest)
            if len(queries) >= n:
                return titles, queries, docs
    return titles, queries, docs


def article_ranks(scores: np.ndarray, doc_of: np.ndarray) -> list[int | None]:
    """Rank (1-based) of query i's article among articles ordered by their best passage, within the top
    READ_PASSAGES passages (None: not there)."""
    ranks = []
    for i, row in enumerate(scores):
        top = np.argsort(-row, kind="stable")[:READ_PASSAGES]
        seen: list[int] = []
        for p in top:
            if doc_of[p] not in seen:
                seen.append(int(doc_of[p]))
        ranks.append(seen.index(i) + 1 if i in seen else None)
    return ranks


def metrics(ranks: list[int | None]) -> dict:
    n = len(ranks)
    r = [x or 10**9 for x in ranks]
    return {"recall@1": round(100 * sum(x <= 1 for x in r) / n, 1),
            "recall@5": round(100 * sum(x <= 5 for x in r) / n, 1),
            "mrr@10": round(100 * sum(1 / x for x in r if x <= 10) / n, 1)}  # fmt: skip


def tfidf(queries: list[str], passages: list[dict]) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer

    t0 = time.perf_counter()
    vec = TfidfVectorizer(sublinear_tf=True).fit([p["text"] for p in passages])
    d, q = vec.transform([p["text"] for p in passages]), vec.transform(queries)  # rows are L2-normalized
    scores = (q @ d.T).toarray()
    doc_of = np.array([p["doc"] for p in passages])
    return {**metrics(article_ranks(scores, doc_of)), "seconds": round(time.perf_counter() - t0, 1)}


def model(run: Path, docs_file: Path, queries: list[str], work: Path, chunk: int) -> tuple[dict, list[dict]]:
    out = work / f"{run.name}.index"
    t0 = time.perf_counter()
    manifest = build_index(run, docs_file, out, chunk=chunk, overwrite=True, progress=False)
    build_s = time.perf_counter() - t0
    index = SearchIndex(out)
    t0 = time.perf_counter()
    hits = index.query(queries, k=READ_PASSAGES)
    query_s = time.perf_counter() - t0
    ranks = []
    for i, h in enumerate(hits):
        seen = list(dict.fromkeys(x["doc"] for x in h))
        ranks.append(seen.index(i) + 1 if i in seen else None)
    row = {"run": str(run), "step": manifest["checkpoint_step"], **metrics(ranks), "passages": manifest["passages"],
           "chunk_tokens": manifest["chunk_tokens"],
           "truncated": manifest["truncated"], "pooling": manifest["pooling"], "instruction": manifest["instruction"],
           "index_s": round(build_s, 1), "passages_per_s": round(manifest["passages"] / manifest["seconds"], 1),
           "query_ms": round(1000 * query_s / len(queries), 1)}  # fmt: skip
    return row, index.passages


def server_batching(run: Path, queries: list[str]) -> dict:
    """/v1/embeddings' batcher: every query sent as its own request at once, embedded one forward per request
    (max_batch 1) vs together (max_batch 64); queries/s."""
    model, tok, _, _ = load_model(run)
    before = torch.get_num_threads()
    torch.set_num_threads(default_threads())  # what `slm serve` runs with on this machine
    out = {"threads": torch.get_num_threads()}
    for max_batch in (1, 64):
        batcher = EmbeddingBatcher(model, tok, max_batch=max_batch, max_queue=len(queries))
        ids = [batcher.input_ids(q, "input") for q in queries]
        left, ready = [len(ids)], threading.Event()

        def done(vectors, error, left=left, ready=ready) -> None:
            left[0] -= 1
            if left[0] == 0:
                ready.set()

        batcher.start()
        t0 = time.perf_counter()
        with batcher.held():  # all requests arrive before the first forward, as a burst of clients would
            for x in ids:
                batcher.submit([x], done)
        ready.wait()
        seconds = time.perf_counter() - t0
        batcher.stop()
        out[f"max_batch_{max_batch}"] = {"queries_per_s": round(len(ids) / seconds, 1),
                                         "forwards": batcher.stats.forwards}  # fmt: skip
    torch.set_num_threads(before)
    return out


def markdown(r: dict) -> str:
    lines = [f"# Semantic search: a held-out Wikipedia article from its first sentence ({r['articles']} articles)",
             "", f"`{r['command']}` — {r['when']}, {r['threads']} torch threads. Articles from wiki-03 (not in the "
             "pretraining files); query = first sentence, document = the rest of the article (first "
             f"{r['max_chars'] or 'all'} characters) split into passages by `slm index`; an article counts at its best "
             "passage.", "",
             "| method | recall@1 | recall@5 | MRR@10 | passages | index s | passages/s | ms/query (batched) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| chance | {r['chance']['recall@1']} | {r['chance']['recall@5']} | {r['chance']['mrr@10']} | | | | |",
             f"| TF-IDF (scikit-learn, same passages) | {r['tfidf']['recall@1']} | {r['tfidf']['recall@5']} | "
             f"{r['tfidf']['mrr@10']} | {r['tfidf']['passages']} | | | |"]  # fmt: skip
    for m in r["models"]:
        name = f"{Path(m['run']).name} (step {m['step']}, {m['pooling']})"
        lines.append(f"| {name} | {m['recall@1']} | {m['recall@5']} | {m['mrr@10']} | {m['passages']} | "
                     f"{m['index_s']} | {m['passages_per_s']} | {m['query_ms']} |")  # fmt: skip
    b = r.get("server_batching")
    if b:
        one, many = b["max_batch_1"], b["max_batch_64"]
        lines += ["", f"`/v1/embeddings` batching ({r['articles']} queries sent as separate requests at once, "
                  f"{Path(r['models'][0]['run']).name}, {b['threads']} torch thread(s) as `slm serve` uses here): "
                  f"{one['queries_per_s']} queries/s one forward each, {many['queries_per_s']} queries/s batched "
                  f"({many['forwards']} forwards of up to 64)."]  # fmt: skip
    lines += ["", r["note"], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, type=Path, help="runs to index with (in this order)")
    ap.add_argument("--articles", type=int, default=300)
    ap.add_argument("--max-chars", type=int, default=4000, help="characters of each document kept (0: all)")
    ap.add_argument("--chunk", type=int, default=0, help="tokens per passage (0: each model's context)")
    ap.add_argument("--name", default="search")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    titles, queries, docs = articles(args.articles, args.max_chars)
    n = len(queries)
    result = {"command": "python benchmarks/bench_search.py " + shlex.join(sys.argv[1:]), "articles": n,
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": torch.get_num_threads(),
              "chance": {"recall@1": round(100 / n, 1), "recall@5": round(500 / n, 1),
                         "mrr@10": round(100 * sum(1 / k for k in range(1, 11)) / n, 1)},
              "max_chars": args.max_chars, "models": [], "note": args.note}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        work = Path(tmp)
        docs_file = work / "articles.jsonl"
        docs_file.write_text("".join(json.dumps({"title": t, "text": d}) + "\n" for t, d in zip(titles, docs)))
        passages = None
        for run in args.runs:
            row, passages_run = model(run, docs_file, queries, work, args.chunk)
            passages = passages or passages_run
            result["models"].append(row)
            print(json.dumps(row), file=sys.stderr)
        result["tfidf"] = {**tfidf(queries, passages), "passages": len(passages)}  # the first run's passages
    print(json.dumps(result["tfidf"]), file=sys.stderr)
    result["server_batching"] = server_batching(args.runs[0], queries)
    print(json.dumps(result["server_batching"]), file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
