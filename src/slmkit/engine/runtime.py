"""The one place that decides device, dtype, threads and distributed setup (DESIGN invariant 6).

`resolve_runtime(train_cfg)` runs once at start-up, logs one line, and the result is passed down; nothing deeper
reads environment variables to decide where or how to compute.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slmkit.base.atomic import atomic_write_json
from slmkit.base.config import ConfigError, TrainConfig
from slmkit.base.console import say


@dataclass
class Runtime:
    device: torch.device
    dtype: str  # "fp32" | "bf16" (autocast)
    compile: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dtype_reason: str = ""  # why train.dtype = auto chose `dtype` (logged by describe)

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
        why = f" ({self.dtype_reason})" if self.dtype_reason else ""
        return "runtime: " + " ".join(parts) + f" | torch {torch.__version__}" + why

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
    dtype, reason = cfg.dtype, ""
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
    if dtype == "auto":  # after the threads are set: the CPU's measured peaks depend on them
        dtype, reason = auto_dtype(device)
    return Runtime(device=device, dtype=dtype, compile=cfg.compile, rank=rank, world_size=world, local_rank=local_rank,
                   dtype_reason=reason)  # fmt: skip


# bf16 autocast on a CPU pays when the CPU multiplies bf16 natively: measured here (AVX-512-bf16, 2 threads) bf16
# matmuls run at ~2.2x fp32's FLOP/s and training small models at 1.3-1.6x fp32's tokens/s with the same loss
# (benchmarks/results/train.md). Without native bf16, torch emulates it and it is slower than fp32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPU_BF16_MIN_SPEEDUP = 1.3  # bf16 matmul FLOP/s over fp32 below which auto keeps fp32 (conversions eat the rest)


def cpu_bf16_flags() -> list[str]:
    """The CPU flags (Linux /proc/cpuinfo) that mean native bf16 arithmetic; [] where there are none or no cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in CPU_BF16_FLAGS if f in flags]
    return []


def auto_dtype(device: torch.device) -> tuple[str, str]:
    """train.dtype = auto: (dtype, why). bf16 autocast on a CUDA GPU that supports it; on a CPU when it has native
    bf16 (a cpuinfo flag) and bf16 matmuls measured at least CPU_BF16_MIN_SPEEDUP x fp32 here (the per-machine peak
    cache, so measured once); fp32 elsewhere."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "dtype auto -> bf16: the GPU supports bf16"
        return "fp32", "dtype auto -> fp32: this GPU has no bf16"
    if device.type != "cpu":
        return "fp32", f"dtype auto -> fp32 on {device.type}"
    flags = cpu_bf16_flags()
    if not flags:
        return "fp32", "dtype auto -> fp32: the CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag)"
    fp32, bf16 = peak_flops("cpu", "fp32"), peak_flops("cpu", "bf16")
    speed = f"bf16 matmul {bf16 / 1e9:,.0f} vs fp32 {fp32 / 1e9:,.0f} GFLOP/s"
    if bf16 < CPU_BF16_MIN_SPEEDUP * fp32:
        return "fp32", f"dtype auto -> fp32: {speed}, under {CPU_BF16_MIN_SPEEDUP}x"
    return "bf16", f"dtype auto -> bf16 autocast: the CPU has {'+'.join(flags)}, {speed}"


# ---------------------------------------------------------------------------------------------------------
# Peak FLOP/s: the MFU denominator. One short matmul timed while the machine is busy reads low and makes MFU read
# above 100%, so the peak is the best of several timed repeats, kept per machine in the user cache dir (keyed by
# device, dtype, threads and torch) and raised when training runs faster than it (then measured again).

PEAK_CACHE_FILE = "peak_flops.json"
_PEAKS: dict[str, float] = {}  # key -> best FLOP/s known to this process
_REMEASURED: set[str] = set()


def cache_dir() -> Path:
    """slmkit's per-user cache: $SLM_CACHE_DIR, else $XDG_CACHE_HOME/slmkit, else ~/.cache/slmkit."""
    if os.environ.get("SLM_CACHE_DIR"):
        return Path(os.environ["SLM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slmkit"


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def peak_key(device_type: str, dtype: str) -> str:
    """What a measured peak depends on: the device (model, and threads on a CPU), the dtype, torch's build."""
    if device_type == "cuda":
        name = torch.cuda.get_device_name(torch.cuda.current_device())
    elif device_type == "cpu":
        name = f"{_cpu_name()} x{os.cpu_count()} threads={torch.get_num_threads()}"
    else:
        name = platform.machine()
    return f"{device_type}:{name}|{dtype}|torch {torch.__version__}"


def _measure_peak(device_type: str, dtype: str, budget_s: float = 0.3, min_reps: int = 3, max_reps: int = 50) -> float:
    """Dense matmul FLOP/s: the fastest of several timed repeats (each >= ~10 ms), within about `budget_s`."""
    device = torch.device(device_type)
    size = 1024 if device.type == "cpu" else 4096
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=tdtype)
    b = torch.randn(size, size, device=device, dtype=tdtype)
    sync = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(device.type, lambda: None)
    a @ b  # warm-up (kernel choice, first-touch allocation)
    sync()
    t0 = time.perf_counter()
    a @ b
    sync()
    inner = max(1, min(1000, int(0.01 / max(time.perf_counter() - t0, 1e-7))))
    best, start, reps = float("inf"), time.perf_counter(), 0
    while reps < min_reps or (reps < max_reps and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t0) / inner)
        reps += 1
    return 2 * size**3 / best


def _read_peak_cache() -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((cache_dir() / PEAK_CACHE_FILE).read_text())
        if isinstance(data, dict):
            return data
    return {}


def _remember_peak(key: str, flops: float) -> None:
    """Store `flops` for `key` in the per-machine cache when it beats what is stored (best effort)."""
    data = _read_peak_cache()
    old = data.get(key)
    if isinstance(old, (int, float)) and old >= flops:
        return
    data[key] = flops
    with contextlib.suppress(OSError):
        atomic_write_json(cache_dir() / PEAK_CACHE_FILE, data)


def peak_flops(device_type: str, dtype: str) -> float:
    """This machine's dense matmul FLOP/s (the MFU denominator, and what train.dtype = auto compares): the
    per-machine cache's value, else measured (~0.3 s) and cached. A peak measured low on a busy machine is raised
    by `raise_peak` when training runs faster than it. Cached, a start costs nothing and auto picks the same dtype
    every run."""
    key = peak_key(device_type, dtype)
    if key not in _PEAKS:
        cached = _read_peak_cache().get(key)
        cached = float(cached) if isinstance(cached, (int, float)) and math.isfinite(cached) else 0.0
        if cached <= 0:
            cached = _measure_peak(device_type, dtype)
            _remember_peak(key, cached)
        _PEAKS[key] = cached
    return _PEAKS[key]


def raise_peak(device_type: str, dtype: str, observed: float) -> float:
    """The peak to use after training measured `observed` FLOP/s above the current one (so the peak was measured
    low, on a busy machine): measure again once per process, keep the highest; warns once. Returns the new peak."""
    key = peak_key(device_type, dtype)
    old = peak_flops(device_type, dtype)
    if key not in _REMEASURED:
        _REMEASURED.add(key)
        measured = _measure_peak(device_type, dtype)
        if measured > old:
            _remember_peak(key, measured)
        say(f"warning: training ran at {observed / 1e9:,.1f} GFLOP/s, above the {old / 1e9:,.1f} GFLOP/s matmul "
            f"peak measured at start-up (the machine was busy then); measured again: {measured / 1e9:,.1f} GFLOP/s. "
            "the MFU peak is now the highest of these, so MFU stays <= 100%")  # fmt: skip
        old = max(old, measured)
    _PEAKS[key] = max(old, observed)
    return _PEAKS[key]


def hardware_summary() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
