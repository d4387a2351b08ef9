"""LoRA (Hu et al., 2021): low-rank adapters added to a built model, `apply_lora(model, cfg)`.

Each targeted projection y = W x + b becomes y = W x + b + (alpha / rank) * B (A dropout(x)), with A (rank, in)
drawn like a Linear's weight and B (out, rank) zero, so a freshly adapted model computes exactly what the base
does. W and b stay frozen (every parameter but the adapters gets requires_grad=False), so the optimizer holds state
for the adapters only. `LoRALinear` keeps the projection's parameter names (`blocks.0.attn.q.weight`) and adds
`lora_a`, `lora_b`: base checkpoints load into an adapted model unchanged, and `merge_lora` folds B A into W and
gives back plain `nn.Linear` modules. Adapters are saved alone with `save_adapter` (a small safetensors file).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from slmkit.base.config import LoraConfig, ModelConfig
from slmkit.base.errors import SlmError
from slmkit.model.gpt import GPT

ATTN_TARGETS, MLP_TARGETS = ("q", "k", "v", "o"), ("up", "gate", "down")
ADAPTER_FILE = "adapter.safetensors"


class LoraError(SlmError):
    """LoRA cannot be applied as configured (targets matching nothing, no adapters to merge, ...)."""


class LoRALinear(nn.Linear):
    """A frozen Linear plus a trainable low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dt))  # (r, in)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # what nn.Linear does for its weight
        self.scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b)  # (..., out)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def merged(self) -> nn.Linear:
        """A plain Linear computing the same function (W + scale * B A)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        with torch.no_grad():
            w = self.weight + self.scale * (self.lora_b @ self.lora_a)
        out.weight = nn.Parameter(w, requires_grad=self.weight.requires_grad)
        out.bias = self.bias
        return out


def _expand(targets: list[str]) -> set[str]:
    names = set()
    for t in targets:
        if t == "mlp":
            names.update(MLP_TARGETS)
        elif t in ATTN_TARGETS + MLP_TARGETS:
            names.add(t)
        else:
            raise LoraError(f"lora.targets has {t!r}, which is not a projection; use q, k, v, o, up, gate, down or "
                            "mlp (= up, gate, down)")  # fmt: skip
    return names


def lora_targets(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Names of the Linear modules `cfg.targets` selects (`blocks.{i}.attn.{q,k,v,o}`, `blocks.{i}.mlp.{...}`)."""
    wanted = _expand(cfg.targets)
    found = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if isinstance(module, nn.Linear) and len(parts) >= 2 and parts[-1] in wanted and parts[-2] in ("attn", "mlp"):
            found.append(name)
    if not found:
        gate = ", gate" if any(n.endswith("mlp.gate") for n, _ in model.named_modules()) else ""
        raise LoraError(f"lora.targets {cfg.targets} match no module of this model (it has q, k, v, o, up, down"
                        f"{gate}); name some of those")  # fmt: skip
    return found


def check_targets(model_cfg: ModelConfig, cfg: LoraConfig) -> list[str]:
    """lora_targets on a model built on the meta device (no memory): checks a config before any run dir exists."""

    with torch.device("meta"):
        return lora_targets(GPT(model_cfg), cfg)


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Freeze `model` and wrap its targeted projections in LoRALinear (in place; returns the model)."""
    if cfg.rank <= 0:
        raise LoraError("lora.rank must be > 0 to apply LoRA")
    names = lora_targets(model, cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, LoRALinear(getattr(parent, attr), cfg.rank, cfg.alpha, cfg.dropout))
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its projection (in place); the model is then a plain GPT, all parameters trainable."""
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if not wrapped:
        raise LoraError("the model has no LoRA adapters to merge (lora.rank was 0)")
    for name in wrapped:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, getattr(parent, attr).merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (shared tensors counted once)."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if ".lora_" in n}


def save_adapter(model: nn.Module, path: str | Path) -> int:
    """Write the adapters alone (safetensors, atomically); returns the file size in bytes."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(adapter_state(model), str(tmp), metadata={"format": "pt", "kind": "lora"})
    tmp.replace(path)
    return path.stat().st_size


def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Load adapters saved by save_adapter into a model already wrapped by apply_lora with the same config."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    own = adapter_state(model)
    if set(tensors) != set(own):
        missing, extra = sorted(set(own) - set(tensors))[:3], sorted(set(tensors) - set(own))[:3]
        raise LoraError(f"{path} does not fit this model's adapters (missing {missing}, unexpected {extra}); "
                        "apply_lora with the run's lora config first")  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in tensors:
                p.copy_(tensors[name])
