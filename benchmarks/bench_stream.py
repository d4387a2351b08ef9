"""Benchmark stream mode (data.stream) against prepared shards, and streaming a large directory.

1. Training tokens/s, stream vs prepared, alternating runs in this one benchmark run, on the `default` preset and on a
   4 x 256 model (target: stream >= 95% of prepared). Source: $SLM_DATA_DIR/wikipedia (gpt2 tokenizer); the prepared
   baseline is the same source prepared (first --prepare-mb MB) in a temp dir. Median perf/tok_per_s of the steps
   after the first 5.
2. A large directory: --big-gb of parquet built by linking the wikipedia files many times under /tmp (symlinks: the
   planner reads every file's footer and the reader reads every file, but the bytes come from the page cache),
   deleted afterwards. Time from starting `slm train` to its first optimizer step (target < 15 s), then peak RSS of
   the trainer and its worker processes, sampled every second for --stream-s seconds (target <= 1.5 GiB, flat within
   5%: the peak of the second half against the first half), and bytes written to storage by those processes
   (/proc/PID/io write_bytes) against the size of the run dir and the val cache.

    python benchmarks/bench_stream.py [--steps 40] [--rounds 2] [--big-gb 20] [--stream-s 600]

Writes benchmarks/results/stream.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"default": [], "4x256": ["model.n_layer=4", "model.n_embd=256", "model.n_head=4"]}


def _train_cmd(out: Path, name: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "slmkit", "train", *overrides, f"train.out_dir={out}", f"train.name={name}",
            "tokenizer.kind=gpt2", "train.eval_every=0", "train.eval_batches=2", "train.log_every=10",
            "--no-progress"]  # fmt: skip


def _tok_per_s(run: Path) -> float:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [e["perf/tok_per_s"] for e in events if "perf/tok_per_s" in e and e["step"] > 5]
    return statistics.median(rates)


def throughput(tmp: Path, wiki: Path, dataset: Path, steps: int, rounds: int) -> list[dict]:
    rows = []
    for model, extra in MODELS.items():
        rates: dict[str, list[float]] = {"stream": [], "prepared": []}
        for r in range(rounds):
            for mode in ("stream", "prepared") if r % 2 == 0 else ("prepared", "stream"):
                data = [f"data.source={wiki}", "data.stream=true"] if mode == "stream" else [f"data.dir={dataset}"]
                name = f"{model}-{mode}-{r}"
                cmd = _train_cmd(tmp / "runs", name, *extra, *data, f"train.max_steps={steps}")
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
                rates[mode].append(_tok_per_s(tmp / "runs" / name))
                print(f"{name}: {rates[mode][-1]:,.0f} tok/s", flush=True)
        s, p = statistics.median(rates["stream"]), statistics.median(rates["prepared"])
        rows.append({"model": model, "stream_tok_s": s, "prepared_tok_s": p, "ratio": s / p, "runs": rates})
    return rows


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def big_directory(tmp: Path, wiki: Path, gb: float, stream_s: float) -> dict:
    big = Path(tempfile.mkdtemp(prefix="slm-bench-stream-big-", dir="/tmp"))
    try:
        files = sorted(wiki.glob("*.parquet"))
        size, n = 0, 0
        while size < gb * 1e9:
            f = files[n % len(files)]
            (big / f"part-{n:05d}.parquet").symlink_to(f)
            size, n = size + f.stat().st_size, n + 1
        cache = tmp / "cache"
        env = {**os.environ, "SLM_CACHE_DIR": str(cache)}
        cmd = _train_cmd(tmp / "runs", "big", f"data.source={big}", "data.stream=true", "train.max_steps=1000000",
                         "train.log_every=1000000", "train.ckpt_minutes=0", "train.ckpt_every=0")  # fmt: skip
        t0 = time.time()
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        first_step = None
        for line in proc.stderr:
            if "step      1 |" in line:
                first_step = time.time() - t0
                break
            if proc.poll() is not None:
                break
        ps = psutil.Process(proc.pid)
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
        samples = []
        end = time.time() + stream_s
        while time.time() < end and proc.poll() is None:
            tree = _tree(ps)
            rss = 0
            for p in tree:
                try:
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            samples.append((time.time() - t0, rss))
            time.sleep(1.0)
        written = 0
        for p in _tree(ps):
            try:
                written += p.io_counters().write_bytes
            except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
                pass
        proc.terminate()  # SIGTERM: the run saves a checkpoint and stops
        proc.communicate(timeout=300)
        run = tmp / "runs" / "big"
        run_bytes = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
        cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0
        half = len(samples) // 2
        first, second = max(r for _, r in samples[:half]), max(r for _, r in samples[half:])
        return {"files": n, "bytes": size, "first_step_s": first_step, "stream_s": stream_s,
                "peak_rss_mb": max(r for _, r in samples) / 2**20, "first_half_peak_mb": first / 2**20,
                "second_half_peak_mb": second / 2**20, "growth": second / first - 1,
                "written_by_processes_mb_before_final_save": written / 1e6, "run_dir_mb": run_bytes / 1e6,
                "val_cache_mb": cache_bytes / 1e6}  # fmt: skip
    finally:
        shutil.rmtree(big, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prepare-mb", type=int, default=30)
    ap.add_argument("--big-gb", type=float, default=20)
    ap.add_argument("--stream-s", type=float, default=600)
    args = ap.parse_args()
    data = Path(os.environ.get("SLM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(data / "tiktoken_cache"))
    os.environ.setdefault("SLM_DATA_DIR", str(data))
    wiki = data / "wikipedia"

    from slmkit.data.prepare import prepare

    with tempfile.TemporaryDirectory(prefix="slm-bench-stream-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["SLM_CACHE_DIR"] = str(tmp / "cache")
        dataset = prepare(str(wiki), tokenizer="gpt2", out=tmp / "wiki-gpt2", max_bytes=args.prepare_mb * 10**6,
                          progress=False)  # fmt: skip
        rows = throughput(tmp, wiki, dataset, args.steps, args.rounds)
        big = big_directory(tmp, wiki, args.big_gb, args.stream_s)
    worst = min(r["ratio"] for r in rows)
    result = {"benchmark": "stream", "throughput": rows, "big_directory": big, "steps": args.steps,
              "rounds": args.rounds, "targets": {"ratio": 0.95, "first_step_s": 15, "peak_rss_mb": 1536,
                                                 "growth": 0.05},
              "pass": {"ratio": worst >= 0.95, "first_step_s": (big["first_step_s"] or 1e9) < 15,
                       "peak_rss": big["peak_rss_mb"] <= 1536, "flat": abs(big["growth"]) <= 0.05},
              "cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg()}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stream.json").write_text(json.dumps(result, indent=2) + "\n")
    tp = "; ".join(f"{r['model']} {r['stream_tok_s']:,.0f} vs {r['prepared_tok_s']:,.0f} tok/s "
                   f"({100 * r['ratio']:.1f}%)" for r in rows)  # fmt: skip
    line = (
        f"stream vs prepared (median of {args.rounds} alternating runs x {args.steps} steps): {tp} (target >= 95%: "
        f"{'PASS' if result['pass']['ratio'] else 'FAIL'}). {big['bytes'] / 1e9:.1f} GB directory ({big['files']} "
        f"files): first step {big['first_step_s']:.1f} s (target < 15 s), peak RSS {big['peak_rss_mb']:,.0f} MB over "
        f"{args.stream_s:.0f} s (target <= 1536), growth {100 * big['growth']:+.1f}% (target within 5%); written "
        f"{big['written_by_processes_mb_before_final_save']:.1f} MB before the final save, run dir "
        f"{big['run_dir_mb']:.1f} MB, val cache {big['val_cache_mb']:.1f} MB. loadavg {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs"
    )
    (RESULTS / "stream.md").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
