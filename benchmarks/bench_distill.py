"""Distillation: does a small student learn more from a bigger teacher than from the text alone?

On TinyShakespeare (characters): a teacher (6 layers x 256, `--teacher-steps`) is trained first; then the student
(2 layers x 96) is trained three ways, each with `--seeds` seeds:

  alone            `--steps` steps on the text (cross-entropy only)
  distilled        the same steps and tokens, with distill.teacher (alpha 0.5, T 2)
  alone, same time as many steps as fit in the distilled runs' mean wall-clock (the teacher's forward costs time)

Reported: the final val loss (the student's plain cross-entropy, same fixed val batches for every run) as mean ±
std per arm, and the wall-clock of each. All arms run here, in one process, one after another.

    python benchmarks/bench_distill.py [--steps 1500] [--teacher-steps 2000] [--seeds 2]

Writes benchmarks/results/distill.json and distill.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from slmkit.base.config_files import load_config
from slmkit.base.metrics import read_metrics
from slmkit.engine.train import train

RESULTS = Path(__file__).resolve().parent / "results"
TEACHER = ["model.n_layer=6", "model.n_head=4", "model.n_embd=256"]
STUDENT = ["model.n_layer=2", "model.n_head=2", "model.n_embd=96"]


def run(out: Path, name: str, steps: int, seed: int, *extra: str) -> dict:
    ov = [f"train.out_dir={out}", f"train.name={name}", f"train.max_steps={steps}", f"train.seed={seed}",
          "train.eval_every=0", "train.doctor=false", "train.threads=2", *extra]  # fmt: skip
    t0 = time.perf_counter()
    run_dir = train(load_config("shakespeare-char", ov), overrides=ov, progress=False)
    seconds = time.perf_counter() - t0
    val = [e["val/loss"] for e in read_metrics(run_dir) if "val/loss" in e]
    return {"run": str(run_dir), "steps": steps, "seed": seed, "seconds": round(seconds, 1), "val_loss": val[-1]}


def summary(rows: list[dict]) -> dict:
    vals = [r["val_loss"] for r in rows]
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.mean(vals), "std": std, "seconds": statistics.mean(r["seconds"] for r in rows),
            "steps": rows[0]["steps"], "runs": rows}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500, help="student steps (alone and distilled)")
    ap.add_argument("--teacher-steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--work", default="", help="folder for the runs (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.work or tempfile.mkdtemp(prefix="distill-"))
    teacher = run(out, "teacher", args.teacher_steps, 1337, *TEACHER)
    seeds = range(1, args.seeds + 1)
    alone = summary([run(out, f"alone-{s}", args.steps, s, *STUDENT) for s in seeds])
    distilled = summary([run(out, f"distilled-{s}", args.steps, s, *STUDENT, f"distill.teacher={teacher['run']}",
                             "distill.alpha=0.5", "distill.temperature=2") for s in seeds])  # fmt: skip
    same_time_steps = round(args.steps * distilled["seconds"] / alone["seconds"])
    same_time = summary([run(out, f"alone-time-{s}", same_time_steps, s, *STUDENT) for s in seeds])
    res = {"teacher": teacher, "alone": alone, "distilled": distilled, "alone_same_time": same_time,
           "student": STUDENT, "teacher_model": TEACHER, "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distill.json").write_text(json.dumps(res, indent=1) + "\n")

    def row(name: str, r: dict) -> str:
        return f"| {name} | {r['steps']} | {r['mean']:.4f} ± {r['std']:.4f} | {r['seconds']:.0f} |"

    gain = alone["mean"] - distilled["mean"]
    gain_time = same_time["mean"] - distilled["mean"]
    lines = [
        f"# Distillation on TinyShakespeare characters ({res['date']}, 2 CPU cores)",
        "",
        f"Teacher: {' '.join(TEACHER)}, {args.teacher_steps} steps, val loss {teacher['val_loss']:.4f} "
        f"({teacher['seconds']:.0f} s). Student: {' '.join(STUDENT)}; {args.seeds} seeds an arm; val loss is the "
        "student's cross-entropy on the same val batches.",
        "",
        "| student | steps | val loss (mean ± std) | seconds per run |",
        "| --- | ---: | ---: | ---: |",
        row("alone", alone),
        row("distilled (alpha 0.5, T 2)", distilled),
        row("alone, same wall-clock as distilled", same_time),
        "",
        f"Distilled vs alone on the same tokens: {gain:+.4f} nats in the student's favour when positive; vs alone on "
        f"the same wall-clock: {gain_time:+.4f}. "
        + ("Target (lower held-out loss than alone on the same tokens and wall-clock): "
           + ("met." if gain > 0 and gain_time > 0 else "MISSED.")),
        "",
        "`python benchmarks/bench_distill.py " + f"--steps {args.steps} --teacher-steps {args.teacher_steps} "
        f"--seeds {args.seeds}`",
    ]  # fmt: skip
    (RESULTS / "distill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
