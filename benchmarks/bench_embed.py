"""Embeddings from a model trained here: STS and retrieval scores of a TF-IDF baseline, the pretrained model, and the
model after contrastive fine-tuning (`slm embed-train`), plus embedding throughput at batch 64.

Tasks (slmkit.engine.evaluate.embedding): STS-B test, SICK-R (TEST), STS12-16 (Spearman of cosine x100, as MTEB),
and wiki-retrieval (held-out wiki-03 articles: first sentence -> rest; nDCG@10, MRR@10). TF-IDF is scikit-learn's
TfidfVectorizer (sublinear tf, fitted on each task's own texts), scored by the same code as the models.

Fine-tuning pairs, written to one .jsonl by the library's readers: STS-B train pairs scored >= 4, SICK TRAIN
entailments (contradictions of the same premise as hard negatives), and --wiki-pairs first-sentence -> rest pairs
of articles from the pretraining files (wiki-00, never the held-out wiki-03). With --cosent W > 0, every STS-B
train and SICK TRAIN pair is added with its gold score, and the fine-tune adds W x CoSENT on those.

    nice -n 5 python benchmarks/bench_embed.py --parent /work/bench/runs/wiki-4x256     # ~15-25 min, 2 CPU cores
    python benchmarks/bench_embed.py --parent RUN --steps 20 --limit 200 --name smoke    # smoke run

Writes benchmarks/results/NAME.json and NAME.md (NAME: embed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from slmkit.base.metrics import series
from slmkit.data.pairs import read_pairs, read_sts_benchmark
from slmkit.engine.evaluate.embedding import (
    first_sentence_pairs,
    retrieval_items,
    run_embed_task,
    score_encoder,
    sts_items,
)
from slmkit.runs.checkpoint import load_model, read_run_config, read_run_info
from slmkit.ship.embed import embed_texts
from slmkit.ship.embed_train import embed_train

RESULTS = Path(__file__).parent / "results"
TASKS = ["sts-b", "sick-r", "sts12", "sts13", "sts14", "sts15", "sts16", "wiki-retrieval"]
HEADLINE = {"wiki-retrieval": "ndcg@10"}  # the main score of each task (else spearman)


def data_dir() -> Path:
    return Path(os.environ.get("SLM_DATA_DIR", "/work/shared/data"))


def tfidf_scores(limit: int) -> dict:
    """Every task scored with TF-IDF cosine: a vectorizer fitted on the texts of that task."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # optional: the benchmark's baseline only

    out = {}
    for name in TASKS:
        if name == "wiki-retrieval":
            queries, docs = retrieval_items(limit=limit)
            texts = queries + docs
        else:
            texts = [s for a, b, _ in sts_items(name, limit=limit) for s in (a, b)]
        vec = TfidfVectorizer(sublinear_tf=True).fit(texts)

        def encode(batch, vec=vec):
            return vec.transform(batch).astype(np.float32).toarray()

        metrics, n = score_encoder(name, encode, limit=limit)
        out[name] = {"metrics": metrics, "n": n}
        print(f"tfidf {name}: {metrics}", flush=True)
    return out


def model_scores(run: Path, label: str, limit: int, pooling: str) -> dict:
    model, tok, cfg, ckpt = load_model(run, "best")
    out = {}
    for name in TASKS:
        res = run_embed_task(model, tok, name, pooling=pooling, instruction=cfg.embed.instruction, limit=limit)
        out[name] = {k: res[k] for k in ("metrics", "n", "truncated", "seconds")}
        print(f"{label} {name}: {res['metrics']} ({res['seconds']:.1f} s)", flush=True)
    return out


def throughput(run: Path, pooling: str, n: int = 1024, batch_size: int = 64) -> dict:
    """Sentences per second at batch 64 on STS-B test sentences (tokenization included), best of 2, with 1 thread
    and with torch's default: on a busy 2-core machine thread hand-offs make 2 threads several times slower."""
    model, tok, *_ = load_model(run, "best")
    items = read_sts_benchmark(data_dir() / "embed/stsbenchmark/sts-test.csv")
    texts = [s for a, b, _ in items for s in (a, b)][:n]
    default = torch.get_num_threads()
    by_threads = {}
    for threads in sorted({1, default}):
        torch.set_num_threads(threads)
        embed_texts(model, tok, texts[:128], pooling=pooling, batch_size=batch_size)  # warm-up
        runs = [embed_texts(model, tok, texts, pooling=pooling, batch_size=batch_size)[1] for _ in range(2)]
        by_threads[threads] = max(r["texts_per_s"] for r in runs)
    torch.set_num_threads(default)
    best = max(by_threads, key=by_threads.get)
    tokens = sum(len(tok.encode(t)) for t in texts) / len(texts)
    return {"sentences_per_s": by_threads[best], "threads": best, "by_threads": by_threads, "batch_size": batch_size,
            "sentences": len(texts), "mean_tokens": tokens, "load_average_1min": os.getloadavg()[0]}  # fmt: skip


def wiki_pairs(n: int) -> list[dict]:
    """First sentence -> the next RETRIEVAL_DOC_CHARS characters, of articles of wiki-00 (a pretraining file)."""
    anchors, positives = first_sentence_pairs(data_dir() / "wikipedia/wiki-00.parquet", n)
    return [{"anchor": a, "positive": p} for a, p in zip(anchors, positives)]


def write_pairs(path: Path, n_wiki: int, scored: bool = False) -> dict:
    """The fine-tuning pairs as one .jsonl; `scored`: STS-B and SICK give every pair with its score too."""
    root = data_dir() / "embed"
    sts = read_pairs(root / "stsbenchmark/sts-train.csv", "sts-b", min_score=4.0, scored=scored)
    sick = read_pairs(root / "sick/SICK.txt", "sick", scored=scored)
    recs = [{"anchor": p.anchor, "positive": p.positive, "negatives": list(p.negatives)}
            | ({} if p.score is None else {"score": p.score}) for p in sts + sick]  # fmt: skip
    recs += wiki_pairs(n_wiki) if n_wiki else []
    order = np.random.default_rng(0).permutation(len(recs))
    path.write_text("".join(json.dumps(recs[i]) + "\n" for i in order), encoding="utf-8")
    n_scored = sum("score" in r for r in recs)
    return {"sts-b": len(sts), "sick": len(sick), "wiki": len(recs) - len(sts) - len(sick), "scored": n_scored,
            "total": len(recs)}  # fmt: skip


def headline(scores: dict) -> dict:
    return {t: scores[t]["metrics"][HEADLINE.get(t, "spearman")] for t in TASKS}


def markdown(r: dict) -> str:
    rows = [("TF-IDF cosine", r["tfidf"]), (f"pretrained ({r['pooling']} pooling)", r["before"]),
            ("after contrastive fine-tuning", r["after"])]  # fmt: skip
    head = "| model | " + " | ".join(f"{t} ({HEADLINE.get(t, 'spearman')})" for t in TASKS) + " |"
    lines = [f"# Embeddings from `{r['parent']}`", "", head, "|---|" + "---:|" * len(TASKS)]
    for label, scores in rows:
        h = headline(scores)
        lines.append(f"| {label} | " + " | ".join(f"{h[t]:.1f}" for t in TASKS) + " |")
    a, f = r["after"]["wiki-retrieval"]["metrics"], r["finetune"]
    tp = r["throughput"]
    beat = [t for t in TASKS if headline(r["after"])[t] > headline(r["tfidf"])[t]]
    lines += [
        "",
        f"- after fine-tuning: wiki-retrieval MRR@10 {a['mrr@10']:.1f}, recall@10 {a['recall@10']:.1f}; STS-B test "
        f"Spearman {headline(r['after'])['sts-b']:.1f} (target >= 70); above TF-IDF on {len(beat)} of {len(TASKS)} "
        f"tasks ({', '.join(beat) or 'none'})",
        f"- fine-tuning: {f['steps']} steps of {f['batch_size']} pairs ({f['pairs'] or 'a reused child run'}), "
        + ("InfoNCE" if not f.get("cosent_weight") else f"InfoNCE + {f['cosent_weight']:g} x CoSENT on scored pairs")
        + ", "
        + ("" if f["minutes"] is None else f"{f['minutes']:.1f} min; ")
        + f"STS-B dev Spearman by step: {f['dev_spearman']}",
        f"- throughput: {tp['sentences_per_s']:,.0f} sentences/s at batch {tp['batch_size']} (STS-B sentences, "
        f"{tp['mean_tokens']:.1f} tokens on average, best with {tp['threads']} thread(s); by threads: "
        + ", ".join(f"{k}: {v:,.0f}/s" for k, v in tp.get("by_threads", {}).items())
        + f"; load average {tp['load_average_1min']:.1f} on this 2-core machine while measuring; target >= 500)",
        "- items per task: " + ", ".join(f"{t} {r['after'][t]['n']}" for t in TASKS),
        f"- command: `{r['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parent", required=True, help="a pretrained run (e.g. /work/bench/runs/wiki-4x256)")
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    ap.add_argument("--batch-size", type=int, default=64, help="pairs per step")
    ap.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the fine-tuning")
    ap.add_argument("--wiki-pairs", type=int, default=1500, help="first-sentence -> rest pairs from wiki-00")
    ap.add_argument("--cosent", type=float, default=0.0, help="weight of CoSENT on every scored STS-B / SICK train "
                    "pair (0: InfoNCE on positives only)")  # fmt: skip
    ap.add_argument("--pooling", default="mean", choices=("mean", "weighted", "last", "eos"))
    ap.add_argument("--max-len", type=int, default=64, help="tokens per training text (wiki documents are cut)")
    ap.add_argument("--dev-limit", type=int, default=500, help="STS-B dev pairs scored at each eval of the fine-tune")
    ap.add_argument("--limit", type=int, default=0, help="items per task (0: all)")
    ap.add_argument("--child", help="reuse a fine-tuned child run instead of training one")
    ap.add_argument("--name", default="embed", help="results file name")
    ap.add_argument("--out-dir", default=None, help="where the child run goes (default: a temporary folder)")
    args = ap.parse_args()
    parent = Path(args.parent)
    if read_run_info(parent).get("status") != "finished":
        print(f"warning: {parent} is not finished ({read_run_info(parent).get('status')})", file=sys.stderr)
    result = {"parent": str(parent), "pooling": args.pooling, "limit": args.limit,
              "command": "python " + " ".join(sys.argv)}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)

    def save() -> None:  # after each phase, so a long run that is stopped keeps what it measured
        (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")

    result["tfidf"] = tfidf_scores(args.limit)
    save()
    result["before"] = model_scores(parent, "before", args.limit, args.pooling)
    save()
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="bench-embed-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.child:
        child, counts = Path(args.child), {}
    else:
        counts = write_pairs(out_dir / "pairs.jsonl", args.wiki_pairs, scored=args.cosent > 0)
        ov = [f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", f"optim.lr={args.lr}",
              f"optim.min_lr={args.lr / 10}", f"train.eval_every={max(args.steps // 4, 1)}", "train.log_every=25",
              f"embed.pooling={args.pooling}", f"train.out_dir={out_dir}", "model.dropout=0.1",
              f"embed.max_len={args.max_len}", f"eval.limit={args.dev_limit}",
              f"embed.cosent_weight={args.cosent}"]  # fmt: skip
        child = embed_train(parent, out_dir / "pairs.jsonl", ov, progress=False)
    minutes = (time.time() - t0) / 60
    steps, dev = series(child, "eval/sts-b-dev/spearman")
    trained = read_run_config(child)  # a reused --child: what it was trained with, not this call's defaults
    result["finetune"] = {"child": str(child), "steps": trained.train.max_steps, "batch_size": trained.train.batch_size,
                          "lr": trained.optim.lr, "cosent_weight": trained.embed.cosent_weight,
                          "pairs": counts, "minutes": None if args.child else minutes,
                          "dev_spearman": {s: round(v, 1) for s, v in zip(steps, dev)}}  # fmt: skip
    save()
    result["throughput"] = throughput(child, args.pooling)
    save()
    result["after"] = model_scores(child, "after", args.limit, args.pooling)
    save()
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
