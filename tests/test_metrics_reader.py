"""RunMetrics, the one reader of metrics.jsonl: torn lines, NaN/inf read back as floats, series, and the rollback
rule that the doctor, plots, the report and the run table all share."""

from __future__ import annotations

import json
import math
import random

import pytest

from slmkit.base.metrics import METRICS_FILE, MetricsLogger, RunMetrics, read_metrics, series
from slmkit.engine.doctor import RunFacts, diagnose, format_findings
from slmkit.runs.table import run_row
from slmkit.study.plots import load_series

N, TOK = 600, 4096
FACTS = RunFacts(params=100_000, grad_clip=1.0, warmup=30, max_steps=N)


def step_event(t: int, loss: float, rng: random.Random) -> dict:
    g = 0.5 * math.exp(rng.gauss(0, 0.05))
    lr = 1e-3 * min(1.0, t / 30) * (0.55 + 0.45 * math.cos(math.pi * t / N))
    return {"step": t, "time": 1000.0 + t, "train/loss": loss, "train/grad_norm": g, "train/lr": lr,
            "train/tokens": t * TOK, "train/clipped": 0, "perf/step_ms": 100.0}  # fmt: skip


def spiky_run(rollback: bool = True) -> list[dict]:
    """A healthy run whose loss spiked at steps 401-403. With `rollback` the guard then restored the step-380
    checkpoint ({"step": 380, "doctor/rollback": 403}) and steps 381-600 were replayed on other data, without a
    spike; without it the run went on from step 404."""
    rng = random.Random(0)

    def loss(t: int) -> float:
        return 1.5 + 2.5 * math.exp(-t / 60) + 0.3 * (1 - t / N) + rng.gauss(0, 0.03)

    def steps(a: int, b: int) -> list[dict]:
        out = []
        for t in range(a, b + 1):
            out.append(step_event(t, loss(t) + (3.0 if 401 <= t <= 403 and a == 1 else 0.0), rng))
            if t % 50 == 0:
                out.append({"step": t, "val/loss": loss(t) + 0.05})
            if t == 403 and a == 1:
                out.append({"step": 403, "doctor/loss_spike": 4.9, "doctor/message": "train loss jumped"})
        return out

    if not rollback:
        return steps(1, N)
    return steps(1, 403) + [{"step": 380, "doctor/rollback": 403}] + steps(381, N)


def write_run(path, events: list[dict], tail: str = "") -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "run.json").write_text(json.dumps({"name": path.name, "status": "finished", "created": 1.0}))
    (path / METRICS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events) + tail)


def test_torn_last_line_is_skipped(tmp_path):
    events = [{"step": t, "train/loss": 3.0 - t / 10} for t in range(1, 4)]
    write_run(tmp_path, events, tail='{"step": 4, "train/loss": 2.6, "train/gr')  # crashed mid-write
    m = RunMetrics.read(tmp_path)
    assert m.events == events and m.torn == 1
    assert series(tmp_path, "train/loss") == ([1, 2, 3], [2.9, 2.8, 2.7])
    assert read_metrics(tmp_path) == events


def test_event_glued_after_a_torn_line_is_kept(tmp_path):
    """A resumed run appends to the file: its first event lands on the same line as the torn fragment."""
    text = '{"step": 1, "train/loss": 3.0}\n{"step": 2, "train/lo{"step": 2, "train/loss": 2.5}\n\n'
    m = RunMetrics.from_lines(text.splitlines(keepends=True))
    assert m.series("train/loss") == ([1, 2], [3.0, 2.5]) and m.torn == 1


def test_missing_file_is_empty(tmp_path):
    m = RunMetrics.read(tmp_path)
    assert m.events == [] and len(m) == 0 and m.series("val/loss") == ([], []) and m.last("val/loss") is None


def test_nan_and_inf_are_read_back_as_floats(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(1, {"train/loss": float("nan"), "train/grad_norm": float("inf"), "doctor/message": "text stays text"})
    log.log(2, {"val/loss": float("-inf")})
    log.close()
    raw = (tmp_path / METRICS_FILE).read_text()
    assert '"nan"' in raw and '"inf"' in raw and '"-inf"' in raw  # JSON has no NaN: the logger writes strings
    m = RunMetrics.read(tmp_path)
    first, second = m.events
    assert math.isnan(first["train/loss"]) and first["train/grad_norm"] == math.inf
    assert first["doctor/message"] == "text stays text" and second["val/loss"] == -math.inf
    assert m.series("val/loss") == ([2], [-math.inf])
    assert math.isnan(RunMetrics.from_events([{"step": 1, "x": "nan"}]).last("x"))


def test_series_first_last_and_step_records():
    m = RunMetrics.from_events([
        {"step": 1, "train/loss": 3.0, "train/grad_norm": 1.0, "perf/step_ms": 500.0},
        {"step": 1, "doctor/warmup": 3.0, "doctor/message": "m"},
        {"step": 2, "train/loss": 2.5, "train/grad_norm": 0.9, "perf/step_ms": 250.0},
        {"step": 2, "val/loss": 2.7, "val/bpb": 1.5},
        {"step": 3, "train/loss": float("nan"), "doctor/divergence": 1},  # the trainer's NaN marker
    ])  # fmt: skip
    assert m.series("train/loss")[0] == [1, 2, 3] and m.values("val/loss") == [2.7]
    assert m.first("train/loss") == 3.0 and m.last("val/bpb") == 1.5 and m.last("val/ppl", 0.0) == 0.0
    assert [e["step"] for e in m.step_records()] == [1, 2]  # not the doctor note nor the NaN marker
    assert m.train_seconds() == [0.5, 0.75]
    assert m.has("doctor/divergence") and not m.has("doctor/rollback")
    assert RunMetrics.from_events(m) is m


def test_rollback_drops_superseded_events():
    events = spiky_run()
    m = RunMetrics.from_events(events)
    steps = [e["step"] for e in m.step_records()]
    assert steps == list(range(1, N + 1))  # 381-403 of the first pass are gone, the replay stays
    assert m.rollbacks == [(380, 403)] and {"step": 380, "doctor/rollback": 403} in m.events
    assert len(m.superseded) == 23 + 1 + 1  # steps 381-403, the val point at 400 and the doctor note at 403
    assert m.series("val/loss")[0] == [50 * k for k in range(1, 13)]
    assert RunMetrics.from_events(m.events).events == m.events  # applying the rule twice changes nothing


def test_later_rollback_to_an_earlier_step():
    ev = [{"step": t, "train/loss": 1.0, "train/grad_norm": 1.0} for t in range(1, 11)]
    ev += [{"step": 8, "doctor/rollback": 10}] + [{"step": t, "train/loss": 2.0, "train/grad_norm": 1.0}
                                                  for t in (9, 10)]  # fmt: skip
    ev += [{"step": 5, "doctor/rollback": 10}, {"step": 6, "train/loss": 3.0, "train/grad_norm": 1.0}]
    m = RunMetrics.from_events(ev)
    assert m.series("train/loss") == ([1, 2, 3, 4, 5, 6], [1.0] * 5 + [3.0])
    assert m.rollbacks == [(8, 10), (5, 10)]


def test_doctor_does_not_report_a_spike_that_was_rolled_back(tmp_path):
    events = spiky_run()
    # Without the rollback rule (what the doctor saw before): the discarded first pass spikes.
    ignored = [e for e in events if "doctor/rollback" not in e]
    assert "loss_spike" in {f.rule for f in diagnose(ignored, FACTS)}
    write_run(tmp_path / "run", events)
    found = diagnose(tmp_path / "run", FACTS)
    assert found == [], format_findings(found)
    assert diagnose(events, FACTS) == [] and diagnose(RunMetrics.from_events(events), FACTS) == []


def test_a_spike_the_run_kept_is_still_found(tmp_path):
    write_run(tmp_path / "run", spiky_run(rollback=False))
    spikes = [f for f in diagnose(tmp_path / "run", FACTS) if f.rule == "loss_spike"]
    assert [(f.start, f.end) for f in spikes] == [(401, 403)], format_findings(spikes)


def test_plots_and_run_table_read_through_the_same_rule(tmp_path):
    run = tmp_path / "run"
    write_run(run, spiky_run())
    rs = load_series(run)
    assert rs.step == list(range(1, N + 1)) and rs.rollbacks == [380]
    assert rs.minutes[-1] == pytest.approx(N * 100 / 60000)
    row = run_row(run)
    assert row["steps"] == N and row["tokens"] == N * TOK
    assert row["val_loss"] == pytest.approx(series(run, "val/loss")[1][-1])
