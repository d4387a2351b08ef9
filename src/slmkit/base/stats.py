"""Small-sample statistics for comparing runs: mean ± std, t confidence intervals, Welch's t-test, bootstrap.

Everything here is pure Python (plus numpy for the bootstrap) so it needs no scipy. Student's t distribution is
computed from the regularized incomplete beta function (a continued fraction, evaluated with the modified Lentz
method); its quantile by bisection on the CDF. Accurate to ~1e-10, far beyond what 3 seeds can tell apart.

Convention: a *delta* is `arm - base` in nats of val loss, so a negative delta means the arm is better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

BETTER, WORSE, NOISE = "better", "worse", "not distinguishable from noise"
UNKNOWN = "unknown (needs >= 2 finished seeds in both arms)"


# ---------------------------------------------------------------------------------------------------------
# Student's t distribution


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (df may be fractional, as in Welch's test)."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t (inverse of t_cdf), by bisection."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------------------
# Summaries and comparisons


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    m = sum(xs) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0)


def mean_ci(xs: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """t confidence interval of the mean; (nan, nan) with fewer than 2 values."""
    n = len(xs)
    m, s = mean_std(xs)
    if n < 2:
        return math.nan, math.nan
    half = t_ppf(0.5 + level / 2, n - 1) * s / math.sqrt(n)
    return m - half, m + half


@dataclass
class Comparison:
    """An arm against the base: delta = mean(arm) - mean(base), in nats."""

    delta: float
    ci_low: float  # Welch CI of the delta
    ci_high: float
    p_value: float  # two-sided Welch t-test
    df: float
    boot_low: float  # percentile-bootstrap CI of the delta
    boot_high: float
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)


def welch(base: Sequence[float], arm: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float, float]:
    """Welch's unequal-variance t-test of mean(arm) - mean(base): (delta, ci_low, ci_high, p_value, df)."""
    (ma, sa), (mb, sb) = mean_std(base), mean_std(arm)
    na, nb = len(base), len(arm)
    delta = mb - ma
    if na < 2 or nb < 2:
        return delta, math.nan, math.nan, math.nan, math.nan
    va, vb = sa * sa / na, sb * sb / nb
    se = math.sqrt(va + vb)
    if se == 0.0:  # identical values in both arms: no noise to speak of
        return delta, delta, delta, (1.0 if delta == 0 else 0.0), math.inf
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    t = delta / se
    p = 2.0 * (1.0 - t_cdf(abs(t), df))
    half = t_ppf(0.5 + level / 2, df) * se
    return delta, delta - half, delta + half, p, df


def bootstrap_delta_ci(base: Sequence[float], arm: Sequence[float], level: float = 0.95, n_boot: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """Percentile bootstrap CI of mean(arm) - mean(base), resampling each arm with replacement.

    With 2-3 seeds the bootstrap is too narrow (it cannot see variance it has not sampled); the verdict therefore
    uses the Welch CI, and the bootstrap is reported beside it.
    """
    if len(base) < 2 or len(arm) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    a, b = np.asarray(base, dtype=float), np.asarray(arm, dtype=float)
    ma = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(axis=1)
    mb = b[rng.integers(0, len(b), (n_boot, len(b)))].mean(axis=1)
    lo, hi = np.quantile(mb - ma, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def verdict(ci_low: float, ci_high: float) -> str:
    """better / worse when the CI of the delta (arm - base, lower is better) excludes 0, else noise."""
    if math.isnan(ci_low) or math.isnan(ci_high):
        return UNKNOWN
    if ci_high < 0:
        return BETTER
    if ci_low > 0:
        return WORSE
    return NOISE


def compare(base: Sequence[float], arm: Sequence[float], level: float = 0.95, seed: int = 0) -> Comparison:
    """Welch test + bootstrap of an arm's final losses against the base's; the verdict comes from the Welch CI."""
    delta, lo, hi, p, df = welch(base, arm, level)
    blo, bhi = bootstrap_delta_ci(base, arm, level, seed=seed)
    return Comparison(delta, lo, hi, p, df, blo, bhi, verdict(lo, hi))
