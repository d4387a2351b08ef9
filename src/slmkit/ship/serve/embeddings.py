"""`POST /v1/embeddings` of `slm serve`: OpenAI's embeddings API over the served model, concurrent requests batched
into shared forward passes by `EmbeddingBatcher`.

Request: {"model", "input": a string | a list of strings | a list of token ids | a list of those, "encoding_format":
"float" (the default) | "base64" (the little-endian float32 bytes, what the openai client asks for unless told
otherwise), "dimensions": only the model's width (the vectors were not trained to be cut, so another is refused),
"user": ignored}. Response: {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...] |
"base64"}], "model", "usage": {"prompt_tokens", "total_tokens"}} (tokens the model read, end-of-text included).

A vector is the served run's embed.pooling (mean unless the run says otherwise) of its final-norm token states,
L2-normalized: what `slm embed` gives for the same text (`slmkit.engine.embedding`). No instruction is added; a client
that wants the run's query prefix (embed.instruction) puts it in its text.

Refused with a 400 in OpenAI's error body, naming the input: no input, an empty string or token list, more than
MAX_INPUTS inputs (2048, OpenAI's cap), a token id outside the vocabulary, a text the tokenizer cannot encode, and an
input longer than the model's context (block_size tokens, one less with eos pooling, which appends end-of-text):
code `context_length_exceeded`. Long inputs are refused, not cut, as OpenAI does: a vector of the first part of a
text would look like one of the whole (a client splits long texts, as `slm index` does). A full queue: 429.

Batching: one worker thread per server owns the embedding forwards (started on the first request). Every request's
inputs wait in one FIFO; each turn the worker takes up to TURN_BATCHES * `max_batch` of them from the front, from
every request waiting (a larger request spans several turns), sorts them by length and runs them in right-padded
batches of up to `max_batch`, one forward each; a request is answered once all its inputs are done. A vector does
not depend on its batch-mates (causal attention; pooling reads a row's own positions), up to float rounding (and,
for an int8-dynamic model, fbgemm's per-call activation scale).

Sharing the model with the generation engine's thread is safe: this thread runs it under inference mode (autograd
off: grad mode is per thread) and never changes it; the model is in eval mode (no dropout), and `GPT.hidden` without a
KV cache only reads the parameters and rope buffers: it writes no module state (the engine's KV caches are its own
objects, passed per call). The two threads share the CPU cores, not state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from slmkit.base.config import EmbedConfig
from slmkit.base.tokenizer import Tokenizer
from slmkit.data.pairs import pad_batch
from slmkit.engine.embedding import check_pooling, encode
from slmkit.model.gpt import GPT
from slmkit.runs.checkpoint import CONFIG_FILE, read_run_config
from slmkit.ship.serve.protocol import APIError, checked_ids, json_body, show

MAX_INPUTS = 2048
"""Inputs in one request (OpenAI's cap)."""
DEFAULT_MAX_BATCH = 64
"""Inputs embedded in one forward pass (the throughput target of issue 15 is stated at batch 64)."""
TURN_BATCHES = 8
"""A worker turn takes up to this many batches' worth of waiting inputs and batches them by length, so that short
inputs are not padded to a long one's length (300 Wikipedia first sentences of 45 tokens on average, up to 205, as
single requests on 1 thread: FIFO batches of 64 ran at 24 queries/s, length-sorted ones at 37-43, one at a time 41)."""
DEFAULT_MAX_QUEUE = 8192
"""Inputs that may wait for the worker; a request that would pass it is answered 429 at once."""
ENCODINGS = ("float", "base64")


class EmbeddingBusy(Exception):
    """The queue of waiting inputs is full."""


@dataclass
class _Request:
    ids: list[list[int]]
    done: Callable[[np.ndarray | None, str | None], None]  # (vectors (N, C) float32, None) or (None, error)
    vectors: np.ndarray | None = None
    left: int = 0
    failed: bool = False


@dataclass
class _Stats:
    forwards: int = 0
    inputs: int = 0
    largest_batch: int = 0
    requests: int = 0


class EmbeddingBatcher:
    """Embeds token-id lists on its own worker thread, batching the inputs of concurrent requests (module
    docstring). `submit` queues a request; `embed` awaits one from an event loop; `embed_now` blocks."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, pooling: str = "mean", max_batch: int = DEFAULT_MAX_BATCH,
                 max_queue: int = DEFAULT_MAX_QUEUE):  # fmt: skip
        check_pooling(pooling, tokenizer)
        self.model, self.tok, self.pooling = model, tokenizer, pooling
        self.max_batch, self.max_queue = max_batch, max_queue
        self.limit = model.config.block_size - (pooling == "eos")  # tokens of input that fit (eos appends one)
        self.dim = model.config.n_embd
        self.stats = _Stats()
        self._queue: deque[tuple[_Request, int]] = deque()
        self._cond = threading.Condition()
        self._held = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- the worker ------------------------------------------------------------------------------------------

    def start(self) -> EmbeddingBatcher:
        with self._cond:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._work, name="slm-embeddings", daemon=True)
                self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the worker after its current turn; requests still waiting get an error (the server is stopping)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
            waiting = {id(req): req for req, _ in self._queue if not req.failed}
            self._queue.clear()
        for req in waiting.values():
            req.failed = True
            req.done(None, "the server is stopping; the request was not embedded")
        if thread is not None:
            thread.join(10)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """While held, the worker starts no new turn; requests queue up and go together when released (tests use it
        to make concurrent requests meet in one batch)."""
        with self._cond:
            self._held += 1
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()

    def _next_turn(self) -> list[tuple[_Request, int]] | None:
        """The inputs of the worker's next turn: up to TURN_BATCHES * max_batch from the front of the queue (None:
        stopping)."""
        with self._cond:
            while not self._stopping and (not self._queue or self._held):
                self._cond.wait()
            if self._stopping:
                return None
            turn = []
            while self._queue and len(turn) < TURN_BATCHES * self.max_batch:
                req, i = self._queue.popleft()
                if not req.failed:
                    turn.append((req, i))
            return turn

    def _work(self) -> None:
        with torch.inference_mode():  # per thread: this worker never records autograd history
            while (turn := self._next_turn()) is not None:
                turn.sort(key=lambda item: -len(item[0].ids[item[1]]))  # by length: a batch's rows pad little
                for start in range(0, len(turn), self.max_batch):
                    self._run(turn[start : start + self.max_batch])

    def _run(self, batch: list[tuple[_Request, int]]) -> None:
        batch = [(req, i) for req, i in batch if not req.failed]
        if not batch:
            return
        try:
            device = next(self.model.parameters()).device
            ids, lengths = pad_batch([req.ids[i] for req, i in batch], device)
            vectors = F.normalize(encode(self.model, ids, lengths, self.pooling), dim=-1).float().cpu().numpy()
        except Exception as e:  # a bug or out of memory: the requests get a 500, the worker lives on
            for req in {id(r): r for r, _ in batch}.values():
                req.failed = True
                req.done(None, f"embedding failed: {type(e).__name__}: {e}")
            return
        s = self.stats
        s.forwards, s.inputs, s.largest_batch = s.forwards + 1, s.inputs + len(batch), max(s.largest_batch, len(batch))
        for row, (req, i) in enumerate(batch):
            req.vectors[i] = vectors[row]
            req.left -= 1
            if req.left == 0:
                req.done(req.vectors, None)

    # -- queueing --------------------------------------------------------------------------------------------

    def submit(self, ids: list[list[int]], done: Callable[[np.ndarray | None, str | None], None]) -> None:
        """Queue one request's inputs (token ids, end-of-text already appended for eos pooling); `done` is called
        on the worker thread with all of its vectors (N, C) float32, or with an error. Raises EmbeddingBusy."""
        req = _Request(ids, done, np.zeros((len(ids), self.dim), dtype=np.float32), len(ids))
        self.start()
        with self._cond:
            if len(self._queue) + len(ids) > self.max_queue:
                raise EmbeddingBusy(f"{len(self._queue)} inputs are waiting to be embedded (at most "
                                    f"{self.max_queue}); try again shortly")  # fmt: skip
            self._queue.extend((req, i) for i in range(len(ids)))
            self.stats.requests += 1
            self._cond.notify_all()

    async def embed(self, ids: list[list[int]]) -> np.ndarray:
        """The vectors of `ids`, awaited on the running event loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(vectors, error) -> None:
            loop.call_soon_threadsafe(_settle, future, vectors, error)

        self.submit(ids, done)
        return await future

    def embed_now(self, ids: list[list[int]], timeout: float = 600) -> np.ndarray:
        """The vectors of `ids`, blocking this thread until they are ready."""
        ready, out = threading.Event(), {}

        def done(vectors, error) -> None:
            out.update(vectors=vectors, error=error)
            ready.set()

        self.submit(ids, done)
        if not ready.wait(timeout):
            raise TimeoutError("the embedding worker did not answer")
        if out["error"]:
            raise RuntimeError(out["error"])
        return out["vectors"]

    # -- reading requests ------------------------------------------------------------------------------------

    def input_ids(self, given, param: str) -> list[int]:
        """One input (text or token ids) as the ids the model reads; APIError when it cannot be embedded."""
        if isinstance(given, str):
            if not given.strip():
                raise APIError(f"{param} is an empty string; every input needs text to embed", param)
            try:
                ids = self.tok.encode(given)
            except ValueError as e:  # a character a char-level vocabulary lacks
                raise APIError(f"{param} cannot be encoded by this model's tokenizer: {e}", param,
                               "invalid_input") from None  # fmt: skip
        else:
            ids = checked_ids(given, self.tok.vocab_size, param, "invalid_input")
        if len(ids) > self.limit:
            raise APIError(f"{param} has {len(ids)} tokens; this model embeds at most {self.limit} (its context); "
                           "split the text and embed the pieces", param, "context_length_exceeded")  # fmt: skip
        return ids + [self.tok.eot_id] if self.pooling == "eos" else ids


def _settle(future: asyncio.Future, vectors, error) -> None:
    if future.done():  # the request was cancelled (its client went away)
        return
    if error:
        future.set_exception(APIError(error, status=500, type="server_error"))
    else:
        future.set_result(vectors)


def _is_ids(x) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def parse_input(body: dict) -> tuple[list, bool]:
    """(the inputs, whether `input` was a list of them) of an embeddings body."""
    given = body.get("input")
    if isinstance(given, str) or _is_ids(given):
        return [given], False
    if isinstance(given, list) and given and all(isinstance(x, str) or _is_ids(x) for x in given):
        if len(given) > MAX_INPUTS:
            raise APIError(f"'input' has {len(given)} inputs; at most {MAX_INPUTS} per request", "input")
        return given, True
    if given is None or given == [] or given == "":
        raise APIError("'input' is required: a string, a list of strings, or token ids", "input")
    raise APIError(f"'input' must be a string, a list of strings, a non-empty list of token ids, or a list of those; "
                   f"got {show(given)}", "input")  # fmt: skip


def parse_options(body: dict, dim: int) -> str:
    """The encoding format; `dimensions` other than the model's width is refused."""
    fmt = body.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in ENCODINGS:
        raise APIError(f"'encoding_format' must be float or base64, got {show(fmt)}", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or dims != dim):
        raise APIError(f"'dimensions' {show(dims)} is not supported by this server (slm serve): its vectors have "
                       f"{dim} dimensions; leave it out", "dimensions", "unsupported_parameter")  # fmt: skip
    return fmt


def _encoded(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def add_embeddings_route(app: FastAPI, server, batcher: EmbeddingBatcher) -> None:
    """Register POST /v1/embeddings on `app`; `server` (app.Server) checks the model name."""
    app.state.embedder = batcher

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await json_body(request)
        server.check_model(body)
        fmt = parse_options(body, batcher.dim)
        given, listed = parse_input(body)
        ids = [batcher.input_ids(x, f"input[{i}]" if listed else "input") for i, x in enumerate(given)]
        try:
            vectors = await batcher.embed(ids)
        except EmbeddingBusy as e:
            raise APIError(str(e), code="server_busy", status=429, type="rate_limit_error") from None
        tokens = sum(len(x) for x in ids)
        data = [{"object": "embedding", "index": i, "embedding": _encoded(v, fmt)} for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": server.model_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip


def run_pooling(run: str | Path) -> str:
    """The pooling a run's embeddings use: its embed.pooling (a quantized artifact keeps its run's config.toml);
    EmbedConfig's default where there is no config.toml to read (`load_engine` has loaded the model by then, so a
    missing one is a stand-in engine, as in tests)."""
    return read_run_config(run).embed.pooling if (Path(run) / CONFIG_FILE).is_file() else EmbedConfig.pooling
