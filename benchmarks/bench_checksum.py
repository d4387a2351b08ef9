"""What checkpoint checksums cost: verifying a ~500 MB model.safetensors against its recorded CRC-32, next to loading
it without the check (the baseline, measured in the same run on the same file).

Saves a GPT-2-small-sized model (12 layers x 768, vocab 50304: 124M parameters, 498 MB fp32) as a checkpoint in a
temp dir, then times, median of --repeats (the variants taking turns, so a busy machine's drift hits them alike):

  - hashing the file in 8 MB chunks with zlib.crc32 (what slmkit records), adler32, blake2b, sha256 and md5;
  - load_model(run, verify=False) (the baseline) and load_model(run, verify=True);
  - load_weights into an existing model (the file read alone, without building a model) and verify_file;
  - the same with the file dropped from the page cache first (posix_fadvise DONTNEED), where the OS allows it;
  - the CRC-32 computed while saving (over the bytes in memory: the only work a save adds).

    python benchmarks/bench_checksum.py [--repeats 5] [--n-layer 12] [--n-embd 768]

Writes benchmarks/results/checksum.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
import zlib
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 8 << 20


def _hash_file(path: Path, algo: str) -> None:
    if algo in ("crc32", "adler32"):
        fn, value = getattr(zlib, algo), 0 if algo == "crc32" else 1
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                value = fn(chunk, value)
        return
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)


def _drop_cache(path: Path) -> bool:
    """Drop the file's pages from the page cache (clean pages only: the file was fsynced); False if not possible."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def _median_s(fn, repeats: int, before=None) -> float:
    return _interleaved({"x": fn}, repeats, before)["x"]


def _interleaved(fns: dict, repeats: int, before=None) -> dict:
    """Median seconds of each function, the functions taking turns (a busy machine's drift hits them alike)."""
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if before is not None:
                before()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    args = p.parse_args()

    import torch

    from slmkit.base.config_files import load_config
    from slmkit.base.tokenizer import CharTokenizer
    from slmkit.model.gpt import GPT
    from slmkit.runs import checkpoint as ckpt_io

    cfg = load_config(None, [f"model.n_layer={args.n_layer}", f"model.n_embd={args.n_embd}", "model.n_head=12",
                             "model.block_size=1024", "model.vocab_size=50304", "tokenizer.kind=char"])  # fmt: skip
    tok = CharTokenizer("abc")
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with tempfile.TemporaryDirectory(prefix="slm-bench-checksum-") as tmp:
        run = ckpt_io.new_run_dir(tmp, "bench", explicit=True)
        ckpt_io.init_run_dir(run, cfg, tok)
        t0 = time.perf_counter()
        ckpt = ckpt_io.save_checkpoint(run, 1, model, None, {}, cfg, tok)
        save_s = time.perf_counter() - t0
        weights = ckpt / ckpt_io.WEIGHTS_FILE
        size = weights.stat().st_size
        mb = size / 1e6
        crc_in_memory_s = _crc_in_memory_s(weights, args.repeats)

        hashes = {}
        for algo in ("crc32", "adler32", "blake2b", "sha256", "md5"):
            _hash_file(weights, algo)  # warm
            s = _median_s(lambda a=algo: _hash_file(weights, a), args.repeats)
            hashes[algo] = {"seconds": round(s, 4), "mb_per_s": round(mb / s)}

        target = GPT(cfg.model)
        fns = {
            "load_model_baseline_s": lambda: ckpt_io.load_model(run, 1, verify=False),
            "load_model_verified_s": lambda: ckpt_io.load_model(run, 1, verify=True),
            "load_weights_s": lambda: ckpt_io.load_weights(target, ckpt, verify=False),
            "verify_file_s": lambda: ckpt_io.verify_file(ckpt, ckpt_io.WEIGHTS_FILE),
        }
        warm = _interleaved(fns, args.repeats)
        cold = _interleaved(fns, args.repeats, before=lambda: _drop_cache(weights)) if _drop_cache(weights) else None

    def overhead(d: dict) -> dict:
        d = {k: round(v, 4) for k, v in d.items()}
        d["verify_vs_load_model_pct"] = round(100 * d["verify_file_s"] / d["load_model_baseline_s"], 1)
        d["verify_vs_load_weights_pct"] = round(100 * d["verify_file_s"] / d["load_weights_s"], 1)
        return d

    result = {
        "benchmark": "checkpoint_checksum", "file": ckpt_io.WEIGHTS_FILE, "bytes": size, "mb": round(mb, 1),
        "params": model.num_params(), "chunk_mib": CHUNK >> 20, "algorithm": "crc32", "repeats": args.repeats,
        "hash_file_warm": hashes, "warm_cache": overhead(warm), "cold_cache": overhead(cold) if cold else None,
        "save_checkpoint_s": round(save_s, 3), "crc_while_saving_s": round(crc_in_memory_s, 4),
        "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "loadavg": os.getloadavg(),
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "checksum.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "checksum.md").write_text(_markdown(result))
    print(_markdown(result))


def _crc_in_memory_s(path: Path, repeats: int) -> float:
    blob = path.read_bytes()
    return _median_s(lambda: zlib.crc32(blob), repeats)


def _markdown(r: dict) -> str:
    w = r["warm_cache"]
    lines = [
        f"# Checkpoint checksums: cost on a {r['mb']:.0f} MB model.safetensors ({r['params'] / 1e6:.0f}M parameters)",
        "",
        "`python benchmarks/bench_checksum.py` (median of "
        f"{r['repeats']}; {r['cpus']} CPUs, load average {', '.join(f'{x:.1f}' for x in r['loadavg'])}).",
        "",
        "| page cache | load_model, no check (baseline) | load_model, verified | verify_file (CRC-32) | its share "
        "of the baseline | load_weights alone (file into a built model) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, d in (("warm", w), ("cold (fadvise DONTNEED)", r["cold_cache"])):
        if d:
            lines.append(f"| {name} | {d['load_model_baseline_s']:.3f} s | {d['load_model_verified_s']:.3f} s | "
                         f"{d['verify_file_s']:.3f} s | {d['verify_vs_load_model_pct']:.1f}% | "
                         f"{d['load_weights_s']:.3f} s |")  # fmt: skip
    lines += ["", "Hashing the file in 8 MB chunks (warm page cache):", "", "| algorithm | seconds | MB/s |",
              "| --- | ---: | ---: |"]  # fmt: skip
    for algo, h in r["hash_file_warm"].items():
        mark = " (used)" if algo == r["algorithm"] else ""
        lines.append(f"| {algo}{mark} | {h['seconds']:.3f} | {h['mb_per_s']:,} |")
    lines += ["", f"Saving: the CRC-32 is computed over the bytes as they are written, {r['crc_while_saving_s']:.3f} s "
              f"of a {r['save_checkpoint_s']:.2f} s save (no second read of the file).", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
