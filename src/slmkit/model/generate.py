"""Sampling: stream token ids (with a KV cache) and decode them to text as they come.

`generate` yields one token id at a time; `sample_text` wraps it with a tokenizer, streams complete UTF-8 text
to a callback and stops at stop strings or the end-of-text token. Randomness comes from a local
`torch.Generator`, so a seed reproduces its sample whatever the global RNG did.

Long generations: the model sees at most block_size tokens. Without a cache every step feeds the last
block_size tokens (a sliding window). With a cache, when it is full the last `block_size - block_size // 4` tokens
are prefilled again into a fresh cache and decoding goes on; so past block_size the cached and uncached paths
condition on slightly different windows, and only up to block_size are they identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import torch

from slmkit.base.checks import Range, number_problem
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import EOT, Tokenizer
from slmkit.model.gpt import GPT

SEED_RANGE = Range(-(2**63), 2**63 - 1)
"""Seeds are 64-bit signed integers (OpenAI's `seed`): each one gives its own stream, as torch takes them mod 2**64."""
SAMPLING = {
    "max_new_tokens": (int, Range(1, 2**63 - 1)),
    "temperature": (float, Range(0, 2, note="0 = greedy")),
    "top_k": (int, Range(0, 2**63 - 1, note="0 = all tokens")),
    "top_p": (float, Range(0, 1, note="1 = all tokens, 0 = only the most likely")),
    "seed": (int, SEED_RANGE),
}
"""The one table of sampling parameters: name -> (type, allowed range). `check_sampling` enforces it for `generate`,
`slm sample`, `slm chat`, `slm compare` and `slm serve` (which answers 400 with the same message)."""


class SamplingError(SlmError, ValueError):
    """A sampling parameter out of range; `param` is its name as the caller spelled it."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def check_sampling(names: Mapping[str, str] | None = None, **params) -> None:
    """Refuse sampling parameters outside `SAMPLING` (None means "not given" and passes; a seed of None means a
    random seed). `names` maps a parameter to how the caller spells it in the message (e.g. "--top-k", "max_tokens").
    Raises SamplingError naming the first bad parameter."""
    for key, value in params.items():
        if value is None:
            continue
        kind, rng = SAMPLING[key]
        name = (names or {}).get(key, key)
        problem = number_problem(name, value, rng, kind)
        if problem:
            raise SamplingError(problem, name)


class Step(NamedTuple):
    """One generated token with its log-probability and the `top` most likely alternatives as (id, logprob), most
    likely first (`generate(..., logprobs=N)` yields these)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The log-probabilities (V,) `generate` reports: log-softmax of the (masked) logits divided by the temperature,
    or by 1 when greedy (temperature 0); before top-k / top-p filtering (as OpenAI reports the model's own
    distribution), so an id sampled from a filtered distribution still has its unfiltered log-probability."""
    logits = logits.float()
    return torch.log_softmax(logits / temperature if temperature > 0 else logits, dim=-1)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> int:  # fmt: skip
    """One token id from logits (V,) already masked: greedy at temperature 0, else top-k then top-p sampling."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest prefix reaching top_p (>= 1 id)
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))


class Decoding:
    """One sequence being generated: its ids so far, the ids the model has not seen yet (`pending`) and how the next
    id is picked from the model's logits (temperature, top-k, top-p, its own random generator, stop ids, the vocabulary
    limit, logprobs). `generate` drives one with a batch-1 cache; the serving engine drives many at once, each in a
    row of a `RaggedKVCache`, so a request's ids are the same whichever way it is served.

    Arguments as `generate`'s; parameters out of range raise SamplingError (or ValueError) here, before any forward.
    """

    def __init__(self, model: GPT, idx: Sequence[int] | torch.Tensor, max_new_tokens: int, *,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 stop_ids: Sequence[int] = (), vocab_limit: int | None = None,
                 logprobs: int | None = None):  # fmt: skip
        check_sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
            raise ValueError(f"logprobs must be None or a count of alternatives >= 0, got {logprobs!r}")
        self.tokens = [int(t) for t in (idx.reshape(-1).tolist() if isinstance(idx, torch.Tensor) else idx)]
        if not self.tokens:
            raise ValueError("generate needs a prompt of at least one token (e.g. the end-of-text id)")
        self.block = model.config.block_size
        self.limit = min(vocab_limit or model.config.vocab_size, model.config.vocab_size)
        self.temperature, self.top_k, self.top_p, self.logprobs = temperature, top_k, top_p, logprobs
        self.gen = torch.Generator(device=model.lm_head.weight.device)
        self.gen.manual_seed(seed) if seed is not None else self.gen.seed()
        self.stop = set(stop_ids)
        self.pending = self.tokens[-self.block :]  # ids not yet fed to the model
        self.new = 0  # ids generated so far

    def needs_window(self, cached: int) -> bool:
        """Whether feeding `pending` after `cached` ids would overflow the context (then `restart` and feed anew)."""
        return cached + len(self.pending) > self.block

    def restart(self) -> list[int]:
        """The cache is full: the recent window (the last block_size - block_size // 4 ids) becomes `pending`, to be
        prefilled into an empty cache."""
        self.pending = self.tokens[-(self.block - self.block // 4) :]
        return self.pending

    def pick(self, logits: torch.Tensor) -> int | Step | None:
        """The next id from the logits (padded_vocab,) after the pending ids (modified in place: ids >= the limit
        masked): its id, or a `Step` with logprobs, or None when it is a stop id (not kept). Sets `pending`."""
        logits[self.limit :] = float("-inf")
        nxt = sample_next(logits, self.temperature, self.top_k, self.top_p, self.gen)
        if nxt in self.stop:
            return None
        self.tokens.append(nxt)
        self.pending = [nxt]
        self.new += 1
        if self.logprobs is None:
            return nxt
        lp = token_logprobs(logits[: self.limit], self.temperature)
        best = torch.topk(lp, min(self.logprobs, self.limit)) if self.logprobs else None
        top = list(zip(best.indices.tolist(), best.values.tolist())) if best is not None else []
        return Step(nxt, float(lp[nxt]), top)


@torch.inference_mode()
def generate(model: GPT, idx: Sequence[int] | torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop_ids: Sequence[int] = (),
             vocab_limit: int | None = None, use_cache: bool = True,
             logprobs: int | None = None) -> Iterator[int] | Iterator[Step]:  # fmt: skip
    """Yield up to max_new_tokens new token ids, one at a time, continuing the prompt `idx` (1-D, or (1, T)).

    logprobs=N (0 or more) yields a `Step` per token instead of its id: the id, its log-probability and the N most
    likely ids with theirs, from `token_logprobs` (the log-softmax at the sampling temperature, 1 when greedy,
    before top-k / top-p filtering; ids >= vocab_limit never appear). None (the default) computes none of it.
    temperature 0 is greedy. Ids >= vocab_limit (default: the model's unpadded vocab_size) are never sampled.
    A sampled id in stop_ids ends generation and is not yielded. The model is put in eval mode. Parameters out of
    range (`SAMPLING`) raise SamplingError before anything is generated.
    """
    seq = Decoding(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                   stop_ids=stop_ids, vocab_limit=vocab_limit, logprobs=logprobs)  # fmt: skip
    model.eval()
    device = model.lm_head.weight.device
    cache = model.new_kv_cache(1) if use_cache else None
    for _ in range(max_new_tokens):
        if cache is not None and seq.needs_window(cache.length):  # full: re-prefill the recent window
            cache.reset()
            seq.restart()
        x = torch.tensor([seq.pending], dtype=torch.long, device=device)  # (1, T)
        logits, _ = model(x, kv_cache=cache, last_only=True)  # (1, 1, padded_vocab)
        out = seq.pick(logits[0, -1])
        if out is None:
            return
        if cache is None:
            seq.pending = seq.tokens[-seq.block :]
        yield out


class TextStream:
    """Incremental decoding: text is released once its bytes are complete UTF-8 and it cannot be the start
    of a stop string."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str], on_text: Callable[[str], None] | None):
        self.tok, self.stop, self.on_text = tokenizer, [s for s in stop if s], on_text
        self.text, self.undecoded, self.released = "", [], 0

    def add(self, token_id: int) -> bool:
        """Add one id; True when a stop string was reached (the text is cut before it)."""
        self.undecoded.append(token_id)
        piece = self.tok.decode(self.undecoded)
        if piece.endswith("\ufffd") and len(self.undecoded) < 8:  # an incomplete multi-byte character
            return False
        self.text += piece
        self.undecoded = []
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.flush()
            return True
        held = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        self._release(len(self.text) - held)
        return False

    def flush(self) -> None:
        if self.undecoded:
            self.text += self.tok.decode(self.undecoded)
            self.undecoded = []
        self._release(len(self.text))

    def _release(self, upto: int) -> None:
        if upto > self.released and self.on_text is not None:
            self.on_text(self.text[self.released : upto])
        self.released = max(self.released, upto)


def sample_text(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 256, *,
                temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                stop: Sequence[str] = (), on_text: Callable[[str], None] | None = None,
                use_cache: bool = True, stats: dict | None = None) -> str:  # fmt: skip
    """Continue `prompt` and return the new text (without the prompt, cut before any stop string).

    on_text receives printable text as soon as it is complete (streaming). Generation ends at max_new_tokens,
    a stop string, or the tokenizer's end-of-text token. An empty prompt starts from end-of-text. Special-token
    strings in the prompt (e.g. chat markers) are encoded as their special ids. `stats`, when given, receives
    prompt_tokens, new_tokens, prefill_s (prompt to first new token) and decode_s (the tokens after it).
    """
    eot = tokenizer.token_id(EOT)
    ids = tokenizer.encode(prompt, allow_special=True) if prompt else []
    if not ids:
        if eot is None:
            raise ValueError("an empty prompt needs a tokenizer with an end-of-text token")
        ids = [eot]
    stream = TextStream(tokenizer, stop, on_text)
    times = [time.perf_counter()]
    try:
        for nxt in generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, stop_ids=() if eot is None else (eot,), vocab_limit=tokenizer.vocab_size,
                            use_cache=use_cache):  # fmt: skip
            times.append(time.perf_counter())
            if stream.add(nxt):
                return stream.text
        stream.flush()
        return stream.text
    finally:
        if stats is not None:
            first = times[min(1, len(times) - 1)]
            stats.update(prompt_tokens=len(ids), new_tokens=len(times) - 1, prefill_s=first - times[0],
                         decode_s=times[-1] - first)  # fmt: skip


def speed_line(stats: dict) -> str:
    """One line of `sample_text` stats, as llama.cpp reports them: prompt and generation speed in tokens/s."""
    p, n, pre, dec = stats["prompt_tokens"], stats["new_tokens"], stats["prefill_s"], stats["decode_s"]
    decode = f"{(n - 1) / dec:,.1f} tok/s" if n > 1 and dec > 0 else "n/a"
    return (f"# {p} prompt tokens, {n} new: first token after {1000 * pre:,.0f} ms, then {decode} "
            f"({n - 1} tokens in {dec:.2f} s)")  # fmt: skip
