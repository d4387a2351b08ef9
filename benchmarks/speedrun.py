"""The CPU speedrun track (issue 22): wall-clock time from process start to a target val loss on held-out Wikipedia.

The track, fixed so that rows compare:
- data: `$SLM_DATA_DIR/wikipedia/wiki-0[0-2].parquet` (12 M words of articles), split by document with a seeded draw
  (`val_fraction` 0.005, seed 1337: the same held-out articles in every run); a byte-level BPE tokenizer of 8,192
  tokens trained on the training articles only; prepared once into `WORK/data` (not timed: every recipe shares it);
- machine: this one, 2 CPU cores, one run at a time (nothing else running);
- metric: seconds from the `slm train` process start to the first evaluation (every ~1/30 of the run, 40 fixed
  val batches) at or below the target;
- target: the val loss the baseline reaches at the end of its budget (`--minutes`, 30 by default).

The baseline is the GPT-2 recipe (learned positions, LayerNorm, GELU, biases, AdamW, cosine, fp32). A recipe's
steps are set from its measured step time so that its cosine schedule ends at its horizon: a 25-step probe run
times the steps first (not counted; the same for every recipe). Each recipe is one row of `docs/speedrun.md`.

    python benchmarks/speedrun.py --work DIR [--minutes 30] [--recipes baseline,bf16,...] [--seeds 1]
        [--baseline RECIPE] [--horizon FRACTION] [--tag TAG [--extend]]

The record table of docs/speedrun.md: the LR-tuned baseline (`--recipes baseline-lr4e-3 --baseline baseline-lr4e-3
--tag tuned_record`), then the records against it (`--recipes modern-lr4e-3,... --baseline baseline-lr4e-3 --horizon
0.5 --tag tuned_record --extend`).

Writes benchmarks/results/speedrun.json, speedrun.md and speedrun.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from slmkit.base.metrics import read_metrics

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("SLM_DATA_DIR", "../shared/data")) / "wikipedia"
SOURCE = str(DATA / "wiki-0[0-2].parquet")
VAL_FRACTION, SEED, VOCAB = 0.005, 1337, 8192
EVALS_PER_RUN, EVAL_BATCHES = 30, 40

# The GPT-2 recipe at the size compute-optimal for the budget: 30 minutes at ~200 GFLOP/s (47% of this CPU's fp32
# matmul peak) is C ~ 3.6e14 FLOPs; Chinchilla's D ~ 20 N gives N = sqrt(C / 120) ~ 1.7 M parameters: 4 x 192
# (1.77 M non-embedding), batch 16 x 256, LR 1e-3 (nanoGPT's for models this small). An LR sweep at a short horizon
# is `--recipes baseline,baseline-lr2e-3,baseline-lr4e-3 --minutes 3 --tag lr` (results/speedrun_lr.md: 4e-3 best).
GPT2 = ["model.n_layer=4", "model.n_head=4", "model.n_embd=192", "model.block_size=256", "model.pos_emb=learned",
        "model.norm=layernorm", "model.mlp=gelu", "model.bias=true", "model.tie_embeddings=true", "optim.name=adamw",
        "optim.lr=1e-3", "optim.min_lr=1e-4", "optim.warmup=100", "optim.schedule=cosine", "optim.weight_decay=0.1",
        "train.batch_size=16", "train.dtype=fp32"]  # fmt: skip


def _lr(lr: float) -> list[str]:
    return [f"optim.lr={lr:g}", f"optim.min_lr={lr / 10:g}"]


# Each record: (what changed, overrides on top of the baseline, horizon as a fraction of the baseline's budget).
RECIPES: dict[str, tuple[str, list[str], float]] = {
    "baseline": ("GPT-2 recipe, fp32 (the target's source)", [], 1.0),
    "baseline-lr2e-3": ("baseline, LR 2e-3", _lr(2e-3), 1.0),
    "baseline-lr4e-3": ("baseline, LR 4e-3", _lr(4e-3), 1.0),
    "bf16": ("bf16 autocast (train.dtype=auto here) and the erf GELU (4x faster than the tanh form on a CPU)",
             ["train.dtype=bf16", "model.mlp=gelu_exact"], 0.5),
    "modern": ("bf16, modern block: RoPE, RMSNorm, SwiGLU, no biases",
               ["train.dtype=bf16", "model.pos_emb=rope", "model.norm=rmsnorm", "model.mlp=swiglu", "model.bias=false"],
               0.5),
    "modern-lr2e-3": ("modern, LR 2e-3",
                      ["train.dtype=bf16", "model.pos_emb=rope", "model.norm=rmsnorm", "model.mlp=swiglu",
                       "model.bias=false", *_lr(2e-3)], 0.5),
    "modern-lr4e-3": ("modern, LR 4e-3 (the baseline's tuned LR)",
                      ["train.dtype=bf16", "model.pos_emb=rope", "model.norm=rmsnorm", "model.mlp=swiglu",
                       "model.bias=false", *_lr(4e-3)], 0.5),
}  # fmt: skip


def slm(*args: str, log: Path | None = None) -> float:
    """Run `slm ARGS` in a fresh process; returns its start time (time.time())."""
    start = time.time()
    with open(log, "w") if log else open(os.devnull, "w") as out:
        code = subprocess.call([sys.executable, "-m", "slmkit", *args], stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"slm {' '.join(args[:2])} failed (exit {code}); see {log}")
    return start


def prepare_track(work: Path) -> Path:
    """The tokenizer (trained on the training articles only) and the prepared dataset; made once per WORK."""
    from slmkit.base.tokenizer import train_bpe
    from slmkit.data.prepare import assign_splits, prepare
    from slmkit.data.sources import iter_documents

    tok_dir, data_dir = work / "tokenizer", work / "data"
    if not (tok_dir / "tokenizer.json").exists() and not any(tok_dir.glob("*")):
        pieces = assign_splits(iter_documents(SOURCE), VAL_FRACTION, SEED)
        train_bpe((d.text for d, split in pieces if split == "train"), VOCAB).save(tok_dir)
    prepare(SOURCE, tokenizer=str(tok_dir), out=data_dir, val_fraction=VAL_FRACTION, seed=SEED, progress=False)
    return data_dir


def run_recipe(work: Path, data: Path, name: str, seed: int, horizon_s: float) -> dict:
    """Probe the step time, then train for `horizon_s` of steps; returns the run's (seconds since start, val) points."""
    what, extra, _ = RECIPES[name]
    base = [*GPT2, *extra, f"data.dir={data}", f"train.out_dir={work / 'runs'}", f"train.seed={seed}",
            "train.threads=2", "train.doctor=false", "train.keep_last=1", "train.log_every=50"]  # fmt: skip
    probe = f"{name}-probe"
    shutil.rmtree(work / "runs" / probe, ignore_errors=True)
    slm("train", "default", *base, "train.max_steps=25", "train.eval_every=0", "train.eval_batches=1",
        "--no-progress", "--name", probe, log=work / f"{probe}.log")  # fmt: skip
    ms = [e["perf/step_ms"] for e in read_metrics(work / "runs" / probe) if "perf/step_ms" in e][5:]
    step_s = statistics.median(ms) / 1000
    steps = max(50, int(horizon_s / step_s * 0.97))  # evals take ~3% of the time
    run = f"{name}-s{seed}"
    shutil.rmtree(work / "runs" / run, ignore_errors=True)
    every = max(1, steps // EVALS_PER_RUN)
    args = [*base, f"train.max_steps={steps}", f"train.eval_every={every}", f"train.eval_batches={EVAL_BATCHES}"]
    start = slm("train", "default", *args, "--no-progress", "--name", run, log=work / f"{run}.log")
    points = [(e["time"] - start, e["val/loss"]) for e in read_metrics(work / "runs" / run) if "val/loss" in e]
    return {"recipe": name, "what": what, "seed": seed, "steps": steps, "probe_step_ms": round(1000 * step_s, 1),
            "tok_per_s": round(16 * 256 / step_s), "points": points, "final_val": points[-1][1],
            "wall_s": round(points[-1][0], 1)}  # fmt: skip


def time_to(points: list, target: float) -> float | None:
    return next((round(t, 1) for t, v in points if v <= target), None)


def seed_table(rows: list[dict], target: float) -> list[str]:
    """With several seeds: each recipe's final val (mean +- std) against the first seeded recipe's, Welch 95% CI and
    verdict (slm ablate's statistics): whether a record's gain is more than seed noise; and its time to the target
    over seeds."""
    from slmkit.base.stats import compare, mean_std

    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["recipe"], []).append(r)
    if max(len(v) for v in by.values()) < 2:
        return []
    ref = next(name for name, runs in by.items() if len(runs) > 1)  # the first recipe with seeds to compare against
    lines = ["", f"Seed noise: final val loss over seeds, each recipe against {ref} (Welch 95% CI of the delta), "
             f"and the time to the target {target:.4f} over seeds", "",
             "| recipe | seeds | final val | delta | 95% CI | verdict | time to target | reached |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, runs in by.items():
        vals = [r["final_val"] for r in runs]
        times = [t / 60 for r in runs if (t := time_to(r["points"], target)) is not None]
        m, sd = mean_std(vals)
        tm, tsd = mean_std(times)
        when = f"{tm:.1f} +- {tsd:.1f} min" if times else "-"
        reached = f"{len(times)} of {len(runs)}"
        if name == ref:
            lines.append(f"| {name} | {len(vals)} | {m:.4f} +- {sd:.4f} | - | - | reference | {when} | {reached} |")
            continue
        c = compare([r["final_val"] for r in by[ref]], vals)
        lines.append(f"| {name} | {len(vals)} | {m:.4f} +- {sd:.4f} | {c.delta:+.4f} | [{c.ci_low:+.4f}, "
                     f"{c.ci_high:+.4f}] | {c.verdict} | {when} | {reached} |")  # fmt: skip
    return lines


def report(rows: list[dict], target: float, minutes: float, tag: str = "", baseline: str = "baseline") -> None:
    RESULTS.mkdir(exist_ok=True)
    budget_s = 60 * minutes  # speed-ups are against the budget, in which the baseline reaches the target by definition
    lines = [f"# CPU speedrun: held-out Wikipedia, BPE 8192, {os.cpu_count()} CPU cores", "",
             f"target val loss {target:.4f} (the baseline's at its {minutes:g}-minute end; baseline: {baseline})", "",
             "| recipe | what changed | seed | steps | tok/s | final val | time to target | vs the budget "
             "| the baseline's time to this final val |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    base = next((r for r in rows if r["recipe"] == baseline), None)
    for r in rows:
        t = time_to(r["points"], target)
        r["time_to_target_s"] = t
        speed = f"{budget_s / t:.2f}x" if t else "-"
        # a record that stops short of the target: how long the baseline took to reach the loss it did reach
        same = time_to(base["points"], r["final_val"]) if base and r is not base else None
        equal = f"{same / 60:.1f} min ({same / r['wall_s']:.2f}x)" if same else "-"
        lines.append(f"| {r['recipe']} | {r['what']} | {r['seed']} | {r['steps']} | {r['tok_per_s']:,} | "
                     f"{r['final_val']:.4f} | {f'{t / 60:.1f} min' if t else 'not reached'} | {speed} | "
                     f"{equal} |")  # fmt: skip
    lines += seed_table(rows, target)
    (RESULTS / f"speedrun{tag}.md").write_text("\n".join(lines) + "\n")
    info = {"target": target, "minutes": minutes, "baseline": baseline, "rows": rows}
    (RESULTS / f"speedrun{tag}.json").write_text(json.dumps(info, indent=1))
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        ax.plot(
            [t / 60 for t, _ in r["points"][1:]], [v for _, v in r["points"][1:]], label=f"{r['recipe']} s{r['seed']}"
        )
    ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:.3f}")
    ax.set(xlabel="wall-clock minutes from process start", ylabel="val loss", title="CPU speedrun (2 cores)")
    ax.set_ylim(target - 0.4, target + 1.6)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"speedrun{tag}.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="", help="folder for the tokenizer, dataset and runs (kept between calls)")
    ap.add_argument("--minutes", type=float, default=30.0, help="the baseline's budget (default 30)")
    ap.add_argument("--recipes", default="baseline,modern", help=f"comma-separated, of {','.join(RECIPES)}")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per recipe, runs alternating between recipes")
    ap.add_argument("--first-seed", type=int, default=SEED, help=f"seeds run from this one up (default {SEED})")
    ap.add_argument(
        "--extend",
        action="store_true",
        help="add this call's rows to speedrun[_TAG].json (more seeds or recipes against a baseline already run)",
    )
    ap.add_argument(
        "--horizon",
        type=float,
        default=0.0,
        help="records' horizon as a fraction of --minutes (default: each recipe's own)",
    )
    ap.add_argument(
        "--baseline",
        default="baseline",
        help="the recipe whose final val (mean over seeds) is the target; it runs the whole budget (default baseline)",
    )
    ap.add_argument("--tag", default="", help="results go to speedrun_TAG.* (a sweep beside the main table)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the table and plot from speedrun[_TAG].json")
    ap.add_argument("--target", type=float, default=0.0, help="use this target instead of the baseline's final val")
    args = ap.parse_args()
    tag = f"_{args.tag}" if args.tag else ""
    if args.report_only:
        info = json.loads((RESULTS / f"speedrun{tag}.json").read_text())
        target = args.target or info["target"]
        return report(info["rows"], target, info["minutes"], tag, info.get("baseline", "baseline"))
    if not args.work:
        raise SystemExit("--work DIR is needed (the tokenizer, dataset and runs go there)")
    work = Path(args.work).resolve()
    names = args.recipes.split(",")
    if unknown := [n for n in names if n not in RECIPES]:
        raise SystemExit(f"unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}")
    if args.baseline not in RECIPES:
        raise SystemExit(f"unknown --baseline {args.baseline!r}; known: {', '.join(RECIPES)}")
    table = RESULTS / f"speedrun{tag}.json"
    if args.extend and not table.is_file():
        raise SystemExit(f"--extend: {table} does not exist yet; run the baseline with the same --tag first")
    rows = json.loads(table.read_text())["rows"] if args.extend else []
    if not args.target and args.baseline not in names + [r["recipe"] for r in rows]:
        raise SystemExit(f"without the baseline ({args.baseline}) in --recipes or the extended table, pass --target "
                         "(its final val loss)")  # fmt: skip
    data = prepare_track(work)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in names:  # alternating: baseline, records, baseline, records, ...
            frac = 1.0 if name == args.baseline else args.horizon or RECIPES[name][2]
            rows.append(run_recipe(work, data, name, seed, 60 * args.minutes * frac))
            print(
                f"{name} seed {seed}: final val {rows[-1]['final_val']:.4f} in {rows[-1]['wall_s']:.0f} s", flush=True
            )
    base = [r["final_val"] for r in rows if r["recipe"] == args.baseline]
    report(rows, args.target or statistics.mean(base), args.minutes, tag, args.baseline)


if __name__ == "__main__":
    main()
