"""Stream mode (data.stream): exact resume of the loader and of training (parquet directory, jsonl), a val set that
does not move, mixture proportions, worker processes equal the thread, and the bad inputs."""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import STDLIB_DIR, at_train_step, raising, tiny_overrides

from slmkit.base.config import ConfigError
from slmkit.base.metrics import read_metrics
from slmkit.base.tokenizer import CharTokenizer
from slmkit.data import stream_reader
from slmkit.data.sources import DataError
from slmkit.data.stream import MixSource, StreamLoader
from slmkit.data.stream_data import ValLoader, parse_mix, val_tokens
from slmkit.data.stream_reader import Reader, is_held_out, plan_identity, plan_units
from slmkit.engine.train import train


def _texts(n: int, skip: int = 0, chars: int = 200) -> list[str]:
    files = sorted(STDLIB_DIR.glob("*.py"))[skip : skip + n]
    return [f.read_text(encoding="utf-8", errors="replace")[:chars] for f in files]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A parquet directory (3 files x row groups of 8 rows), a jsonl file, a second jsonl; their char tokenizer."""
    root = tmp_path_factory.mktemp("stream")
    texts = _texts(120)
    (root / "pq").mkdir()
    for i in range(3):
        part = texts[i * 30 : (i + 1) * 30]
        table = pa.table({"id": list(range(len(part))), "text": part})
        pq.write_table(table, root / "pq" / f"part-{i}.parquet", row_group_size=8)
    with open(root / "docs.jsonl", "w") as f:
        for t in texts[90:]:
            f.write(json.dumps({"text": t}) + "\n")
    other = _texts(40, skip=130)
    with open(root / "other.jsonl", "w") as f:
        for t in other:
            f.write(json.dumps({"text": t}) + "\n")
    tok = CharTokenizer.from_texts(texts + other)
    tok_dir = tok.save(root / "tok")
    return {"root": root, "pq": str(root / "pq"), "jsonl": str(root / "docs.jsonl"),
            "other": str(root / "other.jsonl"), "tok": tok, "tok_dir": str(tok_dir)}  # fmt: skip


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir()  # a cache of its own for each test, but the eval 13-gram index built once
    (tmp_path / "cache" / "decontam").symlink_to(Path(os.environ["SLM_CACHE_DIR"]) / "decontam")
    (Path(os.environ["SLM_CACHE_DIR"]) / "decontam").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("SLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(stream_reader, "RANGE_BYTES", 2 << 10)  # several jsonl units from a small file


def _source(name, src, weight=1.0):
    units = plan_units(src, "text")
    return MixSource(name, src, weight, units, plan_identity(units))


def _loader(corpus, *sources, B=4, T=32, seed=3, buffer=5, workers=0, rank=0, world=1):
    reader = Reader(corpus["tok_dir"], "text", 0.1, 7, "<u2")
    return StreamLoader(list(sources), reader, corpus["tok"], B, T, seed=seed, shuffle_buffer=buffer,
                        workers=workers, rank=rank, world_size=world)  # fmt: skip


def _batches(loader, n):
    return [loader.next_batch()[0].numpy().copy() for _ in range(n)]


@pytest.mark.parametrize("kind", ["pq", "jsonl"])
def test_loader_resume_is_exact_across_epochs(corpus, kind):
    """n batches straight equal k batches + state_dict + a new loader restored + n - k batches, past an epoch end."""
    src = _source(kind, corpus[kind])
    assert len(src.units) > 2  # row groups / byte ranges to shuffle
    whole = _loader(corpus, src)
    ref = _batches(whole, 200)
    assert whole.packers[0].pos.epoch >= 1, "the test should cross an epoch"
    first = _loader(corpus, src)
    got = _batches(first, 37)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint keeps
    again = _loader(corpus, src)
    again.load_state_dict(state)
    got += _batches(again, 200 - 37)
    for i, (a, b) in enumerate(zip(ref, got)):
        assert np.array_equal(a, b), f"batch {i} differs after resume"
    assert "tokens" not in json.dumps(state) or len(json.dumps(state)) < 2000  # a position, not data


def test_epochs_shuffle_files_and_documents(corpus):
    """Two epochs read the same documents in different orders; another seed gives another order."""
    src = _source("pq", corpus["pq"])
    loader = _loader(corpus, src)
    stream = loader.packers[0].stream
    docs = stream.documents(loader.packers[0].pos)
    first, second = [], []
    for e, _, _, _, tokens in docs:
        if e == 2:
            break
        (first if e == 0 else second).append(tokens.tobytes())
    assert sorted(first) == sorted(second) and first != second
    assert stream.epoch_units(0) != stream.epoch_units(1)


def test_worker_processes_give_the_same_batches(corpus):
    src = _source("jsonl", corpus["jsonl"])
    threaded = _batches(_loader(corpus, src), 10)
    procs = _loader(corpus, src, workers=1)
    try:
        assert all(np.array_equal(a, b) for a, b in zip(threaded, _batches(procs, 10)))
    finally:
        procs.ex.shutdown(cancel_futures=True)


def test_val_set_is_fixed_held_out_and_cached(corpus):
    """The val tokens are the held-out documents (hash of the text), the same on every call (from the cache), and no
    training document is held out."""
    src = _source("pq", corpus["pq"])
    reader = Reader(corpus["tok_dir"], "text", 0.1, 7, "<u2")
    a = val_tokens([src], reader, corpus["tok"], 5000, 33, seed=7, fraction=0.1)
    assert len(list((Path(os.environ["SLM_CACHE_DIR"]) / "stream-val").glob("*.npy"))) == 1
    b = val_tokens([src], reader, corpus["tok"], 5000, 33, seed=7, fraction=0.1)
    assert np.array_equal(a, b) and 33 <= len(a) <= 5000
    held = [t for t in _texts(90) if is_held_out(t, 0.1, 7)]
    assert held and corpus["tok"].decode(a[1:200].tolist()) == held[0][:199]
    loader = _loader(corpus, src)  # training never sees a held-out document
    docs = loader.packers[0].stream.documents(loader.packers[0].pos)
    seen = {next(docs)[4].tobytes() for _ in range(80)}
    held_ids = {np.array([corpus["tok"].eot_id, *corpus["tok"].encode(t)], dtype=np.uint16).tobytes() for t in held}
    assert not seen & held_ids
    v = ValLoader(a, 2, 32)
    x1, _ = v.next_batch()
    assert np.array_equal(x1.numpy(), ValLoader(a, 2, 32).next_batch()[0].numpy())


def test_mixture_proportions_within_2_percent_over_1m_tokens(corpus):
    sources = [_source("pq", corpus["pq"], 0.7), _source("docs", corpus["jsonl"], 0.2),
               _source("other", corpus["other"], 0.1)]  # fmt: skip
    loader = _loader(corpus, *sources, B=64, T=64, buffer=50)
    n = 0
    while n < 1_000_000:
        loader.next_batch()
        n += 64 * 64
    m = loader.metrics()
    total = sum(m[f"data/tokens/{s}"] for s in ("pq", "docs", "other"))
    for name, w in (("pq", 0.7), ("docs", 0.2), ("other", 0.1)):
        share = m[f"data/tokens/{name}"] / total
        assert abs(share - w) < 0.02 * w, f"{name}: {share:.4f} of the tokens, weight {w}"
    state = loader.state_dict()
    again = _loader(corpus, *sources, B=64, T=64, buffer=50)
    again.load_state_dict(json.loads(json.dumps(state)))
    assert np.array_equal(loader.next_batch()[0].numpy(), again.next_batch()[0].numpy())


def test_parse_mix_and_bad_weights():
    assert parse_mix(["hf:a/b:c=2", "/x/wiki=1", "/y/wiki=1"]) == [("b", "hf:a/b:c", 2.0), ("wiki", "/x/wiki", 1.0),
                                                                     ("wiki-2", "/y/wiki", 1.0)]  # fmt: skip
    for bad in ("/x=0", "/x=-1", "/x", "/x=abc"):
        with pytest.raises(DataError, match="positive weight"):
            parse_mix([bad])


# ---------------------------------------------------------------------------------------------------------
# Training: resume equals the uninterrupted run.


def _run(corpus, out, source, *extra, name):
    return [*tiny_overrides("train.max_steps=8", "train.eval_every=4", "train.ckpt_every=4", "train.threads=1",
                            f"tokenizer.kind={corpus['tok_dir']}"),
            "data.stream=true", f"data.source={source}", "data.stream_workers=0", "data.shuffle_buffer=5",
            "data.val_fraction=0.1", "data.val_tokens=4000", f"train.out_dir={out}", f"train.name={name}",
            *extra]  # fmt: skip


def _losses(run):
    return {e["step"]: e["train/loss"] for e in read_metrics(run) if "train/loss" in e}


@pytest.mark.parametrize("kind", ["pq", "jsonl"])
def test_training_resume_equals_uninterrupted(corpus, tmp_path, kind, one_thread, monkeypatch):
    """pq: the process dies in step 7 (as kill -9: no save; the checkpoint of step 4 is resumed); jsonl: stopped after
    step 3 (a clean stop saves)."""
    whole = train(overrides=_run(corpus, tmp_path, corpus[kind], name="whole"), progress=False)
    if kind == "pq":
        with monkeypatch.context() as m:
            at_train_step(m, 7, raising(RuntimeError("killed")))
            with pytest.raises(RuntimeError, match="killed"):
                train(overrides=_run(corpus, tmp_path, corpus[kind], name="part"), progress=False)
        part = tmp_path / "part"
    else:
        part = train(overrides=_run(corpus, tmp_path, corpus[kind], name="part"), progress=False, stop_after=3)
    part = train(resume=part, progress=False)
    a, b = _losses(whole), _losses(part)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    diff = max(abs(a[s] - b[s]) for s in a)
    assert diff < 1e-6, f"max abs loss diff {diff}"
    events = read_metrics(whole)
    name = {"pq": "pq", "jsonl": "docs"}[kind]  # the folder / file stem
    assert any(f"data/tokens/{name}" in e for e in events) and any("data/docs" in e for e in events)
    assert not any(p.suffix in (".bin", ".npy") for p in whole.rglob("*"))  # nothing of the corpus in the run


def test_resume_with_changed_source_is_refused_unless_allowed(corpus, tmp_path, one_thread):
    run = train(overrides=_run(corpus, tmp_path, corpus["jsonl"], name="r"), progress=False, stop_after=2)
    with pytest.raises(ConfigError, match="data.source"):
        train(resume=run, overrides=[f"data.source={corpus['other']}"], progress=False)
    train(resume=run, overrides=[f"data.source={corpus['other']}"], allow_changed=True, progress=False,
          stop_after=1)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2.


def test_parquet_without_text_column_names_its_columns(tmp_path):
    pq.write_table(pa.table({"body": ["x"], "id": [1]}), tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body, id\)"):
        plan_units(str(tmp_path / "a.parquet"), "text")


def test_bad_sources_exit_2(corpus, tmp_path, run_cli):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join("not json\n" if i % 2 else json.dumps({"text": "hello there"}) + "\n" for i in range(60)))
    base = ["train", *_run(corpus, tmp_path, "x", name="b"), "--no-progress"]
    for source, message in ((empty, "no readable documents"), (bad, r"first bad: .*bad\.jsonl:2\)"),
                            (tmp_path / "missing", "no such file")):  # fmt: skip
        code, _, err = run_cli(*base, f"data.source={source}")
        assert code == 2, err
        assert code == 2 and "Traceback" not in err and re.search(message, err.strip().splitlines()[-1]), err
    code, _, err = run_cli(*base, f"data.mix=[{corpus['jsonl']}=0.5,{tmp_path / 'nope'}=0.5]")
    assert code == 2 and "data.mix source" in err, err
    code, _, err = run_cli(*base, f"data.mix=[{corpus['jsonl']}=0]")
    assert code == 2 and "positive weight" in err, err
    assert not (tmp_path / "b").exists()  # no run dir left behind


def test_hf_without_datasets_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match="needs the Hugging Face `datasets` package"):
        next(stream_reader.read_hf("hf:some/set", "text"))


def test_each_rank_restores_its_own_position(corpus):
    """With 2 ranks the checkpoint holds both positions ({"ranks": [...]}, as the trainer gathers them); each rank
    continues from its own, and a different process count is refused."""
    src = _source("pq", corpus["pq"])
    ref = [_batches(_loader(corpus, src, rank=r, world=2), 20) for r in (0, 1)]
    first = [_loader(corpus, src, rank=r, world=2) for r in (0, 1)]
    got = [_batches(ld, 7) for ld in first]
    state = {"ranks": [ld.state_dict() for ld in first]}
    for r in (0, 1):
        again = _loader(corpus, src, rank=r, world=2)
        again.load_state_dict(state)
        got[r] += _batches(again, 13)
        assert all(np.array_equal(a, b) for a, b in zip(ref[r], got[r])), f"rank {r} differs after resume"
    assert not np.array_equal(ref[0][0], ref[1][0])
    with pytest.raises(DataError, match="saved by 2 processes"):
        _loader(corpus, src).load_state_dict(state)


def test_hf_source_streams_and_resumes(corpus, monkeypatch):
    """hf:<dataset>:<config>:<split> is streamed with datasets (faked here: tests stay offline) and resumes exactly."""
    import datasets

    calls = []

    def fake_load(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        return iter([{"text": t} for t in _texts(60)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    src = _source("hf", "hf:org/set:cfg:validation")
    ref = _batches(_loader(corpus, src), 60)
    first = _loader(corpus, src)
    got = _batches(first, 25)
    again = _loader(corpus, src)
    again.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got += _batches(again, 35)
    assert all(np.array_equal(a, b) for a, b in zip(ref, got))
    assert calls[0] == ("org/set", "cfg", "validation", True)
    reader = Reader(corpus["tok_dir"], "text", 0.1, 7, "<u2")
    assert len(val_tokens([src], reader, corpus["tok"], 500, 33, seed=7, fraction=0.1)) == 500


def test_gzipped_jsonl_reads_the_same_documents(corpus, tmp_path):
    import gzip

    gz = tmp_path / "docs.jsonl.gz"
    gz.write_bytes(gzip.compress(Path(corpus["jsonl"]).read_bytes()))
    docs = {}
    for name, path in (("plain", corpus["jsonl"]), ("gz", str(gz))):
        loader = _loader(corpus, _source(name, path), buffer=1)
        stream = loader.packers[0].stream
        docs[name] = sorted(t[4].tobytes() for t in _one_epoch(stream))
    assert docs["plain"] == docs["gz"] and len(docs["gz"]) > 20


def _one_epoch(stream):
    from slmkit.data.stream import Pos

    for doc in stream.documents(Pos()):
        if doc[0] > 0:
            return
        yield doc


def test_fim_windows_are_deterministic_and_resume_exactly(corpus):
    """data.fim_rate in stream mode: each window rearranged per (seed, document, offset), the same after a resume."""
    from slmkit.data.fim import FimSpec, ensure_fim_tokens

    tok = ensure_fim_tokens(CharTokenizer.from_texts(_texts(120) + _texts(40, skip=130)))
    spec = FimSpec.from_tokenizer(tok, 0.9, 0.5)
    src = _source("jsonl", corpus["jsonl"])

    def make():
        reader = Reader(corpus["tok_dir"], "text", 0.1, 7, "<u2")
        return StreamLoader([src], reader, tok, 4, 32, seed=3, shuffle_buffer=5, fim=spec)

    plain = _batches(_loader(corpus, src), 30)
    ref = _batches(make(), 30)
    assert any((b >= spec.prefix_id).any() for b in ref) and not any((b >= spec.prefix_id).any() for b in plain)
    first = make()
    got = _batches(first, 11)
    again = make()
    again.load_state_dict(json.loads(json.dumps(first.state_dict())))
    got += _batches(again, 19)
    assert all(np.array_equal(a, b) for a, b in zip(ref, got))


def test_the_report_shows_tokens_per_mixture_source(corpus, tmp_path, one_thread):
    """`slm report` of a mixture run: each source's training tokens and share next to its data.mix weight."""
    from slmkit.study.report import build_report

    mix = f"data.mix=[{corpus['pq']}=0.75,{corpus['jsonl']}=0.25]"
    run = train(overrides=_run(corpus, tmp_path, corpus["jsonl"], mix, name="mixed"), progress=False)
    blocks = build_report(run, samples=0)
    at = blocks.index(("h2", "Data per source"))
    table = blocks[at + 2]
    assert table[1] == ["source", "tokens", "share", "data.mix weight"]
    rows = {r[0]: r for r in table[2]}
    assert set(rows) == {"pq", "docs"} and rows["pq"][3] == "75.0%" and rows["docs"][3] == "25.0%"
    assert sum(float(r[2].rstrip("%")) for r in rows.values()) == pytest.approx(100, abs=0.2)
