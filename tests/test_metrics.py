"""base/metrics.py: MetricsLogger, the writer of metrics.jsonl, and `read_metrics` on what it wrote.

The reader side (RunMetrics: series, NaN/inf, rollbacks) is tested in test_metrics_reader.py; the optional logging
backends in test_metrics_backends.py.
"""

from __future__ import annotations

import json

from slmkit.base.metrics import METRICS_FILE, MetricsLogger, read_metrics

# ---------------------------------------------------------------------------------------------------------
# MetricsLogger: one JSON event per line, {"step": ..., "time": ..., key: value, ...}


def _lines(run_dir) -> list[str]:
    return (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()


def test_each_log_call_is_one_json_line_with_step_and_time(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(1, {"train/loss": 3.25, "train/lr": 1e-3})
    log.log(2, {"train/loss": 3.0, "doctor/message": "text goes to the JSONL only"})
    lines = _lines(tmp_path)  # line-buffered: readable while the run is still going
    log.close()
    assert len(lines) == 2 and all(ln.startswith('{"step": ') for ln in lines)
    first, second = map(json.loads, lines)
    assert first["step"] == 1 and first["train/loss"] == 3.25 and first["train/lr"] == 1e-3
    assert isinstance(first["time"], float) and second["time"] >= first["time"] > 1.6e9
    assert second == {"step": 2, "time": second["time"], "train/loss": 3.0,
                      "doctor/message": "text goes to the JSONL only"}  # fmt: skip


def test_empty_metrics_write_nothing(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(1, {})
    log.close()
    assert _lines(tmp_path) == []


def test_non_finite_values_are_written_as_strict_json(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(7, {"train/loss": float("nan"), "train/grad_norm": float("inf"), "x": float("-inf"), "ok": 1.0})
    log.close()
    (line,) = _lines(tmp_path)

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    event = json.loads(line, parse_constant=refuse)  # no bare NaN / Infinity in the file
    assert event["train/loss"] == "nan" and event["train/grad_norm"] == "inf" and event["x"] == "-inf"
    assert event["ok"] == 1.0


def test_a_second_logger_appends(tmp_path):
    """A resumed run opens the same file again: earlier events stay."""
    first = MetricsLogger(tmp_path)
    first.log(1, {"train/loss": 2.0})
    first.close()
    again = MetricsLogger(tmp_path)
    again.log(2, {"train/loss": 1.5})
    again.close()
    assert [json.loads(ln)["step"] for ln in _lines(tmp_path)] == [1, 2]


def test_disabled_logger_writes_no_file(tmp_path):
    """Ranks other than 0 get enabled=False: no metrics.jsonl, and logging or closing is harmless."""
    log = MetricsLogger(tmp_path, enabled=False)
    log.log(1, {"train/loss": 2.0})
    log.close()
    assert not (tmp_path / METRICS_FILE).exists()


# ---------------------------------------------------------------------------------------------------------
# read_metrics on what MetricsLogger wrote. Only what stays true while the reader is being rewritten (events in
# file order, a torn last line skipped, no file = no events); its richer behaviour is in test_metrics_reader.py.


def test_read_metrics_returns_the_logged_events_in_order(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in (1, 2, 3):
        log.log(step, {"train/loss": 4.0 - step})
    log.log(3, {"val/loss": 1.25})
    log.close()
    events = list(read_metrics(tmp_path))
    assert [e["step"] for e in events] == [1, 2, 3, 3]
    assert [e.get("train/loss") for e in events] == [3.0, 2.0, 1.0, None] and events[-1]["val/loss"] == 1.25


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    """A crash mid-write leaves half a line at the end; every complete event before it is read."""
    log = MetricsLogger(tmp_path)
    log.log(1, {"train/loss": 2.0})
    log.log(2, {"train/loss": 1.9})
    log.close()
    with open(tmp_path / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write('{"step": 3, "time": 17000')
    assert [e["step"] for e in read_metrics(tmp_path)] == [1, 2]


def test_read_metrics_of_a_run_without_metrics_is_empty(tmp_path):
    assert list(read_metrics(tmp_path)) == []
