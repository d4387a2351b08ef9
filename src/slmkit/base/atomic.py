"""Atomic writes: write to a temporary sibling, fsync, rename. A crash never leaves a half-written file.

The temporary file or directory gets the mode a plain open() or mkdir() would have given it (0666 / 0777 less the
umask), not tempfile's private 0600 / 0700, so run dirs and exports can be shared like any other file.

Temporaries are named `.NAME.XXXXXXXX.tmp` (files) and `.NAME.XXXXXXXX.partial` (directories), and a directory being
replaced is parked as `.NAME.old-PID` for an instant: a process killed mid-write leaves only such hidden names, which
`clean_stale` removes (or, for a parked directory whose replacement never arrived, puts back)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmkit.base.errors import SlmError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (deepest first, `root` last), so that a directory renamed into
    place after it holds its full contents even after a power cut."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.(?P<kind>tmp|partial)$")
_PARKED_RE = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


def clean_stale(folder: str | Path, older_than: float) -> list[str]:
    """Remove what a killed atomic write left in `folder`: `.NAME.*.tmp` files and `.NAME.*.partial` directories last
    modified before `older_than` (a unix time: pass this process's start, so a write in progress is never touched).
    A parked `.NAME.old-PID` directory is put back as NAME when NAME is missing (killed between the two renames),
    else removed. Returns what was done, one phrase per entry."""
    folder = Path(folder)
    done: list[str] = []
    if not folder.is_dir():
        return done
    for p in sorted(folder.iterdir()):
        try:
            if p.lstat().st_mtime >= older_than:
                continue
        except OSError:
            continue
        temp, parked = _TEMP_RE.match(p.name), _PARKED_RE.match(p.name)
        if temp:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            done.append(f"removed {p.name}")
        elif parked and p.is_dir():
            target = folder / parked.group("name")
            if target.exists():
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}")
            else:
                os.replace(p, target)
                done.append(f"put back {target.name} from {p.name}")
    if done:
        _fsync_dir(folder)
    return done


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc), else set and restored
    (which another thread creating a file at that instant could notice)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no other way to read it; restored at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600 whatever the umask
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place only when the block succeeds.

    An existing `path` is replaced only at the very end, so an interrupted build never leaves a directory
    that looks complete, and never destroys the previous one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700 whatever the umask
        yield tmp
        move_into_place(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def move_into_place(tmp: Path, path: Path) -> None:
    """fsync the directory `tmp` and everything in it, then rename it to `path` (a sibling), replacing an existing
    `path` only at that last instant (it is parked as `.NAME.old-PID` meanwhile, see `clean_stale`)."""
    fsync_tree(tmp)  # every file and folder is on disk before the name says the directory is complete
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to replace an existing non-empty output directory (or a file) unless `force`."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise SlmError(f"{out} exists and is not empty; pick another --out or pass --force to replace it")


def nan_to_none(obj):
    """A copy of a JSON-able structure with NaN/inf floats as None (JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj
