"""A queue of planned runs, shared by `slm ablate` and `slm scaling sweep`: train what is not finished yet.

Each planned config names its run dir (`train.out_dir/train.name`). A finished run is counted as it is (after
checking it was trained with the planned config), an interrupted one resumes from its checkpoint, and a crashed or
half-made one is moved aside into `<out_dir>/.failed/` (kept, never overwritten) and trained again. Runs train in
this process, or as N `slm train` subprocesses sharing the cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from slmkit.base.config import RunConfig, diff_configs
from slmkit.base.config_files import save_config
from slmkit.base.errors import SlmError
from slmkit.engine.train import train
from slmkit.runs import checkpoint as ckpt_io

_RESOLVED_KEYS = ("model.vocab_size", "train.grad_accum", "train.name", "train.out_dir", "train.threads")


class StudyError(SlmError):
    """A study directory does not match the plan asked for."""


def check_same_config(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to count a finished run that was trained with a different config than planned."""
    changed = {k: v for k, v in diff_configs(ckpt_io.read_run_config(run_dir), cfg).items() if k not in _RESOLVED_KEYS}
    if changed:
        what = ", ".join(f"{k}: {a!r} (run) vs {b!r} (plan)" for k, (a, b) in list(changed.items())[:3])
        raise StudyError(f"{run_dir} was trained with a different config ({what}); move it away or use another --out")


def prepare_run(cfg: RunConfig) -> str:
    """What a planned run needs: 'skip' (finished), 'resume' (interrupted with a checkpoint) or 'train'.

    Crashed runs and half-made dirs are moved aside into `<out_dir>/.failed/` so they are kept, never overwritten.
    """
    run_dir = Path(cfg.train.out_dir) / cfg.train.name
    if not run_dir.exists():
        return "train"
    status = ckpt_io.read_run_info(run_dir).get("status") if ckpt_io.is_run_dir(run_dir) else None
    if status == "finished":
        check_same_config(run_dir, cfg)
        return "skip"
    if status in ("interrupted", "running") and ckpt_io.checkpoints(run_dir):
        check_same_config(run_dir, cfg)
        return "resume"
    aside = run_dir.parent / ".failed" / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}-{status or 'partial'}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), str(aside))
    return "train"


def _train_here(cfg: RunConfig, action: str) -> str:
    run_dir = Path(cfg.train.out_dir) / cfg.train.name
    try:
        if action == "resume":
            train(resume=run_dir, progress=False)
        else:
            train(cfg, progress=False)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a crashed run must not stop the study; it is recorded and rerun next time
        if ckpt_io.is_run_dir(run_dir) and ckpt_io.read_run_info(run_dir).get("status") == "running":
            ckpt_io.write_run_info(run_dir, status="crashed", error=str(e).splitlines()[0] if str(e) else repr(e))
        _say(f"run {run_dir} failed: {type(e).__name__}: {e}")
    return final_status(run_dir)


def _train_subprocess(cfg: RunConfig, action: str, threads: int, log_dir: Path) -> str:
    run_dir = Path(cfg.train.out_dir) / cfg.train.name
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{run_dir.parent.name}.{run_dir.name}"
    if action == "resume":
        args = ["train", "--resume", str(run_dir)]
    else:  # `slm train` reads a first argument holding "=" as an override, so the TOML path must not have one
        toml_dir = log_dir if "=" not in str(log_dir) else Path(tempfile.mkdtemp(prefix="slm-ablate-"))
        toml = toml_dir / f"{tag.replace('=', '_')}.toml"
        save_config(cfg.replace(**{"train.threads": threads}), toml)
        args = ["train", str(toml)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log_dir / f"{tag}.log", "a", encoding="utf-8") as log:
        subprocess.run([sys.executable, "-m", "slmkit", *args, "--no-progress"], stdout=log, stderr=log, env=env,
                       check=False)  # fmt: skip
    if final_status(run_dir) != "finished":
        _say(f"run {run_dir} did not finish ({final_status(run_dir)}); see {log_dir / (tag + '.log')}")
    return final_status(run_dir)


def final_status(run_dir: Path) -> str:
    return ckpt_io.read_run_info(run_dir).get("status", "missing") if ckpt_io.is_run_dir(run_dir) else "missing"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_configs(cfgs: Sequence[RunConfig], parallel: int = 1, log_dir: Path | None = None) -> dict[Path, str]:
    """Train every planned run that is not finished yet; returns {run_dir: final status}.

    parallel=1 trains in this process; parallel=N starts N `slm train` subprocesses with cpu_count/N torch threads
    each. An interrupted in-process run (Ctrl-C) stops the remaining ones: rerun to continue.
    """
    results, todo = {}, []
    for cfg in cfgs:
        run_dir = Path(cfg.train.out_dir) / cfg.train.name
        action = prepare_run(cfg)
        if action == "skip":
            results[run_dir] = "finished"
        else:
            todo.append((cfg, action))
    _say(f"{len(results)} of {len(cfgs)} runs already finished; {len(todo)} to train")
    if parallel <= 1:
        for i, (cfg, action) in enumerate(todo):
            run_dir = Path(cfg.train.out_dir) / cfg.train.name
            _say(f"[{i + 1}/{len(todo)}] {action} {run_dir}")
            results[run_dir] = _train_here(cfg, action)
            if results[run_dir] == "interrupted":
                _say("interrupted: rerun the same command to continue where the study stopped")
                break
        return results
    threads = max(1, (os.cpu_count() or 1) // parallel)
    log_dir = log_dir or Path(cfgs[0].train.out_dir).parent / "logs"
    with ThreadPoolExecutor(parallel) as pool:
        futures = {Path(c.train.out_dir) / c.train.name: pool.submit(_train_subprocess, c, a, threads, log_dir)
                   for c, a in todo}  # fmt: skip
        for run_dir, fut in futures.items():
            results[run_dir] = fut.result()
    return results
