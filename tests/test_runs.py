"""The run table over fake run dirs: columns, ordering, dead "running" runs shown as crashed."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from slmkit.runs.table import format_runs, list_runs, run_status
from tests.test_plots import fake_run


def test_table_columns_and_order(tmp_path, run_cli):
    fake_run(tmp_path, "base", n=120)
    child = fake_run(tmp_path, "child", n=80, status="interrupted")
    info = json.loads((child / "run.json").read_text())
    info.update(parent="runs/base", created=2.0, num_params=1234, step=80, tokens_seen=40960)
    (child / "run.json").write_text(json.dumps(info))
    (tmp_path / "not-a-run").mkdir()
    rows = list_runs(tmp_path)
    assert [r["name"] for r in rows] == ["base", "child"]
    base, ch = rows
    assert base["steps"] == 120 and base["tokens"] == 120 * 512 and base["status"] == "finished"
    assert base["params"] > 50_000  # counted from config.toml (tiny preset, 66-char vocab)
    assert base["val_loss"] == pytest.approx(2.1 + 2 * 2.718281828 ** (-4), rel=1e-6)
    assert ch["params"] == 1234 and ch["parent"] == "runs/base" and ch["status"] == "interrupted"
    table = format_runs(rows)
    assert table.splitlines()[0].split() == ["name", "parent", "params", "tokens", "steps", "val", "loss", "status"]
    assert "runs/base" in table and "1.2K" in table
    code, out, _ = run_cli("runs", tmp_path)
    assert code == 0 and "child" in out
    code, out, _ = run_cli("runs", tmp_path, "--json")
    assert code == 0 and json.loads(out)[1]["name"] == "child"


def test_dead_running_run_is_crashed(tmp_path):
    run = fake_run(tmp_path, "r", status="running")
    info = json.loads((run / "run.json").read_text())
    here = socket.gethostname()
    assert run_status(run, {**info, "pid": os.getpid(), "host": here, "updated": time.time()}) == "running"
    assert run_status(run, {**info, "pid": 2**22 + 17, "host": here, "updated": time.time()}) == "crashed"
    # a pid reused by a process started after the run's last write is not the trainer
    assert run_status(run, {**info, "pid": os.getpid(), "host": here, "updated": 1.0}) == "crashed"
    # another host: judged by how long ago the metrics changed
    assert run_status(run, {**info, "pid": 1, "host": "elsewhere"}) == "running"
    old = time.time() - 2 * 3600
    for f in ("metrics.jsonl", "run.json"):
        os.utime(run / f, (old, old))
    assert run_status(run, {**info, "host": "elsewhere"}) == "crashed"


def test_missing_dir_is_a_clear_error(tmp_path, run_cli):
    code, _, err = run_cli("runs", tmp_path / "nope")
    assert code == 2 and "not a directory" in err
    code, out, _ = run_cli("runs", tmp_path)
    assert code == 0 and "no runs found" in out
