"""`slm train --nproc N`: start N training processes on this machine with torchrun --standalone.

Each process runs `python -m slmkit train ARGS` (the same arguments without --nproc) and joins the others in
`train()`. Several machines: run torchrun yourself (docs/distributed.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from slmkit.engine.distributed import DistributedError


def check_nproc(nproc: int, device: str = "auto") -> None:
    """Refuse a process count this machine cannot run: more than its GPUs (CUDA) or its CPU cores."""
    if "WORLD_SIZE" in os.environ:
        raise DistributedError("--nproc inside a torchrun process: drop --nproc (torchrun already started the ranks)")
    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1, got {nproc}")
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise DistributedError(f"--nproc {nproc} is more than the {gpus} visible GPU(s); use --nproc {gpus} or "
                                   "fewer (one process per GPU)")  # fmt: skip
        return
    cpus = os.cpu_count() or 1
    if nproc > cpus:
        raise DistributedError(f"--nproc {nproc} is more than the {cpus} CPU cores here; use --nproc {cpus} or "
                               "fewer (each process needs a core of its own)")  # fmt: skip


def strip_nproc(argv: list[str]) -> list[str]:
    """The `slm train` arguments after the verb, without --nproc N / --nproc=N (the workers must not relaunch)."""
    args = list(argv)
    if "train" in args:
        args = args[args.index("train") + 1 :]
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch_train(train_args: list[str], nproc: int, device: str = "auto") -> int:
    """Run `slm train TRAIN_ARGS` as `nproc` processes on this machine (torchrun --standalone); the exit code."""
    check_nproc(nproc, device)
    env = dict(os.environ)
    if not (device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())):
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))  # cores shared out
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "slmkit", "train", *train_args]  # fmt: skip
    return subprocess.call(cmd, env=env)
