"""The training loop: `train_step` (one optimizer update), `evaluate_loss`, and `Trainer`, which owns one run's
model, optimizer, loaders, metrics and checkpoints and whose `run()` is the loop.

Each step: set the LR from the pure schedule, accumulate micro-batches, clip, step, log every step, evaluate and
checkpoint on schedule. Ctrl-C or SIGTERM saves a checkpoint and exits cleanly (status interrupted); a NaN/inf loss
stops the run naming the step and the last good checkpoint. `restore()` puts back weights, optimizer, loader
position and RNG, so N steps equal N/2 + resume + N/2 exactly. `slmkit.engine.train.train` builds a Trainer from a
config.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from slmkit.base.config import RunConfig
from slmkit.base.console import progress, say
from slmkit.base.errors import SlmError
from slmkit.base.metrics import MetricsLogger
from slmkit.base.tokenizer import Tokenizer
from slmkit.data.dataset import read_meta
from slmkit.data.fim import FimSpec, infill_order
from slmkit.data.loader import TokenLoader
from slmkit.engine.distributed import (
    agree,
    as_float,
    full_state,
    grad_sync,
    load_full_state,
    mean_over_ranks,
    wrap_model,
)
from slmkit.engine.doctor import LiveDoctor
from slmkit.engine.evaluate import evaluate_tasks
from slmkit.engine.evaluate.tasks import check_tasks, task_files
from slmkit.engine.resolve import tokens_per_step
from slmkit.engine.runtime import Runtime, peak_flops, raise_peak
from slmkit.model.gpt import GPT
from slmkit.model.lora import ADAPTER_FILE, apply_lora, save_adapter
from slmkit.model.optim import build_optimizer, describe_groups, set_lr, warmup_steps
from slmkit.runs import checkpoint as ckpt_io

VAL_SEED = 1234  # every evaluation reads the same val batches, so val losses are comparable across steps


class TrainingDiverged(SlmError):
    """The loss became NaN or infinite."""


def lm_loss(model, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The default objective: next-token cross-entropy of a loader's (x, y) batch (head and loss fused by chunks)."""
    _, loss = model(*batch, loss_only=True)
    return loss


Objective = Callable[[Any, tuple], torch.Tensor]
"""objective(model, batch) -> scalar loss, batch being the loader's tensors on the device. lm_loss by default; an
embedding run passes slmkit.engine.embedding.ContrastiveObjective (an nn.Module: a learned temperature in it gets an
optimizer group and is checkpointed)."""


def _to(batch: tuple, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device, non_blocking=True) for t in batch)


def train_step(model, optimizer, batches: Callable[[], tuple], accum: int, runtime: Runtime, grad_clip: float,
               skip_if: Callable[[float], bool] | None = None, objective: Objective = lm_loss):  # fmt: skip
    """Accumulate `accum` micro-batches, clip, step. Returns (mean loss, pre-clip grad norm) as floats.

    `skip_if(loss)` True drops this update (the doctor's train.on_spike = skip guard)."""
    total = torch.zeros((), device=runtime.device)
    for micro in range(accum):
        batch = _to(batches(), runtime.device)
        with grad_sync(model, last=micro == accum - 1), runtime.autocast():  # all-reduce on the last micro-step only
            loss = objective(model, batch)
        (loss / accum).backward()
        total += loss.detach()
    loss = mean_over_ranks(total / accum).item()  # the same on every rank: the loss of the whole update
    if not math.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        return loss, float("nan")
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    if skip_if is not None and skip_if(loss):
        optimizer.zero_grad(set_to_none=True)
        return loss, as_float(norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, as_float(norm)


def eval_batches(loader, configured: int) -> int:
    """Val batches an evaluation reads: train.eval_batches, but at most one pass over a loader that knows its
    size (fine-tuning examples, pairs); a token loader draws windows from a split far larger than an eval."""
    per_pass = getattr(loader, "batches_per_pass", None)
    return configured if per_pass is None else max(1, min(configured, per_pass))


@torch.no_grad()  # not inference_mode: FSDP2 would keep its all-gather buffers as inference tensors for training
def evaluate_loss(model, loader, n_batches: int, runtime: Runtime, objective: Objective = lm_loss) -> float:
    """Mean loss over `n_batches` batches of `loader` (model put back in train mode afterwards)."""
    was_training = model.training
    model.eval()
    losses = []
    for _ in range(n_batches):
        batch = _to(loader.next_batch(), runtime.device)
        with runtime.autocast():
            loss = objective(model, batch)
        losses.append(loss.float().item())
    model.train(was_training)
    return sum(losses) / len(losses)


# ---------------------------------------------------------------------------------------------------------
# The loop.


@dataclass
class TrainState:
    step: int = 0
    tokens_seen: int = 0
    best_val: float | None = None
    elapsed: float = 0.0
    last_ckpt: str | None = None


class Trainer:
    """Holds what one run needs; `run()` is the loop. Built by `train()`."""

    def __init__(self, cfg: RunConfig, run_dir: Path, tokenizer: Tokenizer, dataset_dir: Path | None, runtime: Runtime,
                 progress: bool = True, loaders: Callable[[str, int], Any] | None = None,
                 objective: Objective | None = None):  # fmt: skip
        """`loaders(split, seed)` makes the train and val loaders (default: TokenLoader over dataset_dir); any
        object with next_batch/state_dict/load_state_dict will do (SFT passes slmkit.data.chat's). `objective`
        is the loss of a batch (default lm_loss; an embedding run passes its contrastive loss)."""

        self.cfg, self.run_dir, self.tokenizer, self.rt = cfg, run_dir, tokenizer, runtime
        self.dataset_dir, self.progress = dataset_dir, progress
        t = cfg.train
        torch.manual_seed(t.seed)
        self.model = GPT(cfg.model).to(runtime.device)
        if cfg.lora.rank:  # only the adapters train (frozen parameters get no optimizer group)
            apply_lora(self.model, cfg.lora)
        self.model.train()

        self.sharded = runtime.distributed and t.parallel == "fsdp"  # FSDP2 shards self.model in place
        wrapped = wrap_model(self.model, runtime, t.parallel)  # DDP or FSDP2 with several processes, else the model
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.objective = self._add_objective(objective, cfg)
        self.groups = describe_groups(self.optimizer)
        self.compiled = torch.compile(wrapped) if runtime.compile else wrapped
        data_seed = t.data_seed if t.data_seed >= 0 else t.seed
        self.make_loader = loaders or self._token_loader
        self.loader = self.make_loader("train", data_seed)
        self.state = TrainState()
        self.tokens_per_step = tokens_per_step(cfg, runtime.world_size)
        self.flops_per_token = self.model.flops_per_token()
        self.peak = peak_flops(runtime.device.type, runtime.dtype)
        self.bytes_per_token = _bytes_per_token(dataset_dir) if dataset_dir is not None else None
        self.logger = MetricsLogger(run_dir, cfg.log.backends, cfg.log.project, cfg.to_dict(), enabled=runtime.is_main)
        self._stop_requested = False
        self._process = psutil.Process()  # for mem/rss_mb every step
        self.doctor = _live_doctor(cfg) if t.doctor else None
        if cfg.eval.tasks:  # unknown tasks or missing task files fail now, not at the first benchmark
            for name in check_tasks(cfg.eval.tasks):
                _ = task_files(name) if name != "val" else None
        guard = t.on_spike if self.doctor is not None and runtime.world_size == 1 else "none"
        self._skip_if = self.doctor.guard if guard == "skip" else None
        self._rollback_pending = False
        self.skip_first_eval = False  # a run restarted from step 0 whose step-0 eval is already logged

    def _add_objective(self, objective: Objective | None, cfg: RunConfig) -> Objective:
        """The objective on the device; its trainable parameters (a learned temperature) join the optimizer as
        one more group, without weight decay."""
        if objective is None:
            return lm_loss
        if isinstance(objective, torch.nn.Module):
            objective.to(self.rt.device)
            params = [p for p in objective.parameters() if p.requires_grad]
            if params:
                group = {"params": params, "name": "objective", "weight_decay": 0.0, "base_lr": cfg.optim.lr,
                         "lr": cfg.optim.lr}  # fmt: skip
                self.optimizer.add_param_group(group | ({"use_muon": False} if cfg.optim.name == "muon" else {}))
        return objective

    def _objective_state(self) -> dict | None:
        if not isinstance(self.objective, torch.nn.Module) or not self.objective.state_dict():
            return None
        return {k: v.tolist() for k, v in self.objective.state_dict().items()}  # small (a temperature): JSON

    # -- resume -------------------------------------------------------------------------------------------
    def restore(self, ckpt: Path) -> None:
        """Put back weights, optimizer, loader position and RNG from `ckpt`, every file checked against its recorded
        checksum first (DamagedCheckpoint otherwise, before anything is changed), then mark the resume in the
        metrics so the steps about to be replayed replace those a killed process had logged."""
        state = ckpt_io.verify_checkpoint(ckpt)
        missing = [k for k in ("step", "tokens_seen", "loader", "rng") if k not in state]
        if missing:
            raise ckpt_io.DamagedCheckpoint(f"checkpoint {ckpt} cannot be resumed from ({ckpt_io.STATE_FILE} lacks "
                                            f"{', '.join(missing)}); use another --checkpoint")  # fmt: skip
        if self.sharded:  # any checkpoint (one process, DDP, FSDP) is whole: each rank keeps its shard
            load_full_state(self.model, self.optimizer, ckpt)
        else:
            optim = ckpt_io.read_optimizer(ckpt, verify=False)  # read and checked before the weights change
            ckpt_io.load_weights(self.model, ckpt, verify=False)
            try:
                self.optimizer.load_state_dict(optim)
            except (ValueError, KeyError, RuntimeError) as e:
                raise ckpt_io.CheckpointError(f"{ckpt / ckpt_io.OPTIM_FILE} does not fit this optimizer "
                                              f"({ckpt_io.load_error_reason(e)}); resume with the same optim "
                                              "settings") from None  # fmt: skip
        self.loader.load_state_dict(state["loader"])
        if state.get("objective") is not None and isinstance(self.objective, torch.nn.Module):
            self.objective.load_state_dict({k: torch.tensor(v) for k, v in state["objective"].items()})
        ckpt_io.set_rng_state(state["rng"])
        self.state = TrainState(step=state["step"], tokens_seen=state["tokens_seen"], best_val=state.get("best_val"),
                                elapsed=state.get("elapsed", 0.0), last_ckpt=str(ckpt))  # fmt: skip
        self.logger.resumed(self.state.step)

    # -- pieces of the loop ---------------------------------------------------------------------------------
    def _token_loader(self, split: str, seed: int):
        t, block = self.cfg.train, self.cfg.model.block_size
        if split == "val":
            return TokenLoader(self.dataset_dir, "val", t.batch_size, block, seed=seed)
        d = self.cfg.data  # fill-in-the-middle rearranges training windows only: the val loss stays left-to-right
        fim = FimSpec.from_config(self.tokenizer, d)
        return TokenLoader(self.dataset_dir, "train", t.batch_size, block, seed=seed,
                           align_to_docs=self.cfg.data.align_to_docs, rank=self.rt.rank,
                           world_size=self.rt.world_size, shard="batches", fim=fim,
                           positions=getattr(self.objective, "wants_positions", False))  # fmt: skip

    def evaluate(self) -> float:
        val = self.make_loader("val", VAL_SEED)
        objective = getattr(self.objective, "val_objective", self.objective)  # distillation validates on plain CE
        return evaluate_loss(self.compiled, val, eval_batches(val, self.cfg.train.eval_batches), self.rt, objective)

    def save(self, val_loss: float | None = None) -> Path | None:
        model_state = optim_state = None
        if self.sharded:  # every rank takes part in gathering the whole state; rank 0 writes it
            model_state, optim_state = full_state(self.model, self.optimizer)
        loader_state = self._loader_state()
        if not self.rt.is_main:
            return None
        s = self.state
        state = {"tokens_seen": s.tokens_seen, "best_val": s.best_val, "elapsed": s.elapsed,
                 "loader": loader_state, "rng": ckpt_io.rng_state()}  # fmt: skip
        if self._objective_state() is not None:
            state["objective"] = self._objective_state()
        # a LoRA run's adapters alone too (the small file to share or apply to the parent), inside the checkpoint
        extra = (lambda folder: save_adapter(self.model, folder / ADAPTER_FILE)) if self.cfg.lora.rank else None
        path = ckpt_io.save_checkpoint(self.run_dir, s.step, self.model, self.optimizer, state, self.cfg,
                                       self.tokenizer, val_loss=val_loss, keep_last=self.cfg.train.keep_last,
                                       model_state=model_state, optim_state=optim_state, extra=extra)  # fmt: skip
        s.last_ckpt = str(path)
        self._last_save = time.time()
        return path

    def _per_rank_loader(self) -> bool:
        """A loader whose position differs per rank (stream mode: each rank reads its own files)."""
        return self.rt.distributed and getattr(self.loader, "per_rank_state", False)

    def _loader_state(self) -> dict:
        """The loader position to checkpoint; every rank's ({"ranks": [...]}, a collective) when it differs."""
        state = self.loader.state_dict()
        if not self._per_rank_loader():
            return state
        states: list = [None] * self.rt.world_size
        torch.distributed.all_gather_object(states, state)
        return {"ranks": states}

    def _eval_and_save(self, final: bool = False) -> None:
        t, s = self.cfg.train, self.state
        val = self.evaluate()
        s.best_val = val if s.best_val is None else min(s.best_val, val)
        metrics = {"val/loss": val, "val/ppl": math.exp(min(val, 50))}
        if self.bytes_per_token:
            metrics["val/bpb"] = val / math.log(2) / self.bytes_per_token
        self.logger.log(s.step, metrics)
        bpb = f" | bpb {metrics['val/bpb']:.3f}" if "val/bpb" in metrics else ""
        say(f"step {s.step:>6} | val loss {val:.4f}{bpb}")
        if final or s.step > 0 and (t.ckpt_every == 0 or self._should_save()):
            self.save(val)  # with its val loss, so the best checkpoint is tracked

    def _should_eval(self) -> bool:
        every = self.cfg.train.eval_every
        return every > 0 and self.state.step % every == 0

    def _maybe_eval_tasks(self) -> None:
        """Benchmarks of eval.tasks every eval.every steps (0: only at the end), logged as eval/<task>/<metric>."""
        e, s = self.cfg.eval, self.state
        tasks = [t for t in e.tasks if t != "val"]  # val/* is logged by _eval_and_save
        due = s.step == self.cfg.train.max_steps or (e.every > 0 and s.step % e.every == 0)
        if not tasks or not due or not self.rt.is_main:
            return

        metrics = evaluate_tasks(self.model, self.tokenizer, tasks, limit=e.limit, embed=self.cfg.embed,
                                 fim=infill_order(self.cfg.data.fim_rate, self.cfg.data.fim_spm_rate))  # fmt: skip
        self.logger.log(s.step, metrics)
        say(f"step {s.step:>6} | " + " | ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items()))

    def _should_save(self) -> bool:
        t = self.cfg.train
        if t.ckpt_every and self.state.step % t.ckpt_every == 0:
            return True
        due = bool(t.ckpt_minutes) and time.time() - self._last_save >= 60 * t.ckpt_minutes
        if (self.sharded or self._per_rank_loader()) and t.ckpt_minutes:  # collective saves: rank 0's clock
            return agree(self.rt, due)
        return due

    def _on_stop_signal(self, signum, frame) -> None:
        """Ctrl-C (SIGINT) or SIGTERM (a scheduler, `kill`): finish the step, save, stop; a second one aborts."""
        if self._stop_requested:  # the second signal: stop now
            raise KeyboardInterrupt
        self._stop_requested = True
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        again = "press again" if signum == signal.SIGINT else "send it again"
        say(f"{what}: finishing this step, saving a checkpoint, then stopping ({again} to abort at once)")

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> str:
        """Train to train.max_steps (or `stop_after` more steps). Returns the final status."""
        cfg, t, s = self.cfg, self.cfg.train, self.state
        self._last_save = time.time()
        end = t.max_steps if stop_after is None else min(t.max_steps, s.step + stop_after)
        if s.step == 0 and not self.skip_first_eval:
            self._eval_and_save()
        signals = _STOP_SIGNALS if _main_thread() else ()
        old_handlers = {sig: signal.signal(sig, self._on_stop_signal) for sig in signals}
        bar = progress(
            t.max_steps, unit="step", initial=s.step, enabled=self.progress and self.rt.is_main, lines=False
        )  # in a log, the step lines of _log_step are the record
        status = "finished"
        try:
            while s.step < end:
                lr = set_lr(self.optimizer, s.step, cfg.optim, t.max_steps)
                t0 = time.perf_counter()
                loss, gnorm = train_step(self.compiled, self.optimizer, self.loader.next_batch, t.grad_accum, self.rt,
                                         cfg.optim.grad_clip, skip_if=self._skip_if,
                                         objective=self.objective)  # fmt: skip
                self.rt.synchronize()
                dt = time.perf_counter() - t0
                if not math.isfinite(loss):
                    self._diverged(loss)
                s.step += 1
                s.tokens_seen += self.tokens_per_step
                s.elapsed += dt
                self._log_step(loss, gnorm, lr, dt)
                if self._rollback_pending:
                    self._rollback()
                    continue
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{self.tokens_per_step / dt:,.0f}", refresh=False)
                if self._should_eval() or s.step == t.max_steps:
                    self._eval_and_save(final=s.step == t.max_steps)
                elif self._should_save():
                    self.save()
                self._maybe_eval_tasks()
                if self._stop_requested:
                    status = "interrupted"
                    break
            if s.step < t.max_steps and status == "finished":
                status = "interrupted"  # stopped by stop_after
            if status == "interrupted" and (s.last_ckpt is None or not s.last_ckpt.endswith(f"{s.step:06d}")):
                self.save()
        except KeyboardInterrupt:
            status = "interrupted"
            say("aborted without saving the current step; the last checkpoint is " + str(s.last_ckpt))
        finally:
            bar.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self.logger.close()
        return status

    def _log_step(self, loss: float, gnorm: float, lr: float, dt: float) -> None:
        t, s = self.cfg.train, self.state
        tok_s = self.tokens_per_step / dt
        achieved = self.flops_per_token * tok_s / self.rt.world_size  # FLOP/s of one process
        if achieved > self.peak:  # the start-up peak was measured low (a busy machine): re-measure, keep the highest
            self.peak = raise_peak(self.rt.device.type, self.rt.dtype, achieved)
        metrics = {"train/loss": loss, "train/grad_norm": gnorm, "train/lr": lr, "train/tokens": s.tokens_seen,
                   "train/clipped": int(self.cfg.optim.grad_clip > 0 and gnorm > self.cfg.optim.grad_clip),
                   "perf/step_ms": 1000 * dt, "perf/tok_per_s": tok_s,
                   "perf/mfu": min(1.0, achieved / self.peak),
                   "mem/rss_mb": self._process.memory_info().rss / 2**20}  # fmt: skip
        metrics.update(getattr(self.objective, "metrics", dict)())  # an objective's own, e.g. a learned temperature
        if hasattr(self.loader, "metrics"):  # a stream loader: data/epoch, data/docs, data/tokens/<source>
            metrics.update(self.loader.metrics())
        self.logger.log(s.step, metrics)
        if self.doctor is not None:
            self._doctor_observe(metrics)
        if s.step % t.log_every == 0 or s.step == 1:
            say(f"step {s.step:>6} | loss {loss:.4f} | grad norm {gnorm:.3f} | lr {lr:.2e} | "
                f"{tok_s:,.0f} tok/s | mfu {100 * metrics['perf/mfu']:.1f}%")  # fmt: skip

    def _doctor_observe(self, metrics: dict) -> None:
        """Live doctor: each new episode once on the console and as doctor/<rule> in metrics; train.on_spike."""
        s, on_spike = self.state, self.cfg.train.on_spike
        if on_spike == "rollback" and self.rt.world_size == 1:
            self.doctor.guard(metrics["train/loss"])
        for f in self.doctor.observe(s.step, metrics):
            self.logger.log(s.step, {f"doctor/{f.rule}": f.value, "doctor/message": f.what})
            say(f"doctor: {f.headline()} | try: {f.fix}")
        if self.doctor.guarded:
            self.doctor.guarded = False
            if on_spike == "skip":
                self.logger.log(s.step, {"doctor/skip": 1})
            else:
                self._rollback_pending = True

    def _rollback(self) -> None:
        """Restore the last checkpoint before this step (weights + optimizer, not the data position: the batches
        that caused the spike are skipped) and record a doctor/rollback event."""
        self._rollback_pending = False
        s = self.state
        before = [(step, path) for step, path in ckpt_io.checkpoints(self.run_dir) if step < s.step]
        if not before:
            say(f"doctor: no checkpoint before step {s.step} to roll back to; continuing")
            return
        step, path = before[-1]
        try:
            ckpt_io.verify_checkpoint(path)
            optim = ckpt_io.read_optimizer(path, verify=False)
        except ckpt_io.CheckpointError as e:
            say(f"doctor: cannot roll back to {path} ({e}); continuing")
            return
        ckpt_io.load_weights(self.model, path, verify=False)
        self.optimizer.load_state_dict(optim)
        self.logger.log(step, {"doctor/rollback": s.step})
        say(f"doctor: rolled back from step {s.step} to checkpoint step {step}; the data that caused it is skipped")
        s.step, s.tokens_seen = step, ckpt_io.read_state(path)["tokens_seen"]

    def _diverged(self, loss: float) -> None:
        s = self.state
        self.logger.log(s.step + 1, {"train/loss": loss, "doctor/divergence": 1})
        if self.rt.is_main:
            ckpt_io.write_run_info(self.run_dir, status="crashed", error=f"loss {loss} at step {s.step + 1}")
        where = s.last_ckpt or "none (no checkpoint was saved yet)"
        raise TrainingDiverged(
            f"loss became {loss} at step {s.step + 1}; last good checkpoint: {where}. Lower optim.lr, raise "
            f"optim.warmup or keep optim.grad_clip on, then resume with `slm train --resume {self.run_dir} "
            "--allow-changed optim.lr=...`"
        )


def _live_doctor(cfg: RunConfig):
    return LiveDoctor(cfg.optim.grad_clip, warmup_steps(cfg.optim, cfg.train.max_steps))


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _bytes_per_token(dataset_dir: Path) -> float | None:
    val = read_meta(dataset_dir).get("splits", {}).get("val", {})
    if val.get("bytes") and val.get("tokens"):
        return val["bytes"] / val["tokens"]
    return None
