"""A killed prepare continues from its last complete shard, and the dataset is byte for byte the one an
uninterrupted prepare writes; other settings, a changed source or a damaged work folder start over; a second
prepare of the same folder waits for the first."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from slmkit.base.tokenizer import build_tokenizer
from slmkit.data import prepare as prepare_mod
from slmkit.data import sources
from slmkit.data.dataset import read_meta
from slmkit.data.prepare import prepare
from slmkit.data.prepare_resume import LOCK_FILE, PROGRESS_FILE, WorkFolder, work_path
from slmkit.data.quality.clean import CleanSpec
from slmkit.data.sources import DataError

KW = dict(tokenizer="char", shard_tokens=2000, workers=1, backend="thread")
TIMING = ("created", "elapsed_s", "tokens_per_s")


def _small(monkeypatch) -> None:
    """Batches of 5,000 characters and files read in pieces of 4 kB, so the small corpus makes a few dozen batches
    and ~60 shards."""
    monkeypatch.setattr(prepare_mod, "BATCH_CHARS", 5000)
    monkeypatch.setattr(sources, "BLOCK_BYTES", 4096)


@pytest.fixture
def small_batches(monkeypatch):
    _small(monkeypatch)


def _files(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_dataset(a, b) -> None:
    """Every file byte for byte; meta.json apart from its clock readings."""
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    differ = [name for name in fa if name != "meta.json" and fa[name] != fb[name]]
    assert not differ, f"files differ: {differ}"
    ma, mb = read_meta(a), read_meta(b)
    assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}


class Stop(BaseException):
    """Stands for Ctrl-C after some progress was recorded."""


def _interrupt_after(monkeypatch, saves: int) -> None:
    original = WorkFolder.save
    count = [0]

    def save(self, key, state):
        original(self, key, state)
        count[0] += 1
        if count[0] == saves:
            raise Stop

    monkeypatch.setattr(WorkFolder, "save", save)


_CHILD = """
import sys, time
from slmkit.data import prepare as p
from slmkit.data.shard_writer import SplitWriter
p.BATCH_CHARS = 5000
write = SplitWriter.write
SplitWriter.write = lambda self, *a, **k: (time.sleep(0.3), write(self, *a, **k))[1]  # slow enough to kill
p.prepare(sys.argv[1], out=sys.argv[2], progress=False, **{KW})
"""


def test_a_killed_prepare_continues_and_matches_an_uninterrupted_one(small_corpus, tmp_path, small_batches,
                                                                     monkeypatch, capsys):  # fmt: skip
    encoded = []
    encode = prepare_mod._encode_batch
    monkeypatch.setattr(prepare_mod, "_encode_batch", lambda fn, texts: (encoded.append(1), encode(fn, texts))[1])
    ref = prepare(str(small_corpus), out=tmp_path / "ref", progress=False, **KW)
    n_batches = len(encoded)
    out = tmp_path / "ds"
    work = work_path(out)
    child = subprocess.Popen([sys.executable, "-c", _CHILD.replace("{KW}", repr(KW)), str(small_corpus), str(out)],
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 60
    while not (work / PROGRESS_FILE).is_file() and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # some writing after the record, to be cut back
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    assert not out.exists() and (work / PROGRESS_FILE).is_file()
    record = json.loads((work / PROGRESS_FILE).read_text())
    shards = record["splits"]["train"]["shards"]
    assert record["batches"] >= 1 and shards and shards[-1]["tokens"] > 0
    with open(work / shards[-1]["file"], "ab") as f:  # a torn write past the record, a stray shard and temp file
        f.write(b"\x01\x02\x03")
    (work / "train" / "999999.bin").write_bytes(b"junk")
    (work / ".progress.json.abcd1234.tmp").write_text("{")

    encoded.clear()
    prepare(str(small_corpus), out=out, progress=True, **KW)
    err = capsys.readouterr().err
    assert f"continuing the interrupted prepare of {out}" in err and "starting over" not in err
    assert len(encoded) == n_batches - record["batches"]  # the batches written before the kill are not re-encoded
    assert_same_dataset(ref, out)
    assert not work.exists() and not (out / PROGRESS_FILE).exists() and not (out / LOCK_FILE).exists()


@pytest.mark.parametrize("case", ["dedup", "one text file"])
def test_continuing_after_ctrl_c_matches(case, small_corpus, tmp_path, small_batches, monkeypatch, capsys):
    """The cleaner's state, the split draw and a split by position come out the same when the source is re-read."""
    if case == "dedup":
        shutil.copy(small_corpus / "heapq.py", small_corpus / "heapq_copy.py")  # an exact duplicate to drop
        source, kw = str(small_corpus), dict(KW, clean=CleanSpec(dedup=["exact"]), val_fraction=0.3)
    else:
        source = tmp_path / "one.txt"
        source.write_text("".join(p.read_text() for p in sorted(small_corpus.iterdir())))
        source, kw = str(source), dict(KW, val_fraction=0.2)
    ref = prepare(source, out=tmp_path / "ref", progress=False, **kw)
    _interrupt_after(monkeypatch, 3)
    with pytest.raises(Stop):
        prepare(source, out=tmp_path / "ds", progress=False, **kw)
    monkeypatch.undo()
    _small(monkeypatch)
    assert not (tmp_path / "ds").exists() and (work_path(tmp_path / "ds") / PROGRESS_FILE).is_file()
    prepare(source, out=tmp_path / "ds", progress=True, **kw)
    err = capsys.readouterr().err
    assert "continuing the interrupted prepare" in err and "starting over" not in err, err
    assert_same_dataset(ref, tmp_path / "ds")
    if case == "dedup":
        assert read_meta(ref)["cleaning"]["documents_out"] < read_meta(ref)["cleaning"]["documents_in"]  # dropped


def _interrupted(source, out, monkeypatch, **kw) -> None:
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(Stop):
        prepare(str(source), out=out, progress=False, **{**KW, **kw})
    monkeypatch.undo()
    _small(monkeypatch)


def test_other_settings_start_over_saying_why(small_corpus, tmp_path, small_batches, monkeypatch, capsys):
    out = tmp_path / "ds"
    _interrupted(small_corpus, out, monkeypatch)
    prepare(str(small_corpus), out=out, val_fraction=0.2, progress=True, **KW)
    lines = [line for line in capsys.readouterr().err.splitlines() if "starting over" in line]
    assert len(lines) == 1 and "other settings (val_fraction 0.05 -> 0.2)" in lines[0], lines
    assert_same_dataset(prepare(str(small_corpus), out=tmp_path / "ref", val_fraction=0.2, progress=False, **KW), out)


def test_a_changed_source_or_a_short_shard_starts_over(small_corpus, tmp_path, small_batches, monkeypatch, capsys):
    out = tmp_path / "ds"
    _interrupted(small_corpus, out, monkeypatch)
    with open(small_corpus / "bisect.py", "a") as f:
        f.write("# one more line\n")
    prepare(str(small_corpus), out=out, progress=True, **KW)
    assert "source files that changed since" in capsys.readouterr().err
    assert_same_dataset(prepare(str(small_corpus), out=tmp_path / "ref", progress=False, **KW), out)

    again = tmp_path / "again"
    _interrupted(small_corpus, again, monkeypatch)
    record = json.loads((work_path(again) / PROGRESS_FILE).read_text())
    os.truncate(work_path(again) / record["splits"]["train"]["shards"][0]["file"], 10)  # damaged
    prepare(str(small_corpus), out=again, progress=True, **KW)
    assert "is shorter than recorded); starting over" in capsys.readouterr().err
    assert_same_dataset(tmp_path / "ref", again)


def test_bad_input_found_mid_way_leaves_nothing(tmp_path, monkeypatch, small_batches):
    """A bad record after some shards were recorded: one DataError, and no work folder to continue from."""
    root = tmp_path / "bad"
    root.mkdir()
    good = [json.dumps({"text": f"record number {i} " * 40}) for i in range(400)]
    (root / "a.jsonl").write_text("\n".join(good + ["not json"] * 200) + "\n")
    tok_dir = build_tokenizer("char", ["record number 0123456789 "]).save(tmp_path / "tok")
    saves = []
    monkeypatch.setattr(WorkFolder, "save", lambda self, key, state: saves.append(state["batches"]))
    with pytest.raises(DataError, match=r"a\.jsonl:4\d\d"):
        prepare(str(root), out=tmp_path / "ds", progress=False, **{**KW, "tokenizer": str(tok_dir)})
    assert saves and not list(tmp_path.glob(".ds*")) and not (tmp_path / "ds").exists()


def test_a_second_prepare_waits_for_the_first(small_corpus, tmp_path, capsys):
    """While another process holds the work folder's lock, prepare waits; when that one has renamed its finished
    folder into place, the waiter finds the dataset complete and returns it, leaving nothing behind."""
    ref = prepare(str(small_corpus), out=tmp_path / "ref", progress=False, **KW)
    out = tmp_path / "ds"
    holder = WorkFolder(out, verbose=False).__enter__()  # "the other process"
    done = []
    waiter = threading.Thread(target=lambda: done.append(prepare(str(small_corpus), out=out, progress=True, **KW)))
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive() and not done
    shutil.copytree(ref, holder.path, dirs_exist_ok=True)
    holder.finish()  # renamed into place as `out`
    holder.__exit__(None, None, None)
    waiter.join(60)
    assert done == [out] and not work_path(out).exists()
    assert "another process is preparing" in capsys.readouterr().err
    assert_same_dataset(ref, out)
