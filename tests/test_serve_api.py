"""`slm serve` against OpenAI's API: GET /v1/models/{id}, echo, token-id and multi-prompt completions, parameters
that are refused rather than ignored, malformed requests (always a 4xx OpenAI error body, never a 500), and clients
that hang up on a non-streaming request (their generation stops)."""

import json
import socket
import time

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from test_serve import CAP, MODEL, start_server, tiny_model  # noqa: E402

from slmkit.base.tokenizer import EOT, CharTokenizer, train_bpe  # noqa: E402
from slmkit.ship.serve.app import create_app  # noqa: E402
from slmkit.ship.serve.engine import Engine  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ :\n"


def _serve(model, tokenizer, slots=2):
    engine = Engine(model, tokenizer, slots=slots).start()
    srv, thread, port = start_server(create_app(engine, MODEL, max_tokens_cap=CAP))

    def close():
        srv.should_exit = True
        thread.join(10)
        engine.stop()

    return f"http://127.0.0.1:{port}", engine, close


@pytest.fixture(scope="module")
def tokenizer(stdlib_dir):
    return train_bpe([(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")], 320)


@pytest.fixture(scope="module")
def server(tokenizer):
    base, engine, close = _serve(tiny_model(tokenizer.vocab_size), tokenizer)
    yield base, engine, tokenizer
    close()


@pytest.fixture(scope="module")
def char_server():
    tok = CharTokenizer(CHARS)
    base, _, close = _serve(tiny_model(tok.vocab_size), tok)
    yield base
    close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=60)


def _error(resp, status: int | None = None) -> dict:
    """The OpenAI error of a 4xx response (asserting its shape)."""
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:500])
    assert status is None or resp.status_code == status, (resp.status_code, resp.text[:500])
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_get_one_model(server, client):
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model" and m.owned_by == "slmkit"
    assert httpx.get(f"{server[0]}/v1/models/{MODEL}").json() == httpx.get(server[0] + "/v1/models").json()["data"][0]
    err = _error(httpx.get(server[0] + "/v1/models/gpt-4o"), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("org/other-model")


def test_echo_returns_the_prompt_before_the_completion(client):
    kw = dict(model=MODEL, prompt="def wrap(text):", max_tokens=6, temperature=0)
    plain = client.completions.create(**kw).choices[0].text
    echoed = client.completions.create(**kw, echo=True)
    assert echoed.choices[0].text == "def wrap(text):" + plain
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, echo=True, stream=True))
    assert streamed == "def wrap(text):" + plain


def test_prompt_as_token_ids(server, client):
    _, _, tok = server
    ids = tok.encode("import textwrap")
    text = client.completions.create(model=MODEL, prompt="import textwrap", max_tokens=6, temperature=0).choices[0].text
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert r.choices[0].text == text and r.usage.prompt_tokens == len(ids)
    echoed = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == "import textwrap" + text
    url = server[0] + "/v1/completions"
    for bad in ([tok.vocab_size], [-1], [], [1.5], [True], [[]]):
        assert _error(httpx.post(url, json={"model": MODEL, "prompt": bad}), 400)["param"] in ("prompt", "prompt[0]")


def test_a_list_of_prompts_gets_one_choice_each(server, client):
    _, _, tok = server
    prompts = ["def f(x):", "import os", tok.encode("class A:")]
    single = [client.completions.create(model=MODEL, prompt=p, max_tokens=8, temperature=0) for p in prompts]
    r = client.completions.create(model=MODEL, prompt=prompts, max_tokens=8, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == [s.choices[0].text for s in single]
    assert r.usage.completion_tokens == sum(s.usage.completion_tokens for s in single)
    texts, finished = ["", "", ""], set()
    for chunk in client.completions.create(model=MODEL, prompt=prompts, max_tokens=8, temperature=0, stream=True):
        (c,) = chunk.choices
        texts[c.index] += c.text
        if c.finish_reason:
            finished.add(c.index)
    assert texts == [c.text for c in r.choices] and finished == {0, 1, 2}
    err = _error(httpx.post(server[0] + "/v1/completions", json={"model": MODEL, "prompt": ["x"] * 65}), 400)
    assert err["param"] == "prompt"
    err = _error(httpx.post(server[0] + "/v1/completions", json={"model": MODEL, "prompt": ["x", "word " * 200]}), 400)
    assert (err["param"], err["code"]) == ("prompt[1]", "context_length_exceeded")


def test_parameters_it_does_not_implement_are_refused_not_ignored(server, client):
    comp, chat = server[0] + "/v1/completions", server[0] + "/v1/chat/completions"
    c = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    m = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    refused = [(comp, "top_logprobs", 2), (chat, "echo", True), (comp, "echo", "yes"), (comp, "best_of", 3),
               (comp, "suffix", "end"),
               (chat, "presence_penalty", 0.5), (chat, "logit_bias", {"1": 5}),
               (chat, "tools", [{"type": "function", "function": {"name": "f"}}]),
               (chat, "response_format", {"type": "json_object"})]  # fmt: skip
    for url, param, value in refused:
        err = _error(httpx.post(url, json={**(m if url == chat else c), param: value}), 400)
        assert err["param"] == param, (param, value, err)
    with pytest.raises(openai.BadRequestError, match="echo"):  # the prompt's own logprobs are not computed
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, logprobs=1, echo=True)
    # their no-op values are fine
    no_ops = [
        (comp, {**c, "logprobs": None, "echo": False, "best_of": 1, "presence_penalty": 0}),
        (chat, {**m, "logprobs": False, "frequency_penalty": 0.0, "tool_choice": "none", "user": "u"}),
    ]
    for url, body in no_ops:
        assert httpx.post(url, json=body, timeout=30).status_code == 200


def test_logprobs_out_of_range_are_refused_naming_the_field(server, client):
    comp, chat = server[0] + "/v1/completions", server[0] + "/v1/chat/completions"
    c = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    m = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": True}
    bad = [(comp, {**c, "logprobs": 6}, "logprobs"), (comp, {**c, "logprobs": -1}, "logprobs"),
           (comp, {**c, "logprobs": True}, "logprobs"), (comp, {**c, "logprobs": 1.5}, "logprobs"),
           (chat, {**m, "top_logprobs": 21}, "top_logprobs"), (chat, {**m, "top_logprobs": -1}, "top_logprobs"),
           (chat, {**m, "top_logprobs": "3"}, "top_logprobs"), (chat, {**m, "logprobs": 1}, "logprobs"),
           (chat, {**m, "logprobs": False, "top_logprobs": 2}, "top_logprobs")]  # fmt: skip
    for url, body, param in bad:
        err = _error(httpx.post(url, json=body), 400)
        assert (err["param"], err["type"]) == (param, "invalid_request_error"), (body, err)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model=MODEL, messages=m["messages"], max_tokens=2, logprobs=True,
                                       top_logprobs=21)  # fmt: skip
    # the caps themselves are fine, and logprobs: true alone gives no alternatives
    r = httpx.post(chat, json={**m, "top_logprobs": 20}, timeout=30).json()
    assert all(len(e["top_logprobs"]) == 20 for e in r["choices"][0]["logprobs"]["content"])
    r = httpx.post(chat, json=m, timeout=30).json()
    assert all(e["top_logprobs"] == [] for e in r["choices"][0]["logprobs"]["content"])
    r = httpx.post(comp, json={**c, "logprobs": 5}, timeout=30).json()
    assert all(len(top) == 5 for top in r["choices"][0]["logprobs"]["top_logprobs"])


def test_malformed_requests_get_a_4xx_openai_error(server, char_server):
    comp, chat = server[0] + "/v1/completions", server[0] + "/v1/chat/completions"
    ok_chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    ok_comp = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    as_json = {"Content-Type": "application/json"}

    # characters outside a char-level vocabulary, in a prompt and in a message
    err = _error(httpx.post(char_server + "/v1/completions", json={**ok_comp, "prompt": "héllo"}), 400)
    assert err["param"] == "prompt" and "é" in err["message"]
    char_chat = char_server + "/v1/chat/completions"
    msgs = [{"role": "user", "content": "naïve"}]
    assert _error(httpx.post(char_chat, json={**ok_chat, "messages": msgs}), 400)["param"] == "messages"
    assert httpx.post(char_chat, json=ok_chat, timeout=30).status_code == 200

    # JSON nested 100k deep, as an array and inside an object; an integer of 5000 digits; a lone surrogate
    deep = b"[" * 100_000 + b"]" * 100_000
    head = b'{"model": "' + MODEL.encode() + b'", '
    for raw in [deep, head + b'"prompt": ' + deep + b"}", head + b'"seed": ' + b"9" * 5000 + b"}",
                head + b'"prompt": "a\\ud800b"}']:  # fmt: skip
        assert _error(httpx.post(comp, content=raw, headers=as_json), 400)["code"] == "invalid_json"

    # stream / stream_options of the wrong type
    for options, param in [("include_usage", "stream_options"), (["include_usage"], "stream_options"),
                           ({"include_usage": "yes"}, "stream_options.include_usage")]:  # fmt: skip
        body = {**ok_chat, "stream": True, "stream_options": options}
        assert _error(httpx.post(chat, json=body), 400)["param"] == param
    assert _error(httpx.post(chat, json={**ok_chat, "stream": "true"}), 400)["param"] == "stream"

    # content parts that are not text
    for parts in ([{"type": "text", "text": 5}], [5], ["hi"], [{"type": "image_url", "image_url": {"url": "x"}}],
                  [{"type": "text"}], [{"type": "text", "text": "ok"}, None]):  # fmt: skip
        body = {**ok_chat, "messages": [{"role": "user", "content": parts}]}
        assert _error(httpx.post(chat, json=body), 400)["param"].startswith("messages[0].content[")
    for role in (["user"], {"r": 1}, 5):
        assert _error(httpx.post(chat, json={**ok_chat, "messages": [{"role": role, "content": "x"}]}), 400)
    parts = [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]
    body = {**ok_chat, "messages": [{"role": "user", "content": parts}]}
    assert httpx.post(chat, json=body, timeout=30).status_code == 200

    # seeds beyond 64 bits
    for seed in (2**70, -(2**70), 2**63, 1.5, "7"):
        assert _error(httpx.post(comp, json={**ok_comp, "seed": seed}), 400)["param"] == "seed"
    for seed in (2**63 - 1, -(2**63), 0):
        assert httpx.post(comp, json={**ok_comp, "seed": seed}, timeout=30).status_code == 200

    # bodies that are not declared JSON: what a cross-origin form or text/plain POST sends
    for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"},
                    {"Content-Type": "multipart/form-data; boundary=x"}, {}):  # fmt: skip
        err = _error(httpx.post(comp, content=json.dumps(ok_comp).encode(), headers=headers), 415)
        assert err["code"] == "unsupported_media_type"
    ok = httpx.post(comp, content=json.dumps(ok_comp), headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200

    # other shapes that must not reach the model
    for body in ({**ok_comp, "n": [2]}, {**ok_comp, "stop": {"a": 1}}, {**ok_comp, "max_tokens": 10**300},
                 {**ok_comp, "temperature": "hot"}, {**ok_comp, "model": ["x"]}, {**ok_comp, "prompt": {"text": "x"}},
                 {**ok_comp, "prompt": [["x"]]}, {**ok_comp, "prompt": None}):  # fmt: skip
        _error(httpx.post(comp, json=body))
    _error(httpx.post(comp, content=b'{"model": "tiny-test", "temperature": NaN}', headers=as_json), 400)


def _slow(model, seconds: float, never: int | None = None):
    """The model with a pause in every forward pass: a reply of CAP tokens takes CAP * seconds. `never`: a token id
    it never samples (end-of-text, so a sampled reply cannot end early by chance)."""
    forward = model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(seconds)
        out = forward(*args, **kwargs)
        if never is not None:
            out[0][..., never] = float("-inf")
        return out

    model.forward = slow_forward
    return model


def test_abandoned_non_streaming_requests_stop_generating(tokenizer):
    """16 clients post a non-streaming request for CAP tokens and hang up: the 2 running generations stop at their
    next step and the 14 waiting ones never start (unfixed, the last one finished ~8 x CAP x 20 ms = 64 s later)."""
    model = _slow(tiny_model(tokenizer.vocab_size), 0.02, never=tokenizer.token_id(EOT))
    base, engine, close = _serve(model, tokenizer, slots=2)
    port = int(base.rsplit(":", 1)[1])
    try:
        body = json.dumps({"model": MODEL, "prompt": "def", "max_tokens": CAP, "temperature": 1.0}).encode()
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        socks = []
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(head + body)
            socks.append(s)
        deadline = time.monotonic() + 20
        while (engine.stats()["active"], engine.stats()["waiting"]) != (2, 14):
            assert time.monotonic() < deadline, engine.stats()
            time.sleep(0.02)
        for s in socks:
            s.close()  # the clients hang up without reading a reply
        deadline = time.monotonic() + 5
        while engine.stats()["active"] or engine.stats()["waiting"]:
            assert time.monotonic() < deadline, f"abandoned requests still generating: {engine.stats()}"
            time.sleep(0.02)
        stats = engine.stats()
        assert stats["cancelled"] == 16 and stats["completed"] == 0, stats
        r = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and engine.stats()["completed"] == 1
    finally:
        close()
