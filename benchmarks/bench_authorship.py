"""Authorship attribution on the 12 authors of the shared Gutenberg file, split BY BOOK, three ways:

  slm classify (tail)  `slm classify train` child of the Wikipedia model (label-likelihood, loss on the label)
  linear probe         logistic regression on the Wikipedia model's frozen hidden states, mean-pooled over a passage
  tfidf+logreg         the baseline: word 1-2-gram TF-IDF (sublinear tf) + logistic regression (scikit-learn)
  slm classify (lm)    `slm classify train --method lm`: one child run of the Wikipedia model per author, trained
                       (the one training loop) on that author's train passages (the verb's default: 5 passes, or
                       --lm-steps); a test passage goes to the author whose model finds it likeliest (a generative
                       classifier: class-conditional language models), probabilities tempered on 10% held out

Each author's books are drawn (seeded) into train and test books, about a quarter of them (at least one) to test,
so no test passage comes from a book seen in training. Passages: whitespace-normalized book text cut into pieces
of --tokens tokens of the Wikipedia model's tokenizer (the classifier's prompt and label must fit beside them in
its 256-token block), --train-per-author and --test-per-author of them per author, spread evenly over the books.
All four methods see the same passages. Accuracy with 95% Wilson intervals, macro-F1, and for slm classify the
calibration error. The fine-tune is capped by --steps (the issue allows <= 15 minutes).

    nice -n 5 python benchmarks/bench_authorship.py [--run /work/bench/runs/wiki-4x256] [--steps 300]

Writes benchmarks/results/NAME.json and NAME.md (--name, default authorship).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("SLM_DATA_DIR", "/work/shared/data")) / "gutenberg" / "gutenberg-12-authors.parquet"
SKIP_TOKENS = 2000  # the start of a book: title page, contents, preface


def split_books(authors: list[str], rng: random.Random, share: float = 0.25) -> set[int]:
    """Indices of the test books: about `share` of each author's books, at least one."""
    test = set()
    for a in sorted(set(authors)):
        idx = [i for i, x in enumerate(authors) if x == a]
        rng.shuffle(idx)
        test.update(idx[: max(1, round(share * len(idx)))])
    return test


def passages(tok, texts: list[str], n: int, length: int, rng: random.Random) -> list[str]:
    """`n` passages of `length` tokens spread over `texts` (books), each decoded back to text."""
    per = [max(1, n // len(texts) + (i < n % len(texts))) for i in range(len(texts))]
    out = []
    for text, k in zip(texts, per, strict=True):
        ids = tok.encode(re.sub(r"\s+", " ", text))[SKIP_TOKENS:]
        starts = list(range(0, max(len(ids) - length, 1), length))
        for s in sorted(rng.sample(starts, min(k, len(starts)))):
            out.append(tok.decode(ids[s : s + length]).strip())
    rng.shuffle(out)
    return out[:n]


def make_split(tok, rows, test_books: set[int], args, rng: random.Random):
    train, test = [], []
    for author in sorted({r["author"] for r in rows}):
        for which, n, dst in ((False, args.train_per_author, train), (True, args.test_per_author, test)):
            books = [r["text"] for i, r in enumerate(rows) if r["author"] == author and (i in test_books) == which]
            dst += [{"text": p, "label": author} for p in passages(tok, books, n, args.tokens, rng)]
    return train, test


def wilson(k: int, n: int) -> list[float]:
    from slmkit.ship.classify_data import wilson as w

    return list(w(k, n))


def summary(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    from sklearn.metrics import f1_score

    k = sum(a == b for a, b in zip(y_true, y_pred, strict=True))
    return {"accuracy": k / len(y_true), "accuracy_ci95": wilson(k, len(y_true)), "n": len(y_true),
            "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro"))}  # fmt: skip


def tfidf_baseline(train, test, labels) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.time()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000)
    xtr = vec.fit_transform([r["text"] for r in train])
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(xtr, [r["label"] for r in train])
    pred = clf.predict(vec.transform([r["text"] for r in test]))
    return {**summary([r["label"] for r in test], list(pred), labels), "seconds": time.time() - t0}


def pooled(model, tok, texts: list[str], batch: int = 16) -> np.ndarray:
    """Mean over each passage's tokens of the model's final hidden state, (N, n_embd)."""
    import torch

    feats = []
    block = model.config.block_size
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            ids = [tok.encode(t)[:block] for t in texts[i : i + batch]]
            x = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
            for j, s in enumerate(ids):
                x[j, : len(s)] = torch.tensor(s)
            h = model.hidden(x).float()  # (B, T, C); causal: padding never reaches real positions
            feats += [h[j, : len(s)].mean(0).numpy() for j, s in enumerate(ids)]
    return np.stack(feats)


def probe(run, checkpoint, train, test, labels) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from slmkit.runs.checkpoint import load_model

    t0 = time.time()
    model, tok, _, _ = load_model(run, checkpoint)
    xtr, xte = pooled(model, tok, [r["text"] for r in train]), pooled(model, tok, [r["text"] for r in test])
    sc = StandardScaler().fit(xtr)
    clf = LogisticRegression(C=1.0, max_iter=3000).fit(sc.transform(xtr), [r["label"] for r in train])
    pred = clf.predict(sc.transform(xte))
    return {**summary([r["label"] for r in test], list(pred), labels), "seconds": time.time() - t0}


def slm_classify(method: str, run, checkpoint, out: Path, overrides: list[str], tag: str) -> dict:
    """`slm classify train` (method tail or lm) on train.jsonl, then `slm classify eval` on test.jsonl."""
    from slmkit.ship import classify

    t0 = time.time()
    clf = classify.train(
        run,
        out / "train.jsonl",
        checkpoint=checkpoint,
        name=f"authorship-{method}-{int(t0)}",
        progress=False,
        method=method,
        overrides=[f"train.out_dir={out / 'runs'}", *overrides],
    )
    train_s = time.time() - t0
    t0 = time.time()
    m = classify.evaluate(clf, out / "test.jsonl", plot=RESULTS / f"{tag}_confusion.png",
                          predictions=out / f"predictions-{method}.jsonl")  # fmt: skip
    return {"accuracy": m["accuracy"], "accuracy_ci95": m["accuracy_ci95"], "n": m["n"], "macro_f1": m["macro_f1"],
            "ece": m["ece"], "train_seconds": train_s, "eval_seconds": time.time() - t0, "run": str(clf),
            "plot": f"{tag}_confusion.png"}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="/work/bench/runs/wiki-4x256")
    ap.add_argument("--checkpoint", default="best", help="parent checkpoint (the wiki run may still be training)")
    ap.add_argument("--tokens", type=int, default=224, help="passage length in tokens")
    ap.add_argument("--train-per-author", type=int, default=150)
    ap.add_argument("--test-per-author", type=int, default=50)
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps of slm classify")
    ap.add_argument("--lr", default="3e-4")
    ap.add_argument("--lm-steps", type=int, default=0, help="training steps of each author's LM (0: the verb's "
                    "default, 5 passes over the author's passages)")  # fmt: skip
    ap.add_argument("--no-lm", action="store_true", help="skip slm classify --method lm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", default="/tmp/bench-authorship")
    ap.add_argument("--name", default="authorship", help="results file name (a smoke run: another name)")
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import torch

    from slmkit.runs.checkpoint import read_state, resolve_checkpoint, run_tokenizer

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = pq.read_table(DATA).to_pylist()
    test_books = split_books([r["author"] for r in rows], rng)
    tok = run_tokenizer(args.run)
    train, test = make_split(tok, rows, test_books, args, rng)
    labels = sorted({r["label"] for r in train})
    for name, recs in (("train", train), ("test", test)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    parent_ckpt = resolve_checkpoint(args.run, args.checkpoint)
    parent_state = read_state(parent_ckpt)

    results = {"tfidf+logreg": tfidf_baseline(train, test, labels)}
    results["linear probe"] = probe(args.run, args.checkpoint, train, test, labels)
    common = [f"train.threads={args.threads}", "train.batch_size=16", "train.doctor=false"]
    results["slm classify (tail)"] = slm_classify(
        "tail", args.run, args.checkpoint, out, [f"train.max_steps={args.steps}", f"train.eval_every="
        f"{max(args.steps // 4, 1)}", f"optim.lr={args.lr}", f"optim.min_lr={float(args.lr) / 10}", *common],
        args.name)  # fmt: skip
    if not args.no_lm:
        steps = [f"train.max_steps={args.lm_steps}"] if args.lm_steps else []
        results["slm classify (lm)"] = slm_classify("lm", args.run, args.checkpoint, out, [*steps, *common],
                                                    f"{args.name}_lm")  # fmt: skip
        results["slm classify (lm)"].update(_label_runs(Path(results["slm classify (lm)"]["run"])))
    result = {"parent": args.run, "parent_checkpoint": str(parent_ckpt), "parent_step": parent_state.get("step"),
              "parent_val_loss": parent_state.get("val_loss"), "parent_train_seconds": parent_state.get("elapsed"),
              "command": "python " + " ".join(sys.argv), "authors": labels, "test_books": len(test_books),
              "train_books": len(rows) - len(test_books), "n_train": len(train), "n_test": len(test),
              "passage_tokens": args.tokens, "steps": args.steps, "lr": args.lr, "threads": args.threads,
              "results": results, "machine": platform.processor() or platform.machine()}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    md = markdown(result, args.name)
    (RESULTS / f"{args.name}.md").write_text(md)
    print(md)


def _label_runs(clf: Path) -> dict:
    """The temperature and each author's run steps of a --method lm classifier."""
    from slmkit.runs.checkpoint import read_run_info

    meta = json.loads((clf / "classify.json").read_text())
    steps = [read_run_info(clf / meta["runs"][lab]).get("step") for lab in meta["labels"]]
    return {"temperature": meta["temperature"], "label_steps": steps}


def _minutes(seconds: float | None) -> str:
    return "? min" if seconds is None else f"{seconds / 60:.0f} min"


def markdown(r: dict, tag: str = "authorship") -> str:
    lines = [f"# Authorship attribution: {len(r['authors'])} Gutenberg authors, split by book", "",
             f"{r['n_train']} train passages from {r['train_books']} books, {r['n_test']} test passages from "
             f"{r['test_books']} other books; {r['passage_tokens']} tokens a passage. Model: {r['parent']} at step "
             f"{r['parent_step']} (val loss {r['parent_val_loss']:.4f}, {_minutes(r.get('parent_train_seconds'))} of "
             f"training); slm classify (tail) fine-tuned {r['steps']} steps (lr {r['lr']}); {r['threads']} threads.",
             "", f"Command: `{r.get('command', 'python benchmarks/bench_authorship.py')}`", "",
             "| method | accuracy | 95% CI | macro-F1 | notes |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, v in r["results"].items():
        lo, hi = v["accuracy_ci95"]
        note = f"{v['seconds']:.0f} s" if "seconds" in v else ""
        if "ece" in v:
            note = f"ECE {v['ece']:.3f}; train {v['train_seconds'] / 60:.1f} min, eval {v['eval_seconds']:.0f} s"
        if "label_steps" in v:
            note += f"; {min(v['label_steps'])}-{max(v['label_steps'])} steps per author, T {v['temperature']:.2f}"
        lines.append(f"| {name} | {v['accuracy']:.3f} | {lo:.3f}-{hi:.3f} | {v['macro_f1']:.3f} | {note} |")
    plots = ", ".join(f"{n}: {v['plot']}" for n, v in r["results"].items() if "plot" in v)
    lines += ["", f"Chance is 1/12 = 0.083. Confusion matrices: {plots}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
