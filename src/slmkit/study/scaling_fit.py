"""Fitting scaling laws (Hoffmann et al. 2022, approach 3): L(N, D) = E + A/N^α + B/D^β and the frontier L(C).

Minimizes the Huber loss (δ = 1e-3) of log-residuals, log L̂ = LSE(a − α·log N, b − β·log D, e), with L-BFGS
started from the best points of a grid of initialisations; uncertainty from refits on bootstrap resamples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from slmkit.base.errors import SlmError

HUBER_DELTA = 1e-3
BOOT_ITERS = 40
"""L-BFGS iterations of a bootstrap refit (warm-started from the full fit; its spread needs ~2 digits, not 6)."""


def human(x: float) -> str:
    """1.24e8 -> '124M'."""
    for div, suf in ((1e15, "P"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}"
    return f"{x:.3g}"


class ScalingError(SlmError):
    """Bad input to a scaling command (too few runs, unparseable budget, ...)."""


# ---------------------------------------------------------------------------------------------------------
# Fitting: Huber loss on log residuals, log L̂ = LSE(e, a_i − α_i·log x_i)


def _objective(theta: torch.Tensor, logx: torch.Tensor, logl: torch.Tensor, delta: float) -> torch.Tensor:
    """theta (..., 1 + 2k) = [e, a_1, α_1, ...]; logx (n, k); logl (n,). Returns the summed Huber loss (...)."""
    e, a, alpha = theta[..., :1], theta[..., 1::2], theta[..., 2::2]  # (..., 1), (..., k), (..., k)
    terms = a.unsqueeze(-2) - alpha.unsqueeze(-2) * logx  # (..., n, k)
    e_col = e.unsqueeze(-2).expand(*terms.shape[:-1], 1)  # (..., n, 1)
    pred = torch.logsumexp(torch.cat([e_col, terms], dim=-1), dim=-1)  # (..., n)
    return torch.nn.functional.huber_loss(pred, logl.expand_as(pred), delta=delta, reduction="none").sum(-1)


def _init_grid(k: int) -> torch.Tensor:
    """Chinchilla's grid of starts, for x in units of its geometric mean (so a_i is the log of term i there):
    e in {-1, ..., 1}, a_i in {-3, ..., 2}, α_i in {0, 0.5, ..., 2}. Shape (G, 1 + 2k)."""
    axes = [[-1.0, -0.5, 0.0, 0.5, 1.0]] + [[-3.0, -2.0, -1.0, 0.0, 1.0, 2.0], [0.0, 0.5, 1.0, 1.5, 2.0]] * k
    return torch.tensor(list(itertools.product(*axes)), dtype=torch.float64)


def _lbfgs(theta0: torch.Tensor, logx, logl, delta: float, max_iter: int = 200) -> tuple[torch.Tensor, float]:
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = _objective(theta, logx, logl, delta)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return theta.detach(), float(_objective(theta, logx, logl, delta))


def fit_lse(xs: np.ndarray, losses: np.ndarray, delta: float = HUBER_DELTA, starts: int = 8,
            extra_inits: Sequence[torch.Tensor] = (), max_iter: int = 200) -> tuple[np.ndarray, float]:  # fmt: skip
    """Fit log L = LSE(e, a_i − α_i log x_i): the best of L-BFGS runs from the `starts` best grid points
    (plus `extra_inits`). xs (n, k) positive; returns (theta = [e, a_1, α_1, ...], objective)."""
    logx = torch.log(torch.as_tensor(xs, dtype=torch.float64).reshape(len(losses), -1))
    logl = torch.log(torch.as_tensor(losses, dtype=torch.float64))
    shift = logx.mean(0)  # fit in units of the geometric mean, so the grid suits 1e4 and 1e10 alike
    logx = logx - shift
    inits = [_rescale(torch.as_tensor(t), -shift) for t in extra_inits]
    if starts:
        grid = _init_grid(logx.shape[1])
        with torch.no_grad():
            scores = _objective(grid, logx, logl, delta)
        inits += [grid[i] for i in torch.argsort(scores)[:starts]]
    best = None
    for init in inits:
        theta, obj = _lbfgs(init, logx, logl, delta, max_iter)
        if math.isfinite(obj) and (best is None or obj < best[1]):
            best = (theta, obj)
    if best is None:  # pragma: no cover - every start diverged
        raise ScalingError("the fit did not converge from any initialisation")
    return _rescale(best[0], shift).numpy(), best[1]


def _rescale(theta: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Parameters for x = x' * exp(shift): a_i - alpha_i (log x' ) = (a_i + alpha_i shift_i) - alpha_i log x."""
    theta = theta.clone()
    theta[1::2] = theta[1::2] + theta[2::2] * shift
    return theta


def _exp(v: float) -> float:
    return math.exp(v) if v < 700 else math.inf


@dataclass
class LawFit:
    """L(N, D) = E + A/N^alpha + B/D^beta, with bootstrap standard deviations (`std`) and 95% intervals (`ci`)."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    n_points: int
    std: dict = field(default_factory=dict)
    ci: dict = field(default_factory=dict)

    @classmethod
    def from_theta(cls, theta: Sequence[float], n_points: int) -> LawFit:
        e, a, alpha, b, beta = (float(t) for t in theta)
        return cls(_exp(e), _exp(a), alpha, _exp(b), beta, n_points)

    def predict(self, params: float | np.ndarray, tokens: float | np.ndarray):
        return self.E + self.A / np.power(params, self.alpha) + self.B / np.power(tokens, self.beta)

    def optimal(self, flops: float) -> tuple[float, float, float]:
        """(N, D, L) minimizing L for C = 6·N·D (Hoffmann et al. eq. 4)."""
        a, b = self.alpha, self.beta
        g = (a * self.A / (b * self.B)) ** (1.0 / (a + b))
        n = g * (flops / 6.0) ** (b / (a + b))
        d = (flops / 6.0) / n
        return n, d, float(self.predict(n, d))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FrontierFit:
    """L(C) = E + A/C^gamma on the compute frontier."""

    E: float
    A: float
    gamma: float
    n_points: int
    std: dict = field(default_factory=dict)
    ci: dict = field(default_factory=dict)

    def predict(self, flops: float | np.ndarray):
        with np.errstate(over="ignore"):
            return self.E + self.A / np.power(flops, self.gamma)

    def to_dict(self) -> dict:
        return asdict(self)


def _bootstrap(xs: np.ndarray, losses: np.ndarray, theta: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Refit on `n_boot` resamples of the points, each started from the full fit."""
    if len(losses) <= theta.size:  # as many points as parameters: every resample refits the same exact solution
        return np.empty((0, theta.size))
    rng = np.random.default_rng(seed)
    init = torch.as_tensor(theta)
    out = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(losses), len(losses))
        if len(np.unique(xs[idx], axis=0)) < xs.shape[1] + 2:
            continue  # degenerate resample: too few distinct points
        t, _ = fit_lse(xs[idx], losses[idx], starts=0, extra_inits=[init], max_iter=BOOT_ITERS)
        out.append(t)
    return np.array(out)


@np.errstate(over="ignore", invalid="ignore")
def _uncertainty(samples: np.ndarray, names: Sequence[str], exp_cols: Sequence[int]) -> tuple[dict, dict]:
    if len(samples) < 2:
        return {}, {}
    vals = samples.copy()
    vals[:, exp_cols] = np.exp(np.clip(vals[:, exp_cols], -700, 700))
    std = {n: float(np.std(vals[:, i], ddof=1)) for i, n in enumerate(names)}
    ci = {n: [float(q) for q in np.quantile(vals[:, i], [0.025, 0.975])] for i, n in enumerate(names)}
    return std, ci


def fit_law(params: Sequence[float], tokens: Sequence[float], losses: Sequence[float], n_boot: int = 0,
            seed: int = 0) -> LawFit:  # fmt: skip
    """Chinchilla approach 3 on (N, D, L) points; `n_boot` > 0 adds bootstrap uncertainty."""
    if len(losses) < 5:
        raise ScalingError(f"fitting L(N, D) needs at least 5 runs (5 parameters); got {len(losses)}")
    xs = np.column_stack([params, tokens]).astype(float)
    losses = np.asarray(losses, dtype=float)
    theta, _ = fit_lse(xs, losses)
    fit = LawFit.from_theta(theta, len(losses))
    if n_boot:
        samples = _bootstrap(xs, losses, theta, n_boot, seed)
        fit.std, fit.ci = _uncertainty(samples, ["E", "A", "alpha", "B", "beta"], [0, 1, 3])
    return fit


def fit_frontier(flops: Sequence[float], losses: Sequence[float], n_boot: int = 0, seed: int = 0) -> FrontierFit:
    """L(C) = E + A/C^γ on (C, L) points (pass the frontier runs)."""
    if len(losses) < 3:
        raise ScalingError(f"fitting L(C) needs at least 3 compute levels on the frontier; got {len(losses)}")
    xs = np.asarray(flops, dtype=float).reshape(-1, 1)
    losses = np.asarray(losses, dtype=float)
    theta, _ = fit_lse(xs, losses)
    e, a, g = (float(t) for t in theta)
    fit = FrontierFit(_exp(e), _exp(a), g, len(losses))
    if n_boot:
        fit.std, fit.ci = _uncertainty(_bootstrap(xs, losses, theta, n_boot, seed), ["E", "A", "gamma"], [0, 1])
    return fit


def format_fit(fit: LawFit | FrontierFit, budget: float | None = None) -> str:
    """Parameters with their bootstrap uncertainty, and the extrapolation to `budget` FLOPs."""

    def val(name: str, x: float) -> str:
        s = f"{name:<6} = {x:.4g}"
        if name in fit.std:
            lo, hi = fit.ci[name]
            s += f"  ± {fit.std[name]:.2g}  (95% [{lo:.4g}, {hi:.4g}])"
        return s

    if isinstance(fit, LawFit):
        lines = [f"L(N, D) = E + A/N^alpha + B/D^beta   ({fit.n_points} runs)"]
        lines += [val(k, getattr(fit, k)) for k in ("E", "A", "alpha", "B", "beta")]
        a, b = fit.alpha, fit.beta
        lines.append(f"optimal N ∝ C^{b / (a + b):.3f}, D ∝ C^{a / (a + b):.3f}  (Chinchilla: ~0.5 and ~0.5)")
        if budget:
            n, d, loss = fit.optimal(budget)
            lines.append(f"at C = {budget:.3g} FLOPs: optimal N = {human(n)}, D = {human(d)} "
                         f"({d / n:.1f} tokens/param), predicted loss {loss:.4f}")  # fmt: skip
    else:
        lines = [f"L(C) = E + A/C^gamma   ({fit.n_points} frontier runs)"]
        lines += [val(k, getattr(fit, k)) for k in ("E", "A", "gamma")]
        if budget:
            lines.append(f"at C = {budget:.3g} FLOPs: predicted loss {float(fit.predict(budget)):.4f}")
    return "\n".join(lines)
