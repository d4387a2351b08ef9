"""Training: `train(cfg)`, the one library function behind `slm train`, `slm sft`, ablations and sweeps.

Read top to bottom: resolve the config against the tokenizer and device, make or reopen the run dir, build the
`Trainer` (model, optimizer, loaders), load parent weights or a checkpoint, run the loop, record the final status.
A fine-tuning run is the same run with chat data (`data.format`), parent weights (`train.init_from`) and optionally
LoRA; nothing here loops over batches (that is `slmkit.engine.trainer`).

Crash hygiene: a resume starts from the newest checkpoint whose files pass their checksums (saying which were
skipped; `checkpoint=STEP` picks one), sets later checkpoints aside, and first removes the temporaries of a killed
save. Whatever exception ends a run, run.json says `crashed` with a one-line reason (`interrupted` for a second
Ctrl-C); a full disk becomes one SlmError line naming the disk and about how much a checkpoint needs.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psutil

from slmkit.base.config import ConfigError, RunConfig, apply_overrides, diff_configs, from_dict, override_value
from slmkit.base.config_files import load_config, save_config
from slmkit.base.console import enable, say
from slmkit.base.errors import SlmError
from slmkit.base.metrics import RunMetrics
from slmkit.base.tokenizer import Tokenizer, TokenizerError, build_tokenizer, check_fingerprint, parse_kind
from slmkit.data.chat import load_chat_data
from slmkit.data.dataset import TOKENIZER_DIR, load_dataset_tokenizer
from slmkit.data.fim import ensure_fim_tokens
from slmkit.data.pairs import load_pair_data
from slmkit.data.prepare import ensure_prepared
from slmkit.data.stream_data import StreamData
from slmkit.engine.contamination import eval_index_file, eval_index_for
from slmkit.engine.distill import DistillObjective, load_teacher
from slmkit.engine.distributed import agree, check_parallel, init_process_group, on_main, teardown
from slmkit.engine.embedding import ContrastiveObjective, check_pooling
from slmkit.engine.resolve import derive_run_name, lr_scaling_hint, resolve_batch, resolve_vocab
from slmkit.engine.runtime import Runtime, resolve_runtime
from slmkit.engine.teacher_cache import TeacherCache, ensure_cache
from slmkit.engine.trainer import Trainer
from slmkit.model.lora import check_targets, param_counts
from slmkit.runs import checkpoint as ckpt_io
from slmkit.runs.parents import check_parent, load_parent_weights
from slmkit.runs.table import process_info, trainer_alive


class DiskFull(SlmError):
    """A write failed for lack of disk space; the run is marked crashed and can be resumed once there is room."""


_RESUME_FROZEN = ("model.", "tokenizer.", "data.", "lora.")
_RESUME_NEEDS_FLAG = ("optim.", "train.batch_size", "train.grad_accum", "train.tokens_per_step", "train.seed",
                      "train.data_seed", "embed.")  # fmt: skip
# stream mode: what is read may change with --allow-changed (the new data is read from its start)
_STREAM_CHANGEABLE = ("data.source", "data.mix", "data.include", "data.exclude", "data.text_field",
                      "data.shuffle_buffer", "data.stream_workers")  # fmt: skip


def _check_resume_changes(old: RunConfig, new: RunConfig, allow_changed: bool) -> None:
    changed = diff_configs(old, new)
    if old.data.stream and new.data.stream:
        stream = {k: v for k, v in changed.items() if k in _STREAM_CHANGEABLE}
        if stream and not allow_changed:
            desc = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in stream.items())
            raise ConfigError(f"resuming a stream run with changed data ({desc}); pass --allow-changed to read the "
                              "new data from its start")  # fmt: skip
        changed = {k: v for k, v in changed.items() if k not in stream}
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
          allow_changed: bool = False, progress: bool = True, stop_after: int | None = None,
          checkpoint: str | int | None = None) -> Path:  # fmt: skip
    """Train a model; returns the run dir. `resume` continues runs/<name> from its newest intact checkpoint (or
    `checkpoint`: latest, best or a step)."""

    started = time.time()  # temporaries older than this start were left by a process that is gone
    overrides = list(overrides)
    if checkpoint is not None and resume is None:
        raise SlmError("--checkpoint picks the checkpoint to resume from; use it with --resume RUN")
    if resume is not None:
        run_dir = ckpt_io.check_run_dir(resume)
        _check_not_running(run_dir)
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
    explicit_tokenizer = override_value(overrides, "tokenizer.kind") is not None
    dataset_dir, chat, tokenizer = _load_data(cfg, runtime, run_dir if resume is not None else None)
    stream = chat if isinstance(chat, StreamData) else None  # stream mode: no dataset dir, batches read as it trains
    chat = None if stream is not None else chat
    if dataset_dir is not None and resume is None:
        cfg = _match_dataset_tokenizer(cfg, dataset_dir, tokenizer, explicit_tokenizer)
    if (dataset_dir is not None or stream is not None) and cfg.data.fim_rate > 0:  # appended after the data's ids
        tokenizer = ensure_fim_tokens(tokenizer)
    cfg = resolve_batch(resolve_vocab(cfg, tokenizer), runtime.world_size)
    if cfg.lora.rank:
        check_targets(cfg.model, cfg.lora)
    if resume is None and cfg.train.init_from:
        parent = check_parent(cfg, tokenizer)
    teacher = None  # (model, checkpoint) of distill.teacher, checked before the run dir exists
    if cfg.distill.teacher:
        if cfg.data.format == "pairs":
            raise ConfigError("distill.teacher teaches next-token prediction; an embedding run (data.format=pairs) "
                              "cannot use it")  # fmt: skip
        if cfg.distill.topk and (dataset_dir is None or cfg.data.fim_rate > 0):
            raise ConfigError("distill.topk caches the teacher's logits by position in a prepared dataset; stream "
                              "mode, chat data and fill-in-the-middle windows have no fixed positions: use "
                              "distill.topk=0 (the teacher runs on every batch)")  # fmt: skip
        if cfg.distill.topk > tokenizer.vocab_size:
            raise ConfigError(f"distill.topk={cfg.distill.topk} is more than the vocabulary ({tokenizer.vocab_size} "
                              "tokens); use at most that")  # fmt: skip
        teacher = load_teacher(cfg.distill, tokenizer, runtime.device)
    if resume is not None:
        if dataset_dir is not None:  # (a stream run resumes with the run's own tokenizer)
            recorded = ckpt_io.run_tokenizer(run_dir).fingerprint  # the dataset's (+ the FIM tokens when it trains FIM)
            check_fingerprint(recorded, tokenizer.fingerprint, f"dataset {dataset_dir}")
        if runtime.is_main:
            _clean_leftovers(run_dir, started)  # first: a checkpoint parked by a killed save is put back
        agree(runtime, True)  # every rank lists the checkpoints after that
        candidates = _resume_candidates(run_dir, checkpoint)
    else:
        name = cfg.train.name or derive_run_name(cfg, overrides)
        out_dir, explicit = cfg.train.out_dir, bool(cfg.train.name)
        run_dir = on_main(runtime, lambda: ckpt_io.new_run_dir(out_dir, name, explicit=explicit))
        cfg = cfg.replace(**{"train.name": run_dir.name})
        if runtime.is_main:
            _clean_leftovers(run_dir, started)  # a reused folder of a run killed while starting
    say(runtime.describe())
    loaders, objective = None, None
    if chat is not None:  # chat examples (SFT) or text pairs (an embedding run)
        say(chat.describe(cfg.model.block_size))
        loaders = chat.loaders(cfg.train.batch_size, cfg.model.block_size, cfg.data.packing, runtime.rank,
                               runtime.world_size)  # fmt: skip
    if stream is not None:
        say(stream.describe())
        loaders = stream.loaders(cfg.train.batch_size, cfg.model.block_size, runtime.rank, runtime.world_size,
                                 tokenizer, allow_changed=allow_changed)  # fmt: skip
    if cfg.data.format == "pairs":
        objective = ContrastiveObjective(cfg.embed)
    if teacher is not None:
        cache = _teacher_cache(cfg, teacher, dataset_dir, tokenizer, runtime, progress)
        objective = DistillObjective(cfg.distill, teacher[0] if cache is None else None, tokenizer.vocab_size, cache)
        say(f"distilling from {teacher[1]} (T = {cfg.distill.temperature:g}, alpha = {cfg.distill.alpha:g}: "
            f"{cfg.distill.alpha:g} x cross-entropy + {1 - cfg.distill.alpha:g} x T^2 x KL)")  # fmt: skip
        teacher = None  # the objective holds the teacher when it runs every batch; with a cache its weights go now
    trainer, marked_running = None, False
    try:
        trainer = Trainer(cfg, run_dir, tokenizer, dataset_dir, runtime, progress=progress, loaders=loaders,
                          objective=objective)  # fmt: skip
        if resume is not None:
            ckpt = _restore(trainer, run_dir, candidates, runtime)
            if runtime.is_main:
                save_config(cfg, run_dir / ckpt_io.CONFIG_FILE)
                marked_running = True
                ckpt_io.write_run_info(run_dir, status="running", resumed_from=str(ckpt or "step 0"), error=None,
                                       **process_info())  # fmt: skip
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
                marked_running = True  # from here on run.json exists and records how the run ends
        _announce(trainer)
        status = trainer.run(stop_after=stop_after)
        if runtime.is_main:
            st = trainer.state
            ckpt_io.write_run_info(run_dir, status=status, step=st.step, tokens_seen=st.tokens_seen,
                                   best_val_loss=st.best_val)  # fmt: skip
    except BaseException as e:
        if runtime.is_main:
            _record_failure(run_dir, trainer, e, marked_running, new_run=resume is None)
        if ckpt_io.no_space(e):
            raise DiskFull(_no_space_message(run_dir, trainer)) from None
        raise
    teardown()
    # a fine-tuned chat model answers; a base one continues; an embedding run embeds
    verb = {"text": "sample", "pairs": "embed"}.get(cfg.data.format, "chat")
    best = "none" if trainer.state.best_val is None else f"{trainer.state.best_val:.4f}"
    say(f"{status}: {run_dir} at step {trainer.state.step} (best val loss {best}). Next: slm {verb} {run_dir}")
    return run_dir


# ---------------------------------------------------------------------------------------------------------
# Resuming: which checkpoint, what was left behind


def _check_not_running(run_dir: Path) -> None:
    pid = trainer_alive(ckpt_io.read_run_info(run_dir))
    if pid is not None:
        raise SlmError(f"{run_dir} is being trained right now (process {pid}); stop it (Ctrl-C, or `kill {pid}`: it "
                       "saves first) before resuming")  # fmt: skip


def _clean_leftovers(run_dir: Path, started: float) -> None:
    """Remove what a save killed mid-way left: hidden temporaries last changed before this start of training. No
    other process writes them now (a resume is refused while the run's trainer is alive, and a new run's folder is
    new or was left by a start whose process is gone)."""
    done = ckpt_io.clean_run_dir(run_dir, older_than=started)
    if done:
        say(f"cleaned up after an interrupted save in {run_dir}: {'; '.join(done)}")


def _resume_candidates(run_dir: Path, checkpoint: str | int | None) -> list[tuple[Path, bool]]:
    """(checkpoint, explicit) pairs to try in order: the one asked for, or every checkpoint newest first."""
    if checkpoint is not None:
        return [(ckpt_io.resolve_checkpoint(run_dir, checkpoint), True)]
    return [(path, False) for _, path in reversed(ckpt_io.checkpoints(run_dir))]


def _restore(trainer: Trainer, run_dir: Path, candidates: list[tuple[Path, bool]], runtime: Runtime) -> Path | None:
    """Restore the first candidate that loads. A damaged one (a file failing its checksum, an unreadable state or
    optimizer file) is named and skipped unless it was asked for; later checkpoints are then set aside. A run
    killed before its first checkpoint starts again from step 0 (the same seeds make it the same run): None."""
    if not candidates:
        say(f"{run_dir} has no checkpoint yet: training it again from step 0")
        trainer.logger.resumed(0)
        trainer.skip_first_eval = bool(RunMetrics.read(run_dir).series("val/loss")[0][:1] == [0])
        return None
    damaged: dict[int, str] = {}
    for ckpt, explicit in candidates:
        try:
            trainer.restore(ckpt)
        except ckpt_io.DamagedCheckpoint as e:
            if explicit:
                raise
            damaged[_step_of(ckpt)] = str(e)
            say(f"warning: {e}")
            continue
        if damaged:
            say(f"resuming from {ckpt.name}, the newest intact checkpoint ({len(damaged)} newer one"
                f"{'s' if len(damaged) > 1 else ''} damaged)")  # fmt: skip
        agree(runtime, True)  # every rank has read its files before any is renamed
        if runtime.is_main:
            moved = ckpt_io.set_aside_after(run_dir, trainer.state.step, set(damaged))
            if moved:
                say(f"set aside {len(moved)} checkpoint{'s' if len(moved) > 1 else ''} after step "
                    f"{trainer.state.step} (kept, no longer used): {', '.join(p.name for p in moved)}")  # fmt: skip
        return ckpt
    names = ", ".join(f"step-{step:06d}" for step in damaged)
    raise ckpt_io.CheckpointError(f"no intact checkpoint in {run_dir} (damaged: {names}, see above); start a new run "
                                  "(or restore the checkpoint files from a backup)")  # fmt: skip


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("-", 1)[1])


# ---------------------------------------------------------------------------------------------------------
# Failures: run.json says what happened


def _record_failure(run_dir: Path, trainer: Trainer | None, e: BaseException, marked_running: bool,
                    new_run: bool) -> None:  # fmt: skip
    """run.json `crashed` (or `interrupted` for a KeyboardInterrupt) with a one-line reason, when this process had
    marked it running. A new run that never got its run.json leaves no folder behind (it held only start-up files)."""
    if not marked_running:
        if new_run:
            (run_dir / ckpt_io.STARTING_FILE).unlink(missing_ok=True)
            if ckpt_io.unstarted(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
        return
    if ckpt_io.no_space(e):
        reason = _no_space_message(run_dir, trainer)
    else:
        text = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    status = "interrupted" if isinstance(e, KeyboardInterrupt) else "crashed"
    fields = {"step": trainer.state.step, "tokens_seen": trainer.state.tokens_seen} if trainer is not None else {}
    try:
        ckpt_io.write_run_info(run_dir, status=status, error=reason, **fields)
    except (OSError, SlmError):  # a full disk may refuse even this; `slm runs` then sees the dead pid: crashed
        pass


def _no_space_message(run_dir: Path, trainer: Trainer | None) -> str:
    needed = ckpt_io.checkpoint_bytes(run_dir) or (_state_bytes(trainer) if trainer is not None else 0)
    free = shutil.disk_usage(run_dir).free if run_dir.exists() else 0
    need = f", about {needed / 1e6:,.1f} MB needed for a checkpoint" if needed else ""
    return (
        f"no space left on {_device_of(run_dir)}{need} ({free / 1e6:,.1f} MB free); free some space or move "
        f"train.out_dir, then `slm train --resume {run_dir}`"
    )


def _state_bytes(trainer: Trainer) -> int:
    """Bytes of the weights plus the optimizer state: about the size of a checkpoint."""
    import torch

    total = sum(t.numel() * t.element_size() for t in trainer.model.state_dict().values())
    for slot in trainer.optimizer.state.values():
        total += sum(t.numel() * t.element_size() for t in slot.values() if isinstance(t, torch.Tensor))
    return total or 2 * 4 * trainer.model.num_params()


def _device_of(path: Path) -> str:
    """The file system of `path` as "DEVICE (mounted at MOUNT, holding PATH)", or just the path."""
    try:
        real = str(path.resolve())
        parts = [p for p in psutil.disk_partitions(all=True) if real == p.mountpoint or real.startswith(
            p.mountpoint.rstrip("/") + "/")]  # fmt: skip
        if parts:
            part = max(parts, key=lambda p: len(p.mountpoint))
            return f"{part.device} (mounted at {part.mountpoint}, holding {path})"
    except (OSError, RuntimeError):
        pass
    return str(path)


def _load_data(cfg: RunConfig, runtime: Runtime, run_dir: Path | None):
    """(dataset dir, chat data, tokenizer): a prepared token dataset, or chat examples for fine-tuning, read and
    checked before any run dir exists. Rank 0 alone prepares a dataset. In stream mode the second item is the
    StreamData (sources planned, tokenizer learnt from a sample on rank 0 or the run's own when resuming)."""

    if cfg.data.stream:
        if run_dir is not None:
            tok = ckpt_io.run_tokenizer(run_dir)
            stream = StreamData.open(cfg.data, cfg.tokenizer.kind, tok, str(run_dir / TOKENIZER_DIR))
        else:
            if runtime.distributed:  # rank 0 learns (and caches) a char/bpe tokenizer first; the others load it
                on_main(runtime, lambda: StreamData.open(cfg.data, cfg.tokenizer.kind) and None)
            stream = StreamData.open(cfg.data, cfg.tokenizer.kind)
        # the eval 13-gram index for checking documents on the fly: rank 0 builds (caches) it, every rank gets its path
        stream.eval_index = on_main(runtime, lambda: eval_index_file(cfg.data))
        return None, stream, stream.tokenizer
    if cfg.data.format == "text":
        data_cfg, kind = cfg.data, cfg.tokenizer.kind  # cleaning and the eval-overlap check apply when preparing
        dataset_dir = on_main(runtime, lambda: ensure_prepared(data_cfg, kind, eval_index_for(data_cfg)))
        return dataset_dir, None, load_dataset_tokenizer(dataset_dir)
    if cfg.data.format == "pairs":
        return None, *_pair_data(cfg, runtime, run_dir)
    chat = _chat_data(cfg, run_dir)
    return None, chat, chat.tokenizer


def _match_dataset_tokenizer(cfg: RunConfig, dataset_dir: Path, tokenizer: Tokenizer, explicit: bool) -> RunConfig:
    """The run trains with the dataset's tokenizer, so config.toml must name it. A tokenizer.kind given on the
    command line that differs is refused, naming both; one that came from a preset, file or the default is replaced
    by the dataset's (with a line saying so)."""
    kind = cfg.tokenizer.kind
    if Path(kind).is_dir():
        same = build_tokenizer(kind).fingerprint == tokenizer.fingerprint
    else:
        parse_kind(kind)  # TokenizerError for an unknown kind
        same = kind == tokenizer.name
    if same:
        return cfg
    if explicit:
        raise TokenizerError(f"dataset {dataset_dir} was prepared with tokenizer {tokenizer.name} (fingerprint "
                             f"{tokenizer.fingerprint}), not tokenizer.kind={kind}; drop tokenizer.kind to train with "
                             f"the dataset's, or prepare the data with {kind} (`slm prepare SOURCE --tokenizer {kind} "
                             "--out DIR`)")  # fmt: skip
    try:
        parse_kind(tokenizer.name)
        recorded = tokenizer.name
    except TokenizerError:
        recorded = str(Path(dataset_dir) / TOKENIZER_DIR)
    say(f"tokenizer: {dataset_dir} was prepared with {tokenizer.name}, not {kind}; training with the dataset's "
        f"(config.toml records tokenizer.kind={recorded})")  # fmt: skip
    return cfg.replace(**{"tokenizer.kind": recorded})


def _pair_data(cfg: RunConfig, runtime: Runtime, run_dir: Path | None):
    """(pair data, tokenizer) of an embedding run: the parent's (or, resuming, the run's) tokenizer."""
    if runtime.world_size > 1:
        raise SlmError("contrastive training (data.format=pairs) runs in one process; drop --nproc / torchrun")
    tokenizer = ckpt_io.run_tokenizer(run_dir) if run_dir is not None else build_tokenizer(cfg.tokenizer.kind)
    check_pooling(cfg.embed.pooling, tokenizer)
    return load_pair_data(cfg.data, cfg.embed, tokenizer, cfg.model.block_size), tokenizer


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


def _teacher_cache(cfg: RunConfig, teacher: tuple, dataset_dir: Path, tokenizer: Tokenizer, runtime: Runtime,
                   progress: bool) -> TeacherCache | None:  # fmt: skip
    """distill.topk > 0: the teacher's cached top-K logits over the training split (built now on rank 0 unless an
    earlier student built them); None when the teacher runs on every batch."""
    if not cfg.distill.topk:
        return None
    model, ckpt = teacher
    run = ckpt_io.check_run_dir(cfg.distill.teacher)
    path, seconds = on_main(runtime, lambda: ensure_cache(model, run, ckpt, dataset_dir, cfg.model.block_size,
                                                          cfg.distill.topk, tokenizer.vocab_size, runtime.autocast,
                                                          progress))  # fmt: skip
    cache = TeacherCache.open(path)
    how = "reused" if seconds is None else f"computed in {seconds:.1f} s"
    say(f"teacher's top-{cache.k} logits for {cache.meta['rows']:,} positions {how}: {path}")
    return cache


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
