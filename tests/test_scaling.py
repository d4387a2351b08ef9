"""Scaling: calculator arithmetic, the fit recovering a known law from noisy synthetic runs, the map, and a real
(tiny) sweep of 4 sizes on CPU that produces a fit and a plot."""

import json
import math

import numpy as np
import pytest

from slmkit.base.config_files import load_config
from slmkit.study.scaling import (
    KNOWN_MODELS,
    LawFit,
    RunPoint,
    ScalingError,
    calculate,
    compute_optimal,
    fit_frontier,
    fit_law,
    frontier,
    model_size,
    parse_count,
    parse_duration,
    plan_sweep,
    plot_map,
    sqrt_lr,
    sweep,
)

CHINCHILLA = LawFit(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28, n_points=0)  # Hoffmann et al. 2022, eq. 10


def test_parse_numbers_and_durations():
    assert parse_count("124M") == 124e6 and parse_count("1.5B") == 1.5e9 and parse_count("2T") == 2e12
    assert parse_count("3e18") == 3e18 and parse_count("1_000") == 1000
    assert parse_duration("90s") == 90 and parse_duration("10m") == 600 and parse_duration("2h") == 7200
    assert parse_duration("1e18") is None
    with pytest.raises(ScalingError, match="124M"):
        parse_count("lots")


def test_calculator_arithmetic():
    c = calculate(params=124e6)
    assert c.tokens == pytest.approx(2.48e9) and c.flops == pytest.approx(6 * 124e6 * 2.48e9)
    assert calculate(tokens=2e12).params == pytest.approx(1e11)
    n, d = compute_optimal(1e21)
    assert 6 * n * d == pytest.approx(1e21) and d == pytest.approx(20 * n)
    assert sqrt_lr(1e-3, 16, 64) == pytest.approx(2e-3)
    c = calculate(lr=3e-3, batch=(64, 16))
    assert c.lr == pytest.approx(1.5e-3)


def test_calculator_uses_the_models_flops_and_a_time_budget():
    cfg = load_config("gpt2-124m")
    n, fpt = model_size(cfg.model, 50257)
    assert 124e6 < n < 125e6  # GPT-2 small, tied head, vocab padded to 50304
    assert fpt > 6 * n  # the attention term
    c = calculate(cfg=cfg, tokens=10e9)
    assert c.params == n and c.flops == pytest.approx(fpt * 10e9)
    t = calculate(budget="2h", flops_per_s=1e12)
    assert t.flops == pytest.approx(7.2e15) and t.seconds == 7200
    with pytest.raises(ScalingError, match="--measure"):
        calculate(budget="2h")


def _synthetic(law: LawFit, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    n, d = np.meshgrid(np.logspace(7, 10, 6), np.logspace(9, 12, 6))
    n, d = n.ravel(), d.ravel()
    return n, d, law.predict(n, d) * np.exp(rng.normal(0, noise, n.size))


def test_fit_recovers_a_known_law_from_noisy_runs():
    n, d, loss = _synthetic(CHINCHILLA, noise=0.003, seed=0)
    fit = fit_law(n, d, loss, n_boot=20)
    assert fit.alpha == pytest.approx(CHINCHILLA.alpha, abs=0.02), fit
    assert fit.beta == pytest.approx(CHINCHILLA.beta, abs=0.02), fit
    assert fit.E == pytest.approx(CHINCHILLA.E, abs=0.05), fit
    assert fit.predict(1e11, 1e13) == pytest.approx(CHINCHILLA.predict(1e11, 1e13), rel=0.01)
    assert set(fit.std) == {"E", "A", "alpha", "B", "beta"} and fit.std["alpha"] < 0.05
    n_opt, d_opt, _ = fit.optimal(1e23)
    n_true, d_true, _ = CHINCHILLA.optimal(1e23)
    assert n_opt == pytest.approx(n_true, rel=0.3) and 6 * n_opt * d_opt == pytest.approx(1e23)


def test_optimal_allocation_is_the_minimum_along_the_isoflop_line():
    c = 1e21
    ns = np.logspace(8, 11, 20001)
    brute = ns[np.argmin(CHINCHILLA.predict(ns, c / (6 * ns)))]
    assert CHINCHILLA.optimal(c)[0] == pytest.approx(brute, rel=1e-3)


def test_frontier_fit_recovers_gamma():
    rng = np.random.default_rng(1)
    flops = np.logspace(12, 18, 10)
    loss = (2.0 + 60.0 / flops**0.12) * np.exp(rng.normal(0, 0.002, flops.size))
    fit = fit_frontier(flops, loss, n_boot=10)
    assert fit.gamma == pytest.approx(0.12, abs=0.02) and fit.E == pytest.approx(2.0, abs=0.1)
    pts = [RunPoint("a", 1, 1, 1.0, 3.0), RunPoint("b", 1, 1, 2.0, 3.5), RunPoint("c", 1, 1, 4.0, 2.5)]
    assert [p.name for p in frontier(pts)] == ["a", "c"]


def test_too_few_runs_is_a_clear_error():
    with pytest.raises(ScalingError, match="at least 5"):
        fit_law([1e6, 1e7], [1e8, 1e9], [3.0, 2.5])


def test_map_has_the_known_models(tmp_path):
    names = {name for name, *_ in KNOWN_MODELS}
    for must in ("GPT-2 124M", "GPT-2 1.5B", "GPT-3 175B", "Chinchilla 70B", "LLaMA 65B", "Llama-3 8B",
                 "SmolLM2 135M", "SmolLM2 360M", "TinyStories 33M"):  # fmt: skip
        assert must in names
    out = plot_map(tmp_path / "map.png", [RunPoint("mine", 3e4, 1e6, 2e11, 2.0)])
    assert out.stat().st_size > 10_000


def test_sweep_plan_spends_the_budget():
    base = load_config(None, ["model.block_size=32", "train.batch_size=4", "tokenizer.kind=char"])
    cfgs = plan_sweep(base, 2e10, [(2, 16), (2, 32), (2, 48), (2, 64)], levels=2, level_ratio=4, vocab_size=100)
    assert len(cfgs) == 8 and len({c.train.name for c in cfgs}) == 8
    spent = sum(model_size(c.model, 100)[1] * c.train.max_steps * 4 * 32 for c in cfgs)
    assert spent == pytest.approx(2e10, rel=0.1)
    with pytest.raises(ScalingError, match="raise --budget"):
        plan_sweep(base, 1e6, [(2, 16), (2, 32), (2, 48), (2, 64)], vocab_size=100)


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return tiny_dataset()


@pytest.mark.slow
def test_real_sweep_of_four_sizes_fits_and_plots(dataset, tmp_path):
    base = load_config(None, ["model.block_size=32", "train.batch_size=4", "train.eval_batches=2", "optim.lr=3e-3",
                              "tokenizer.kind=char", f"data.dir={dataset}", "train.log_every=1000",
                              "train.threads=1"])  # fmt: skip
    out = tmp_path / "sweep"
    result = sweep(base, "5e9", [(1, 16), (2, 16), (2, 24), (2, 32)], levels=3, level_ratio=2.5, out=out, n_boot=5)
    assert len(result["points"]) == 12 and len({p["params"] for p in result["points"]}) == 4
    assert result["law"] is not None and math.isfinite(result["law"]["alpha"])
    assert "L(N, D)" in result["report"] and result["frontier"] is not None and "L(C)" in result["report"]
    for f in ("fit.png", "map.png", "fit.json"):
        assert (out / f).stat().st_size > 0, f
    assert json.loads((out / "fit.json").read_text())["points"]
