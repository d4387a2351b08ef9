"""Prepare: shards + meta, split rules, determinism, tokenizers, re-runs, interruption and every bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from slmkit.base.config import DataConfig
from slmkit.base.tokenizer import EOT, TokenizerError, build_tokenizer
from slmkit.data import prepare as prepare_mod
from slmkit.data.dataset import (
    check_tokenizer,
    doc_starts,
    find_tokenizer,
    load_dataset_tokenizer,
    read_meta,
)
from slmkit.data.prepare import SplitWriter, default_dataset_dir, ensure_prepared, prepare
from slmkit.data.sources import DataError


def _tokens(out, split) -> np.ndarray:
    meta = read_meta(out)
    parts = [np.fromfile(out / s["file"], dtype=meta["dtype"]) for s in meta["splits"][split]["shards"]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=meta["dtype"])


def _docs_of(out, split, tok) -> list[str]:
    """Decode a split back into its documents (end-of-text precedes each)."""
    toks, starts = _tokens(out, split), doc_starts(out, split)
    assert all(toks[starts] == tok.eot_id)
    bounds = list(starts) + [len(toks)]
    return [tok.decode(toks[a + 1 : b]) for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.fixture
def gpt2_ds(small_corpus, tmp_path, gpt2_files):
    return prepare(str(small_corpus), tokenizer="gpt2", out=tmp_path / "ds", val_fraction=0.3, progress=False)


def test_prepare_writes_shards_meta_and_tokenizer(gpt2_ds, small_corpus):
    meta = read_meta(gpt2_ds)
    tok = load_dataset_tokenizer(gpt2_ds)
    assert meta["tokenizer"]["fingerprint"] == tok.fingerprint and meta["tokenizer"]["kind"] == "gpt2"
    assert meta["dtype"] == "uint16" and meta["slmkit_version"]
    files = sorted(small_corpus.iterdir())
    texts = {p.read_text(encoding="utf-8") for p in files}
    train, val = _docs_of(gpt2_ds, "train", tok), _docs_of(gpt2_ds, "val", tok)
    assert set(train) | set(val) == texts and not set(train) & set(val) and train and val  # split by document
    for split, docs in (("train", train), ("val", val)):
        s = meta["splits"][split]
        assert s["documents"] == len(docs) and s["tokens"] == len(_tokens(gpt2_ds, split))
        assert s["bytes"] == sum(len(d.encode()) for d in docs)
    src = meta["sources"][0]
    assert src["files"] == len(files) and src["bytes"] == sum(p.stat().st_size for p in files)
    assert len(src["sha256"]) == 64 and src["non_utf8_files"] == 0
    assert meta["settings"]["val_fraction"] == 0.3 and find_tokenizer(gpt2_ds).fingerprint == tok.fingerprint


def test_split_is_deterministic_for_a_seed(small_corpus, tmp_path, gpt2_files):
    kw = dict(tokenizer="gpt2", val_fraction=0.4, progress=False)
    a = prepare(str(small_corpus), out=tmp_path / "a", seed=1, **kw)
    b = prepare(str(small_corpus), out=tmp_path / "b", seed=1, **kw)
    assert all((_tokens(a, s) == _tokens(b, s)).all() for s in ("train", "val"))
    starts = {prepare(str(small_corpus), out=tmp_path / f"s{seed}", seed=seed, **kw) for seed in range(2, 6)}
    assert len({_tokens(d, "val").tobytes() for d in starts | {a}}) > 1  # the seed changes the draw


def test_val_never_empty_and_zero_fraction(small_corpus, tmp_path, gpt2_files):
    tiny = prepare(str(small_corpus), tokenizer="gpt2", out=tmp_path / "t", val_fraction=1e-6, progress=False)
    meta = read_meta(tiny)
    assert meta["splits"]["val"]["documents"] == 1 and meta["splits"]["train"]["documents"] > 1
    none = prepare(str(small_corpus), tokenizer="gpt2", out=tmp_path / "n", val_fraction=0.0, progress=False)
    assert read_meta(none)["splits"]["val"]["tokens"] == 0


def test_fixed_size_shards(small_corpus, tmp_path, gpt2_files):
    out = prepare(str(small_corpus), tokenizer="gpt2", out=tmp_path / "ds", shard_tokens=5000, progress=False)
    shards = read_meta(out)["splits"]["train"]["shards"]
    assert len(shards) > 3 and all(s["tokens"] == 5000 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 5000
    assert all((out / s["file"]).stat().st_size == 2 * s["tokens"] for s in shards)


def test_uint32_when_the_vocabulary_needs_it(tmp_path):
    w = SplitWriter(tmp_path, "train", np.dtype(np.uint32), shard_tokens=4)
    w.write([np.array([70000, 1, 2], dtype=np.uint32), np.array([3], dtype=np.uint32)], [True, False], eot=99999)
    info = w.close()
    assert info["tokens"] == 5 and len(info["shards"]) == 2
    toks = np.concatenate([np.fromfile(tmp_path / s["file"], dtype="<u4") for s in info["shards"]])
    assert toks.tolist() == [99999, 70000, 1, 2, 3]
    assert np.fromfile(tmp_path / "train" / "doc_starts.u64", dtype="<u8").tolist() == [0]


def test_single_text_file_splits_by_position_like_nanogpt(need_data, tmp_path, run_cli):
    data_dir = need_data("tinyshakespeare/input.txt")
    code, out, err = run_cli("prepare", "tinyshakespeare", "--tokenizer", "char", "--out", tmp_path / "sc",
                             "--val-fraction", "0.1")  # fmt: skip
    assert code == 0, err
    code, out, _ = run_cli("data", "info", tmp_path / "sc")
    meta = json.loads(out)
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = text.index("\n", int(len(text.encode()) * 0.9)) + 1  # ascii: bytes == chars
    assert meta["split_by"].startswith("position") and meta["tokenizer"]["vocab_size"] == 66
    assert meta["splits"]["train"]["tokens"] == cut + 1 and meta["splits"]["val"]["tokens"] == len(text) - cut + 1
    tok = load_dataset_tokenizer(tmp_path / "sc")
    assert _docs_of(tmp_path / "sc", "train", tok) == [text[:cut]] and _docs_of(tmp_path / "sc", "val", tok) == [
        text[cut:]
    ]
    assert meta["sources"][0]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_bpe_trained_on_the_corpus_and_max_bytes(small_corpus, tmp_path):
    out = prepare(str(small_corpus), tokenizer="bpe:400", out=tmp_path / "b", max_bytes=60_000, progress=False)
    meta = read_meta(out)
    tok = load_dataset_tokenizer(out)
    assert meta["tokenizer"]["name"] == "bpe:400" and tok.vocab_size == 400 and tok.token_id(EOT) == tok.eot_id
    assert 60_000 <= meta["splits"]["train"]["bytes"] + meta["splits"]["val"]["bytes"] < 120_000


def test_process_workers_match_threads(small_corpus, tmp_path, gpt2_files):
    kw = dict(tokenizer="gpt2", val_fraction=0.2, shard_tokens=7000, progress=False, workers=2)
    a = prepare(str(small_corpus), out=tmp_path / "t", backend="thread", **kw)
    b = prepare(str(small_corpus), out=tmp_path / "p", backend="process", **kw)
    assert all((_tokens(a, s) == _tokens(b, s)).all() for s in ("train", "val"))
    assert (doc_starts(a, "train") == doc_starts(b, "train")).all()


def test_rerun_reuses_refuses_or_rebuilds(gpt2_ds, small_corpus):
    mtime = (gpt2_ds / "meta.json").stat().st_mtime_ns
    assert prepare(str(small_corpus), tokenizer="gpt2", out=gpt2_ds, val_fraction=0.3, progress=False) == gpt2_ds
    assert (gpt2_ds / "meta.json").stat().st_mtime_ns == mtime  # already prepared: untouched
    with pytest.raises(DataError, match=r"other settings \(val_fraction 0.3 -> 0.1\).*--force"):
        prepare(str(small_corpus), tokenizer="gpt2", out=gpt2_ds, val_fraction=0.1, progress=False)
    prepare(str(small_corpus), tokenizer="gpt2", out=gpt2_ds, val_fraction=0.1, force=True, progress=False)
    assert read_meta(gpt2_ds)["settings"]["val_fraction"] == 0.1


def test_interrupted_prepare_leaves_nothing_that_looks_complete(small_corpus, tmp_path, monkeypatch, gpt2_files):
    out = tmp_path / "ds"
    calls = []

    def boom(self, *a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt

    original = SplitWriter.write
    monkeypatch.setattr(SplitWriter, "write", lambda self, *a, **k: (boom(self), original(self, *a, **k)))
    with pytest.raises(KeyboardInterrupt):
        prepare(str(small_corpus), tokenizer="gpt2", out=out, shard_tokens=3000, progress=False)
    assert not out.exists() and [p.name for p in tmp_path.glob(".ds.*")] == [".ds.prepare.partial"]  # to continue
    monkeypatch.undo()
    # an older slmkit left a randomly named partial folder behind; the next run removes it and completes
    stale = tmp_path / ".ds.abc123.partial"
    (stale / "train").mkdir(parents=True)
    prepare(str(small_corpus), tokenizer="gpt2", out=out, progress=False)
    assert not stale.exists() and read_meta(out)["tokens"] > 0 and not list(tmp_path.glob(".ds.*"))
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer", "train", "val"]


def test_incomplete_dataset_dir(gpt2_ds, run_cli):
    (gpt2_ds / "meta.json").unlink()
    with pytest.raises(DataError, match="incomplete.*re-run"):
        read_meta(gpt2_ds)
    code, _, err = run_cli("data", "info", gpt2_ds)
    assert code == 2 and err.startswith("error:") and "incomplete" in err and err.count("\n") == 1


def _assert_cli_error(run_cli, args, pattern, tmp_path):
    code, out, err = run_cli("prepare", *args, "--out", tmp_path / "bad")
    assert code == 2, err
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and err.endswith(errors[0] + "\n"), err  # one line
    assert pattern in err, err
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.*"))  # nothing half-written


def test_cli_missing_path(run_cli, tmp_path):
    _assert_cli_error(run_cli, [str(tmp_path / "nope.txt")], "no such file", tmp_path)


def test_cli_empty_corpus(run_cli, tmp_path, gpt2_files):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    _assert_cli_error(run_cli, [str(empty), "--tokenizer", "gpt2"], "empty corpus", tmp_path)
    _assert_cli_error(run_cli, [str(empty), "--tokenizer", "char"], "empty corpus", tmp_path)


def test_cli_unknown_tokenizer(run_cli, small_corpus, tmp_path):
    _assert_cli_error(run_cli, [str(small_corpus), "--tokenizer", "wordpiece"], "unknown tokenizer", tmp_path)


def test_cli_bad_jsonl_fails_with_line_number(run_cli, tmp_path, gpt2_files):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([json.dumps({"text": "fine"})] * 3 + ["not json"] * 30) + "\n")
    _assert_cli_error(run_cli, [str(path), "--tokenizer", "gpt2"], "bad.jsonl:4", tmp_path)


def test_bad_jsonl_lines_and_non_utf8_counted_in_meta(tmp_path, gpt2_files):
    root = tmp_path / "mixed"
    root.mkdir()
    lines = [json.dumps({"text": f"record {i}"}) for i in range(40)]
    (root / "a.jsonl").write_text("\n".join(lines[:10] + ["{broken"] + lines[10:]) + "\n")
    (root / "b.txt").write_bytes("naïve\n".encode("latin-1"))
    (root / "c.bin").write_bytes(b"\0\1\2\3")
    out = prepare(str(root), tokenizer="gpt2", out=tmp_path / "ds", progress=False)
    src = read_meta(out)["sources"][0]
    assert src["bad_lines"] == 1 and src["first_bad_line"].endswith("a.jsonl:11")
    assert src["non_utf8_files"] == 1 and src["binary_files_skipped"] == 1 and src["documents"] == 41


def test_tokenizer_fingerprint_mismatch_shows_both(gpt2_ds, small_corpus, tmp_path, run_cli):
    char = build_tokenizer("char", ["abc"])
    tok_dir = char.save(tmp_path / "chartok")
    gpt2_fp = read_meta(gpt2_ds)["tokenizer"]["fingerprint"]
    with pytest.raises(TokenizerError) as e:
        check_tokenizer(gpt2_ds, char)
    assert gpt2_fp in str(e.value) and char.fingerprint in str(e.value)
    code, _, err = run_cli("prepare", small_corpus, "--tokenizer", tok_dir, "--out", gpt2_ds, "--val-fraction", "0.3")
    assert code == 2 and gpt2_fp in err and char.fingerprint in err and err.count("\n") == 1
    check_tokenizer(gpt2_ds, load_dataset_tokenizer(gpt2_ds))  # the same tokenizer passes


def test_out_that_is_not_a_dataset_is_refused(small_corpus, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a dataset directory"):
        prepare(str(small_corpus), tokenizer="gpt2", out=tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_default_dir_and_ensure_prepared(small_corpus, tmp_path, monkeypatch, gpt2_files):
    assert str(default_dataset_dir("python-stdlib", "bpe:4096")) == os.path.join("data", "python-stdlib-bpe4096")
    assert (
        default_dataset_dir("hf:HuggingFaceFW/fineweb-edu:sample-10BT", "gpt2").name == "fineweb-edu-sample-10BT-gpt2"
    )
    assert default_dataset_dir("/x/corpus.jsonl", "char").name == "corpus-char"
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(source=str(small_corpus), val_fraction=0.2)
    first = ensure_prepared(cfg, "gpt2")
    assert first == default_dataset_dir(str(small_corpus), "gpt2") and read_meta(first)["tokens"] > 0
    mtime = (first / "meta.json").stat().st_mtime_ns
    assert ensure_prepared(cfg, "gpt2") == first and (first / "meta.json").stat().st_mtime_ns == mtime
    monkeypatch.setattr(prepare_mod, "prepare", lambda *a, **k: pytest.fail("a complete data.dir is used as it is"))
    assert ensure_prepared(DataConfig(source="python-stdlib", dir=str(first)), "gpt2") == first


def test_tokenizer_from_a_directory(gpt2_ds, small_corpus, tmp_path):
    """--tokenizer may name a tokenizer, dataset or run directory: its tokenizer is reused as it is."""
    out = prepare(str(small_corpus), tokenizer=str(gpt2_ds), out=tmp_path / "again", val_fraction=0.3, progress=False)
    assert read_meta(out)["tokenizer"] == read_meta(gpt2_ds)["tokenizer"]
    assert (_tokens(out, "train") == _tokens(gpt2_ds, "train")).all()


def test_pop_tail_gives_back_tokens_across_shards_and_their_document_starts(tmp_path):
    w = SplitWriter(tmp_path, "train", np.dtype(np.uint16), shard_tokens=4)
    w.write([np.arange(1, 6, dtype=np.uint16), np.arange(10, 13, dtype=np.uint16)], [True, True], eot=0)
    # tokens: 0 1 2 3 | 4 5 0 10 | 11 12; documents start at 0 and 6
    tail, starts = w.pop_tail(5)
    assert tail.tolist() == [5, 0, 10, 11, 12] and starts == [1]
    info = w.close()
    assert info["tokens"] == 5 and info["documents"] == 1 and [s["tokens"] for s in info["shards"]] == [4, 1]
    assert not (tmp_path / "train" / "000002.bin").exists()
    assert np.fromfile(tmp_path / "train" / "000001.bin", dtype="<u2").tolist() == [4]
    assert np.fromfile(tmp_path / "train" / "doc_starts.u64", dtype="<u8").tolist() == [0]


def test_max_tokens_caps_the_dataset(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_mod, "BATCH_CHARS", 5000)  # several batches: reading stops soon after the cap
    kw = dict(tokenizer="char", val_fraction=0.3, shard_tokens=3000, progress=False)
    full = prepare(str(small_corpus), out=tmp_path / "full", **kw)
    capped = prepare(str(small_corpus), out=tmp_path / "capped", max_tokens=20_000, **kw)
    meta = read_meta(capped)
    assert meta["tokens"] == 20_000 and meta["settings"]["max_tokens"] == 20_000 and meta["capped"] is True
    for split in ("train", "val"):  # the same documents in the same order, the last one cut
        toks = _tokens(capped, split)
        assert len(toks) and (toks == _tokens(full, split)[: len(toks)]).all()
        assert meta["splits"][split]["documents"] == len(doc_starts(capped, split))
    assert meta["sources"][0]["documents"] < read_meta(full)["sources"][0]["documents"]  # what was read, not all
    more = prepare(str(small_corpus), out=tmp_path / "more", max_tokens=10**9, **kw)  # a cap never reached
    assert read_meta(more)["capped"] is False
    assert all((_tokens(more, s) == _tokens(full, s)).all() for s in ("train", "val"))


def test_max_tokens_still_gives_val_some_tokens(small_corpus, tmp_path):
    """The cap comes before any document went to val (a tiny fraction; one text file split by position): the last
    val_fraction of the tokens go to val, starting with end-of-text, and the total stays the cap."""
    one = tmp_path / "one.txt"
    one.write_text("".join(p.read_text() for p in sorted(small_corpus.iterdir())))
    for source, fraction in ((small_corpus, 1e-6), (one, 0.1)):
        out = prepare(str(source), tokenizer="char", out=tmp_path / f"c{fraction}", val_fraction=fraction,
                      max_tokens=5000, progress=False)  # fmt: skip
        meta, tok = read_meta(out), load_dataset_tokenizer(out)
        val = _tokens(out, "val")
        assert meta["tokens"] == 5000 and len(val) == max(2, round(fraction * 5000)) and meta["capped"]
        assert val[0] == tok.eot_id and doc_starts(out, "val").tolist()[0] == 0 and meta["splits"]["val"]["bytes"] > 0
        assert len(_tokens(out, "train")) + len(val) == 5000


def test_max_tokens_must_be_positive(small_corpus, tmp_path, run_cli, capsys):
    for bad in (0, -5, True, 2.5):
        with pytest.raises(DataError, match="max_tokens must be a whole number of at least 1"):
            prepare(str(small_corpus), tokenizer="char", out=tmp_path / "x", max_tokens=bad, progress=False)
    with pytest.raises(SystemExit) as e:  # argparse refuses it, in one line
        run_cli("prepare", small_corpus, "--out", tmp_path / "x", "--max-tokens", "0")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: slm prepare: argument --max-tokens: must be >= 1")
    assert err.count("\n") == 1 and not (tmp_path / "x").exists()


@pytest.fixture
def local_hf_dataset(tmp_path):
    """A dataset folder `datasets.load_dataset` reads offline, with train, validation and test splits."""
    root = tmp_path / "hfset"
    root.mkdir()
    for split, n in (("train", 6), ("validation", 4), ("test", 3)):
        lines = [json.dumps({"text": f"{split} document number {i}\n" * 20}) for i in range(n)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_hf_source_reads_the_split_it_names(local_hf_dataset, tmp_path, run_cli):
    """hf:<dataset>[:<config>[:<split>]]: the train split unless named; a split that is not there is one line."""
    for split, n in (("", 6), ("validation", 4), ("test", 3)):
        source = f"hf:{local_hf_dataset}" + (f"::{split}" if split else "")
        out = prepare(source, tokenizer="char", out=tmp_path / f"ds-{split}", val_fraction=0.3, progress=False)
        tok = load_dataset_tokenizer(out)
        docs = _docs_of(out, "train", tok) + _docs_of(out, "val", tok)
        assert len(docs) == n and {d.split(" ")[0] for d in docs} == {split or "train"}
        assert read_meta(out)["sources"][0]["kind"] == "hf" and read_meta(out)["sources"][0]["documents"] == n
    _assert_cli_error(run_cli, [f"hf:{local_hf_dataset}::nope", "--tokenizer", "char"], "Bad split: nope", tmp_path)


def test_hf_source_failing_mid_stream_is_one_line(monkeypatch, tmp_path, run_cli):
    import datasets

    def records():
        yield {"text": "a first document\n" * 50}
        raise ConnectionError("Connection reset by peer\nretry later")

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: records())
    why = "reading hf:org/set failed after 1 records (ConnectionError: Connection reset by peer); run again"
    _assert_cli_error(run_cli, ["hf:org/set", "--tokenizer", "char"], why, tmp_path)
