"""Crash hygiene: whatever stops a run, run.json says so in one line and nothing on disk is lost or half-written.

A full disk (simulated: the write raises OSError(ENOSPC)) is one error line naming the disk and the space a checkpoint
needs; any other exception leaves run.json `crashed` with its reason; SIGTERM saves like Ctrl-C; the temporaries of a
killed save are cleaned at the next start (never one being written); a resume does not repeat the replayed steps in
the metrics; a folder left by a run killed before its run.json existed does not block the name. (Real kill -9 and
SIGTERM of a training subprocess, then resume: tests/test_train.py.)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import time

import pytest
from conftest import TINY, at_train_step, raising, tiny_overrides

from slmkit.base.config_files import load_config
from slmkit.base.errors import SlmError
from slmkit.base.metrics import RunMetrics, series
from slmkit.base.tokenizer import TokenizerError
from slmkit.engine.train import DiskFull, train
from slmkit.runs import checkpoint as ckpt_io


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return tiny_dataset()


def tiny(dataset, tmp_path, *extra):
    overrides = [*TINY, f"data.dir={dataset}", f"train.out_dir={tmp_path / 'runs'}", *extra]
    return load_config(None, overrides), overrides


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------------------------------------
# A full disk


def fail_writes_of(monkeypatch, marker: str) -> None:
    """Every checkpoint file write into a folder whose name holds `marker` raises ENOSPC, as a full disk does."""
    real = ckpt_io._Checked.write

    def write(self, data):
        if marker in self.f.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(ckpt_io._Checked, "write", write)


def test_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(dataset, tmp_path, monkeypatch):
    fail_writes_of(monkeypatch, "step-000010")
    cfg, ov = tiny(dataset, tmp_path, "train.name=full")
    with pytest.raises(DiskFull) as e:
        train(cfg, overrides=ov, progress=False)
    msg = str(e.value)
    assert msg.startswith("no space left on ") and "MB needed for a checkpoint" in msg and "MB free" in msg
    assert "\n" not in msg and "--resume" in msg
    run = tmp_path / "runs" / "full"
    info = ckpt_io.read_run_info(run)
    assert info["status"] == "crashed" and info["error"] == msg and info["step"] == 10
    assert [s for s, _ in ckpt_io.checkpoints(run)] == [5] and hidden(run / "checkpoints") == []  # no partial
    ckpt_io.load_model(run, "latest")  # the last good checkpoint is intact
    monkeypatch.undo()
    train(resume=run, progress=False)  # room again: it resumes
    assert ckpt_io.read_run_info(run)["status"] == "finished"


def test_full_disk_is_one_cli_line(dataset, tmp_path, monkeypatch, run_cli):
    fail_writes_of(monkeypatch, "step-000005")
    code, out, err = run_cli("train", *tiny(dataset, tmp_path, "train.name=cli")[1], "--no-progress")
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: no space left on ") and "Traceback" not in err


def test_full_disk_while_logging_metrics(dataset, tmp_path, monkeypatch):
    from slmkit.base.metrics import MetricsLogger

    real = MetricsLogger.log

    def log(self, step, metrics):
        if step == 7:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, step, metrics)

    monkeypatch.setattr(MetricsLogger, "log", log)
    cfg, ov = tiny(dataset, tmp_path, "train.name=log")
    with pytest.raises(DiskFull, match="no space left on"):
        train(cfg, overrides=ov, progress=False)
    assert ckpt_io.read_run_info(tmp_path / "runs" / "log")["status"] == "crashed"


# ---------------------------------------------------------------------------------------------------------
# Any other exception


def test_any_exception_marks_the_run_crashed_with_a_one_line_reason(dataset, tmp_path, monkeypatch):
    at_train_step(monkeypatch, 3, raising(RuntimeError("boom\nsecond line of detail")))
    cfg, ov = tiny(dataset, tmp_path, "train.name=boom")
    with pytest.raises(RuntimeError, match="boom"):  # a bug keeps its traceback; run.json has the line
        train(cfg, overrides=ov, progress=False)
    info = ckpt_io.read_run_info(tmp_path / "runs" / "boom")
    assert info["status"] == "crashed" and info["error"] == "RuntimeError: boom" and info["step"] == 2


def test_a_run_failing_before_its_run_json_leaves_nothing(dataset, tmp_path, monkeypatch):
    import slmkit.engine.train as tm

    def no_trainer(*a, **k):
        raise RuntimeError("cannot build the model")

    monkeypatch.setattr(tm, "Trainer", no_trainer)
    cfg, ov = tiny(dataset, tmp_path, "train.name=early")
    with pytest.raises(RuntimeError):
        train(cfg, overrides=ov, progress=False)
    assert not (tmp_path / "runs" / "early").exists()


# ---------------------------------------------------------------------------------------------------------
# Signals


def test_sigterm_saves_and_exits_interrupted(dataset, tmp_path, monkeypatch):
    at_train_step(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    cfg, ov = tiny(dataset, tmp_path, "train.name=term")
    run = train(cfg, overrides=ov, progress=False)
    assert ckpt_io.read_run_info(run)["status"] == "interrupted"
    assert [s for s, _ in ckpt_io.checkpoints(run)] == [3]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


# ---------------------------------------------------------------------------------------------------------
# Leftovers of a killed process


def test_stale_temporaries_are_cleaned_at_the_next_start(dataset, tmp_path, capsys):
    cfg, ov = tiny(dataset, tmp_path, "train.name=stale")
    run = train(cfg, overrides=ov, progress=False, stop_after=5)
    ckpts = run / "checkpoints"
    old = time.time() - 3600  # written by a process that is gone
    (ckpts / ".step-000006.abcd1234.partial").mkdir()
    (ckpts / ".step-000006.abcd1234.partial" / "model.safetensors").write_bytes(b"half")
    (ckpts / ".index.json.abcd_123.tmp").write_text("{")
    (run / ".run.json.zz99zz99.tmp").write_text("{")
    os.replace(ckpts / "step-000005", ckpts / ".step-000005.old-99999")  # killed between the two renames
    fresh = ckpts / ".step-000007.newer123.partial"  # a save in progress (newer than this process): kept
    fresh.mkdir()
    for p in (ckpts / ".step-000006.abcd1234.partial", ckpts / ".index.json.abcd_123.tmp",
              run / ".run.json.zz99zz99.tmp", ckpts / ".step-000005.old-99999"):  # fmt: skip
        os.utime(p, (old, old))
    os.utime(fresh, (time.time() + 3600,) * 2)
    capsys.readouterr()
    train(resume=run, progress=False)
    err = capsys.readouterr().err
    assert "cleaned up after an interrupted save" in err and "put back step-000005" in err
    assert hidden(ckpts) == [fresh.name] and hidden(run) == []
    assert "resuming" in err and "from step 5" in err  # the put-back checkpoint was used
    assert ckpt_io.read_run_info(run)["status"] == "finished"


def test_resume_does_not_repeat_replayed_steps_in_the_metrics(dataset, tmp_path):
    cfg, ov = tiny(dataset, tmp_path, "train.name=whole")
    whole = train(cfg, overrides=ov, progress=False)
    cfg, ov = tiny(dataset, tmp_path, "train.name=killed")
    run = train(cfg, overrides=ov, progress=False, stop_after=5)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:  # what a process killed at step 7 had logged
        for step in (6, 7):
            f.write(json.dumps({"step": step, "train/loss": 99.0, "train/grad_norm": 1.0}) + "\n")
        f.write('{"step": 8, "train/lo')  # torn mid-line by the kill
    ckpt_io.write_run_info(run, status="running", pid=999_999_999)  # the dead trainer
    train(resume=run, progress=False)
    steps, losses = series(run, "train/loss")
    assert steps == list(range(1, 11)) and losses == series(whole, "train/loss")[1]
    metrics = RunMetrics.read(run)
    assert metrics.resumes == [5] and metrics.torn == 1 and [e["step"] for e in metrics.superseded] == [6, 7]
    raw = (run / "metrics.jsonl").read_text().splitlines()
    assert '{"step": 8, "train/lo' in raw  # the torn line stays on its own line; the next event is whole
    assert any('"run/resume": 5' in line for line in raw)


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(dataset, tmp_path, capsys):
    cfg, ov = tiny(dataset, tmp_path, "train.name=whole")
    whole = train(cfg, overrides=ov, progress=False)
    cfg, ov = tiny(dataset, tmp_path, "train.name=early")
    run = train(cfg, overrides=ov, progress=False, stop_after=3)
    shutil.rmtree(run / "checkpoints")  # as if killed at step 3, before any save
    ckpt_io.write_run_info(run, status="running", pid=999_999_999)
    capsys.readouterr()
    train(resume=run, progress=False)
    assert "no checkpoint yet: training it again from step 0" in capsys.readouterr().err
    assert series(run, "train/loss") == series(whole, "train/loss")
    assert series(run, "val/loss") == series(whole, "val/loss")  # the step-0 eval is not logged twice


def test_resume_is_refused_while_the_trainer_is_alive(dataset, tmp_path):
    cfg, ov = tiny(dataset, tmp_path, "train.name=alive", "train.max_steps=2")
    run = train(cfg, overrides=ov, progress=False, stop_after=1)
    ckpt_io.write_run_info(run, status="running", pid=os.getpid())  # this process counts as its trainer
    with pytest.raises(SlmError, match=f"is being trained right now \\(process {os.getpid()}\\)"):
        train(resume=run, progress=False)


# ---------------------------------------------------------------------------------------------------------
# A run killed before its run.json was written


def test_a_folder_left_before_run_json_does_not_block_the_name(dataset, tmp_path, run_cli, capsys):
    left = tmp_path / "runs" / "early"
    (left / "tokenizer").mkdir(parents=True)
    (left / "config.toml").write_text("[model]\n")
    (left / "metrics.jsonl").write_text("")
    dead = {"pid": 999_999_999, "host": socket.gethostname(), "time": 0}  # its starter is gone
    (left / ckpt_io.STARTING_FILE).write_text(json.dumps(dead))
    code, _, err = run_cli("train", "--resume", left)
    assert code == 2 and err.count("\n") == 1
    assert "stopped before it started" in err and "train.name=early" in err
    cfg, ov = tiny(dataset, tmp_path, "train.name=early", "train.max_steps=2")
    run = train(cfg, overrides=ov, progress=False)
    assert run == left and ckpt_io.read_run_info(run)["status"] == "finished"
    assert "reusing" in capsys.readouterr().err and not (run / ckpt_io.STARTING_FILE).exists()
    with pytest.raises(SlmError, match="already exists"):  # now a real run: never reused
        train(cfg, overrides=ov, progress=False)


def test_a_folder_being_started_by_a_live_process_is_not_reused(tmp_path):
    busy = tmp_path / "busy"
    ckpt_io.new_run_dir(tmp_path, "busy", explicit=True)  # this process is starting it
    assert not ckpt_io.unstarted(busy)
    with pytest.raises(SlmError, match="already exists"):
        ckpt_io.new_run_dir(tmp_path, "busy", explicit=True)
    (busy / "notes.txt").write_text("someone's own folder")
    (busy / ckpt_io.STARTING_FILE).unlink()
    assert not ckpt_io.unstarted(busy)  # a file no start writes: not ours to reuse


# ---------------------------------------------------------------------------------------------------------
# The tokenizer the data was prepared with is the one config.toml records


def test_an_explicit_tokenizer_that_differs_from_the_dataset_is_refused(dataset, tmp_path):
    ov = [*tiny_overrides("tokenizer.kind=bpe:300"), f"data.dir={dataset}", f"train.out_dir={tmp_path}"]
    with pytest.raises(TokenizerError, match=r"prepared with tokenizer char \(fingerprint \w+\), not "
                                             r"tokenizer.kind=bpe:300"):  # fmt: skip
        train(load_config(None, ov), overrides=ov, progress=False)
    assert not any(tmp_path.iterdir())  # refused before any run dir


def test_a_default_tokenizer_is_replaced_by_the_datasets(dataset, tmp_path, capsys):
    ov = [*tiny_overrides("train.max_steps=1", drop=("tokenizer.kind",)), f"data.dir={dataset}",
          f"train.out_dir={tmp_path}", "train.name=t"]  # fmt: skip
    cfg = load_config(None, ov)
    assert cfg.tokenizer.kind != "char"  # the default preset's
    run = train(cfg, overrides=ov, progress=False)
    assert ckpt_io.read_run_config(run).tokenizer.kind == "char"
    assert f"was prepared with char, not {cfg.tokenizer.kind}" in capsys.readouterr().err
