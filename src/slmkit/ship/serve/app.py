"""`slm serve`: an OpenAI-compatible HTTP API and a web chat page over one model (FastAPI + uvicorn).

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions, POST /v1/embeddings
(its own batching worker: `slmkit.ship.serve.embeddings`) (OpenAI request
and response shapes; `stream: true` sends server-sent events, `data: {chunk}` lines ending with `data: [DONE]`),
GET /health, and GET / (the chat page, `static/index.html`). Supported parameters: max_tokens
(max_completion_tokens), temperature, top_p, stop (a string or up to 4), seed (64-bit), n = 1,
stream_options.include_usage, logprobs (chat: `logprobs: true` and `top_logprobs` 0..20, giving
choices[i].logprobs.content; completions: `logprobs` 0..5, giving OpenAI's legacy {tokens, token_logprobs,
top_logprobs, text_offset}; the log-softmax at the request's temperature, 1 when greedy, before top_p filtering:
`slmkit.model.generate.token_logprobs`); for completions, `prompt` as a string, a list of token ids, or a list of
up to 64 of those (one choice each, `index` telling them apart), `echo` (the prompt is returned before the
completion) and `suffix` (fill in the middle between prompt and suffix, for a model trained with data.fim_rate > 0:
`protocol.infill_prompts`; the reply's `truncation`, or the X-Slm-Truncation header of a stream, says how many
tokens were cut from the start of each prompt and the end of the suffix to fit the context).
Parameters that would change the reply but are not implemented (echo with logprobs, best_of,
logit_bias, presence/frequency_penalty, tools, functions, response_format other than text, ...: NOT_IMPLEMENTED) are
refused with a 400 naming them unless they hold their no-op value; other unknown parameters (user, metadata, ...)
are ignored.

Bound to a loopback address (the default), only requests addressed to this machine by name (Host: localhost,
127.0.0.1 or [::1] at the bound port) are served, against DNS rebinding; a browser request's Origin must be the
server's own (its chat page) or one allowed; others get a 403 (`Access`; `--allow-host`, `--allow-origin`).
A POST body must be JSON sent as `Content-Type: application/json` (415 otherwise: a page on another site can make a
browser POST text/plain or a form here, but not JSON). Bad requests get a 4xx with OpenAI's error body {"error":
{"message", "type", "param", "code"}}, never a 500. A prompt must be shorter than the model's context
(block_size); the reply may run past it (generation slides its window). A client that disconnects before its reply
is complete, streaming or not, cancels its generation at the engine's next step.
Chat messages are rendered with the fine-tuning template (`slmkit.data.chat.render`) when the tokenizer has the
chat tokens, else as a plain "User: ... / Assistant:" transcript that stops at the next "\nUser:".
"""

from __future__ import annotations

import asyncio
import codecs
import json
import time
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from slmkit.base.config import TrainConfig
from slmkit.base.console import say
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import EOT
from slmkit.engine.runtime import resolve_runtime
from slmkit.model.generate import Step
from slmkit.runs.checkpoint import load_model
from slmkit.ship.chat import base_model_note
from slmkit.ship.complete import trained_fim
from slmkit.ship.serve.access import Access, AccessGuard
from slmkit.ship.serve.embeddings import EmbeddingBatcher, add_embeddings_route, run_pooling
from slmkit.ship.serve.engine import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    Engine,
    EngineBusy,
    Job,
    cpu_cores,
    default_threads,
)
from slmkit.ship.serve.protocol import (
    APIError,
    checked_ids,
    flag,
    infill_prompts,
    json_body,
    parse_logprobs,
    parse_messages,
    parse_prompts,
    parse_sampling,
    parse_stream,
    parse_suffix,
    refuse_not_implemented,
    render_chat,
    show,
)

STATIC = Path(__file__).parent / "static"


# ---------------------------------------------------------------------------------------------------------
# Responses


def _usage(done: list[dict]) -> dict:
    p, c = sum(d["prompt_tokens"] for d in done), sum(d["completion_tokens"] for d in done)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so the server's next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # not expected (the body was read); never spin


class TokenLogprobs:
    """Renders the engine's `Step`s of one choice in OpenAI's shapes, keeping the character offset of the next token
    (completions' text_offset) across the pieces of a stream."""

    def __init__(self, tok, chat: bool, offset: int = 0):
        self.tok, self.chat, self.offset = tok, chat, offset
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def bytes(self, token: int) -> bytes:
        enc = getattr(self.tok, "enc", None)  # byte-level BPE: a token may be part of a UTF-8 character
        if enc is not None:
            return enc.decode_single_token_bytes(token)
        return self.tok.decode([token]).encode("utf-8")

    def text(self, token: int) -> str:
        """The token as text; one that is not whole UTF-8 (part of a character) as "bytes:\\xNN..." as OpenAI does,
        so that two such tokens never look alike."""
        raw = self.bytes(token)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)

    def render(self, steps: list[Step]) -> dict:
        if self.chat:

            def entry(token: int, logprob: float) -> dict:
                return {"token": self.text(token), "logprob": logprob, "bytes": list(self.bytes(token))}

            content = [{**entry(s.token, s.logprob), "top_logprobs": [entry(t, lp) for t, lp in s.top]}
                       for s in steps]  # fmt: skip
            return {"content": content, "refusal": None}
        offsets = []
        for s in steps:
            offsets.append(self.offset)
            self.offset += len(self.decoder.decode(self.bytes(s.token)))
        return {"tokens": [self.text(s.token) for s in steps], "token_logprobs": [s.logprob for s in steps],
                "top_logprobs": [{self.text(t): lp for t, lp in s.top} for s in steps],
                "text_offset": offsets}  # fmt: skip


class Server:
    """The state behind the routes: the engine, the model's name and limits."""

    def __init__(self, engine: Engine, model_name: str, max_tokens_cap: int):
        self.engine, self.model_name, self.cap = engine, model_name, max_tokens_cap
        self.tok, self.block = engine.tok, engine.model.config.block_size
        self.created = int(time.time())
        self.fim_rate = 0.0  # the run's data.fim_rate (create_app): > 0 lets completions take a suffix
        self.fim_spm_rate = 0.0  # its data.fim_spm_rate: > 0 puts infill prompts in SPM order (`infill_order`)

    def check_model(self, body: dict) -> None:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise APIError("'model' is required; GET /v1/models lists it", "model")
        if name != self.model_name:
            raise APIError(f"the model '{show(name)[1:-1]}' does not exist; this server serves '{self.model_name}'",
                           "model", "model_not_found", status=404)  # fmt: skip

    def check_prompt(self, ids: list[int], param: str) -> None:
        if len(ids) >= self.block:
            raise APIError(f"this model's context is {self.block} tokens; the prompt has {len(ids)}; shorten it",
                           param, "context_length_exceeded")  # fmt: skip

    def encode(self, text: str, param: str, allow_special: bool = True) -> list[int]:
        try:
            return self.tok.encode(text, allow_special=allow_special)
        except ValueError as e:  # e.g. a character a char-level vocabulary lacks
            raise APIError(f"{param} cannot be encoded by this model's tokenizer: {e}", param,
                           "invalid_prompt") from None  # fmt: skip

    def prompt_ids(self, prompt: str | list[int], param: str) -> list[int]:
        """A completions prompt (text, or token ids checked against the vocabulary) as ids within the context."""
        if isinstance(prompt, str):
            ids = self.encode(prompt, param) or [self.tok.token_id(EOT) or 0]
        else:
            ids = checked_ids(prompt, self.tok.vocab_size, param, "invalid_prompt")
        self.check_prompt(ids, param)
        return ids

    async def run(self, prompts: list[list[int]], sampling: dict, stop_ids: list[int],
                  logprobs: int | None = None) -> tuple[list[Job], asyncio.Queue]:  # fmt: skip
        """Queue one job per prompt; their events land in an asyncio queue of the running loop as (index, kind,
        payload). All or none are queued. `logprobs`: alternatives per token to report (None: no logprobs)."""
        loop, events, jobs = asyncio.get_running_loop(), asyncio.Queue(), []
        for index, ids in enumerate(prompts):

            def emit(kind: str, payload, index=index) -> None:
                loop.call_soon_threadsafe(events.put_nowait, (index, kind, payload))

            job = Job(ids, sampling["max_tokens"], emit, temperature=sampling["temperature"], top_p=sampling["top_p"],
                      seed=sampling["seed"], stop=sampling["stop"], stop_ids=stop_ids, logprobs=logprobs)  # fmt: skip
            try:
                self.engine.submit(job)
            except EngineBusy as e:
                for queued in jobs:
                    queued.cancel()
                raise APIError(str(e), code="server_busy", status=429, type="rate_limit_error") from None
            jobs.append(job)
        return jobs, events

    def chunk(self, rid: str, created: int, chat: bool, index: int, text: str | None, finish: str | None,
              first: bool = False, logprobs: dict | None = None) -> dict:  # fmt: skip
        if chat:
            delta = {} if text is None else {"content": text}
            if first:
                delta = {"role": "assistant", "content": ""}
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
            obj = "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": self.model_name, "choices": [choice]}

    @staticmethod
    def response_id(jobs: list[Job], chat: bool) -> str:
        return ("chatcmpl-" if chat else "cmpl-") + jobs[0].id

    async def stream(self, jobs: list[Job], events: asyncio.Queue, chat: bool, include_usage: bool,
                     echo: list[str] | None = None):  # fmt: skip
        """The SSE body; a client that goes away cancels the jobs (their slots free at the worker's next turn)."""
        rid, created = self.response_id(jobs, chat), int(jobs[0].created)
        renderers = [TokenLogprobs(self.tok, chat) for _ in jobs]
        pending: list[list[Step]] = [[] for _ in jobs]  # tokens whose text has not been sent yet
        try:
            if chat:
                yield _sse(self.chunk(rid, created, chat, 0, None, None, first=True))
            for index, text in enumerate(echo or []):
                if text:
                    yield _sse(self.chunk(rid, created, chat, index, text, None))
            done: dict[int, dict] = {}
            while len(done) < len(jobs):
                index, kind, payload = await events.get()
                if kind == "tokens":
                    pending[index].extend(payload)
                    continue
                steps, pending[index] = pending[index], []
                lp = renderers[index].render(steps) if steps else None
                if kind == "text":
                    yield _sse(self.chunk(rid, created, chat, index, payload, None, logprobs=lp))
                elif kind == "error":
                    yield _sse({"error": {"message": payload, "type": "server_error", "param": None, "code": None}})
                    break
                else:
                    done[index] = payload
                    if lp is not None:  # tokens whose text never showed (cut by a stop string)
                        yield _sse(self.chunk(rid, created, chat, index, None if chat else "", None, logprobs=lp))
                    yield _sse(self.chunk(rid, created, chat, index, None, payload["finish_reason"]))
            else:
                if include_usage:
                    final = self.chunk(rid, created, chat, 0, None, None)
                    final.update(choices=[], usage=_usage(list(done.values())))
                    yield _sse(final)
            yield "data: [DONE]\n\n"
        finally:
            for job in jobs:
                job.cancel()  # no-op when finished; frees the slot when the client disconnected

    async def collect(self, request: Request, jobs: list[Job], events: asyncio.Queue, chat: bool,
                      echo: list[str] | None = None, extra: dict | None = None) -> Response:  # fmt: skip
        """The whole reply as one JSON body. A client that disconnects while it waits cancels the jobs, so they stop
        at the worker's next turn instead of generating for nobody."""
        parts: list[list[str]] = [[] for _ in jobs]
        steps: list[list[Step]] = [[] for _ in jobs]
        done: dict[int, dict] = {}
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            while len(done) < len(jobs):
                get = asyncio.ensure_future(events.get())
                await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    return Response(status_code=499)  # nobody reads it: the client has gone
                index, kind, payload = get.result()
                if kind == "text":
                    parts[index].append(payload)
                elif kind == "tokens":
                    steps[index].extend(payload)
                elif kind == "error":
                    raise APIError(payload, status=500, type="server_error")
                else:
                    done[index] = payload
        finally:
            gone.cancel()
            for job in jobs:
                job.cancel()
        choices, want_logprobs = [], jobs[0].logprobs is not None
        for index, pieces in enumerate(parts):
            text, finish = (echo[index] if echo else "") + "".join(pieces), done[index]["finish_reason"]
            lp = TokenLogprobs(self.tok, chat).render(steps[index]) if want_logprobs else None
            if chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                                "finish_reason": finish})  # fmt: skip
            else:
                choices.append({"index": index, "text": text, "logprobs": lp, "finish_reason": finish})
        obj = "chat.completion" if chat else "text_completion"
        return JSONResponse({"id": self.response_id(jobs, chat), "object": obj, "created": int(jobs[0].created),
                             "model": self.model_name, "choices": choices,
                             "usage": _usage([done[i] for i in range(len(jobs))]), **(extra or {})})  # fmt: skip


def create_app(engine: Engine, model_name: str, max_tokens_cap: int = 1024, note: str | None = None,
               access: Access | None = None, embedder: EmbeddingBatcher | None = None,
               fim_rate: float = 0.0, fim_spm_rate: float = 0.0) -> FastAPI:  # fmt: skip
    """The FastAPI app over a started `Engine`. `note`: one line about the model that GET /v1/models carries (as
    `note`) and the chat page shows, e.g. that a base model was not fine-tuned for chat (`base_model_note`).
    `access`: who may call (default: bound to 127.0.0.1, this machine's names and same-origin pages only).
    `embedder`: the batcher behind /v1/embeddings (default: one over the engine's model, mean pooling).
    `fim_rate`, `fim_spm_rate`: the run's data.fim_rate and data.fim_spm_rate (`serve` reads them; a fim_rate of 0,
    the default, refuses a `suffix`; a spm rate above 0 puts infill prompts in SPM order)."""
    srv = Server(engine, model_name, max_tokens_cap)
    srv.fim_rate, srv.fim_spm_rate = fim_rate, fim_spm_rate
    app = FastAPI(title="slmkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv
    access = access or Access()
    if access.cors_origins:  # other sites allowed by --allow-origin: answer their preflights, let them read replies
        app.add_middleware(CORSMiddleware, allow_origins=access.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], max_age=600)  # fmt: skip
    app.add_middleware(AccessGuard, access=access)  # added last: the outermost, before CORS and the routes

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(404)
    async def _not_found(request: Request, exc):
        return APIError(f"no route {request.method} {request.url.path}", status=404).response()

    @app.exception_handler(405)
    async def _bad_method(request: Request, exc):
        return APIError(f"{request.method} is not allowed on {request.url.path}", status=405).response()

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):  # a bug: still an OpenAI-shaped body
        return APIError(f"internal error: {type(exc).__name__}", status=500, type="server_error").response()

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **engine.stats()}

    def model_info() -> dict:
        return {"id": model_name, "object": "model", "created": srv.created, "owned_by": "slmkit",
                "context_length": srv.block, **({"note": note} if note else {})}  # fmt: skip

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_info()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        srv.check_model({"model": model_id})
        return model_info()

    async def _generate(request: Request, chat: bool):
        body = await json_body(request)
        srv.check_model(body)
        refuse_not_implemented(body, chat)
        sampling = parse_sampling(body, srv.cap)
        stream, include_usage = parse_stream(body)
        logprobs = parse_logprobs(body, chat)
        echo, truncation = None, None
        if chat:
            messages = parse_messages(body)
            try:
                ids, stop_ids, extra_stop = render_chat(messages, srv.tok)
            except ValueError as e:  # e.g. a character a char-level vocabulary lacks
                raise APIError(f"messages cannot be encoded by this model's tokenizer: {e}", "messages",
                               "invalid_prompt") from None  # fmt: skip
            sampling["stop"] = sampling["stop"] + extra_stop
            srv.check_prompt(ids, "messages")
            prompts = [ids]
        else:
            given = parse_prompts(body)
            listed = given is body["prompt"]  # a list of prompts, not one prompt
            suffix = parse_suffix(body)
            if suffix is not None:  # fill in the middle: each prompt is a prefix; the reply says what was cut
                prompts, stop_ids, cut = infill_prompts(srv.tok, given, suffix, srv.block, sampling["max_tokens"],
                                                        srv.fim_rate, srv.fim_spm_rate)  # fmt: skip
                truncation = {"truncation": cut}
            else:
                prompts = [srv.prompt_ids(p, f"prompt[{i}]" if listed else "prompt") for i, p in enumerate(given)]
                eot = srv.tok.token_id(EOT)
                stop_ids = [] if eot is None else [eot]
            if flag(body, "echo", "echo"):
                if logprobs is not None:
                    raise APIError("'echo' with 'logprobs' (the prompt's own logprobs) is not supported by this server "
                                   "(slm serve); leave one out", "echo", "unsupported_parameter")  # fmt: skip
                echo = [p if isinstance(p, str) else srv.tok.decode(ids) for p, ids in zip(given, prompts)]
        jobs, events = await srv.run(prompts, sampling, stop_ids, logprobs)
        if stream:
            cut_header = {"X-Slm-Truncation": json.dumps(truncation["truncation"])} if truncation else {}
            return StreamingResponse(srv.stream(jobs, events, chat, include_usage, echo),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                              **cut_header})  # fmt: skip
        return await srv.collect(request, jobs, events, chat, echo, truncation)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(request, chat=True)

    add_embeddings_route(app, srv, embedder or EmbeddingBatcher(engine.model, engine.tok))  # its worker starts lazily
    return app


def load_engine(run: str | Path, checkpoint: str = "best", slots: int = DEFAULT_MAX_BATCH) -> tuple[Engine, str]:
    """(started engine, model name) for a run dir or a `slm quantize` artifact; `slots`: requests decoded together
    (--max-batch)."""

    model, tokenizer, _, _ = load_model(run, checkpoint)
    return Engine(model, tokenizer, max_batch=slots).start(), Path(run).resolve().name


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, *, checkpoint: str = "best",
          max_tokens_cap: int = 1024, max_batch: int = DEFAULT_MAX_BATCH, max_queue: int = DEFAULT_MAX_QUEUE,
          threads: int | None = None, allow_hosts: Sequence[str] = (),
          allow_origins: Sequence[str] = ()) -> None:  # fmt: skip
    """`slm serve`: serve a run until interrupted (127.0.0.1 unless host says otherwise). `max_batch`: requests
    decoded together; `max_queue`: requests that may wait for them (one more gets a 429). `threads`: torch's CPU
    threads (None: `default_threads()`, which holds up when the CPU is busy; 0: torch's own choice). `allow_hosts`,
    `allow_origins`: see `Access`."""
    import torch
    import uvicorn

    access = Access(host, tuple(allow_hosts), tuple(allow_origins))  # a bad entry fails before the model loads
    if threads is not None and threads < 0:
        raise SlmError(f"--threads must be 0 (torch's choice) or more, got {threads}")
    if max_batch < 1 or max_queue < 0:
        raise SlmError(f"--max-batch must be 1 or more and --max-queue 0 or more, got {max_batch} and {max_queue}")
    why = "--threads" if threads else "torch's default (--threads 0)" if threads == 0 else \
        f"the default for {cpu_cores()} cores; --threads N to change"  # fmt: skip
    threads = default_threads() if threads is None else threads
    resolve_runtime(TrainConfig(device="cpu", dtype="fp32", threads=threads))  # the one place torch's threads are set
    engine, name = load_engine(run, checkpoint, max_batch)
    embedder = EmbeddingBatcher(engine.model, engine.tok, pooling=run_pooling(run))
    engine.max_queue = max_queue
    note = base_model_note(run)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"serving {name} on {url}  (OpenAI API at {url}/v1, chat page at /)")
    say(f"serve: host {host}, port {port}; {access.describe(port)}; max batch {max_batch}, queue {max_queue}; "
        f"threads {torch.get_num_threads()} ({why})")  # fmt: skip
    if note:
        print(note)
    try:
        fim_rate, fim_spm_rate = trained_fim(run, checkpoint)
        uvicorn.run(create_app(engine, name, max_tokens_cap, note, access, embedder, fim_rate=fim_rate,
                               fim_spm_rate=fim_spm_rate), host=host, port=port, log_level="warning")  # fmt: skip
    finally:
        engine.stop()
        embedder.stop()
