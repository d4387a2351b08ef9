"""Console output: log lines and progress bars, on stderr so stdout stays clean for pipes.

On a terminal a progress bar is redrawn in place and log lines print above it. When stderr is not a terminal
(CI logs, `slm train 2> train.log`, a pipe) there are no carriage-return frames: a bar becomes a plain line every
`LINE_EVERY_S` seconds and one at the end, and the trainer's own log line every `train.log_every` steps is the
record. Processes other than rank 0 print nothing (`enable(False)`), so several processes print each line once.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LINE_EVERY_S = 30.0  # the interval between the plain progress lines when stderr is not a terminal
_state = {"on": True}


def enable(on: bool) -> None:
    """Turn this process's console output on or off (off on ranks other than 0)."""
    _state["on"] = on


def say(msg: str) -> None:
    """One log line on stderr, above a progress bar if one is drawn."""
    if _state["on"]:
        tqdm.write(msg, file=sys.stderr)


def interactive() -> bool:
    """Whether stderr is a terminal, where progress bars are redrawn in place."""
    return sys.stderr.isatty()


class LineProgress:
    """The progress of long work as plain lines (for logs): at most one every `every_s` seconds, and one at the end.
    It has the part of tqdm's interface the callers use (update, set_postfix, set_postfix_str, close)."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, every_s: float = LINE_EVERY_S,
                 unit_scale: bool = False):  # fmt: skip
        self.total, self.desc, self.unit, self.n, self.every_s = total, desc, unit, initial, every_s
        self.unit_scale, self.postfix, self._t0 = unit_scale, "", time.monotonic()
        self._last, self._closed = self._t0, False

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every_s:
            self._print()

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.postfix = text

    def _count(self, n: float) -> str:
        return tqdm.format_sizeof(n, divisor=1000) if self.unit_scale else f"{n:,.0f}"

    def _print(self) -> None:
        self._last = time.monotonic()
        done = self._count(self.n) + (f"/{self._count(self.total)}" if self.total else "")
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = f" | {self.postfix}" if self.postfix else ""
        say(f"{self.desc}: {done} {self.unit}{pct} | {self._last - self._t0:,.0f} s{extra}")

    def close(self) -> None:
        if not self._closed and self.n:
            self._print()
        self._closed = True


def progress(total: int | None = None, desc: str = "", unit: str = "it", *, initial: int = 0, enabled: bool = True,
             unit_scale: bool = False, lines: bool = True):  # fmt: skip
    """A progress bar on a terminal; in a log, plain lines (`LineProgress`), or nothing when `lines` is False
    (the caller logs its own lines, as the trainer does); nothing at all when not enabled."""
    if not enabled or not _state["on"] or (not lines and not interactive()):
        return tqdm(total=total, disable=True)
    if not interactive():
        return LineProgress(total, desc, unit, initial=initial, unit_scale=unit_scale)
    return tqdm(total=total, initial=initial, desc=desc or None, unit=unit, unit_scale=unit_scale,
                unit_divisor=1000, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)  # fmt: skip
