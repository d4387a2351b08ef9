"""Sentence embeddings from a decoder: texts -> token ids -> final-norm states -> one pooled vector per text, and the
contrastive objective (InfoNCE, plus CoSENT on pairs with gold scores) that fine-tunes a run into an embedding
model.

    vectors, stats = embed_texts(model, tokenizer, ["a cat sat", "a dog ran"], pooling="mean")  # (2, n_embd) float32

Pooling reads `GPT.hidden` (B, T, C). Rows are right-padded: attention is causal, so a text's real positions never
see its padding and pooling over them needs no attention mask; a text's vector does not depend on its batch (up to
float rounding of different matmul shapes). Texts are sorted by length before batching, so little is padded.

    mean      the mean of the text's token states (instruction tokens included, as sentence-transformers does)
    weighted  the mean with token i (1-based) weighted by i (SGPT's position-weighted mean, Muennighoff 2022): in a
              causal model only later tokens have read the whole text (sentence-transformers' weightedmean)
    last      the state of the text's last token
    eos       an end-of-text token is appended and its state taken (the tokenizer must have one)

Texts longer than the context are cut (the start kept) and counted. `ContrastiveObjective` is the loss a training
run uses instead of next-token prediction (`Trainer(objective=...)`): its batches are `PairLoader`'s
(slmkit.data.pairs).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from slmkit.base.config import EmbedConfig
from slmkit.base.config_sections import POOLINGS
from slmkit.base.console import progress as progress_bar
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import EOT, Tokenizer
from slmkit.data.pairs import pad_batch
from slmkit.model.gpt import GPT

MAX_LOGIT_SCALE = 100.0  # a learned 1/temperature is capped here (CLIP's bound), so logits cannot run away
COSENT_SCALE = 20.0  # CoSENT's fixed 1/temperature (Su 2022, and sentence-transformers' CoSENTLoss default)


class EmbedError(SlmError):
    """A text, option or tokenizer that embeddings cannot use."""


def check_pooling(pooling: str, tokenizer: Tokenizer) -> None:
    """Refuse an unknown pooling, and eos pooling with a tokenizer that has no end-of-text token."""
    if pooling not in POOLINGS:
        raise EmbedError(f"unknown pooling {pooling!r}; use one of: {', '.join(POOLINGS)}")
    if pooling == "eos" and tokenizer.token_id(EOT) is None:
        raise EmbedError(f"--pooling eos appends {EOT}, which tokenizer {tokenizer.name} does not have; use "
                         "--pooling mean or last")  # fmt: skip


def text_ids(tokenizer: Tokenizer, text: str, pooling: str, max_len: int) -> tuple[list[int], bool]:
    """(token ids, truncated) of one text as the encoder reads it: cut to `max_len` tokens (the start kept), with
    end-of-text appended for eos pooling."""
    ids = tokenizer.encode(text)
    room = max_len - 1 if pooling == "eos" else max_len
    cut = len(ids) > room
    ids = ids[:room]
    if pooling == "eos":
        ids.append(tokenizer.eot_id)
    return ids, cut


def pool(hidden: torch.Tensor, lengths: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, C) states of right-padded rows with `lengths` (B,) real tokens -> (B, C) vectors, in fp32."""
    hidden = hidden.float()
    if pooling in ("mean", "weighted"):
        pos = torch.arange(hidden.size(1), device=hidden.device)[None, :]  # (1, T)
        weight = (pos < lengths[:, None]).float()  # (B, T): 1 on the text's tokens, 0 on padding
        if pooling == "weighted":
            weight = weight * (pos + 1)  # token i (1-based) weighs i
        return (hidden * weight[..., None]).sum(1) / weight.sum(1, keepdim=True).clamp(min=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), lengths - 1]  # last / eos: (B, C)


def encode(model: GPT, ids: torch.Tensor, lengths: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pooled vectors (B, C) of a right-padded batch (gradients flow: training calls this too)."""
    return pool(model.hidden(ids), lengths, pooling)


@torch.no_grad()
def embed_texts(model: GPT, tokenizer: Tokenizer, texts: Sequence[str], *, pooling: str = "mean",
                instruction: str = "", batch_size: int = 64, normalize: bool = True, max_len: int = 0,
                progress: bool = False) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Embed `texts` (each prefixed with `instruction`): ((N, n_embd) float32, unit length when `normalize`; stats).

    stats: texts, tokens, truncated (texts cut to max_len tokens, 0 = the model's context), max_len, seconds,
    texts_per_s. An empty text is refused (EmbedError naming it); the model is put back in its train/eval mode."""
    check_pooling(pooling, tokenizer)
    if batch_size < 1:
        raise EmbedError(f"batch size must be >= 1, got {batch_size}")
    limit = model.config.block_size
    max_len = limit if not max_len else min(max_len, limit)
    for i, t in enumerate(texts):
        if not (instruction + t).strip():
            raise EmbedError(f"text {i} is empty; drop empty texts before embedding them")
    t0 = time.perf_counter()
    encoded = [text_ids(tokenizer, instruction + t, pooling, max_len) for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))  # longest first: little padding
    device = next(model.parameters()).device
    out = np.zeros((len(texts), model.config.n_embd), dtype=np.float32)
    was_training = model.training
    model.eval()
    bar = progress_bar(len(texts), "embed", "text", enabled=progress)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, lengths = pad_batch([encoded[i][0] for i in rows], device)
            vec = encode(model, ids, lengths, pooling)
            if normalize:
                vec = F.normalize(vec, dim=-1)
            out[rows] = vec.cpu().numpy()
            bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - t0
    stats = {"texts": len(texts), "tokens": sum(len(ids) for ids, _ in encoded),
             "truncated": sum(cut for _, cut in encoded), "max_len": max_len, "pooling": pooling,
             "seconds": seconds, "texts_per_s": len(texts) / seconds if seconds > 0 else None}  # fmt: skip
    return out, stats


# ---------------------------------------------------------------------------------------------------------
# The contrastive objective


def info_nce(anchors: torch.Tensor, candidates: torch.Tensor, scale: torch.Tensor,
             targets: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Cross-entropy of picking row targets[i] of `candidates` (n rows: the positives first, then negatives) for
    anchor i among all of them; inputs unit-length (B, C) and (n, C), logits = scale * cosine; targets default to
    0..B-1 (anchor i's positive is candidate i)."""
    logits = scale * anchors @ candidates.T  # (B, n)
    if targets is None:
        targets = torch.arange(anchors.size(0), device=anchors.device)
    return F.cross_entropy(logits, targets)


def cosent(cosines: torch.Tensor, scores: torch.Tensor, scale: float = COSENT_SCALE) -> torch.Tensor:
    """CoSENT (Su 2022): log(1 + sum over pairs (i, j) with scores[i] > scores[j] of exp(scale * (cos_j - cos_i)));
    a ranking loss that wants every pair's cosine above those of the pairs scored lower. (n,) cosines and scores;
    0 when no two scores differ."""
    diff = scale * (cosines[None, :] - cosines[:, None])  # [i, j] = scale * (cos_j - cos_i)
    wanted = scores[:, None] > scores[None, :]  # i should have the higher cosine
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff[wanted]]), 0)


class ContrastiveObjective(nn.Module):
    """InfoNCE over in-batch negatives (plus hard negatives) for `Trainer(objective=...)`: called as
    `objective(model, batch) -> loss` with a `PairLoader` batch (ids (R, T), lengths (R,), n_pairs (1,), scores
    (B,)); rows are B anchors, their B positives, then hard negatives. The pairs without a score are InfoNCE's
    positives (every other row of the batch is a negative for them); the scored ones add cfg.cosent_weight x
    CoSENT. `logit_scale` = log(1/temperature), a parameter when the temperature is learned (the Trainer gives it
    an optimizer group and checkpoints it), else a buffer."""

    def __init__(self, cfg: EmbedConfig):
        super().__init__()
        self.pooling, self.symmetric, self.cosent_weight = cfg.pooling, cfg.symmetric, cfg.cosent_weight
        scale = torch.tensor(math.log(1.0 / cfg.temperature))
        if cfg.learn_temperature:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)

    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))

    def metrics(self) -> dict[str, float]:
        """Logged by the Trainer every step: the temperature, when it is learned."""
        return {"train/temperature": self.temperature()} if isinstance(self.logit_scale, nn.Parameter) else {}

    def forward(self, model: GPT, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        ids, lengths, n_pairs, scores = batch
        b = int(n_pairs.reshape(-1)[0])
        emb = F.normalize(encode(model, ids, lengths, self.pooling), dim=-1)  # (R, C)
        anchors, candidates = emb[:b], emb[b:]  # (B, C), (R - B, C): positives then negatives
        graded = ~torch.isnan(scores)  # (B,)
        loss = emb.sum() * 0  # in the graph even when a batch has nothing to learn (scored pairs, all scores equal)
        if not graded.all():
            pos = torch.nonzero(~graded).squeeze(1)  # the positives' rows, which are also their own targets
            scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
            nce = info_nce(anchors[pos], candidates, scale, pos)
            if self.symmetric:  # positives pick their anchor among all anchors
                nce = (nce + info_nce(candidates[pos], anchors, scale, pos)) / 2
            loss = loss + nce
        if self.cosent_weight > 0 and graded.sum() >= 2:
            cos = (anchors[graded] * candidates[:b][graded]).sum(-1)
            loss = loss + self.cosent_weight * cosent(cos, scores[graded])
        return loss
