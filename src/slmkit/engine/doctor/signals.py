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
CLIP_RATE = 0.5  # constant clipping: clipped on more than this fraction of the steps after warmup, AND ...
CLIP_FAR = 2.5  # ... the clipped steps' median norm >= this many times optim.grad_clip, or ...
CLIP_STALL = 0.005  # ... the loss fell less than this fraction over the latter part of the run (stopped improving)
# Calibrated on the reference recipes (tests/data/ref-*.jsonl.gz). nanoGPT's shakespeare-char (AdamW lr 1e-3,
# grad_clip 1.0) clips on 96% of the steps after warmup and on every step from ~500 on, while its loss falls
# steadily to the documented val 1.88: a clip rate alone is no pathology. With Adam, scaling every gradient by a
# similar factor barely changes the update (m / sqrt(v) is scale-free), so clipping is only a symptom when the norm
# sits far above the limit or the loss has stopped falling. The reference's clipped norms have a median of 1.8x
# the limit (2.2x at most over any 64 steps, near the end of the cosine decay, when grad norms rise as the LR
# falls), and its loss still falls 5.5% from the third to the last quarter (the live check, now vs halfway through
# the run so far, never sees under 2.6%). shakespeare-char-modern and the default clip on 3% and 8% of the steps.
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


# ---------------------------------------------------------------------------------------------------------
# Constant clipping: shared by the live and offline rules so that they agree.

CLIP_WHY = {
    "far": "the clip is meant to catch the rare outlier step; a gradient norm several times the limit on most steps "
    "means every update is being cut back, which usually comes from an LR high enough to keep the weights in steep "
    "regions (or a grad_clip set far below this model's typical gradient norm)",
    "stalled": "clipping on most steps while the loss no longer falls: the updates are too large for the noise "
    "level the run has reached, so the optimizer bounces instead of descending (the LR is effectively too high)",
}
CLIP_FIX = {
    "far": "lower optim.lr (try 1/2 to 1/3); if the loss falls smoothly, raise optim.grad_clip towards the median "
    "norm instead",
    "stalled": "lower optim.lr (try 1/2 to 1/3) or decay it further (optim.schedule=cosine, a lower optim.min_lr)",
}


def clipping_verdict(rate: float, ratio: float | None, progress: float | None) -> str | None:
    """Whether clipping on `rate` of the steps is a symptom: "far" (the clipped steps' median norm is `ratio` >=
    CLIP_FAR times the limit), "stalled" (the loss fell by a fraction `progress` < CLIP_STALL), or None (normal)."""
    if not rate > CLIP_RATE:
        return None
    if ratio is not None and ratio >= CLIP_FAR:
        return "far"
    if progress is not None and progress < CLIP_STALL:
        return "stalled"
    return None
