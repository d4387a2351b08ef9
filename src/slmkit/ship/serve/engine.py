"""The generation engine behind `slm serve`: one worker thread owns the model and decodes every active request
together, one batched forward pass per step (continuous batching).

Requests wait in a bounded FIFO queue (`submit` raises EngineBusy when it is full: the HTTP layer answers 429). Up
to `max_batch` of them are active, each in a row of one `RaggedKVCache` (its own length, position ids and attention
mask). Every step of the worker: cancelled requests leave (their rows free), waiting requests join (each prompt is
prefilled alone, batch 1, into its row, as `generate` does, and gives the request its first token; at most
`PREFILL_TOKENS_PER_STEP` prompt tokens per step, at least one request, so a burst of long prompts cannot stall the
others for long), a row whose context is full re-prefills its recent window, then one forward over all active rows
gives each its next token. Finished requests leave at once; the rest never wait for them. Picking a token
(temperature, top-p, seed, stop ids, logprobs) is each request's own `Decoding`, with its own random generator, and
the batched forward computes each row as it would alone (`gpt.project`), so a request's reply does not depend on
what else is being served; a request's text is decoded by its own `TextStream`, so streams never mix. (A greedy reply
is also `generate`'s for float models; int8 models decode in batches with per-row activation scales, `int8mm.int8_rows`,
which round differently from fbgemm's batch-1 kernel that `generate` and `--max-batch 1` use.)

A request's events (text pieces, then `done` with the finish reason and token counts, or `error`) are handed to
whoever waits on them through a callback, which the HTTP layer points at its event loop. Cancelling a request (its
client went away, streaming or not) frees its row at the worker's next step; a waiting one leaves the queue unstarted.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from slmkit.base.tokenizer import Tokenizer
from slmkit.model.generate import Decoding, Step, TextStream

DEFAULT_MAX_BATCH = 16
"""Requests decoded together (`slm serve --max-batch`). On the 6 x 384 int8 model 16 rows give ~3x the tokens/s of
one at a time (benchmarks/results/serve.md); more rows cost memory (a KV cache row each) and per-token latency."""
DEFAULT_MAX_QUEUE = 64
"""Requests that may wait for a row (`slm serve --max-queue`); one more is answered 429 at once."""
PREFILL_TOKENS_PER_STEP = 512
"""Prompt tokens prefilled between two decoding steps (always at least one request): bounds the pause that a burst
of new requests puts into the others' streams."""


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int:
    """Torch threads for serving when `slm serve --threads` is not given: 1 on up to 4 cores, else min(4, cores // 2).
    The worker decodes one token of one request at a time (batch 1): tiny matmuls, where more threads mostly add
    hand-offs, and spinning threads that wait for cores other processes hold. With 16 streaming clients on a busy
    2-core machine, 1 thread gave ~15% more tokens/s and a lower p95 than 2 (torch's default there;
    benchmarks/results/serve_threads.md); a tester saw p95 latency 10 s with torch's default vs 0.2 s with 1 thread.
    The min(4, cores // 2) above 4 cores leaves half the cores to other work; it was not measured here.
    Continuous batching makes the matmuls larger (16 rows a step), and there 2 threads did better on the same 2-core
    machine under heavy load (load average 14-16): 314 vs 195 tokens/s (benchmarks/results/serve.md) and, alternated
    over 2 rounds, a median of 190 vs 151 tokens/s with TTFT p95 2.8 vs 2.4 s (serve_threads_batched.md). The
    default stays 1 on up to 4 cores until that is confirmed on a quieter machine (`--threads 2` to use it now)."""
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


@dataclass
class Row:
    """An active request: its job, how its tokens are picked, and the decoder of its text. `finish` is set when it
    is done: a finish reason ("stop", "length"), "" when cancelled, or "error: ..."."""

    job: Job
    seq: Decoding
    stream: TextStream
    finish: str | None = None


class Engine:
    """A model, a tokenizer, a queue and one worker thread. `submit(job)` returns at once; events follow.

    max_batch: requests decoded together (`slots` is its former name, kept for callers); max_queue: requests that
    may wait (read at every submit, so it may be changed on a running engine)."""

    def __init__(self, model, tokenizer: Tokenizer, *, max_batch: int = DEFAULT_MAX_BATCH,
                 max_queue: int = DEFAULT_MAX_QUEUE, slots: int | None = None):  # fmt: skip
        self.model, self.tok = model.eval(), tokenizer
        self.max_batch, self.max_queue = max(1, slots if slots is not None else max_batch), max_queue
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()  # guards _waiting and the counters; wakes the idle worker
        self._rows: list[Row] = []  # row i of the cache is _rows[i]; the worker's alone
        self._cache = model.new_ragged_cache(self.max_batch)
        self._device = model.lm_head.weight.device
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slm-serve-engine", daemon=True)
        self.completed = self.cancelled = self.steps = self.batched = 0

    @property
    def slots(self) -> int:
        return self.max_batch

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
                raise EngineBusy(f"the server is busy: {len(self._waiting)} requests are already waiting for one of "
                                 f"its {self.max_batch} rows; retry later")  # fmt: skip
            self._waiting.append(job)
            self._cond.notify()

    def stats(self) -> dict:
        """waiting and active jobs (cancelled ones no longer count once the worker has seen them), the limits, the
        jobs completed and cancelled so far, the batched decoding steps and their mean rows, torch's CPU threads."""
        with self._cond:
            self._drop_cancelled()
            return {"waiting": len(self._waiting), "active": len(self._rows), "slots": self.max_batch,
                    "max_batch": self.max_batch, "max_queue": self.max_queue, "completed": self.completed,
                    "cancelled": self.cancelled, "decode_steps": self.steps,
                    "mean_batch": round(self.batched / self.steps, 2) if self.steps else 0.0,
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
            jobs = self._take()
            with torch.inference_mode():
                for row in self._rows:
                    if row.job.cancelled.is_set():
                        row.finish = ""
                self._release()
                for job in jobs:
                    self._join(job)
                for r, row in enumerate(self._rows):  # a full context: re-prefill the recent window (as generate)
                    if row.finish is None and row.seq.needs_window(self._cache.lengths[r]):
                        row.seq.restart()
                        self._prefill(r)
                self._release()
                if self._rows:
                    self._decode()
                    self._release()

    def _take(self) -> list[Job]:
        """Waiting jobs for the free rows, up to PREFILL_TOKENS_PER_STEP prompt tokens (at least one job); blocks
        briefly when there is nothing to do."""
        with self._cond:
            self._drop_cancelled()
            if not self._rows and not self._waiting:
                self._cond.wait(timeout=0.05)
                self._drop_cancelled()
            jobs, budget = [], PREFILL_TOKENS_PER_STEP
            while self._waiting and len(self._rows) + len(jobs) < self.max_batch and (budget > 0 or not jobs):
                jobs.append(self._waiting.popleft())
                budget -= len(jobs[-1].prompt_ids)
            return jobs

    def _join(self, job: Job) -> None:
        """Give the job the next row and prefill its prompt there alone; its first token follows."""
        try:
            seq = Decoding(self.model, job.prompt_ids, job.max_tokens, temperature=job.temperature, top_p=job.top_p,
                           seed=job.seed, stop_ids=job.stop_ids, vocab_limit=self.tok.vocab_size,
                           logprobs=job.logprobs)  # fmt: skip
        except Exception as e:  # parameters the HTTP layer let through: the request fails, nothing else
            self._emit(job, "error", f"generation failed: {type(e).__name__}: {e}")
            return
        self._rows.append(Row(job, seq, TextStream(self.tok, job.stop, lambda s, job=job: self._text(job, s))))
        self._prefill(len(self._rows) - 1)

    def _prefill(self, r: int) -> None:
        """Feed row r's pending ids into its emptied cache row (batch 1) and pick its next token."""
        row = self._rows[r]
        try:
            cache = self._cache.row(r)
            x = torch.tensor([row.seq.pending], dtype=torch.long, device=self._device)  # (1, T)
            logits, _ = self.model(x, kv_cache=cache, last_only=True)  # (1, 1, padded_vocab)
            self._cache.lengths[r] = cache.length
        except Exception as e:  # the model failed on this request: it alone ends
            row.finish = f"error: generation failed: {type(e).__name__}: {e}"
            return
        self._advance(row, logits[0, -1])

    def _decode(self) -> None:
        """One forward over every active row (B, 1): each row's pending token at its own position. With max_batch 1
        the one row decodes through a batch-1 `KVCache` over its storage: exactly `generate`'s path (the old
        one-at-a-time engine, the benchmark's baseline)."""
        rows = self._rows
        x = torch.tensor([row.seq.pending for row in rows], dtype=torch.long, device=self._device)  # (B, 1)
        try:
            if self.max_batch == 1:
                cache = self._cache.row(0)
                cache.length = self._cache.lengths[0]
                logits, _ = self.model(x, kv_cache=cache)  # (1, 1, padded_vocab)
                self._cache.lengths[0] = cache.length
            else:
                logits, _ = self.model(x, kv_cache=self._cache)  # (B, 1, padded_vocab)
        except Exception as e:  # never let it kill the worker: the requests of this batch fail
            for row in rows:
                row.finish = f"error: generation failed: {type(e).__name__}: {e}"
            return
        self.steps, self.batched = self.steps + 1, self.batched + len(rows)
        for b, row in enumerate(rows):
            self._advance(row, logits[b, -1])

    def _advance(self, row: Row, logits: torch.Tensor) -> None:
        """Pick the row's next token from its logits (padded_vocab,), stream its text; set `finish` when that ends
        it (a stop id or string, max_tokens) or fails (the receiver of the events failed)."""
        job, stream = row.job, row.stream
        try:
            token = row.seq.pick(logits)
            if token is None:  # a stop id (end-of-text / end-of-turn)
                stream.flush()
                row.finish = "stop"
                return
            job.tokens += 1
            if isinstance(token, Step):
                job.steps.append(token)
                token = token.token
            if stream.add(token):
                row.finish = "stop"
            elif job.tokens >= job.max_tokens:
                stream.flush()
                row.finish = "length"
        except Exception as e:
            row.finish = f"error: generation failed: {type(e).__name__}: {e}"

    def _release(self) -> None:
        """Finished rows leave: their events go out, and the last active row moves into each freed one (highest
        first, so the row moved is never one that leaves)."""
        done = [r for r, row in enumerate(self._rows) if row.finish is not None]
        for r in reversed(done):
            row, last = self._rows[r], len(self._rows) - 1
            if r != last:
                self._cache.move(last, r)
                self._rows[r] = self._rows[last]
            self._rows.pop()
            self._finish(row)

    @staticmethod
    def _text(job: Job, text: str) -> None:
        """Emit released text, after the tokens (with logprobs) that made it."""
        if job.steps:
            steps, job.steps = job.steps, []
            job.emit("tokens", steps)
        job.emit("text", text)

    def _finish(self, row: Row) -> None:
        job, reason = row.job, row.finish
        if reason == "":
            with self._cond:
                self.cancelled += 1
        elif reason.startswith("error: "):
            self._emit(job, "error", reason[len("error: ") :])
        else:
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
