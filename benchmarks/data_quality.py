"""The data-quality experiment: the same model, the same compute, a noisy web-like corpus raw vs cleaned.

    nice -n 5 .venv/bin/python benchmarks/data_quality.py [--mix crawl|light] [--budget-s 420] [--work DIR]

1. Builds a crawl-like corpus from $SLM_DATA_DIR/wikipedia (wiki-00..02) and web-sample: every article once, plus
   what crawls are full of: near-duplicate copies (a heavy-tailed number of copies of some articles, each with
   small edits), navigation / cookie-banner / footer boilerplate on most pages, gibberish, mojibake and
   replacement characters, very short pages, keyword spam. Held out: clean articles of wiki-03 (never in training).
   Two mixes (`MIXES`): `crawl` (the default) has as many junk pages as all others and near copies of 600
   articles, so cleaning keeps about half of the bytes (real pipelines keep less: RefinedWeb's stages remove nearly
   90% of the CommonCrawl documents they start from, Penedo et al. 2023, fig. 2); `light` (the first mix measured:
   junk pages 12% of the others, copies of 220 articles) keeps 77%.
2. Cleans it with `slm data clean` (default filters, exact + near dedup, decontamination against all eval tasks).
3. Trains a byte-level BPE (8192, on the clean article pool) once, prepares both corpora with it, and trains the
   same small model on each for the same number of steps (equal compute: the same tokens and FLOPs; the step
   count is set from a short speed probe so a run fits --budget-s on this machine; wall-clock is reported).
4. Evaluates both on the same held-out Wikipedia text (bits per byte) and on LAMBADA and HellaSwag.

Writes benchmarks/results/data_quality_MIX.{json,md,png}. The bulky intermediate files stay in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATA = Path(os.environ.get("SLM_DATA_DIR", ROOT.parent / "shared" / "data"))
SLM = [sys.executable, "-m", "slmkit"]
MODEL = ["model.n_layer=2", "model.n_head=4", "model.n_embd=128", "model.block_size=128", "train.batch_size=16",
         "optim.lr=2e-3", "optim.min_lr=2e-4", "optim.warmup=50", "train.eval_batches=8", "train.log_every=50",
         "data.val_fraction=0.02", "train.threads=2"]  # fmt: skip
NAV = ["Home | News | Sport | Weather | About us | Contact | Log in | Register",
       "Skip to main content  Menu  Search  Subscribe  Sign in",
       "Home > Articles > Reference > Encyclopedia",
       "Products  Solutions  Pricing  Blog  Careers  Support"]  # fmt: skip
COOKIE = ["We use cookies to give you the best experience on our website. By continuing you agree to our use of "
          "cookies. Accept all cookies | Manage preferences",
          "This site uses cookies and similar technologies to analyse traffic and personalise content. Read our "
          "Privacy Policy. OK, got it"]  # fmt: skip
FOOTER = [
    "Copyright 2015 All rights reserved. Terms of use | Privacy policy | Sitemap | Contact us",
    "Share this: Facebook Twitter Email Print   Related posts   Leave a comment",
    "Follow us on Facebook, Twitter and Instagram. Sign up for our newsletter to get the latest updates.",
]
SHORT = [
    "Page not found",
    "Click here to read more",
    "Loading...",
    "Subscribe to our newsletter",
    "Next page",
    "Posted by admin",
    "404 error: the page you requested does not exist",
    "Buy now",
    "Related articles",
]
MIXES = {"crawl": {"copied_articles": 600, "junk_share": 1.0}, "light": {"copied_articles": 220, "junk_share": 0.12}}
"""Per mix: how many articles get near copies, and junk pages as a share of the documents before junk."""
SPAM = "cheap flights best hotel deals london paris discount cheap cheap car rental free shipping casino bonus " \
       "viagra online buy now best price lowest price guaranteed top 10 reviews".split()  # fmt: skip


def run(cmd: list[str], **kw) -> None:
    print("$", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def wiki(name: str) -> list[str]:
    return pq.read_table(DATA / "wikipedia" / name, columns=["text"]).column(0).to_pylist()


def edit(text: str, rng: random.Random) -> str:
    """A near copy: ~2% of the words swapped for others of the same page, sometimes a sentence dropped."""
    words = text.split(" ")
    for _ in range(max(1, len(words) // 50)):
        words[rng.randrange(len(words))] = words[rng.randrange(len(words))]
    out = " ".join(words)
    if rng.random() < 0.5 and ". " in out:
        parts = out.split(". ")
        del parts[rng.randrange(len(parts))]
        out = ". ".join(parts)
    return out


def page(text: str, rng: random.Random) -> str:
    """Boilerplate around a text (on most pages)."""
    if rng.random() > 0.7:
        return text
    head = [rng.choice(NAV)] + ([rng.choice(COOKIE)] if rng.random() < 0.6 else [])
    return "\n".join([*head, text, rng.choice(FOOTER)])


def junk(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.25:  # gibberish
        return " ".join("".join(rng.choice("qwrtzpsdfghjklxcvbnm") for _ in range(rng.randint(2, 12)))
                        for _ in range(rng.randint(300, 800)))  # fmt: skip
    if kind < 0.5:  # keyword spam
        return "\n".join(
            " ".join(rng.choice(SPAM) for _ in range(rng.randint(8, 20))) for _ in range(rng.randint(20, 60))
        )
    if kind < 0.75:  # mojibake and replacement characters over an otherwise normal text
        words = " ".join(rng.choice(SPAM) for _ in range(400)).split()
        return " ".join(w + rng.choice(["â€™s", "Ã©", "Ã¨", "\ufffd", "Â", ""]) for w in words)
    return rng.choice(SHORT)  # a very short page


def build_corpus(work: Path, mix: str, seed: int = 0) -> dict:
    """raw.jsonl (the crawl-like corpus), pool.txt (the clean articles, for the tokenizer), heldout.txt."""
    rng = random.Random(seed)
    articles = [t for name in ("wiki-00.parquet", "wiki-01.parquet") for t in wiki(name)]
    articles = [a for a in articles if len(a) > 2000][:1400]
    web = [json.loads(line)["text"] for line in open(DATA / "web-sample" / "c4_demo.jsonl", encoding="utf-8")]
    held = [a for a in wiki("wiki-03.parquet")[-600:] if len(a) > 2000]
    heldout, size = [], 0
    for a in held:
        heldout.append(a)
        size += len(a)
        if size > 600_000:
            break
    docs, kinds = [], {"article": 0, "web": 0, "near-copy": 0, "junk": 0}
    for a in articles:
        docs.append(page(a, rng))
        kinds["article"] += 1
    for w in web:
        docs.append(page(w, rng))
        kinds["web"] += 1
    # heavy-tailed copy counts, as pages are mirrored and syndicated in crawls
    for a in rng.sample(articles, MIXES[mix]["copied_articles"]):
        for _ in range(min(40, int(rng.paretovariate(1.3)))):
            docs.append(page(edit(a, rng), rng))
            kinds["near-copy"] += 1
    for _ in range(int(MIXES[mix]["junk_share"] * len(docs))):
        docs.append(page(junk(rng), rng))
        kinds["junk"] += 1
    rng.shuffle(docs)
    with open(work / "raw.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    (work / "pool.txt").write_text("\n\n".join(articles), encoding="utf-8")
    (work / "heldout.txt").write_text("\n\n".join(heldout), encoding="utf-8")
    return {"mix": mix, "documents": len(docs), "kinds": kinds, "raw_bytes": (work / "raw.jsonl").stat().st_size,
            "heldout_bytes": (work / "heldout.txt").stat().st_size, "heldout_articles": len(heldout)}  # fmt: skip


def train_run(name: str, data_dir: Path, work: Path, steps: int, seed: int = 0) -> tuple[Path, float]:
    out = work / "runs"
    info = out / name / "run.json"
    if name != "probe" and info.is_file():  # --reuse: a run of this many steps that finished is kept
        rec = json.loads(info.read_text())
        if rec.get("status") == "finished" and rec.get("step") == steps:
            return out / name, rec["updated"] - rec["created"]
        shutil.rmtree(out / name)
    t0 = time.time()
    run([*SLM, "train", *MODEL, f"train.max_steps={steps}", f"train.eval_every={steps}", f"data.dir={data_dir}",
         f"train.out_dir={out}", *([f"train.seed={1337 + seed}"] if seed else []), "--name", name,
         "--no-progress"])  # fmt: skip
    return out / name, time.time() - t0


def probe_speed(data_dir: Path, work: Path) -> float:
    """Tokens per second of the model on this machine now (30 steps after a warm-up)."""
    run_dir, wall = train_run("probe", data_dir, work, 30)
    events = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    speeds = [e["perf/tok_per_s"] for e in events if "perf/tok_per_s" in e]
    return float(sorted(speeds)[len(speeds) // 2]) if speeds else 16 * 128 * 30 / wall


def evaluate(run_dir: Path, heldout: Path, limit: int) -> dict:
    from slmkit.engine.evaluate import evaluate_run

    val = evaluate_run(run_dir, ["val"], data=heldout, progress=False)["val"]["metrics"]
    tasks = evaluate_run(run_dir, ["lambada", "hellaswag"], limit=limit, progress=False)  # the first `limit` items
    lam, hs = tasks["lambada"]["metrics"], tasks["hellaswag"]["metrics"]
    return {
        "heldout_bpb": val["bpb"],
        "heldout_loss": val["loss"],
        "lambada_acc": lam["acc"],
        "lambada_ppl": lam.get("ppl"),
        "hellaswag_acc_norm": hs["acc_norm"],
        "hellaswag_acc": hs["acc"],
    }


def chart(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw, clean = res["raw"], res["clean"]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    items = [
        ("heldout_bpb", "held-out Wikipedia bits/byte (lower is better)"),
        ("lambada_acc", f"LAMBADA accuracy ({res['limit']} items)"),
        ("hellaswag_acc_norm", f"HellaSwag acc_norm ({res['limit']} items)"),
    ]
    for ax, (key, title) in zip(axes, items):
        vals = [raw[key], clean[key]]
        bars = ax.bar(["raw", "cleaned"], vals, color=["#c0504d", "#4f81bd"])
        ax.bar_label(bars, fmt="%.4f")
        ax.set_title(title, fontsize=9)
        lo, hi = min(vals), max(vals)
        ax.set_ylim(max(0, lo - 3 * (hi - lo + 1e-3)), hi + 2 * (hi - lo + 1e-3))
    rem = res["cleaning"]["removed"]
    top = sorted(rem.items(), key=lambda kv: -kv[1]["documents"])[:8]
    axes[3].barh([k for k, _ in top][::-1], [v["documents"] for _, v in top][::-1], color="#9bbb59")
    axes[3].set_title(f"documents removed, by rule\n(kept {res['cleaning']['documents_out']:,} of "
                      f"{res['cleaning']['documents_in']:,})", fontsize=9)  # fmt: skip
    axes[3].tick_params(axis="y", labelsize=7)
    fig.suptitle(f"Same model, same compute ({res['steps']} steps x {res['tokens_per_step']} tokens): noisy crawl-like "
                 f"corpus raw vs cleaned with slm data clean", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", choices=sorted(MIXES), default="crawl", help="how noisy the corpus is (see above)")
    ap.add_argument("--work", default=None, help="folder for corpora, datasets and runs (/tmp/slm-data-quality-MIX)")
    ap.add_argument("--budget-s", type=float, default=420, help="wall-clock budget of one training run")
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--limit", type=int, default=1000, help="LAMBADA and HellaSwag items (the first ones)")
    ap.add_argument("--probe-tok-s", type=float, default=0, help="skip the speed probe: use this speed")
    ap.add_argument("--seed", type=int, default=0, help="corpus and training seed (results named _sSEED when not 0)")
    ap.add_argument("--reuse", action="store_true", help="reuse the corpora and datasets of an earlier run in --work")
    args = ap.parse_args()
    work = Path(args.work or f"/tmp/slm-data-quality-{args.mix}")
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SLM_DATA_DIR", str(DATA))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(DATA / "tiktoken_cache"))
    t0 = time.time()
    reuse = args.reuse and (work / "corpus.json").is_file()
    prior = json.loads((work / "corpus.json").read_text()) if reuse else {}
    if reuse and (prior.get("mix", "light"), prior.get("seed", 0)) != (args.mix, args.seed):
        sys.exit(f"{work} holds another mix's or seed's corpus: pass another --work, or drop --reuse")
    if not reuse:
        shutil.rmtree(work / "runs", ignore_errors=True)
    shutil.rmtree(work / "runs" / "probe", ignore_errors=True)
    if not reuse:  # the corpus, its cleaned copy, the tokenizer and both datasets
        corpus = {**build_corpus(work, args.mix, args.seed), "seed": args.seed}
        run([*SLM, "data", "clean", work / "raw.jsonl", "--out", work / "clean", "--decontaminate", "all",
             "--overwrite", "--no-progress"])  # fmt: skip
        run([*SLM, "tokenizer", "train", work / "pool.txt", "--vocab-size", "8192", "--out", work / "tok"])
        for name, src in (("raw", work / "raw.jsonl"), ("clean", work / "clean" / "corpus.jsonl")):
            run([*SLM, "prepare", src, "--tokenizer", work / "tok", "--out", work / f"data-{name}", "--force",
                 "--val-fraction", "0.02", "--no-contamination-check"])  # fmt: skip
        (work / "corpus.json").write_text(json.dumps(corpus))
    corpus = json.loads((work / "corpus.json").read_text())
    print(json.dumps(corpus), flush=True)
    cleaning = json.loads((work / "clean" / "report.json").read_text())
    tok_s = args.probe_tok_s or probe_speed(work / "data-raw", work)
    tokens_per_step = 16 * 128
    steps = int(min(args.max_steps, 0.9 * args.budget_s * tok_s / tokens_per_step))
    res = {"corpus": corpus, "cleaning": {k: cleaning[k] for k in ("spec", "documents_in", "documents_out",
           "bytes_in", "bytes_out", "removed", "contamination")}, "probe_tok_per_s": round(tok_s),
           "steps": steps, "tokens_per_step": tokens_per_step, "limit": args.limit, "model": MODEL}  # fmt: skip
    for r in res["cleaning"]["removed"].values():
        r.pop("examples", None)
    for name in ("raw", "clean"):
        meta = json.loads((work / f"data-{name}" / "meta.json").read_text())
        run_dir, wall = train_run(name, work / f"data-{name}", work, steps, args.seed)
        res[name] = {"train_tokens_available": meta["splits"]["train"]["tokens"], "wall_s": round(wall, 1),
                     **evaluate(run_dir, work / "heldout.txt", args.limit)}  # fmt: skip
        print(name, json.dumps(res[name]), flush=True)
    raw, clean = res["raw"]["heldout_bpb"], res["clean"]["heldout_bpb"]
    res["heldout_bpb_reduction"] = round((raw - clean) / raw, 4)
    res["target_met"] = res["heldout_bpb_reduction"] >= 0.03
    res["elapsed_s"] = round(time.time() - t0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"data_quality_{args.mix}" + (f"_s{args.seed}" if args.seed else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    chart(res, RESULTS / f"{name}.png")
    (RESULTS / f"{name}.md").write_text(markdown(res, name))
    print(markdown(res, name))


def markdown(res: dict, name: str) -> str:
    r, c = res["raw"], res["clean"]
    cl = res["cleaning"]
    return "\n".join([
        "# Data quality: the same model and compute on a noisy crawl-like corpus, raw vs cleaned", "",
        f"Corpus (mix `{res['corpus'].get('mix', 'light')}`, seed {res['corpus'].get('seed', 0)}): "
        f"{res['corpus']['documents']:,} documents "
        f"({res['corpus']['raw_bytes'] / 1e6:.1f} MB jsonl): "
        f"{json.dumps(res['corpus']['kinds'])}. `slm data clean` kept {cl['documents_out']:,} of "
        f"{cl['documents_in']:,} documents ({cl['bytes_out'] / 1e6:.1f} of {cl['bytes_in'] / 1e6:.1f} MB, "
        f"{100 * cl['bytes_out'] / cl['bytes_in']:.0f}%).",
        f"Model: 2 layers x 128, block 128, BPE 8192 trained once on the article pool; {res['steps']} steps of "
        f"{res['tokens_per_step']} tokens for both runs (equal compute; steps set from a speed probe of "
        f"{res['probe_tok_per_s']:,} tok/s).", "",
        "| corpus | train tokens available | wall s | held-out bpb | LAMBADA acc | HellaSwag acc_norm |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {n} | {x['train_tokens_available']:,} | {x['wall_s']} | {x['heldout_bpb']:.4f} | "
          f"{x['lambada_acc']:.4f} | {x['hellaswag_acc_norm']:.4f} |" for n, x in (("raw", r), ("cleaned", c))),
        "", f"Held-out bits per byte: {100 * res['heldout_bpb_reduction']:.1f}% lower after cleaning (target >= 3%: "
        f"{'met' if res['target_met'] else 'missed'}). LAMBADA and HellaSwag on their first {res['limit']} items.",
        "", f"![raw vs cleaned]({name}.png)", ""])  # fmt: skip


if __name__ == "__main__":
    main()
