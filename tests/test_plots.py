"""Charts from synthetic metrics.jsonl files: one PNG, four panels, several runs overlaid, x by step/tokens/time."""

from __future__ import annotations

import json
import math

import pytest

from slmkit.base.config_files import load_config, save_config
from slmkit.study.plots import PlotError, load_series, plot_runs


def fake_run(root, name: str, n: int = 120, lr: float = 1e-3, rollback_at: int | None = None, status="finished"):
    """A run dir with run.json, config.toml and a synthetic metrics.jsonl (no training)."""
    run = root / name
    run.mkdir(parents=True)
    save_config(load_config("tiny", ["model.vocab_size=66", f"optim.lr={lr}", f"optim.min_lr={lr / 10}"]),
                run / "config.toml")  # fmt: skip
    (run / "run.json").write_text(json.dumps({"name": name, "status": status, "created": 1.0, "parent": None}))
    lines = []
    steps = list(range(1, n + 1))
    if rollback_at:  # the trainer restores step rollback_at - 20 and re-runs from there
        steps = steps[:rollback_at] + steps[rollback_at - 20 :]
    for i, t in enumerate(steps):
        g = 0.5 + 2 * math.exp(-t / 10)
        lines.append({"step": t, "time": 1000.0 + t, "train/loss": 2 + 2 * math.exp(-t / 30), "train/grad_norm": g,
                      "train/lr": lr * min(1, t / 10), "train/tokens": 512 * t, "train/clipped": int(g > 1.0),
                      "perf/tok_per_s": 5000.0, "perf/step_ms": 100.0})  # fmt: skip
        if t % 40 == 0:
            lines.append({"step": t, "val/loss": 2.1 + 2 * math.exp(-t / 30), "val/bpb": 3.0})
        if rollback_at and i == rollback_at - 1:
            lines.append({"step": rollback_at - 20, "doctor/rollback": rollback_at})
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    return run


@pytest.mark.parametrize("x", ["step", "tokens", "time"])
def test_plot_overlays_runs(tmp_path, x):
    a, b = fake_run(tmp_path, "a"), fake_run(tmp_path, "b", lr=3e-3, n=80)
    out = plot_runs([a, b], tmp_path / f"cmp-{x}.png", x=x, logy=x == "time")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000


def test_series_reads_clip_rate_time_and_rollback(tmp_path):
    rs = load_series(fake_run(tmp_path, "r", rollback_at=60))
    assert rs.grad_clip == 1.0 and rs.rollbacks == [40]
    assert rs.step == list(range(1, 121))  # the rolled-back stretch (41-60, first pass) was dropped
    assert rs.minutes[-1] == pytest.approx(100 * len(rs.step) / 60000)
    assert rs.val_x("tokens")[0] == pytest.approx(512 * 40)


def test_plot_errors(tmp_path, run_cli):
    with pytest.raises(PlotError, match="not one of"):
        plot_runs([fake_run(tmp_path, "a")], tmp_path / "x.png", x="epochs")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "run.json").write_text("{}")
    with pytest.raises(PlotError, match="no training steps"):
        plot_runs([empty], tmp_path / "y.png")
    code, _, err = run_cli("plot", tmp_path / "missing", "--out", tmp_path / "z.png")
    assert code == 2 and "does not exist" in err


def test_cli_plot(tmp_path, run_cli):
    run = fake_run(tmp_path, "a")
    code, out, _ = run_cli("plot", run, "--x", "tokens", "--out", tmp_path / "p.png")
    assert code == 0 and (tmp_path / "p.png").stat().st_size > 30_000
