"""The quantized-weights format that `slm quantize` writes and every loader reads.

int8 matrices with one fp32 scale per output row (symmetric), the `DynamicInt8Linear` that runs them with
fbgemm's int8 kernels, and `load_quantized` for an artifact directory:

    OUT/
      quantization.json           method, source run and checkpoint, which tensors are int8
      config.toml, tokenizer/     copies from the source checkpoint
      model.safetensors           int8: `<name>.qweight` (int8, out x in) + `<name>.scale` (fp32, out); others as is

The token embedding is stored as int8 rows too; a tied head shares it, so it is stored once (`wte`). Making an
artifact and measuring what it cost is `slmkit.ship.quantize`.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, load_model, save_file, save_model

from slmkit import __version__
from slmkit.base.atomic import atomic_write_json
from slmkit.base.config import ConfigError, from_dict
from slmkit.base.config_files import read_toml, save_config
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import load_tokenizer
from slmkit.model.gpt import GPT
from slmkit.model.int8mm import int8_rows

METHODS = ("int8-dynamic", "int8-weight", "bf16")
QUANT_FILE, WEIGHTS_FILE, CONFIG_FILE = "quantization.json", "model.safetensors", "config.toml"
FORMAT_VERSION = 1


class QuantizeError(SlmError):
    """A quantization request that cannot be done (unknown method, device, missing data), or an artifact that
    cannot be read."""


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
    asks a Linear for its weight, device or dtype keeps working.

    Several rows (prefill, scoring) go through `int8mm.int8_rows` instead: fbgemm scales a whole call's activations
    by one number, and models with outlier channels (SmolLM2's down projections: one token's activations are
    hundreds of times the rest) lose every other row's precision to it (WikiText-2 loss +12.5% against +0.6% with
    a scale per row). Its integer product (`int8mm.int_mm`) is `torch._int_mm` where the CPU has int8 units, and
    exact fp32 matmuls elsewhere, where `torch._int_mm` is 10-20x slower than fp32."""

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
        if x.numel() > x.size(-1):  # several rows: each quantized with its own scale (`int8mm.int8_rows`)
            return int8_rows(self, x)
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


def build_model(cfg, dtype: torch.dtype = torch.float32) -> nn.Module:
    if cfg.lora.rank:
        raise QuantizeError("this run has unmerged LoRA adapters; run `slm lora merge RUN` and quantize the merged run")
    return GPT(cfg.model).to(dtype).eval()


def write_quantized(model: nn.Module, tokenizer, cfg, method: str, out: Path, source: dict) -> None:
    """Write the artifact files of `model` (fp32, ours) quantized with `method` into the empty directory out."""
    if method == "bf16":
        half = copy.deepcopy(model).to(torch.bfloat16)
        save_model(half, str(out / WEIGHTS_FILE), metadata={"format": "pt", "method": method})
        int8 = []
    else:
        sd = int8_state_dict(model)
        save_file(sd, str(out / WEIGHTS_FILE), metadata={"format": "pt", "method": method})
        int8 = sorted(k[: -len(".qweight")] for k in sd if k.endswith(".qweight"))
    save_config(cfg, out / CONFIG_FILE)
    tokenizer.save(out / "tokenizer")
    info = {"format_version": FORMAT_VERSION, "method": method, "int8": int8, "tokenizer_fingerprint":
            tokenizer.fingerprint, "slmkit": __version__, "created": time.time(), **source}  # fmt: skip
    atomic_write_json(out / QUANT_FILE, info)


def load_quantized(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, config, path) of a `slm quantize` artifact (what checkpoint.load_model
    returns for a run)."""
    path = Path(path)
    try:
        info = json.loads((path / QUANT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise QuantizeError(f"cannot read {path / QUANT_FILE}: {e}; re-run `slm quantize`") from None
    method = info.get("method")
    if method not in METHODS or info.get("format_version", 0) > FORMAT_VERSION:
        raise QuantizeError(f"{path}: unknown quantization {method!r} (format {info.get('format_version')})")
    if method == "int8-dynamic" and torch.device(device).type != "cpu":
        raise QuantizeError(f"{path} is int8-dynamic, which runs on CPU only; load it with device=cpu")
    try:
        cfg = from_dict(read_toml(path / CONFIG_FILE))
    except (OSError, ConfigError) as e:
        raise QuantizeError(f"cannot read {path / CONFIG_FILE}: {e}; re-run `slm quantize`") from None
    tokenizer = load_tokenizer(path / "tokenizer")
    model = build_model(cfg, torch.bfloat16 if method == "bf16" else torch.float32)
    if method == "bf16":  # saved with safetensors' save_model, which stores a tied matrix once
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    else:
        stored = load_file(str(path / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(_dequantized(stored, info["int8"]), strict=False)
        missing = [k for k in missing if k != "lm_head.weight" or not cfg.model.tie_embeddings]
    if missing or unexpected:
        raise QuantizeError(f"{path} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if method == "int8-dynamic":
        _swap_linears(model, stored)
    return model.to(device).eval(), tokenizer, cfg, path


def _dequantized(sd: dict[str, torch.Tensor], int8: list[str]) -> dict[str, torch.Tensor]:
    """A plain fp32 state dict: each int8 matrix as `<name>.weight`."""
    out = {k: v for k, v in sd.items() if not k.endswith((".qweight", ".scale")) or k[: k.rfind(".")] not in int8}
    for name in int8:
        out[f"{name}.weight"] = dequantize_rows(sd[f"{name}.qweight"], sd[f"{name}.scale"])
    return out
