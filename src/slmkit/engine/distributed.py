"""Several processes on PyTorch's own engine: process groups, DDP and FSDP2, full state dicts, launching torchrun.

One process per device (GPU, or a share of the CPU cores). torchrun starts the processes and sets RANK, WORLD_SIZE,
LOCAL_RANK; `slmkit.engine.runtime.resolve_runtime` reads them once and `train()` calls `init_process_group`
(nccl on CUDA, gloo on CPU). The trainer then:

- wraps the model with `wrap_model`: DDP (a full replica per process, gradients all-reduced in buckets during
  backward) or FSDP2 `fully_shard` (each block and the root sharded across processes, with a MixedPrecisionPolicy:
  bf16 parameters for compute and fp32 gradient reduction when the run's dtype is bf16);
- skips the gradient sync on all micro-steps but the last (`grad_sync`);
- reads the data as one stream of batches shared out by rank (`TokenLoader(shard="batches")`), so W processes with
  accumulation A train exactly like one process with accumulation W*A;
- writes metrics and checkpoints from rank 0 only. Under FSDP every rank first takes part in gathering the full
  state (`full_state`); the checkpoint folder is the same as a single process writes, so checkpoints move freely
  between world sizes and between DDP and FSDP (`load_full_state` shards a full checkpoint on load).

`slmkit.engine.launch` starts the processes for `slm train --nproc N`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from slmkit.base.config import ConfigError
from slmkit.base.errors import SlmError
from slmkit.engine.runtime import Runtime
from slmkit.runs import checkpoint as ckpt_io

T = TypeVar("T")
PARALLEL = ("ddp", "fsdp")
TIMEOUT_S = 1800.0  # rendezvous and collectives: long enough for rank 0 to write a large checkpoint (data is
# prepared on rank 0 while the others poll: `on_main`, no collective and so no timeout)
_ON_MAIN_CALLS = itertools.count()


class DistributedError(SlmError):
    """Processes could not be started or could not find each other."""


# ---------------------------------------------------------------------------------------------------------
# Process group


def backend_for(device: torch.device) -> str:
    """nccl between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(runtime: Runtime, timeout_s: float = TIMEOUT_S) -> None:
    """Join the process group torchrun describes (env:// rendezvous). A no-op in one process or when joined."""
    if not runtime.distributed or dist.is_initialized():
        return
    kwargs = {"device_id": runtime.device} if runtime.device.type == "cuda" else {}
    try:
        dist.init_process_group(backend_for(runtime.device), rank=runtime.rank, world_size=runtime.world_size,
                                timeout=timedelta(seconds=timeout_s), **kwargs)  # fmt: skip
    except (RuntimeError, ValueError, TimeoutError) as e:  # DistNetworkError and DistStoreError are RuntimeErrors
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DistributedError(
            f"rank {runtime.rank} of {runtime.world_size} could not join the process group at {where} ({reason}); "
            "check that MASTER_ADDR/MASTER_PORT (torchrun --rdzv-endpoint) name a host and port every node can "
            "reach, that no firewall blocks that port, and that every node was started with the same --nnodes and "
            "--nproc-per-node"
        ) from None


def teardown() -> None:
    """Leave the process group (end of training); a no-op when none was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def on_main(runtime: Runtime, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result, or the SlmError it raised, to every rank (make a run dir,
    prepare a dataset). The other ranks wait by polling the process group's key-value store, not in a collective, so
    no timeout fires however long `fn` takes (preparing a large corpus); if rank 0 fails otherwise, they stop too."""
    if not runtime.distributed:
        return fn()
    store = dist.distributed_c10d._get_default_store()  # the rendezvous store every rank already talks to
    key = f"slmkit/on_main/{next(_ON_MAIN_CALLS)}"  # every rank makes the same calls in the same order
    if runtime.is_main:
        try:
            box = ("ok", fn())
        except SlmError as e:
            box = ("error", e)
        except BaseException as e:
            store.set(key, pickle.dumps(("crash", f"{type(e).__name__}: {e}".splitlines()[0][:300])))
            raise
        store.set(key, pickle.dumps(box))
    else:
        wait_for_key(store, key)
        box = pickle.loads(store.get(key))
    kind, value = box
    if kind == "crash":
        raise DistributedError(f"rank 0 stopped ({value}); its output says why")
    if kind == "error":
        raise value
    return value


def wait_for_key(store, key: str, sleep: Callable[[float], None] = time.sleep, most_s: float = 1.0) -> None:
    """Return once `key` is in `store`, asking every `most_s` at most (sooner at first): no deadline."""
    delay = 0.01
    while not store.check([key]):
        sleep(delay)
        delay = min(2 * delay, most_s)


def agree(runtime: Runtime, flag: bool) -> bool:
    """Rank 0's `flag` on every rank (decisions taken from a clock, which must be the same everywhere)."""
    if not runtime.distributed:
        return flag
    t = torch.tensor([int(flag)], device=runtime.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks (itself in one process); gloo has no AVG, so SUM / world size."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def as_float(t) -> float:
    """A scalar tensor (plain or DTensor, as FSDP2's grad norm is) as a Python float."""
    full = getattr(t, "full_tensor", None)
    return float(full() if full is not None else t)


# ---------------------------------------------------------------------------------------------------------
# Wrapping the model


def check_parallel(cfg, runtime: Runtime) -> None:
    """Refuse combinations FSDP does not support here, naming the setting to change."""

    if not runtime.distributed or cfg.train.parallel != "fsdp":
        return
    if cfg.optim.name == "muon":
        raise ConfigError("optim.name = muon needs whole matrices; with train.parallel = fsdp use optim.name=adamw, "
                          "or keep muon with train.parallel=ddp")  # fmt: skip
    if cfg.lora.rank:
        raise ConfigError("LoRA adapters are small: train them with train.parallel=ddp, not fsdp")
    if cfg.train.init_from:
        raise ConfigError("train.init_from loads into an unsharded model: use train.parallel=ddp for fine-tuning")
    if [t for t in getattr(cfg.eval, "tasks", []) if t != "val"]:  # benchmarks run on rank 0 alone
        raise ConfigError("eval.tasks during training needs the whole model on rank 0: with train.parallel=fsdp "
                          "leave eval.tasks empty and run `slm eval` on the run afterwards, or use ddp")  # fmt: skip


def wrap_model(model: nn.Module, runtime: Runtime, parallel: str = "ddp") -> nn.Module:
    """The module the training step calls: `model` itself in one process, else DDP(model) or `model` sharded in
    place by FSDP2 (then `model`'s parameters are DTensors: build the optimizer after this call)."""
    if not runtime.distributed:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        # buffers (rotary tables) are the same everywhere: no need to broadcast them before every forward
        import inspect

        no_buffer_sync = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})  # fmt: skip
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True, **no_buffer_sync)
    if parallel != "fsdp":
        raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    return fsdp_shard(model, runtime.device.type, runtime.dtype)


def fsdp_shard(model: nn.Module, device_type: str, dtype: str) -> nn.Module:
    """Shard `model` in place with FSDP2 across the process group: each block, then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    if dtype == "bf16":  # compute in bf16, reduce gradients in fp32; the optimizer keeps fp32 shards
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    for block in model.blocks:  # one all-gather per block in forward, freed after it (reshard_after_forward)
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)  # embeddings, final norm, head (a tied head stays in one group)
    return model


def grad_sync(model: nn.Module, last: bool):
    """Context for one micro-step's forward/backward: gradients are synchronised only on the `last` micro-step
    (DDP's no_sync(); FSDP2's set_requires_gradient_sync). Nothing to do for a plain model."""
    no_sync = getattr(model, "no_sync", None)
    if no_sync is not None:
        return contextlib.nullcontext() if last else no_sync()
    set_sync = getattr(model, "set_requires_gradient_sync", None)
    if set_sync is not None:
        set_sync(last)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------------
# Full state for checkpoints (FSDP): gather on save, shard on load. The folder format is the single-process one.


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state, optimizer state) of a sharded model, whole, on rank 0's CPU; empty dicts on other ranks.

    Collective: every rank must call it. The optimizer state is keyed by parameter position, like
    `optimizer.state_dict()` in one process, so the file is the same whatever the world size."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
    if not model_sd:  # ranks other than 0
        return {}, {}
    return model_sd, _optim_by_position(optim_sd)


def _optim_by_position(sd: dict) -> dict:
    """An optimizer state dict keyed by parameter name (torch.distributed.checkpoint) -> keyed by position."""
    index, groups = {}, []
    for g in sd["param_groups"]:
        ids = []
        for name in g["params"]:
            index.setdefault(name, len(index))
            ids.append(index[name])
        groups.append({**g, "params": ids})
    return {"state": {index[k]: v for k, v in sd["state"].items()}, "param_groups": groups}


def _optim_by_name(sd: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The reverse of `_optim_by_position`, naming positions after this optimizer's parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    if len(order) != sum(len(g["params"]) for g in sd["param_groups"]):
        raise ValueError("the optimizer state holds a different number of parameters")
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": {order[int(i)]: v for i, v in sd["state"].items()}, "param_groups": groups}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, ckpt: Path) -> None:
    """Load a checkpoint folder (written by any world size, DDP, FSDP or one process) into a sharded model and its
    optimizer. Every rank reads the files (same file system) and keeps its own shard."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, strict=True)
    try:
        sd = load_file(str(Path(ckpt) / ckpt_io.WEIGHTS_FILE))
        for kept, *others in ckpt_io.shared_names(model):  # the file holds a tied weight once
            for name in others:
                sd[name] = sd[kept]
        set_model_state_dict(model, sd, options=opts)
    except Exception as e:  # shapes or names that do not fit, a damaged file
        reason = ckpt_io.load_error_reason(e)
        raise ckpt_io.CheckpointError(f"{ckpt} does not fit this model ({reason}); is it a checkpoint of a run "
                                      "with the same model config?") from None  # fmt: skip
    if optimizer is None:
        return
    path = Path(ckpt) / ckpt_io.OPTIM_FILE
    if not path.is_file():
        raise ckpt_io.CheckpointError(f"{ckpt} has no optimizer state; resume needs a full checkpoint")
    try:
        osd = _optim_by_name(torch.load(path, map_location="cpu", weights_only=True), model, optimizer)
        set_optimizer_state_dict(model, optimizer, osd, options=opts)
    except (ValueError, KeyError, RuntimeError) as e:
        raise ckpt_io.CheckpointError(f"{path} does not fit this optimizer ({str(e).splitlines()[0][:200]}); resume "
                                      "with the same optim settings") from None  # fmt: skip
