"""The issue's two anomaly tracks (`slm anomaly`'s score: bits per byte under the model) against zlib baselines.

--track code: a model of the default preset (4 x 128, bpe:4096, 500 steps) trained on the Python standard library
  (`python-stdlib`) minus a seeded 8% of its modules, held out. Normal = functions of the held-out modules (half
  calibrate the threshold, half are the normal test set). Anomalies: Wikipedia paragraphs (wiki-03), Gutenberg
  paragraphs, held-out functions with their lines shuffled, held-out functions with 10% of their lexical tokens
  (words, numbers, operators) replaced by tokens drawn at random from the same functions.
--track prose: the shared Wikipedia model (/work/bench/runs/wiki-4x256: 4 x 256, bpe:8192, trained on
  wiki-00..02). Normal = paragraphs of held-out articles (wiki-03). Anomalies: Gutenberg paragraphs, stdlib
  functions, and machine-garbled Wikipedia paragraphs (other held-out articles): words shuffled within each
  sentence (`garbled-order`), and 5% of letters replaced at random (`garbled-chars`).

Baselines, measured on the same units in the same run, both one-class (they see only in-domain text):
  zlib       compressed size / raw size (zlib level 9); higher = less regular = anomalous
  zlib+dict  extra compressed bytes per raw byte when zlib is primed with 32 KB of in-domain training text as its
             dictionary (compression against the domain: the compression analogue of the model's score)
slmkit's scores, all from one scoring pass: bpb (`slm anomaly fit`'s default), loss (--score loss) and ratio
(--score ratio: loss minus a unigram model's loss, its counts from the run's prepared training data).
Reported per anomaly kind: ROC-AUC and PR-AUC (normal test units vs that kind), and the TPR at the threshold set on
the calibration units for --fpr. Targets: ROC-AUC >= 0.95 on the first two kinds, above zlib on every kind.

    nice -n 5 python benchmarks/bench_anomaly_tracks.py --track code [--run RUN] [--per-kind 300]
    nice -n 5 python benchmarks/bench_anomaly_tracks.py --track prose [--run /work/bench/runs/wiki-4x256]

Writes benchmarks/results/anomaly_<track>.json and .md.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import random
import re
import shutil
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("SLM_DATA_DIR", "/work/shared/data"))
MIN_CHARS, MAX_CHARS = 200, 2000
HELD_OUT_SHARE = 0.08


# ---------------------------------------------------------------------------------------------------------
# sources


def paragraphs(texts, limit: int, rng: random.Random, split: str = "\n") -> list[str]:
    """Paragraphs of MIN_CHARS..MAX_CHARS characters (inner whitespace runs kept as they are), drawn at random."""
    out = []
    for t in texts:
        for p in re.split(split, t):
            p = p.strip()
            if MIN_CHARS <= len(p) <= MAX_CHARS:
                out.append(p)
    rng.shuffle(out)
    return out[:limit]


def wiki_texts(name: str) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(DATA / "wikipedia" / name, columns=["text"]).column("text").to_pylist()


def gutenberg_paragraphs(limit: int, rng: random.Random) -> list[str]:
    import pyarrow.parquet as pq

    books = pq.read_table(DATA / "gutenberg" / "gutenberg-12-authors.parquet", columns=["text"]).column("text")
    paras = paragraphs(books.to_pylist(), 10**9, rng, split=r"\n\s*\n")
    return [re.sub(r"[ \t]*\n[ \t]*", " ", p) for p in paras[:limit]]  # unwrap the book's hard line breaks


def functions(files: list[Path], limit: int, rng: random.Random) -> list[str]:
    """Function and method definitions (dedented source) of MIN_CHARS..MAX_CHARS characters."""
    out = []
    for f in files:
        try:
            src = f.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                seg = ast.get_source_segment(src, node, padded=True)
                if seg and MIN_CHARS <= len(seg) <= MAX_CHARS:
                    out.append(textwrap.dedent(seg))
    out = sorted(set(out))
    rng.shuffle(out)
    return out[:limit]


def shuffle_lines(code: str, rng: random.Random) -> str:
    lines = code.splitlines()
    for _ in range(10):  # a shuffle that changes nothing is not an anomaly
        rng.shuffle(lines)
        if "\n".join(lines) != code.rstrip("\n"):
            break
    return "\n".join(lines)


LEX = re.compile(r"\w+|[^\w\s]")


def replace_tokens(code: str, pool: list[str], rng: random.Random, share: float = 0.10) -> str:
    """`share` of the lexical tokens of `code` replaced by tokens drawn from `pool` (whitespace kept)."""
    spans = [m.span() for m in LEX.finditer(code)]
    chosen = set(rng.sample(range(len(spans)), max(1, round(share * len(spans)))))
    out, at = [], 0
    for i, (a, b) in enumerate(spans):
        out.append(code[at:a])
        out.append(rng.choice(pool) if i in chosen else code[a:b])
        at = b
    return "".join(out) + code[at:]


def garble_order(text: str, rng: random.Random) -> str:
    out = []
    for sent in re.split(r"(?<=[.!?])\s+", text):
        words = sent.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return " ".join(out)


def garble_chars(text: str, rng: random.Random, share: float = 0.05) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "".join(rng.choice(letters) if c.isalpha() and rng.random() < share else c for c in text)


# ---------------------------------------------------------------------------------------------------------
# scores and metrics


def zlib_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(zlib.compress(raw, 9)) / len(raw)


def zlib_dict_scorer(domain_text: str):
    zdict = domain_text.encode("utf-8")[-32768:]
    base = len(_compress(b"", zdict))

    def score(text: str) -> float:
        raw = text.encode("utf-8")
        return (len(_compress(raw, zdict)) - base) / len(raw)

    return score


def _compress(raw: bytes, zdict: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, zdict)
    return c.compress(raw) + c.flush()


def metrics(normal: np.ndarray, anomalous: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.concatenate([normal, anomalous])
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(anomalous))])
    finite = np.isfinite(s)
    s = np.where(finite, s, s[finite].max() + 1 if finite.any() else 1.0)
    return {"roc_auc": float(roc_auc_score(y, s)), "pr_auc": float(average_precision_score(y, s)),
            "tpr": float((anomalous > threshold).mean()), "n": int(len(anomalous))}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# the two tracks' data


def code_track(args, rng: random.Random, out: Path) -> tuple[Path, dict[str, list[str]], list[str], list[str], str]:
    """Train (or reuse) the default-preset stdlib model; the units of the code track."""
    from slmkit.base.config_files import load_config
    from slmkit.data.sources import stdlib_files
    from slmkit.engine.train import train
    from slmkit.runs.checkpoint import read_run_info

    files = stdlib_files()
    root = Path(os.__file__).parent
    held = set(random.Random(1).sample(range(len(files)), round(HELD_OUT_SHARE * len(files))))
    held_files = [f for i, f in enumerate(files) if i in held]
    run = Path(args.run) if args.run else out / "runs" / "stdlib-default"
    if (run / "run.json").is_file() and read_run_info(run).get("status") != "finished":
        train(resume=run, progress=False)  # an interrupted earlier start: finish its 500 steps
    elif not (run / "run.json").is_file():
        corpus = out / "corpus"
        if corpus.exists():
            shutil.rmtree(corpus)
        for i, f in enumerate(files):
            if i not in held:
                dst = corpus / f.relative_to(root)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dst)
        ov = [f"data.source={corpus}", f"train.out_dir={run.parent}", f"train.name={run.name}",
              f"train.threads={args.threads}", f"data.dir={out / 'data'}"]  # fmt: skip
        t0 = time.time()
        train(load_config("default", ov), overrides=ov, progress=False)
        print(f"trained {run} in {time.time() - t0:.0f} s")
    funcs = functions(held_files, 3 * args.per_kind + args.calib, rng)
    calib, normal, source = (
        funcs[: args.calib],
        funcs[args.calib : args.calib + args.per_kind],
        funcs[args.calib + args.per_kind :],
    )
    pool = [m.group() for f in source for m in LEX.finditer(f)]
    kinds = {
        "wikipedia": paragraphs(wiki_texts("wiki-03.parquet"), args.per_kind, rng),
        "gutenberg": gutenberg_paragraphs(args.per_kind, rng),
        "shuffled-lines": [shuffle_lines(f, rng) for f in source[: args.per_kind]],
        "tokens-replaced-10%": [replace_tokens(f, pool, rng) for f in source[: args.per_kind]],
    }
    domain = "\n\n".join(f.read_text(encoding="utf-8") for f in files[:40] if files.index(f) not in held)
    return run, kinds, calib, normal, domain


def prose_track(args, rng: random.Random, out: Path) -> tuple[Path, dict[str, list[str]], list[str], list[str], str]:
    from slmkit.data.sources import stdlib_files

    run = Path(args.run or "/work/bench/runs/wiki-4x256")
    held = wiki_texts("wiki-03.parquet")
    paras = paragraphs(held, 2 * args.per_kind + args.calib + args.per_kind, rng)
    calib, normal = paras[: args.calib], paras[args.calib : args.calib + args.per_kind]
    rest = paras[args.calib + args.per_kind :]
    half = len(rest) // 2
    kinds = {
        "gutenberg": gutenberg_paragraphs(args.per_kind, rng),
        "code": functions(stdlib_files(), args.per_kind, rng),
        "garbled-order": [garble_order(p, rng) for p in rest[:half]],
        "garbled-chars": [garble_chars(p, rng) for p in rest[half:]],
    }
    domain = "\n".join(wiki_texts("wiki-00.parquet")[:20])
    return run, kinds, calib, normal, domain


# ---------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--track", choices=("code", "prose"), required=True)
    ap.add_argument("--run", help="run to score with (code: trained when missing; prose: the shared wiki run)")
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--per-kind", type=int, default=300, help="test units per anomaly kind and normal test units")
    ap.add_argument("--calib", type=int, default=300, help="in-domain units that set the threshold")
    ap.add_argument("--fpr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", default="/tmp/bench-anomaly-tracks")
    args = ap.parse_args()

    import torch

    from slmkit.runs.checkpoint import load_model, read_state
    from slmkit.ship.anomaly import build_reference, unit_score
    from slmkit.ship.score import score_units

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir) / args.track
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    run, kinds, calib, normal, domain = (code_track if args.track == "code" else prose_track)(args, rng, out)
    model, tok, cfg, ckpt = load_model(run, args.checkpoint)
    state = read_state(ckpt)

    n_tokens, scored = 0, {}

    def slm(texts: list[str], kind: str = "bpb") -> np.ndarray:
        """The model's score of each text (scored once; both kinds come from the same pass)."""
        nonlocal n_tokens
        if id(texts) not in scored:
            scored[id(texts)] = rs = list(score_units(model, tok, texts, top_spans=0, reference=uni.loss))
            n_tokens += sum(r["tokens"] for r in rs)
        return np.array([unit_score(r, kind) for r in scored[id(texts)]], dtype=np.float64)

    uni, ref = build_reference(run, tok, "", "train")  # `slm anomaly fit --score ratio`'s unigram: the run's data
    dict_score = zlib_dict_scorer(domain)
    detectors = {"slm": slm, "slm loss": lambda ts: slm(ts, "loss"), "slm ratio": lambda ts: slm(ts, "ratio"),
                 "zlib": lambda ts: np.array([zlib_ratio(t) for t in ts]),
                 "zlib+dict": lambda ts: np.array([dict_score(t) for t in ts])}  # fmt: skip
    rows, times = {}, {}
    for name, fn in detectors.items():
        t1 = time.time()
        cal, nor = fn(calib), fn(normal)
        thr = float(np.quantile(cal, 1 - args.fpr, method="higher"))
        rows[name] = {"threshold": thr, "normal_fpr": float((nor > thr).mean()),
                      "kinds": {k: metrics(nor, fn(v), thr) for k, v in kinds.items()}}  # fmt: skip
        times[name] = time.time() - t1
    targets = list(kinds)[:2]
    by_length = {k: length_bands(normal, kinds[k], {n: detectors[n] for n in ("slm", "slm ratio", "zlib")})
                 for k in targets}  # fmt: skip
    verdict = {k: {"slm_roc_auc": rows["slm"]["kinds"][k]["roc_auc"],
                   "above_zlib": rows["slm"]["kinds"][k]["roc_auc"] > rows["zlib"]["kinds"][k]["roc_auc"],
                   "above_zlib+dict": rows["slm"]["kinds"][k]["roc_auc"] > rows["zlib+dict"]["kinds"][k]["roc_auc"],
                   "target_0.95": (rows["slm"]["kinds"][k]["roc_auc"] >= 0.95) if k in targets else None,
                   "ratio_roc_auc": rows["slm ratio"]["kinds"][k]["roc_auc"],
                   "ratio_above_zlib": rows["slm ratio"]["kinds"][k]["roc_auc"] > rows["zlib"]["kinds"][k]["roc_auc"],
                   "ratio_target_0.95": (rows["slm ratio"]["kinds"][k]["roc_auc"] >= 0.95) if k in targets else None}
               for k in kinds}  # fmt: skip
    result = {
        "track": args.track, "run": str(run), "checkpoint": str(ckpt), "step": state.get("step"),
        "val_loss": state.get("val_loss"), "model": f"{cfg.model.n_layer}x{cfg.model.n_embd}, block "
        f"{cfg.model.block_size}, {tok.name}", "params": model.num_params(), "fpr": args.fpr,
        "n_calib": len(calib), "n_normal": len(normal), "detectors": rows, "verdict": verdict, "by_length": by_length,
        "unigram_reference": {k: v for k, v in ref.items() if k != "counts"},
        "slm_tokens_per_s": n_tokens / max(times["slm"], 1e-9), "seconds": times, "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
    }  # fmt: skip
    name = f"anomaly_{args.track}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown(result, kinds, targets))
    print(markdown(result, kinds, targets))


BANDS = ((200, 500), (500, 1000), (1000, 2001))  # unit lengths in characters (MIN_CHARS..MAX_CHARS)


def length_bands(normal: list[str], anomalous: list[str], detectors: dict) -> list[dict]:
    """ROC-AUC of each detector on the units of each length band, normal and anomalous alike: how the separation
    depends on how much text a unit gives the scorer."""
    from sklearn.metrics import roc_auc_score

    scores = {n: (fn(normal), fn(anomalous)) for n, fn in detectors.items()}  # the whole lists: scored once
    len_n, len_a = np.array([len(t) for t in normal]), np.array([len(t) for t in anomalous])
    out = []
    for lo, hi in BANDS:
        nor, ano = (len_n >= lo) & (len_n < hi), (len_a >= lo) & (len_a < hi)
        row = {"chars": [lo, hi - 1], "n_normal": int(nor.sum()), "n_anomalous": int(ano.sum())}
        if nor.any() and ano.any():
            y = np.r_[np.zeros(nor.sum()), np.ones(ano.sum())]
            row.update({n: float(roc_auc_score(y, np.r_[sn[nor], sa[ano]])) for n, (sn, sa) in scores.items()})
        out.append(row)
    return out


def markdown(r: dict, kinds: dict, targets: list[str]) -> str:
    lines = [f"# Anomaly detection, {r['track']} track: model bits per byte vs zlib (target FPR {r['fpr']})", "",
             f"Model: {r['model']}, {r['params']:,} params, {r['run']} at step {r['step']} (val loss "
             f"{r['val_loss'] if r['val_loss'] is None else round(r['val_loss'], 4)}). Normal test units "
             f"{r['n_normal']}, calibration units {r['n_calib']}; scoring ran at "
             f"{r['slm_tokens_per_s']:,.0f} tokens/s on {r['threads']} threads.", "",
             "| kind | n | slm ROC-AUC | slm loss ROC-AUC | slm ratio ROC-AUC | zlib ROC-AUC | zlib+dict ROC-AUC "
             "| slm PR-AUC | slm TPR @ thr | target (slm; slm ratio) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    d = r["detectors"]
    for k in kinds:
        s, z, zd = d["slm"]["kinds"][k], d["zlib"]["kinds"][k], d["zlib+dict"]["kinds"][k]
        v = {key: "met" if ok else "MISSED" for key, ok in r["verdict"][k].items() if isinstance(ok, bool)}
        goal = f"≥0.95 {v['target_0.95']}, {v['ratio_target_0.95']}; " if k in targets else ""
        goal += f"> zlib {v['above_zlib']}, {v['ratio_above_zlib']}"
        sl, sr = (d[n]["kinds"][k]["roc_auc"] if n in d else float("nan") for n in ("slm loss", "slm ratio"))
        lines.append(f"| {k} | {s['n']} | {s['roc_auc']:.4f} | {sl:.4f} | {sr:.4f} | {z['roc_auc']:.4f} | "
                     f"{zd['roc_auc']:.4f} | {s['pr_auc']:.4f} | {s['tpr']:.3f} | {goal} |")  # fmt: skip
    lines += ["", "Test FPR at the calibrated threshold: " + ", ".join(f"{n} {d[n]['normal_fpr']:.3f}" for n in d)
              + ". zlib: compressed/raw size; zlib+dict: zlib primed with 32 KB of in-domain text (both one-class, "
              "higher = anomalous). slm: bits per byte (`slm anomaly fit`'s default score); slm loss: nats per token "
              "(`--score loss`) and slm ratio: loss minus the loss of a unigram model of the run's training tokens "
              f"(`--score ratio`, {r['unigram_reference']['tokens']:,} tokens counted), all three from the same "
              "scoring pass; the target column reads slm, then slm ratio.", ""]  # fmt: skip
    for kind, bands in r.get("by_length", {}).items():
        lines += [f"ROC-AUC of {kind} against normal units of the same length:", "",
                  f"| unit length (chars) | normal | {kind} | slm | slm ratio | zlib |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        lines += [f"| {b['chars'][0]}-{b['chars'][1]} | {b['n_normal']} | {b['n_anomalous']} | "
                  + " | ".join(f"{b[n]:.4f}" if n in b else "n/a" for n in ("slm", "slm ratio", "zlib")) + " |"
                  for b in bands]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
