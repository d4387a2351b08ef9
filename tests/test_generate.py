"""Sampling: KV cache == no cache (greedy, exact), seeds reproduce, padded ids never sampled, text streaming."""

from __future__ import annotations

import pytest
import torch

from slmkit.base.config import ModelConfig
from slmkit.base.tokenizer import CharTokenizer
from slmkit.model.generate import generate, sample_next, sample_text, speed_line
from slmkit.model.gpt import GPT

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
GPT2_STYLE: dict = {}
LLAMA_STYLE = dict(norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=1)


def _model(vocab_size: int = 70, block_size: int = 48, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=vocab_size, **kw)
    model = GPT(cfg)
    with torch.no_grad():  # larger weights than init: peaked, varied predictions instead of near-uniform ones
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return model


@pytest.mark.parametrize("arch", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2", "llama"])
def test_kv_cache_equals_no_cache_greedy(arch):
    model = _model(**arch)
    prompt = [1, 5, 9, 2]
    cached = list(generate(model, prompt, 40, temperature=0.0, use_cache=True))
    plain = list(generate(model, prompt, 40, temperature=0.0, use_cache=False))
    assert len(cached) == 40 and cached == plain
    assert len(set(cached)) > 3  # not a degenerate constant stream


def test_kv_cache_equals_no_cache_sampled_with_seed():
    model = _model(**LLAMA_STYLE)
    kw = dict(temperature=0.8, top_k=20, top_p=0.9, seed=3)
    assert list(generate(model, [3], 30, use_cache=True, **kw)) == list(generate(model, [3], 30, use_cache=False, **kw))


def test_generation_past_block_size_slides_the_window():
    model = _model(block_size=16)
    out = list(generate(model, list(range(10)), 50, temperature=1.0, seed=0))
    assert len(out) == 50
    plain = list(generate(model, list(range(10)), 50, temperature=0.0, use_cache=False))
    assert len(plain) == 50


def test_seed_reproduces_regardless_of_global_rng():
    model = _model()
    torch.manual_seed(123)
    a = list(generate(model, [1, 2], 30, temperature=1.0, seed=7))
    torch.manual_seed(999)
    torch.rand(10)
    b = list(generate(model, [1, 2], 30, temperature=1.0, seed=7))
    c = list(generate(model, [1, 2], 30, temperature=1.0, seed=8))
    assert a == b and a != c


def test_padded_ids_never_sampled():
    model = _model(vocab_size=70)  # padded to 128 columns
    forward = model.forward

    def padded_ids_dominate(*args, **kwargs):
        logits, loss = forward(*args, **kwargs)
        return logits.clone().index_fill_(-1, torch.arange(70, 128), 1e4), loss

    model.forward = padded_ids_dominate
    out = list(generate(model, [5, 6], 40, temperature=2.0, seed=0))
    assert len(out) == 40 and max(out) < 70
    assert max(generate(model, [5, 6], 40, temperature=2.0, seed=0, vocab_limit=30)) < 30


def test_stop_ids_end_generation():
    model = _model()
    greedy = list(generate(model, [1, 5], 30, temperature=0.0))
    stop = greedy[10]
    out = list(generate(model, [1, 5], 30, temperature=0.0, stop_ids=[stop]))
    assert out == greedy[: greedy.index(stop)]


def test_sample_next_filters():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, 0.0, 0, 1.0, g) == 4
    assert {sample_next(logits, 1.0, 2, 1.0, g) for _ in range(200)} == {3, 4}
    assert {sample_next(logits, 1.0, 0, 0.5, g) for _ in range(200)} == {4}  # p(4) = 0.64 >= 0.5
    assert {sample_next(logits, 1.0, 0, 0.7, g) for _ in range(200)} == {3, 4}


def test_sample_text_streams_and_stops():
    tok = CharTokenizer.from_texts([TEXT])
    model = _model(vocab_size=tok.vocab_size)
    pieces: list[str] = []
    full = sample_text(model, tok, "To be", 60, temperature=1.0, seed=1, on_text=pieces.append)
    assert "".join(pieces) == full and len(full) > 0
    assert full == sample_text(model, tok, "To be", 60, temperature=1.0, seed=1)
    stop = full[5:7]
    cut = sample_text(model, tok, "To be", 60, temperature=1.0, seed=1, stop=[stop], on_text=(streamed := []).append)
    assert cut == full[: full.index(stop)] and "".join(streamed) == cut
    assert isinstance(sample_text(model, tok, "", 5, seed=0), str)  # empty prompt starts from end-of-text


def test_sample_text_reports_its_speed():
    tok = CharTokenizer.from_texts([TEXT])
    model = _model(vocab_size=tok.vocab_size)
    stats: dict = {}
    sample_text(model, tok, "To be", 12, temperature=1.0, seed=1, stats=stats)
    assert stats["prompt_tokens"] == 5 and 0 < stats["new_tokens"] <= 12
    assert stats["prefill_s"] > 0 and stats["decode_s"] >= 0
    line = speed_line(stats)
    assert line.startswith("# 5 prompt tokens") and "tok/s" in line
    assert "n/a" in speed_line({"prompt_tokens": 1, "new_tokens": 1, "prefill_s": 0.1, "decode_s": 0.0})


def test_sample_text_holds_back_incomplete_utf8():
    """A byte-level tokenizer can split a character across tokens; only whole characters are streamed."""

    class ByteTokenizer(CharTokenizer):
        def decode(self, ids):
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

        def encode(self, text, allow_special=False):
            return list(text.encode("utf-8"))

    tok = ByteTokenizer([chr(i) for i in range(256)])
    model = _model(vocab_size=tok.vocab_size)
    target = list("é€".encode())  # 2 + 3 bytes
    stream = iter(target)

    import slmkit.model.generate as gen_mod

    orig = gen_mod.generate
    gen_mod.generate = lambda *a, **k: iter(list(stream))
    try:
        pieces: list[str] = []
        out = sample_text(model, tok, "a", 5, on_text=pieces.append)
    finally:
        gen_mod.generate = orig
    assert out == "é€" and pieces == ["é", "€"]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_are_the_log_softmax_at_each_step(temperature):
    """logprobs=N yields Steps: the same ids as the default path, each with its log-softmax (at the temperature, 1
    when greedy, before top-k/top-p) checked against a plain forward pass over prompt + generated prefix."""
    model = _model(**LLAMA_STYLE)
    prompt, kw = [1, 5, 9, 2], dict(temperature=temperature, top_k=20, top_p=0.9, seed=4, vocab_limit=60)
    ids = list(generate(model, prompt, 16, **kw))
    steps = list(generate(model, prompt, 16, logprobs=3, **kw))
    assert [s.token for s in steps] == ids
    for i, s in enumerate(steps):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids[:i]]))[0][0, -1, :60].float()
        lp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
        assert abs(s.logprob - float(lp[s.token])) < 1e-4
        assert [t for t, _ in s.top] == torch.topk(lp, 3).indices.tolist()
        assert all(abs(v - float(lp[t])) < 1e-4 for t, v in s.top) and all(t < 60 for t, _ in s.top)
    assert all(s.top == [] for s in generate(model, prompt, 3, logprobs=0, temperature=0.0))
    with pytest.raises(ValueError, match="logprobs"):
        list(generate(model, prompt, 3, logprobs=-1))
