"""Console output: a redrawn bar on a terminal; in a log (stderr not a terminal) plain lines and no carriage-return
frames, for the trainer only its step lines."""

from __future__ import annotations

import pytest

from slmkit.base import console


@pytest.fixture
def not_a_tty(monkeypatch):
    monkeypatch.setattr(console, "interactive", lambda: False)


def test_line_progress_prints_plain_lines_and_a_last_one(not_a_tty, capsys, monkeypatch):
    clock = iter(range(0, 1000, 10))  # every update is 10 s after the last
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    bar = console.progress(100, "prepare x", "B")
    assert isinstance(bar, console.LineProgress)
    for _ in range(10):
        bar.update(10)
        bar.set_postfix_str("5 tok/s")
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert 3 <= len(lines) <= 5, lines  # one every LINE_EVERY_S (30 s) of the 100 s, and the last
    assert lines[-1].startswith("prepare x: 100/100 B (100%)") and lines[-1].endswith("| 5 tok/s")


def test_trainer_bar_is_silent_in_a_log(not_a_tty):
    bar = console.progress(10, unit="step", lines=False)
    assert not isinstance(bar, console.LineProgress) and bar.disable


def test_terminal_gets_a_tqdm_bar(monkeypatch):
    monkeypatch.setattr(console, "interactive", lambda: True)
    bar = console.progress(10, "x")
    assert not bar.disable and not isinstance(bar, console.LineProgress)
    bar.close()


def test_disabled_console_prints_nothing(capsys):
    console.enable(False)
    try:
        console.say("hidden")
        assert console.progress(10, "x").disable
    finally:
        console.enable(True)
    console.say("shown")
    assert capsys.readouterr().err == "shown\n"


def test_train_log_has_no_progress_frames(tiny_dataset, tmp_path):
    """`slm train ... 2> train.log`: one line per log interval, no carriage returns."""
    import subprocess
    import sys

    log = tmp_path / "train.log"
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", "slmkit", "train", "tiny", f"data.dir={tiny_dataset()}",
                                "train.max_steps=6", "train.log_every=2", "train.eval_every=6", "train.eval_batches=1",
                                f"train.out_dir={tmp_path}/runs", "train.name=log"], stdout=f, stderr=f)  # fmt: skip
    text = log.read_text()
    assert code == 0, text
    assert "\r" not in text
    assert [ln.split("|")[0].strip() for ln in text.splitlines() if "| loss" in ln] == [
        f"step {s:>6}" for s in (1, 2, 4, 6)
    ]
