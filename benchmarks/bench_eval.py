"""HellaSwag scoring speed: `slm eval`'s scorer vs lm-eval's `hf` backend on the same exported ~10M model.

Target (issue 5): our items/s >= 2x lm-eval's hf backend, same 500 items, one run, 2 CPU cores; and the wall time
of the full 10,042-item HellaSwag run (--full). Untrained weights (speed does not depend on them); GPT-2 tokenizer.
lm-eval is timed on its `loglikelihood` call over exactly the requests of those items (its tokenization, batching
and forward passes; no dataset loading), at its default batch size 1 and at --hf-batch-size.
Writes benchmarks/results/eval.json and eval.md.
Run: python benchmarks/bench_eval.py [--items 500] [--hf-batch-size 8] [--threads 1] [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from slmkit.base.config import ModelConfig, RunConfig, TokenizerConfig
from slmkit.base.tokenizer import build_tokenizer
from slmkit.engine.evaluate import run_task
from slmkit.engine.evaluate.tasks import load_items
from slmkit.model.gpt import GPT
from slmkit.runs.checkpoint import init_run_dir, save_checkpoint
from slmkit.ship.export.artifact import export

RESULTS = Path(__file__).resolve().parent / "results"


def make_run(root: Path) -> tuple[Path, GPT]:
    tok = build_tokenizer("gpt2")
    mcfg = ModelConfig(n_layer=6, n_head=5, n_embd=160, block_size=1024, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = GPT(mcfg).eval()
    cfg = RunConfig(model=mcfg, tokenizer=TokenizerConfig(kind="gpt2"))
    run = root / "bench-10m"
    run.mkdir()
    init_run_dir(run, cfg, tok)
    save_checkpoint(run, 0, model, None, {"tokens_seen": 0}, cfg, tok)
    return run, model


def time_lm_eval_hf(hf_dir: Path, items, batch_size: int) -> tuple[float, list[float]]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(hf_dir), batch_size=batch_size, device="cpu", dtype="float32")
    reqs = [Instance("loglikelihood", {}, (c, k), i) for it in items for i, (c, k) in enumerate(it.requests())]
    t0 = time.perf_counter()
    out = lm.loglikelihood(reqs, disable_tqdm=True)
    return time.perf_counter() - t0, [ll for ll, _ in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--hf-batch-size", type=int, default=8)
    ap.add_argument("--full", action="store_true", help="also time the full 10,042-item run of ours")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads for both; 0 keeps torch's default "
        "(use 1 on a loaded machine: 2 spinning threads on 2 busy cores cost ~10x)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run, model = make_run(Path(tmp))
        tok = build_tokenizer("gpt2")
        items = load_items("hellaswag", limit=args.items)
        ours = run_task(model, tok, "hellaswag", limit=args.items)
        hf_dir = export(run, Path(tmp) / "hf")
        hf1_s, hf1_lls = time_lm_eval_hf(hf_dir, items, 1)
        hfb_s, _ = time_lm_eval_hf(hf_dir, items, args.hf_batch_size)
        ours_lls = [ll for lls in ours["loglikelihoods"] for ll in lls]
        max_diff = max(abs(a - b) for a, b in zip(ours_lls, hf1_lls))
        full = run_task(model, tok, "hellaswag") if args.full else None
    n = args.items
    result = {
        "benchmark": "eval_hellaswag", "model": "6L-5H-160d gpt2-style, untrained", "params": model.num_params(),
        "tokenizer": "gpt2", "items": n, "ours_s": round(ours["seconds"], 2),
        "ours_items_per_s": round(n / ours["seconds"], 2),
        "lm_eval_hf_bs1_s": round(hf1_s, 2), "lm_eval_hf_bs1_items_per_s": round(n / hf1_s, 2),
        f"lm_eval_hf_bs{args.hf_batch_size}_s": round(hfb_s, 2),
        f"lm_eval_hf_bs{args.hf_batch_size}_items_per_s": round(n / hfb_s, 2),
        "speedup_vs_bs1": round(hf1_s / ours["seconds"], 2),
        f"speedup_vs_bs{args.hf_batch_size}": round(hfb_s / ours["seconds"], 2), "target_speedup": 2.0,
        "max_abs_loglik_diff_fp32": max_diff,
        "full_items": full["n"] if full else None, "full_wall_s": round(full["seconds"], 1) if full else None,
        "full_acc_norm": full["metrics"]["acc_norm"] if full else None,
        "load_avg_1m_at_start": round(load[0], 2), "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    line = (f"eval (HellaSwag, {n} items, ~{model.num_params() / 1e6:.1f}M params, {torch.get_num_threads()} threads, "
            f"load {load[0]:.1f}): ours {result['ours_items_per_s']} items/s vs lm-eval hf "
            f"{result['lm_eval_hf_bs1_items_per_s']} (bs 1) / "
            f"{result[f'lm_eval_hf_bs{args.hf_batch_size}_items_per_s']} (bs {args.hf_batch_size}) items/s: "
            f"{result['speedup_vs_bs1']}x / {result[f'speedup_vs_bs{args.hf_batch_size}']}x (target 2x)"
            + (f"; full 10,042 items in {result['full_wall_s']} s" if full else ""))  # fmt: skip
    (RESULTS / "eval.md").write_text(line + "\n")
    print(json.dumps(result, indent=2))
    print(line)


if __name__ == "__main__":
    main()
