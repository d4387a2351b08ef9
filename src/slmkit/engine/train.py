"""Training: `train(cfg)`, the one library function behind `slm train`, `slm sft`, ablations and sweeps.

Read top to bottom: resolve the config against the tokenizer and device, make or reopen the run dir, build the
`Trainer` (model, optimizer, loaders), load parent weights or a checkpoint, run the loop, record the final status.
A fine-tuning run is the same run with chat data (`data.format`), parent weights (`train.init_from`) and optionally
LoRA; nothing here loops over batches (that is `slmkit.engine.trainer`).
"""

from __future__ import annotations

from pathlib import Path

from slmkit.base.config import ConfigError, RunConfig, apply_overrides, diff_configs, from_dict
from slmkit.base.config_files import load_config, save_config
from slmkit.base.console import enable, say
from slmkit.base.tokenizer import TokenizerError, build_tokenizer
from slmkit.data.chat import load_chat_data
from slmkit.data.dataset import check_tokenizer, load_dataset_tokenizer
from slmkit.data.prepare import ensure_prepared
from slmkit.engine.distributed import check_parallel, init_process_group, on_main, teardown
from slmkit.engine.resolve import derive_run_name, lr_scaling_hint, resolve_batch, resolve_vocab
from slmkit.engine.runtime import Runtime, resolve_runtime
from slmkit.engine.trainer import Trainer
from slmkit.model.lora import check_targets, param_counts
from slmkit.runs import checkpoint as ckpt_io
from slmkit.runs.parents import check_parent, load_parent_weights
from slmkit.runs.table import process_info

_RESUME_FROZEN = ("model.", "tokenizer.", "data.", "lora.")
_RESUME_NEEDS_FLAG = ("optim.", "train.batch_size", "train.grad_accum", "train.tokens_per_step", "train.seed",
                      "train.data_seed")  # fmt: skip


def _check_resume_changes(old: RunConfig, new: RunConfig, allow_changed: bool) -> None:
    changed = diff_configs(old, new)
    frozen = {k: v for k, v in changed.items() if k.startswith(_RESUME_FROZEN)}
    if frozen:
        desc = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in frozen.items())
        raise ConfigError(f"cannot resume with a different model, tokenizer or data ({desc}); start a new run")
    guarded = {k: v for k, v in changed.items() if k.startswith(_RESUME_NEEDS_FLAG)}
    if guarded and not allow_changed:
        desc = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in guarded.items())
        raise ConfigError(f"resuming with changed optimizer/schedule/batch fields ({desc}); pass --allow-changed "
                          "if that is what you mean")  # fmt: skip


def train(cfg: RunConfig | None = None, *, overrides: list[str] = (), resume: str | Path | None = None,
          allow_changed: bool = False, progress: bool = True, stop_after: int | None = None) -> Path:  # fmt: skip
    """Train a model; returns the run dir. `resume` continues runs/<name> from its latest checkpoint."""

    overrides = list(overrides)
    if resume is not None:
        run_dir = ckpt_io.check_run_dir(resume)
        old = ckpt_io.read_run_config(run_dir)
        cfg = from_dict(apply_overrides(old.to_dict(), overrides))
        _check_resume_changes(old, cfg, allow_changed)
    elif cfg is None:
        cfg = load_config(None, overrides)
    runtime = resolve_runtime(cfg.train)
    init_process_group(runtime)  # with several processes (torchrun): join them

    check_parallel(cfg, runtime)
    enable(runtime.is_main)  # one process prints
    parent = None
    dataset_dir, chat, tokenizer = _load_data(cfg, runtime, run_dir if resume is not None else None)
    cfg = resolve_batch(resolve_vocab(cfg, tokenizer), runtime.world_size)
    if cfg.lora.rank:
        check_targets(cfg.model, cfg.lora)
    if resume is None and cfg.train.init_from:
        parent = check_parent(cfg, tokenizer)
    if resume is not None:
        if dataset_dir is not None:
            check_tokenizer(dataset_dir, ckpt_io.run_tokenizer(run_dir))
        ckpt = ckpt_io.resolve_checkpoint(run_dir, "latest")
    else:
        name = cfg.train.name or derive_run_name(cfg, overrides)
        out_dir, explicit = cfg.train.out_dir, bool(cfg.train.name)
        run_dir = on_main(runtime, lambda: ckpt_io.new_run_dir(out_dir, name, explicit=explicit))
        cfg = cfg.replace(**{"train.name": run_dir.name})
    say(runtime.describe())
    loaders = None
    if chat is not None:
        say(chat.describe(cfg.model.block_size))
        loaders = chat.loaders(cfg.train.batch_size, cfg.model.block_size, cfg.data.packing, runtime.rank,
                               runtime.world_size)  # fmt: skip
    trainer = Trainer(cfg, run_dir, tokenizer, dataset_dir, runtime, progress=progress, loaders=loaders)
    if resume is not None:
        trainer.restore(ckpt)
        if runtime.is_main:
            save_config(cfg, run_dir / ckpt_io.CONFIG_FILE)
            ckpt_io.write_run_info(run_dir, status="running", resumed_from=str(ckpt), **process_info())
        say(f"resuming {run_dir} from step {trainer.state.step}")
    else:
        if parent is not None:
            load_parent_weights(trainer.model, parent[1])
            say(f"initialised from {parent[1]}")
        if runtime.is_main:
            ckpt_io.init_run_dir(run_dir, cfg, tokenizer, dataset=str(dataset_dir or cfg.data.source),
                                 parent=str(parent[0]) if parent else None,
                                 parent_checkpoint=str(parent[1]) if parent else None,
                                 num_params=trainer.model.num_params(), **process_info())  # fmt: skip
    _announce(trainer)
    status = trainer.run(stop_after=stop_after)
    if runtime.is_main:
        ckpt_io.write_run_info(run_dir, status=status, step=trainer.state.step,
                               tokens_seen=trainer.state.tokens_seen, best_val_loss=trainer.state.best_val)  # fmt: skip
    teardown()
    verb = "chat" if cfg.data.format != "text" else "sample"  # a fine-tuned chat model answers; a base one continues
    say(f"{status}: {run_dir} at step {trainer.state.step} (best val loss {trainer.state.best_val:.4f}). "
        f"Next: slm {verb} {run_dir}")  # fmt: skip
    return run_dir


def _load_data(cfg: RunConfig, runtime: Runtime, run_dir: Path | None):
    """(dataset dir, chat data, tokenizer): a prepared token dataset, or chat examples for fine-tuning, read and
    checked before any run dir exists. Rank 0 alone prepares a dataset."""

    if cfg.data.format == "text":
        data_cfg, kind = cfg.data, cfg.tokenizer.kind
        dataset_dir = on_main(runtime, lambda: ensure_prepared(data_cfg, kind))
        return dataset_dir, None, load_dataset_tokenizer(dataset_dir)
    chat = _chat_data(cfg, run_dir)
    return None, chat, chat.tokenizer


def _chat_data(cfg: RunConfig, run_dir: Path | None):
    """The checked, split SFT data of a config; the tokenizer is the run's own when resuming (`run_dir`)."""
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


def _announce(tr: Trainer) -> None:
    cfg, m = tr.cfg, tr.model
    t = cfg.train
    say(f"run: {tr.run_dir}")
    say(f"model: {m.num_params():,} parameters ({m.num_params(non_embedding=True):,} non-embedding), "
        f"{cfg.model.n_layer} layers x {cfg.model.n_embd} dims, "
        f"vocab {cfg.model.vocab_size} ({tr.tokenizer.name})")  # fmt: skip
    say(f"tokens per update: {t.batch_size} (micro-batch) x {t.grad_accum} (accumulation) x {cfg.model.block_size} "
        f"(sequence) x {tr.rt.world_size} (processes) = {tr.tokens_per_step:,}; "
        f"{t.max_steps} steps = {tr.tokens_per_step * t.max_steps:,} tokens")  # fmt: skip
    say("optimizer groups: " + ", ".join(f"{g['name']} ({g['tensors']} tensors, {g['params']:,} params)"
                                         for g in tr.groups))  # fmt: skip
    if cfg.lora.rank:
        trainable, total = param_counts(m)
        say(f"lora: rank {cfg.lora.rank} on {', '.join(cfg.lora.targets)}; trainable {trainable:,} of {total:,} "
            f"parameters ({100 * trainable / total:.2f}%)")  # fmt: skip
    hint = lr_scaling_hint(cfg)
    if hint:
        say("warning: " + hint)
