"""An ordered, bounded map over an executor: how prepare, stream mode and the cleaner keep worker processes busy
while results come back in input order and memory stays bounded."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor


def ordered_map(ex: Executor | None, fn: Callable, items: Iterable[tuple], in_flight: int) -> Iterator[tuple]:
    """For (arg, extra) items: (extra, fn(arg)) in input order, at most `in_flight` tasks queued; `ex` None runs
    fn here, one item at a time."""
    if ex is None:
        for arg, extra in items:
            yield extra, fn(arg)
        return
    pending: deque = deque()
    for arg, extra in items:
        pending.append((extra, ex.submit(fn, arg)))
        if len(pending) >= in_flight:
            extra, fut = pending.popleft()
            yield extra, fut.result()
    while pending:
        extra, fut = pending.popleft()
        yield extra, fut.result()
