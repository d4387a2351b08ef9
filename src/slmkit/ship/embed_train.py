"""`slm embed-train`: contrastive fine-tuning of a run into a sentence-embedding model, as a child run.

Nothing here loops over batches: the child is an ordinary `slmkit.engine.train.train` run whose config says
data.format = pairs (text pairs from `slmkit.data.pairs`, read as embed.pairs says), whose objective is InfoNCE
(`slmkit.engine.embedding.ContrastiveObjective`, chosen by train() from data.format) and whose first weights are the
parent's (train.init_from). LoRA (lora.rank), exact resume, metrics, the doctor and checkpoints are the loop's.
When the STS Benchmark dev file is under $SLM_DATA_DIR, its Spearman is scored at every eval (eval.tasks =
sts-b-dev, eval.every = train.eval_every) and logged as eval/sts-b-dev/spearman.
"""

from __future__ import annotations

from pathlib import Path

from slmkit.base.config import ConfigError, RunConfig, apply_overrides, from_dict, override_value
from slmkit.base.console import say
from slmkit.engine.evaluate.embedding import EmbedTaskError, embed_task_files
from slmkit.engine.train import train
from slmkit.runs import checkpoint as ckpt_io
from slmkit.runs.parents import child_start

EMBED_DEFAULTS = [
    "data.format=pairs",
    "data.dir=",
    "data.val_fraction=0.02",
    "optim.lr=1e-4",
    "optim.min_lr=1e-5",
    "optim.muon_lr=1e-3",
    "optim.warmup=0.1",
    "optim.weight_decay=0.01",
    "optim.schedule=cosine",
    "train.max_steps=500",
    "train.batch_size=64",
    "train.eval_every=100",
    "train.eval_batches=4",
    "train.tokens_per_step=0",
    "train.grad_accum=1",
    "train.ckpt_every=0",
    "model.vocab_size=0",
]
"""Defaults of an embedding child that differ from pretraining; the user's overrides come after them. Batches of 64
pairs give each anchor 63 in-batch negatives; the learning rate is about 1/10-1/20 of pretraining's."""
DEV_TASK = "sts-b-dev"


def _dev_task_available() -> bool:
    try:
        embed_task_files(DEV_TASK)
    except EmbedTaskError:
        return False
    return True


def embed_train_config(parent_run: str | Path, data: str | Path, overrides: list[str] = (),
                       checkpoint: str = "best") -> RunConfig:  # fmt: skip
    """The config of an embedding child: the parent's model and tokenizer, EMBED_DEFAULTS, the in-loop STS-B dev
    score when its file is there, then `overrides`."""
    run = ckpt_io.check_run_dir(parent_run)
    ckpt = ckpt_io.resolve_checkpoint(run, checkpoint)
    overrides = list(overrides)
    base = [*EMBED_DEFAULTS, f"data.source={data}", f"tokenizer.kind={ckpt / ckpt_io.TOKENIZER_DIR}",
            f"train.init_from={ckpt}", f"train.out_dir={run.parent}", "lora.rank=0", "eval.tasks=[]"]  # fmt: skip
    if _dev_task_available():
        base.append(f"eval.tasks=[{DEV_TASK}]")
    else:
        say(f"{DEV_TASK} files not found under $SLM_DATA_DIR: no in-loop STS-B dev score (set eval.tasks to add one)")
    cfg = from_dict(apply_overrides(child_start(ckpt), base + overrides))
    if override_value(overrides, "eval.every") is None:
        cfg = cfg.replace(**{"eval.every": cfg.train.eval_every})
    if override_value(overrides, "train.name") is None:
        cfg = cfg.replace(**{"train.name": ckpt_io.free_name(Path(cfg.train.out_dir), f"{run.name}-embed")})
    if cfg.data.format != "pairs":
        raise ConfigError(f"data.format={cfg.data.format} is not contrastive training; embed-train needs pairs")
    if cfg.embed.pairs == "simcse" and cfg.model.dropout == 0:
        raise ConfigError("embed.pairs=simcse tells a sentence's two copies apart by dropout alone; set "
                          "model.dropout=0.1")  # fmt: skip
    return cfg


def embed_train(parent_run: str | Path, data: str | Path, overrides: list[str] = (), *, checkpoint: str = "best",
                progress: bool = True) -> Path:  # fmt: skip
    """Contrastive fine-tuning of a run on text pairs; returns the child run dir (its run.json names the parent)."""
    cfg = embed_train_config(parent_run, data, overrides, checkpoint)
    return train(cfg, overrides=list(overrides), progress=progress)
