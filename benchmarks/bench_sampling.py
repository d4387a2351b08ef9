"""Sampling speed with and without the KV cache: 6 layers, 384 wide, 512 new tokens, batch 1.

Target (issue 3): the cache gives >= 4x the tokens/s of no cache. Writes benchmarks/results/sampling.json and .md.
Run: python benchmarks/bench_sampling.py [--new-tokens 512] [--repeats 2] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from slmkit.base.config import ModelConfig
from slmkit.model.generate import generate
from slmkit.model.gpt import GPT

RESULTS = Path(__file__).resolve().parent / "results"


def tokens_per_s(model: GPT, new_tokens: int, use_cache: bool, repeats: int) -> float:
    """Best of `repeats` greedy runs from a one-token prompt (a warm-up run first)."""
    list(generate(model, [0], 8, temperature=0.0, use_cache=use_cache))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = sum(1 for _ in generate(model, [0], new_tokens, temperature=0.0, use_cache=use_cache))
        best = min(best, time.perf_counter() - t0)
    assert n == new_tokens
    return new_tokens / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=4096, help="the default bpe:4096 tokenizer's size")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=6, n_head=6, n_embd=384, block_size=args.new_tokens + 1, vocab_size=args.vocab_size)
    model = GPT(cfg).eval()
    cached = tokens_per_s(model, args.new_tokens, True, args.repeats)
    plain = tokens_per_s(model, args.new_tokens, False, args.repeats)
    same = list(generate(model, [0], 64, temperature=0.0)) == list(
        generate(model, [0], 64, temperature=0.0, use_cache=False)
    )
    result = {
        "benchmark": "sampling", "model": "6L-6H-384d, gpt2-style", "params": model.num_params(),
        "vocab_size": cfg.vocab_size, "new_tokens": args.new_tokens, "batch_size": 1,
        "tok_per_s_cache": round(cached, 1), "tok_per_s_no_cache": round(plain, 1),
        "speedup": round(cached / plain, 2), "target_speedup": 4.0, "greedy_outputs_equal": same,
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sampling.json").write_text(json.dumps(result, indent=2) + "\n")
    line = (
        f"sampling: KV cache {cached:.0f} tok/s vs no cache {plain:.0f} tok/s = {cached / plain:.1f}x (target >= 4x) "
        f"at {args.new_tokens} new tokens, 6L-384d, batch 1, CPU {torch.get_num_threads()} threads"
    )
    (RESULTS / "sampling.md").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
