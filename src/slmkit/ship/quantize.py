"""`slm quantize`: a smaller, faster copy of a trained model, and a report of what it cost in quality.

Methods (every 2-D matrix — the blocks' projections, the output head and the token embedding — is quantized;
norms, biases and learned positions stay fp32):
- `int8-dynamic`: int8 weights with one fp32 scale per output row (symmetric), and at run time fbgemm's dynamically
  quantized matmul (each call quantizes its activations per tensor; see `DynamicInt8Linear`), with q/k/v and
  gate/up fused into one matmul each at load. The fastest on a CPU: decoding reads a quarter of the bytes. CPU only.
- `int8-weight`: the same int8 weights and scales on disk, dequantized to fp32 at load (weight-only: activations
  are never quantized, so it is the most accurate int8 variant; small on disk, fp32 speed). Our own code, no torchao.
- `bf16`: every floating-point tensor stored and run in bfloat16.

The artifact (its format is `slmkit.model.qweights`) is a directory that `checkpoint.load_model` (hence sample,
chat, eval, serve) loads like a run:

    OUT/
      quantization.json           method, source run and checkpoint, which tensors are int8
      config.toml, tokenizer/     copies from the source checkpoint
      model.safetensors           int8: `<name>.qweight` (int8, out x in) + `<name>.scale` (fp32, out); others as is
      quantization_report.json    size, speed, val loss / bpb and greedy agreement against fp32 (and .md)

The token embedding is stored as int8 rows too; a tied head shares it, so it is stored once (`wte`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from slmkit.base.atomic import atomic_dir, atomic_write_json, atomic_write_text
from slmkit.base.tokenizer import TokenizerError
from slmkit.engine.evaluate.loss import check_max_tokens, check_text_source, evaluate_text_loss
from slmkit.model.generate import generate
from slmkit.model.qweights import (
    METHODS,
    WEIGHTS_FILE,
    QuantizeError,
    build_model,
    is_quantized_dir,
    load_quantized,
    write_quantized,
)
from slmkit.runs.checkpoint import WEIGHTS_FILE as CKPT_WEIGHTS
from slmkit.runs.checkpoint import load_model, read_run_info

REPORT_FILE = "quantization_report"
AGREEMENT_PROMPTS = ("ROMEO:\n", "The king", "def main():\n", "Once upon a time", "First Citizen:\n", "import os\n",
                     "What is", "And then")  # fmt: skip
"""Fixed prompts of the greedy-agreement check (those the tokenizer cannot encode are skipped)."""


# ---------------------------------------------------------------------------------------------------------
# Measuring: speed, quality, agreement


@torch.inference_mode()
def _time_once(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generation with a KV cache."""
    cache = model.new_kv_cache(1, prompt.size(1) + new_tokens)
    t0 = time.perf_counter()
    logits, _ = model(prompt, kv_cache=cache, last_only=True)  # (1, 1, V)
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        nxt = logits[0, -1].argmax().view(1, 1)
        logits, _ = model(nxt, kv_cache=cache, last_only=True)
    return t1 - t0, time.perf_counter() - t1


def measure_speed(models: dict[str, nn.Module], prompt_len: int = 64, new_tokens: int = 64,
                  repeats: int = 5) -> dict[str, dict]:  # fmt: skip
    """Prefill and decode tokens/s at batch 1 of each model: the median over `repeats`, the models interleaved
    (so a busy machine slows them alike) after one warm-up each."""
    any_model = next(iter(models.values()))
    block, vocab = any_model.config.block_size, any_model.config.vocab_size
    prompt_len = max(1, min(prompt_len, block // 2))
    new_tokens = max(1, min(new_tokens, block - prompt_len))
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
    for r in range(repeats + 1):
        for name, m in models.items():
            t = _time_once(m, prompt, new_tokens)
            if r:
                times[name].append(t)
    out = {}
    for name, ts in times.items():
        pre, dec = float(np.median([t[0] for t in ts])), float(np.median([t[1] for t in ts]))
        out[name] = {"prefill_tok_s": prompt_len / pre, "decode_tok_s": new_tokens / dec,
                     "prompt_tokens": prompt_len, "decode_tokens": new_tokens}  # fmt: skip
    return out


def greedy_agreement(a: nn.Module, b: nn.Module, tokenizer, n_tokens: int = 32) -> dict:
    """How often greedy continuations of the fixed prompts agree: the share of prompts with identical
    continuations, and the mean fraction of tokens generated before the first difference."""

    exact, prefix, used = 0, [], 0
    for prompt in AGREEMENT_PROMPTS:
        try:
            ids = tokenizer.encode(prompt)
        except TokenizerError:
            continue
        ga = list(generate(a, ids, n_tokens, temperature=0, vocab_limit=tokenizer.vocab_size))
        gb = list(generate(b, ids, n_tokens, temperature=0, vocab_limit=tokenizer.vocab_size))
        same = next((i for i, (x, y) in enumerate(zip(ga, gb)) if x != y), min(len(ga), len(gb)))
        exact += ga == gb
        prefix.append(same / max(1, max(len(ga), len(gb))))
        used += 1
    return {"prompts": used, "tokens": n_tokens, "exact_match": exact / max(used, 1),
            "mean_common_prefix": float(np.mean(prefix)) if prefix else 0.0}  # fmt: skip


def _val_metrics(model: nn.Module, tokenizer, data: str | None, max_tokens: int) -> dict | None:
    if not data or not Path(data).exists():
        return None
    return evaluate_text_loss(model, tokenizer, data, max_tokens=max_tokens)


def build_report(fp32: nn.Module, quant: nn.Module, tokenizer, *, method: str, fp32_bytes: int, quant_bytes: int,
                 data: str | None = None, eval_tokens: int = 32768, speed_tokens: int = 64,
                 speed_repeats: int = 5) -> dict:  # fmt: skip
    """Compare `quant` with `fp32`: file size, prefill/decode tokens/s, val loss and bpb, greedy agreement."""
    speed = measure_speed({"fp32": fp32, method: quant}, speed_tokens, speed_tokens, speed_repeats)
    report = {"method": method, "threads": torch.get_num_threads(),
              "size": {"fp32_bytes": fp32_bytes, "quant_bytes": quant_bytes, "ratio": quant_bytes / fp32_bytes},
              "speed": {**speed, "decode_speedup": speed[method]["decode_tok_s"] / speed["fp32"]["decode_tok_s"],
                        "prefill_speedup": speed[method]["prefill_tok_s"] / speed["fp32"]["prefill_tok_s"]},
              "agreement": greedy_agreement(fp32, quant, tokenizer)}  # fmt: skip
    base, q = _val_metrics(fp32, tokenizer, data, eval_tokens), _val_metrics(quant, tokenizer, data, eval_tokens)
    if base is not None:
        report["quality"] = {"data": base["source"], "tokens": base["tokens"], "fp32_loss": base["loss"],
                             "quant_loss": q["loss"], "loss_delta": q["loss"] - base["loss"],
                             "loss_delta_pct": 100 * (q["loss"] - base["loss"]) / base["loss"],
                             "fp32_bpb": base["bpb"], "quant_bpb": q["bpb"],
                             "bpb_delta": q["bpb"] - base["bpb"]}  # fmt: skip
    return report


def format_report(r: dict) -> str:
    """The report as markdown."""
    m, s, sp = r["method"], r["size"], r["speed"]
    lines = [f"# Quantization report: {m}", "", f"Source: {r.get('source_run', '?')} ({r.get('checkpoint', '?')}); "
             f"{r['threads']} threads.", "", "| | fp32 | " + m + " | ratio |", "|---|---:|---:|---:|",
             f"| file size (MB) | {s['fp32_bytes'] / 1e6:.2f} | {s['quant_bytes'] / 1e6:.2f} | {s['ratio']:.3f} |",
             f"| decode tok/s (batch 1) | {sp['fp32']['decode_tok_s']:.1f} | {sp[m]['decode_tok_s']:.1f} | "
             f"{sp['decode_speedup']:.2f}x |",
             f"| prefill tok/s ({sp['fp32']['prompt_tokens']} tokens) | {sp['fp32']['prefill_tok_s']:.0f} | "
             f"{sp[m]['prefill_tok_s']:.0f} | {sp['prefill_speedup']:.2f}x |"]  # fmt: skip
    q = r.get("quality")
    if q:
        lines += [
            f"| val loss | {q['fp32_loss']:.4f} | {q['quant_loss']:.4f} | {q['loss_delta_pct']:+.2f}% |",
            f"| val bits/byte | {q['fp32_bpb']:.4f} | {q['quant_bpb']:.4f} | {q['bpb_delta']:+.4f} |",
        ]
    a = r["agreement"]
    lines += ["", f"Greedy agreement over {a['prompts']} fixed prompts x {a['tokens']} tokens: "
              f"{100 * a['exact_match']:.0f}% identical, {100 * a['mean_common_prefix']:.0f}% of tokens before the "
              "first difference (mean)."]  # fmt: skip
    if not q:
        lines.append("Val loss: no dataset found (pass --data DATASET_DIR).")
    if sp["decode_speedup"] < 1:
        lines.append(f"On this CPU {m} decodes {1 / sp['decode_speedup']:.1f}x slower than fp32 (fast int8 needs "
                     "AVX-512 VNNI or AVX-VNNI, fast bf16 AVX512-BF16 or AMX): serve the fp32 run when speed matters; "
                     "the smaller file stays.")  # fmt: skip
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# The verb


def _dataset_of(run_dir: Path) -> str | None:
    info = read_run_info(run_dir)
    return info.get("dataset")


def quantize(run_dir: str | Path, method: str = "int8-dynamic", out: str | Path | None = None, *,
             checkpoint: str = "best", data: str | None = None, eval_tokens: int = 32768, report: bool = True,
             force: bool = False, speed_tokens: int = 64, speed_repeats: int = 5) -> Path:  # fmt: skip
    """`slm quantize`: write the quantized artifact of a run's checkpoint (atomic) and, unless report=False, its
    quantization_report.json/.md against the fp32 model: val loss/bpb on `eval_tokens` tokens of `data` (default:
    the run's dataset), speed as the median of `speed_repeats` runs of a `speed_tokens`-token prompt then as many
    decoded tokens. Returns the artifact directory. A `data` that is given but cannot be read, or a negative
    eval_tokens, is refused before anything is written."""

    if method not in METHODS:
        raise QuantizeError(f"unknown quantization method {method!r}; use one of {', '.join(METHODS)}")
    check_max_tokens(eval_tokens)
    if data is not None:
        if not report:
            raise QuantizeError("--data is only read for the report; drop it or drop --no-report")
        check_text_source(data)
    run_dir = Path(run_dir)
    if is_quantized_dir(run_dir):
        raise QuantizeError(f"{run_dir} is already quantized; quantize the original run")
    out = Path(out) if out else run_dir.parent / f"{run_dir.name}-{method}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise QuantizeError(f"{out} exists and is not empty; pick another --out or pass --force to replace it")
    model, tokenizer, cfg, ckpt = load_model(run_dir, checkpoint)
    build_model(cfg)  # refuses LoRA runs
    source = {"source_run": str(run_dir), "checkpoint": str(ckpt)}
    with atomic_dir(out) as tmp:  # the report is made inside: if it fails, nothing is left (and --force kept the old)
        write_quantized(model, tokenizer, cfg, method, tmp, source)
        if report:
            quant = load_quantized(tmp)[0]
            r = build_report(
                model, quant, tokenizer, method=method, fp32_bytes=(ckpt / CKPT_WEIGHTS).stat().st_size,
                quant_bytes=(tmp / WEIGHTS_FILE).stat().st_size, data=data or _dataset_of(run_dir),
                eval_tokens=eval_tokens, speed_tokens=speed_tokens, speed_repeats=speed_repeats,
            )  # fmt: skip
            r.update(source)
            atomic_write_json(tmp / f"{REPORT_FILE}.json", r)
            atomic_write_text(tmp / f"{REPORT_FILE}.md", format_report(r))
    return out
