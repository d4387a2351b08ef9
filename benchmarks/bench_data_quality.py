"""Speed and memory of the data-quality tools against the issue's targets, with datasketch's own index as baseline.

    nice -n 5 .venv/bin/python benchmarks/bench_data_quality.py [--near-mb 40] [--stats-mb 200] [--rss-mb 1000]

- near-dedup throughput (target >= 5 MB/s on 2 cores): `Cleaner` with dedup=near and 2 worker processes over
  Wikipedia articles; the baseline is the same signatures inserted into datasketch's MinHashLSH (index memory).
- stats time (target <= 120 s for 200 MB): `corpus_stats` over the Wikipedia parquet files (gpt2 token counts).
- peak RSS (target <= 2 GiB on 1 GB): `slm data clean --dedup exact,near --filters boilerplate,short,encoding` on a
  synthetic crawl (articles repeated with small edits) of --rss-mb, all processes of the tree summed, sampled.

Writes benchmarks/results/data_quality_speed.{json,md}. The machine is shared: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from slmkit.data.quality.clean import Cleaner, CleanSpec
from slmkit.data.quality.dedup import NUM_PERM, signatures
from slmkit.data.quality.stats import corpus_stats
from slmkit.data.sources import Document

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SLM_DATA_DIR", ROOT.parent / "shared" / "data"))
WIKI = sorted((DATA / "wikipedia").glob("wiki-*.parquet"))


def articles(mb: float) -> list[str]:
    out, size = [], 0
    for path in WIKI:
        for t in pq.read_table(path, columns=["text"]).column(0).to_pylist():
            out.append(t)
            size += len(t.encode())
            if size >= mb * 1e6:
                return out
    return out


def bench_near(mb: float) -> dict:
    docs = articles(mb)
    size = sum(len(t.encode()) for t in docs) / 1e6
    t0 = time.perf_counter()
    cleaner = Cleaner(CleanSpec(dedup=("near",)), workers=2)
    kept = sum(1 for _ in cleaner.run(Document(t, "wiki") for t in docs))
    wall = time.perf_counter() - t0
    from datasketch import MinHash, MinHashLSH

    sigs = [s for s in signatures(docs[:3000]) if s is not None]
    rss0 = psutil.Process().memory_info().rss
    lsh = MinHashLSH(threshold=0.8, num_perm=NUM_PERM)
    for i, s in enumerate(sigs):
        lsh.insert(i, MinHash(hashvalues=s, scheme="affine32"), check_duplication=False)
    per_doc_lsh = (psutil.Process().memory_info().rss - rss0) / max(1, len(sigs))
    return {"mb": round(size, 1), "documents": len(docs), "kept": kept, "seconds": round(wall, 1),
            "mb_per_s": round(size / wall, 2), "target_mb_per_s": 5, "met": size / wall >= 5,
            "datasketch_lsh_bytes_per_doc": round(per_doc_lsh)}  # fmt: skip


def bench_stats(mb: float) -> dict:
    t0 = time.perf_counter()
    stats = corpus_stats([str(DATA / "wikipedia")], tokenizer="gpt2", max_bytes=int(mb * 1e6), progress=False,
                         workers=2)  # fmt: skip
    wall = time.perf_counter() - t0
    s = next(iter(stats["sources"].values()))
    return {"mb": round(s["bytes"] / 1e6, 1), "documents": s["documents"], "tokens": s.get("tokens"),
            "seconds": round(wall, 1), "target_s_for_200mb": 120,
            "seconds_scaled_to_200mb": round(wall * 200 / max(1e-9, s["bytes"] / 1e6), 1),
            "met": wall * 200 / max(1e-9, s["bytes"] / 1e6) <= 120}  # fmt: skip


def synthetic_crawl(path: Path, mb: float) -> float:
    rng = random.Random(0)
    base = articles(min(mb, 200))
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        while size < mb * 1e6:
            t = rng.choice(base)
            if rng.random() < 0.5:
                words = t.split(" ")
                words[rng.randrange(len(words))] = "edit"
                t = " ".join(words)
            line = json.dumps({"text": "Home | About | Contact\n" + t}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode())
    return size / 1e6


def bench_rss(mb: float, work: Path) -> dict:
    src = work / "crawl.jsonl"
    size = synthetic_crawl(src, mb)
    cmd = [sys.executable, "-m", "slmkit", "data", "clean", str(src), "--out", str(work / "crawl-clean"),
           "--dedup", "exact,near", "--filters", "boilerplate,short,encoding", "--no-contamination-check",
           "--overwrite", "--no-progress", "--workers", "2"]  # fmt: skip
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, cwd=ROOT)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    src.unlink()
    return {"mb": round(size, 1), "seconds": round(wall, 1), "exit": proc.returncode,
            "peak_rss_mib": round(peak / 2**20), "target_mib": 2048, "met": peak <= 2 * 2**30}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--near-mb", type=float, default=40)
    ap.add_argument("--stats-mb", type=float, default=200)
    ap.add_argument("--rss-mb", type=float, default=1000)
    ap.add_argument("--work", default="/tmp/slm-bench-data-quality")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res = {"load_average_before": os.getloadavg()[0], "cpus": os.cpu_count()}
    res["near_dedup"] = bench_near(args.near_mb)
    print(json.dumps(res["near_dedup"]), flush=True)
    res["stats"] = bench_stats(args.stats_mb)
    print(json.dumps(res["stats"]), flush=True)
    if args.rss_mb:
        res["peak_rss"] = bench_rss(args.rss_mb, work)
        print(json.dumps(res["peak_rss"]), flush=True)
    res["load_average_after"] = os.getloadavg()[0]
    out = ROOT / "benchmarks" / "results"
    (out / "data_quality_speed.json").write_text(json.dumps(res, indent=2) + "\n")
    n, s = res["near_dedup"], res["stats"]
    lines = [f"- near-dedup: {n['mb_per_s']} MB/s on {n['mb']} MB with 2 workers (target >= 5: "
             f"{'met' if n['met'] else 'missed'}); datasketch MinHashLSH as the index would take "
             f"{n['datasketch_lsh_bytes_per_doc']:,} bytes a document",
             f"- stats: {s['seconds']} s for {s['mb']} MB ({s['seconds_scaled_to_200mb']} s per 200 MB; target <= 120: "
             f"{'met' if s['met'] else 'missed'})"]  # fmt: skip
    if "peak_rss" in res:
        r = res["peak_rss"]
        lines.append(
            f"- peak RSS of `slm data clean` (exact+near dedup, cheap filters) on {r['mb']} MB: "
            f"{r['peak_rss_mib']} MiB in {r['seconds']} s (target <= 2048: {'met' if r['met'] else 'missed'})"
        )
    lines.append(f"- load average {res['load_average_before']:.1f} -> {res['load_average_after']:.1f} on "
                 f"{res['cpus']} cores (a shared machine)")  # fmt: skip
    (out / "data_quality_speed.md").write_text("# Data quality: speed and memory\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
