"""Quantization targets on a 6-layer 384-dim model: decode >= 3x fp32 at batch 1, size <= 0.5x, val loss +<= 2%.

Trains the model briefly when no --run is given (LLaMA-style 6 x 384, 6 heads, tied, bpe:4096 on TinyShakespeare,
block 128, 200 steps of 8 x 128 tokens), then runs `slm quantize` with each method and collects the reports.

    python benchmarks/bench_quantize.py [--run RUN] [--threads 2] [--out-dir /tmp/bench-quantize]

Writes benchmarks/results/quantize.json and quantize.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TRAIN = ["model.n_layer=6", "model.n_head=6", "model.n_kv_head=6", "model.n_embd=384", "model.block_size=128",
         "model.tie_embeddings=true", "data.source=tinyshakespeare", "tokenizer.kind=bpe:4096", "train.batch_size=8",
         "train.max_steps=200", "train.eval_every=100", "optim.warmup=20", "train.threads=1",
         "train.name=bench-6x384"]  # fmt: skip
TARGETS = {"decode_speedup": 3.0, "size_ratio": 0.5, "loss_delta_pct": 2.0}


def train_model(out_dir: Path) -> Path:
    from slmkit.base.config_files import load_config
    from slmkit.engine.train import train

    overrides = [*TRAIN, f"train.out_dir={out_dir}"]
    return train(load_config("llama-tiny", overrides), overrides=overrides, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an existing run to quantize (default: train the benchmark model)")
    ap.add_argument("--out-dir", default="/tmp/bench-quantize", help="where the run and artifacts go")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the timing (default: 2)")
    ap.add_argument("--eval-tokens", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    os.environ.setdefault("SLM_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    from slmkit.ship.quantize import METHODS, quantize

    out_dir = Path(args.out_dir)
    run = Path(args.run) if args.run else train_model(out_dir / "runs")
    torch.set_num_threads(args.threads)
    reports = {}
    for method in METHODS:
        t0 = time.time()
        art = quantize(run, method, out_dir / f"{run.name}-{method}", eval_tokens=args.eval_tokens,
                       speed_repeats=args.repeats, force=True)  # fmt: skip
        reports[method] = json.loads((art / "quantization_report.json").read_text())
        reports[method]["seconds"] = time.time() - t0
    r = reports["int8-dynamic"]
    met = {"decode_speedup": r["speed"]["decode_speedup"] >= TARGETS["decode_speedup"],
           "size_ratio": r["size"]["ratio"] <= TARGETS["size_ratio"],
           "loss_delta_pct": r["quality"]["loss_delta_pct"] <= TARGETS["loss_delta_pct"]}  # fmt: skip
    result = {"benchmark": "quantize", "run": str(run), "threads": args.threads, "cpu_count": os.cpu_count(),
              "load_avg": os.getloadavg(), "machine": platform.machine(), "torch": torch.__version__,
              "targets": TARGETS, "targets_met_int8_dynamic": met, "reports": reports}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantize.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"quantize ({run.name}, 6x384, {args.threads} threads, load avg {os.getloadavg()[0]:.1f} on "
             f"{os.cpu_count()} cores):"]  # fmt: skip
    for m, rep in reports.items():
        sp, q = rep["speed"], rep.get("quality", {})
        lines.append(f"- {m}: size {rep['size']['ratio']:.3f}x, decode {sp['decode_speedup']:.2f}x "
                     f"({sp['fp32']['decode_tok_s']:.0f} -> {sp[m]['decode_tok_s']:.0f} tok/s), prefill "
                     f"{sp['prefill_speedup']:.2f}x, val loss {q.get('loss_delta_pct', float('nan')):+.2f}% "
                     f"(bpb {q.get('bpb_delta', float('nan')):+.4f}), greedy agreement "
                     f"{100 * rep['agreement']['mean_common_prefix']:.0f}%")  # fmt: skip
    verdicts = ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items())
    lines.append(f"- targets (int8-dynamic): {verdicts}")
    (RESULTS / "quantize.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
