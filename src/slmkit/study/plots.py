"""Charts of runs (`slm plot`): an offline reader of metrics.jsonl, drawn with matplotlib's Agg backend.

One PNG, four panels: train and val loss; gradient norm with the clip threshold and the clip rate; the LR
schedule; tokens/s. Several runs are overlaid in the same colours across panels, with a legend. matplotlib is
imported only when a chart is drawn, so `import slmkit` and `slm --help` stay fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.base.errors import SlmError
from slmkit.base.metrics import RunMetrics
from slmkit.runs.checkpoint import check_run_dir, read_run_config

X_LABELS = {"step": "optimizer step", "tokens": "tokens seen", "time": "training time (minutes, excluding evals)"}


class PlotError(SlmError):
    """A chart cannot be drawn (no runs, no metrics, bad axis)."""


@dataclass
class RunSeries:
    """What the charts need from one run's metrics.jsonl (points superseded by a rollback are dropped: RunMetrics)."""

    name: str
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    clipped: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    minutes: list[float] = field(default_factory=list)
    tok_s: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    rollbacks: list[int] = field(default_factory=list)  # steps rolled back to
    grad_clip: float = 0.0

    def x(self, axis: str) -> list[float]:
        return {"step": self.step, "tokens": self.tokens, "time": self.minutes}[axis]

    def val_x(self, axis: str) -> list[float]:
        """x of the eval points: interpolated from the train steps for tokens and time."""
        if axis == "step":
            return list(self.val_step)
        import numpy as np

        return list(np.interp(self.val_step, [0, *self.step], [0.0, *self.x(axis)]))


def load_series(run_dir: str | Path) -> RunSeries:
    run_dir = check_run_dir(run_dir)
    rs = RunSeries(run_dir.name)
    try:
        rs.grad_clip = read_run_config(run_dir).optim.grad_clip
    except SlmError:
        pass
    metrics = RunMetrics.read(run_dir)
    rs.rollbacks = [to for to, _ in metrics.rollbacks]
    steps = metrics.step_records()
    rs.step = [int(e["step"]) for e in steps]
    rs.minutes = [t / 60 for t in metrics.train_seconds()]
    for attr, key in (("loss", "train/loss"), ("grad_norm", "train/grad_norm"), ("clipped", "train/clipped"),
                      ("lr", "train/lr"), ("tokens", "train/tokens"), ("tok_s", "perf/tok_per_s")):  # fmt: skip
        setattr(rs, attr, metrics.column(steps, key))
    rs.val_step, rs.val_loss = metrics.series("val/loss")
    return rs


def smooth(values: list[float], width: int) -> list[float]:
    """Trailing running mean over `width` values (NaN/inf skipped)."""
    out, window = [], []
    for v in values:
        window.append(v)
        if len(window) > width:
            window.pop(0)
        good = [w for w in window if math.isfinite(w)]
        out.append(sum(good) / len(good) if good else math.nan)
    return out


def plot_runs(run_dirs: list[str | Path], out: str | Path, x: str = "step", logy: bool = False) -> Path:
    """Write one PNG with four panels for the given runs (overlaid, one colour each). Returns the path."""
    if x not in X_LABELS:
        raise PlotError(f"--x {x!r} is not one of {', '.join(X_LABELS)}")
    if not run_dirs:
        raise PlotError("give at least one run directory")
    runs = [load_series(r) for r in run_dirs]
    empty = [r.name for r in runs if not r.step]
    if len(empty) == len(runs):
        raise PlotError(f"no training steps logged yet in {', '.join(empty)}; train first (metrics.jsonl is empty)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, rs in enumerate(r for r in runs if r.step):
        _draw_run(axes, rs, colors[i % len(colors)], x)
    _decorate(axes, runs, x, logy)
    title = runs[0].name if len(runs) == 1 else f"{len(runs)} runs: " + ", ".join(r.name for r in runs)
    fig.suptitle(title if len(title) < 110 else title[:107] + "...", fontsize=13)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _draw_run(axes, rs: RunSeries, color: str, x: str) -> None:
    xs, width = rs.x(x), max(1, len(rs.step) // 50)
    ax = axes[0][0]
    ax.plot(xs, rs.loss, color=color, alpha=0.25, linewidth=0.8)
    ax.plot(xs, smooth(rs.loss, width), color=color, linewidth=1.8, label=f"{rs.name} train")
    if rs.val_step:
        ax.plot(rs.val_x(x), rs.val_loss, "o--", color=color, markersize=4, linewidth=1.2, label=f"{rs.name} val")
    for step in rs.rollbacks:
        ax.axvline(_x_at(rs, x, step), color=color, linestyle=":", linewidth=1)
    ax = axes[0][1]
    clipped = [c for c in rs.clipped if math.isfinite(c)]
    rate = f", clipped on {100 * sum(clipped) / len(clipped):.0f}% of steps" if clipped and rs.grad_clip else ""
    norms = [g if math.isfinite(g) and g > 0 else math.nan for g in rs.grad_norm]
    ax.plot(xs, norms, color=color, alpha=0.3, linewidth=0.8)
    ax.plot(xs, smooth(norms, width), color=color, linewidth=1.6, label=f"{rs.name}{rate}")
    if rs.grad_clip:
        ax.axhline(rs.grad_clip, color=color, linestyle="--", linewidth=1.2, label=f"clip threshold {rs.grad_clip:g}")
    axes[1][0].plot(xs, rs.lr, color=color, linewidth=1.6, label=rs.name)
    tok = [t if math.isfinite(t) else math.nan for t in rs.tok_s]
    axes[1][1].plot(xs, tok, color=color, alpha=0.25, linewidth=0.8)
    axes[1][1].plot(xs, smooth(tok, max(5, width)), color=color, linewidth=1.6, label=rs.name)


def _x_at(rs: RunSeries, x: str, step: int) -> float:
    if x == "step":
        return step
    import numpy as np

    return float(np.interp(step, [0, *rs.step], [0.0, *rs.x(x)]))


def _decorate(axes, runs: list[RunSeries], x: str, logy: bool) -> None:
    from matplotlib.ticker import EngFormatter

    panels = [
        (axes[0][0], "Loss (faint: every step; solid: smoothed; dots: val)", "cross-entropy (nats/token)"),
        (axes[0][1], "Gradient norm before clipping", "global L2 norm (log scale)"),
        (axes[1][0], "Learning-rate schedule", "learning rate"),
        (axes[1][1], "Throughput", "tokens / second"),
    ]
    for ax, title, ylabel in panels:
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if x == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter())
        ax.legend(fontsize=8, loc="best")
    if logy:
        axes[0][0].set_yscale("log")
    axes[0][1].set_yscale("log")
    axes[1][0].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[1][1].yaxis.set_major_formatter(EngFormatter())
