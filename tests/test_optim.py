"""Optimizers and schedules against references: torch's AdamW, SVD, and hand-computed schedule values."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slmkit.base.config import OptimConfig
from slmkit.model.optim import (
    Muon,
    build_optimizer,
    check_param_groups,
    describe_groups,
    lr_at,
    newton_schulz,
    param_groups,
    set_lr,
    warmup_steps,
)

V, T, C = 16, 8, 32  # vocab, context, width of the stand-in model


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(C, C) for _ in range(4))

    def forward(self, x):  # (B, T, C)
        y = F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x), is_causal=True)
        return self.o(y)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.gate, self.down = nn.Linear(C, 2 * C), nn.Linear(C, 2 * C), nn.Linear(2 * C, C)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.LayerNorm(C), Attn(), nn.LayerNorm(C), Mlp()

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class StandIn(nn.Module):
    """The parameter names of slmkit's model: wte, wpe, blocks.{i}.*, norm_f, lm_head (tied to wte by default)."""

    def __init__(self, tied: bool = True, n_layer: int = 2):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block() for _ in range(n_layer))
        self.norm_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight
        for m in self.modules():  # GPT-2-like init so the initial loss is about log(V)
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx):  # (B, T) -> (B, T, V)
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.norm_f(x))


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int = 0, **kw) -> StandIn:
    torch.manual_seed(seed)
    return StandIn(**kw)


def _loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Task: copy the previous token (needs attention and positions); position 0 predicts itself."""
    target = torch.cat([idx[:, :1], idx[:, :-1]], dim=1)
    return F.cross_entropy(model(idx).flatten(0, 1), target.flatten())


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 1) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        loss = _loss(model, torch.randint(0, V, (16, T), generator=gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


def _group_names(model: nn.Module, groups: list[dict]) -> dict[str, set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}


# ---------------------------------------------------------------------------------------------------------
# Parameter groups


def test_adamw_groups_decay_matrices_and_embeddings_only():
    model = _model(tied=False)
    groups = param_groups(model, OptimConfig(weight_decay=0.1))
    by_name = _group_names(model, groups)
    assert set(by_name) == {"decay", "no_decay"}
    assert {"wte.weight", "wpe.weight", "lm_head.weight", "blocks.0.attn.q.weight", "blocks.1.mlp.down.weight"} <= (
        by_name["decay"]
    )
    assert all(n.endswith("bias") or "norm" in n for n in by_name["no_decay"])
    wd = {g["name"]: g["weight_decay"] for g in groups}
    assert wd == {"decay": 0.1, "no_decay": 0.0}
    n_decay = 2 * (4 + 3) + 3  # per block: q k v o + up gate down; plus wte, wpe, lm_head
    assert len(by_name["decay"]) == n_decay


def test_tied_head_appears_once():
    model = _model(tied=True)
    by_name = _group_names(model, param_groups(model, OptimConfig()))
    assert "wte.weight" in by_name["decay"] and "lm_head.weight" not in by_name["decay"]


def test_muon_groups():
    model = _model(tied=False)
    cfg = OptimConfig(name="muon", lr=3e-3, muon_lr=0.02, weight_decay=0.1)
    groups = param_groups(model, cfg)
    by_name = _group_names(model, groups)
    assert set(by_name) == {"muon", "adam_decay", "adam_no_decay"}
    assert by_name["adam_decay"] == {"wte.weight", "wpe.weight", "lm_head.weight"}
    assert len(by_name["muon"]) == 2 * 7 and all(n.startswith("blocks.") for n in by_name["muon"])
    assert all(n.endswith("bias") or "norm" in n for n in by_name["adam_no_decay"])
    info = {g["name"]: (g["base_lr"], g["weight_decay"], g["use_muon"]) for g in groups}
    assert info == {"muon": (0.02, 0.1, True), "adam_decay": (3e-3, 0.1, False), "adam_no_decay": (3e-3, 0.0, False)}


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_frozen_params_excluded(name):
    model = _model()
    for p in model.blocks[0].parameters():
        p.requires_grad_(False)
    groups = param_groups(model, OptimConfig(name=name))
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in in_groups for p in model.blocks[0].parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(model, OptimConfig(name=name))


def test_missing_duplicated_or_frozen_param_detected():
    model = _model()
    groups = param_groups(model, OptimConfig())
    check_param_groups(model, groups)
    missing = [dict(g, params=g["params"][1:]) if g["name"] == "decay" else g for g in groups]
    with pytest.raises(AssertionError, match="missing \\['wte.weight'\\]"):
        check_param_groups(model, missing)
    dup = groups + [{"params": [model.norm_f.weight], "name": "extra"}]
    with pytest.raises(AssertionError, match="several groups \\['norm_f.weight'\\]"):
        check_param_groups(model, dup)
    model.norm_f.bias.requires_grad_(False)
    with pytest.raises(AssertionError, match="frozen or foreign \\['norm_f.bias'\\]"):
        check_param_groups(model, groups)


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_describe_groups(name):
    model = _model()
    cfg = OptimConfig(name=name)
    rows = describe_groups(build_optimizer(model, cfg))
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in model.parameters())
    assert sum(r["tensors"] for r in rows) == len(list(model.parameters()))
    assert all(set(r) == {"name", "tensors", "params", "lr", "weight_decay"} for r in rows)


# ---------------------------------------------------------------------------------------------------------
# AdamW against torch.optim.AdamW


def test_adamw_matches_torch_reference():
    """Same groups through torch.optim.AdamW (same fused kernel): identical parameters after 20 training steps."""
    cfg = OptimConfig(lr=3e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    ours, ref = _model(tied=False), _model(tied=False)
    opt = build_optimizer(ours, cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]  # fused is the fastest on CPU
    decay = [p for p in ref.parameters() if p.ndim >= 2]
    no_decay = [p for p in ref.parameters() if p.ndim < 2]
    ref_opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3, betas=(0.9, 0.95), eps=1e-8, fused=True,
    )  # fmt: skip
    # same parameter order in both, so zip(parameters()) pairs them; the grouping is what is under test
    _train(ours, opt, 20)
    _train(ref, ref_opt, 20)
    diff = _max_diff(ours, ref)
    assert diff == 0.0, f"max abs diff {diff:.3g}"


def test_fused_adamw_matches_plain_loop_on_fixed_gradients():
    """The fused kernel vs torch's reference for-loop, fed the same gradients (no training feedback to amplify
    rounding differences, which reach ~3e-4 after 20 steps of training the stand-in model)."""
    cfg = OptimConfig(lr=3e-3, weight_decay=0.1)
    ours, ref = _model(tied=False), _model(tied=False)
    opt = build_optimizer(ours, cfg)
    ref_opt = torch.optim.AdamW(param_groups(ref, cfg), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        for a, b in zip(ours.parameters(), ref.parameters()):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt.step()
        ref_opt.step()
    diff = _max_diff(ours, ref)
    assert diff < 1e-6, f"max abs diff {diff:.3g}"


def test_muon_adam_groups_match_torch_adamw():
    """A model without blocks has no Muon matrices: Muon's AdamW groups must then equal torch's AdamW exactly."""
    torch.manual_seed(0)
    ours = nn.ModuleDict({"wte": nn.Embedding(V, C), "norm_f": nn.LayerNorm(C), "lm_head": nn.Linear(C, V)})
    ref = copy.deepcopy(ours)
    cfg = OptimConfig(name="muon", lr=1e-2, weight_decay=0.1)
    opt = build_optimizer(ours, cfg)
    ref_opt = torch.optim.AdamW(
        [{"params": [ref.wte.weight, ref.lm_head.weight], "weight_decay": 0.1},
         {"params": [ref.norm_f.weight, ref.norm_f.bias, ref.lm_head.bias], "weight_decay": 0.0}],
        lr=1e-2, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for m, o in ((ours, opt), (ref, ref_opt)):
        gen.manual_seed(0)
        for _ in range(20):
            idx = torch.randint(0, V, (32,), generator=gen)
            loss = F.cross_entropy(m.lm_head(m.norm_f(m.wte(idx))), (idx * 3 + 1) % V)
            o.zero_grad()
            loss.backward()
            o.step()
    for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
        diff = (a - b).abs().max().item()
        assert diff == 0.0, f"{n}: max abs diff {diff:.3g}"


# ---------------------------------------------------------------------------------------------------------
# Muon


@pytest.mark.parametrize("shape", [(32, 128), (128, 32), (96, 64)])
def test_newton_schulz_singular_values_near_one(shape):
    torch.manual_seed(0)
    s = torch.linalg.svdvals(newton_schulz(torch.randn(*shape)))
    # the quintic iteration lands every singular value in a band around 1 (observed here: 0.68 .. 1.14)
    assert 0.5 < s.min() and s.max() < 1.5, f"singular values in [{s.min():.3f}, {s.max():.3f}]"


def test_newton_schulz_approximates_polar_factor():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 48))  # (64, 48) orthonormal columns
    v, _ = torch.linalg.qr(torch.randn(48, 48))
    s = torch.linspace(0.1, 10.0, 48)  # condition number 100
    g = u @ torch.diag(s) @ v.T
    target = u @ v.T
    out = newton_schulz(g)
    rel = ((out - target).norm() / target.norm()).item()
    cos = F.cosine_similarity(out.flatten(), target.flatten(), dim=0).item()
    assert rel < 0.3 and cos > 0.97, f"relative error {rel:.3f}, cosine {cos:.4f}"
    assert newton_schulz(g.double()).dtype == torch.float64


def test_muon_update_is_orthogonal_and_scaled():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(64, 16))  # tall: scale sqrt(64/16) = 2
    w0 = w.detach().clone()
    w.grad = torch.randn(64, 16)
    lr = 0.1
    Muon([{"params": [w], "use_muon": True, "lr": lr}], momentum=0.9, weight_decay=0.0).step()
    delta = (w0 - w.detach()) / (lr * 2.0)
    s = torch.linalg.svdvals(delta)
    assert 0.5 < s.min() and s.max() < 1.5, f"singular values in [{s.min():.3f}, {s.max():.3f}]"
    with pytest.raises(ValueError, match="not a 2-D matrix"):
        Muon([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": True}])


def test_muon_weight_decay_is_decoupled():
    w = nn.Parameter(torch.ones(8, 8))
    w.grad = torch.zeros(8, 8)  # zero gradient: only the decay acts
    Muon([{"params": [w], "use_muon": True, "lr": 0.1, "weight_decay": 0.5}]).step()
    torch.testing.assert_close(w.detach(), torch.full((8, 8), 0.95))


@pytest.mark.parametrize("name", ["muon", "adamw"])
def test_optimizer_trains_stand_in(name):
    model = _model()
    cfg = OptimConfig(name=name, lr=3e-3, muon_lr=0.02, weight_decay=0.0)
    opt = build_optimizer(model, cfg)
    losses = _train(model, opt, 150)
    start, end = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert start > 0.9 * math.log(V) and end < 0.2 * start, f"{name}: loss {start:.3f} -> {end:.3f}"


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_state_dict_round_trip(name):
    cfg = OptimConfig(name=name, lr=3e-3, weight_decay=0.1)
    model = _model()
    opt = build_optimizer(model, cfg)
    _train(model, opt, 5, seed=1)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    _train(model, opt, 5, seed=2)  # uninterrupted

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = _model(seed=123)
    resumed.load_state_dict(saved["model"])
    opt2 = build_optimizer(resumed, cfg)
    opt2.load_state_dict(saved["optim"])
    assert [g["name"] for g in opt2.param_groups] == [g["name"] for g in opt.param_groups]
    _train(resumed, opt2, 5, seed=2)
    assert _max_diff(model, resumed) == 0.0


# ---------------------------------------------------------------------------------------------------------
# Schedules at named steps


def test_warmup_steps_from_steps_or_fraction():
    assert warmup_steps(OptimConfig(warmup=100), 1000) == 100
    assert warmup_steps(OptimConfig(warmup=0.1), 1000) == 100
    assert warmup_steps(OptimConfig(warmup=0.29), 100) == 29  # 0.29 * 100 = 28.999999999999996
    assert warmup_steps(OptimConfig(warmup=0), 1000) == 0
    assert warmup_steps(OptimConfig(warmup=5000), 1000) == 1000


def _cfg(schedule: str, warmup: float) -> OptimConfig:
    return OptimConfig(lr=1.0, min_lr=0.1, schedule=schedule, warmup=warmup, decay_fraction=0.2)


@pytest.mark.parametrize("warmup", [100, 0.1])  # both mean 100 steps of max_steps = 1000
def test_schedules_at_named_steps(warmup):
    M = 1000
    approx = pytest.approx
    for schedule in ("cosine", "wsd", "constant"):
        cfg = _cfg(schedule, warmup)
        assert lr_at(0, cfg, M) == approx(0.01)  # lr * 1/100
        assert lr_at(49, cfg, M) == approx(0.5)
        assert lr_at(99, cfg, M) == approx(1.0)  # last warmup step reaches lr
        assert lr_at(100, cfg, M) == approx(1.0)  # first step after warmup
    cos = _cfg("cosine", warmup)
    assert lr_at(550, cos, M) == approx(0.55)  # halfway through the cosine: (lr + min_lr) / 2
    assert lr_at(999, cos, M) == approx(0.1 + 0.45 * (1 + math.cos(math.pi * 899 / 900)))
    assert lr_at(1000, cos, M) == approx(0.1) and lr_at(5000, cos, M) == approx(0.1)
    wsd = _cfg("wsd", warmup)  # decay over the last 200 steps: 800 .. 1000
    assert lr_at(500, wsd, M) == approx(1.0) and lr_at(799, wsd, M) == approx(1.0)
    assert lr_at(800, wsd, M) == approx(1.0)
    assert lr_at(900, wsd, M) == approx(0.55)
    assert lr_at(999, wsd, M) == approx(1.0 - 0.9 * 199 / 200)
    assert lr_at(1000, wsd, M) == approx(0.1) and lr_at(5000, wsd, M) == approx(0.1)
    const = _cfg("constant", warmup)
    assert [lr_at(s, const, M) for s in (500, 999, 1000, 5000)] == approx([1.0] * 4)


def test_schedules_without_warmup_and_monotone():
    M = 300
    for schedule in ("cosine", "wsd", "constant"):
        cfg = _cfg(schedule, 0)
        assert lr_at(0, cfg, M) == pytest.approx(1.0)
        lrs = [lr_at(s, cfg, M) for s in range(M + 1)]
        assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])), schedule
        assert all(0.1 - 1e-12 <= x <= 1.0 for x in lrs)
    with pytest.raises(ValueError):
        lr_at(-1, _cfg("cosine", 0), M)


def test_set_lr_scales_every_group_by_its_base_lr():
    cfg = OptimConfig(name="muon", lr=1e-3, min_lr=1e-4, muon_lr=0.02, warmup=10, schedule="cosine")
    opt = build_optimizer(_model(), cfg)
    lr = set_lr(opt, 4, cfg, 100)
    assert lr == pytest.approx(1e-3 * 5 / 10)
    got = {g["name"]: g["lr"] for g in opt.param_groups}
    assert got == pytest.approx({"muon": 0.01, "adam_decay": 5e-4, "adam_no_decay": 5e-4})
    set_lr(opt, 100, cfg, 100)
    assert {g["name"]: g["lr"] for g in opt.param_groups}["muon"] == pytest.approx(0.002)  # 0.02 * min_lr / lr
