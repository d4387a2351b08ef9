"""Parent runs: the run a child (SFT, LoRA, continued pretraining, a merge) starts from.

`train.init_from` names a run dir (its best checkpoint) or one checkpoint dir. The child's model must match the
parent's, except for the fields a child may change (vocabulary size, when chat tokens are added; dropout; the
context length of a RoPE model, which has no table of positions: an imported 8k-context model fine-tunes on
1k windows on a CPU); its
weights are copied in before step 1, a parent with LoRA adapters merged first.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slmkit.base.config import ConfigError, RunConfig
from slmkit.base.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from slmkit.model.lora import has_lora, merge_lora
from slmkit.runs import checkpoint as ckpt_io

_MAY_DIFFER = ("vocab_size", "dropout")  # model fields a child may change against its parent


def resolve_parent(spec: str | Path) -> tuple[Path, Path]:
    """(run dir, checkpoint dir) of `train.init_from`: a run dir (its best checkpoint) or a checkpoint dir."""
    path = Path(spec)
    if (path / ckpt_io.WEIGHTS_FILE).is_file() and (path / ckpt_io.STATE_FILE).is_file():
        return path.parent.parent, path
    return ckpt_io.check_run_dir(path), ckpt_io.resolve_checkpoint(path, "best")


def parent_config(ckpt: Path) -> RunConfig:
    cfg_file = ckpt / ckpt_io.CONFIG_FILE
    return ckpt_io.read_run_config(ckpt if cfg_file.is_file() else ckpt.parent.parent)


CHILD_RESETS = {"data.stream": False, "data.mix": [], "distill.teacher": ""}
"""Fields of a parent's config that a child run does not inherit: how the parent read its data (a child reads its
own) and the parent's teacher (a child trains on its own objective). Overrides may set them again."""


def child_start(ckpt: Path) -> dict:
    """The parent's config as the starting dict of a child run's config (see CHILD_RESETS)."""
    return parent_config(ckpt).replace(**CHILD_RESETS).to_dict()


def check_parent(cfg: RunConfig, tokenizer: Tokenizer) -> tuple[Path, Path]:
    """Resolve cfg.train.init_from and check that the model (and for plain text, the tokenizer) match the parent."""
    run, ckpt = resolve_parent(cfg.train.init_from)
    parent = parent_config(ckpt).model
    may_differ = _MAY_DIFFER + (("block_size",) if parent.pos_emb == "rope" else ())  # RoPE has no position table
    diff = [f"model.{k}: {getattr(parent, k)!r} -> {getattr(cfg.model, k)!r}" for k in parent.__dataclass_fields__
            if k not in may_differ and getattr(parent, k) != getattr(cfg.model, k)]  # fmt: skip
    if diff:
        raise ConfigError(
            f"train.init_from={cfg.train.init_from}: the model must match the parent's ({'; '.join(diff)})"
        )
    parent_tok = load_tokenizer(ckpt / ckpt_io.TOKENIZER_DIR)
    if cfg.data.format == "text" and parent_tok.fingerprint != tokenizer.fingerprint:
        raise TokenizerError(
            f"the data's tokenizer ({tokenizer.fingerprint}) is not the parent's ({parent_tok.fingerprint}); "
            f"prepare the new text with tokenizer.kind={run}/tokenizer"
        )
    return run, ckpt


@torch.no_grad()
def load_parent_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Copy a parent checkpoint's weights into `model` (adapters, if any, keep their init). A parent with LoRA is
    merged first. Token rows the parent lacked (chat tokens added to char/gpt2) start at the mean embedding."""
    parent, _, pcfg, _ = ckpt_io.load_model(ckpt.parent.parent, ckpt_io.read_state(ckpt)["step"])
    if has_lora(parent):
        merge_lora(parent)
    src, old_v, new_v = parent.state_dict(), pcfg.model.vocab_size, model.config.vocab_size
    for name, dst in model.state_dict().items():
        if ".lora_" in name:
            continue
        if name not in src:
            raise ckpt_io.CheckpointError(f"{ckpt} has no weight {name}; is it a checkpoint of this model?")
        if name in ("wte.weight", "lm_head.weight"):
            rows = min(len(dst), len(src[name]))  # padded rows too, so an unchanged vocabulary copies exactly
            dst[:rows] = src[name][:rows]
            if new_v > old_v:
                dst[old_v:new_v] = src[name][:old_v].mean(0)
        else:
            dst.copy_(src[name])
