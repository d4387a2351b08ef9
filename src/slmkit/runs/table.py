"""The run table (`slm runs [DIR]`): one row per run dir under a root. It reads only run dirs.

Status comes from run.json (running | finished | crashed | interrupted), with one correction: a run that says
"running" but whose trainer is gone is shown as crashed. When run.json names the trainer's pid and host and the
host is this machine, the process is checked (a reused pid is told apart by its start time). Otherwise a run is
taken as crashed when neither metrics.jsonl nor run.json changed for STALE_SECONDS (the trainer writes a metrics
line every step, so an hour of silence means it is not running).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from slmkit.base.metrics import METRICS_FILE, RunMetrics
from slmkit.model.gpt import GPT
from slmkit.runs import checkpoint as ckpt_io

STALE_SECONDS = 3600.0
COLUMNS = ("name", "parent", "params", "tokens", "steps", "val_loss", "status")


def run_params(run_dir: str | Path) -> int | None:
    """Parameter count: run.json's `num_params` if the trainer stored it, else counted from config.toml."""
    info = _info(run_dir)
    if info.get("num_params"):
        return int(info["num_params"])
    try:
        cfg = ckpt_io.read_run_config(run_dir)
    except ckpt_io.CheckpointError:
        return None
    if not cfg.model.vocab_size:
        return None
    import torch

    with torch.device("meta"):  # shapes only: no memory, no init cost
        return GPT(cfg.model).num_params()


def process_info() -> dict:
    """pid and host of this process, stored in run.json by the trainer so a dead "running" run can be told."""
    import os

    return {"pid": os.getpid(), "host": socket.gethostname()}


def _info(run_dir: str | Path) -> dict:
    try:
        return ckpt_io.read_run_info(run_dir)
    except ckpt_io.CheckpointError:
        return {}


def _process_alive(pid: int, since: float) -> bool:
    import psutil

    try:
        return psutil.Process(pid).create_time() <= since + 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def run_status(run_dir: str | Path, info: dict | None = None) -> str:
    """running | finished | crashed | interrupted | unknown; a dead "running" run is crashed (module docstring)."""
    run_dir = Path(run_dir)
    info = _info(run_dir) if info is None else info
    status = info.get("status", "unknown")
    if status != "running":
        return status
    pid, host = info.get("pid"), info.get("host")
    if pid and host == socket.gethostname():
        return "running" if _process_alive(int(pid), float(info.get("updated", time.time()))) else "crashed"
    files = [p for p in (run_dir / METRICS_FILE, run_dir / ckpt_io.RUN_FILE) if p.exists()]
    last = max((p.stat().st_mtime for p in files), default=0.0)
    return "running" if time.time() - last < STALE_SECONDS else "crashed"


def trainer_alive(info: dict) -> int | None:
    """The pid of the trainer process run.json names when it runs on this machine and is alive, else None."""
    pid, host = info.get("pid"), info.get("host")
    if not pid or host != socket.gethostname() or info.get("status") != "running":
        return None
    try:
        return int(pid) if _process_alive(int(pid), float(info.get("updated", time.time()))) else None
    except (TypeError, ValueError):
        return None


def run_row(run_dir: str | Path) -> dict:
    """One row of the table: name, parent, params, tokens, steps, val_loss, status (+ path, created, problem).

    A damaged run.json or metrics.jsonl does not stop the table: the row shows what it could read, and `problem`
    says what is wrong (None when nothing is)."""
    run_dir = Path(run_dir)
    problems = []
    info: dict = {}
    try:
        info = ckpt_io.read_run_info(run_dir)
    except ckpt_io.CheckpointError as e:
        problems.append(str(e))
    metrics = RunMetrics([])
    try:
        metrics = RunMetrics.read(run_dir)
    except OSError as e:
        problems.append(f"cannot read {run_dir / METRICS_FILE}: {e.strerror or e}")
    if metrics.problem():
        problems.append(f"{run_dir / METRICS_FILE}: {metrics.problem().split(': ', 1)[1]}")
    steps = max(metrics.series("train/loss")[0], default=0)
    tokens = int(max(metrics.values("train/tokens"), default=0))
    val = metrics.last("val/loss")
    return {"name": info.get("name", run_dir.name), "parent": info.get("parent") or "",
            "params": run_params(run_dir), "tokens": info.get("tokens_seen") or tokens,
            "steps": info.get("step") or steps, "val_loss": val, "status": run_status(run_dir, info),
            "path": str(run_dir), "created": info.get("created", 0.0),
            "problem": "; ".join(problems) or None}  # fmt: skip


def _broken_row(run_dir: Path, e: Exception) -> dict:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return {"name": run_dir.name, "parent": "", "params": None, "tokens": None, "steps": 0, "val_loss": None,
            "status": "unknown", "path": str(run_dir), "created": 0.0,
            "problem": f"cannot read {run_dir}: {reason}"}  # fmt: skip


def list_runs(root: str | Path = "runs") -> list[dict]:
    """Rows for every run dir directly under `root` (or `root` itself if it is one), oldest first. A run dir that
    cannot be read gets a row saying why; the others are listed as usual."""
    root = Path(root)
    if not root.is_dir():
        raise ckpt_io.CheckpointError(f"{root} is not a directory; pass the folder holding your runs (default runs/)")
    dirs = [root] if ckpt_io.is_run_dir(root) else [p for p in sorted(root.iterdir()) if ckpt_io.is_run_dir(p)]
    rows = []
    for d in dirs:
        try:
            rows.append(run_row(d))
        except Exception as e:  # noqa: BLE001 -- one damaged run must not hide the others
            rows.append(_broken_row(d, e))
    return sorted(rows, key=lambda r: (_number(r["created"]), r["name"]))


def _number(v) -> float:
    return float(v) if isinstance(v, (int, float)) else 0.0


def _human(n: float | None) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def format_runs(rows: list[dict]) -> str:
    """A plain-text table of `list_runs` rows."""
    if not rows:
        return "no runs found"
    cells = [[r["name"], r["parent"] or "-", _human(r["params"]), _human(r["tokens"]), str(r["steps"]),
              f"{r['val_loss']:.4f}" if isinstance(r["val_loss"], (int, float)) else "-", r["status"]]
             for r in rows]  # fmt: skip
    header = ["name", "parent", "params", "tokens", "steps", "val loss", "status"]
    if any(r.get("problem") for r in rows):  # a column only when some run is damaged
        header.append("problem")
        for c, r in zip(cells, rows):
            c.append(r.get("problem") or "")
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    right = {2, 3, 4, 5}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *cells]]  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)
