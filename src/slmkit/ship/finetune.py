"""Fine-tuning on top of the training loop: SFT (`sft`), continued pretraining (`init_from_config`), LoRA merge.

Nothing here loops over batches: a fine-tuning run is an ordinary `slmkit.engine.train.train` run whose config
says where its first weights come from (`train.init_from`), what its data is (`data.format` = a chat format:
examples with loss masks from `slmkit.data.chat`) and which parameters train (`lora.rank` > 0: only adapters).
This module builds those configs from a parent run and checks everything a user can get wrong before a run dir
exists; resolving, checking and loading the parent is `slmkit.runs.parents`.
"""

from __future__ import annotations

from pathlib import Path

from slmkit.base.config import ConfigError, RunConfig, apply_overrides, from_dict, override_value
from slmkit.base.config_files import load_config
from slmkit.base.console import say
from slmkit.base.errors import SlmError
from slmkit.engine.train import train
from slmkit.model.lora import ADAPTER_FILE, has_lora, merge_lora
from slmkit.runs import checkpoint as ckpt_io
from slmkit.runs.parents import child_start, resolve_parent

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


# ---------------------------------------------------------------------------------------------------------
# Configs of child runs.


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
    if lora_on and override_value(overrides, "optim.lr") is None:
        base.append(LORA_LR)
    # two layers: the user's overrides apply to the SFT defaults, so an optim.lr alone keeps their min_lr/lr ratio
    cfg = from_dict(apply_overrides(apply_overrides(child_start(ckpt), base), overrides))
    if override_value(overrides, "train.name") is None:
        suffix = "lora" if cfg.lora.rank else "sft"
        cfg = cfg.replace(**{"train.name": ckpt_io.free_name(Path(cfg.train.out_dir), f"{run.name}-{suffix}")})
    if cfg.data.format == "text":
        raise ConfigError("data.format=text is pretraining; sft needs auto, alpaca, messages or prompt_completion")
    return cfg


def sft(parent_run: str | Path, data: str | Path, overrides: list[str] = (), *, checkpoint: str = "best",
        progress: bool = True) -> Path:  # fmt: skip
    """Supervised fine-tuning of a run on an SFT file; returns the child run dir (its run.json names the parent)."""

    cfg = sft_config(parent_run, data, overrides, checkpoint)
    run_dir = train(cfg, overrides=list(overrides), progress=progress)
    if cfg.lora.rank:
        _report_adapter(run_dir, say)
    return run_dir


def _report_adapter(run_dir: Path, say) -> None:
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
    if override_value(overrides, "tokenizer.kind") is None:
        base.append(f"tokenizer.kind={ckpt / ckpt_io.TOKENIZER_DIR}")
    start = load_config(config).to_dict() if config else child_start(ckpt)
    cfg = from_dict(apply_overrides(start, base + overrides))
    if cfg.data.format != "text":
        raise ConfigError("--init-from continues pretraining on text; for chat data use `slm sft RUN --data FILE`")
    return cfg


# ---------------------------------------------------------------------------------------------------------
# LoRA merge.


def merge_run(run: str | Path, checkpoint: str = "best", name: str | None = None) -> Path:
    """Write a new run dir holding the LoRA run's adapters folded into full weights (a plain model that sample,
    eval and chat load like any other); its run.json names the LoRA run as parent."""

    run = ckpt_io.check_run_dir(run)
    model, tokenizer, cfg, ckpt = ckpt_io.load_model(run, checkpoint)
    if not has_lora(model):
        raise SlmError(f"{run} has no LoRA adapters (lora.rank = 0); its checkpoints are already full models")
    merge_lora(model)
    out = ckpt_io.new_run_dir(
        run.parent, name or ckpt_io.free_name(run.parent, f"{run.name}-merged"), explicit=bool(name)
    )
    cfg = cfg.replace(**{"lora.rank": 0, "train.name": out.name, "train.init_from": ""})
    state = ckpt_io.read_state(ckpt)
    ckpt_io.init_run_dir(out, cfg, tokenizer, parent=str(run), parent_checkpoint=str(ckpt),
                         num_params=model.num_params())  # fmt: skip
    ckpt_io.save_checkpoint(out, state["step"], model, None, {"tokens_seen": state.get("tokens_seen", 0)}, cfg,
                            tokenizer, val_loss=state.get("val_loss"))  # fmt: skip
    ckpt_io.write_run_info(out, status="finished", step=state["step"], tokens_seen=state.get("tokens_seen", 0),
                           best_val_loss=state.get("val_loss"))  # fmt: skip
    return out
