"""The training doctor: one synthetic metric stream per rule, a healthy stream with no findings, the live doctor,
and real induced failures on tiny CPU runs (lr=1.0, lr=1e-7, a garbage data window with and without rollback)."""

from __future__ import annotations

import math
import random

import pytest
from conftest import tiny_overrides

from slmkit.engine.doctor import Finding, LiveDoctor, RunFacts, diagnose, format_findings

N = 600
TOK = 4096  # tokens per step
FACTS = RunFacts(params=100_000, grad_clip=1.0, warmup=30, max_steps=N)  # 600*4096/1e5 = 24.6 tokens/param


def healthy_loss(t: int) -> float:
    return 1.5 + 2.5 * math.exp(-t / 60) + 0.3 * (1 - t / N)


def stream(loss=healthy_loss, gnorm=lambda t: 0.5 + 0.3 * math.exp(-t / 50), val=None, lr=1e-3, n=N,
           noise=0.03, seed=0) -> list[dict]:  # fmt: skip
    """Synthetic metrics.jsonl events: warmup + cosine LR, noisy loss and grad norm, an eval every 50 steps."""
    rng = random.Random(seed)
    val = val or (lambda t: healthy_loss(t) + 0.05)
    events = []
    for t in range(1, n + 1):
        g = gnorm(t) * math.exp(rng.gauss(0, 0.05))
        cur_lr = lr * min(1.0, t / 30) * (0.55 + 0.45 * math.cos(math.pi * t / n))
        events.append({"step": t, "train/loss": loss(t) + rng.gauss(0, noise), "train/grad_norm": g,
                       "train/lr": cur_lr, "train/tokens": t * TOK, "train/clipped": int(g > 1.0)})  # fmt: skip
        if t % 50 == 0:
            events.append({"step": t, "val/loss": val(t)})
    return events


def rules(findings: list[Finding]) -> set[str]:
    return {f.rule for f in findings}


def test_healthy_stream_has_no_findings():
    found = diagnose(stream(), FACTS)
    assert found == [], format_findings(found)
    assert "healthy" in format_findings(found)


def test_loss_spike_found_and_recovered():
    found = diagnose(stream(loss=lambda t: healthy_loss(t) + (3.0 if 300 <= t <= 302 else 0.0)), FACTS)
    spikes = [f for f in found if f.rule == "loss_spike"]
    assert len(spikes) == 1, format_findings(found)
    f = spikes[0]
    assert (f.start, f.end) == (300, 302) and f.severity == "warning" and "recovered after 3 step" in f.what
    assert "running median" in f.what and f.why and f.fix


def test_loss_spike_that_does_not_recover_is_an_error():
    found = diagnose(stream(loss=lambda t: healthy_loss(t) + (1.5 if t >= 550 else 0.0)), FACTS)
    spikes = [f for f in found if f.rule == "loss_spike"]
    assert spikes and spikes[0].severity == "error" and spikes[0].start == 550, format_findings(found)


def test_recurring_spikes_point_to_data():
    found = diagnose(stream(loss=lambda t: healthy_loss(t) + (2.5 if t % 100 == 0 else 0.0)), FACTS)
    rec = [f for f in found if f.rule == "recurring_spikes"]
    assert rec and "interval of about 100 steps" in rec[0].what and "data" in rec[0].why, format_findings(found)


def test_divergence_nan():
    found = diagnose(stream(loss=lambda t: float("nan") if t >= 400 else healthy_loss(t)), FACTS)
    div = [f for f in found if f.rule == "divergence"]
    assert div and div[0].start == 400 and div[0].severity == "error" and "nan" in div[0].what


def test_divergence_rising_loss():
    found = diagnose(stream(loss=lambda t: healthy_loss(t) + max(0, t - 300) * 0.01), FACTS)
    div = [f for f in found if f.rule == "divergence"]
    assert div and 250 <= div[0].start <= 320, format_findings(found)
    assert "too_low_lr" not in rules(found) and "early_plateau" not in rules(found)


def test_early_plateau_stuck_at_start():
    def loss(t):
        return 4.2 if t < 200 else 1.5 + 2.7 * math.exp(-(t - 200) / 60)

    found = diagnose(stream(loss=loss), FACTS)
    assert "early_plateau" in rules(found), format_findings(found)


def test_early_plateau_after_quick_drop():
    found = diagnose(stream(loss=lambda t: 2.0 + 2.2 * math.exp(-t / 15)), FACTS)
    p = [f for f in found if f.rule == "early_plateau"]
    assert p and "stopped improving" in p[0].what, format_findings(found)


def test_gradient_explosion():
    found = diagnose(stream(gnorm=lambda t: 40.0 if t == 250 else 0.5), FACTS)
    g = [f for f in found if f.rule == "grad_explosion"]
    assert g and g[0].start == 250 and "worst 4" in g[0].what, format_findings(found)


def test_gradient_collapse():
    found = diagnose(stream(gnorm=lambda t: 1e-12 if t >= 400 else 0.5), FACTS)
    g = [f for f in found if f.rule == "grad_collapse"]
    assert g and g[0].start == 400 and g[0].severity == "error", format_findings(found)


def test_constant_clipping():
    found = diagnose(stream(gnorm=lambda t: 3.0), FACTS)
    c = [f for f in found if f.rule == "constant_clipping"]
    assert c and "100%" in c[0].what and "optim.lr" in c[0].fix, format_findings(found)


def test_overfitting():
    def val(t):
        return healthy_loss(t) + 0.05 + (0.004 * (t - 300) if t > 300 else 0.0)

    found = diagnose(stream(val=val), FACTS)
    o = [f for f in found if f.rule == "overfitting"]
    assert o and o[0].start == 300 and "val loss rose" in o[0].what, format_findings(found)


def test_too_little_warmup():
    found = diagnose(stream(loss=lambda t: healthy_loss(t) + (3.0 if 3 <= t <= 8 else 0.0)), FACTS)
    w = [f for f in found if f.rule == "warmup"]
    assert w and "optim.warmup is 30 steps" in w[0].why, format_findings(found)


def test_too_low_lr():
    found = diagnose(stream(loss=lambda t: 4.2 - 0.0001 * t, lr=1e-7), FACTS)
    assert "too_low_lr" in rules(found) and "early_plateau" not in rules(found), format_findings(found)
    f = next(f for f in found if f.rule == "too_low_lr")
    assert "peak LR of 9.9e-08" in f.what


def test_under_training_vs_chinchilla():
    found = diagnose(stream(), RunFacts(params=10_000_000, grad_clip=1.0, warmup=30))
    u = [f for f in found if f.rule == "under_training"]
    assert len(found) == 1 and u and u[0].severity == "info" and "0.25 tokens per parameter" in u[0].what


def test_live_doctor_reports_each_episode_once():
    doc = LiveDoctor(grad_clip=1.0, warmup=30)
    seen = []
    for e in stream(loss=lambda t: healthy_loss(t) + (3.0 if 300 <= t <= 305 or 400 <= t <= 402 else 0.0)):
        if "train/loss" in e:
            seen += [(e["step"], f.rule) for f in doc.observe(e["step"], e)]
    assert seen == [(300, "loss_spike"), (400, "loss_spike")]


def test_live_doctor_guard_gives_up_on_a_new_level():
    doc = LiveDoctor(max_guard=5)
    for t in range(50):
        doc.observe(t, {"train/loss": 2.0 + 0.01 * (t % 3), "train/grad_norm": 0.5})
    assert doc.is_spike(5.0) and not doc.is_spike(2.01)
    for t in range(50, 55):
        doc.observe(t, {"train/loss": 5.0, "train/grad_norm": 0.5})
    assert not doc.is_spike(5.0)  # 5 flagged in a row: the guard stops skipping


def test_live_doctor_clipping_and_collapse():
    doc = LiveDoctor(grad_clip=1.0, warmup=5)
    rules_seen = []
    for t in range(1, 200):
        g = 3.0 if t < 100 else 1e-12
        rules_seen += [f.rule for f in doc.observe(t, {"train/loss": 3.0 - 0.005 * t, "train/grad_norm": g,
                                                        "train/clipped": int(g > 1)})]  # fmt: skip
    assert rules_seen.count("constant_clipping") == 1 and rules_seen.count("grad_collapse") == 1
    flat = LiveDoctor(grad_clip=1.0, warmup=5)  # a loss that does not move: clipping is the init's gradient
    assert not [f for t in range(1, 100) for f in flat.observe(t, {"train/loss": 5.0, "train/grad_norm": 2.0,
                                                                   "train/clipped": 1})]  # fmt: skip


def test_live_doctor_nan():
    doc = LiveDoctor()
    out = doc.observe(7, {"train/loss": float("nan"), "train/grad_norm": float("nan")})
    assert [f.rule for f in out] == ["divergence"] and out[0].start == 7


def test_cli_doctor_on_missing_run(run_cli, tmp_path):
    code, _, err = run_cli("doctor", tmp_path / "nope")
    assert code == 2 and "does not exist" in err


# ---------------------------------------------------------------------------------------------------------
# Real induced failures on tiny CPU runs.

# bigger batches, a longer warmup and quiet logs; every run sets its own train.max_steps and train.eval_every
RUN = tiny_overrides("train.batch_size=8", "train.eval_batches=4", "train.log_every=1000", "optim.warmup=10",
                     drop=("train.max_steps", "train.eval_every"))  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return tiny_dataset(0.2)


def tiny_run(dataset, tmp_path, name, *extra):
    from slmkit.base.config_files import load_config
    from slmkit.engine.train import train

    ov = [*RUN, f"data.dir={dataset}", f"train.out_dir={tmp_path / 'runs'}", f"train.name={name}", *extra]
    return train(load_config(None, ov), overrides=ov, progress=False)


@pytest.mark.slow
def test_real_lr_1_explodes_or_diverges(dataset, tmp_path):
    from slmkit.engine.trainer import TrainingDiverged

    try:
        run = tiny_run(dataset, tmp_path, "lr1", "optim.lr=1.0", "optim.min_lr=0.1", "train.max_steps=150",
                       "train.eval_every=50")  # fmt: skip
    except TrainingDiverged:
        run = tmp_path / "runs" / "lr1"
    found = diagnose(run)
    assert rules(found) & {"grad_explosion", "divergence"}, format_findings(found)


@pytest.mark.slow
def test_real_lr_1e7_is_too_low(dataset, tmp_path):
    run = tiny_run(dataset, tmp_path, "lrlow", "optim.lr=1e-7", "optim.min_lr=1e-8", "train.max_steps=100",
                   "train.eval_every=50")  # fmt: skip
    found = diagnose(run)
    assert "too_low_lr" in rules(found), format_findings(found)


def _inject_garbage(monkeypatch, first: int, count: int):
    """Make the train loader return random tokens for `count` batches starting at batch `first`."""
    import torch

    from slmkit.data.loader import TokenLoader

    real, calls = TokenLoader.next_batch, []

    def next_batch(self):
        x, y = real(self)
        if self.split == "train":
            calls.append(1)
            if first <= len(calls) < first + count:
                g = torch.Generator().manual_seed(len(calls))
                x = torch.randint(0, 60, x.shape, generator=g)
                y = torch.randint(0, 60, y.shape, generator=g)
        return x, y

    monkeypatch.setattr(TokenLoader, "next_batch", next_batch)


SPIKE_RUN = ["optim.lr=3e-3", "optim.min_lr=3e-4", "train.max_steps=200", "train.eval_every=40"]


@pytest.mark.slow
def test_real_garbage_window_spike_and_rollback(dataset, tmp_path, monkeypatch):
    from slmkit.base.metrics import read_metrics, series

    clean = tiny_run(dataset, tmp_path, "clean", *SPIKE_RUN)
    _inject_garbage(monkeypatch, 130, 8)
    spiky = tiny_run(dataset, tmp_path, "spiky", *SPIKE_RUN)
    found = diagnose(spiky)
    assert "loss_spike" in rules(found), format_findings(found)
    assert any(k.startswith("doctor/loss_spike") for e in read_metrics(spiky) for k in e)  # logged live

    _inject_garbage(monkeypatch, 130, 8)
    guarded = tiny_run(dataset, tmp_path, "guarded", *SPIKE_RUN, "train.on_spike=rollback")
    events = list(read_metrics(guarded))
    assert any("doctor/rollback" in e for e in events)
    v_clean, v_guarded = series(clean, "val/loss")[1][-1], series(guarded, "val/loss")[1][-1]
    v_spiky = series(spiky, "val/loss")[1][-1]
    print(f"final val loss: clean {v_clean:.4f}, rolled back {v_guarded:.4f}, spiky {v_spiky:.4f}")
    assert abs(v_guarded - v_clean) < 0.05, (v_clean, v_guarded, series(spiky, "val/loss")[1][-1])
