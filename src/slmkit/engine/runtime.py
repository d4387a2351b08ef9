"""The one place that decides device, dtype, threads and distributed setup (DESIGN invariant 6).

`resolve_runtime(train_cfg)` runs once at start-up, logs one line, and the result is passed down; nothing deeper
reads environment variables to decide where or how to compute.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from dataclasses import dataclass

import torch

from slmkit.base.config import ConfigError, TrainConfig


@dataclass
class Runtime:
    device: torch.device
    dtype: str  # "fp32" | "bf16" (autocast)
    compile: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """Context for forward passes: bf16 autocast when dtype is bf16, else nothing."""
        if self.dtype == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def describe(self) -> str:
        parts = [f"device={self.device}", f"dtype={self.dtype}", f"compile={'on' if self.compile else 'off'}"]
        if self.device.type == "cpu":
            parts.append(f"threads={torch.get_num_threads()}")
        elif self.device.type == "cuda":
            parts.append(torch.cuda.get_device_name(self.device))
        if self.distributed:
            parts.append(f"rank={self.rank}/{self.world_size} ({'nccl' if self.device.type == 'cuda' else 'gloo'})")
        return "runtime: " + " ".join(parts) + f" | torch {torch.__version__}"

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _pick_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"train.device = {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device asks for cuda but no CUDA GPU is visible; use train.device=cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def resolve_runtime(cfg: TrainConfig) -> Runtime:
    """Decide device, dtype, threads and rank once. torchrun's RANK/WORLD_SIZE are read here and only here; with
    several processes the caller then joins the process group (`slmkit.engine.distributed.init_process_group`)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    device = _pick_device(cfg.device, local_rank)
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"process {local_rank} on this node wants {device} but only {torch.cuda.device_count()} "
                          "GPU(s) are visible; start at most one process per GPU (--nproc-per-node)")  # fmt: skip
    if device.type == "cpu" and local_world > (os.cpu_count() or 1):
        raise ConfigError(f"{local_world} processes on this node but only {os.cpu_count()} CPU cores; start at most "
                          "one process per core (--nproc-per-node)")  # fmt: skip
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    elif local_world > 1 and device.type == "cpu":  # processes share the cores (torchrun sets OMP_NUM_THREADS=1)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device=device, dtype=dtype, compile=cfg.compile, rank=rank, world_size=world, local_rank=local_rank)


@functools.cache
def peak_flops(device_type: str, dtype: str, size: int = 1024, reps: int = 4) -> float:
    """Measured dense matmul FLOP/s on this machine (the MFU denominator); cached per process."""
    device = torch.device(device_type)
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=tdtype)
    b = torch.randn(size, size, device=device, dtype=tdtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def hardware_summary() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
