"""Benchmark the live doctor: median cost of LiveDoctor.observe per training step (target: under 50 us).

Feeds a synthetic noisy loss / grad-norm stream with a few spikes, as the training loop does once per step.

    python benchmarks/bench_doctor.py [--steps 20000]

Writes benchmarks/results/doctor.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20000)
    args = p.parse_args()
    from slmkit.engine.doctor import LiveDoctor

    rng, doc, times, found = random.Random(0), LiveDoctor(grad_clip=1.0, warmup=100), [], 0
    for t in range(1, args.steps + 1):
        loss = 2 + 2 * math.exp(-t / 500) + rng.gauss(0, 0.05) + (3.0 if t % 5000 == 0 else 0.0)
        g = 0.8 * math.exp(rng.gauss(0, 0.1))
        m = {"train/loss": loss, "train/grad_norm": g, "train/clipped": int(g > 1.0), "train/lr": 1e-3}
        t0 = time.perf_counter()
        found += len(doc.observe(t, m))
        times.append(time.perf_counter() - t0)
    med, p99 = statistics.median(times) * 1e6, sorted(times)[int(0.99 * len(times))] * 1e6
    res = {"bench": "doctor", "steps": args.steps, "median_us": round(med, 2), "p99_us": round(p99, 2),
           "findings": found, "target_us": 50, "ok": med < 50, "machine": platform.machine(),
           "python": platform.python_version()}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "doctor.json").write_text(json.dumps(res, indent=2) + "\n")
    line = (f"| LiveDoctor.observe per step | median {med:.1f} us, p99 {p99:.1f} us over {args.steps} steps | "
            f"target < 50 us | {'ok' if res['ok'] else 'MISSED'} |")  # fmt: skip
    (RESULTS / "doctor.md").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
