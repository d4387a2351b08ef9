"""MetricsLogger: every metric goes to `metrics.jsonl` (always); extra backends sit behind the same interface.

Keys are namespaced: `train/loss`, `train/grad_norm`, `train/lr`, `val/loss`, `val/bpb`, `perf/tok_per_s`,
`perf/mfu`, `perf/step_ms`, `mem/rss_mb`, `doctor/*`. Reports and plots read the JSONL offline; the training loop
never imports them. Each JSONL line is one event: {"step": int, "time": unix seconds, key: value, ...}.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class _Backend:
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


class _TensorBoard(_Backend):
    def __init__(self, run_dir: Path, project: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step, metrics):
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.w.add_scalar(k, v, step)

    def close(self):
        self.w.close()


class _Wandb(_Backend):
    def __init__(self, run_dir: Path, project: str, config: dict):
        import wandb

        self.run = wandb.init(project=project, name=run_dir.name, dir=str(run_dir), config=config)

    def log(self, step, metrics):
        self.run.log(metrics, step=step)

    def close(self):
        self.run.finish()


class _Trackio(_Backend):
    def __init__(self, run_dir: Path, project: str, config: dict):
        import trackio

        self.t = trackio
        trackio.init(project=project, name=run_dir.name, config=config)

    def log(self, step, metrics):
        self.t.log(metrics, step=step)

    def close(self):
        self.t.finish()


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "trackio": _Trackio}


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible as strings
    return v


class MetricsLogger:
    """Append-only metrics stream of a run. Only the main rank should create one with `enabled=True`."""

    def __init__(self, run_dir: str | Path, backends: list[str] = (), project: str = "slmkit",
                 config: dict | None = None,
                 enabled: bool = True):  # fmt: skip
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.backends: list[_Backend] = []
        if not enabled:
            return
        self.file = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8", buffering=1)
        for name in backends:
            try:
                self.backends.append(_BACKENDS[name](self.run_dir, project, config or {}))
            except ImportError as e:
                raise ImportError(f"log backend {name!r} needs its package: pip install {name} ({e})") from None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled or not metrics:
            return
        record = {"step": step, "time": round(time.time(), 3), **{k: _clean(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for b in self.backends:
            b.log(step, numeric)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        for b in self.backends:
            b.close()
        self.backends = []


def read_metrics(run_dir: str | Path) -> Iterator[dict]:
    """Every event of a run's metrics.jsonl (a torn last line from a crash is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def series(run_dir: str | Path, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric key, in order."""
    steps, values = [], []
    for rec in read_metrics(run_dir):
        if key in rec:
            v = rec[key]
            steps.append(rec["step"])
            values.append(float(v))  # "nan"/"inf" strings parse too
    return steps, values
