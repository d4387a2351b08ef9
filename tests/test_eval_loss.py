"""Loss, perplexity and bits per byte with a sliding window."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slmkit.base.config import ModelConfig
from slmkit.engine.evaluate.loss import loss_metrics, sliding_nll
from slmkit.model.gpt import GPT


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)).eval()


@torch.no_grad()
def _naive(model, ids: np.ndarray, stride: int) -> float:
    """Token by token: each target scored once, with the context the sliding window gives it."""
    block, total, scored = model.config.block_size, 0.0, 1
    starts = list(range(0, len(ids), stride))
    for s in starts:
        s = min(s, max(0, len(ids) - 1 - block))
        e = min(s + block, len(ids) - 1)
        x = torch.tensor(ids[s:e])[None]
        logp = F.log_softmax(model(x)[0][0, :, :50].float(), -1)
        for pos in range(max(scored, s + 1), e + 1):
            total -= float(logp[pos - s - 1, ids[pos]])
        scored = max(scored, e + 1)
        if scored >= len(ids):
            break
    return total


@pytest.mark.parametrize("stride", [16, 5, 1])
def test_sliding_window_scores_each_token_once(model, stride):
    ids = np.random.default_rng(0).integers(0, 50, 70)
    nll, n = sliding_nll(model, ids, stride=stride, batch_size=3)
    assert n == 69
    assert nll == pytest.approx(_naive(model, ids, stride), rel=1e-5)


def test_shorter_stride_gives_more_context_and_short_text_fits_one_window(model):
    ids = np.random.default_rng(1).integers(0, 50, 10)
    nll, n = sliding_nll(model, ids)
    x = torch.tensor(ids[:-1])[None]
    with torch.no_grad():
        want = F.cross_entropy(model(x)[0][0, :, :50].float(), torch.tensor(ids[1:]), reduction="sum")
    assert n == 9 and nll == pytest.approx(float(want), rel=1e-5)


def test_loss_metrics():
    m = loss_metrics(nll=20.0, tokens=10, n_bytes=40)
    assert m["loss"] == 2.0 and m["ppl"] == pytest.approx(math.exp(2))
    assert m["bpb"] == pytest.approx(20.0 / math.log(2) / 40)
