"""`slm quantize`: a smaller, faster copy of a trained model, and a report of what it cost in quality.

Methods (every 2-D matrix — the blocks' projections, the output head and the token embedding — is quantized;
norms, biases and learned positions stay fp32):
- `int8-dynamic`: int8 weights with one fp32 scale per output row (symmetric), and at run time fbgemm's dynamically
  quantized matmul (each call quantizes its activations per tensor; see `DynamicInt8Linear`), with q/k/v and
  gate/up fused into one matmul each at load. The fastest on a CPU: decoding reads a quarter of the bytes. CPU only.
- `int8-weight`: the same int8 weights and scales on disk, dequantized to fp32 at load (weight-only: activations
  are never quantized, so it is the most accurate int8 variant; small on disk, fp32 speed). Our own code, no torchao.
- `bf16`: every floating-point tensor stored and run in bfloat16.

The artifact is a directory that `checkpoint.load_model` (hence sample, chat, eval, serve) loads like a run:

    OUT/
      quantization.json           method, source run and checkpoint, which tensors are int8
      config.toml, tokenizer/     copies from the source checkpoint
      model.safetensors           int8: `<name>.qweight` (int8, out x in) + `<name>.scale` (fp32, out); others as is
      quantization_report.json    size, speed, val loss / bpb and greedy agreement against fp32 (and .md)

The token embedding is stored as int8 rows too; a tied head shares it, so it is stored once (`wte`).
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from slmkit import __version__
from slmkit.atomic import atomic_dir, atomic_write_json, atomic_write_text
from slmkit.errors import SlmError

METHODS = ("int8-dynamic", "int8-weight", "bf16")
QUANT_FILE, WEIGHTS_FILE, REPORT_FILE = "quantization.json", "model.safetensors", "quantization_report"
FORMAT_VERSION = 1
AGREEMENT_PROMPTS = ("ROMEO:\n", "The king", "def main():\n", "Once upon a time", "First Citizen:\n", "import os\n",
                     "What is", "And then")  # fmt: skip
"""Fixed prompts of the greedy-agreement check (those the tokenizer cannot encode are skipped)."""


class QuantizeError(SlmError):
    """A quantization request that cannot be done (unknown method, device, missing data)."""


def is_quantized_dir(path: str | Path) -> bool:
    return (Path(path) / QUANT_FILE).is_file()


# ---------------------------------------------------------------------------------------------------------
# int8 weights: symmetric, one scale per output row


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weights (out, in), fp32 scales (out,)) with w ~= q * scale[:, None]; |q| <= 127."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (out,)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None]


def _vnni_fbgemm() -> bool:
    """Whether fbgemm runs here with AVX512-VNNI, whose int8 dot products accumulate in int32. Without VNNI they
    pass through a saturating int16 sum, which is why torch.ao quantizes activations to 7 bits for fbgemm."""
    return "fbgemm" in torch.backends.quantized.supported_engines and bool(
        torch.cpu.get_capabilities().get("avx512_vnni", False)
    )


class DynamicInt8Linear(nn.Module):
    """y = x W^T + b with W int8 per output row and the activations quantized per call (dynamic), by fbgemm.

    Two kernels, chosen once per process: on CPUs with AVX512-VNNI, fbgemm's plain int8 GEMM
    (`torch.fbgemm_linear_int8_weight_fp32_activation`: 8-bit activations, a ~2 us call, the row scales applied to
    its output); elsewhere `torch.ops.quantized.linear_dynamic` over a per-channel packed weight (7-bit activations
    with `reduce_range`, as torch.ao does for fbgemm; ~12 us per call, which dominates batch-1 decoding of small
    models). fbgemm's packed copy of the weight is made at the first call, so a projection replaced by a fused one
    never makes it, and it is never copied (a deep copy packs again). `weight` dequantizes on demand, so code that
    asks a Linear for its weight, device or dtype keeps working."""

    FAST = _vnni_fbgemm() and hasattr(torch, "fbgemm_linear_int8_weight_fp32_activation")

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self._run = None

    @classmethod
    def fused(cls, parts: list[DynamicInt8Linear]) -> DynamicInt8Linear:
        """One module computing every part on the same input, outputs concatenated (..., sum of out_features); the
        parts keep views of its weight rows, so nothing is stored twice."""
        biases = [m.bias for m in parts]
        bias = None if biases[0] is None else torch.cat(biases)
        fused = cls(torch.cat([m.qweight for m in parts]), torch.cat([m.scale for m in parts]), bias)
        row = 0
        for m in parts:
            rows = slice(row, row + m.out_features)
            m.qweight, m.scale = fused.qweight[rows], fused.scale[rows]
            m.bias = None if bias is None else fused.bias[rows]
            m._run, row = None, row + m.out_features
        return fused

    def _kernel(self):
        """The function x -> y, with fbgemm's packed weight in its closure."""
        q, scale, bias = self.qweight.contiguous(), self.scale, self.bias
        with warnings.catch_warnings():  # these ops are deprecated in torch 2.13 (each warns once) but still work
            warnings.simplefilter("ignore")
            if not self.FAST:
                zero = torch.zeros(self.out_features, dtype=torch.long)
                qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zero, 0)
                packed = torch.ops.quantized.linear_prepack(qw, bias)
                return lambda x: torch.ops.quantized.linear_dynamic(x.contiguous(), packed, True)
            packed, row_sums = torch.fbgemm_pack_quantized_matrix(q), q.sum(dim=1, dtype=torch.int32)  # (out,)
            no_bias = torch.zeros(self.out_features)

            def run(x: torch.Tensor) -> torch.Tensor:  # weight scale 1 and zero point 0: integer dot products
                y = torch.fbgemm_linear_int8_weight_fp32_activation(x, q, packed, row_sums, 1.0, 0, no_bias)
                return y.mul_(scale) if bias is None else y.mul_(scale).add_(bias)  # (..., out)

            run(torch.zeros(1, self.in_features))
            return run

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_run": None}

    @property
    def weight(self) -> torch.Tensor:
        return dequantize_rows(self.qweight, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._run is None:
            self._run = self._kernel()
        return self._run(x)  # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 dynamic"


def _matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> 2-D weight of every Linear and Embedding to quantize; a tied head is left to `wte`."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            if name == "lm_head" and mod.weight is getattr(model.wte, "weight", None):
                continue
            out[name] = mod.weight
    return out


def int8_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The file's tensors: `<m>.qweight` + `<m>.scale` for each matrix, every other tensor fp32 under its name."""
    mats = _matrices(model)
    sd = {}
    for name, w in mats.items():
        sd[f"{name}.qweight"], sd[f"{name}.scale"] = quantize_rows(w)
    skip = {f"{n}.weight" for n in mats} | {"lm_head.weight"}
    for key, t in model.state_dict().items():
        if key not in skip:
            sd[key] = t.detach().float().contiguous()
    return sd


def _swap_linears(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Replace every quantized nn.Linear (the tied head included) by a DynamicInt8Linear over the stored int8, then
    fuse the projections that read the same input into one matmul each: q/k/v as `attn.qkv`, and gate/up as
    `mlp.gate_up` (swiglu). Batch-1 decoding is bound by the per-call cost of the int8 op, so fewer calls is faster;
    the separate modules stay (views of the fused weight) for code that reads `attn.q.weight`."""
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            stored = "wte" if name == "lm_head" and f"{name}.qweight" not in sd else name
            bias = child.bias.detach() if child.bias is not None else None
            setattr(parent, child_name, DynamicInt8Linear(sd[f"{stored}.qweight"], sd[f"{stored}.scale"], bias))
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        attn.qkv = DynamicInt8Linear.fused([attn.q, attn.k, attn.v])
        if mlp.kind == "swiglu":
            mlp.gate_up = DynamicInt8Linear.fused([mlp.gate, mlp.up])


# ---------------------------------------------------------------------------------------------------------
# Writing and loading artifacts


def _build(cfg, dtype: torch.dtype = torch.float32) -> nn.Module:
    from slmkit.model import GPT

    if cfg.lora.rank:
        raise QuantizeError("this run has unmerged LoRA adapters; run `slm lora merge RUN` and quantize the merged run")
    return GPT(cfg.model).to(dtype).eval()


def write_quantized(model: nn.Module, tokenizer, cfg, method: str, out: Path, source: dict) -> None:
    """Write the artifact files of `model` (fp32, ours) quantized with `method` into the empty directory out."""
    from safetensors.torch import save_file, save_model

    from slmkit.config import save_config

    if method == "bf16":
        half = copy.deepcopy(model).to(torch.bfloat16)
        save_model(half, str(out / WEIGHTS_FILE), metadata={"format": "pt", "method": method})
        int8 = []
    else:
        sd = int8_state_dict(model)
        save_file(sd, str(out / WEIGHTS_FILE), metadata={"format": "pt", "method": method})
        int8 = sorted(k[: -len(".qweight")] for k in sd if k.endswith(".qweight"))
    save_config(cfg, out / "config.toml")
    tokenizer.save(out / "tokenizer")
    info = {"format_version": FORMAT_VERSION, "method": method, "int8": int8, "tokenizer_fingerprint":
            tokenizer.fingerprint, "slmkit": __version__, "created": time.time(), **source}  # fmt: skip
    atomic_write_json(out / QUANT_FILE, info)


def load_quantized(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, config, path) of a `slm quantize` artifact (what checkpoint.load_model
    returns for a run)."""
    from safetensors.torch import load_file, load_model

    from slmkit.checkpoint import CheckpointError, read_run_config
    from slmkit.tokenizer import load_tokenizer

    path = Path(path)
    try:
        info = json.loads((path / QUANT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path / QUANT_FILE}: {e}; re-run `slm quantize`") from None
    method = info.get("method")
    if method not in METHODS or info.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown quantization {method!r} (format {info.get('format_version')})")
    if method == "int8-dynamic" and torch.device(device).type != "cpu":
        raise CheckpointError(f"{path} is int8-dynamic, which runs on CPU only; load it with device=cpu")
    cfg = read_run_config(path)
    tokenizer = load_tokenizer(path / "tokenizer")
    model = _build(cfg, torch.bfloat16 if method == "bf16" else torch.float32)
    if method == "bf16":  # saved with safetensors' save_model, which stores a tied matrix once
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    else:
        stored = load_file(str(path / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(_dequantized(stored, info["int8"]), strict=False)
        missing = [k for k in missing if k != "lm_head.weight" or not cfg.model.tie_embeddings]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if method == "int8-dynamic":
        _swap_linears(model, stored)
    return model.to(device).eval(), tokenizer, cfg, path


def _dequantized(sd: dict[str, torch.Tensor], int8: list[str]) -> dict[str, torch.Tensor]:
    """A plain fp32 state dict: each int8 matrix as `<name>.weight`."""
    out = {k: v for k, v in sd.items() if not k.endswith((".qweight", ".scale")) or k[: k.rfind(".")] not in int8}
    for name in int8:
        out[f"{name}.weight"] = dequantize_rows(sd[f"{name}.qweight"], sd[f"{name}.scale"])
    return out


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
    from slmkit.generate import generate
    from slmkit.tokenizer import TokenizerError

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
    from slmkit.evaluate.loss import evaluate_text_loss

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
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# The verb


def _dataset_of(run_dir: Path) -> str | None:
    from slmkit.checkpoint import read_run_info

    info = read_run_info(run_dir)
    return info.get("dataset")


def quantize(run_dir: str | Path, method: str = "int8-dynamic", out: str | Path | None = None, *,
             checkpoint: str = "best", data: str | None = None, eval_tokens: int = 32768, report: bool = True,
             force: bool = False, speed_tokens: int = 64, speed_repeats: int = 5) -> Path:  # fmt: skip
    """`slm quantize`: write the quantized artifact of a run's checkpoint (atomic) and, unless report=False, its
    quantization_report.json/.md against the fp32 model: val loss/bpb on `eval_tokens` tokens of `data` (default:
    the run's dataset), speed as the median of `speed_repeats` runs of a `speed_tokens`-token prompt then as many
    decoded tokens. Returns the artifact directory."""
    from slmkit.checkpoint import WEIGHTS_FILE as CKPT_WEIGHTS
    from slmkit.checkpoint import load_model

    if method not in METHODS:
        raise QuantizeError(f"unknown quantization method {method!r}; use one of {', '.join(METHODS)}")
    run_dir = Path(run_dir)
    if is_quantized_dir(run_dir):
        raise QuantizeError(f"{run_dir} is already quantized; quantize the original run")
    out = Path(out) if out else run_dir.parent / f"{run_dir.name}-{method}"
    if out.exists() and any(out.iterdir()) and not force:
        raise QuantizeError(f"{out} exists and is not empty; pick another --out or pass --force to replace it")
    model, tokenizer, cfg, ckpt = load_model(run_dir, checkpoint)
    _build(cfg)  # refuses LoRA runs
    source = {"source_run": str(run_dir), "checkpoint": str(ckpt)}
    with atomic_dir(out) as tmp:
        write_quantized(model, tokenizer, cfg, method, tmp, source)
    if report:
        quant = load_quantized(out)[0]
        r = build_report(model, quant, tokenizer, method=method, fp32_bytes=(ckpt / CKPT_WEIGHTS).stat().st_size,
                         quant_bytes=(out / WEIGHTS_FILE).stat().st_size, data=data or _dataset_of(run_dir),
                         eval_tokens=eval_tokens, speed_tokens=speed_tokens, speed_repeats=speed_repeats)  # fmt: skip
        r.update(source)
        atomic_write_json(out / f"{REPORT_FILE}.json", r)
        atomic_write_text(out / f"{REPORT_FILE}.md", format_report(r))
    return out
