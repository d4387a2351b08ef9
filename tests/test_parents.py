"""runs/parents.py: the run a child (SFT, LoRA, continued pretraining) starts from: resolving `train.init_from`,
checking the child's model and tokenizer against it, copying its weights in. On a tiny saved model, no training;
end-to-end children are in test_sft.py and test_lora.py."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from slmkit.base.config import ConfigError
from slmkit.base.config_files import load_config
from slmkit.base.tokenizer import CharTokenizer, TokenizerError
from slmkit.model.gpt import GPT
from slmkit.runs import checkpoint as ckpt_io
from slmkit.runs.parents import check_parent, load_parent_weights, parent_config, resolve_parent

pytestmark = pytest.mark.usefixtures("one_thread")

TOK = CharTokenizer("abcdefgh \n")


def config(*extra: str):
    return load_config(None, [*TINY, f"model.vocab_size={TOK.vocab_size}", *extra])


@pytest.fixture
def parent(tmp_path):
    """A run dir with checkpoints at steps 1 (best) and 2."""
    cfg = config()
    torch.manual_seed(0)
    model = GPT(cfg.model)
    run = ckpt_io.new_run_dir(tmp_path, "parent", explicit=True)
    ckpt_io.init_run_dir(run, cfg, TOK)
    ckpt_io.save_checkpoint(run, 1, model, None, {}, cfg, TOK, val_loss=1.0)
    with torch.no_grad():
        model.wte.weight.add_(1.0)
    ckpt_io.save_checkpoint(run, 2, model, None, {}, cfg, TOK, val_loss=2.0)
    return run


def child(parent, *extra: str):
    return config(f"train.init_from={parent}", *extra)


def test_init_from_a_run_is_its_best_checkpoint(parent):
    assert resolve_parent(parent) == (parent, parent / "checkpoints" / "step-000001")
    assert resolve_parent(str(parent)) == (parent, parent / "checkpoints" / "step-000001")


def test_init_from_a_checkpoint_dir(parent):
    ckpt = parent / "checkpoints" / "step-000002"
    assert resolve_parent(ckpt) == (parent, ckpt)
    assert parent_config(ckpt) == config()


def test_init_from_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(ckpt_io.CheckpointError, match="does not exist"):
        resolve_parent(tmp_path / "nope")


def test_the_model_must_match_except_vocab_and_dropout(parent):
    assert check_parent(child(parent, "model.vocab_size=20", "model.dropout=0.1"), TOK) == (
        parent,
        parent / "checkpoints" / "step-000001",
    )
    with pytest.raises(ConfigError, match="the model must match the parent's") as e:
        check_parent(child(parent, "model.n_layer=3", "model.norm=rmsnorm"), TOK)
    assert "model.n_layer: 2 -> 3" in str(e.value) and "model.norm: 'layernorm' -> 'rmsnorm'" in str(e.value)
    with pytest.raises(ConfigError, match=r"model.block_size: \d+ -> 16"):  # learned positions: a table of them
        check_parent(child(parent, "model.block_size=16"), TOK)


def test_a_rope_child_may_change_its_context(tmp_path):
    """RoPE has no table of positions: a child of a RoPE parent may train on shorter (or longer) windows."""
    rope = ["model.pos_emb=rope"]
    cfg = config(*rope)
    run = tmp_path / "rope"
    ckpt_io.init_run_dir(run, cfg, TOK)
    ckpt_io.save_checkpoint(run, 1, GPT(cfg.model), None, {}, cfg, TOK)
    ckpt = check_parent(child(run, *rope, "model.block_size=16"), TOK)[1]
    load_parent_weights(GPT(child(run, *rope, "model.block_size=16").model), ckpt)  # no weight depends on it


def test_text_data_needs_the_parents_tokenizer(parent):
    other = CharTokenizer("xyz")
    with pytest.raises(TokenizerError, match="is not the parent's") as e:
        check_parent(child(parent), other)
    assert other.fingerprint in str(e.value) and TOK.fingerprint in str(e.value)
    assert f"tokenizer.kind={parent}/tokenizer" in str(e.value)
    check_parent(child(parent, "data.format=alpaca"), other)  # chat data: the child brings its own tokenizer


def test_parent_weights_are_copied(parent):
    ckpt = parent / "checkpoints" / "step-000002"
    torch.manual_seed(1)
    model = GPT(config().model)
    load_parent_weights(model, ckpt)
    saved = ckpt_io.load_model(parent, 2)[0].state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_parent_weights_of_another_model_are_refused(parent):
    model = GPT(config("model.qk_norm=true").model)  # has norm weights the parent lacks
    with pytest.raises(ckpt_io.CheckpointError, match="has no weight .*; is it a checkpoint of this model?"):
        load_parent_weights(model, parent / "checkpoints" / "step-000001")
