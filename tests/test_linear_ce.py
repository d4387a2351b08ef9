"""The fused head + cross-entropy (`slmkit.model.linear_ce`): same loss and gradients as the plain head, by chunks."""

from __future__ import annotations

import pytest
import torch

import slmkit.model.linear_ce as lce
from slmkit.base.config import ModelConfig
from slmkit.model.gpt import GPT
from slmkit.model.linear_ce import IGNORE_INDEX, linear_cross_entropy


def _grads(model: GPT, x, y, loss_only: bool, dtype):
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        logits, loss = model(x, y, loss_only=loss_only)
    loss.backward()
    return logits, loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("tie", "dtype", "tol"), [(True, None, 1e-5), (False, None, 1e-5), (True, torch.bfloat16, 3e-2)]
)
def test_fused_loss_and_gradients_match_the_plain_head(monkeypatch, tie, dtype, tol):
    monkeypatch.setattr(lce, "CHUNK_BYTES", 4 * 512 * 70)  # 70 rows a chunk: 256 rows make 4 chunks, the last short
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, block_size=32, vocab_size=500, tie_embeddings=tie)
    model = GPT(cfg)
    x, y = torch.randint(0, 500, (8, 32)), torch.randint(0, 500, (8, 32))
    y[0, :7] = IGNORE_INDEX
    _, plain_loss, plain = _grads(model, x, y, False, dtype)
    logits, fused_loss, fused = _grads(model, x, y, True, dtype)
    assert logits is None  # no (tokens x vocab) tensor made
    assert fused_loss == pytest.approx(plain_loss, rel=1e-4 if dtype else 1e-6)
    assert plain.keys() == fused.keys()
    for name, g in plain.items():
        if name.endswith("k.bias"):  # softmax ignores a key bias: its true gradient is 0, both are rounding noise
            continue
        assert (fused[name] - g).norm() <= tol * g.norm() + 1e-9, name


def test_every_target_ignored_gives_zero_loss_and_zero_gradient(monkeypatch):
    monkeypatch.setattr(lce, "CHUNK_BYTES", 4 * 128 * 64)
    h = torch.randn(200, 16, requires_grad=True)
    w = torch.randn(100, 16, requires_grad=True)
    loss = linear_cross_entropy(h, w, torch.full((200,), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().max() == 0 and w.grad.abs().max() == 0


def test_small_logits_take_the_plain_path_and_a_big_vocab_is_chunked(monkeypatch):
    calls = []
    real = lce._LinearCrossEntropy.apply
    monkeypatch.setattr(lce._LinearCrossEntropy, "apply", lambda *a: calls.append(a[-2]) or real(*a))
    h, t = torch.randn(64, 8), torch.randint(0, 50, (64,))
    linear_cross_entropy(h, torch.randn(50, 8), t)
    assert calls == []  # 64 rows of 50 logits: one chunk, autograd's own path
    linear_cross_entropy(torch.randn(4096, 8), torch.randn(50304, 8), torch.randint(0, 50304, (4096,)))
    assert calls == [lce.CHUNK_BYTES // (4 * 50304)]  # GPT-2's padded vocabulary: 83 rows a chunk


def test_no_grad_computes_no_gradients(monkeypatch):
    """Evaluation (no_grad) pays for the loss only: no gradient matmuls although the weight requires grad."""
    monkeypatch.setattr(lce, "CHUNK_BYTES", 4 * 128 * 64)
    h, w, t = torch.randn(300, 16), torch.nn.Parameter(torch.randn(128, 16)), torch.randint(0, 128, (300,))
    seen = []
    real = lce._LinearCrossEntropy.forward
    monkeypatch.setattr(lce._LinearCrossEntropy, "forward",
                        staticmethod(lambda ctx, *a: seen.append(a[-1]) or real(ctx, *a)))  # fmt: skip
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, t)
    assert seen == [False] and loss.item() == pytest.approx(lce.masked_cross_entropy(h @ w.T, t).item(), rel=1e-6)
