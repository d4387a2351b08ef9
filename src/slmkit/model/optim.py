"""Parameter groups, the optimizers (torch's AdamW, our Muon) and learning-rate schedules as pure functions.

Parameter groups follow nanoGPT's weight-decay rule: every trainable parameter with ndim >= 2 (weight matrices and
embeddings) is decayed, every parameter with ndim < 2 (norms, biases) is not. Under `optim.name = muon` the hidden
2-D matrices under `blocks.` are updated by Muon; embeddings, the head, norms and biases by AdamW, all inside one
optimizer so a checkpoint holds one state_dict.

Muon (Keller Jordan, "Muon: An optimizer for hidden layers in neural networks", 2024) is SGD with Nesterov
momentum whose update matrix is replaced by its nearest semi-orthogonal matrix U V^T (for update = U S V^T),
computed approximately with a few steps of a quintic Newton-Schulz iteration, then scaled by
sqrt(max(1, rows/cols)) so that tall and wide matrices get updates of a comparable RMS.

Schedules are pure functions of (step, cfg, max_steps); only the step needs checkpointing. `set_lr` applies the
schedule to every group relative to its `base_lr`, so the Muon groups follow the same shape at their own scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.adamw import adamw as functional_adamw

from slmkit.base.config import OptimConfig

# ---------------------------------------------------------------------------------------------------------
# Parameter groups


def _is_muon_matrix(name: str, p: nn.Parameter) -> bool:
    """Hidden 2-D weight matrices (attention and MLP projections inside the blocks) go to Muon."""
    return name.startswith("blocks.") and p.ndim == 2


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Split the trainable parameters into optimizer groups; frozen parameters (requires_grad=False) are left out.

    adamw: "decay" (ndim >= 2) and "no_decay" (ndim < 2).
    muon:  "muon" (2-D matrices under `blocks.`, lr = muon_lr), "adam_decay" (embeddings, head and any other
           ndim >= 2 parameter, lr = lr) and "adam_no_decay" (norms, biases).
    Each group has "params", "name", "weight_decay", "base_lr" and "lr"; under muon also "use_muon".
    Empty groups are dropped. Asserts every trainable parameter lands in exactly one group.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    if cfg.name == "muon":
        buckets = {"muon": [], "adam_decay": [], "adam_no_decay": []}
        for n, p in named:
            key = "muon" if _is_muon_matrix(n, p) else "adam_decay" if p.ndim >= 2 else "adam_no_decay"
            buckets[key].append(p)
        spec = {
            "muon": (cfg.muon_lr, cfg.weight_decay, True),
            "adam_decay": (cfg.lr, cfg.weight_decay, False),
            "adam_no_decay": (cfg.lr, 0.0, False),
        }
    else:
        buckets = {"decay": [p for _, p in named if p.ndim >= 2], "no_decay": [p for _, p in named if p.ndim < 2]}
        spec = {"decay": (cfg.lr, cfg.weight_decay, None), "no_decay": (cfg.lr, 0.0, None)}
    groups = []
    for name, params in buckets.items():
        if not params:
            continue
        base_lr, wd, use_muon = spec[name]
        group = {"params": params, "name": name, "weight_decay": wd, "base_lr": base_lr, "lr": base_lr}
        if use_muon is not None:
            group["use_muon"] = use_muon
        groups.append(group)
    check_param_groups(model, groups)
    return groups


def check_param_groups(model: nn.Module, groups: list[dict]) -> None:
    """Raise AssertionError naming the parameters that are missing from the groups, duplicated, or frozen."""
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {id(p) for n, p in model.named_parameters() if p.requires_grad}
    seen: dict[int, int] = {}
    for g in groups:
        for p in g["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    missing = [names[i] for i in trainable if i not in seen]
    duplicated = [names.get(i, "<not in model>") for i, c in seen.items() if c > 1]
    extra = [names.get(i, "<not in model>") for i in seen if i not in trainable]
    if missing or duplicated or extra:
        raise AssertionError(
            f"parameter groups are wrong: missing {missing}, in several groups {duplicated}, frozen or foreign {extra}"
        )


def describe_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """One row per group for logging: name, tensor count, element count, current lr, weight decay."""
    return [
        {
            "name": g.get("name", f"group{i}"),
            "tensors": len(g["params"]),
            "params": sum(p.numel() for p in g["params"]),
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
        }
        for i, g in enumerate(optimizer.param_groups)
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """torch's AdamW (fused where the parameters allow it: the fastest on CPU and GPU) or our Muon."""
    groups = param_groups(model, cfg)
    if cfg.name == "muon":
        return Muon(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, momentum=cfg.muon_momentum)
    fused = _can_fuse([p for g in groups for p in g["params"]]) or None  # None: torch picks foreach or for-loop
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


def _can_fuse(params: list[torch.Tensor]) -> bool:
    """torch's fused AdamW kernel needs floating-point CPU or CUDA tensors; it is 3-9x faster than the others on CPU."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


# ---------------------------------------------------------------------------------------------------------
# Muon

NS_COEFFS = (3.4445, -4.7750, 2.0315)
"""Quintic Newton-Schulz coefficients (a, b, c) from the Muon write-up: they push every singular value in (0, 1]
quickly into a band around 1 (roughly 0.7-1.2) rather than converging exactly, which is all the update needs."""


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalize a 2-D matrix: G = U S V^T -> ~U V^T, via the quintic iteration
    X <- a X + (b A + c A^2) X with A = X X^T. Computed in bf16 on GPU and fp32 elsewhere; returns G's dtype."""
    assert g.ndim == 2, f"newton_schulz needs a matrix, got shape {tuple(g.shape)}"
    a, b, c = NS_COEFFS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation so A = X X^T is the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm = 1, so every singular value is in (0, 1]
    for _ in range(steps):
        gram = x @ x.T  # (rows, rows)
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.T
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for groups with use_muon=True, AdamW for the others, in one optimizer (one state_dict).

    Muon step for a matrix W (rows, cols) with gradient G:
        buf <- momentum * buf + G;  U <- G + momentum * buf (Nesterov)
        W <- W * (1 - lr * weight_decay) - lr * sqrt(max(1, rows/cols)) * newton_schulz(U)
    AdamW groups run torch's functional AdamW (bias-corrected moments, decoupled weight decay), fused when
    every parameter allows it (`fused=None`), so they match torch.optim.AdamW exactly.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        fused: bool | None = None,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        nesterov=nesterov, ns_steps=ns_steps, use_muon=False, fused=fused)  # fmt: skip
        super().__init__(params, defaults)
        for g in self.param_groups:  # "fused" in a group also makes load_state_dict put "step" on the param's device
            if g["fused"] is None:
                g["fused"] = _can_fuse(g["params"])
            if g["use_muon"] and any(p.ndim != 2 for p in g["params"]):
                raise ValueError(f"Muon group {g.get('name', '')!r} holds a parameter that is not a 2-D matrix")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                self._muon_step(group, params)
            else:
                self._adamw_step(group, params)
        return loss

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, mu = group["lr"], group["momentum"]
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(p.grad)
            update = p.grad.add(buf, alpha=mu) if group["nesterov"] else buf
            ortho = newton_schulz(update, steps=group["ns_steps"])
            scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(ortho, alpha=-lr * scale)

    def _adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """torch's own AdamW kernel (fused where possible), so these groups match torch.optim.AdamW exactly."""
        if not params:
            return
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        functional_adamw(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            [s["step"] for s in states],
            fused=group["fused"],
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )


# ---------------------------------------------------------------------------------------------------------
# Learning-rate schedules (pure functions)


def warmup_steps(cfg: OptimConfig, max_steps: int) -> int:
    """optim.warmup as a step count: steps when >= 1, a fraction of max_steps when < 1; at most max_steps."""
    w = cfg.warmup if cfg.warmup >= 1 else cfg.warmup * max_steps
    return min(int(round(w)), max_steps)


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """The (AdamW) learning rate at 0-based `step`.

    Warmup is linear, lr * (step + 1) / warmup (nanoGPT's convention: never exactly 0). Then
    cosine:   cosine from lr at step=warmup down to min_lr at step=max_steps;
    wsd:      lr until the last decay_fraction of max_steps, then linear down to min_lr at step=max_steps;
    constant: lr.
    Steps past max_steps keep the final value.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    w = warmup_steps(cfg, max_steps)
    if step < w:
        return cfg.lr * (step + 1) / w
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        start = w
    else:  # wsd
        start = max(w, max_steps - int(round(cfg.decay_fraction * max_steps)))
    if step >= max_steps:
        return cfg.min_lr
    if step < start:
        return cfg.lr
    progress = (step - start) / (max_steps - start)  # in [0, 1)
    if cfg.schedule == "cosine":
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
    return cfg.lr + progress * (cfg.min_lr - cfg.lr)


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Set every group's lr to base_lr * lr_at(step) / cfg.lr; return lr_at(step)."""
    lr = lr_at(step, cfg, max_steps)
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * lr / cfg.lr
    return lr
