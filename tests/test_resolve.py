"""engine/resolve.py: config arithmetic before a run starts (vocabulary, batch accounting, run names).

The LR hint and names from presets are also exercised end to end in test_train.py."""

from __future__ import annotations

import pytest
from conftest import TINY

from slmkit.base.config import ConfigError
from slmkit.base.config_files import load_config
from slmkit.base.tokenizer import CharTokenizer
from slmkit.engine.resolve import derive_run_name, lr_scaling_hint, resolve_batch, resolve_vocab, tokens_per_step


def test_vocab_from_the_tokenizer():
    tok = CharTokenizer("abcdef")
    cfg = resolve_vocab(load_config(None, TINY), tok)
    assert cfg.model.vocab_size == tok.vocab_size == 7
    bigger = load_config(None, [*TINY, "model.vocab_size=100"])
    assert resolve_vocab(bigger, tok) is bigger  # room for more is fine (e.g. chat tokens to come)
    with pytest.raises(ConfigError, match=r"model.vocab_size \(5\) is smaller than the tokenizer's \(7\)"):
        resolve_vocab(load_config(None, [*TINY, "model.vocab_size=5"]), tok)


def test_batch_without_tokens_per_step_is_unchanged():
    cfg = load_config(None, [*TINY, "train.grad_accum=3"])  # 4 x 32 tokens per micro-batch
    assert resolve_batch(cfg) is cfg
    assert tokens_per_step(cfg) == 4 * 3 * 32 and tokens_per_step(cfg, world_size=2) == 2 * 4 * 3 * 32


@pytest.mark.parametrize("world,accum", [(1, 4), (2, 2), (4, 1)])
def test_tokens_per_step_derives_accumulation_per_world_size(world, accum):
    cfg = resolve_batch(load_config(None, [*TINY, "train.tokens_per_step=512"]), world_size=world)
    assert cfg.train.grad_accum == accum and tokens_per_step(cfg, world) == 512


def test_tokens_per_step_must_divide():
    with pytest.raises(ConfigError, match=r"multiple of batch_size\*block_size\*world_size = 4\*32\*1 = 128"):
        resolve_batch(load_config(None, [*TINY, "train.tokens_per_step=500"]))
    with pytest.raises(ConfigError, match=r"= 4\*32\*8 = 1024"):
        resolve_batch(load_config(None, [*TINY, "train.tokens_per_step=512"]), world_size=8)


def test_derived_name_leaves_out_where_and_how():
    cfg = load_config("tiny", ["optim.lr=3e-4"])
    ov = ["train.out_dir=/tmp/x", "optim.lr=3e-4", "data.dir=/data/a/b", "train.device=cpu", "train.threads=1",
          "train.name=", " model.norm = rmsnorm", "data.source=docs/notes"]  # fmt: skip
    assert derive_run_name(cfg, ov) == "tiny.lr=3e-4.norm=rmsnorm.source=docs_notes"
    assert derive_run_name(load_config(None, []), []) == "default"  # the embedded default preset
    assert len(derive_run_name(cfg, [f"optim.lr={'9' * 200}"])) == 120


def test_lr_hint_needs_a_preset():
    cfg = load_config(None, TINY)
    cfg = cfg.replace(preset="")
    assert lr_scaling_hint(cfg) is None
    assert lr_scaling_hint(load_config("tiny", [])) is None  # the preset's own batch


def test_derived_run_name_is_a_safe_file_name():
    """List values and paths become plain characters: no quotes, spaces, brackets, globs or slashes in a dir name."""
    name = derive_run_name(load_config(None, []), ['data.include=["*.py", "*.md"]', "data.source=/x/y z.txt"])
    assert name == "default.include=_.py,_.md.source=_x_yz.txt"
