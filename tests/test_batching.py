"""Continuous batching: the ragged KV cache (`gpt.RaggedKVCache`), per-row int8 products, and the serving engine that
decodes every active request in one forward (`ship/serve/engine.py`): same replies as alone, limits, cancellation."""

import threading
import time

import pytest
import torch
import torch.nn.functional as F

from slmkit.base.config import ModelConfig
from slmkit.base.tokenizer import train_bpe
from slmkit.model import int8mm
from slmkit.model.generate import generate
from slmkit.model.gpt import GPT
from slmkit.model.int8mm import EXACT_K, int8_rows
from slmkit.model.qweights import _swap_linears, int8_state_dict
from slmkit.ship.serve.engine import Engine, EngineBusy, Job

pytestmark = pytest.mark.usefixtures("one_thread")

ROPE_GQA = dict(n_head=4, n_kv_head=2, norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False, qk_norm=True)
LEARNED = dict(n_head=2, norm="layernorm", pos_emb="learned", mlp="gelu", bias=True)


def tiny(vocab: int, block: int = 48, seed: int = 0, **arch) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(n_layer=2, n_embd=32, block_size=block, vocab_size=vocab, **arch)).eval()


def int8(model: GPT) -> GPT:
    """The model with int8-dynamic weights, as `slm quantize` artifacts load (fused q|k|v and gate|up)."""
    _swap_linears(model, int8_state_dict(model))
    return model


@pytest.fixture(scope="module")
def tok(stdlib_dir):
    return train_bpe([(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")], 300)


# ---------------------------------------------------------------------------------------------------------
# The model: ragged rows


@pytest.mark.parametrize("arch", [ROPE_GQA, LEARNED], ids=["rope-gqa", "learned"])
def test_ragged_rows_decode_as_each_sequence_alone(arch):
    """Rows of different lengths, prefilled one by one and decoded together (with a row moved into a freed one and a
    row restarted at 0) give the logits of each sequence run alone without a cache."""
    model = tiny(97, **arch)
    seqs = [torch.randint(0, 97, (n,)).tolist() for n in (3, 17, 9, 30)]
    cache = model.new_ragged_cache(4)
    with torch.inference_mode():
        for r, s in enumerate(seqs):
            row = cache.row(r)
            model(torch.tensor([s]), kv_cache=row)
            cache.lengths[r] = row.length
        cache.move(3, 1)  # row 1 leaves, the last one takes its place
        seqs = [seqs[0], seqs[3], seqs[2]]
        for step in range(6):
            nxt = torch.randint(0, 97, (3, 1))
            logits, _ = model(nxt, kv_cache=cache)  # (3, 1, V)
            for b in range(3):
                seqs[b].append(int(nxt[b, 0]))
                alone, _ = model(torch.tensor([seqs[b]]))
                diff = (logits[b, 0] - alone[0, -1]).abs().max().item()
                assert diff < 1e-5, (step, b, diff)
        assert cache.lengths[:3] == [len(s) for s in seqs]


def test_int8_rows_do_not_depend_on_their_neighbours():
    """A batch's int8 products are bit-identical row by row to each row alone, and close to the float product."""
    model = int8(tiny(97, **ROPE_GQA))
    lin = model.blocks[0].attn.qkv
    x = torch.randn(5, 1, 32) * torch.tensor([0.1, 1, 10, 0.5, 3])[:, None, None]  # very different ranges per row
    y = int8_rows(lin, x)
    for b in range(5):
        assert torch.equal(y[b : b + 1], int8_rows(lin, x[b : b + 1]))
    ref = x @ lin.weight.t()
    assert ((y - ref).abs().amax(-1) / ref.abs().amax(-1)).max() < 0.02


def test_training_path_is_plain_causal_sdpa(monkeypatch):
    """Without a cache, attention is SDPA with is_causal and no mask (the training speed is that of before)."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, mask=None, dropout_p=0.0, is_causal=False, **kw):
        seen.append((mask is None, is_causal))
        return sdpa(q, k, v, mask, dropout_p, is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = tiny(97, **ROPE_GQA).train()
    _, loss = model(torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16)))
    loss.backward()
    assert seen and set(seen) == {(True, True)}


# ---------------------------------------------------------------------------------------------------------
# The engine


class Collector:
    """A job's events: its token ids (through logprobs), text pieces and the final payload."""

    def __init__(self):
        self.ids, self.text, self.done, self.error = [], [], None, None
        self.finished = threading.Event()

    def __call__(self, kind, payload):
        if kind == "tokens":
            self.ids += [s.token for s in payload]
        elif kind == "text":
            self.text.append(payload)
        else:
            self.done, self.error = (payload, None) if kind == "done" else (None, payload)
            self.finished.set()


def job(prompt, max_tokens, **kw) -> tuple[Job, Collector]:
    c = Collector()
    return Job(list(prompt), max_tokens, c, logprobs=0, **kw), c


def wait(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.005)


REQUESTS = [  # (prompt length, max_tokens, sampling): ragged prompts, one running past the context (a new window)
    (3, 12, {"temperature": 0.0}),
    (20, 40, {"temperature": 0.0}),
    (7, 9, {"temperature": 0.0}),
    (1, 15, {"temperature": 1.0, "seed": 7}),
    (12, 6, {"temperature": 0.0, "stop": ["e"]}),
    (5, 20, {"temperature": 0.7, "top_p": 0.9, "seed": 3}),
]


def serve_all(model, tok, prompts, staggered: bool, max_batch: int = 4):
    """Every request through one engine: all at once, or each submitted after the previous one's first token."""
    engine = Engine(model, tok, max_batch=max_batch).start()
    try:
        out = []
        for prompt, (_, max_tokens, kw) in zip(prompts, REQUESTS):
            j, c = job(prompt, max_tokens, **kw)
            engine.submit(j)
            out.append(c)
            if staggered:
                wait(lambda c=c: c.ids or c.finished.is_set())
        for c in out:
            assert c.finished.wait(60) and c.error is None, c.error
        assert engine.stats()["active"] == 0
        return out, engine.stats()
    finally:
        engine.stop()


@pytest.mark.parametrize("arch", ["rope-gqa", "learned", "int8"])
def test_batched_replies_are_the_replies_served_alone(tok, arch):
    """Ragged prompts with staggered arrivals, decoded together, give every request the ids, text and finish reason
    it gets served alone; greedy and seeded float models also give `generate`'s ids (int8 batches use per-row
    activation scales: compared with the engine alone)."""
    model = tiny(tok.vocab_size, **(LEARNED if arch == "learned" else ROPE_GQA))
    model = int8(model) if arch == "int8" else model
    torch.manual_seed(1)
    prompts = [torch.randint(0, tok.vocab_size, (n,)).tolist() for n, _, _ in REQUESTS]
    batched, stats = serve_all(model, tok, prompts, staggered=True)
    assert stats["mean_batch"] > 1.1 and stats["completed"] == len(REQUESTS)
    together, stats = serve_all(model, tok, prompts, staggered=False)
    assert stats["mean_batch"] > 2
    for i, prompt in enumerate(prompts):
        alone = serve_alone(model, tok, prompt, REQUESTS[i])
        for got in (batched[i], together[i]):
            assert got.ids == alone.ids, (i, got.ids, alone.ids)
            assert "".join(got.text) == "".join(alone.text) and got.done == alone.done
        _, max_tokens, kw = REQUESTS[i]
        if arch != "int8" and not kw.get("stop"):
            want = list(generate(model, prompt, max_tokens, vocab_limit=tok.vocab_size, temperature=kw["temperature"],
                                 top_p=kw.get("top_p", 1.0), seed=kw.get("seed")))  # fmt: skip
            assert alone.ids == want, (i, alone.ids, want)
    assert len(batched[1].ids) == 40  # ran past the 48-token context: a new window was prefilled mid-batch


def serve_alone(model, tok, prompt, request) -> Collector:
    """One request through an engine with nothing else to serve (the same --max-batch)."""
    engine = Engine(model, tok, max_batch=4).start()
    try:
        _, max_tokens, kw = request
        j, c = job(prompt, max_tokens, **kw)
        engine.submit(j)
        assert c.finished.wait(60) and c.error is None, c.error
        return c
    finally:
        engine.stop()


def slow(model, seconds):
    forward = model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    model.forward = slow_forward
    return model


def test_max_batch_queue_limit_and_cancel(tok):
    """At most max_batch rows are active, max_queue wait, one more is refused (EngineBusy: the API's 429); a
    cancelled row frees at the next step and a waiting job takes it."""
    engine = Engine(slow(tiny(tok.vocab_size, **ROPE_GQA), 0.01), tok, max_batch=2, max_queue=2).start()
    try:
        jobs = [job([1, 2, 3], 400, temperature=1.0) for _ in range(4)]
        for i, (j, _) in enumerate(jobs):
            engine.submit(j)
            if i == 1:
                wait(lambda: engine.stats()["active"] == 2)
        with pytest.raises(EngineBusy, match="busy"):
            engine.submit(job([1], 5)[0])
        wait(lambda: (engine.stats()["active"], engine.stats()["waiting"]) == (2, 2))
        jobs[0][0].cancel()
        wait(lambda: jobs[2][1].ids)  # the first waiting job took the freed row
        assert engine.stats()["active"] == 2 and engine.stats()["cancelled"] == 1
        for j, _ in jobs:
            j.cancel()
        wait(lambda: engine.stats()["active"] == 0 and engine.stats()["waiting"] == 0)
        assert engine.stats()["cancelled"] == 4 and engine.stats()["mean_batch"] <= 2
        j, c = job([4, 5], 3, temperature=0.0)
        engine.submit(j)
        assert c.finished.wait(30) and c.done["completion_tokens"] == 3 and c.done["finish_reason"] == "length"
    finally:
        engine.stop()


def test_a_full_queue_answers_429_with_an_openai_error(tok):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from slmkit.ship.serve.app import create_app

    engine = Engine(tiny(tok.vocab_size, **ROPE_GQA), tok, max_batch=1, max_queue=0)  # not started: nothing leaves
    client = TestClient(create_app(engine, "m"), base_url="http://localhost")
    for stream in (False, True):
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                      "stream": stream})  # fmt: skip
        assert r.status_code == 429
        err = r.json()["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == "server_busy" and "retry" in err["message"]


def test_cli_serve_batch_flags():
    from slmkit.cli import build_parser

    parse = build_parser().parse_args
    args = parse(["serve", "runs/x"])
    assert (args.max_batch, args.max_queue) == (16, 64)
    assert parse(["serve", "runs/x", "--max-batch", "4", "--max-queue", "0"]).max_batch == 4
    assert parse(["serve", "runs/x", "--slots", "3"]).max_batch == 3  # the former name
    with pytest.raises(SystemExit):
        parse(["serve", "runs/x", "--max-batch", "0"])


@pytest.mark.parametrize("k", [7, EXACT_K, EXACT_K + 1, 2 * EXACT_K + 300])
def test_int_mm_without_int8_units_is_exact(monkeypatch, k):
    """The fp32 fallback of `int_mm` (CPUs without VNNI/AMX) gives torch._int_mm's integers exactly, also past
    EXACT_K columns and at the extreme values, where one fp32 sum would round."""
    g = torch.Generator().manual_seed(k)
    a = torch.randint(-128, 128, (9, k), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (k, 24), dtype=torch.int8, generator=g)
    a[0], b[:, 0] = -128, -127  # every product at its largest: 16,256 per term
    want = torch.mm(a.long(), b.long())  # int64: the true sums
    monkeypatch.setattr(int8mm, "INT8_UNITS", False)
    got = int8mm.int_mm(a, b)
    assert got.dtype == torch.int32 and torch.equal(got.long(), want)
    assert int(want[0, 0]) == k * 128 * 127  # the extreme row really is there
    monkeypatch.setattr(int8mm, "INT8_UNITS", True)
    assert torch.equal(int8mm.int_mm(a, b), got)  # torch._int_mm, whatever this CPU runs it with
