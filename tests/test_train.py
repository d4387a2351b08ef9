"""The training loop end to end on tiny CPU runs: run dirs, metrics, checkpoints, exact resume, stops."""

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY, at_train_step

from slmkit.base.config import ConfigError
from slmkit.base.config_files import load_config
from slmkit.base.metrics import read_metrics, series
from slmkit.engine.resolve import derive_run_name, lr_scaling_hint
from slmkit.engine.train import train
from slmkit.engine.trainer import TrainingDiverged
from slmkit.runs import checkpoint as ckpt_io


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return tiny_dataset()


def tiny(dataset, tmp_path, *extra):
    overrides = [*TINY, f"data.dir={dataset}", f"train.out_dir={tmp_path / 'runs'}", *extra]
    return load_config(None, overrides), overrides


def test_train_writes_a_complete_run_dir(dataset, tmp_path):
    cfg, ov = tiny(dataset, tmp_path, "train.name=first")
    run = train(cfg, overrides=ov, progress=False)
    assert run.name == "first"
    info = ckpt_io.read_run_info(run)
    assert info["status"] == "finished" and info["step"] == 10
    saved = ckpt_io.read_run_config(run)
    assert saved.model.vocab_size > 0 and saved.train.name == "first"
    events = list(read_metrics(run))
    keys = set().union(*events)
    for k in ("train/loss", "train/grad_norm", "train/lr", "val/loss", "perf/tok_per_s", "perf/mfu", "perf/step_ms",
              "mem/rss_mb"):  # fmt: skip
        assert k in keys, k
    steps, losses = series(run, "train/loss")
    assert steps == list(range(1, 11)) and all(math.isfinite(v) for v in losses)
    val_steps, _ = series(run, "val/loss")
    assert val_steps == [0, 5, 10]
    ckpts = ckpt_io.checkpoints(run)
    assert [s for s, _ in ckpts] == [5, 10]
    last = ckpts[-1][1]
    for f in ("model.safetensors", "optimizer.pt", "state.json", "config.toml", "tokenizer"):
        assert (last / f).exists(), f
    state = json.loads((last / "state.json").read_text())
    for k in ("format_version", "step", "tokens_seen", "loader", "rng", "tokenizer_fingerprint"):
        assert k in state, k
    assert state["tokens_seen"] == 10 * 4 * 32


def test_eval_every_zero_evaluates_only_at_the_end(dataset, tmp_path):
    cfg, ov = tiny(dataset, tmp_path, "train.eval_every=0", "train.max_steps=4")
    run = train(cfg, overrides=ov, progress=False)
    assert series(run, "val/loss")[0] == [0, 4]
    assert [s for s, _ in ckpt_io.checkpoints(run)] == [4]


def test_ckpt_every_saves_at_evals_and_keeps_the_best(dataset, tmp_path):
    """A checkpoint step that is also an eval step saves with its val loss: the best one is tracked and kept."""
    cfg, ov = tiny(dataset, tmp_path, "train.ckpt_every=5", "train.eval_every=5", "train.keep_last=3",
                   "train.max_steps=15")  # fmt: skip
    run = train(cfg, overrides=ov, progress=False)
    assert [s for s, _ in ckpt_io.checkpoints(run)] == [5, 10, 15]
    steps, vals = series(run, "val/loss")
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["best_val_loss"] == min(vals[1:]) and index["best"] == steps[vals.index(min(vals[1:]))]


def test_a_run_is_never_overwritten(dataset, tmp_path):
    cfg, ov = tiny(dataset, tmp_path, "train.max_steps=2", "train.name=same")
    train(cfg, overrides=ov, progress=False)
    with pytest.raises(Exception, match="already exists"):
        train(cfg, overrides=ov, progress=False)


def test_derived_names_get_suffixes(dataset, tmp_path):
    cfg, ov = tiny(dataset, tmp_path, "train.max_steps=1")
    cfg = cfg.replace(preset="shakespeare-char")
    cfg = cfg.replace(**{"optim.lr": 5e-3})
    a = train(cfg, overrides=["optim.lr=5e-3"], progress=False)
    b = train(cfg, overrides=["optim.lr=5e-3"], progress=False)
    assert a.name.startswith("shakespeare-char.") and "lr=5e-3" in a.name and b.name == a.name + "-2"


def test_run_name_from_preset_and_overrides():
    cfg = load_config("shakespeare-char", ["optim.lr=3e-4"])
    assert derive_run_name(cfg, ["optim.lr=3e-4"]) == "shakespeare-char.lr=3e-4"
    assert derive_run_name(cfg, []) == "shakespeare-char"


def test_resume_is_exact(dataset, tmp_path):
    cfg, ov = tiny(dataset, tmp_path, "train.name=full", "model.dropout=0.1")
    full = train(cfg, overrides=ov, progress=False)
    cfg2, ov2 = tiny(dataset, tmp_path, "train.name=half", "model.dropout=0.1")
    half = train(cfg2, overrides=ov2, progress=False, stop_after=5)
    assert ckpt_io.read_run_info(half)["status"] == "interrupted"
    train(resume=half, progress=False)
    assert ckpt_io.read_run_info(half)["status"] == "finished"
    _, a = series(full, "train/loss")
    _, b = series(half, "train/loss")
    assert a == b, f"max abs diff {max(abs(x - y) for x, y in zip(a, b))}"
    assert series(full, "val/loss")[1] == series(half, "val/loss")[1]


def test_resume_refuses_a_different_model(dataset, tmp_path):
    cfg, ov = tiny(dataset, tmp_path, "train.name=r", "train.max_steps=4")
    run = train(cfg, overrides=ov, progress=False, stop_after=2)
    with pytest.raises(ConfigError, match="model.n_layer"):
        train(resume=run, overrides=["model.n_layer=3"], progress=False)
    with pytest.raises(ConfigError, match="--allow-changed"):
        train(resume=run, overrides=["optim.lr=5e-4"], progress=False)
    train(resume=run, overrides=["optim.lr=5e-4"], allow_changed=True, progress=False)
    assert ckpt_io.read_run_config(run).optim.lr == 5e-4


def test_nan_loss_stops_with_a_clear_message(dataset, tmp_path, monkeypatch):
    at_train_step(monkeypatch, 7, lambda: (float("nan"), float("nan")))
    cfg, ov = tiny(dataset, tmp_path, "train.name=nan")
    with pytest.raises(TrainingDiverged, match=r"step 7; last good checkpoint: .*step-000005"):
        train(cfg, overrides=ov, progress=False)
    assert ckpt_io.read_run_info(tmp_path / "runs" / "nan")["status"] == "crashed"


def test_ctrl_c_saves_and_exits_cleanly(dataset, tmp_path, monkeypatch):
    at_train_step(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGINT))
    cfg, ov = tiny(dataset, tmp_path, "train.name=ctrlc")
    run = train(cfg, overrides=ov, progress=False)
    assert ckpt_io.read_run_info(run)["status"] == "interrupted"
    assert [s for s, _ in ckpt_io.checkpoints(run)] == [3]


def test_bf16_autocast_trains(dataset, tmp_path):
    cfg, ov = tiny(dataset, tmp_path, "train.dtype=bf16", "train.max_steps=3", "train.eval_every=3")
    run = train(cfg, overrides=ov, progress=False)
    assert all(math.isfinite(v) for v in series(run, "train/loss")[1])


def test_tokens_per_step_derives_accumulation(dataset, tmp_path):
    cfg, ov = tiny(dataset, tmp_path, "train.tokens_per_step=512", "train.max_steps=2", "train.name=acc")
    run = train(cfg, overrides=ov, progress=False)
    assert ckpt_io.read_run_config(run).train.grad_accum == 4  # 512 / (4 * 32)
    with pytest.raises(ConfigError, match="multiple of"):
        cfg, ov = tiny(dataset, tmp_path, "train.tokens_per_step=500")
        train(cfg, overrides=ov, progress=False)


def test_sqrt_rule_warning():
    cfg = load_config("shakespeare-char", ["train.batch_size=48"])
    hint = lr_scaling_hint(cfg)
    assert hint and "optim.lr=0.002" in hint
    assert lr_scaling_hint(load_config("shakespeare-char", ["train.batch_size=48", "optim.lr=2e-3"])) is None


def test_model_learns(dataset, tmp_path):
    cfg, ov = tiny(dataset, tmp_path, "train.max_steps=60", "train.eval_every=60", "optim.lr=3e-3")
    run = train(cfg, overrides=ov, progress=False)
    _, val = series(run, "val/loss")
    assert val[-1] < val[0] - 0.8, val


def test_sample_cli_streams_from_the_run(dataset, tmp_path, run_cli):
    cfg, ov = tiny(dataset, tmp_path, "train.name=s", "train.max_steps=5")
    run = train(cfg, overrides=ov, progress=False)
    args = ("sample", run, "--prompt", "def ", "--max-new-tokens", "20", "--seed", "3", "--checkpoint", "latest")
    code, out, err = run_cli(*args)
    assert code == 0 and out.startswith("def ") and len(out) > len("def \n") and "step-000005" in err
    assert "prompt tokens" in err and "tok/s" in err  # the speed line, on stderr so the text stays clean
    assert run_cli(*args)[1] == out  # a seed reproduces its sample
    code, _, err = run_cli("sample", tmp_path / "nope")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1


def test_mfu_never_exceeds_100_percent_when_the_peak_was_measured_low(dataset, tmp_path, monkeypatch, capsys):
    """A busy CPU while the start-up matmul is timed makes the peak read low; MFU must still stay <= 100%."""
    from slmkit.engine import runtime, trainer

    monkeypatch.setenv("SLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "_PEAKS", {}, raising=False)
    monkeypatch.setattr(runtime, "_REMEASURED", set(), raising=False)
    monkeypatch.setattr(runtime, "_measure_peak", lambda *a, **k: 1e3, raising=False)  # a very busy machine
    monkeypatch.setattr(trainer, "peak_flops", lambda *a, **k: 1e3)
    cfg, ov = tiny(dataset, tmp_path, "train.max_steps=6", "train.log_every=1")
    run = train(cfg, overrides=ov, progress=False)
    _, mfu = series(run, "perf/mfu")
    assert len(mfu) == 6 and all(0 < v <= 1.0 for v in mfu), mfu
    err = capsys.readouterr().err
    assert err.count("above the") == 1 and "mfu 100.0%" in err  # one warning, then the capped value
    shown = [float(v) for v in re.findall(r"mfu ([\d.]+)%", err)]
    assert shown and max(shown) <= 100.0, shown  # never above 100% on the console either


def test_peak_flops_is_measured_once_per_machine_and_raised_by_faster_training(tmp_path, monkeypatch):
    from slmkit.engine import runtime

    monkeypatch.setenv("SLM_CACHE_DIR", str(tmp_path))
    measured = iter([2e9, 5e9])
    monkeypatch.setattr(runtime, "_measure_peak", lambda *a, **k: next(measured))
    monkeypatch.setattr(runtime, "_PEAKS", {})
    monkeypatch.setattr(runtime, "_REMEASURED", set())
    assert runtime.peak_flops("cpu", "fp32") == 2e9
    key = runtime.peak_key("cpu", "fp32")
    assert "threads=" in key and "fp32" in key
    assert json.loads((tmp_path / runtime.PEAK_CACHE_FILE).read_text()) == {key: 2e9}
    monkeypatch.setattr(runtime, "_PEAKS", {})  # a new process: the cached peak, nothing measured
    assert runtime.peak_flops("cpu", "fp32") == 2e9
    assert runtime.raise_peak("cpu", "fp32", 3e9) == 5e9  # training ran faster: measured again, the best kept
    assert json.loads((tmp_path / runtime.PEAK_CACHE_FILE).read_text()) == {key: 5e9}
    monkeypatch.setattr(runtime, "_PEAKS", {})
    assert runtime.peak_flops("cpu", "fp32") == 5e9


def test_peak_flops_measures_a_real_matmul():
    from slmkit.engine import runtime

    flops = runtime._measure_peak("cpu", "fp32", budget_s=0.05)
    assert 1e8 < flops < 1e14


# ---------------------------------------------------------------------------------------------------------
# Killed for real: a training subprocess stopped at a random moment, then resumed, ends with the same losses as an
# uninterrupted run (kill -9: from its last checkpoint, the replayed steps replacing the logged ones; SIGTERM: it
# saves first, like Ctrl-C). Every subprocess is bounded by a timeout and stops by itself.

KILL_STEPS = 30


def _slm_train(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "slmkit", "train", *map(str, args), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"slm train did not stop within {timeout} s: {err[-2000:]}")
    return proc.returncode, err


def _logged_step(run) -> int:
    """The last train step in metrics.jsonl (0 before the first)."""
    try:
        text = (run / "metrics.jsonl").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return 0
    steps = [json.loads(ln)["step"] for ln in text.splitlines() if '"train/loss"' in ln and ln.endswith("}")]
    return max(steps, default=0)


def _killed_then_resumed(dataset, tmp_path, sig: int) -> tuple:
    """(uninterrupted run, killed-and-resumed run, the step it was killed at, the killed process's exit code)."""
    common = [*TINY, f"data.dir={dataset}", f"train.out_dir={tmp_path / 'runs'}", f"train.max_steps={KILL_STEPS}",
              "train.ckpt_every=4", "train.eval_every=10", "train.threads=1"]  # fmt: skip
    ref = _slm_train(*common, "train.name=ref")
    code, err = _finish(ref)
    assert code == 0, err[-2000:]
    at = random.Random().randint(2, KILL_STEPS - 8)  # a random moment; printed on failure
    run = tmp_path / "runs" / "cut"
    proc = _slm_train(*common, "train.name=cut")
    deadline = time.monotonic() + 240
    while _logged_step(run) < at and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    code, err = _finish(proc)
    killed_at = _logged_step(run)
    assert killed_at < KILL_STEPS, f"it finished before the signal (asked at step {at})"
    resumed = _slm_train("--resume", run)
    rcode, rerr = _finish(resumed)
    assert rcode == 0, f"signal at step {killed_at}: {rerr[-2000:]}"
    return tmp_path / "runs" / "ref", run, killed_at, code


def test_kill_9_at_a_random_moment_then_resume_gives_the_same_losses(dataset, tmp_path):
    ref, run, at, code = _killed_then_resumed(dataset, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert ckpt_io.read_run_info(run)["status"] == "finished"
    steps, losses = series(run, "train/loss")
    assert steps == list(range(1, KILL_STEPS + 1)), f"killed at step {at}"  # replayed steps are not repeated
    assert losses == series(ref, "train/loss")[1], f"killed at step {at}"
    assert series(run, "val/loss") == series(ref, "val/loss"), f"killed at step {at}"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no partial save left


def test_sigterm_at_a_random_moment_saves_then_resume_gives_the_same_losses(dataset, tmp_path):
    ref, run, at, code = _killed_then_resumed(dataset, tmp_path, signal.SIGTERM)
    assert code == 130  # interrupted, after saving
    info = ckpt_io.read_run_info(run)
    assert info["status"] == "finished" and info["resumed_from"].endswith(f"step-{at:06d}")  # saved where it stopped
    steps, losses = series(run, "train/loss")
    assert steps == list(range(1, KILL_STEPS + 1)) and losses == series(ref, "train/loss")[1], f"stopped at {at}"
