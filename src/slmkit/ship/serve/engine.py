"""The generation engine behind `slm serve`: one worker thread owns the model; requests never share state.

Requests wait in a FIFO queue. The worker keeps up to `slots` of them active and advances them round-robin, one
token each per turn, every request with its own generator (hence its own KV cache and random generator): a new
request gets its first token after at most one token step of each other active request, not after their whole
replies, and no stream can see another's tokens. A request's events (text pieces, then `done` with the finish
reason and token counts, or `error`) are handed to whoever waits on them through a callback, which the HTTP layer
points at its event loop. Cancelling a request (its client went away, streaming or not) stops it at the worker's
next turn: an active one generates no further token and frees its slot, a waiting one leaves the queue unstarted.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from slmkit.base.tokenizer import Tokenizer
from slmkit.model.generate import Step, TextStream, generate


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int:
    """Torch threads for serving when `slm serve --threads` is not given: 1 on up to 4 cores, else min(4, cores // 2).
    The worker decodes one token of one request at a time (batch 1): tiny matmuls, where more threads mostly add
    hand-offs, and spinning threads that wait for cores other processes hold. With 16 streaming clients on a busy
    2-core machine, 1 thread gave ~15% more tokens/s and a lower p95 than 2 (torch's default there;
    benchmarks/results/serve_threads.md); a tester saw p95 latency 10 s with torch's default vs 0.2 s with 1 thread.
    The min(4, cores // 2) above 4 cores leaves half the cores to other work; it was not measured here."""
    cores = cpu_cores() if cores is None else cores
    return 1 if cores <= 4 else min(4, cores // 2)


class EngineBusy(Exception):
    """The waiting queue is full."""


@dataclass
class Job:
    """One generation request and its progress. `emit(kind, payload)` receives ("text", str), then
    ("done", {"finish_reason", "prompt_tokens", "completion_tokens"}) or ("error", str); nothing after a cancel.
    With `logprobs` = N (alternatives per token; None: off), ("tokens", [Step, ...]) comes before each ("text", str)
    with the tokens generated since the last one, and once more before "done" with any whose text was never
    released (cut by a stop string, or an incomplete UTF-8 character at the end)."""

    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[str, object], None]
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_ids: list[int] = field(default_factory=list)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.time)
    logprobs: int | None = None
    tokens: int = 0
    steps: list[Step] = field(default_factory=list)  # tokens (with logprobs) not yet emitted

    def cancel(self) -> None:
        """Stop this job at the worker's next turn (a no-op once it has finished)."""
        self.cancelled.set()


Entry = tuple[Job, Iterator[int], TextStream]


class Engine:
    """A model, a tokenizer, a queue and one worker thread. `submit(job)` returns at once; events follow."""

    def __init__(self, model, tokenizer: Tokenizer, *, slots: int = 4, max_queue: int = 256):
        self.model, self.tok = model, tokenizer
        self.slots, self.max_queue = max(1, slots), max_queue
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()  # guards _waiting and the counters; wakes the idle worker
        self._active: list[Entry] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slm-serve-engine", daemon=True)
        self.completed = self.cancelled = 0

    # -- control ---------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._cond:
            self._drop_cancelled()
            if len(self._waiting) >= self.max_queue:
                raise EngineBusy(f"{len(self._waiting)} requests are already waiting; retry later")
            self._waiting.append(job)
            self._cond.notify()

    def stats(self) -> dict:
        """waiting and active jobs (cancelled ones no longer count once the worker has seen them), slots, the jobs
        completed and cancelled so far, and torch's CPU threads."""
        with self._cond:
            self._drop_cancelled()
            return {"waiting": len(self._waiting), "active": len(self._active), "slots": self.slots,
                    "completed": self.completed, "cancelled": self.cancelled,
                    "threads": torch.get_num_threads()}  # fmt: skip

    def _drop_cancelled(self) -> None:
        """Remove cancelled jobs from the queue (the lock is held)."""
        if any(j.cancelled.is_set() for j in self._waiting):
            kept = [j for j in self._waiting if not j.cancelled.is_set()]
            self.cancelled += len(self._waiting) - len(kept)
            self._waiting = deque(kept)

    # -- the worker ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._admit()
            for entry in list(self._active):
                self._step(entry)

    def _admit(self) -> None:
        """Move waiting jobs into free slots; block briefly when there is nothing to do."""
        with self._cond:
            self._drop_cancelled()
            if not self._active and not self._waiting:
                self._cond.wait(timeout=0.05)
                self._drop_cancelled()
            jobs = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.slots - len(self._active)))]
        for job in jobs:
            stream = TextStream(self.tok, job.stop, lambda s, job=job: self._text(job, s))
            gen = generate(self.model, job.prompt_ids, job.max_tokens, temperature=job.temperature, top_p=job.top_p,
                           seed=job.seed, stop_ids=job.stop_ids, vocab_limit=self.tok.vocab_size,
                           logprobs=job.logprobs)  # fmt: skip
            self._active.append((job, gen, stream))

    def _step(self, entry: Entry) -> None:
        """Advance one job by one token; finish it on a stop, the token limit, cancellation or an error."""
        job = entry[0]
        if job.cancelled.is_set():
            with self._cond:
                self.cancelled += 1
            return self._finish(entry, None)
        try:
            reason = self._advance(entry)
        except Exception as e:  # the model or the receiver of the events failed: never let it kill the worker
            self._finish(entry, None)
            self._emit(job, "error", f"generation failed: {type(e).__name__}: {e}")
            return
        if reason is not None:
            self._finish(entry, reason)

    @staticmethod
    def _text(job: Job, text: str) -> None:
        """Emit released text, after the tokens (with logprobs) that made it."""
        if job.steps:
            steps, job.steps = job.steps, []
            job.emit("tokens", steps)
        job.emit("text", text)

    @staticmethod
    def _advance(entry: Entry) -> str | None:
        """One token of the job; its finish reason when that ended it."""
        job, gen, stream = entry
        try:
            token = next(gen)
        except StopIteration:  # a stop id (end-of-text / end-of-turn) or max_tokens reached
            stream.flush()
            return "length" if job.tokens >= job.max_tokens else "stop"
        job.tokens += 1
        if isinstance(token, Step):
            job.steps.append(token)
            token = token.token
        if stream.add(token):
            return "stop"
        if job.tokens >= job.max_tokens:
            stream.flush()
            return "length"
        return None

    def _finish(self, entry: Entry, reason: str | None) -> None:
        job, gen, _ = entry
        self._active.remove(entry)
        gen.close()
        if reason is not None:
            with self._cond:
                self.completed += 1
            if job.steps:
                self._emit(job, "tokens", job.steps)
                job.steps = []
            self._emit(job, "done", {"finish_reason": reason, "prompt_tokens": len(job.prompt_ids),
                                     "completion_tokens": job.tokens})  # fmt: skip

    @staticmethod
    def _emit(job: Job, kind: str, payload) -> None:
        try:
            job.emit(kind, payload)
        except Exception:  # nobody can receive it any more (e.g. the server's event loop has closed)
            job.cancel()
