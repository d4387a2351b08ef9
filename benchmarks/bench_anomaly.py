"""Out-of-domain detection (`slm anomaly`) on real data against the baseline an engineer would reach for first.

In-domain: TinyStories (the shared val file). A model (4 x 128, block 128, byte-level BPE 1024 by default) is
trained briefly on its first 80%; of the rest, half calibrates the threshold (the normal held-out text
`slm anomaly fit --normal` takes) and half is the normal test set. Anomalies: WikiText-2 (test) and a C4 web
sample. Every unit is a 300-character chunk of one source, whitespace-normalized (so layout gives nothing away).

Detectors, all given only in-domain text (none sees an anomaly before the test):
  slm      bits per byte under the model; threshold at the FPR on the calibration chunks
  ocsvm    char 2-4-gram TF-IDF + OneClassSVM (scikit-learn), fit on training chunks
  centroid char 2-4-gram TF-IDF, score = 1 - cosine similarity to the mean training vector
and, for reference, a supervised detector that does see anomalies (WikiText-2 valid + the other half of C4):
  logreg   char 2-4-gram TF-IDF + LogisticRegression

Reported: ROC-AUC, PR-AUC and the TPR at the target FPR (threshold from the calibration chunks, so the test FPR is
measured too), per anomaly source and overall. With --tokenizer char the model cannot encode characters TinyStories
never shows (accents, symbols); such chunks get an infinite score, so the slm rows are also given over encodable
chunks only.

    python benchmarks/bench_anomaly.py [--steps 600] [--fpr 0.01] [--out-dir /tmp/bench-anomaly]

Writes benchmarks/results/anomaly.json and anomaly.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("SLM_DATA_DIR", Path(__file__).resolve().parent.parent / "data" / "shared"))
CHUNK = 300


def chunks(text: str, limit: int) -> list[str]:
    text = re.sub(r"\s+", " ", text).strip()
    return [text[i : i + CHUNK] for i in range(0, len(text) - CHUNK + 1, CHUNK)][:limit]


def metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    finite = np.isfinite(scores)
    cap = scores[finite].max() + 1 if finite.any() else 1.0
    s = np.where(finite, scores, cap)
    flagged = scores > threshold
    return {"roc_auc": float(roc_auc_score(labels, s)), "pr_auc": float(average_precision_score(labels, s)),
            "tpr": float(flagged[labels == 1].mean()), "fpr": float(flagged[labels == 0].mean()),
            "n_normal": int((labels == 0).sum()), "n_anomalous": int((labels == 1).sum())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="training steps of the char model")
    ap.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate")
    ap.add_argument("--per-source", type=int, default=400, help="test chunks per anomaly source")
    ap.add_argument("--out-dir", default="/tmp/bench-anomaly")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokenizer", default="bpe:1024", help="char makes every chunk with a character TinyStories "
                    "lacks unencodable (flagged for free); byte-level BPE encodes everything")  # fmt: skip
    args = ap.parse_args()

    import torch
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import OneClassSVM

    from slmkit.base.config_files import load_config
    from slmkit.data.prepare import prepare
    from slmkit.engine.train import train
    from slmkit.runs.checkpoint import load_model
    from slmkit.ship.anomaly import unit_score
    from slmkit.ship.score import score_units

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stories = (DATA / "tinystories" / "tinystories_val.txt").read_text(encoding="utf-8")
    cut = int(len(stories) * 0.8)
    cut2 = cut + (len(stories) - cut) // 2
    (out / "corpus").mkdir(exist_ok=True)
    (out / "corpus" / "train.txt").write_text(stories[:cut], encoding="utf-8")
    train_chunks = chunks(stories[:cut], 3000)
    calib, normal_test = chunks(stories[cut:cut2], 10_000), chunks(stories[cut2:], 10_000)
    wiki = (DATA / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    wiki_val = (DATA / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")
    c4 = [json.loads(x)["text"] for x in (DATA / "web-sample" / "c4_demo.jsonl").read_text().splitlines() if x.strip()]
    half = len(c4) // 2
    anomalies = {"wikitext-2": chunks(wiki, args.per_source), "c4": chunks(" ".join(c4[:half]), args.per_source)}
    seen_anomalies = chunks(wiki_val, 300) + chunks(" ".join(c4[half:]), 300)  # for the supervised reference only

    t0 = time.time()
    data = prepare(str(out / "corpus"), tokenizer=args.tokenizer, out=out / "data", val_fraction=0.05, progress=False)
    ov = ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=128", "train.batch_size=16",
          f"train.max_steps={args.steps}", f"train.eval_every={args.steps}", "optim.lr=3e-3", "optim.warmup=50",
          f"tokenizer.kind={args.tokenizer}", f"data.dir={data}", f"train.out_dir={out / 'runs'}",
          f"train.name=ts-{args.tokenizer.replace(':', '')}", f"train.threads={args.threads}"]  # fmt: skip
    run = train(load_config(None, ov), overrides=ov, progress=False)
    train_s = time.time() - t0
    model, tok, _cfg, _ckpt = load_model(run)

    def slm_scores(texts: list[str]) -> np.ndarray:
        rs = score_units(model, tok, texts, top_spans=0, batch_size=16)
        return np.array([unit_score(r, "bpb") for r in rs], dtype=np.float64)

    t0 = time.time()
    test_texts = normal_test + [t for src in anomalies.values() for t in src]
    labels = np.array([0] * len(normal_test) + [1] * (len(test_texts) - len(normal_test)))
    source = np.array(["normal"] * len(normal_test) + [k for k, v in anomalies.items() for _ in v])
    slm_cal, slm_test = slm_scores(calib), slm_scores(test_texts)
    slm_s = time.time() - t0

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True)
    x_train = vec.fit_transform(train_chunks)
    x_cal, x_test = vec.transform(calib), vec.transform(test_texts)
    t0 = time.time()
    oc = OneClassSVM(kernel="rbf", gamma="scale", nu=0.05).fit(x_train)
    oc_cal, oc_test = -oc.decision_function(x_cal), -oc.decision_function(x_test)
    oc_s = time.time() - t0
    centroid = np.asarray(x_train.mean(axis=0)).ravel()
    centroid /= np.linalg.norm(centroid)
    cen_cal, cen_test = 1 - x_cal @ centroid, 1 - x_test @ centroid
    lr_x = vec.transform(train_chunks[:1500] + seen_anomalies)
    lr_y = np.array([0] * len(train_chunks[:1500]) + [1] * len(seen_anomalies))
    lr = LogisticRegression(max_iter=2000, C=4.0).fit(lr_x, lr_y)
    lr_cal, lr_test = lr.decision_function(x_cal), lr.decision_function(x_test)

    results = {}
    for name, cal, test in (("slm", slm_cal, slm_test), ("ocsvm", oc_cal, oc_test), ("centroid", cen_cal, cen_test),
                            ("logreg (supervised)", lr_cal, lr_test)):  # fmt: skip
        thr = float(np.quantile(cal[np.isfinite(cal)], 1 - args.fpr, method="higher"))
        row = {"threshold": thr, "all": metrics(test, labels, thr)}
        for src in anomalies:
            keep = (source == "normal") | (source == src)
            row[src] = metrics(test[keep], labels[keep], thr)
        if name == "slm":
            enc = np.isfinite(test)
            row["encodable"] = metrics(test[enc], labels[enc], thr)
            row["unencodable_anomalies"] = int((~enc & (labels == 1)).sum())
            row["unencodable_normals"] = int((~enc & (labels == 0)).sum())
        results[name] = row

    report = {
        "fpr_target": args.fpr,
        "tokenizer": args.tokenizer,
        "chunk_chars": CHUNK,
        "train": {
            "steps": args.steps,
            "seconds": round(train_s, 1),
            "run": str(run),
            "params": sum(p.numel() for p in model.parameters()),
            "train_chars": cut,
        },
        "sizes": {
            "train_chunks": len(train_chunks),
            "calibration": len(calib),
            "normal_test": len(normal_test),
            **{k: len(v) for k, v in anomalies.items()},
            "supervised_seen_anomalies": len(seen_anomalies),
        },
        "seconds": {"slm_scoring": round(slm_s, 1), "ocsvm_fit_score": round(oc_s, 1)},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "anomaly.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Out-of-domain detection: TinyStories-trained model vs TF-IDF baselines (target FPR {args.fpr})",
             "", f"Model: {args.tokenizer}, {report['train']['params']:,} params, {args.steps} steps "
             f"({train_s:.0f} s on "
             f"{args.threads} CPU threads). Units: {CHUNK}-char chunks. Normal test {len(normal_test)}, "
             f"anomalies {', '.join(f'{k} {len(v)}' for k, v in anomalies.items())}. Thresholds from "
             f"{len(calib)} held-out TinyStories chunks.", "",
             "| detector | set | ROC-AUC | PR-AUC | TPR @ thr | test FPR |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, row in results.items():
        for key in ("all", *anomalies, "encodable"):
            if key in row:
                m = row[key]
                lines.append(f"| {name} | {key} | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} | {m['tpr']:.3f} | "
                             f"{m['fpr']:.3f} |")  # fmt: skip
    s = results["slm"]
    lines += ["", f"slm: {s['unencodable_anomalies']} anomalous and {s['unencodable_normals']} normal chunks hold "
              "characters the tokenizer cannot encode (score inf, flagged); `encodable` leaves them out.",
              "logreg is supervised (it trains on WikiText-2 valid and the other half of C4): a reference, not a "
              "like-for-like baseline.", ""]  # fmt: skip
    (RESULTS / "anomaly.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
