"""MetricsLogger: every metric goes to `metrics.jsonl` (always); extra backends sit behind the same interface.

Keys are namespaced: `train/loss`, `train/grad_norm`, `train/lr`, `val/loss`, `val/bpb`, `perf/tok_per_s`,
`perf/mfu`, `perf/step_ms`, `mem/rss_mb`, `doctor/*`. Each JSONL line is one event: {"step": int, "time": unix
seconds, key: value, ...}. Reports, plots, the doctor, the run table and studies read it offline, all through the
one reader `RunMetrics` (torn lines, NaN/inf, rollbacks and resumes handled once); the training loop never imports
them.

A resumed run logs {"step": S, "run/resume": S} before its first new event: it restarted from the checkpoint of step S,
so the events a killed process had logged after S (steps it replays) are superseded, exactly like a rollback. The file
stays append-only: nothing written is ever rewritten, and a crash while resuming cannot lose the history.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
RESUME_KEY = "run/resume"  # {"step": S, "run/resume": S}: resumed from step S; later events before it are replaced


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
        path = self.run_dir / METRICS_FILE
        torn = _ends_torn(path)
        self.file = open(path, "a", encoding="utf-8", buffering=1)
        if torn:  # a process killed mid-line: start on a fresh line, so the next event is whole
            self.file.write("\n")
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

    def resumed(self, step: int) -> None:
        """Mark a resume from the checkpoint of `step`: events logged before with a later step are superseded."""
        self.log(step, {RESUME_KEY: step})

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        for b in self.backends:
            b.close()
        self.backends = []


def _ends_torn(path: Path) -> bool:
    """True when the file exists and its last byte is not a newline."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            if f.tell() == 0:
                return False
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------
# The one reader of metrics.jsonl: the doctor, plots, reports, the run table and studies all read through it.

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}  # how `_clean` wrote them
_EVENT_START = '{"step": '  # every line the logger writes starts with this


def _event(e: Any) -> dict | None:
    """An event with the logger's "nan"/"inf" strings back as floats; None for anything that is not an event."""
    step = e.get("step") if isinstance(e, dict) else None
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if not isinstance(step, int) or isinstance(step, bool):  # no step, or a damaged one: not an event
        return None
    return {**{k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in e.items()}, "step": step}


def _number(v: Any) -> float | None:
    """A metric value as a float; None for anything else (a damaged value, a message string)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def _parse(line: str) -> tuple[dict | None, bool]:
    """(the event on one line or None, whether the line was torn by a crash mid-write). When a resumed run appended
    to a file whose last line was torn, its first event sits glued after the fragment on that line: it is kept."""
    try:
        return _event(json.loads(line)), False
    except json.JSONDecodeError:
        pass
    i = line.rfind(_EVENT_START)
    if i > 0:
        try:
            return _event(json.loads(line[i:])), True
        except json.JSONDecodeError:
            pass
    return None, True


class RunMetrics:
    """One run's metric events, parsed once, in file order, with rollbacks applied.

    Rollback rule (train.on_spike=rollback): the trainer restores the checkpoint of step T after a spike at step
    F > T, logs {"step": T, "doctor/rollback": F} and replays from T + 1. Every earlier event with a step after T
    is superseded and dropped (kept in `superseded`); the rollback event itself stays. `rollbacks` lists every
    rollback as (T, F) in file order, also one that a later rollback to an earlier step superseded.

    Resume rule: {"step": S, "run/resume": S} (a run resumed from its checkpoint of step S, module docstring) drops
    the earlier events after S the same way; `resumes` lists the S of each.

    Lines that are not UTF-8 (a damaged file) are skipped and counted in `damaged`; `problem()` says so in a line.
    """

    def __init__(self, events: list[dict], superseded: list[dict] | None = None,
                 rollbacks: list[tuple[int, int]] | None = None, torn: int = 0,
                 resumes: list[int] | None = None, damaged: int = 0):  # fmt: skip
        self.events = events
        self.superseded = superseded or []
        self.rollbacks = rollbacks or []
        self.resumes = resumes or []
        self.torn = torn  # lines cut short by a crash mid-write (skipped)
        self.damaged = damaged  # lines that are not UTF-8 text (skipped)

    @classmethod
    def read(cls, run_dir: str | Path) -> RunMetrics:
        """The run dir's metrics.jsonl (empty when there is none yet)."""
        path = Path(run_dir) / METRICS_FILE
        if not path.exists():
            return cls([])
        with open(path, "rb") as f:
            return cls.from_lines(f)

    @classmethod
    def from_lines(cls, lines: Iterable[str | bytes]) -> RunMetrics:
        events, torn, damaged = [], 0, 0
        for line in lines:
            if isinstance(line, bytes):
                try:
                    line = line.decode("utf-8")
                except UnicodeDecodeError:
                    damaged += 1
                    continue
            if not line.strip():
                continue
            e, cut = _parse(line)
            torn += cut
            if e is not None:
                events.append(e)
        out = cls._replay(events)
        out.torn, out.damaged = torn, damaged
        return out

    @classmethod
    def from_events(cls, events: Iterable[dict]) -> RunMetrics:
        """From events already in memory (a test stream, a report's events); a RunMetrics is returned as it is."""
        if isinstance(events, RunMetrics):
            return events
        return cls._replay([e for e in map(_event, events) if e is not None])

    @classmethod
    def _replay(cls, events: list[dict]) -> RunMetrics:
        kept: list[dict] = []
        superseded: list[dict] = []
        rollbacks: list[tuple[int, int]] = []
        resumes: list[int] = []
        for e in events:
            rollback = "doctor/rollback" in e and _number(e["doctor/rollback"]) is not None
            if rollback or RESUME_KEY in e:
                to = e["step"]
                if rollback:
                    rollbacks.append((to, int(e["doctor/rollback"])))
                else:
                    resumes.append(to)
                superseded += [x for x in kept if x["step"] > to]
                kept = [x for x in kept if x["step"] <= to]
            kept.append(e)
        return cls(kept, superseded, rollbacks, resumes=resumes)

    def problem(self) -> str | None:
        """One line about damage found in the file (not UTF-8 lines), or None."""
        if self.damaged:
            return f"{METRICS_FILE}: {self.damaged} damaged line{'s' if self.damaged > 1 else ''} (not UTF-8) skipped"
        return None

    def __iter__(self) -> Iterator[dict]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def has(self, key: str) -> bool:
        return any(key in e for e in self.events)

    def with_key(self, key: str) -> list[dict]:
        """The events that carry `key`, in order."""
        return [e for e in self.events if key in e]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric key, in order (a value that is not a number is skipped)."""
        evs = [e for e in self.events if _number(e.get(key)) is not None]
        return [e["step"] for e in evs], [float(e[key]) for e in evs]

    def values(self, key: str) -> list[float]:
        return self.series(key)[1]

    @staticmethod
    def column(records: list[dict], key: str) -> list[float]:
        """`key` of each record as a float aligned with `records` (NaN where it is missing or not a number): the
        per-step columns the doctor and the charts read from `step_records()`."""
        return [float(v) if (v := _number(e.get(key))) is not None else math.nan for e in records]

    def first(self, key: str, default: float | None = None) -> float | None:
        return next(iter(self.values(key)), default)

    def last(self, key: str, default: float | None = None) -> float | None:
        values = self.values(key)
        return values[-1] if values else default

    def step_records(self) -> list[dict]:
        """The optimizer-step events (train/loss with train/grad_norm), not eval points, doctor notes or the
        trainer's NaN marker ({"train/loss": nan, "doctor/divergence": 1})."""
        return [e for e in self.events if _number(e.get("train/loss")) is not None and "train/grad_norm" in e]

    def train_seconds(self) -> list[float]:
        """Training time (sum of perf/step_ms, evals excluded) at each of `step_records()`."""
        out, t = [], 0.0
        for e in self.step_records():
            t += (_number(e.get("perf/step_ms")) or 0.0) / 1000
            out.append(t)
        return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every event of a run's metrics.jsonl, rollbacks applied (`RunMetrics.read(run_dir).events`)."""
    return RunMetrics.read(run_dir).events


def series(run_dir: str | Path, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric key, in order, rollbacks applied (`RunMetrics.read(run_dir).series(key)`)."""
    return RunMetrics.read(run_dir).series(key)
