"""The default runs after the speedrun (issue 22), measured against what they replace, alternating in one run.

- default: `slm train` with no arguments (today's preset, train.dtype=auto) vs the previous default recipe (4 x 128,
  batch 16, 500 steps, fp32): val loss, wall-clock from process start to exit, and a greedy sample of each;
  target: val <= 3.95 in no more wall-clock than the previous default (which reached about 4.27).
- shakespeare-char: training tokens/s of `slm train shakespeare-char` with default settings vs nanoGPT's documented
  CPU recipe (`python train.py config/train_shakespeare_char.py --device=cpu --compile=False ...`, the same model,
  batch and steps) run from a nanoGPT checkout given with `--nanogpt DIR` (its data/shakespeare_char prepared);
  both the median step time over the same steps, evaluations excluded; target: >= 1.5x.
- compile: `slm train shakespeare-char` (2000 steps) eager vs train.compile=true with a cold and a warm inductor cache:
  wall-clock from process start to exit and the steady-state step time (whether torch.compile pays here).
- quality: the quality bars the new defaults must keep: `slm train shakespeare-char` val <= 1.89 and
  `slm train shakespeare-char-modern` val <= 1.62, at 2000 steps with default settings.

    python benchmarks/bench_defaults.py [--rounds 2] [--nanogpt DIR] [--only default,shakespeare]

Writes benchmarks/results/defaults.json and defaults.md (with --tag T: defaults_T.*, so a partial run such as
`--only default --tag default` does not replace the full table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slmkit.base.metrics import read_metrics

RESULTS = Path(__file__).resolve().parent / "results"
PREVIOUS_DEFAULT = ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=128",
                    "optim.lr=3e-3", "optim.min_lr=3e-4", "optim.warmup=50", "train.max_steps=500",
                    "train.batch_size=16", "train.eval_every=100", "train.dtype=fp32"]  # fmt: skip
PROMPT = "def read_config(path):\n"
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                "--lr_decay_iters=2000", "--dropout=0.0", "--always_save_checkpoint=False"]  # fmt: skip


def slm(*args: str) -> tuple[float, str]:
    """Run `slm ARGS` in a fresh process: (seconds from start to exit, output)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "slmkit", *args], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"slm {' '.join(args)} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return time.perf_counter() - t0, p.stdout + p.stderr


def default_run(out: Path, name: str, overrides: list[str]) -> dict:
    run = out / name
    seconds, log = slm("train", *overrides, f"train.out_dir={out}", "--name", name, "--no-progress")
    m = read_metrics(run)
    _, sample = slm("sample", str(run), "--prompt", PROMPT, "--max-new-tokens", "80", "--temperature", "0")
    dtype = (re.findall(r"runtime: .*? dtype=(\w+)", log) or ["?"])[0]
    return {"name": name, "seconds": round(seconds, 1), "val": [e["val/loss"] for e in m if "val/loss" in e][-1],
            "steps": max(e["step"] for e in m), "tokens": max(e.get("train/tokens", 0) for e in m), "dtype": dtype,
            "sample": sample.strip()[-600:]}  # fmt: skip


def shakespeare_slm(out: Path, name: str, steps: int, *extra: str) -> float:
    """Median wall-clock ms per training step of `slm train shakespeare-char` with default settings (between the
    metrics lines of consecutive steps: data, step, logging, everything nanoGPT's `time` covers too), evals excluded."""
    slm("train", "shakespeare-char", f"train.max_steps={steps}", f"train.out_dir={out}", "--name", name,
        "--no-progress", *extra)  # fmt: skip
    events = read_metrics(out / name)
    times = {e["step"]: e["time"] for e in events if "perf/step_ms" in e}  # logged at each step's end
    evals = {e["step"] for e in events if "val/loss" in e}  # the step after an eval would include it
    return statistics.median(1000 * (t - times[s - 1]) for s, t in times.items()
                             if s > 20 and s - 1 in times and s - 1 not in evals)  # fmt: skip


def shakespeare_nanogpt(nanogpt: Path, out: Path, steps: int) -> float:
    """Median ms per iteration that nanoGPT prints (`iter N: loss X, time Y ms`), iteration 0 and evals excluded."""
    args = [*NANOGPT_ARGS, f"--max_iters={steps}", f"--eval_interval={steps}", f"--out_dir={out}"]
    p = subprocess.run([sys.executable, "train.py", *args], cwd=nanogpt, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"nanoGPT failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    times = [(int(i), float(ms)) for i, ms in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", p.stdout)]
    return statistics.median(ms for i, ms in times if 0 < i < steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (each arm once per round)")
    ap.add_argument("--only", default="default,shakespeare,compile,quality")
    ap.add_argument("--nanogpt", default="", help="a nanoGPT checkout with data/shakespeare_char prepared")
    ap.add_argument("--steps", type=int, default=500, help="shakespeare-char steps per timed run")
    ap.add_argument("--tag", default="", help="results go to defaults_TAG.* (a partial run beside the full table)")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="defaults-"))
    res: dict = {"cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    lines = [f"# The default runs vs what they replace ({res['date']}, {os.cpu_count()} CPU cores)", ""]
    if "default" in args.only:
        arms: dict[str, list] = {"previous": [], "new": []}
        for r in range(args.rounds):
            arms["previous"].append(default_run(out, f"previous-{r}", PREVIOUS_DEFAULT))
            arms["new"].append(default_run(out, f"new-{r}", []))
        res["default"] = arms
        lines += ["## `slm train` (python-stdlib)", "", "| default | rounds | val loss | wall-clock s (process) |",
                  "|---|---|---|---|"]  # fmt: skip
        for arm, rows in arms.items():
            lines.append(f"| {arm} | {len(rows)} | {statistics.mean(r['val'] for r in rows):.4f} "
                         f"({', '.join(format(r['val'], '.3f') for r in rows)}) | "
                         f"{statistics.mean(r['seconds'] for r in rows):.1f} |")  # fmt: skip
        for arm, rows in arms.items():
            lines += ["", f"greedy sample, {arm} (`{PROMPT.strip()}`):", "", "```", rows[-1]["sample"], "```"]
        lines.append("")
    if "shakespeare" in args.only:
        if not args.nanogpt:
            raise SystemExit("--nanogpt DIR is needed for the shakespeare-char comparison")
        ms: dict[str, list] = {"slmkit": [], "nanoGPT": []}
        for r in range(args.rounds):
            ms["nanoGPT"].append(shakespeare_nanogpt(Path(args.nanogpt).resolve(), out / f"nanogpt-{r}", args.steps))
            ms["slmkit"].append(shakespeare_slm(out, f"shakespeare-{r}", args.steps))
        tok = {k: 12 * 64 * 1000 / statistics.median(v) for k, v in ms.items()}
        res["shakespeare"] = {"step_ms": ms, "tok_per_s": tok, "ratio": tok["slmkit"] / tok["nanoGPT"]}
        lines += ["## shakespeare-char throughput (4 x 128, batch 12 x 64)", "", "| trainer | median step ms per round "
                  "| tokens/s |", "|---|---|---|"]  # fmt: skip
        for k, v in ms.items():
            lines.append(f"| {k} | {', '.join(f'{x:.1f}' for x in v)} | {tok[k]:,.0f} |")
        lines += ["", f"slmkit / nanoGPT: {res['shakespeare']['ratio']:.2f}x (target >= 1.5x)", ""]
    if "compile" in args.only:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(out / "inductor")  # cold for the first compiled run
        rows = []
        for label, extra in (("eager", ()), ("compiled, cold cache", ("train.compile=true",)),
                             ("compiled, warm cache", ("train.compile=true",))):  # fmt: skip
            t0 = time.perf_counter()
            name = label.replace(" ", "").replace(",", "-")
            ms = shakespeare_slm(out, name, 2000, *extra)
            val = [e["val/loss"] for e in read_metrics(out / name) if "val/loss" in e]
            rows.append({"run": label, "wall_s": round(time.perf_counter() - t0, 1), "step_ms": round(ms, 2),
                         "val": val[-1]})  # fmt: skip
        res["compile"] = rows
        lines += ["## torch.compile on shakespeare-char (2000 steps, defaults otherwise)", "",
                  "| run | wall-clock s | steady-state ms/step | val loss |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['run']} | {r['wall_s']} | {r['step_ms']} | {r['val']:.4f} |" for r in rows] + [""]
    if "quality" in args.only:
        bars = {"shakespeare-char": 1.89, "shakespeare-char-modern": 1.62}
        res["quality"] = {}
        lines += ["## Quality bars (2000 steps, default settings)", "", "| preset | val loss | bar |", "|---|---|---|"]
        for preset, bar in bars.items():
            slm("train", preset, f"train.out_dir={out}", "--name", f"q-{preset}", "--no-progress")
            val = [e["val/loss"] for e in read_metrics(out / f"q-{preset}") if "val/loss" in e][-1]
            res["quality"][preset] = val
            lines.append(f"| {preset} | {val:.4f} | <= {bar} ({'met' if val <= bar else 'MISSED'}) |")
        lines.append("")
    RESULTS.mkdir(exist_ok=True)
    name = f"defaults_{args.tag}" if args.tag else "defaults"
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
