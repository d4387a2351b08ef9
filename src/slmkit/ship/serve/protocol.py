"""The OpenAI request schema of `slm serve`: reading a request's JSON and its parameters, refusing what is wrong
or not implemented with an OpenAI-style error (`APIError`: a 4xx with {"error": {"message", "type", "param",
"code"}}), and rendering chat messages to tokens. The routes are `slmkit.ship.serve.app`.
"""

from __future__ import annotations

import json
import reprlib

from fastapi import Request
from fastapi.responses import JSONResponse

from slmkit.base.tokenizer import EOT, Tokenizer
from slmkit.data.chat import prompt_for_reply, reply_stops
from slmkit.data.fim import FimError, check_fim_model, fim_prompt, infill_order
from slmkit.model.generate import SamplingError, check_sampling

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


# Parameters of OpenAI's API that would change the reply but are not implemented here: a request that gives one
# a value other than its no-op values is refused with a 400 naming it, never served as if it had not been sent.
NOT_IMPLEMENTED = {
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none", "auto"),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
}
NOT_IN_CHAT = {"echo": (None, False), "suffix": (None, "")}  # completions parameters
NOT_IN_COMPLETIONS = {"top_logprobs": (None,)}  # a chat parameter (completions give the count as `logprobs`)
MAX_TOP_LOGPROBS = {True: 20, False: 5}  # alternatives per token, chat / completions (OpenAI's caps)
MAX_PROMPTS = 64  # prompts in one completions request (one choice each)
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = _repr.maxlong = 60
_repr.maxlist = _repr.maxdict = 4


def show(value) -> str:
    """A short repr of a client's value for an error message."""
    return _repr.repr(value)


def checked_ids(given: list[int], vocab_size: int, param: str, code: str) -> list[int]:
    """Token ids given in a request, each within the vocabulary; else a 400 naming the first one out of range."""
    bad = [t for t in given if not 0 <= t < vocab_size]
    if bad:
        raise APIError(f"{param} has token id {show(bad[0])}, outside this model's vocabulary (0 to "
                       f"{vocab_size - 1})", param, code)  # fmt: skip
    return list(given)


def _is(value, options) -> bool:
    """value is one of options, type included (0 is not False)."""
    return any(type(value) is type(o) and value == o for o in options)


def refuse_not_implemented(body: dict, chat: bool) -> None:
    for name, no_ops in (NOT_IMPLEMENTED | (NOT_IN_CHAT if chat else NOT_IN_COMPLETIONS)).items():
        if name in body and not _is(body[name], no_ops):
            raise APIError(f"'{name}' is not supported by this server (slm serve); leave it out (got "
                           f"{show(body[name])})", name, "unsupported_parameter")  # fmt: skip


def flag(obj: dict, name: str, param: str) -> bool:
    v = obj.get(name)
    if v is not None and not isinstance(v, bool):
        raise APIError(f"'{param}' must be true or false, got {show(v)}", param)
    return bool(v)


def parse_sampling(body: dict, cap: int) -> dict:
    """Sampling parameters of a completions/chat body, validated; APIError names the bad parameter."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = min(DEFAULT_MAX_TOKENS, cap) if max_tokens is None else max_tokens
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    temperature, top_p, seed = body.get("temperature"), body.get("top_p"), body.get("seed")
    temperature, top_p = 1.0 if temperature is None else temperature, 1.0 if top_p is None else top_p
    try:  # the library's one check of sampling parameters: the same message as `slm sample` gives
        check_sampling({"max_new_tokens": param}, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
                       seed=seed)  # fmt: skip
    except SamplingError as e:
        raise APIError(str(e), e.param) from None
    if max_tokens > cap:
        raise APIError(f"'{param}' is {show(max_tokens)}, above this server's cap of {cap}", param)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise APIError("'stop' must be a string or a list of up to 4 strings", "stop")
    if not _is(body.get("n", 1), (1, None)):
        raise APIError("only n = 1 is supported (give a list of prompts for several completions)", "n")
    return {"max_tokens": max_tokens, "temperature": float(temperature), "top_p": float(top_p), "stop": stop,
            "seed": seed}  # fmt: skip


def _count(value, param: str, cap: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= cap:
        raise APIError(f"'{param}' must be an integer from 0 to {cap}, got {show(value)}", param)
    return value


def parse_logprobs(body: dict, chat: bool) -> int | None:
    """How many alternatives to report per generated token (0: only the token's own logprob), or None for no logprobs.
    Chat: `logprobs: true` with `top_logprobs` 0..20; completions: `logprobs` 0..5 (OpenAI's shapes and caps)."""
    cap = MAX_TOP_LOGPROBS[chat]
    if not chat:
        value = body.get("logprobs")
        return None if value is None else _count(value, "logprobs", cap)
    wanted, top = flag(body, "logprobs", "logprobs"), body.get("top_logprobs")
    if top is None:
        return 0 if wanted else None
    top = _count(top, "top_logprobs", cap)
    if not wanted:
        raise APIError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return top


def parse_stream(body: dict) -> tuple[bool, bool]:
    """(stream, stream_options.include_usage), validated."""
    stream = flag(body, "stream", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError(f"'stream_options' must be an object such as {{\"include_usage\": true}}, got {show(options)}",
                       "stream_options")  # fmt: skip
    return stream, flag(options or {}, "include_usage", "stream_options.include_usage")


def _content(m: dict, i: int) -> str:
    c, param = m.get("content"), f"messages[{i}].content"
    if isinstance(c, list):  # content parts: this model reads text parts only
        texts = []
        for j, p in enumerate(c):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise APIError(f"{param}[{j}] must be a text part {{\"type\": \"text\", \"text\": \"...\"}} (this "
                               f"model reads text only), got {show(p)}", f"{param}[{j}]")  # fmt: skip
            texts.append(p["text"])
        c = "".join(texts)
    if c is None:
        c = ""
    if not isinstance(c, str):
        raise APIError(f"{param} must be a string or a list of text parts, got {show(c)}", param)
    return c


def parse_messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError("'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        role = "system" if role == "developer" else role
        if not isinstance(role, str) or role not in ROLES:
            raise APIError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {show(role)}",
                           f"messages[{i}].role")  # fmt: skip
        out.append({"role": role, "content": _content(m, i)})
    return out


def parse_prompts(body: dict) -> list[str | list[int]]:
    """The completions prompt(s): a string, a list of token ids, or a list of those (one choice each)."""
    p = body.get("prompt")

    def is_ids(x) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(p, str) or is_ids(p):
        return [p]
    if isinstance(p, list) and p and all(isinstance(x, str) or is_ids(x) for x in p):
        if len(p) > MAX_PROMPTS:
            raise APIError(f"'prompt' has {len(p)} prompts; at most {MAX_PROMPTS} per request", "prompt")
        return p
    raise APIError("'prompt' must be a string, a non-empty list of token ids, or a list of those (one choice each)",
                   "prompt")  # fmt: skip


def render_chat(messages: list[dict], tokenizer: Tokenizer) -> tuple[list[int], list[int], list[str]]:
    """(prompt ids ending where the assistant's reply starts, stop ids, stop strings) of a conversation."""
    if tokenizer.has_chat_tokens or tokenizer.chat_template:  # the `slm` template, or an imported model's own
        return prompt_for_reply(messages, tokenizer), reply_stops(tokenizer), []
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    text = "".join(f"{names[m['role']]}: {m['content']}\n" for m in messages) + "Assistant:"
    eot = tokenizer.token_id(EOT)
    return tokenizer.encode(text), [] if eot is None else [eot], ["\nUser:"]


def parse_suffix(body: dict) -> str | None:
    """The completions `suffix` (fill in the middle between prompt and suffix), or None when absent or empty."""
    suffix = body.get("suffix")
    if suffix is None or suffix == "":
        return None
    if not isinstance(suffix, str):
        raise APIError(f"'suffix' must be a string, got {show(suffix)}", "suffix")
    return suffix


def infill_prompts(tokenizer: Tokenizer, given: list, suffix: str, block: int, max_tokens: int, fim_rate: float,
                   spm_rate: float = 0.0) -> tuple[list[list[int]], list[int], list[dict]]:  # fmt: skip
    """(prompt ids, stop ids, truncation per prompt) of a completions request with a `suffix`: each prompt is the
    prefix of a fill-in-the-middle prompt (`slmkit.data.fim.fim_prompt`, no whitespace healing: the text is sent
    as given) cut to leave `max_tokens` of the context, in the order the model was trained in (`spm_rate`: the run's
    data.fim_spm_rate, `infill_order`). APIError for a model that cannot infill (`fim_rate`: the run's
    data.fim_rate), token-id prompts, or a context too small."""
    try:
        check_fim_model(tokenizer, fim_rate)
    except FimError as e:
        raise APIError(str(e), "suffix", "fim_not_supported") from None
    prompts, truncation, stops = [], [], []
    for i, text in enumerate(given):
        if not isinstance(text, str):
            raise APIError("with 'suffix' the prompt must be text (the code before the cursor), not token ids",
                           "prompt")  # fmt: skip
        try:
            prompt = fim_prompt(tokenizer, text, suffix, block - max_tokens, healing=False,
                                order=infill_order(fim_rate, spm_rate))  # fmt: skip
        except FimError as e:
            raise APIError(str(e), "max_tokens" if text or suffix else "prompt") from None
        except ValueError as e:  # e.g. a character a char-level vocabulary lacks
            raise APIError(f"prompt or suffix cannot be encoded by this model's tokenizer: {e}", "prompt",
                           "invalid_prompt") from None  # fmt: skip
        prompts.append(prompt.ids)
        truncation.append({"index": i, **prompt.truncation()})
        stops = prompt.stop_ids
    return prompts, stops, truncation


async def json_body(request: Request) -> dict:
    """The request's JSON object. Only `Content-Type: application/json` is read (415 otherwise): a browser page on
    another site can POST text/plain or a form here without asking, but not JSON."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise APIError(f"send the body as JSON with 'Content-Type: application/json' (got {show(ctype or 'none')})",
                       code="unsupported_media_type", status=415)  # fmt: skip
    try:
        body = json.loads(await request.body() or b"null")
    except RecursionError:
        raise APIError("the request body is nested too deeply", code="invalid_json") from None
    except ValueError as e:  # not JSON, not UTF-8, or an integer of more than 4300 digits
        raise APIError(f"the request body is not valid JSON ({show(str(e))[1:-1]})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object")
    try:  # JSON may escape a lone surrogate ("\\ud800"), which is no text: it could be neither encoded nor echoed
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise APIError("the request body is nested too deeply", code="invalid_json") from None
    except UnicodeEncodeError:
        raise APIError("the request body has a lone surrogate escape (e.g. \\ud800), which is not text",
                       code="invalid_json") from None  # fmt: skip
    return body
