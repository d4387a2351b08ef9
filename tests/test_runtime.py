"""engine/runtime.py: the one place that picks device, dtype, threads and rank (CPU only here; CUDA is faked absent).

resolve_runtime reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE but never joins a process group:
`train()` does that with engine/distributed.init_process_group.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from slmkit.base.config import ConfigError, TrainConfig
from slmkit.engine import runtime
from slmkit.engine.runtime import Runtime, hardware_summary, resolve_runtime

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No torchrun variables from the outside, and torch's thread count restored after each test."""
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_cpu_runtime_defaults():
    rt = resolve_runtime(TrainConfig(device="cpu", dtype="fp32"))
    assert rt.device == torch.device("cpu") and rt.dtype == "fp32" and not rt.compile
    assert (rt.rank, rt.world_size, rt.local_rank) == (0, 1, 0) and rt.is_main and not rt.distributed


def test_auto_device_without_a_gpu_is_the_cpu(no_gpu):
    rt = resolve_runtime(TrainConfig())
    assert rt.device.type == "cpu" and rt.dtype in ("fp32", "bf16") and rt.dtype_reason in rt.describe()


def test_cpu_auto_dtype_follows_native_bf16_and_the_measured_speed(monkeypatch):
    """auto: bf16 only with a native-bf16 flag and bf16 matmuls >= CPU_BF16_MIN_SPEEDUP x fp32; the reason is logged."""
    peaks = {"fp32": 100e9, "bf16": 300e9}
    monkeypatch.setattr(runtime, "peak_flops", lambda device, dtype: peaks[dtype])
    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    rt = resolve_runtime(TrainConfig(device="cpu"))
    assert rt.dtype == "bf16" and "avx512_bf16" in rt.dtype_reason and "300 vs fp32 100" in rt.describe()
    peaks["bf16"] = 120e9  # emulated or slow bf16: conversions would eat the gain
    rt = resolve_runtime(TrainConfig(device="cpu"))
    assert rt.dtype == "fp32" and "under 1.3x" in rt.dtype_reason
    monkeypatch.setattr(runtime, "cpu_bf16_flags", lambda: [])
    rt = resolve_runtime(TrainConfig(device="cpu"))
    assert rt.dtype == "fp32" and "no native bf16" in rt.dtype_reason
    assert resolve_runtime(TrainConfig(device="cpu", dtype="fp32")).dtype_reason == ""  # asked for: nothing to explain


def test_cpu_bf16_flags_reads_cpuinfo():
    assert set(runtime.cpu_bf16_flags()) <= set(runtime.CPU_BF16_FLAGS)


def test_bf16_when_asked():
    assert resolve_runtime(TrainConfig(device="cpu", dtype="bf16")).dtype == "bf16"
    assert resolve_runtime(TrainConfig(device="cpu", dtype="fp32")).dtype == "fp32"


def test_threads_are_honoured():
    torch.set_num_threads(2)
    resolve_runtime(TrainConfig(device="cpu", threads=1))
    assert torch.get_num_threads() == 1
    resolve_runtime(TrainConfig(device="cpu", threads=0))  # 0: leave torch's choice alone
    assert torch.get_num_threads() == 1


def test_compile_flag_is_carried():
    assert resolve_runtime(TrainConfig(device="cpu", compile=True)).compile


@pytest.mark.parametrize("spec", ["gpu0", "banana", "cuda:x"])
def test_a_bad_device_string_names_the_field(spec):
    with pytest.raises(ConfigError, match=r"train\.device") as e:
        resolve_runtime(TrainConfig(device=spec))
    assert repr(spec) in str(e.value) and "auto, cpu, cuda" in str(e.value)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_a_config_error(no_gpu, spec):
    with pytest.raises(ConfigError, match="no CUDA GPU is visible; use train.device=cpu"):
        resolve_runtime(TrainConfig(device=spec))


def test_autocast_is_a_no_op_for_fp32():
    rt = Runtime(device=torch.device("cpu"), dtype="fp32")
    a = torch.randn(4, 4)
    with rt.autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ a).dtype == torch.float32


def test_autocast_is_bf16_for_bf16():
    rt = Runtime(device=torch.device("cpu"), dtype="bf16")
    a = torch.randn(4, 4)
    with rt.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (a @ a).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu") and (a @ a).dtype == torch.float32


def test_describe_is_one_line_naming_device_dtype_and_torch():
    torch.set_num_threads(1)
    text = resolve_runtime(TrainConfig(device="cpu", dtype="bf16")).describe()
    assert "\n" not in text and text.startswith("runtime: ")
    for part in ("device=cpu", "dtype=bf16", "compile=off", "threads=1", f"torch {torch.__version__}"):
        assert part in text, part
    assert "rank=" not in text  # one process


def test_torchrun_variables_are_read_without_joining_a_group(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    rt = resolve_runtime(TrainConfig(device="cpu"))
    assert (rt.rank, rt.world_size, rt.local_rank) == (3, 4, 1)
    assert rt.distributed and not rt.is_main
    assert not dist.is_initialized()  # train() joins, via engine.distributed.init_process_group
    assert torch.get_num_threads() == 4  # 8 cores shared by 2 processes on this node
    assert "rank=3/4 (gloo)" in rt.describe()


def test_explicit_threads_win_over_sharing_the_cores(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    resolve_runtime(TrainConfig(device="cpu", threads=1))
    assert torch.get_num_threads() == 1


def test_more_processes_than_cores_is_a_config_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(ConfigError, match="3 processes on this node but only 2 CPU cores"):
        resolve_runtime(TrainConfig(device="cpu"))


def test_hardware_summary():
    info = hardware_summary()
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads() and info["python"]
