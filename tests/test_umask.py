"""Files and directories written atomically get the mode the umask gives any other new file (not tempfile's private
0600 / 0700), so a run dir or an export can be shared with other users like the rest of their files."""

from __future__ import annotations

import builtins
import os
import stat
import sys
from pathlib import Path

import pytest

from slmkit.base import atomic
from slmkit.base.atomic import atomic_dir, atomic_path, atomic_write_json, atomic_write_text

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=lambda m: f"umask{m:03o}")
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_current_umask_reads_without_changing_it(umask):
    assert atomic.current_umask() == umask
    assert atomic.current_umask() == umask  # unchanged by reading


def test_current_umask_without_proc(umask, monkeypatch):
    real_open = builtins.open

    def no_proc(file, *a, **k):
        if str(file).startswith("/proc"):
            raise OSError("no /proc here")
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert atomic.current_umask() == umask
    assert os.umask(umask) == umask  # and it was restored


def test_atomic_files_get_the_umask_mode(tmp_path, umask):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    want = 0o666 & ~umask
    assert _mode(plain) == want
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "sub" / "b.json", {"x": 1})
    with atomic_path(tmp_path / "c.bin") as tmp:
        with open(tmp, "wb") as f:  # writers that reopen the temp file keep its mode
            f.write(b"\0")
    for name in ("a.txt", "sub/b.json", "c.bin"):
        assert _mode(tmp_path / name) == want, (name, oct(_mode(tmp_path / name)))
    # replacing an existing file gives the new one the same mode too
    atomic_write_text(tmp_path / "a.txt", "y")
    assert _mode(tmp_path / "a.txt") == want


def test_atomic_dirs_get_the_umask_mode(tmp_path, umask):
    plain = tmp_path / "plain"
    plain.mkdir()
    want = 0o777 & ~umask
    assert _mode(plain) == want
    for _ in range(2):  # first build, then a replacement
        with atomic_dir(tmp_path / "export") as tmp:
            (tmp / "inner").mkdir()
            atomic_write_text(tmp / "inner" / "f.txt", "x")
            (tmp / "g.txt").write_text("x")
        out = tmp_path / "export"
        assert _mode(out) == want and _mode(out / "inner") == want
        assert _mode(out / "inner" / "f.txt") == _mode(out / "g.txt") == 0o666 & ~umask


def test_a_run_dir_is_readable_by_others_under_umask_022(tmp_path):
    from slmkit.base.config_files import load_config
    from slmkit.base.tokenizer import CharTokenizer
    from slmkit.runs.checkpoint import init_run_dir, new_run_dir

    before = os.umask(0o022)
    try:
        cfg = load_config(None, ["tokenizer.kind=char"])
        run = new_run_dir(tmp_path / "runs", "shared", explicit=True)
        init_run_dir(run, cfg, CharTokenizer("abc"))
    finally:
        os.umask(before)
    paths = [run, *run.rglob("*")]
    assert len(paths) > 3
    private = [f"{p.relative_to(tmp_path)} {oct(_mode(p))}" for p in paths if not _mode(p) & stat.S_IROTH]
    assert not private, private
