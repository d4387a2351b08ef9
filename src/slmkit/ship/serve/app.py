"""`slm serve`: an OpenAI-compatible HTTP API and a web chat page over one model (FastAPI + uvicorn).

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (OpenAI request and response shapes;
`stream: true` sends server-sent events, `data: {chunk}` lines ending with `data: [DONE]`), GET /health, and
GET / (the chat page, `static/index.html`). Supported parameters: max_tokens (max_completion_tokens), temperature,
top_p, stop (a string or up to 4), seed, n = 1, stream_options.include_usage. Unknown parameters are ignored.

Bad requests get a 4xx with OpenAI's error body {"error": {"message", "type", "param", "code"}}. A prompt must
be shorter than the model's context (block_size); the reply may run past it (generation slides its window).
Chat messages are rendered with the fine-tuning template (`slmkit.data.chat.render`) when the tokenizer has the
chat tokens, else as a plain "User: ... / Assistant:" transcript that stops at the next "\nUser:".
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from slmkit.base.tokenizer import END_OF_TURN, EOT, Tokenizer
from slmkit.data.chat import render
from slmkit.runs.checkpoint import load_model
from slmkit.ship.serve.engine import Engine, EngineBusy, Job

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_TOKENS = 256
ROLES = ("system", "user", "assistant")


class APIError(Exception):
    """A request the API refuses: becomes an OpenAI-style error body with `status`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error"):  # fmt: skip
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# ---------------------------------------------------------------------------------------------------------
# Request parsing


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name, default)
    v = default if v is None else v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise APIError(f"'{name}' must be a number, got {v!r}", name)
    if not lo <= v <= hi:
        raise APIError(f"'{name}' must be between {lo} and {hi}, got {v}", name)
    return float(v)


def parse_sampling(body: dict, cap: int) -> dict:
    """Sampling parameters of a completions/chat body, validated; APIError names the bad parameter."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = min(DEFAULT_MAX_TOKENS, cap) if max_tokens is None else max_tokens
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise APIError(f"'{param}' must be a positive integer, got {max_tokens!r}", param)
    if max_tokens > cap:
        raise APIError(f"'{param}' is {max_tokens}, above this server's cap of {cap}", param)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise APIError("'stop' must be a string or a list of up to 4 strings", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(f"'seed' must be an integer, got {seed!r}", "seed")
    if body.get("n", 1) not in (1, None):
        raise APIError("only n = 1 is supported", "n")
    return {"max_tokens": max_tokens, "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
            "top_p": _number(body, "top_p", 1.0, 0.0, 1.0) or 1.0, "stop": stop, "seed": seed}  # fmt: skip


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if isinstance(c, list):  # content parts: keep the text ones
        c = "".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
    if c is None:
        c = ""
    if not isinstance(c, str):
        raise APIError(f"messages[{i}].content must be a string", f"messages[{i}].content")
    return c


def parse_messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError("'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        role = "system" if role == "developer" else role
        if role not in ROLES:
            raise APIError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}", f"messages[{i}].role")
        out.append({"role": role, "content": _content(m, i)})
    return out


def render_chat(messages: list[dict], tokenizer: Tokenizer) -> tuple[list[int], list[int], list[str]]:
    """(prompt ids ending where the assistant's reply starts, stop ids, stop strings) of a conversation."""
    if tokenizer.has_chat_tokens:
        ids, _ = render(messages, tokenizer, add_generation_prompt=True)
        return ids, [tokenizer.token_id(END_OF_TURN), tokenizer.token_id(EOT)], []
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    text = "".join(f"{names[m['role']]}: {m['content']}\n" for m in messages) + "Assistant:"
    eot = tokenizer.token_id(EOT)
    return tokenizer.encode(text), [] if eot is None else [eot], ["\nUser:"]


# ---------------------------------------------------------------------------------------------------------
# Responses


def _usage(done: dict) -> dict:
    p, c = done["prompt_tokens"], done["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class Server:
    """The state behind the routes: the engine, the model's name and limits."""

    def __init__(self, engine: Engine, model_name: str, max_tokens_cap: int):
        self.engine, self.model_name, self.cap = engine, model_name, max_tokens_cap
        self.tok, self.block = engine.tok, engine.model.config.block_size
        self.created = int(time.time())

    def check_model(self, body: dict) -> None:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise APIError("'model' is required; GET /v1/models lists it", "model")
        if name != self.model_name:
            raise APIError(f"the model '{name}' does not exist; this server serves '{self.model_name}'", "model",
                           "model_not_found", status=404)  # fmt: skip

    def check_prompt(self, ids: list[int], param: str) -> None:
        if len(ids) >= self.block:
            raise APIError(f"this model's context is {self.block} tokens; the prompt has {len(ids)}; shorten it",
                           param, "context_length_exceeded")  # fmt: skip

    async def run(self, ids: list[int], sampling: dict, stop_ids: list[int]) -> tuple[Job, asyncio.Queue]:
        """Queue a job whose events land in an asyncio queue of the running loop."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(kind: str, payload) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

        job = Job(ids, sampling["max_tokens"], emit, temperature=sampling["temperature"], top_p=sampling["top_p"],
                  seed=sampling["seed"], stop=sampling["stop"], stop_ids=stop_ids)  # fmt: skip
        try:
            self.engine.submit(job)
        except EngineBusy as e:
            raise APIError(str(e), code="server_busy", status=429, type="rate_limit_error") from None
        return job, events

    def chunk(self, job: Job, chat: bool, text: str | None, finish: str | None, first: bool = False) -> dict:
        if chat:
            delta = {} if text is None else {"content": text}
            if first:
                delta = {"role": "assistant", "content": ""}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return {"id": self.job_id(job, chat), "object": obj, "created": int(job.created),
                "model": self.model_name, "choices": [choice]}  # fmt: skip

    @staticmethod
    def job_id(job: Job, chat: bool) -> str:
        return ("chatcmpl-" if chat else "cmpl-") + job.id

    async def stream(self, job: Job, events: asyncio.Queue, chat: bool, include_usage: bool):
        """The SSE body; a client that goes away cancels the job (its slot frees at the worker's next turn)."""
        try:
            if chat:
                yield _sse(self.chunk(job, chat, None, None, first=True))
            while True:
                kind, payload = await events.get()
                if kind == "text":
                    yield _sse(self.chunk(job, chat, payload, None))
                elif kind == "error":
                    yield _sse({"error": {"message": payload, "type": "server_error", "param": None, "code": None}})
                    break
                else:
                    yield _sse(self.chunk(job, chat, None, payload["finish_reason"]))
                    if include_usage:
                        final = self.chunk(job, chat, None, None)
                        final.update(choices=[], usage=_usage(payload))
                        yield _sse(final)
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # no-op when finished; frees the slot when the client disconnected

    async def collect(self, job: Job, events: asyncio.Queue, chat: bool) -> JSONResponse:
        parts = []
        try:
            while True:
                kind, payload = await events.get()
                if kind == "text":
                    parts.append(payload)
                elif kind == "error":
                    raise APIError(payload, status=500, type="server_error")
                else:
                    break
        finally:
            job.cancel()
        text, finish = "".join(parts), payload["finish_reason"]
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish}  # fmt: skip
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return JSONResponse({"id": self.job_id(job, chat), "object": "chat.completion" if chat else "text_completion",
                             "created": int(job.created), "model": self.model_name, "choices": [choice],
                             "usage": _usage(payload)})  # fmt: skip


async def _json_body(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(f"the request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object")
    return body


def create_app(engine: Engine, model_name: str, max_tokens_cap: int = 1024) -> FastAPI:
    """The FastAPI app over a started `Engine`."""
    srv = Server(engine, model_name, max_tokens_cap)
    app = FastAPI(title="slmkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(404)
    async def _not_found(request: Request, exc):
        return APIError(f"no route {request.method} {request.url.path}", status=404).response()

    @app.exception_handler(405)
    async def _bad_method(request: Request, exc):
        return APIError(f"{request.method} is not allowed on {request.url.path}", status=405).response()

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **engine.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": srv.created,
                                            "owned_by": "slmkit", "context_length": srv.block}]}  # fmt: skip

    async def _generate(request: Request, chat: bool):
        body = await _json_body(request)
        srv.check_model(body)
        sampling = parse_sampling(body, srv.cap)
        if chat:
            ids, stop_ids, extra_stop = render_chat(parse_messages(body), srv.tok)
            sampling["stop"] = sampling["stop"] + extra_stop
            srv.check_prompt(ids, "messages")
        else:
            prompt = body.get("prompt")
            prompt = prompt[0] if isinstance(prompt, list) and len(prompt) == 1 else prompt
            if not isinstance(prompt, str):
                raise APIError("'prompt' must be a string", "prompt")
            ids = srv.tok.encode(prompt, allow_special=True) or [srv.tok.token_id(EOT) or 0]
            srv.check_prompt(ids, "prompt")
            stop_ids = [] if srv.tok.token_id(EOT) is None else [srv.tok.token_id(EOT)]
        job, events = await srv.run(ids, sampling, stop_ids)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(srv.stream(job, events, chat, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        return await srv.collect(job, events, chat)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(request, chat=True)

    return app


def load_engine(run: str | Path, checkpoint: str = "best", slots: int = 4) -> tuple[Engine, str]:
    """(started engine, model name) for a run dir or a `slm quantize` artifact."""

    model, tokenizer, _, _ = load_model(run, checkpoint)
    return Engine(model, tokenizer, slots=slots).start(), Path(run).resolve().name


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, *, checkpoint: str = "best",
          max_tokens_cap: int = 1024, slots: int = 4, threads: int | None = None) -> None:  # fmt: skip
    """`slm serve`: serve a run until interrupted (127.0.0.1 unless host says otherwise)."""
    import torch
    import uvicorn

    if threads:
        torch.set_num_threads(threads)
    engine, name = load_engine(run, checkpoint, slots)
    print(f"serving {name} on http://{host}:{port}  (OpenAI API at http://{host}:{port}/v1, chat page at /)")
    try:
        uvicorn.run(create_app(engine, name, max_tokens_cap), host=host, port=port, log_level="warning")
    finally:
        engine.stop()
