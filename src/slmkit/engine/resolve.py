"""Resolving a run's config before training: vocabulary, batch accounting, run name, learning-rate hint.

Pure functions of the config (and the tokenizer or world size): `train()` applies them once, before the run dir
exists, so the resolved config written into the run is the one that trains.
"""

from __future__ import annotations

import math
import re

from slmkit.base.config import ConfigError, RunConfig
from slmkit.base.config_files import load_config
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer


def derive_run_name(cfg: RunConfig, overrides: list[str]) -> str:
    """`<preset>.<field>=<value>...` from the overrides, e.g. shakespeare-char.lr=3e-4."""
    base = cfg.preset or "run"
    parts = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.strip() in ("train.name", "train.out_dir", "train.device", "train.threads", "data.dir"):
            continue
        parts.append(f"{key.strip().rsplit('.', 1)[-1]}={_safe(value)}")
    return ".".join([base, *parts])[:120]


def _safe(value: str) -> str:
    """A value as a file-name-safe piece of a run name: `["*.py", "*.md"]` -> `_.py,_.md`, `a/b` -> `a_b`."""
    value = re.sub(r"[\[\]\"' ]+", "", value.strip())
    return re.sub(r"[^A-Za-z0-9._,=+-]", "_", value)


def resolve_batch(cfg: RunConfig, world_size: int = 1) -> RunConfig:
    """Derive grad_accum from train.tokens_per_step when given; validate the batch arithmetic."""
    t, block = cfg.train, cfg.model.block_size
    per_micro = t.batch_size * block * world_size
    if t.tokens_per_step:
        if t.tokens_per_step % per_micro:
            raise ConfigError(
                f"train.tokens_per_step ({t.tokens_per_step}) must be a multiple of batch_size*block_size*world_size "
                f"= {t.batch_size}*{block}*{world_size} = {per_micro}"
            )
        cfg = cfg.replace(**{"train.grad_accum": t.tokens_per_step // per_micro})
    return cfg


def tokens_per_step(cfg: RunConfig, world_size: int = 1) -> int:
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size * world_size


def lr_scaling_hint(cfg: RunConfig) -> str | None:
    """Warn when tokens/update changed against the preset but the LR did not (square-root rule suggestion)."""
    if not cfg.preset:
        return None
    try:
        parent = resolve_batch(load_config(cfg.preset))
    except SlmError:
        return None
    ours, theirs = tokens_per_step(resolve_batch(cfg)), tokens_per_step(parent)
    if ours != theirs and cfg.optim.lr == parent.optim.lr:
        suggested = cfg.optim.lr * math.sqrt(ours / theirs)
        return (f"tokens per update is {ours:,} but preset {cfg.preset} uses {theirs:,} with the same optim.lr "
                f"({cfg.optim.lr:g}); the square-root rule suggests optim.lr={suggested:.3g}")  # fmt: skip
    return None


def resolve_vocab(cfg: RunConfig, tokenizer: Tokenizer) -> RunConfig:
    if cfg.model.vocab_size == 0:
        return cfg.replace(**{"model.vocab_size": tokenizer.vocab_size})
    if cfg.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's "
                          f"({tokenizer.vocab_size}); set it to 0 to take the tokenizer's")  # fmt: skip
    return cfg
