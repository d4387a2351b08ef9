"""The generation engine behind `slm serve`: one worker thread owns the model; requests never share state.

Requests wait in a FIFO queue. The worker keeps up to `slots` of them active and advances them round-robin, one
token each per turn, every request with its own generator (hence its own KV cache and random generator): a new
request gets its first token after at most one token step of each other active request, not after their whole
replies, and no stream can see another's tokens. A request's events (text pieces, then `done` with the finish
reason and token counts, or `error`) are handed to whoever waits on them through a callback, which the HTTP layer
points at its event loop. Cancelling a request (the client went away) frees its slot at the worker's next turn.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from slmkit.base.tokenizer import Tokenizer
from slmkit.model.generate import TextStream, generate


class EngineBusy(Exception):
    """The waiting queue is full."""


@dataclass
class Job:
    """One generation request and its progress. `emit(kind, payload)` receives ("text", str), then
    ("done", {"finish_reason", "prompt_tokens", "completion_tokens"}) or ("error", str)."""

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
    tokens: int = 0

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    """A model, a tokenizer, a queue and one worker thread. `submit(job)` returns at once; events follow."""

    def __init__(self, model, tokenizer: Tokenizer, *, slots: int = 4, max_queue: int = 256):
        self.model, self.tok = model, tokenizer
        self.slots, self.max_queue = max(1, slots), max_queue
        self._waiting: queue.Queue[Job] = queue.Queue()
        self._active: list[tuple[Job, Iterator[int], TextStream]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slm-serve-engine", daemon=True)
        self.completed = 0

    # -- control ---------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        if self._waiting.qsize() >= self.max_queue:
            raise EngineBusy(f"{self._waiting.qsize()} requests are already waiting; retry later")
        self._waiting.put(job)

    def stats(self) -> dict:
        return {"waiting": self._waiting.qsize(), "active": len(self._active), "slots": self.slots,
                "completed": self.completed}  # fmt: skip

    # -- the worker ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._admit()
            if not self._active:
                continue
            for entry in list(self._active):
                self._step(entry)

    def _admit(self) -> None:
        """Move waiting jobs into free slots; block briefly when there is nothing to do."""
        while len(self._active) < self.slots:
            try:
                job = self._waiting.get(timeout=0.05) if not self._active else self._waiting.get_nowait()
            except queue.Empty:
                return
            if job.cancelled.is_set():
                continue
            stream = TextStream(self.tok, job.stop, lambda s, job=job: job.emit("text", s))
            gen = generate(self.model, job.prompt_ids, job.max_tokens, temperature=job.temperature, top_p=job.top_p,
                           seed=job.seed, stop_ids=job.stop_ids, vocab_limit=self.tok.vocab_size)  # fmt: skip
            self._active.append((job, gen, stream))

    def _step(self, entry: tuple[Job, Iterator[int], TextStream]) -> None:
        """Advance one job by one token; finish it on a stop, the token limit, cancellation or an error."""
        job, gen, stream = entry
        if job.cancelled.is_set():
            return self._finish(entry, None)
        try:
            token = next(gen)
        except StopIteration:  # a stop id (end-of-text / end-of-turn) or max_tokens reached
            stream.flush()
            return self._finish(entry, "length" if job.tokens >= job.max_tokens else "stop")
        except Exception as e:  # never let one request kill the worker
            job.emit("error", f"generation failed: {type(e).__name__}: {e}")
            return self._finish(entry, None)
        job.tokens += 1
        if stream.add(token):
            return self._finish(entry, "stop")
        if job.tokens >= job.max_tokens:
            stream.flush()
            return self._finish(entry, "length")

    def _finish(self, entry, reason: str | None) -> None:
        job, gen, _ = entry
        self._active.remove(entry)
        gen.close()
        self.completed += 1
        if reason is not None:
            job.emit("done", {"finish_reason": reason, "prompt_tokens": len(job.prompt_ids),
                              "completion_tokens": job.tokens})  # fmt: skip
