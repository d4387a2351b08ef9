"""Prefill of int8-dynamic models: `torch._int_mm` against `int8mm.int_mm`'s exact fp32 path, with fp32 as the base.

Several rows of an int8 model (prefill, scoring, batched decoding) go through `int8mm.int8_rows`, whose integer
matrix product is `torch._int_mm` on CPUs with int8 dot-product units (AVX512-VNNI, AVX-VNNI, AMX) and fp32 matmuls
of the same integers elsewhere. This measures both kernels on this CPU, in one run, for two model shapes with random
weights (the speed does not depend on them): the `code` preset (4 x 128, swiglu, vocab 4096) at the FIM latency
prompt's 496 tokens, and the quantization benchmark's 6 x 384 at 128 and 496 tokens. Batch 1, `--threads` threads.

    python benchmarks/bench_int8mm.py [--threads 1] [--repeats 15]

Writes benchmarks/results/int8mm_<cpu>.json and .md (<cpu>: avx512-vnni, avx-vnni, amx or avx2 and so on).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from slmkit.base.config import ModelConfig
from slmkit.model import int8mm
from slmkit.model.gpt import GPT
from slmkit.model.qweights import _swap_linears, int8_state_dict

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {
    "code preset 4x128": dict(
        n_layer=4, n_head=4, n_embd=128, vocab_size=4096, norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False
    ),  # fmt: skip
    "6x384": dict(n_layer=6, n_head=6, n_embd=384, vocab_size=4096, tie_embeddings=True),
}


def cpu_kind() -> str:
    caps = torch.cpu.get_capabilities()
    for key, name in (("amx_int8", "amx"), ("avx512_vnni", "avx512-vnni"), ("avx_vnni", "avx-vnni")):
        if caps.get(key):
            return name
    return "avx512" if caps.get("avx512_f") else "avx2" if caps.get("avx2") else platform.machine()


def prefill_ms(model: GPT, tokens: int, repeats: int) -> float:
    x = torch.randint(0, 4096, (1, tokens), generator=torch.Generator().manual_seed(0))
    ms = []
    with torch.no_grad():
        for r in range(repeats + 2):
            t0 = time.perf_counter()
            model(x, kv_cache=model.new_kv_cache(1), last_only=True)
            if r >= 2:
                ms.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as the FIM latency target)")
    ap.add_argument("--repeats", type=int, default=15, help="timed prefills per kernel and shape (median reported)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, own = [], int8mm.INT8_UNITS
    for name, arch in SHAPES.items():
        torch.manual_seed(0)
        fp32 = GPT(ModelConfig(block_size=512, **arch)).eval()
        q8 = GPT(ModelConfig(block_size=512, **arch)).eval()
        _swap_linears(q8, int8_state_dict(fp32))
        for tokens in (128, 496) if name == "6x384" else (496,):
            row = {"model": name, "tokens": tokens, "fp32_ms": prefill_ms(fp32, tokens, args.repeats)}
            for kernel, units in (("int_mm_ms", True), ("fp32_exact_ms", False)):
                int8mm.INT8_UNITS = units
                row[kernel] = prefill_ms(q8, tokens, args.repeats)
            int8mm.INT8_UNITS = own
            row["speedup"] = row["int_mm_ms"] / row["fp32_exact_ms"]
            rows.append(row)
            print(row, flush=True)
    kind = cpu_kind()
    res = {"cpu": kind, "machine": platform.machine(), "threads": args.threads, "repeats": args.repeats,
           "int8_units": own, "kernel_chosen_here": "torch._int_mm" if own else "fp32 exact", "rows": rows}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"int8mm_{kind}.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# int8 prefill kernels on this CPU ({kind}, {args.threads} thread(s), median of {args.repeats})", "",
             f"`int8mm.int_mm` picks **{res['kernel_chosen_here']}** here.", "",
             "| model | prompt tokens | fp32 model | int8, torch._int_mm | int8, exact fp32 products | ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    lines += [f"| {r['model']} | {r['tokens']} | {r['fp32_ms']:.1f} ms | {r['int_mm_ms']:.1f} ms | "
              f"{r['fp32_exact_ms']:.1f} ms | {r['speedup']:.1f}x |" for r in rows]  # fmt: skip
    lines += ["", "Command: `python benchmarks/bench_int8mm.py" + (f" --threads {args.threads}" if args.threads != 1
              else "") + "`"]  # fmt: skip
    (RESULTS / f"int8mm_{kind}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
