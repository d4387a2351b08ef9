"""`slm serve`: the OpenAI-compatible API through the official `openai` client, streams, concurrency, errors."""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from slmkit.base.config import ModelConfig  # noqa: E402
from slmkit.base.tokenizer import CharTokenizer, train_bpe  # noqa: E402
from slmkit.model.generate import generate  # noqa: E402
from slmkit.model.gpt import GPT  # noqa: E402
from slmkit.ship.serve.app import create_app  # noqa: E402
from slmkit.ship.serve.engine import Engine  # noqa: E402
from slmkit.ship.serve.protocol import render_chat  # noqa: E402

MODEL = "tiny-test"
CAP = 400


def tiny_model(vocab_size: int) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=vocab_size, norm="rmsnorm",
                      pos_emb="rope", mlp="swiglu", bias=False)  # fmt: skip
    return GPT(cfg).eval()


def start_server(app) -> tuple[uvicorn.Server, threading.Thread, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, port


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(stdlib_dir):
    text = (stdlib_dir / "textwrap.py").read_text(encoding="utf-8")
    return train_bpe([text], 320)


@pytest.fixture(scope="module")
def server(tokenizer):
    engine = Engine(tiny_model(tokenizer.vocab_size), tokenizer, slots=2).start()
    srv, thread, port = start_server(create_app(engine, MODEL, max_tokens_cap=CAP))
    yield f"http://127.0.0.1:{port}", engine
    srv.should_exit = True
    thread.join(10)
    engine.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=60)


def test_models_health_and_page(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    h = httpx.get(server[0] + "/health").json()
    assert h["status"] == "ok" and h["model"] == MODEL
    page = httpx.get(server[0] + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/chat/completions" in page.text


def test_completion_and_chat_with_the_openai_client(client):
    r = client.completions.create(model=MODEL, prompt="def wrap(text):", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == MODEL and len(r.choices) == 1
    assert r.choices[0].finish_reason in ("stop", "length") and isinstance(r.choices[0].text, str)
    assert 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    c = client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                                              {"role": "user", "content": "Hello"}],
                                       max_tokens=10, temperature=0.7, top_p=0.9, seed=3)  # fmt: skip
    assert c.object == "chat.completion" and c.choices[0].message.role == "assistant"
    assert c.choices[0].finish_reason in ("stop", "length") and c.usage.completion_tokens <= 10


def test_stream_equals_the_non_streamed_answer(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me about textwrap"}], max_tokens=20,
              temperature=0.9, seed=11)  # fmt: skip
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 20
    comp = list(client.completions.create(model=MODEL, prompt="import os", max_tokens=8, temperature=0, stream=True))
    assert comp[-1].choices[0].finish_reason in ("stop", "length")


def test_concurrent_streams_never_mix(client):
    prompts = [f"def f{i}(x):" for i in range(5)]

    def streamed(p):
        s = client.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=1.0, seed=7, stream=True)
        return "".join(c.choices[0].text for c in s)

    expected = [client.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=1.0,
                                          seed=7).choices[0].text for p in prompts]  # fmt: skip
    with ThreadPoolExecutor(5) as pool:
        got = list(pool.map(streamed, prompts))
    assert got == expected


def _error(resp) -> dict:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text)
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_bad_requests_get_openai_errors(server):
    url = server[0] + "/v1/chat/completions"
    ok = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    err = _error(httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"}))
    assert err["type"] == "invalid_request_error"
    assert _error(httpx.post(url, json={**ok, "model": "gpt-4"}))["code"] == "model_not_found"
    assert _error(httpx.post(url, json={**ok, "max_tokens": CAP + 1}))["param"] == "max_tokens"
    assert _error(httpx.post(url, json={**ok, "temperature": -0.5}))["param"] == "temperature"
    assert _error(httpx.post(url, json={**ok, "messages": []}))["param"] == "messages"
    long = {**ok, "messages": [{"role": "user", "content": "word " * 200}]}
    assert _error(httpx.post(url, json=long))["code"] == "context_length_exceeded"
    comp = server[0] + "/v1/completions"
    assert _error(httpx.post(comp, json={"model": MODEL, "prompt": "x " * 300}))["param"] == "prompt"
    assert _error(httpx.post(comp, json={"model": MODEL, "prompt": 3}))["param"] == "prompt"
    assert _error(httpx.post(comp, json={"model": MODEL, "prompt": "x", "n": 2}))["param"] == "n"
    assert _error(httpx.get(server[0] + "/v1/nothing"))["message"].startswith("no route")
    with pytest.raises(openai.BadRequestError):
        openai.OpenAI(base_url=server[0] + "/v1", api_key="x", max_retries=0).completions.create(
            model=MODEL, prompt="x", max_tokens=CAP + 5
        )


def test_a_disconnected_stream_frees_its_slot(server):
    base, engine = server
    body = {"model": MODEL, "prompt": "def", "max_tokens": CAP, "temperature": 1.0, "stream": True}
    with httpx.Client(timeout=30) as c:
        streams = [c.stream("POST", base + "/v1/completions", json=body) for _ in range(2)]  # both slots
        for s in streams:
            r = s.__enter__()
            assert r.status_code == 200
            next(r.iter_lines())  # the first event arrived: the job is running
        for s in streams:
            s.__exit__(None, None, None)  # hang up mid-stream
    deadline = time.monotonic() + 20
    while engine.stats()["active"]:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.05)
    r = httpx.post(base + "/v1/completions", json={**body, "stream": False, "max_tokens": 5}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 5


def test_chat_rendering_with_and_without_chat_tokens(tokenizer):
    msgs = [{"role": "user", "content": "hi"}]
    ids, stop_ids, stops = render_chat(msgs, tokenizer)
    assert ids[-1] == tokenizer.token_id("<|assistant|>") and tokenizer.token_id("<|end|>") in stop_ids and not stops
    char = CharTokenizer("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ :\n")
    ids, stop_ids, stops = render_chat(msgs, char)
    assert char.decode(ids) == "User: hi\nAssistant:" and stops == ["\nUser:"]


def test_sse_lines_are_openai_shaped(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server[0] + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1


def test_cli_serve_binds_loopback_by_default():
    from slmkit.cli import build_parser

    args = build_parser().parse_args(["serve", "runs/x"])
    assert (args.host, args.port, args.fn) == ("127.0.0.1", 8000, "ship:cmd_serve")


def _token_ids(tok) -> dict[bytes, int]:
    """bytes -> id of every token (a BPE token's bytes name it; a special token's are its name)."""
    return {tok.enc.decode_single_token_bytes(i): i for i in range(tok.vocab_size)}


def _check_against_the_model(model, tok, prompt: list[int], entries: list, temperature: float) -> None:
    """Each reported token's logprob is the model's log-softmax at that step (a forward pass over prompt + prefix)."""
    ids = _token_ids(tok)
    generated = [ids[bytes(e.bytes)] for e in entries]
    for i, e in enumerate(entries):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + generated[:i]]))[0][0, -1, : tok.vocab_size].float()
        lp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
        assert abs(e.logprob - float(lp[generated[i]])) < 1e-4, (i, e.logprob, float(lp[generated[i]]))
        tops = [(ids[bytes(t.bytes)], t.logprob) for t in e.top_logprobs]
        assert [t for t, _ in tops] == torch.topk(lp, len(tops)).indices.tolist()
        assert all(abs(v - float(lp[t])) < 1e-4 for t, v in tops)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_chat_logprobs_with_the_openai_client_match_the_model(server, client, tokenizer, temperature):
    msgs = [{"role": "user", "content": "Tell me about textwrap"}]
    kw = dict(model=MODEL, messages=msgs, max_tokens=12, temperature=temperature, seed=5, logprobs=True,
              top_logprobs=4)  # fmt: skip
    c = client.chat.completions.create(**kw)
    entries = c.choices[0].logprobs.content
    assert len(entries) == c.usage.completion_tokens > 0
    assert all(len(e.top_logprobs) == 4 and e.logprob <= 0 and e.bytes for e in entries)
    joined = b"".join(bytes(e.bytes) for e in entries).decode("utf-8", errors="replace")
    assert joined.startswith(c.choices[0].message.content)  # a token may hold part of a character: its bytes tell
    prompt, _, _ = render_chat(msgs, tokenizer)
    _check_against_the_model(server[1].model, tokenizer, prompt, entries, temperature)
    # streamed: the same tokens and logprobs, each chunk carrying those of its text
    chunks = list(client.chat.completions.create(**kw, stream=True))
    streamed = [e for ch in chunks if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == c.choices[0].message.content
    # without logprobs: none, and no extra work
    plain = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_legacy_shape(server, client, tokenizer):
    ids = tokenizer.encode("def wrap(text):")
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=10, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n > 0
    assert all(len(top) <= 3 and max(top.values()) >= lp.token_logprobs[i] - 1e-6 for i, top in
               enumerate(lp.top_logprobs))  # greedy: the chosen token is the most likely  # fmt: skip
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    model = server[1].model
    generated = list(generate(model, ids, n, temperature=0, vocab_limit=tokenizer.vocab_size))
    for t, token in zip(generated, lp.tokens):  # part of a UTF-8 character: shown as its bytes, as OpenAI does
        raw = tokenizer.enc.decode_single_token_bytes(t)
        try:
            assert token == raw.decode("utf-8")
        except UnicodeDecodeError:
            assert token == "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
    for i, value in enumerate(lp.token_logprobs):  # greedy: reported at temperature 1
        with torch.no_grad():
            logits = model(torch.tensor([ids + generated[:i]]))[0][0, -1, : tokenizer.vocab_size].float()
        assert abs(value - float(torch.log_softmax(logits, -1)[generated[i]])) < 1e-4
    streamed = list(client.completions.create(model=MODEL, prompt=ids, max_tokens=10, temperature=0, logprobs=3,
                                              stream=True))  # fmt: skip
    parts = [c.choices[0].logprobs for c in streamed if c.choices[0].logprobs]
    assert sum((p.tokens for p in parts), []) == lp.tokens
    assert sum((p.text_offset for p in parts), []) == lp.text_offset
    assert sum((p.token_logprobs for p in parts), []) == lp.token_logprobs
