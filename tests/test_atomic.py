"""Atomic writes (base/atomic.py): a failed write leaves the old file or directory as it was and no temporary files;
directories are built beside their target and renamed into place; output dirs are not replaced without --force."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from slmkit.base.atomic import atomic_dir, atomic_write_json, atomic_write_text, check_out_dir, nan_to_none
from slmkit.base.errors import SlmError


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text_replaces_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "note.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second ünïcode")
    assert path.read_text(encoding="utf-8") == "second ünïcode"
    assert _names(path.parent) == ["note.txt"]


def test_write_json_round_trips(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_json(path, {"step": 3, "loss": 1.5, "tags": ["a", "b"]})
    assert json.loads(path.read_text()) == {"step": 3, "loss": 1.5, "tags": ["a", "b"]}
    assert path.read_text().endswith("\n")


def test_write_failing_midway_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text("old = 1\n")
    real = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new = 2\n" * 100)
    monkeypatch.undo()
    assert path.read_text() == "old = 1\n"
    assert _names(tmp_path) == ["config.toml"]  # the half-written temporary file is gone


def test_rename_failing_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "index.json"
    atomic_write_json(path, {"latest": 1})

    def no_rename(src, dst):
        raise PermissionError("rename refused")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(PermissionError):
        atomic_write_json(path, {"latest": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"latest": 1}
    assert _names(tmp_path) == ["index.json"]


def test_unserializable_json_writes_nothing(tmp_path):
    path = tmp_path / "run.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True} and _names(tmp_path) == ["run.json"]


def test_atomic_dir_builds_in_a_hidden_sibling_then_renames(tmp_path):
    target = tmp_path / "step-000010"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".step-000010.") and tmp.name.endswith(".partial")
        assert not target.exists()  # nothing that looks complete until the block succeeds
        (tmp / "weights.bin").write_bytes(b"\x00" * 8)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "state.json").write_text("{}")
    assert (target / "weights.bin").read_bytes() == b"\x00" * 8 and (target / "sub" / "state.json").is_file()
    assert _names(tmp_path) == ["step-000010"]


def test_atomic_dir_replaces_an_existing_dir_whole(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "stale.txt").write_text("from the last export")
    with atomic_dir(target) as tmp:
        (tmp / "fresh.txt").write_text("new")
    assert _names(target) == ["fresh.txt"]
    assert _names(tmp_path) == ["export"]  # no .old-<pid> or .partial left behind


def test_atomic_dir_failing_midway_keeps_the_old_dir(tmp_path):
    target = tmp_path / "tokenizer"
    target.mkdir()
    (target / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_dir(target) as tmp:
            (tmp / "vocab.json").write_text('{"half')
            raise RuntimeError("interrupted")
    assert (target / "vocab.json").read_text() == '{"a": 0}'
    assert _names(tmp_path) == ["tokenizer"]


def test_atomic_dir_failing_creates_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "new") as tmp:
            (tmp / "x").write_text("x")
            raise KeyboardInterrupt
    assert _names(tmp_path) == []


def test_check_out_dir(tmp_path):
    check_out_dir(tmp_path / "missing", force=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_out_dir(empty, force=False)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(SlmError, match="exists and is not empty.*--force"):
        check_out_dir(full, force=False)
    check_out_dir(full, force=True)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SlmError, match="--out"):
        check_out_dir(a_file, force=False)


def test_nan_to_none():
    data = {"loss": float("nan"), "best": 1.5, "hist": [1.0, float("inf"), (float("-inf"), 2)], "name": "x", "n": 3,
            "nested": {"deep": [float("nan")]}}  # fmt: skip
    out = nan_to_none(data)
    assert out == {"loss": None, "best": 1.5, "hist": [1.0, None, [None, 2]], "name": "x", "n": 3,
                   "nested": {"deep": [None]}}  # fmt: skip
    json.dumps(out, allow_nan=False)  # valid strict JSON now
    assert math.isnan(data["loss"])  # a copy: the input is untouched
    assert nan_to_none(2.0) == 2.0 and nan_to_none(None) is None
