"""Fine-tuning on top of the training loop: SFT (`sft`), continued pretraining (`init_from_config`), LoRA merge.

Nothing here loops over batches: a fine-tuning run is an ordinary `slmkit.train.train` run whose config says where
its first weights come from (`train.init_from`), what its data is (`data.format` = a chat format: examples with loss
masks from `slmkit.data.chat`) and which parameters train (`lora.rank` > 0: only adapters). This module builds
those configs from a parent run, loads the parent's weights (growing the vocabulary when chat tokens were added) and
checks everything a user can get wrong before a run dir exists.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slmkit import checkpoint as ckpt_io
from slmkit.config import ConfigError, RunConfig, apply_overrides, from_dict, load_config
from slmkit.errors import SlmError
from slmkit.tokenizer import Tokenizer, TokenizerError, build_tokenizer, load_tokenizer

# Defaults of an SFT run that differ from pretraining; the user's overrides come after them. Learning rates are
# about 1/10 of pretraining's, Muon's matrix rate (used when the parent trained with Muon) included.
SFT_DEFAULTS = [
    "optim.lr=3e-4",
    "optim.min_lr=3e-5",
    "optim.muon_lr=2e-3",
    "optim.warmup=0.05",
    "optim.schedule=cosine",
    "train.max_steps=300",
    "train.eval_every=50",
    "train.tokens_per_step=0",
    "train.grad_accum=1",
    "train.ckpt_every=0",
    "model.vocab_size=0",
    "data.dir=",
    "data.format=auto",
]
LORA_LR = "optim.lr=1e-3"  # adapters start at zero and take a larger learning rate
_MAY_DIFFER = ("vocab_size", "dropout")  # model fields a child may change against its parent


# ---------------------------------------------------------------------------------------------------------
# The parent: which checkpoint, does the model fit, loading its weights.


def resolve_parent(spec: str | Path) -> tuple[Path, Path]:
    """(run dir, checkpoint dir) of `train.init_from`: a run dir (its best checkpoint) or a checkpoint dir."""
    path = Path(spec)
    if (path / ckpt_io.WEIGHTS_FILE).is_file() and (path / ckpt_io.STATE_FILE).is_file():
        return path.parent.parent, path
    return ckpt_io.check_run_dir(path), ckpt_io.resolve_checkpoint(path, "best")


def parent_config(ckpt: Path) -> RunConfig:
    cfg_file = ckpt / ckpt_io.CONFIG_FILE
    return ckpt_io.read_run_config(ckpt if cfg_file.is_file() else ckpt.parent.parent)


def check_parent(cfg: RunConfig, tokenizer: Tokenizer) -> tuple[Path, Path]:
    """Resolve cfg.train.init_from and check that the model (and for plain text, the tokenizer) match the parent."""
    run, ckpt = resolve_parent(cfg.train.init_from)
    parent = parent_config(ckpt).model
    diff = [f"model.{k}: {getattr(parent, k)!r} -> {getattr(cfg.model, k)!r}" for k in parent.__dataclass_fields__
            if k not in _MAY_DIFFER and getattr(parent, k) != getattr(cfg.model, k)]  # fmt: skip
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
    from slmkit.lora import has_lora, merge_lora

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


# ---------------------------------------------------------------------------------------------------------
# Data of a chat run (called by train() before any run dir exists).


def chat_data(cfg: RunConfig, run_dir: Path | None = None):
    """The checked, split SFT data of a config; the tokenizer is the run's own when resuming (`run_dir`)."""
    from slmkit.data.chat import load_chat_data

    if run_dir is not None:
        tokenizer = ckpt_io.run_tokenizer(run_dir)
    else:
        try:
            tokenizer = build_tokenizer(cfg.tokenizer.kind)
        except TokenizerError as e:
            raise TokenizerError(
                f"fine-tuning needs a ready tokenizer, not one trained on the SFT data ({e}); use "
                "`slm sft PARENT_RUN --data FILE` or set tokenizer.kind to a tokenizer dir"
            ) from None
    return load_chat_data(cfg.data, tokenizer)


# ---------------------------------------------------------------------------------------------------------
# Configs of child runs.


def _free_name(out_dir: Path, base: str) -> str:
    name, i = base, 2
    while (out_dir / name).exists():
        name, i = f"{base}-{i}", i + 1
    return name


def _given(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].strip().removeprefix("--") == key for o in overrides)


def sft_config(
    parent_run: str | Path, data: str | Path, overrides: list[str] = (), checkpoint: str = "best"
) -> RunConfig:
    """The config of an SFT child: the parent's model and tokenizer, SFT_DEFAULTS, then `overrides`."""
    run = ckpt_io.check_run_dir(parent_run)
    ckpt = ckpt_io.resolve_checkpoint(run, checkpoint)
    overrides = list(overrides)
    lora_on = any(o.split("=", 1)[0].strip() == "lora.rank" and o.split("=", 1)[1].strip() not in ("0", "")
                  for o in overrides)  # fmt: skip
    base = [*SFT_DEFAULTS, f"data.source={data}", f"tokenizer.kind={ckpt / ckpt_io.TOKENIZER_DIR}",
            f"train.init_from={ckpt}", f"train.out_dir={run.parent}"]  # fmt: skip
    if lora_on and not _given(overrides, "optim.lr"):
        base.append(LORA_LR)
    cfg = from_dict(apply_overrides(parent_config(ckpt).to_dict(), base + overrides))
    if not _given(overrides, "train.name"):
        suffix = "lora" if cfg.lora.rank else "sft"
        cfg = cfg.replace(**{"train.name": _free_name(Path(cfg.train.out_dir), f"{run.name}-{suffix}")})
    if cfg.data.format == "text":
        raise ConfigError("data.format=text is pretraining; sft needs auto, alpaca, messages or prompt_completion")
    return cfg


def sft(parent_run: str | Path, data: str | Path, overrides: list[str] = (), *, checkpoint: str = "best",
        progress: bool = True) -> Path:  # fmt: skip
    """Supervised fine-tuning of a run on an SFT file; returns the child run dir (its run.json names the parent)."""
    from slmkit.train import say, train

    cfg = sft_config(parent_run, data, overrides, checkpoint)
    run_dir = train(cfg, overrides=list(overrides), progress=progress)
    if cfg.lora.rank:
        _report_adapter(run_dir, say)
    return run_dir


def _report_adapter(run_dir: Path, say) -> None:
    from slmkit.lora import ADAPTER_FILE

    ckpt = ckpt_io.resolve_checkpoint(run_dir, "latest")
    adapter, full = ckpt / ADAPTER_FILE, ckpt / ckpt_io.WEIGHTS_FILE
    if adapter.is_file():
        say(f"adapters: {adapter} ({adapter.stat().st_size / 1024:,.1f} KiB; the full model is "
            f"{full.stat().st_size / 1024:,.1f} KiB). Merge them: slm lora merge {run_dir}")  # fmt: skip


def init_from_config(parent_run: str | Path, config: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Continued pretraining (`slm train --init-from RUN`): the parent's config (or `config`) with its tokenizer,
    starting from its best checkpoint, then `overrides` (typically data.source=NEW_TEXT)."""
    run, ckpt = resolve_parent(parent_run)
    overrides = list(overrides)
    base = [f"train.init_from={ckpt}", "train.name=", "data.dir="]
    if not _given(overrides, "tokenizer.kind"):
        base.append(f"tokenizer.kind={ckpt / ckpt_io.TOKENIZER_DIR}")
    start = load_config(config).to_dict() if config else parent_config(ckpt).to_dict()
    cfg = from_dict(apply_overrides(start, base + overrides))
    if cfg.data.format != "text":
        raise ConfigError("--init-from continues pretraining on text; for chat data use `slm sft RUN --data FILE`")
    return cfg


# ---------------------------------------------------------------------------------------------------------
# LoRA merge.


def merge_run(run: str | Path, checkpoint: str = "best", name: str | None = None) -> Path:
    """Write a new run dir holding the LoRA run's adapters folded into full weights (a plain model that sample,
    eval and chat load like any other); its run.json names the LoRA run as parent."""
    from slmkit.lora import has_lora, merge_lora

    run = ckpt_io.check_run_dir(run)
    model, tokenizer, cfg, ckpt = ckpt_io.load_model(run, checkpoint)
    if not has_lora(model):
        raise SlmError(f"{run} has no LoRA adapters (lora.rank = 0); its checkpoints are already full models")
    merge_lora(model)
    out = ckpt_io.new_run_dir(run.parent, name or _free_name(run.parent, f"{run.name}-merged"), explicit=bool(name))
    cfg = cfg.replace(**{"lora.rank": 0, "train.name": out.name, "train.init_from": ""})
    state = ckpt_io.read_state(ckpt)
    ckpt_io.init_run_dir(out, cfg, tokenizer, parent=str(run), parent_checkpoint=str(ckpt),
                         num_params=model.num_params())  # fmt: skip
    ckpt_io.save_checkpoint(out, state["step"], model, None, {"tokens_seen": state.get("tokens_seen", 0)}, cfg,
                            tokenizer, val_loss=state.get("val_loss"))  # fmt: skip
    ckpt_io.write_run_info(out, status="finished", step=state["step"], tokens_seen=state.get("tokens_seen", 0),
                           best_val_loss=state.get("val_loss"))  # fmt: skip
    return out
