"""Log-likelihood scoring of continuations, as lm-eval's HF backend computes it, but cheaper.

Encoding follows lm-eval's `TemplateLM._encode_pair`: trailing spaces of the context move to the continuation,
then context + continuation is encoded whole and split after the tokens of the context encoded alone. An empty
context is replaced by the end-of-text token.

Cost: the context shared by an item's choices goes through the model once (prefill into a KV cache); the
choices then run as one batch on top of that cache. The log-softmax covers the tokenizer's vocabulary only
(`vocab_size` columns, not the padded head), exactly as an exported HF model sees it.

Truncation: when context + continuation exceed block_size + 1 tokens, the context is cut from the left
(lm-eval's rule: the model input is (context + continuation)[-(block_size + 1):][:-1]); such requests are
counted in `Scorer.truncated`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from slmkit.base.tokenizer import EOT, Tokenizer
from slmkit.model.gpt import GPT, KVCache


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split the way lm-eval's causal backends split them."""
    if context == "":
        cont = tokenizer.encode(continuation)
        eot = tokenizer.special_tokens[EOT]
        return ([eot], cont) if cont[:1] != [eot] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


class Scorer:
    """Scores continuations with a GPT in eval mode; counts left-truncated requests in `truncated`."""

    def __init__(self, model: GPT, vocab_size: int | None = None):
        self.model = model.eval()
        self.vocab = vocab_size or model.config.vocab_size
        self.block = model.config.block_size
        self.device = model.lm_head.weight.device
        self.truncated = 0

    def _token_scores(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(target), target is the argmax) per row of logits (N, padded V); only the first vocab_size columns
        count. logit - logsumexp: one pass for the normalizer, no (N, V) log-softmax tensor."""
        logits = logits[:, : self.vocab]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32, or fp64 for exact comparisons
        picked = logits.gather(1, targets[:, None])[:, 0]
        return picked - torch.logsumexp(logits, dim=-1), logits.argmax(dim=-1) == targets

    @contextlib.contextmanager
    def _head_rows(self, rows: torch.Tensor):
        """Within the block, the model's output head sees only the hidden states at flat positions `rows` of
        (B*T): logits come back as (len(rows), padded V) and no time is spent on padding or unneeded positions."""
        handle = self.model.lm_head.register_forward_pre_hook(lambda _, args: (args[0].flatten(0, -2)[rows],))
        try:
            yield
        finally:
            handle.remove()

    @torch.inference_mode()
    def score_full(self, ctx: Sequence[int], cont: Sequence[int]) -> tuple[float, bool]:
        """(sum log p(cont | ctx), every continuation token is the argmax) with one plain forward pass."""
        tokens = list(ctx) + list(cont)
        if len(tokens) > self.block + 1:
            self.truncated += 1
        tokens = tokens[-(self.block + 1) :]
        cont = list(cont)[-self.block :]  # a continuation longer than the context window: only its tail is scored
        x = torch.tensor([tokens[:-1]], device=self.device)  # (1, T)
        with self._head_rows(torch.arange(x.size(1) - len(cont), x.size(1), device=self.device)):
            logits = self.model(x)[0]  # (n_cont, V)
        logp, greedy = self._token_scores(logits, torch.tensor(cont, device=self.device))
        return float(logp.sum()), bool(greedy.all())

    @torch.inference_mode()
    def score_choices(self, ctx: Sequence[int], conts: Sequence[Sequence[int]]) -> list[tuple[float, bool]]:
        """Score every continuation after one shared context: one prefill, then the choices as one batch."""
        n_ctx, longest = len(ctx), max(len(c) for c in conts)
        if n_ctx + longest > self.block + 1 or n_ctx == 0:
            return [self.score_full(ctx, c) for c in conts]
        model, n, dev = self.model, len(conts), self.device
        cache = model.new_kv_cache(1, max_len=n_ctx + longest - 1)
        first = model(torch.tensor([list(ctx)], device=dev), kv_cache=cache, last_only=True)[0][0]  # (1, V)
        # Token i of choice c is predicted from the prefill (i = 0) or from row (c, i - 1) of the batch below.
        owner = torch.tensor([i for i, c in enumerate(conts) for _ in c], device=dev)  # (total,)
        targets = torch.tensor([t for c in conts for t in c], device=dev)  # (total,)
        is_first = torch.tensor([j == 0 for c in conts for j in range(len(c))], device=dev)
        logp, greedy = self._token_scores(first.expand(int(is_first.sum()), -1), targets[is_first])
        token_logp = torch.empty(len(targets), dtype=logp.dtype, device=dev)
        token_greedy = torch.empty(len(targets), dtype=torch.bool, device=dev)
        token_logp[is_first], token_greedy[is_first] = logp, greedy
        if longest > 1:
            cfg = model.config
            batch_cache = KVCache(cfg.n_layer, n, cfg.kv_heads, cache.max_len, cfg.head_dim, device=dev,
                                  dtype=cache.k.dtype)  # fmt: skip
            batch_cache.k[:, :, :, :n_ctx] = cache.k[:, :, :, :n_ctx]  # broadcast the shared context over the batch
            batch_cache.v[:, :, :, :n_ctx] = cache.v[:, :, :, :n_ctx]
            batch_cache.length = n_ctx
            x = torch.zeros(n, longest - 1, dtype=torch.long, device=dev)  # (n, longest-1), right-padded
            for i, c in enumerate(conts):
                x[i, : len(c) - 1] = torch.tensor(c[:-1])
            rows = torch.tensor([i * (longest - 1) + j for i, c in enumerate(conts) for j in range(len(c) - 1)],
                                dtype=torch.long, device=dev)  # fmt: skip
            with self._head_rows(rows):
                logits = model(x, kv_cache=batch_cache)[0]  # (rows, V)
            logp, greedy = self._token_scores(logits, targets[~is_first])
            token_logp[~is_first], token_greedy[~is_first] = logp, greedy
        sums = torch.zeros(n, dtype=token_logp.dtype, device=dev).index_add_(0, owner, token_logp)
        misses = torch.zeros(n, dtype=torch.long, device=dev).index_add_(0, owner, (~token_greedy).long())
        all_greedy = misses == 0
        return [(float(v), bool(g)) for v, g in zip(sums, all_greedy)]

    def score_requests(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """Score (context ids, continuation ids) pairs in any order; requests sharing a context share its prefill."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _) in enumerate(requests):
            groups.setdefault(tuple(ctx), []).append(i)
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for ctx, idx in groups.items():
            for i, r in zip(idx, self.score_choices(list(ctx), [list(requests[i][1]) for i in idx])):
                out[i] = r
        return out
