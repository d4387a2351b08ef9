"""Loss, perplexity and bits per byte of a model on text, with a sliding window for long documents.

Windows of block_size tokens advance by `stride`; the first window scores all its targets, each later one only
the targets the previous windows did not reach, so every token is predicted once, with at least
block_size - stride tokens of context (the "strided perplexity" of the HF docs; stride = block_size gives
disjoint windows, the cheapest and most pessimistic). Bits per byte divides the summed negative log-likelihood
(in bits) by the UTF-8 bytes of the scored text, so it compares models across tokenizers.
"""

from __future__ import annotations

import math
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slmkit.base.checks import text_file_problem
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer
from slmkit.data.dataset import check_tokenizer, read_meta, split_shards
from slmkit.model.gpt import GPT

DEFAULT_MAX_TOKENS = 262_144
"""Tokens of a val split scored by default (a few minutes for a ~10M model on a laptop CPU)."""


def check_stride(stride: int) -> None:
    """Refuse a stride that would never advance the window (negative) or is not a whole number of tokens."""
    if isinstance(stride, bool) or not isinstance(stride, Integral) or stride < 0:
        raise SlmError(f"stride must be a whole number of tokens >= 0 (0 = block size), got {stride!r}")


def check_max_tokens(max_tokens: int) -> None:
    """Refuse a negative (or fractional) number of tokens to score; 0 means all."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, Integral) or max_tokens < 0:
        raise SlmError(f"the number of tokens to score must be a whole number >= 0 (0 = all), got {max_tokens!r}")


def check_text_source(source: str | Path) -> None:
    """Refuse, before any work, a --data that is neither a dataset directory nor a non-empty UTF-8 text file."""
    if Path(source).is_dir():
        read_meta(source)
        return
    problem = text_file_problem(source, "text file or dataset directory", "pass --data FILE_OR_DATASET_DIR")
    if problem:
        raise SlmError(problem)


def plan_windows(n: int, block: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows that score ids[1:n] once each: (start, end, skip) with inputs ids[start:end], targets
    ids[start+1:end+1], of which the first `skip` were scored by an earlier window. `stride` is already resolved."""
    # scored_to: the first target position not yet scored
    windows, scored_to, s = [], 1, 0
    while scored_to < n:
        s = max(0, min(s, n - 1 - block)) if n - 1 > block else 0
        end = min(s + block, n - 1)
        windows.append((s, end, scored_to - (s + 1)))
        scored_to = end + 1
        s += stride
    return windows


@torch.inference_mode()
def token_nlls(model: GPT, docs: list[np.ndarray], stride: int = 0, batch_size: int = 8) -> list[np.ndarray]:
    """For each of `docs` (token id arrays), the negative log-likelihood in nats of each of ids[1:] given what
    precedes it (float64, len(ids) - 1 values), with the sliding window; windows of all docs share batches."""
    block, vocab = model.config.block_size, model.config.vocab_size
    check_stride(stride)
    model.eval()
    stride = min(stride or block, block)
    device = model.lm_head.weight.device
    out = [np.zeros(max(len(ids) - 1, 0), dtype=np.float64) for ids in docs]
    windows = [(d, *w) for d, ids in enumerate(docs) for w in plan_windows(len(ids), block, stride)]
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        T = max(e - s for _, s, e, _ in chunk)
        x = torch.zeros(len(chunk), T, dtype=torch.long)
        y = torch.full((len(chunk), T), -100, dtype=torch.long)
        for j, (d, s, e, _) in enumerate(chunk):
            x[j, : e - s] = torch.from_numpy(np.asarray(docs[d][s:e]).astype(np.int64))
            y[j, : e - s] = torch.from_numpy(np.asarray(docs[d][s + 1 : e + 1]).astype(np.int64))
        logits = model(x.to(device))[0][..., :vocab].float()  # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), ignore_index=-100, reduction="none")
        nll = nll.view(len(chunk), T).double().cpu().numpy()
        for j, (d, s, e, skip) in enumerate(chunk):
            out[d][s + skip : e] = nll[j, skip : e - s]  # target ids[p] sits at out[p - 1]
    return out


def sliding_nll(model: GPT, ids: np.ndarray, stride: int = 0, batch_size: int = 8) -> tuple[float, int]:
    """(summed negative log-likelihood in nats, number of predicted tokens) of ids[1:] given what precedes them."""
    check_stride(stride)
    if len(ids) < 2:
        return 0.0, 0
    return float(token_nlls(model, [np.asarray(ids)], stride, batch_size)[0].sum()), len(ids) - 1


def loss_metrics(nll: float, tokens: int, n_bytes: int) -> dict:
    loss = nll / max(tokens, 1)
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 50)),
        "bpb": nll / math.log(2) / max(n_bytes, 1),
        "tokens": tokens,
        "bytes": n_bytes,
    }


def text_bytes(tokenizer: Tokenizer, ids: np.ndarray) -> int:
    """UTF-8 bytes of the text the ids spell, special tokens (end-of-text) excluded."""
    specials = set(tokenizer.special_tokens.values())
    return len(tokenizer.decode([int(t) for t in ids if int(t) not in specials]).encode("utf-8"))


def read_val_tokens(dataset_dir: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS) -> np.ndarray:
    """The first max_tokens (0: all) of a prepared dataset's val split."""

    meta = read_meta(dataset_dir)
    parts, have = [], 0
    for path, count in split_shards(dataset_dir, "val", meta):
        arr = np.memmap(path, dtype=np.dtype(meta["dtype"]).newbyteorder("<"), mode="r", shape=(count,))
        take = count if not max_tokens else min(count, max_tokens - have)
        parts.append(np.asarray(arr[:take]))
        have += take
        if max_tokens and have >= max_tokens:
            break
    if not parts:
        raise SlmError(f"{dataset_dir} has an empty val split; re-prepare it with a val fraction > 0")
    return np.concatenate(parts)


def evaluate_text_loss(
    model: GPT, tokenizer: Tokenizer, source: str | Path, stride: int = 0, max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict:
    """Loss metrics on a prepared dataset dir's val split or on a text file (tokenized with the model's tokenizer).
    SlmError for a negative stride or max_tokens, a source that is no dataset dir or UTF-8 text, or fewer than two
    tokens to score (nothing would be predicted: no loss to report)."""

    check_stride(stride)
    check_max_tokens(max_tokens)
    check_text_source(source)
    source = Path(source)
    if source.is_dir():
        check_tokenizer(source, tokenizer)
        ids = read_val_tokens(source, max_tokens)
        what = f"{source} (val split)"
    else:
        ids = np.asarray(tokenizer.encode(source.read_text(encoding="utf-8")), dtype=np.int64)
        ids = ids[:max_tokens] if max_tokens else ids
        what = str(source)
    if len(ids) < 2:
        raise SlmError(f"{what} gives {len(ids)} token(s) to score; the loss needs at least 2 (pass more text"
                       f"{'' if not max_tokens else ' or a larger token count'})")  # fmt: skip
    nll, n = sliding_nll(model, ids, stride)
    return {
        **loss_metrics(nll, n, text_bytes(tokenizer, ids[1:])),
        "source": what,
        "stride": min(stride or model.config.block_size, model.config.block_size),
    }
