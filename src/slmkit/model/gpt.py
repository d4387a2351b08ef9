"""The transformer: a decoder-only language model whose architecture is a `ModelConfig`.

GPT-2 and LLaMA are two settings of the same fields (norm, norm_position, pos_emb, mlp, bias, tie_embeddings,
n_kv_head, qk_norm), never two classes. Read top to bottom: norms, rotary embedding, KV cache, attention,
MLP, block, then the model.

Parameter names are an interface (the optimizer groups, LoRA and the HF weight mapping in `hf.py` rely on them):
`wte`, `wpe` (learned positions only), `blocks.{i}.norm1`, `blocks.{i}.attn.{q,k,v,o}`,
`blocks.{i}.attn.{q_norm,k_norm}` (qk_norm only), `blocks.{i}.norm2`, `blocks.{i}.mlp.{up,gate,down}`
(gate for swiglu only), `norm_f`, `lm_head` (its weight *is* `wte.weight` when tie_embeddings).
Every hidden 2-D matrix lives under `blocks.`.

Batch-1 decoding pays a fixed cost per op (and, quantized, per matmul call), so forward keeps the op count low:
RoPE as one roll with the sign folded into the sin table, no mask for a single new token, GQA inside SDPA (keys
never repeated), no dropout call in eval. Int8 quantization sets `attn.qkv` and `mlp.gate_up`, single fused matmuls
used in place of the separate projections (the parameters and their names stay as above).

Inside `with record_attention(model) as weights:` attention is written out (softmax(q k^T / sqrt(hd) + mask) v,
`explicit_attention`) and every layer's attention weights are kept: for inspection only (`slm inspect`), slower.

Serving decodes many independent sequences in one forward with a `RaggedKVCache`: each row has its own length, so
its own position ids (learned or RoPE) and a mask hiding the slots it has not filled. Without one (training, `slm
sample`, scoring) nothing of that runs: training stays plain causal SDPA.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from slmkit.base.config import ModelConfig
from slmkit.model.int8mm import int8_rows
from slmkit.model.linear_ce import linear_cross_entropy, masked_cross_entropy

VOCAB_MULTIPLE = 64
"""Embedding and head rows are padded to a multiple of this (faster matmuls); padded ids are never sampled."""
SDPA_FP32_MAX_T = 256
"""Training under bf16 autocast on CPU runs attention in fp32 up to this sequence length: there the CPU flash-attention
backward is slower in bf16 than in fp32 (2.1x at T=64, 1.7x at T=128, 1.1x at T=256; bf16 wins from T=512 on).
Measured on AVX-512-bf16 without AMX by `benchmarks/bench_train.py --sdpa` (results/sdpa.md)."""


def padded_vocab_size(vocab_size: int) -> int:
    """`vocab_size` rounded up to a multiple of VOCAB_MULTIPLE."""
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


# ---------------------------------------------------------------------------------------------------------
# Normalization


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 and cast back (as LLaMA does). Written out rather than
    `F.rms_norm`, whose CPU composite is slower for the one-row inputs of decoding."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


# ---------------------------------------------------------------------------------------------------------
# Rotary position embedding (HF LLaMA convention: rotate the two halves of each head, no weight permutation)
#   rope(x) = x * cos + cat(-x2, x1) * sin  with x = cat(x1, x2)
#           = x * cos + cat(x2, x1) * cat(-sin, sin)   (the sign folded into the table: the same floats, fewer ops)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables, each (max_len, head_dim), for positions 0..max_len-1 (see the formula above)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)  # (hd/2,)
    freqs = torch.outer(torch.arange(max_len).float(), inv_freq)  # (max_len, hd/2)
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)  # (max_len, hd) each


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, heads, hd) by the tables of its positions: (T, 1, hd), or (B, T, 1, hd) when every row has its
    own positions (a `RaggedKVCache`)."""
    return (x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of the tokens seen so far, preallocated per layer: (B, kv_heads, max_len, head_dim).

    `length` is the number of positions filled; the model's forward writes the new positions and advances it.
    """

    def __init__(self, n_layer: int, batch_size: int, kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):  # fmt: skip
        shape = (n_layer, batch_size, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, kv_heads, T, hd) at positions start..start+T; return all keys/values up to there."""
        end = start + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, kv_heads, end, hd)

    def reset(self) -> None:
        self.length = 0

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """An empty cache whose storage is the given (n_layer, B, kv_heads, max_len, hd) tensors (views are fine:
        writes land in them)."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.max_len, cache.length = k, v, k.size(3), 0
        return cache


class RaggedKVCache:
    """Keys and values of up to `capacity` independent sequences decoded together, each row at its own length.

    Storage (n_layer, rows, kv_heads, max_len, hd), grown on demand (doubling) up to `capacity` rows, so memory
    follows the peak number of sequences, not the limit. Rows are LEFT-aligned: a row's position p lives in slot p,
    so its position ids are its slot indices (learned positions and RoPE need nothing else), a row can be filled
    alone (`row()` gives a batch-1 `KVCache` over it, so a prompt is prefilled exactly as `generate` does) and it
    can be restarted at 0 (a sliding window) without touching the others. A right-aligned cache (left padding,
    every row ending at the same slot) writes each step at one slot, but a row that joins with a longer prompt than
    the others have would shift them all, and position ids would still differ per row; here the write is a scatter
    at per-row slots (cheap) and the mask hides slots past each row's length (stale keys of an earlier occupant).

    A forward over `B` rows covers rows 0..B-1 (the user keeps its live rows first: `move` fills a freed row with
    the last one). `prepare(B, T)` (called by the model) fixes this step's positions (B, T), mask (B, 1, T, S)
    and span S = the longest row after the step; `update` writes each layer's new keys; `advance` adds T.
    """

    def __init__(self, n_layer: int, capacity: int, kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):  # fmt: skip
        self.capacity, self.max_len = capacity, max_len
        self._shape, self._device, self._dtype = (n_layer, kv_heads, max_len, head_dim), device, dtype
        self.k = self.v = torch.zeros(0)
        self._grow(min(capacity, 4))
        self.lengths = [0] * capacity  # tokens cached per row
        self.positions = self.mask = None
        self.span = 0

    def _grow(self, rows: int) -> None:
        n_layer, kv_heads, max_len, hd = self._shape
        k = torch.zeros((n_layer, rows, kv_heads, max_len, hd), device=self._device, dtype=self._dtype)
        v = torch.zeros_like(k)
        old = self.k.size(1) if self.k.dim() == 5 else 0
        if old:
            k[:, :old], v[:, :old] = self.k, self.v
        self.k, self.v = k, v

    def reserve(self, rows: int) -> None:
        """Make room for rows 0..rows-1 (up to capacity); existing rows keep their contents."""
        if rows > self.capacity:
            raise ValueError(f"a RaggedKVCache of {self.capacity} rows cannot hold {rows}")
        if rows > self.k.size(1):
            self._grow(min(self.capacity, max(rows, 2 * self.k.size(1))))

    def row(self, r: int) -> KVCache:
        """A batch-1 `KVCache` over row r, empty (length 0): a forward with it fills the row from position 0. Set
        `lengths[r]` to its length afterwards."""
        self.reserve(r + 1)
        return KVCache.over(self.k[:, r : r + 1], self.v[:, r : r + 1])

    def move(self, src: int, dst: int) -> None:
        """Copy row src (its filled slots) into row dst, which it replaces."""
        n = self.lengths[src]
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

    def prepare(self, B: int, T: int, device: torch.device) -> torch.Tensor:
        """Positions (B, T) of the next T tokens of rows 0..B-1; also sets `mask` (B, 1, T, S), True where a query
        may see a slot (slot <= its own position) and `span` S."""
        starts = torch.tensor(self.lengths[:B], device=device)  # (B,)
        self.span = max(self.lengths[:B]) + T
        if self.span > self.max_len:
            raise ValueError(f"positions up to {self.span} exceed the context of {self.max_len} tokens")
        self.positions = starts[:, None] + torch.arange(T, device=device)  # (B, T)
        slots = torch.arange(self.span, device=device)  # (S,)
        self.mask = (slots[None, None, :] <= self.positions[:, :, None])[:, None]  # (B, 1, T, S)
        return self.positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, kv_heads, T, hd) at each row's positions; return rows 0..B-1 over the span S."""
        B = k.size(0)
        rows = torch.arange(B, device=k.device)[:, None]  # (B, 1), broadcast against positions (B, T)
        self.k[layer][rows, :, self.positions] = k.transpose(1, 2)  # indexed view: (B, T, kv_heads, hd)
        self.v[layer][rows, :, self.positions] = v.transpose(1, 2)
        return self.k[layer, :B, :, : self.span], self.v[layer, :B, :, : self.span]  # (B, kv_heads, S, hd)

    def advance(self, B: int, T: int) -> None:
        for r in range(B):
            self.lengths[r] += T


# ---------------------------------------------------------------------------------------------------------
# Attention, MLP, block


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, skipped outright when it is the identity (eval, or p = 0): one call less per layer when decoding."""
    return F.dropout(x, p, training) if training and p > 0 else x


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int,
                       visible: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """What SDPA computes in one fused kernel, step by step: (output (B, n_head, T, hd), weights (B, n_head, T, S)).

    q: (B, n_head, T, hd) at positions start..start+T-1; k, v: (B, kv_heads, S, hd) at positions 0..S-1. Query i
    sees keys 0..start+i, or where `visible` (broadcast to (B, n_head, T, S)) is True when given (ragged rows).
    The scores and softmax are in fp32; each row of the weights sums to 1.
    """
    group = q.size(1) // k.size(1)  # GQA: kv head j serves query heads j*group .. (j+1)*group-1
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, n_head, S, hd)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, n_head, T, S)
    key_pos = torch.arange(k.size(2), device=q.device)
    query_pos = torch.arange(start, start + q.size(2), device=q.device)
    future = key_pos[None, :] > query_pos[:, None]  # (T, S): True where a query would see a later token
    if visible is not None:
        future = ~visible
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)  # (B, n_head, T, S)
    return (weights @ v.float()).to(q.dtype), weights


@contextmanager
def record_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block every Attention of `model` uses `explicit_attention` and appends its weights
    (B, n_head, T, S) to the list yielded, in call order: after one forward pass, weights[i] is layer i's."""
    recorded: list[torch.Tensor] = []
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for attn in layers:
        attn.record = recorded
    try:
        yield recorded
    finally:
        for attn in layers:
            attn.record = None


def project(module: nn.Module, x: torch.Tensor, apart: bool) -> torch.Tensor:
    """module(x) for x (B, T, C). With `apart` (rows of a `RaggedKVCache`: independent requests) each row computes
    what it would alone: an nn.Linear is a plain matmul; an int8 module (with `qweight`) quantizes activations per
    row (`int8_rows`); any other module is called once per row."""
    if not apart or isinstance(module, nn.Linear):
        return module(x)
    if hasattr(module, "qweight") and hasattr(module, "scale"):
        return int8_rows(module, x)
    if x.size(0) == 1:
        return module(x)
    return torch.cat([module(x[b : b + 1]) for b in range(x.size(0))])


class Attention(nn.Module):
    """Causal self-attention with separate q/k/v projections, GQA/MQA, optional QK-norm and RoPE.

    `qkv`, when set (int8 quantization does), is one module computing q, k and v together as (..., q|k|v); it
    then replaces the three projections in forward.
    """

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.kv_heads, self.head_dim = layer, cfg.n_head, cfg.kv_heads, cfg.head_dim
        qkv_bias = cfg.bias or cfg.qkv_bias
        self.q = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=qkv_bias)
        self.k = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.head_dim, bias=qkv_bias)
        self.v = nn.Linear(cfg.n_embd, cfg.kv_heads * cfg.head_dim, bias=qkv_bias)
        self.o = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.bias)
        if cfg.qk_norm:
            self.q_norm = make_norm(cfg, cfg.head_dim)
            self.k_norm = make_norm(cfg, cfg.head_dim)
        self.qk_norm = cfg.qk_norm
        self.dropout = cfg.dropout
        self.qkv: nn.Module | None = None
        self.record: list[torch.Tensor] | None = None  # set by record_attention: explicit path, weights kept
        self.sizes = (cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim)

    def _plain_qkv(self) -> bool:
        """q, k and v are plain Linears (no LoRA adapter, no quantized module): their weights can be concatenated."""
        return type(self.q) is nn.Linear and type(self.k) is nn.Linear and type(self.v) is nn.Linear

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None, start: int) -> torch.Tensor:  # fmt: skip
        B, T, _ = x.shape
        ragged = isinstance(cache, RaggedKVCache)
        if self.qkv is not None:  # one fused matmul
            q, k, v = project(self.qkv, x, ragged).split(self.sizes, dim=-1)
        elif torch.is_grad_enabled() and not ragged and self._plain_qkv():  # training: 1 matmul + 2 back, not 3 + 6
            bias = None if self.q.bias is None else torch.cat([self.q.bias, self.k.bias, self.v.bias])
            w = torch.cat([self.q.weight, self.k.weight, self.v.weight])  # 1.1-1.6x faster at small widths (CPU)
            q, k, v = F.linear(x, w, bias).split(self.sizes, dim=-1)
        else:
            q, k, v = project(self.q, x, ragged), project(self.k, x, ragged), project(self.v, x, ragged)  # (B, T, *)
        q = q.view(B, T, self.n_head, self.head_dim)  # (B, T, n_head, hd)
        k, v = k.view(B, T, self.kv_heads, self.head_dim), v.view(B, T, self.kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        # No cached prefix: plain causal. One new token after the cache: it sees every key, no mask.
        # A chunk after the cache: query i (position start+i) sees keys 0..start+i, an explicit (T, S) mask.
        # Ragged rows: each sees its own filled slots, the cache's (B, 1, T, S) mask.
        is_causal, mask = start == 0 and T > 1 and not ragged, None
        if ragged:
            k, v = cache.update(self.layer, k, v)  # (B, kv_heads, S, hd)
            mask = cache.mask
        elif cache is not None:
            k, v = cache.update(self.layer, k, v, start)  # (B, kv_heads, start+T, hd)
        if start > 0 and T > 1 and not ragged:
            key_pos = torch.arange(k.size(2), device=x.device)  # (S,)
            mask = key_pos[None, :] <= torch.arange(start, start + T, device=x.device)[:, None]  # (T, S)
        dropout_p, gqa = self.dropout if self.training else 0.0, self.kv_heads != self.n_head
        # y: (B, n_head, T, hd)
        if self.record is not None:  # inspection (eval: no attention dropout): written out, weights kept
            y, weights = explicit_attention(q, k, v, start, mask if ragged else None)
            self.record.append(weights.detach())
        elif q.dtype == torch.bfloat16 and T <= SDPA_FP32_MAX_T and q.requires_grad and q.device.type == "cpu":
            with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bf16
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), mask, dropout_p, is_causal,
                                                   enable_gqa=gqa).to(q.dtype)  # fmt: skip
        else:
            y = F.scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal, enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, n_head*hd)
        return dropout(project(self.o, y, ragged), self.dropout, self.training)


class MLP(nn.Module):
    """Feed-forward: gelu (tanh approximation, as GPT-2), gelu_exact (erf), swiglu (LLaMA) or relu2 (squared ReLU).

    `gate_up`, when set (int8 quantization does, for swiglu), computes gate and up together as (..., gate|up).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        self.up = nn.Linear(cfg.n_embd, cfg.hidden_size, bias=cfg.bias)
        if cfg.mlp == "swiglu":
            self.gate = nn.Linear(cfg.n_embd, cfg.hidden_size, bias=cfg.bias)
        self.down = nn.Linear(cfg.hidden_size, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.gate_up: nn.Module | None = None

    def forward(self, x: torch.Tensor, apart: bool = False) -> torch.Tensor:
        """apart: the rows are independent requests (see `project`)."""
        if self.kind == "swiglu":
            if self.gate_up is not None:  # one fused matmul
                gate, up = project(self.gate_up, x, apart).chunk(2, dim=-1)
            else:
                gate, up = project(self.gate, x, apart), project(self.up, x, apart)  # (B, T, hidden) each
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = F.relu(project(self.up, x, apart)).square()
        else:  # torch's CPU kernel of the tanh form is ~4x slower than erf's: gelu_exact for speed, gelu for GPT-2
            h = F.gelu(project(self.up, x, apart), approximate="tanh" if self.kind == "gelu" else "none")
        return dropout(project(self.down, h, apart), self.dropout, self.training)  # h: (B, T, hidden)


class Block(nn.Module):
    """pre-norm: x + f(norm(x)) (GPT-2, LLaMA); post-norm: norm(x + f(x)) (the original transformer)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.norm1 = make_norm(cfg, cfg.n_embd)
        self.attn = Attention(cfg, layer)
        self.norm2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope, cache: KVCache | RaggedKVCache | None, start: int) -> torch.Tensor:
        apart = isinstance(cache, RaggedKVCache)
        if self.pre:
            x = x + self.attn(self.norm1(x), rope, cache, start)
            return x + self.mlp(self.norm2(x), apart)
        x = self.norm1(x + self.attn(x, rope, cache, start))
        return self.norm2(x + self.mlp(x, apart))


# ---------------------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    """Token embedding, n_layer blocks, final norm, output head. Logits have `padded_vocab` columns."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (the tokenizer's vocabulary size) to build a GPT")
        self.config = cfg
        self.padded_vocab = padded_vocab_size(cfg.vocab_size)
        self.wte = nn.Embedding(self.padded_vocab, cfg.n_embd)
        if cfg.pos_emb == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hd)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        # Post-norm blocks already end in a norm, so the original transformer has no final norm: Identity there.
        self.norm_f = make_norm(cfg, cfg.n_embd) if cfg.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.n_embd, self.padded_vocab, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 init: every Linear and Embedding weight ~ normal(0, init_std), biases 0, norm weights 1
        (norm biases 0); the residual projections `attn.o` and `mlp.down` get init_std / sqrt(2 * n_layer)
        so the residual stream's variance does not grow with depth. Also recomputes the RoPE tables
        (needed after building on the meta device)."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                residual = name.endswith(("attn.o", "mlp.down"))
                nn.init.normal_(module.weight, 0.0, std / math.sqrt(2 * self.config.n_layer) if residual else std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if self.config.pos_emb == "rope":
            cfg = self.config
            cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """An empty KV cache for up to `max_len` (default block_size) positions, on the model's device/dtype."""
        cfg, p = self.config, self.lm_head.weight
        max_len = min(max_len or cfg.block_size, cfg.block_size)
        return KVCache(cfg.n_layer, batch_size, cfg.kv_heads, max_len, cfg.head_dim,
                       device=device or p.device, dtype=dtype or p.dtype)  # fmt: skip

    def new_ragged_cache(self, rows: int, device=None, dtype=None) -> RaggedKVCache:
        """An empty `RaggedKVCache` for up to `rows` sequences of up to block_size positions each."""
        cfg, p = self.config, self.lm_head.weight
        return RaggedKVCache(cfg.n_layer, rows, cfg.kv_heads, cfg.block_size, cfg.head_dim,
                             device=device or p.device, dtype=dtype or p.dtype)  # fmt: skip

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | RaggedKVCache | None = None,
        start_pos: int | None = None,
        last_only: bool = False,
        loss_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, padded_vocab) and the loss, or None without targets.

        idx: (B, T) int64 token ids. targets: (B, T) int64, IGNORE_INDEX (-100) where no loss is wanted; the loss
        is the fp32 mean cross-entropy over the other positions (0 when every position is ignored).
        kv_cache: read and extended in place (positions start_pos..start_pos+T); start_pos defaults to
        kv_cache.length (0 without a cache). last_only: compute logits for the last position only (B, 1, V).
        A `RaggedKVCache` instead: idx feeds rows 0..B-1 of it, each continuing at its own length (start_pos unused).
        loss_only (with targets): (None, loss), the head and loss fused by row chunks (`linear_ce`: no whole logits).
        """
        x = self.hidden(idx, kv_cache=kv_cache, start_pos=start_pos)  # (B, T, C)
        if last_only and targets is None:
            x = x[:, -1:]  # (B, 1, C)
        if loss_only and targets is not None and type(self.lm_head) is nn.Linear and kv_cache is None:
            return None, linear_cross_entropy(x, self.lm_head.weight, targets)
        logits = project(self.lm_head, x, isinstance(kv_cache, RaggedKVCache))  # (B, T, padded_vocab)
        if targets is None:
            return logits, None
        return logits, masked_cross_entropy(logits, targets)

    def hidden(self, idx: torch.Tensor, *, kv_cache: KVCache | RaggedKVCache | None = None,
               start_pos: int | None = None) -> torch.Tensor:  # fmt: skip
        """The residual stream after the final norm, (B, T, n_embd): what the head reads, and what embeddings
        pool. Same arguments as forward. Causal attention means a right-padded row's real positions never see its
        padding, so pooling them needs no attention mask."""
        B, T = idx.shape
        if isinstance(kv_cache, RaggedKVCache):
            return self._hidden_ragged(idx, kv_cache)
        start = (kv_cache.length if kv_cache is not None else 0) if start_pos is None else start_pos
        limit = kv_cache.max_len if kv_cache is not None else self.config.block_size
        if start + T > limit:
            raise ValueError(f"positions {start}..{start + T} exceed the context of {limit} tokens")
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos_emb == "learned":
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))  # (T, C) broadcast over B
        else:
            rope = (self.rope_cos[start : start + T, None], self.rope_sin[start : start + T, None])  # (T, 1, hd) each
        x = dropout(x, self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x, rope, kv_cache, start)
        if kv_cache is not None:
            kv_cache.length = start + T
        return self.norm_f(x)

    def _hidden_ragged(self, idx: torch.Tensor, cache: RaggedKVCache) -> torch.Tensor:
        """hidden() for rows 0..B-1 of a ragged cache: row b's tokens at positions lengths[b]..lengths[b]+T-1."""
        B, T = idx.shape
        pos = cache.prepare(B, T, idx.device)  # (B, T)
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos_emb == "learned":
            x = x + self.wpe(pos)  # (B, T, C)
        else:
            rope = (self.rope_cos[pos][:, :, None], self.rope_sin[pos][:, :, None])  # (B, T, 1, hd) each
        x = dropout(x, self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x, rope, cache, 0)
        cache.advance(B, T)
        return self.norm_f(x)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (a tied head counted once). non_embedding excludes wte and wpe (Kaplan's N)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
            if self.config.pos_emb == "learned":
                n -= self.wpe.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token, forward + backward (PaLM appendix B, as nanoGPT):

            6 * N + 12 * n_layer * n_embd * block_size

        N = parameters that take part in matmuls = num_params(non_embedding=True) plus the output head when it is
        tied (the head's matmul costs compute whether or not its weight is shared; the embedding lookups cost
        none). The second term is the attention scores and weighted sum (QK^T and AV) at full context.
        """
        cfg = self.config
        n = self.num_params(non_embedding=True) + (self.lm_head.weight.numel() if cfg.tie_embeddings else 0)
        return 6.0 * n + 12.0 * cfg.n_layer * cfg.n_embd * cfg.block_size
