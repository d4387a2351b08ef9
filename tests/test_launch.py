"""engine/launch.py: `slm train --nproc N` refuses process counts the machine cannot run and starts torchrun with
the same arguments minus --nproc. Real 2-process launches are in test_distributed.py."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from slmkit.engine import launch
from slmkit.engine.distributed import DistributedError


@pytest.fixture(autouse=True)
def outside_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_cpu_process_counts():
    for n in (1, 4):
        launch.check_nproc(n, "cpu")
        launch.check_nproc(n, "auto")
    with pytest.raises(DistributedError, match="--nproc 5 is more than the 4 CPU cores here; use --nproc 4"):
        launch.check_nproc(5, "auto")
    with pytest.raises(DistributedError, match="--nproc must be at least 1, got 0"):
        launch.check_nproc(0)


def test_gpu_process_counts(monkeypatch):
    with pytest.raises(DistributedError, match="more than the 0 visible GPU"):
        launch.check_nproc(1, "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    launch.check_nproc(2, "auto")  # one process per GPU, whatever the CPU count
    with pytest.raises(DistributedError, match="--nproc 3 is more than the 2 visible GPU.*use --nproc 2"):
        launch.check_nproc(3, "auto")


def test_nproc_inside_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedError, match="inside a torchrun process: drop --nproc"):
        launch.check_nproc(2, "cpu")


def test_strip_nproc():
    assert launch.strip_nproc(["train", "tiny", "--nproc", "2", "optim.lr=1e-3"]) == ["tiny", "optim.lr=1e-3"]
    assert launch.strip_nproc(["--nproc=4", "--name", "x"]) == ["--name", "x"]  # no verb: all are train's


def test_launch_runs_torchrun_with_cores_shared_out(monkeypatch):
    calls = []
    monkeypatch.setattr(launch.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 7)
    assert launch.launch_train(["tiny", "train.max_steps=2"], 2, "cpu") == 7  # the exit code of torchrun
    ((cmd, env),) = calls
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "slmkit",
                   "train", "tiny", "train.max_steps=2"]  # fmt: skip
    assert env["OMP_NUM_THREADS"] == "2"  # 4 cores / 2 processes


def test_launch_checks_before_starting_anything(monkeypatch):
    monkeypatch.setattr(launch.subprocess, "call", lambda *a, **k: pytest.fail("started processes"))
    with pytest.raises(DistributedError):
        launch.launch_train([], 99, "cpu")
