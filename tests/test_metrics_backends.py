"""MetricsLogger backends: JSONL always; TensorBoard writes event files; trackio/wandb offline when installed,
otherwise selecting them fails with a clear message naming the package to install."""

from __future__ import annotations

import importlib.util
import json

import pytest

from slmkit.base.metrics import MetricsLogger, read_metrics, series


def _log_some(run_dir, backends):
    log = MetricsLogger(run_dir, backends, project="slmkit-test", config={"optim": {"lr": 1e-3}})
    for step in range(1, 4):
        log.log(step, {"train/loss": 3.0 - step / 10, "train/lr": 1e-3, "doctor/message": "text is JSONL-only"})
    log.log(3, {"val/loss": float("nan")})
    log.close()


def test_jsonl_always(tmp_path):
    _log_some(tmp_path, [])
    events = list(read_metrics(tmp_path))
    assert [e["step"] for e in events] == [1, 2, 3, 3] and events[0]["doctor/message"] == "text is JSONL-only"
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["val/loss"] == "nan"
    assert series(tmp_path, "train/loss") == ([1, 2, 3], [2.9, 2.8, 2.7])


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_writes_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_some(tmp_path, ["tensorboard"])
    files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert files, list(tmp_path.rglob("*"))
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [round(e.value, 5) for e in acc.Scalars("train/loss")] == [2.9, 2.8, 2.7]
    assert "doctor/message" not in acc.Tags()["scalars"]


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_optional_backends(tmp_path, name):
    if importlib.util.find_spec(name) is None:
        with pytest.raises(ImportError, match=f"pip install {name}"):
            MetricsLogger(tmp_path, [name])
        return
    _log_some(tmp_path, [name])  # conftest makes both offline (WANDB_MODE=offline, TRACKIO_DIR in a temp dir)
    assert series(tmp_path, "train/loss")[0] == [1, 2, 3]
    if name == "wandb":  # the offline run lands in the run dir, ready for `wandb sync`
        assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_unknown_backend_is_a_config_error():
    from slmkit.base.config import ConfigError
    from slmkit.base.config_files import load_config

    with pytest.raises(ConfigError, match="log.backends"):
        load_config(None, ["log.backends=mlflow"])
