"""Shared pieces of the doctor: thresholds, the Finding record, robust running windows and detectors."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

SEVERITIES = ("info", "warning", "error")
SPIKE_Z = 6.0  # a spike is this many robust standard deviations above the running median ...
SPIKE_REL = 0.10  # ... and at least this fraction of the median above it (noise on tiny batches is large)
EXPLODE_FACTOR = 10.0  # gradient explosion: norm >= this many times the running median
COLLAPSE_FRACTION = 1e-3  # gradient collapse: norm below this fraction of the early typical norm ...
COLLAPSE_ABS = 1e-8  # ... or below this absolute value
BLOW_UP = 2.0  # divergence: the running median of the loss above this many times the starting loss
CLIP_RATE = 0.5  # constant clipping: clipped on more than this fraction of the steps after warmup
MAD_TO_SIGMA = 1.4826  # MAD * this = standard deviation for normal noise


@dataclass
class Finding:
    """One diagnosis: what happened, where (step range), why it matters, and what to try."""

    rule: str
    severity: str  # info | warning | error
    start: int  # first step of the episode
    end: int  # last step of the episode (== start for a single step)
    what: str
    why: str
    fix: str
    value: float | None = None  # the number that triggered it (loss, norm, ratio ...), logged as doctor/<rule>

    def where(self) -> str:
        return f"step {self.start}" if self.start == self.end else f"steps {self.start}-{self.end}"

    def headline(self) -> str:
        return f"[{self.severity}] {self.rule} at {self.where()}: {self.what}"

    def format(self) -> str:
        return f"{self.headline()}\n    why: {self.why}\n    try: {self.fix}"


# ---------------------------------------------------------------------------------------------------------
# Running robust baseline, shared by the live and offline detectors.


class RobustWindow:
    """Median and MAD-based sigma of the last `size` values; recomputed lazily (sorts at most `size` floats)."""

    def __init__(self, size: int = 64, min_count: int = 10):
        self.values: deque[float] = deque(maxlen=size)
        self.min_count = min_count
        self._stats: tuple[float, float] | None = None

    def add(self, v: float) -> None:
        self.values.append(v)
        self._stats = None

    def reset(self, v: float | None = None) -> None:
        self.values.clear()
        self._stats = None
        if v is not None:
            self.add(v)

    @property
    def ready(self) -> bool:
        return len(self.values) >= self.min_count

    def stats(self) -> tuple[float, float]:
        """(median, sigma) where sigma = 1.4826 * median absolute deviation."""
        if self._stats is None:
            med = statistics.median(self.values)
            mad = statistics.median(abs(v - med) for v in self.values)
            self._stats = (med, MAD_TO_SIGMA * mad)
        return self._stats


def spike_limit(median: float, sigma: float) -> float:
    return median + max(SPIKE_Z * sigma, SPIKE_REL * abs(median))


def explosion_limit(median: float, sigma: float) -> float:
    return EXPLODE_FACTOR * median


class Detector:
    """Flags values above `limit(median, sigma)` of a running window of the values it did not flag.

    After `max_run` flagged values in a row the new level is adopted (the window restarts from it): a permanent
    shift is not a spike, and a guard that skips spikes must not skip forever.
    """

    def __init__(self, limit: Callable[[float, float], float], window: int = 64, min_count: int = 10,
                 max_run: int = 64):  # fmt: skip
        self.win = RobustWindow(window, min_count)
        self.limit_fn, self.max_run = limit, max_run
        self.run = 0  # flagged values in a row
        self.adopted = False  # the last update adopted a new level

    def limit(self) -> float | None:
        return self.limit_fn(*self.win.stats()) if self.win.ready else None

    def would_flag(self, v: float) -> bool:
        lim = self.limit()
        return lim is not None and math.isfinite(v) and v > lim

    def update(self, v: float) -> bool:
        """Feed one value; True when it is flagged."""
        self.adopted = False
        if not math.isfinite(v):
            return False
        if self.would_flag(v):
            self.run += 1
            if self.run > self.max_run:
                self.win.reset(v)
                self.run, self.adopted = 0, True
                return False
            return True
        self.run = 0
        self.win.add(v)
        return False
