"""Benchmark `slm prepare` with the gpt2 tokenizer.

Throughput (default): a corpus of >= 200 MB built by repeating the standard library's text (one file per stdlib
module per copy), prepared with N workers, against raw tiktoken `encode_ordinary_batch(num_threads=N)` over the
same texts held in memory; both measured in the same run, alternating, best of `--repeats`. Target: prepare
reaches >= 80% of the raw tokens/s.

Peak memory (`--peak-mem`): a corpus of >= 2 GB (the stdlib text repeated into large files) prepared in a child
process; the RSS of that process and its children is polled and the peak reported. Target: <= 1 GiB.

    python benchmarks/bench_prepare.py [--mb 200] [--workers 2] [--repeats 2]
    python benchmarks/bench_prepare.py --peak-mem [--mb 2048]

Writes benchmarks/results/prepare_throughput.{json,md} or prepare_peak_mem.{json,md}; temp files are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _env() -> None:
    data = Path(os.environ.get("SLM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if "TIKTOKEN_CACHE_DIR" not in os.environ and (data / "tiktoken_cache").is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(data / "tiktoken_cache")


def stdlib_texts() -> list[tuple[str, str]]:
    from slmkit.data.sources import stdlib_files

    return [(p.name, p.read_text(encoding="utf-8", errors="replace")) for p in stdlib_files()]


def build_corpus(root: Path, mb: int, big_files: bool) -> int:
    """Repeat the stdlib text until `mb` MB: one file per module per copy, or one large file per copy."""
    texts, total, copy = stdlib_texts(), 0, 0
    while total < mb * 1_000_000:
        if big_files:
            blob = "\n\n".join(t for _, t in texts).encode("utf-8")
            (root / f"copy{copy:04d}.txt").write_bytes(blob)
            total += len(blob)
        else:
            d = root / f"copy{copy:04d}"
            d.mkdir()
            for i, (name, text) in enumerate(texts):
                data = text.encode("utf-8")
                (d / f"{i:04d}_{name}").write_bytes(data)
                total += len(data)
        copy += 1
    return total


def _write(name: str, result: dict, line: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(line + "\n")
    print(line)


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg()}  # fmt: skip


def throughput(mb: int, workers: int, repeats: int, backends: list[str]) -> None:
    import tiktoken

    from slmkit.data.dataset import read_meta
    from slmkit.data.prepare import prepare
    from slmkit.data.sources import iter_texts

    enc = tiktoken.get_encoding("gpt2")
    with tempfile.TemporaryDirectory(prefix="slm-bench-prepare-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        n_bytes = build_corpus(corpus, mb, big_files=False)
        best: dict[str, float] = {}
        runs: dict[str, list[float]] = {}
        n_tokens = 0
        for r in range(repeats):
            texts = list(iter_texts(str(corpus)))
            t0 = time.perf_counter()
            n_tokens = sum(len(t) for t in enc.encode_ordinary_batch(texts, num_threads=workers))
            runs.setdefault("raw", []).append(time.perf_counter() - t0)
            del texts
            for backend in backends:
                out = Path(tmp) / f"ds-{backend}"
                t0 = time.perf_counter()
                prepare(str(corpus), tokenizer="gpt2", out=out, workers=workers, backend=backend, progress=False,
                        force=True, val_fraction=0.01)  # fmt: skip
                runs.setdefault(backend, []).append(time.perf_counter() - t0)
                meta = read_meta(out)
                assert meta["tokens"] - meta["documents"] == n_tokens, "prepare and raw disagree on the tokens"
                shutil.rmtree(out)
            print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items()), file=sys.stderr)
        best = {k: min(v) for k, v in runs.items()}
    rates = {k: n_tokens / v for k, v in best.items()}
    ratios = {k: rates[k] / rates["raw"] for k in backends}
    chosen = max(ratios, key=ratios.get)
    result = {"benchmark": "prepare_throughput", "tokenizer": "gpt2", "corpus_bytes": n_bytes, "tokens": n_tokens,
              "workers": workers, "repeats": repeats, "seconds_best": best, "seconds_all": runs,
              "tokens_per_s": rates, "ratio_to_raw": ratios, "target_ratio": 0.8, "pass": ratios[chosen] >= 0.8,
              "fastest_backend": chosen, **_machine()}  # fmt: skip
    each = "; ".join(f"prepare[{k}] {rates[k] / 1e6:.2f} Mtok/s = {ratios[k]:.0%} of raw" for k in backends)
    verdict = "PASS" if result["pass"] else "FAIL"
    line = (f"prepare throughput (gpt2, {n_bytes / 1e6:.0f} MB, {workers} workers): raw tiktoken "
            f"{rates['raw'] / 1e6:.2f} Mtok/s; {each} (target >= 80%: {verdict})")  # fmt: skip
    _write("prepare_throughput", result, line)


def peak_mem(mb: int, workers: int, backend: str, tokenizer: str) -> None:
    import psutil

    with tempfile.TemporaryDirectory(prefix="slm-bench-peakmem-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        n_bytes = build_corpus(corpus, mb, big_files=True)
        code = ("import sys; from slmkit.data.prepare import prepare; prepare(sys.argv[1], tokenizer=sys.argv[2], "
                "out=sys.argv[3], workers=int(sys.argv[4]), backend=sys.argv[5], progress=False)")  # fmt: skip
        args = [sys.executable, "-c", code, str(corpus), tokenizer, str(Path(tmp) / "ds"), str(workers), backend]
        t0 = time.perf_counter()
        proc = subprocess.Popen(args)
        ps, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            except psutil.Error:
                rss = 0
            peak = max(peak, rss)
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"prepare failed with exit code {proc.returncode}")
        meta = json.loads((Path(tmp) / "ds" / "meta.json").read_text())
    result = {"benchmark": "prepare_peak_mem", "tokenizer": tokenizer, "corpus_bytes": n_bytes, "workers": workers,
              "backend": backend, "tokens": meta["tokens"], "seconds": elapsed, "peak_rss_bytes": peak,
              "peak_rss_mib": peak / 2**20, "target_mib": 1024, "pass": peak <= 2**30, **_machine()}  # fmt: skip
    line = (f"prepare peak memory ({tokenizer}, {n_bytes / 1e9:.2f} GB corpus, {workers} workers, {backend}): "
            f"peak RSS {peak / 2**20:.0f} MiB incl. children, {elapsed:.0f}s, {meta['tokens'] / elapsed / 1e6:.2f} "
            f"Mtok/s (target <= 1024 MiB: {'PASS' if result['pass'] else 'FAIL'})")  # fmt: skip
    _write("prepare_peak_mem", result, line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peak-mem", action="store_true", help="measure peak RSS on a >= 2 GB corpus instead")
    p.add_argument("--mb", type=int, default=0, help="corpus size in MB (default 200, or 2048 with --peak-mem)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=["thread", "process"])
    p.add_argument("--backend", default="thread", help="--peak-mem: the backend to measure")
    p.add_argument("--tokenizer", default="gpt2", help="--peak-mem: the tokenizer")
    args = p.parse_args()
    _env()
    if args.peak_mem:
        peak_mem(args.mb or 2048, args.workers, args.backend, args.tokenizer)
    else:
        throughput(args.mb or 200, args.workers, args.repeats, args.backends)


if __name__ == "__main__":
    main()
