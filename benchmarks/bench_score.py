"""Throughput of `slm score` (`ship.score.score_source`) on the default model (4 x 128, block 128, bpe:4096) on
2 CPU threads. Target: >= 20k tokens/s.

Input: the held-out stdlib modules of the code anomaly track (a folder of .py files, unit=doc, default stride and
top spans), so the figure is the whole verb: reading, tokenizing, the forward passes, per-token surprisal, character
offsets of the top spans and the JSON records. Also measured in the same run: the forward passes alone
(`token_nlls`, the floor the rest adds to), and the verb with other window batch sizes and in bf16.

    nice -n 5 python benchmarks/bench_score.py [--run RUN] [--threads 2] [--repeat 3]

The default RUN is the code track's model (benchmarks/bench_anomaly_tracks.py --track code trains it).
Writes benchmarks/results/score.json and score.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="/tmp/bench-anomaly-tracks/code/runs/stdlib-default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes per setting (the best is reported)")
    ap.add_argument("--files", type=int, default=60, help="held-out stdlib modules to score")
    ap.add_argument("--out-dir", default="/tmp/bench-score")
    args = ap.parse_args()

    import numpy as np
    import torch

    from slmkit.data.sources import stdlib_files
    from slmkit.engine.evaluate.loss import token_nlls
    from slmkit.runs.checkpoint import load_model
    from slmkit.ship import score as score_mod

    torch.set_num_threads(args.threads)
    files = stdlib_files()
    held = sorted(random.Random(1).sample(range(len(files)), round(0.08 * len(files))))  # the code track's
    folder = Path(args.out_dir) / "input"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i in held[: args.files]:
        shutil.copyfile(files[i], folder / f"{i:04d}_{files[i].name}")
    model, tok, cfg, _ = load_model(args.run)
    docs = [np.asarray(tok.encode(p.read_text(encoding="utf-8")), np.int64) for p in sorted(folder.iterdir())]
    n_pred = sum(len(d) - 1 for d in docs)

    def best(fn) -> float:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    default_batch = score_mod.batch_windows(cfg.model.block_size)

    def verb(batch: int | None = None, m=model) -> None:
        for _ in score_mod.score_source(m, tok, folder, unit="doc", batch_size=batch):
            pass

    rows = {}
    verb()  # warm-up
    rows["slm score (verb, default)"] = n_pred / best(verb)
    rows["forward passes only (token_nlls)"] = n_pred / best(lambda: token_nlls(model, docs, 0, default_batch))
    for b in (8, 16, 64):
        rows[f"verb, {b} windows a batch"] = n_pred / best(lambda b=b: verb(b))
    bf16 = load_model(args.run)[0].to(torch.bfloat16)
    verb(m=bf16)
    rows["verb, bf16 weights"] = n_pred / best(lambda: verb(m=bf16))
    result = {"run": args.run, "model": f"{cfg.model.n_layer}x{cfg.model.n_embd}, block {cfg.model.block_size}, "
              f"{tok.name}", "params": model.num_params(), "files": len(docs), "predicted_tokens": n_pred,
              "threads": args.threads, "tokens_per_s": rows, "target": 20_000,
              "default_batch": default_batch, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count()}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "score.json").write_text(json.dumps(result, indent=2))
    head = rows["slm score (verb, default)"]
    lines = [f"# `slm score` throughput: {result['model']}, {args.threads} threads (target 20,000 tokens/s)", "",
             f"{len(docs)} held-out stdlib modules, {n_pred:,} predicted tokens, unit=doc; best of {args.repeat}.", "",
             f"Default batch: {default_batch} windows ({score_mod.BATCH_TOKENS} tokens). Load average during the "
             f"run: {os.getloadavg()[0]:.1f} (the machine is shared).", "",
             "| setting | tokens/s |", "| --- | --- |"]  # fmt: skip
    lines += [f"| {k} | {v:,.0f} |" for k, v in rows.items()]
    lines += ["", f"Default: {head:,.0f} tokens/s, target {'met' if head >= 20_000 else 'MISSED'}.", ""]
    (RESULTS / "score.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
