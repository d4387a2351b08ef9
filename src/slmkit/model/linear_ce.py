"""The output head and the cross-entropy in one pass over row chunks, so the (tokens x vocab) logits never exist whole.

With GPT-2's 50,257-token vocabulary a batch of 2,048 tokens has 412 MB of fp32 logits, and autograd keeps the
log-softmax and its gradient beside them: on a small model those dominate a training step's memory. Because the loss
is the last thing computed, its gradient with respect to the logits is known in the forward pass (softmax minus the
one-hot target), so each chunk's logits can be made, turned into the gradients of the hidden states and of the head's
weight, and dropped. Backward then only scales the stored gradients by the incoming one. The matmuls are the ones a
plain head does (one forward, two backward), so the arithmetic is the same; peak memory falls to one chunk's logits.

Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as `F.cross_entropy` on `.float()`
logits does, so the loss matches `masked_cross_entropy(head(x), targets)` to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Targets with this value contribute nothing to the loss (prompt tokens in SFT, padding)."""
CHUNK_BYTES = 16 << 20  # one chunk's fp32 logits at most (16 MB; 8-32 MB ran fastest here); at least 64 rows


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean fp32 cross-entropy over targets != IGNORE_INDEX; exactly 0 (with zero gradient) when none count."""
    logits = logits.float().view(-1, logits.size(-1))  # (B*T, V)
    targets = targets.reshape(-1)  # (B*T,)
    total = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (targets != IGNORE_INDEX).sum().clamp(min=1)
    return total / count


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int, grads: bool) -> torch.Tensor:
        dtype = _compute_dtype(h)
        # needs_input_grad says True for a parameter even under no_grad: `grads` is the caller's grad mode
        want_h, want_w = grads and ctx.needs_input_grad[0], grads and ctx.needs_input_grad[1]
        wc = w.to(dtype)  # (V, C)
        grad_h = torch.empty_like(h) if want_h else None  # (N, C)
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if want_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.size(0), chunk):
            hc, t = h[s : s + chunk].to(dtype), targets[s : s + chunk]  # (n, C), (n,)
            logits = (hc @ wc.T).float()  # (n, V)
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            valid = t != IGNORE_INDEX
            tt = t.clamp(min=0)
            picked = logits.gather(1, tt[:, None]).squeeze(1)
            total += torch.where(valid, lse - picked, 0.0).sum()
            if want_h or want_w:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                g[torch.arange(g.size(0), device=g.device), tt] -= 1.0
                g.mul_(valid[:, None])
                g = g.to(dtype)
                if want_h:
                    grad_h[s : s + chunk] = g @ wc
                if want_w:
                    grad_w += (g.T @ hc).float()
        count = (targets != IGNORE_INDEX).sum().clamp(min=1)
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.w_dtype = w.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_out / count
        dh = grad_h * scale.to(grad_h.dtype) if grad_h is not None else None
        dw = (grad_w * scale).to(ctx.w_dtype) if grad_w is not None else None
        return dh, dw, None, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `x @ weight.T` (x: (B, T, C) or (N, C), weight (V, C)) against targets, IGNORE_INDEX
    positions left out (0 when every position is); the same value and gradients as the plain head + cross-entropy.
    Logits larger than CHUNK_BYTES are made a chunk of rows at a time."""
    h = x.reshape(-1, x.size(-1))
    chunk = max(64, CHUNK_BYTES // (4 * weight.size(0)))
    if h.size(0) <= chunk:  # the logits fit in one chunk: autograd's own path is as fast
        return masked_cross_entropy(F.linear(h, weight), targets)
    return _LinearCrossEntropy.apply(h, weight, targets.reshape(-1), chunk, torch.is_grad_enabled())
