"""Distillation: does a small student learn more from a bigger teacher than from the text alone?

On TinyShakespeare (characters): a teacher (6 x 256, `--teacher-steps`) is trained first (or reused from
--work); then the student (2 layers x 96) is trained four ways, each with `--seeds` seeds:

  alone             `--steps` steps on the text (cross-entropy only)
  distilled         the same steps and tokens, the teacher running on every batch (distill.topk=0)
  distilled, cached the same steps and tokens, from the teacher's top-K logits computed once (distill.topk=K,
                    slmkit.engine.teacher_cache); the cache is built once before these runs and its time reported
  alone, same time  as many steps as fit in the cached students' mean wall-clock; and a second such arm that is
                    also given the cache's build time (as if every student paid for its own cache)

Reported: the final val loss (the student's plain cross-entropy, the same fixed val batches for every run) as mean
± std per arm, and the wall-clock of each. All arms run here, in one process, one after another.

    python benchmarks/bench_distill.py [--steps 1500] [--teacher-steps 5000] [--seeds 3] [--topk 16] [--alpha 0.2]
        [--temperature 1] [--work DIR]      # about 15 minutes on 2 cores with the teacher, 5 without

alpha 0.2 and T 1 were the best of six settings (alpha 0.5/0.2/0 x T 2/1) in a one-seed sweep on the same val batches.

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
TEACHER = ["model.n_layer=6", "model.n_head=4", "model.n_embd=256", "model.dropout=0.1"]
STUDENT = ["model.n_layer=2", "model.n_head=2", "model.n_embd=96"]


def run(out: Path, name: str, steps: int, seed: int, *extra: str, reuse: bool = False) -> dict:
    ov = [f"train.out_dir={out}", f"train.name={name}", f"train.max_steps={steps}", f"train.seed={seed}",
          "train.doctor=false", "train.threads=2", *extra]  # fmt: skip
    if not any(o.startswith("train.eval_every=") for o in extra):
        ov.append("train.eval_every=0")
    run_dir, seconds = out / name, None
    info = run_dir / "run.json"
    if not (reuse and info.is_file() and json.loads(info.read_text()).get("status") == "finished"):
        t0 = time.perf_counter()
        run_dir = train(load_config("shakespeare-char", ov), overrides=ov, progress=False)
        seconds = round(time.perf_counter() - t0, 1)
    val = [e["val/loss"] for e in read_metrics(run_dir) if "val/loss" in e]
    steps = json.loads(info.read_text()).get("step", steps)  # a reused run: the steps it was trained for
    return {"run": str(run_dir), "steps": steps, "seed": seed, "seconds": seconds, "val_loss": val[-1]}


def summary(rows: list[dict]) -> dict:
    vals = [r["val_loss"] for r in rows]
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.mean(vals), "std": std, "seconds": statistics.mean(r["seconds"] for r in rows),
            "steps": rows[0]["steps"], "runs": rows}  # fmt: skip


def build_cache(teacher_run: str, block: int, k: int) -> tuple[float, dict]:
    """Build (or find) the teacher's top-K cache over the student's training data: (seconds, its meta)."""
    from slmkit.engine.runtime import resolve_runtime
    from slmkit.engine.teacher_cache import TeacherCache, ensure_cache
    from slmkit.runs.checkpoint import load_model, read_run_info

    model, tok, _, ckpt = load_model(teacher_run)
    dataset = Path(read_run_info(teacher_run)["dataset"])
    rt = resolve_runtime(load_config("shakespeare-char", ["train.threads=2"]).train)
    t0 = time.perf_counter()
    path, built = ensure_cache(model, Path(teacher_run), ckpt, dataset, block, k, tok.vocab_size, rt.autocast,
                               progress=False)  # fmt: skip
    meta = TeacherCache.open(path).meta
    return (built if built is not None else meta["seconds"]), {**meta, "found_in": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500, help="student steps (alone and distilled)")
    ap.add_argument("--teacher-steps", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--topk", type=int, default=16, help="K of the cached arm (distill.topk)")
    ap.add_argument("--alpha", type=float, default=0.2, help="distill.alpha of both distilled arms")
    ap.add_argument("--temperature", type=float, default=1.0, help="distill.temperature of both distilled arms")
    ap.add_argument("--skip-on-the-fly", action="store_true", help="leave out the arm whose teacher runs every batch")
    ap.add_argument("--work", default="", help="folder for the runs; a finished teacher there is reused")
    args = ap.parse_args()
    out = Path(args.work or tempfile.mkdtemp(prefix="distill-"))
    teacher = run(out, "teacher", args.teacher_steps, 1337, *TEACHER, "train.eval_every=500", reuse=True)
    block = load_config("shakespeare-char").model.block_size
    cache_s, cache_meta = build_cache(teacher["run"], block, args.topk)
    seeds = range(1, args.seeds + 1)
    mix = [f"distill.teacher={teacher['run']}", f"distill.alpha={args.alpha}",
           f"distill.temperature={args.temperature}"]  # fmt: skip
    arms = {"alone": summary([run(out, f"alone-{s}", args.steps, s, *STUDENT) for s in seeds])}
    if not args.skip_on_the_fly:
        arms["distilled"] = summary([run(out, f"distilled-{s}", args.steps, s, *STUDENT, *mix) for s in seeds])
    arms["cached"] = summary([run(out, f"cached-{s}", args.steps, s, *STUDENT, *mix, f"distill.topk={args.topk}")
                              for s in seeds])  # fmt: skip
    per_step = arms["alone"]["seconds"] / args.steps
    same = round(arms["cached"]["seconds"] / per_step)
    arms["same_time"] = summary([run(out, f"alone-time-{s}", same, s, *STUDENT) for s in seeds])
    same_cache = round((arms["cached"]["seconds"] + cache_s) / per_step)
    arms["same_time_cache"] = summary([run(out, f"alone-time-cache-{s}", same_cache, s, *STUDENT) for s in seeds])
    res = {"teacher": teacher, "arms": arms, "cache_seconds": cache_s, "cache": cache_meta, "student": STUDENT,
           "teacher_model": TEACHER, "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distill.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "distill.md").write_text(markdown(res))
    print(markdown(res))


def markdown(res: dict) -> str:
    a, arms, t = res["args"], res["arms"], res["teacher"]
    names = {"alone": "alone", "distilled": f"distilled, teacher on every batch (alpha {a['alpha']:g}, T "
             f"{a['temperature']:g})", "cached": f"distilled from the cached top-{a['topk']} logits (same alpha, T)",
             "same_time": "alone, same wall-clock as the cached student",
             "same_time_cache": "alone, same wall-clock as the cached student plus the cache's build"}  # fmt: skip
    cached = arms["cached"]["mean"]
    gains = {k: arms[k]["mean"] - cached for k in ("alone", "same_time", "same_time_cache")}
    met = gains["alone"] > 0 and gains["same_time"] > 0
    teacher_s = "reused" if t["seconds"] is None else f"{t['seconds']:.0f} s"
    lines = [
        f"# Distillation on TinyShakespeare characters ({res['date']}, 2 CPU cores)",
        "",
        f"Teacher: {' '.join(res['teacher_model'])}, {t['steps']} steps, val loss {t['val_loss']:.4f} "
        f"({teacher_s}). Student: {' '.join(res['student'])}; {a['seeds']} seeds an arm; val loss is the student's "
        f"cross-entropy on the same val batches. The teacher's top-{a['topk']} cache over the "
        f"{res['cache']['rows']:,} training positions took {res['cache_seconds']:.1f} s to build, once, "
        "before the cached runs (which reuse it, as any later student of this teacher on this data would).",
        "",
        "| student | steps | val loss (mean ± std) | seconds per run |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {names[k]} | {r['steps']} | {r['mean']:.4f} ± {r['std']:.4f} | {r['seconds']:.0f} |"
          for k, r in arms.items()),
        "",
        f"Cached-distilled vs alone on the same tokens: {gains['alone']:+.4f} nats (positive: the distilled student is "
        f"better); vs alone on the same wall-clock: {gains['same_time']:+.4f}; vs alone given the cache's build time "
        f"too: {gains['same_time_cache']:+.4f}. Target (lower held-out loss than alone on the same tokens and "
        f"wall-clock): {'met' if met else 'MISSED'}"
        + ("" if gains["same_time_cache"] > 0 else " (counting the cache's build in the student's time: missed)")
        + ".",
        "",
        f"`python benchmarks/bench_distill.py --steps {a['steps']} --teacher-steps {a['teacher_steps']} --seeds "
        f"{a['seeds']} --topk {a['topk']} --alpha {a['alpha']:g} --temperature {a['temperature']:g}"
        + (" --skip-on-the-fly" if a["skip_on_the_fly"] else "") + "`",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
