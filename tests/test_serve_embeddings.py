"""`slm serve` /v1/embeddings through the official `openai` client: the vectors `embed_texts` gives, strings and token
ids, float and base64, usage, OpenAI error bodies for bad input, and concurrent requests batched into one forward
(while generation runs on the same model)."""

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from test_serve import MODEL, start_server, tiny_model  # noqa: E402

from slmkit.base.tokenizer import train_bpe  # noqa: E402
from slmkit.engine.embedding import embed_texts  # noqa: E402
from slmkit.ship.serve.app import create_app  # noqa: E402
from slmkit.ship.serve.embeddings import MAX_INPUTS, EmbeddingBatcher  # noqa: E402
from slmkit.ship.serve.engine import Engine  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["def wrap(text):", "import textwrap", "x", "class TextWrapper:\n    pass", "return lines"]


@pytest.fixture(scope="module")
def tokenizer(stdlib_dir):
    return train_bpe([(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")], 320)


@pytest.fixture(scope="module")
def server(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    engine = Engine(model, tokenizer).start()
    batcher = EmbeddingBatcher(model, tokenizer, max_batch=8, max_queue=64)
    srv, thread, port = start_server(create_app(engine, MODEL, embedder=batcher))
    yield f"http://127.0.0.1:{port}", model, batcher
    srv.should_exit = True
    thread.join(10)
    engine.stop()
    batcher.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="none", max_retries=0, timeout=60)


def _alone(model, tok, texts, pooling="mean"):
    return np.stack([embed_texts(model, tok, [t], pooling=pooling)[0][0] for t in texts])


def _vector(embedding) -> np.ndarray:
    """A returned embedding: a list of floats, or base64 of little-endian float32 (when asked for explicitly)."""
    return np.frombuffer(base64.b64decode(embedding), "<f4") if isinstance(embedding, str) else np.array(embedding)


def _error(resp, status: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_vectors_are_embed_texts_in_float_and_base64(server, client, tokenizer):
    _, model, _ = server
    want = _alone(model, tokenizer, TEXTS)
    for fmt in ("float", "base64", None):  # None: the client's default (it asks for base64 and decodes it)
        kw = {} if fmt is None else {"encoding_format": fmt}
        r = client.embeddings.create(model=MODEL, input=TEXTS, **kw)
        got = np.array([_vector(d.embedding) for d in r.data])
        assert [d.index for d in r.data] == list(range(len(TEXTS))) and r.object == "list" and r.model == MODEL
        assert np.abs(got - want).max() < 1e-5, (fmt, np.abs(got - want).max())
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
        n = sum(len(tokenizer.encode(t)) for t in TEXTS)
        assert r.usage.prompt_tokens == r.usage.total_tokens == n
    one = client.embeddings.create(model=MODEL, input="import textwrap", encoding_format="float")
    assert len(one.data) == 1 and np.abs(np.array(one.data[0].embedding) - want[1]).max() < 1e-5
    raw = httpx.post(server[0] + "/v1/embeddings", json={"model": MODEL, "input": "x", "encoding_format": "base64"})
    assert isinstance(raw.json()["data"][0]["embedding"], str)


def test_token_id_inputs_match_their_text(server, client, tokenizer):
    ids = [tokenizer.encode(t) for t in TEXTS[:3]]
    by_text = client.embeddings.create(model=MODEL, input=TEXTS[:3])
    by_ids = client.embeddings.create(model=MODEL, input=ids)
    single = client.embeddings.create(model=MODEL, input=ids[0])
    a, b = np.array([d.embedding for d in by_text.data]), np.array([d.embedding for d in by_ids.data])
    assert np.abs(a - b).max() < 1e-6 and np.abs(np.array(single.data[0].embedding) - a[0]).max() < 1e-6
    assert by_ids.usage.prompt_tokens == sum(map(len, ids))
    assert client.embeddings.create(model=MODEL, input=TEXTS[:2], dimensions=32).data[0].embedding


def test_bad_requests_get_openai_errors(server, client, tokenizer):
    url = server[0] + "/v1/embeddings"

    def post(**body):
        return httpx.post(url, json={"model": MODEL, **body})

    for bad in ("", [], [""], ["ok", "  "], [[]], [1.5], [True], {"text": "x"}, None, [["a"]]):
        assert _error(post(input=bad), 400)["param"] in ("input", "input[0]", "input[1]"), bad
    assert _error(post(input=["x"] * (MAX_INPUTS + 1)), 400)["param"] == "input"
    long = "def wrap(text): return text " * 40  # far more than the model's 64 tokens
    err = _error(post(input=["short", long]), 400)
    assert err["param"] == "input[1]" and err["code"] == "context_length_exceeded" and "64" in err["message"]
    err = _error(post(input=[tokenizer.vocab_size]), 400)
    assert err["param"] == "input" and "vocabulary" in err["message"]
    assert _error(post(input="x", encoding_format="hex"), 400)["param"] == "encoding_format"
    assert _error(post(input="x", dimensions=16), 400)["code"] == "unsupported_parameter"
    assert _error(httpx.post(url, json={"model": "gpt-4o", "input": "x"}), 404)["code"] == "model_not_found"
    assert _error(httpx.post(url, content=b"input=x", headers={"content-type": "text/plain"}), 415)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input=long)


def test_concurrent_requests_share_one_forward(server, tokenizer):
    base, model, batcher = server
    want = _alone(model, tokenizer, TEXTS)
    forwards, requests = batcher.stats.forwards, batcher.stats.requests
    with ThreadPoolExecutor(len(TEXTS)) as pool:
        with batcher.held():  # the worker waits until every request is queued
            futures = [pool.submit(httpx.post, base + "/v1/embeddings", json={"model": MODEL, "input": t,
                                                                              "encoding_format": "float"}, timeout=60)
                       for t in TEXTS]  # fmt: skip
            while batcher.stats.requests < requests + len(TEXTS) and not any(f.done() for f in futures):
                threading.Event().wait(0.01)
            queued = len(batcher._queue)
    got = np.array([f.result().json()["data"][0]["embedding"] for f in futures])
    assert queued == len(TEXTS) and batcher.stats.forwards == forwards + 1
    assert np.abs(got - want).max() < 1e-5


def test_embeddings_and_generation_run_together(server, client):
    gen = dict(model=MODEL, prompt="def wrap(text):", max_tokens=24, temperature=0)
    alone = client.completions.create(**gen).choices[0].text
    want = np.array([d.embedding for d in client.embeddings.create(model=MODEL, input=TEXTS).data])
    with ThreadPoolExecutor(4) as pool:
        texts = [pool.submit(lambda: client.completions.create(**gen).choices[0].text) for _ in range(2)]
        vecs = [pool.submit(lambda: client.embeddings.create(model=MODEL, input=TEXTS)) for _ in range(6)]
        assert [t.result() for t in texts] == [alone, alone]
        for v in vecs:
            assert np.abs(np.array([d.embedding for d in v.result().data]) - want).max() < 1e-5


def test_a_large_request_spans_several_forwards_and_a_full_queue_is_429(tokenizer, stdlib_dir):
    model = tiny_model(tokenizer.vocab_size)
    texts = [f"line {i} of text" for i in range(10)]
    batcher = EmbeddingBatcher(model, tokenizer, max_batch=4, max_queue=12)
    try:
        got = batcher.embed_now([batcher.input_ids(t, "input") for t in texts])
        assert batcher.stats.forwards == 3 and batcher.stats.largest_batch == 4
        assert np.abs(got - _alone(model, tokenizer, texts)).max() < 1e-5
        engine = Engine(model, tokenizer).start()
        srv, thread, port = start_server(create_app(engine, MODEL, embedder=batcher))
        try:
            err = _error(httpx.post(f"http://127.0.0.1:{port}/v1/embeddings",
                                    json={"model": MODEL, "input": ["a"] * 13}), 429)  # fmt: skip
            assert err["code"] == "server_busy"
        finally:
            srv.should_exit = True
            thread.join(10)
            engine.stop()
    finally:
        batcher.stop()


def test_stopping_answers_the_requests_still_waiting(tokenizer):
    batcher = EmbeddingBatcher(tiny_model(tokenizer.vocab_size), tokenizer)
    answers = []
    with batcher.held():
        batcher.submit([[1, 2, 3]], lambda vectors, error: answers.append((vectors, error)))
        batcher.stop()
    assert len(answers) == 1 and answers[0][0] is None and "stopping" in answers[0][1]


def test_eos_pooling_appends_end_of_text_and_leaves_room_for_it(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    batcher = EmbeddingBatcher(model, tokenizer, pooling="eos")
    try:
        ids = batcher.input_ids("import textwrap", "input")
        assert ids[-1] == tokenizer.eot_id and batcher.limit == model.config.block_size - 1
        got = batcher.embed_now([ids])
        want = _alone(model, tokenizer, ["import textwrap"], pooling="eos")
        assert np.abs(got - want).max() < 1e-5
    finally:
        batcher.stop()
