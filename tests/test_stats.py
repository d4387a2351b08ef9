"""Statistics for ablations: the t distribution against scipy's values, Welch's test, and verdicts on synthetic
arms with known effects and known noise (false-positive rate and power checked over many simulated studies)."""

import math

import numpy as np
import pytest

from slmkit.base.stats import (
    BETTER,
    NOISE,
    UNKNOWN,
    WORSE,
    bootstrap_delta_ci,
    compare,
    mean_ci,
    mean_std,
    t_cdf,
    t_ppf,
    welch,
)

# Reference values computed with scipy 1.17 (scipy.stats.t and scipy.stats.ttest_ind(equal_var=False)).
T_PPF = [(0.975, 1, 12.706204736174694), (0.975, 2, 4.302652729749462), (0.975, 10, 2.228138851986274),
         (0.995, 3.5, 5.085702223091256)]  # fmt: skip
T_CDF = [(2.0, 5, 0.9490302605850708), (-1.3, 2.7, 0.14672632185192266)]


@pytest.mark.parametrize("q, df, ref", T_PPF)
def test_t_quantile_matches_scipy(q, df, ref):
    assert t_ppf(q, df) == pytest.approx(ref, rel=1e-9)
    assert t_ppf(1 - q, df) == pytest.approx(-ref, rel=1e-9)


@pytest.mark.parametrize("t, df, ref", T_CDF)
def test_t_cdf_matches_scipy(t, df, ref):
    assert t_cdf(t, df) == pytest.approx(ref, abs=1e-12)


def test_welch_matches_scipy():
    base, arm = [3.10, 3.12, 3.08], [3.02, 3.05, 3.01, 3.04]
    delta, lo, hi, p, _ = welch(base, arm)
    assert delta == pytest.approx(np.mean(arm) - np.mean(base))
    assert p == pytest.approx(0.007963230501615652, rel=1e-8)
    assert (lo, hi) == pytest.approx((-0.11014727431980738, -0.029852725680192302), rel=1e-8)


def test_mean_std_and_ci():
    m, s = mean_std([1.0, 2.0, 3.0])
    assert (m, s) == (2.0, 1.0)
    lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert (lo, hi) == pytest.approx((2 - 4.302652729749462 / math.sqrt(3), 2 + 4.302652729749462 / math.sqrt(3)))
    assert mean_std([5.0]) == (5.0, 0.0) and all(math.isnan(x) for x in mean_ci([5.0]))


def test_verdicts_on_clear_cases():
    base = [3.000, 3.010, 2.990, 3.005, 2.995]
    assert compare(base, [x - 0.1 for x in base]).verdict == BETTER
    assert compare(base, [x + 0.1 for x in base]).verdict == WORSE
    assert compare(base, [3.004, 2.996, 3.001, 3.008, 2.992]).verdict == NOISE
    assert compare(base, [2.5]).verdict == UNKNOWN  # one seed: no noise estimate
    c = compare(base, [x - 0.1 for x in base])
    assert c.boot_low < c.delta < c.boot_high < 0


def _simulate(effect: float, sigma: float, n: int, studies: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    counts = {BETTER: 0, WORSE: 0, NOISE: 0}
    for _ in range(studies):
        base = rng.normal(3.0, sigma, n)
        arm = rng.normal(3.0 + effect, sigma, n)
        _, lo, hi, _, _ = welch(list(base), list(arm))
        counts[BETTER if hi < 0 else WORSE if lo > 0 else NOISE] += 1
    return {k: v / studies for k, v in counts.items()}


def test_no_effect_is_called_noise_about_95_percent_of_the_time():
    rates = _simulate(effect=0.0, sigma=0.02, n=3, studies=400, seed=0)
    assert 0.90 <= rates[NOISE] <= 0.99, rates  # nominal 0.95 with a 95% CI


def test_large_effects_are_found_with_their_sign():
    better = _simulate(effect=-0.1, sigma=0.02, n=3, studies=200, seed=1)  # 5 sigma
    worse = _simulate(effect=+0.1, sigma=0.02, n=3, studies=200, seed=2)
    assert better[BETTER] >= 0.9 and better[WORSE] == 0, better
    assert worse[WORSE] >= 0.9 and worse[BETTER] == 0, worse


def test_small_effect_hidden_by_noise_is_not_claimed():
    rates = _simulate(effect=-0.005, sigma=0.05, n=3, studies=200, seed=3)  # 0.1 sigma with 3 seeds
    assert rates[NOISE] >= 0.85 and rates[WORSE] <= 0.05, rates


def test_bootstrap_ci_covers_the_true_delta_with_many_seeds():
    rng = np.random.default_rng(4)
    base, arm = rng.normal(3.0, 0.02, 50), rng.normal(2.97, 0.02, 50)
    lo, hi = bootstrap_delta_ci(list(base), list(arm), seed=0)
    assert lo < -0.03 < hi and hi < 0
