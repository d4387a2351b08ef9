"""GPT-2 124M training throughput and MFU on one CUDA GPU, against the bf16 matmul peak measured in the same run.

Checks the CUDA path the trainer takes (bf16 autocast through Runtime, torch.compile, flash attention through
scaled_dot_product_attention) and times slmkit's own `train_step` on the `gpt2-124m` preset's model with fused AdamW.
Batches are random token ids on the GPU (throughput does not depend on the text). MFU = flops_per_token x tokens/s
/ peak, where flops_per_token is the model's 6N + 12 L C T (PaLM appendix B, as nanoGPT counts it) and peak is the
best of large bf16 matmuls (8192^3) timed here, so the ratio needs no datasheet. Target: >= 40% MFU.

    python benchmarks/bench_gpu_mfu.py [--batch-size 16] [--steps 30] [--no-compile]
    python benchmarks/bench_gpu_mfu.py --smoke      # a CPU run of a tiny model: checks the script, writes nothing

Writes benchmarks/results/gpu_mfu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MFU = 0.40


def matmul_peak(device: torch.device, size: int = 8192, reps: int = 20) -> float:
    """Best bf16 dense matmul FLOP/s over `reps` (size x size) @ (size x size) products, after a warm-up."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize(device)
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * size**3 / best


def check_flash(model, device: torch.device, block_size: int) -> bool:
    """True when the model's attention runs with only the flash backend allowed (bf16, causal, this head size)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x = torch.randint(0, 50257, (2, block_size), device=device)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
            model(x, x)
        return True
    except RuntimeError as e:
        print(f"flash attention not usable: {str(e).splitlines()[0]}", file=sys.stderr)
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16, help="micro-batch (sequences of 1024 tokens)")
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (compilation, allocator)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU, fp32, no results written")
    args = p.parse_args()

    from slmkit.base.config import TrainConfig
    from slmkit.base.config_files import load_config
    from slmkit.engine.runtime import resolve_runtime
    from slmkit.engine.trainer import train_step
    from slmkit.model.gpt import GPT
    from slmkit.model.optim import build_optimizer, set_lr

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible: run this on a GPU machine (or --smoke to check the script on CPU)")
    overrides = ["model.vocab_size=50257"]
    if args.smoke:
        overrides += ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64"]
        args.batch_size, args.steps, args.warmup = 2, 3, 1
    cfg = load_config("gpt2-124m", overrides)
    compile_on = not args.no_compile and not args.smoke
    rt = resolve_runtime(TrainConfig(device="cpu" if args.smoke else "cuda", dtype="fp32" if args.smoke else "bf16",
                                     compile=compile_on))  # fmt: skip
    print(rt.describe(), file=sys.stderr)
    torch.manual_seed(0)
    model = GPT(cfg.model).to(rt.device).train()
    optimizer = build_optimizer(model, cfg.optim)
    flash = None if args.smoke else check_flash(model, rt.device, cfg.model.block_size)
    peak = None if args.smoke else matmul_peak(rt.device)
    step_model = torch.compile(model) if rt.compile else model
    B, T, V = args.batch_size, cfg.model.block_size, cfg.model.vocab_size

    def batch():
        x = torch.randint(0, V, (B, T + 1), device=rt.device)
        return x[:, :-1], x[:, 1:]

    times, losses = [], []
    for step in range(args.warmup + args.steps):
        set_lr(optimizer, step, cfg.optim, cfg.train.max_steps)
        rt.synchronize()
        t0 = time.perf_counter()
        loss, _ = train_step(step_model, optimizer, batch, 1, rt, cfg.optim.grad_clip)
        rt.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(loss)
    times.sort()
    step_s = times[len(times) // 2]  # median
    tok_s = B * T / step_s
    flops_per_token = model.flops_per_token()
    result = {
        "benchmark": "gpu_mfu_gpt2_124m", "device": torch.cuda.get_device_name(rt.device) if not args.smoke else "cpu",
        "dtype": rt.dtype, "compile": rt.compile, "flash_attention": flash, "batch_size": B, "block_size": T,
        "params": model.num_params(), "flops_per_token": flops_per_token, "median_step_ms": 1e3 * step_s,
        "tokens_per_s": tok_s, "matmul_peak_tflops": peak / 1e12 if peak else None,
        "mfu": flops_per_token * tok_s / peak if peak else None, "target_mfu": TARGET_MFU,
        "first_loss": losses[0], "last_loss": losses[-1], "torch": torch.__version__,
        "python": platform.python_version(), "cuda": torch.version.cuda,
    }  # fmt: skip
    result["pass"] = result["mfu"] is not None and result["mfu"] >= TARGET_MFU
    print(json.dumps(result, indent=2))
    if args.smoke:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu_mfu.json").write_text(json.dumps(result, indent=2) + "\n")
    line = (f"- GPT-2 124M training on {result['device']} (bf16 autocast, compile={'on' if rt.compile else 'off'}, "
            f"flash={'yes' if flash else 'no'}, micro-batch {B}x{T}): {tok_s:,.0f} tokens/s, median step "
            f"{1e3 * step_s:.0f} ms, MFU {100 * result['mfu']:.1f}% of a measured bf16 matmul peak of "
            f"{result['matmul_peak_tflops']:.0f} TFLOP/s (target >= {100 * TARGET_MFU:.0f}%: "
            f"{'pass' if result['pass'] else 'FAIL'})\n")  # fmt: skip
    (RESULTS / "gpu_mfu.md").write_text(line)
    print(line, end="", file=sys.stderr)


if __name__ == "__main__":
    main()
