"""Training benchmarks of issue 3, measured in one run on this machine.

- quality: `shakespeare-char` reaches val <= 1.89 at step 2000; `shakespeare-char-modern` val <= 1.75, same tokens;
- throughput fp32: MFU >= 47% against a matmul peak measured here, in this run;
- bf16 autocast: >= 1.3x the fp32 tokens/s, val loss within 0.02 of fp32;
- memory: RSS flat over 2000 steps (within 5%).

Usage: python benchmarks/bench_train.py [--steps 2000] [--only fp32,bf16,modern]
Writes benchmarks/results/train.json and train.md. Needs $SLM_DATA_DIR (TinyShakespeare).

`--sdpa` instead times attention forward+backward of bf16 q/k/v in bf16 and upcast to fp32, by sequence length:
the measurement behind `slmkit.model.gpt.SDPA_FP32_MAX_T`. Writes benchmarks/results/sdpa.json and sdpa.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from slmkit.base.config_files import load_config
from slmkit.base.metrics import series
from slmkit.engine.train import train

RESULTS = Path(__file__).parent / "results"


def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048), reps: int = 5) -> float:
    """Best dense matmul FLOP/s over a few sizes (the MFU denominator)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def sdpa_table(lengths=(64, 128, 256, 512, 1024), tokens: int = 8192, heads: int = 4, head_dim: int = 64) -> None:
    """Attention forward+backward on bf16 inputs, run in bf16 vs upcast to fp32, at a fixed tokens per batch."""
    import torch.nn.functional as F

    def best_ms(t: int, upcast: bool) -> float:
        q, k, v = (torch.randn(tokens // t, heads, t, head_dim, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))  # fmt: skip

        def step():
            a, b, c = (q.float(), k.float(), v.float()) if upcast else (q, k, v)
            F.scaled_dot_product_attention(a, b, c, is_causal=True).to(torch.bfloat16).sum().backward()

        step()
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return 1e3 * min(times)

    rows = [{"T": t, "bf16_ms": best_ms(t, False), "fp32_ms": best_ms(t, True)} for t in lengths]
    RESULTS.mkdir(exist_ok=True)
    info = {"threads": torch.get_num_threads(), "tokens": tokens, "heads": heads, "head_dim": head_dim, "rows": rows}
    (RESULTS / "sdpa.json").write_text(json.dumps(info, indent=2) + "\n")
    lines = [f"# SDPA forward+backward on CPU, bf16 inputs ({tokens} tokens, {heads} heads x {head_dim}, "
             f"{torch.get_num_threads()} threads)", "", "| T | in bf16 ms | upcast to fp32 ms | fp32 faster by |",
             "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['T']} | {r['bf16_ms']:.1f} | {r['fp32_ms']:.1f} | {r['bf16_ms'] / r['fp32_ms']:.2f}x |")
    (RESULTS / "sdpa.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


COMPILE: list[str] = []


def one_run(preset: str, out: Path, data: Path, steps: int, *extra: str) -> dict:
    threads = [f"train.threads={torch.get_num_threads()}", *COMPILE]
    overrides = [f"train.out_dir={out}", f"data.dir={data}", f"train.max_steps={steps}", *threads, *extra]
    cfg = load_config(preset, overrides)
    t0 = time.time()
    run = train(cfg, overrides=overrides, progress=False)
    wall = time.time() - t0
    steps_v, val = series(run, "val/loss")
    _, tok_s = series(run, "perf/tok_per_s")
    _, mfu = series(run, "perf/mfu")
    _, rss = series(run, "mem/rss_mb")
    steady = tok_s[10:] or tok_s
    n = len(rss)
    early, late = statistics.mean(rss[n // 10 : n // 5]), statistics.mean(rss[-n // 10 :])
    return {"preset": preset, "overrides": [*COMPILE, *extra], "steps": steps, "final_val_loss": val[-1],
            "val_at": dict(zip(steps_v, val)), "tok_per_s_median": statistics.median(steady),
            "logged_mfu_median": statistics.median(mfu[10:] or mfu), "wall_s": wall,
            "rss_mb_early": early, "rss_mb_late": late, "rss_growth": late / early - 1, "run": str(run)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--only", default="fp32,bf16,modern")
    ap.add_argument("--preset", default="shakespeare-char", help="preset of the fp32/bf16 runs")
    ap.add_argument("--compile", action="store_true", help="torch.compile every run (fp32 and bf16 alike)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--sdpa", action="store_true", help="only time attention in bf16 vs fp32 by sequence length")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sdpa:
        return sdpa_table()
    if args.compile:
        COMPILE.append("train.compile=true")
    from slmkit.data.prepare import prepare

    only = args.only.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="slm-bench-train-"))
    data = prepare("tinyshakespeare", tokenizer="char", out=tmp / "data", val_fraction=0.1, progress=False)
    if args.preset != "shakespeare-char":
        from slmkit.data.prepare import ensure_prepared

        pcfg = load_config(args.preset)
        data = ensure_prepared(pcfg.data, pcfg.tokenizer.kind)
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    res: dict = {"machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
                 "peak_gflops_fp32": peak32 / 1e9, "peak_gflops_bf16": peak16 / 1e9, "runs": {}}  # fmt: skip
    from slmkit.data.dataset import load_dataset_tokenizer
    from slmkit.model.gpt import GPT

    vocab = load_dataset_tokenizer(data).vocab_size
    fpt = GPT(load_config(args.preset, [f"model.vocab_size={vocab}"]).model).flops_per_token()
    tag = "" if args.preset == "shakespeare-char" else f"-{args.preset}"
    if "fp32" in only:
        r = one_run(args.preset, tmp / "runs", data, args.steps, "train.dtype=fp32", "train.name=fp32")
        r["mfu_vs_measured_peak"] = fpt * r["tok_per_s_median"] / peak32
        res["runs"]["fp32" + tag + "-compiled" * args.compile] = r
    if "bf16" in only:
        res["runs"]["bf16" + tag + "-compiled" * args.compile] = one_run(
            args.preset, tmp / "runs", data, args.steps, "train.dtype=bf16", "train.name=bf16"
        )
    if "modern" in only:
        res["runs"]["modern"] = one_run("shakespeare-char-modern", tmp / "runs", data, args.steps, "train.name=modern")
    runs = res["runs"]
    sfx = tag + "-compiled" * args.compile
    if f"fp32{sfx}" in runs and f"bf16{sfx}" in runs:
        fp32, bf16 = runs[f"fp32{sfx}"], runs[f"bf16{sfx}"]
        res[f"bf16_speedup{sfx}"] = bf16["tok_per_s_median"] / fp32["tok_per_s_median"]
        res[f"bf16_val_delta{sfx}"] = bf16["final_val_loss"] - fp32["final_val_loss"]
    RESULTS.mkdir(exist_ok=True)
    old = json.loads((RESULTS / "train.json").read_text()) if (RESULTS / "train.json").exists() else {}
    old.setdefault("runs", {}).update(runs)
    old.update({k: v for k, v in res.items() if k != "runs"})
    (RESULTS / "train.json").write_text(json.dumps(old, indent=2) + "\n")
    lines = [f"# Training benchmark ({time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} threads)", "",
             f"matmul peak measured in the run: fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s", "",
             "| run | steps | final val | tok/s | MFU (measured peak) | RSS early→late MB | wall s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in old["runs"].items():
        mfu = r.get("mfu_vs_measured_peak")
        lines.append(f"| {name} ({r['preset']}) | {r['steps']} | {r['final_val_loss']:.4f} "
                     f"| {r['tok_per_s_median']:,.0f} "
                     f"| {'' if mfu is None else f'{100 * mfu:.1f}%'} | {r['rss_mb_early']:.0f}→{r['rss_mb_late']:.0f} "
                     f"({100 * r['rss_growth']:+.1f}%) | {r['wall_s']:.0f} |")  # fmt: skip
    for sfx in sorted(k.removeprefix("bf16_speedup") for k in old if k.startswith("bf16_speedup")):
        if f"bf16_speedup{sfx}" in old:
            label = sfx.replace("-", " ")
            lines += ["", f"bf16 autocast{label}: {old[f'bf16_speedup{sfx}']:.2f}x fp32{label} "
                      f"tokens/s, val delta {old[f'bf16_val_delta{sfx}']:+.4f}"]  # fmt: skip
    (RESULTS / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
