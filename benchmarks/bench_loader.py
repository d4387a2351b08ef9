"""Benchmark TokenLoader.next_batch: median time of a 16x256 batch (target: under 0.2 ms).

Prepares the standard library with the gpt2 tokenizer in a temp dir (once in one shard, once in 1M-token shards so
windows cross shard boundaries) and times every mode.

    python benchmarks/bench_loader.py [--batches 5000] [--batch-size 16] [--block-size 256]

Writes benchmarks/results/loader.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--block-size", type=int, default=256)
    args = p.parse_args()
    data = Path(os.environ.get("SLM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(data / "tiktoken_cache"))

    from slmkit.data.loader import TokenLoader
    from slmkit.data.prepare import prepare

    rows = []
    with tempfile.TemporaryDirectory(prefix="slm-bench-loader-") as tmp:
        for shard_tokens in (100_000_000, 1_000_000):
            out = prepare("python-stdlib", tokenizer="gpt2", out=Path(tmp) / f"ds{shard_tokens}",
                          shard_tokens=shard_tokens, progress=False)  # fmt: skip
            for mode, align in (("random", False), ("sequential", False), ("random", True)):
                loader = TokenLoader(out, "train", args.batch_size, args.block_size, mode=mode, align_to_docs=align)
                for _ in range(100):  # warm the page cache
                    loader.next_batch()
                times = []
                for _ in range(args.batches):
                    t0 = time.perf_counter()
                    loader.next_batch()
                    times.append(time.perf_counter() - t0)
                shards = len(loader._shards)
                rows.append({"mode": mode, "align_to_docs": align, "shards": shards,
                             "median_ms": statistics.median(times) * 1e3,
                             "p99_ms": sorted(times)[int(0.99 * len(times))] * 1e3})  # fmt: skip
    worst = max(r["median_ms"] for r in rows)
    result = {"benchmark": "loader_next_batch", "batch_size": args.batch_size, "block_size": args.block_size,
              "batches": args.batches, "rows": rows, "worst_median_ms": worst, "target_ms": 0.2, "pass": worst < 0.2,
              "cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loader.json").write_text(json.dumps(result, indent=2) + "\n")
    detail = ", ".join(f"{r['mode']}{'+docs' if r['align_to_docs'] else ''}/{r['shards']} shard(s) "
                       f"{r['median_ms']:.3f}" for r in rows)  # fmt: skip
    line = (
        f"loader next_batch {args.batch_size}x{args.block_size}: median ms {detail}; worst {worst:.3f} ms "
        f"(target < 0.2 ms: {'PASS' if result['pass'] else 'FAIL'})"
    )
    (RESULTS / "loader.md").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
