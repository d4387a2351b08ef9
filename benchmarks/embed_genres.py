"""STS-B test Spearman by genre: an embedding run against TF-IDF cosine, to see where the gap to TF-IDF is.

STS-B test mixes captions (MSRvid, images, track5), news (MSRpar, headlines) and forum answers. TF-IDF is fitted on
STS-B train and test texts (unsupervised, as in bench_embed.py's baseline, which fits each task's own texts).

    python benchmarks/embed_genres.py RUN [--name embed_genres]

Writes benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
from pathlib import Path

import numpy as np

from slmkit.engine.evaluate.embedding import data_dir, spearman
from slmkit.ship.embed import embed_texts, load_encoder

RESULTS = Path(__file__).resolve().parent / "results"


def read(name: str) -> list[list[str]]:
    with open(data_dir() / "embed" / "stsbenchmark" / name, encoding="utf-8") as f:
        return [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 7]


def main() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer  # the baseline only

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="an embedding run (slm embed-train)")
    ap.add_argument("--name", default="embed_genres", help="results file name")
    args = ap.parse_args()
    test, train = read("sts-test.csv"), read("sts-train.csv")
    model, tok, cfg = load_encoder(args.run)
    a, _ = embed_texts(model, tok, [r[5] for r in test], pooling=cfg.embed.pooling)
    b, _ = embed_texts(model, tok, [r[6] for r in test], pooling=cfg.embed.pooling)
    cos = (a * b).sum(1)
    vec = TfidfVectorizer(sublinear_tf=True).fit([r[i] for r in train + test for i in (5, 6)])
    tcos = np.asarray(vec.transform([r[5] for r in test]).multiply(vec.transform([r[6] for r in test])).sum(1)).ravel()
    gold = np.array([float(r[4]) for r in test])
    groups = collections.defaultdict(list)
    for i, r in enumerate(test):
        groups[f"{r[0].removeprefix('main-')} / {r[1]}"].append(i)
    rows = [("all", np.arange(len(test)))] + [(g, np.array(ix)) for g, ix in sorted(groups.items())]
    res = [{"genre": g, "n": len(ix), "model": 100 * spearman(cos[ix], gold[ix]),
            "tfidf": 100 * spearman(tcos[ix], gold[ix])} for g, ix in rows]  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"run": args.run, "pooling": cfg.embed.pooling,
                                                            "rows": res}, indent=2) + "\n")  # fmt: skip
    lines = [f"# STS-B test Spearman by genre: `{args.run}` ({cfg.embed.pooling} pooling) vs TF-IDF cosine", "",
             "| genre | pairs | model | TF-IDF | gap |", "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    lines += [f"| {r['genre']} | {r['n']} | {r['model']:.1f} | {r['tfidf']:.1f} | {r['model'] - r['tfidf']:+.1f} |"
              for r in res]  # fmt: skip
    lines += ["", f"Command: `python benchmarks/embed_genres.py {args.run} --name {args.name}`"]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
