"""Damaged files give one clear line, never a traceback or a silently wrong model.

Checkpoints record the size and CRC-32 of every weight and optimizer file in state.json and are checked on load;
old checkpoints without checksums still load (with one note); a resume skips a damaged checkpoint for the newest
intact one (`--checkpoint STEP` picks one) and sets later ones aside. run.json, state.json, index.json, config.toml
and meta.json that are not UTF-8 (or not JSON/TOML) give an error naming the file; one damaged run does not stop
`slm runs` from listing the others.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY
from test_checkpoint import CHARS, make, parts, run  # noqa: E402,F401  (the same tiny model and run-dir fixtures)

from slmkit.base.config import ConfigError
from slmkit.base.config_files import load_config, read_toml
from slmkit.base.errors import SlmError
from slmkit.base.metrics import series
from slmkit.data.dataset import read_meta
from slmkit.data.sources import DataError
from slmkit.engine.train import train
from slmkit.runs import checkpoint as ckpt_io
from slmkit.runs.checkpoint import DamagedCheckpoint
from slmkit.runs.table import format_runs, list_runs

pytestmark = pytest.mark.usefixtures("one_thread")


def save(run, parts, step, val_loss=None, keep_last=10, **kw):
    model, opt, cfg, tok = parts
    return ckpt_io.save_checkpoint(run, step, model, opt, {}, cfg, tok, val_loss=val_loss, keep_last=keep_last, **kw)


def garble(path: Path, n: int = 256, seed: int = 0) -> None:
    """Overwrite `n` bytes in the middle of a file with random ones (same size: no truncation to notice)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2
    data[at : at + n] = random.Random(seed).randbytes(n)
    path.write_bytes(bytes(data))


def strip_checksums(ckpt: Path) -> None:
    """Make a checkpoint look like one saved before checksums were recorded."""
    state = json.loads((ckpt / "state.json").read_text())
    del state["files"]
    (ckpt / "state.json").write_text(json.dumps(state))


# ---------------------------------------------------------------------------------------------------------
# Checksums: recorded at save time, checked on load


def test_state_records_size_and_crc_of_every_weight_and_optimizer_file(run, parts):
    adapter = lambda folder: (folder / "adapter.safetensors").write_bytes(b"x" * 100)  # noqa: E731
    path = save(run, parts, 1, extra=adapter)
    files = ckpt_io.read_state(path)["files"]
    assert sorted(files) == ["adapter.safetensors", "model.safetensors", "optimizer.pt"]
    for name, rec in files.items():
        assert rec == ckpt_io.file_checksum(path / name), name
        assert rec["bytes"] == (path / name).stat().st_size
    ckpt_io.verify_checkpoint(path)  # intact


def test_garbled_weights_are_detected_naming_the_file(run, parts):
    path = save(run, parts, 1)
    garble(path / "model.safetensors")
    with pytest.raises(DamagedCheckpoint, match=r"model.safetensors is damaged: its checksum .* differs") as e:
        ckpt_io.load_model(run, "latest")
    assert "\n" not in str(e.value) and "--checkpoint" in str(e.value)


def test_garbled_or_truncated_optimizer_state_is_detected(run, parts):
    model, opt, _, _ = parts
    path = save(run, parts, 1)
    garble(path / "optimizer.pt", n=64)
    with pytest.raises(DamagedCheckpoint, match="optimizer.pt is damaged: its checksum"):
        ckpt_io.load_optimizer(opt, path)
    path = save(run, parts, 2)
    (path / "optimizer.pt").write_bytes((path / "optimizer.pt").read_bytes()[:500])
    with pytest.raises(DamagedCheckpoint, match=r"optimizer.pt is damaged: 500 bytes, [\d,]+ were saved"):
        ckpt_io.load_optimizer(opt, path)


def test_damaged_optimizer_state_without_checksums_is_a_clean_error(run, parts):
    """An old checkpoint (no checksums): a truncated file is an error naming it, not torch's traceback; one whose
    moments hold NaN is refused rather than turned into a NaN loss blamed on the learning rate."""
    _, opt, _, _ = parts
    path = save(run, parts, 1)
    strip_checksums(path)
    good = (path / "optimizer.pt").read_bytes()
    (path / "optimizer.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(DamagedCheckpoint, match=r"cannot read optimizer state .*optimizer.pt .*damaged") as e:
        ckpt_io.load_optimizer(opt, path)
    assert "\n" not in str(e.value)
    state = opt.state_dict()
    first = next(iter(state["state"].values()))
    first["exp_avg_sq"] = torch.full_like(first["exp_avg_sq"], float("nan"))
    torch.save(state, path / "optimizer.pt")
    with pytest.raises(DamagedCheckpoint, match="NaN or infinite values .*exp_avg_sq"):
        ckpt_io.load_optimizer(opt, path)


def test_old_checkpoints_without_checksums_load_with_one_note(run, parts, capsys):
    model, _, _, _ = parts
    path = save(run, parts, 1)
    strip_checksums(path)
    capsys.readouterr()
    ckpt_io._NOTED_UNVERIFIED.discard(run)
    for _ in range(2):
        loaded = ckpt_io.load_model(run, "latest")[0]
    assert torch.equal(loaded.wte.weight, model.wte.weight)
    err = capsys.readouterr().err
    assert err.count("saved without checksums") == 1 and str(run) in err


def test_cli_reports_a_damaged_checkpoint_in_one_line(run, parts, run_cli):
    path = save(run, parts, 5)
    garble(path / "model.safetensors")
    code, out, err = run_cli("sample", run, "--checkpoint", "latest", "--max-new-tokens", "3")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: checkpoint file ") and "model.safetensors is damaged" in err


def test_checkpoint_files_and_folder_are_fsynced_before_the_rename(run, parts, monkeypatch):
    synced: set[str] = set()
    real_fsync, real_replace = os.fsync, os.replace
    renamed = []

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def replace(src, dst):
        src = Path(src)
        if src.name.endswith(".partial"):
            inside = [str(p) for p in src.rglob("*")]
            missing = [p for p in [*inside, str(src)] if p not in synced]
            assert not missing, f"renamed before fsync: {missing}"
            renamed.append(dst)
        return real_replace(src, dst)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the fsynced files")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save(run, parts, 3)
    assert renamed and Path(renamed[0]).name == "step-000003"


# ---------------------------------------------------------------------------------------------------------
# Resuming past a damaged checkpoint


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return tiny_dataset()


def tiny(dataset, tmp_path, *extra):
    overrides = [*TINY, f"data.dir={dataset}", f"train.out_dir={tmp_path / 'runs'}", "train.ckpt_every=2",
                 "train.keep_last=5", *extra]  # fmt: skip
    return load_config(None, overrides), overrides


def test_resume_falls_back_to_the_newest_intact_checkpoint(dataset, tmp_path, capsys):
    cfg, ov = tiny(dataset, tmp_path, "train.name=full")
    full = train(cfg, overrides=ov, progress=False)
    cfg, ov = tiny(dataset, tmp_path, "train.name=half")
    half = train(cfg, overrides=ov, progress=False, stop_after=6)
    assert [s for s, _ in ckpt_io.checkpoints(half)] == [2, 4, 6]
    garble(half / "checkpoints" / "step-000006" / "model.safetensors")
    capsys.readouterr()
    train(resume=half, progress=False)
    err = capsys.readouterr().err
    assert "step-000006/model.safetensors is damaged" in err
    assert "resuming from step-000004, the newest intact checkpoint (1 newer one damaged)" in err
    assert "step-000006.damaged" in err
    assert (half / "checkpoints" / "step-000006.damaged" / "model.safetensors").is_file()  # kept, out of the way
    assert ckpt_io.read_run_info(half)["status"] == "finished"
    steps, losses = series(half, "train/loss")
    assert steps == list(range(1, 11)) and losses == series(full, "train/loss")[1]


def test_resume_with_every_checkpoint_damaged_is_one_clear_error(dataset, tmp_path, run_cli):
    cfg, ov = tiny(dataset, tmp_path, "train.name=wreck", "train.keep_last=1")
    run = train(cfg, overrides=ov, progress=False, stop_after=4)
    for _, path in ckpt_io.checkpoints(run):
        (path / "optimizer.pt").write_bytes(b"\x00" * 10)
    code, _, err = run_cli("train", "--resume", run, "--no-progress")
    last = err.strip().splitlines()[-1]
    assert (
        code == 2
        and last
        == f"error: no intact checkpoint in {run} (damaged: step-000004, see above); start a "
        "new run (or restore the checkpoint files from a backup)"
    )
    assert "optimizer.pt is damaged: 10 bytes" in err


def test_resume_from_a_chosen_checkpoint(dataset, tmp_path, run_cli):
    cfg, ov = tiny(dataset, tmp_path, "train.name=pick")
    run = train(cfg, overrides=ov, progress=False, stop_after=6)
    garble(run / "checkpoints" / "step-000006" / "optimizer.pt")
    code, _, err = run_cli("train", "--resume", run, "--checkpoint", "6", "--no-progress")
    last = err.strip().splitlines()[-1]  # the log lines of the start-up, then the one error line
    assert code == 2 and last.startswith("error: checkpoint file") and "optimizer.pt is damaged" in last
    assert ckpt_io.read_run_info(run)["status"] == "interrupted"  # a resume that did not start changes nothing
    code, _, err = run_cli("train", "--resume", run, "--checkpoint", "2", "--no-progress", "train.max_steps=8")
    assert code == 0, err
    assert "resuming" in err and "from step 2" in err
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "step-000004.abandoned" in names and "step-000006.abandoned" in names and "step-000008" in names
    assert series(run, "train/loss")[0] == list(range(1, 9))
    code, _, err = run_cli("train", "--checkpoint", "4", "--no-progress")
    assert code == 2 and "with --resume" in err


def test_resume_of_an_old_checkpoint_without_checksums(dataset, tmp_path, capsys):
    cfg, ov = tiny(dataset, tmp_path, "train.name=old")
    run = train(cfg, overrides=ov, progress=False, stop_after=4)
    for _, path in ckpt_io.checkpoints(run):
        strip_checksums(path)
    ckpt_io._NOTED_UNVERIFIED.discard(run)
    train(resume=run, progress=False)
    assert ckpt_io.read_run_info(run)["status"] == "finished"
    assert capsys.readouterr().err.count("saved without checksums") == 1


# ---------------------------------------------------------------------------------------------------------
# Files that are not UTF-8 (or not JSON / TOML): one error naming the file

BAD = b'{"na\xff\xfe\xc3(me": 1}'


@pytest.mark.parametrize("name", ["run.json", "state.json", "config.toml", "ckpt-config.toml"])
def test_non_utf8_run_files_give_a_clean_error(run, parts, name, run_cli):
    path = save(run, parts, 1)
    target = {"run.json": run / "run.json", "state.json": path / "state.json", "config.toml": run / "config.toml",
              "ckpt-config.toml": path / "config.toml"}[name]  # fmt: skip
    if name == "config.toml":
        (path / "config.toml").unlink()  # the checkpoint's copy is read first; make the run's the one read
    target.write_bytes(BAD)
    with pytest.raises(SlmError, match="not UTF-8") as e:
        ckpt_io.load_model(run, "latest") if name != "run.json" else ckpt_io.read_run_info(run)
    assert str(target.parent) in str(e.value) and target.name in str(e.value) and "\n" not in str(e.value)
    code, out, err = run_cli("sample", run, "--checkpoint", "latest", "--max-new-tokens", "2")
    if name != "run.json":  # sampling does not read run.json
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "not UTF-8" in err


def test_read_toml_names_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"[model]\nn_layer = '\xff'\n")
    with pytest.raises(ConfigError, match=r"c.toml is not UTF-8 text \(byte 0xff at offset 19\)"):
        read_toml(path)


def test_non_utf8_or_non_object_meta_json(tmp_path, tiny_dataset):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset(), ds)
    (ds / "meta.json").write_bytes(BAD)
    with pytest.raises(DataError, match=r"meta.json is damaged \(not UTF-8: byte 0xff at offset 4\); re-run"):
        read_meta(ds)
    (ds / "meta.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"meta.json is damaged \(no tokenizer or splits\)"):
        read_meta(ds)


def test_damaged_index_is_rebuilt_and_the_best_survives_retention(run, parts, capsys):
    save(run, parts, 1, val_loss=1.0, keep_last=1)
    save(run, parts, 2, val_loss=3.0, keep_last=1)
    (run / "checkpoints" / "index.json").write_bytes(BAD)
    assert ckpt_io.resolve_checkpoint(run, "best").name == "step-000001"
    assert "index.json (not UTF-8 text" in capsys.readouterr().err
    (run / "checkpoints" / "index.json").write_bytes(BAD)
    save(run, parts, 3, val_loss=2.0, keep_last=1)  # retention must still know step 1 is the best
    assert [s for s, _ in ckpt_io.checkpoints(run)] == [1, 3]
    assert ckpt_io.read_index(run) == {"latest": 3, "best": 1, "best_val_loss": 1.0}


def test_one_damaged_run_does_not_stop_the_run_table(tmp_path, parts, run_cli):
    _, _, cfg, tok = parts
    root = tmp_path / "runs"
    for name in ("a", "b", "c", "d"):
        r = ckpt_io.new_run_dir(root, name, explicit=True)
        ckpt_io.init_run_dir(r, cfg, tok)
        (r / "metrics.jsonl").write_text('{"step": 1, "train/loss": 3.5, "train/grad_norm": 1.0}\n')
    (root / "a" / "run.json").write_bytes(BAD)
    with open(root / "b" / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 2, "train/loss": 3.\xff, "train/grad_norm": 1.0}\n')
        f.write(b'{"step": "x", "train/loss": "?", "train/grad_norm": 1.0}\n')
        f.write(b'{"step": 3, "train/loss": "broken", "train/grad_norm": 1.0}\n')
    (root / "c" / "run.json").write_text("[1, 2]")
    rows = {r["name"]: r for r in list_runs(root)}
    assert sorted(rows) == ["a", "b", "c", "d"]
    assert "run.json (not UTF-8 text" in rows["a"]["problem"] and rows["a"]["status"] == "unknown"
    assert "metrics.jsonl: 1 damaged line (not UTF-8) skipped" in rows["b"]["problem"] and rows["b"]["steps"] == 1
    assert "not an object" in rows["c"]["problem"]
    assert rows["d"]["problem"] is None and rows["d"]["status"] == "running"
    table = format_runs(list(rows.values()))
    assert "problem" in table.splitlines()[0]
    code, out, err = run_cli("runs", root)
    assert code == 0 and err == "" and all(f"\n{n} " in "\n" + out for n in "abcd")
