"""TokenLoader: windows match the token stream, determinism, exact resume, rank disjointness, document alignment."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slmkit.base.atomic import atomic_write_json
from slmkit.data.loader import TokenLoader
from slmkit.data.prepare import prepare
from slmkit.data.sources import DataError

EOT = 0


def make_positions_dataset(root, n_tokens: int, shard_tokens: int, doc_every: int = 0):
    """A dataset whose token at position i is i (uint32), so a batch tells where its windows came from.

    With doc_every > 0 a document starts every `doc_every` tokens; its first token is set to EOT (0).
    """
    (root / "train").mkdir(parents=True)
    tokens = np.arange(n_tokens, dtype=np.uint32)
    starts = np.arange(0, n_tokens, doc_every or n_tokens, dtype=np.uint64)
    tokens[starts.astype(np.int64)] = EOT
    shards = []
    for i, lo in enumerate(range(0, n_tokens, shard_tokens)):
        name = f"train/{i:06d}.bin"
        tokens[lo : lo + shard_tokens].astype("<u4").tofile(root / name)
        shards.append({"file": name, "tokens": len(tokens[lo : lo + shard_tokens])})
    starts.astype("<u8").tofile(root / "train" / "doc_starts.u64")
    split = {"tokens": n_tokens, "documents": len(starts), "bytes": 0, "shards": shards}
    atomic_write_json(root / "meta.json", {"dtype": "uint32", "splits": {"train": split}, "tokenizer": {}})
    return root


@pytest.fixture(scope="module")
def positions(tmp_path_factory):
    return make_positions_dataset(tmp_path_factory.mktemp("pos"), n_tokens=20_000, shard_tokens=3_001)


@pytest.fixture(scope="module")
def docs_ds(tmp_path_factory):
    return make_positions_dataset(tmp_path_factory.mktemp("docs"), 20_000, 4_000, doc_every=97)


def _starts(x: torch.Tensor) -> list[int]:
    return x[:, 0].tolist()


def test_windows_are_slices_of_the_stream_across_shards(positions):
    loader = TokenLoader(positions, "train", batch_size=32, block_size=64, seed=3)
    for _ in range(20):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (32, 64) and x.dtype == y.dtype == torch.int64
        assert (x == x[:, :1] + torch.arange(64)).all() and (y == x + 1).all()  # consecutive tokens, y shifted
        assert int(x.max()) + 1 < 20_000
    assert loader.num_tokens == 20_000


def test_prepared_dataset_batches(small_corpus, tmp_path, gpt2_files):
    out = prepare(str(small_corpus), tokenizer="gpt2", out=tmp_path / "ds", shard_tokens=4096, progress=False)
    x, y = TokenLoader(out, "train", 4, 32).next_batch()
    assert (x[:, 1:] == y[:, :-1]).all() and int(x.max()) < 50257
    x, _ = TokenLoader(out, "val", 2, 16, mode="sequential").next_batch()
    assert x[0, 0] == 50256  # a split starts with end-of-text


def test_random_is_deterministic_for_a_seed(positions):
    a = [_starts(TokenLoader(positions, "train", 8, 32, seed=1).next_batch()[0]) for _ in range(2)]
    assert a[0] == a[1]
    assert a[0] != _starts(TokenLoader(positions, "train", 8, 32, seed=2).next_batch()[0])


@pytest.mark.parametrize(
    "mode,align", [("random", False), ("sequential", False), ("random", True), ("sequential", True)]
)
def test_exact_resume(positions, docs_ds, mode, align):
    ds = docs_ds if align else positions
    kw = dict(seed=5, mode=mode, align_to_docs=align)
    full = TokenLoader(ds, "train", 8, 48, **kw)
    expected = [full.next_batch() for _ in range(40)]
    first = TokenLoader(ds, "train", 8, 48, **kw)
    for _ in range(15):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # JSON-serialisable
    resumed = TokenLoader(ds, "train", 8, 48, **kw)
    resumed.load_state_dict(state)
    for i in range(15, 40):
        x, y = resumed.next_batch()
        assert torch.equal(x, expected[i][0]) and torch.equal(y, expected[i][1]), f"batch {i} differs"


def test_rank_zero_state_restores_every_rank(positions):
    """The trainer saves rank 0's loader state only; every rank resumes from it exactly."""
    for mode in ("random", "sequential"):
        kw = dict(seed=4, mode=mode, world_size=2)
        saver = TokenLoader(positions, "train", 4, 32, rank=0, **kw)
        for _ in range(7):
            saver.next_batch()
        full = TokenLoader(positions, "train", 4, 32, rank=1, **kw)
        expected = [full.next_batch()[0] for _ in range(10)][7:]
        resumed = TokenLoader(positions, "train", 4, 32, rank=1, **kw)
        resumed.load_state_dict(saver.state_dict())
        assert all(torch.equal(resumed.next_batch()[0], e) for e in expected)


def test_state_from_another_setup_is_refused(positions):
    state = TokenLoader(positions, "train", 8, 32).state_dict()
    with pytest.raises(DataError, match="block_size 32 -> 16"):
        TokenLoader(positions, "train", 8, 16).load_state_dict(state)


def test_sequential_walks_in_order_and_wraps(positions):
    loader = TokenLoader(positions, "train", 4, 100, mode="sequential")
    seen = []
    while loader.epoch == 0:
        seen += _starts(loader.next_batch()[0])
    n_windows = (20_000 - 1) // 100
    assert seen[:n_windows] == [i * 100 for i in range(n_windows)]
    assert seen[n_windows:] == [i * 100 for i in range(len(seen) - n_windows)]  # the next pass starts again


def test_ranks_take_disjoint_windows(positions):
    world = 3
    for mode in ("random", "sequential"):
        covered = []
        for rank in range(world):
            loader = TokenLoader(positions, "train", 16, 40, seed=9, mode=mode, rank=rank, world_size=world)
            toks = set()
            for _ in range(10):
                x, y = loader.next_batch()
                toks |= set(x.flatten().tolist()) | set(y.flatten().tolist())
            covered.append(toks)
        for a in range(world):
            for b in range(a + 1, world):
                overlap = covered[a] & covered[b]
                if mode == "sequential":  # consecutive windows share their boundary token only
                    overlap = {t for t in overlap if t % 40}
                assert not overlap, (mode, a, b, sorted(overlap)[:5])
    with pytest.raises(DataError, match="too small for 200 ranks"):
        TokenLoader(positions, "train", 2, 40, rank=199, world_size=200)


def test_align_to_docs_starts_at_document_starts(docs_ds):
    for mode in ("random", "sequential"):
        for rank in range(2):
            loader = TokenLoader(docs_ds, "train", 16, 64, mode=mode, align_to_docs=True, rank=rank, world_size=2)
            for _ in range(5):
                x, _ = loader.next_batch()
                assert (x[:, 0] == EOT).all()
                starts = (x[:, 1] - 1).tolist()  # token i+1 has value i+1 within a document
                assert all(s % 97 == 0 and (s // 97) % 2 == rank for s in starts)


def test_bad_inputs(positions, tmp_path):
    with pytest.raises(DataError, match="no split 'val'"):
        TokenLoader(positions, "val", 2, 8)
    with pytest.raises(DataError, match="fewer than one window"):
        TokenLoader(positions, "train", 2, 20_000)
    with pytest.raises(DataError, match="unknown loader mode"):
        TokenLoader(positions, "train", 2, 8, mode="shuffle")
    with pytest.raises(DataError, match="no dataset directory"):
        TokenLoader(tmp_path / "missing", "train", 2, 8)


def test_many_shards_are_opened_lazily_and_a_few_at_a_time(tmp_path, monkeypatch):
    """2,000 shards load without 2,000 open files: shards are mapped on first use, at most MAX_OPEN at a time, and
    the windows are the same slices of the stream as ever."""
    from slmkit.data.loader import LazyShards

    ds = make_positions_dataset(tmp_path / "many", n_tokens=40_000, shard_tokens=20)  # 2,000 shards
    monkeypatch.setattr(LazyShards, "MAX_OPEN", 8)
    loader = TokenLoader(ds, "train", batch_size=4, block_size=50, seed=1)
    assert len(loader._shards._open) == 0  # nothing mapped before the first batch
    for _ in range(20):
        x, y = loader.next_batch()
        assert len(loader._shards._open) <= 8
        for row_x, row_y in zip(x.tolist(), y.tolist()):  # token i is i: each row is a consecutive slice
            assert row_x == list(range(row_x[0], row_x[0] + 50)) and row_y == [t + 1 for t in row_x]
