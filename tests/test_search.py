"""slm index / slm search: documents split into passages within the context, exact cosine search that finds a
passage by its own text, the query instruction, file/line/row provenance, atomic writes, and bad input (exit 2)."""

import json

import numpy as np
import pytest
from sft_helpers import base_run, make_corpus

import slmkit.ship.search as search_mod
from slmkit.data.sources import DataError
from slmkit.engine.embedding import embed_texts
from slmkit.runs.checkpoint import load_model
from slmkit.ship.search import (
    Document,
    SearchError,
    SearchIndex,
    build_index,
    read_documents,
    search,
    split_passages,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TOPICS = {
    "rivers.txt": "The river runs to the sea.\nIt carries stone and sand.\n\nIn spring the river floods the green "
    "fields near the house.\n",
    "bread.txt": "Bread is made of flour, water and salt.\n\nThe baker lights the oven before light.\n",
    "clouds.txt": "A cloud is water in the air.\n\n\nClouds are white in the light and grey before rain.\n",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, stdlib_dir):
    root = tmp_path_factory.mktemp("search")
    return base_run(root, make_corpus(root, stdlib_dir))


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs") / "docs"
    d.mkdir()
    for name, text in TOPICS.items():
        (d / name).write_text(text, encoding="utf-8")
    (d / "notes.jsonl").write_text(json.dumps({"text": "an apple a day"}) + "\n\n" +
                                   json.dumps({"text": "stone house by the river"}) + "\n")  # fmt: skip
    (d / ".hidden.txt").write_text("never indexed")
    (d / "blob.bin").write_bytes(b"\0\1\2binary")
    return d


@pytest.fixture(scope="module")
def index(run, docs, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "docs.index"
    manifest = build_index(run, docs, out, progress=False)
    return out, manifest


def test_index_holds_unit_vectors_passages_and_a_manifest(run, index):
    out, m = index
    vectors = np.load(out / "vectors.npy")
    passages = [json.loads(line) for line in (out / "passages.jsonl").read_text().splitlines()]
    assert vectors.shape == (len(passages), m["dim"]) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    _, tok, cfg, _ = load_model(run)
    assert m["tokenizer"] == {"name": tok.name, "fingerprint": tok.fingerprint}
    assert m["pooling"] == cfg.embed.pooling and m["instruction"] == cfg.embed.instruction
    assert m["documents"] == 5 and m["passages"] == len(passages) and m["binary_skipped"] == 1
    assert m["chunk_tokens"] == cfg.model.block_size and m["truncated"] == 0
    assert isinstance(m["checkpoint_step"], int)
    assert not any("never indexed" in p["text"] for p in passages)
    jsonl = [p for p in passages if p["source"].endswith("notes.jsonl")]
    assert [(p["line"], p["text"]) for p in jsonl] == [(1, "an apple a day"), (3, "stone house by the river")]


def test_a_passage_is_found_by_its_own_text(index):
    out, _ = index
    passages = [json.loads(line) for line in (out / "passages.jsonl").read_text().splitlines()]
    idx = SearchIndex(out)
    hits = idx.query([p["text"] for p in passages], k=3)
    for p, h in zip(passages, hits):
        assert h[0]["id"] == p["id"] and h[0]["score"] == pytest.approx(1.0, abs=1e-4), (p, h[0])
        assert [x["rank"] for x in h] == [1, 2, 3] and h[0]["score"] >= h[1]["score"] >= h[2]["score"]
    assert len(idx.query(["river"], k=100)[0]) == len(passages)  # k above the index size: every passage, once


def test_scores_are_the_cosine_of_the_query_with_the_instruction(run, docs, tmp_path):
    out = tmp_path / "q.index"
    m = build_index(run, docs, out, instruction="query: ", progress=False)
    assert m["instruction"] == "query: "
    hits = search(out, "where does the river go?", k=2)
    model, tok, _, _ = load_model(run)
    q, _ = embed_texts(model, tok, ["where does the river go?"], instruction="query: ", pooling=m["pooling"])
    d, _ = embed_texts(model, tok, [h["text"] for h in hits], pooling=m["pooling"])
    assert np.allclose([h["score"] for h in hits], d @ q[0], atol=1e-5)


def test_long_documents_split_within_the_chunk_with_their_lines(run):
    model, tok, _, _ = load_model(run)
    paras = [f"paragraph {i} " + " ".join(["stone river"] * (2 + i % 5)) for i in range(12)]
    text = "\n\n".join(paras) + "\n" + "word " * 80  # the last paragraph alone is longer than the chunk
    passages = split_passages(Document(text, "long.txt", line=1, whole_file=True), 0, tok, 24)
    assert len(passages) > 3
    lines = text.splitlines()
    for p in passages:
        assert len(tok.encode(p.text)) <= 24 + 2, p.text  # + the rare merge across a join
        assert text[p.offset : p.offset + len(p.text)] == p.text
        assert p.text.split("\n")[0] in lines[p.line - 1]  # the file line where the passage starts
    covered = " ".join(" ".join(p.text.split()) for p in passages)
    assert covered == " ".join(text.split())  # every word once, in order
    short = split_passages(Document("a short text", "s.txt", line=1, whole_file=True), 0, tok, 24)
    assert [(p.text, p.offset, p.line) for p in short] == [("a short text", 0, 1)]


def test_chunked_index_and_parquet_rows(run, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    body = "\n\n".join(f"the river number {i} runs by the stone house" for i in range(10))
    pq.write_table(pa.table({"text": ["bread and light", body, ""], "id": [1, 2, 3]}), tmp_path / "a.parquet")
    m = build_index(run, tmp_path / "a.parquet", tmp_path / "p.index", chunk=20, progress=False)
    assert m["documents"] == 2 and m["chunk_tokens"] == 20 and m["passages"] > 2
    passages = [json.loads(line) for line in (tmp_path / "p.index" / "passages.jsonl").read_text().splitlines()]
    assert {p["row"] for p in passages} == {0, 1} and all("line" not in p for p in passages)
    assert {p["doc"] for p in passages if p["row"] == 1} == {1}
    top = search(tmp_path / "p.index", "bread and light", k=1)[0]
    assert top["row"] == 0 and top["offset"] == 0


def test_eos_pooling_leaves_room_for_end_of_text(run, docs, tmp_path):
    m = build_index(run, docs, tmp_path / "e.index", pooling="eos", chunk=16, progress=False)
    assert m["pooling"] == "eos" and m["chunk_tokens"] == 15
    assert search(tmp_path / "e.index", "bread", k=1)[0]["score"] <= 1.0001


def test_a_query_longer_than_the_context_is_refused(index):
    with pytest.raises(SearchError, match="the query has .* tokens .* at most 64"):
        search(index[0], "stone river " * 100)


def test_cli_index_and_search(run_cli, run, docs, tmp_path):
    out = tmp_path / "cli.index"
    code, _, err = run_cli("index", run, "--input", docs, "--out", out, "--no-progress")
    assert code == 0 and "indexed 5 documents" in err
    code, text, _ = run_cli("search", out, "Bread is made of flour, water and salt.", "-k", "2")
    assert code == 0 and text.splitlines()[0].strip().startswith("1. 0.99") and "bread.txt:1" in text.splitlines()[0]
    code, text, _ = run_cli("search", out, "river", "-k", "3", "--json")
    got = json.loads(text)
    assert code == 0 and got["query"] == "river" and [h["rank"] for h in got["hits"]] == [1, 2, 3]


def test_bad_input_is_one_line_and_exit_2(run_cli, run, docs, index, tmp_path, capsys):
    out, _ = index
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\n")
    cases = [
        (("index", run, "--input", blank, "--out", tmp_path / "x"), "no text to index"),
        (("index", run, "--input", tmp_path / "missing", "--out", tmp_path / "x"), "does not exist"),
        (("index", run, "--input", docs, "--out", out), "--overwrite"),
        (("index", run, "--input", docs, "--out", tmp_path / "x", "--chunk", "100000"), "exceeds the model's context"),
        (("search", out, "   "), "query is empty"),
        (("search", tmp_path / "nowhere", "river"), "does not exist"),
        (("search", docs, "river"), "not a search index"),
    ]
    for args, words in cases:
        code, _, err = run_cli(*args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as e:  # argparse refuses it
        run_cli("search", out, "river", "-k", "0")
    assert e.value.code == 2 and "argument -k: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SearchError, match="-k must be 1 or more"):
        search(out, "river", k=0)


def test_overwrite_replaces_only_an_index(run, docs, tmp_path):
    out = tmp_path / "o.index"
    build_index(run, docs, out, progress=False)
    m = build_index(run, docs, out, chunk=12, overwrite=True, progress=False)
    assert json.loads((out / "manifest.json").read_text())["chunk_tokens"] == m["chunk_tokens"] == 12
    other = tmp_path / "results"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(SearchError, match="not a search index"):
        build_index(run, docs, other, overwrite=True, progress=False)
    assert (other / "keep.txt").read_text() == "mine"


def test_a_failure_while_embedding_leaves_the_old_index_whole(run, docs, tmp_path, monkeypatch):
    out = tmp_path / "a.index"
    before = build_index(run, docs, out, progress=False)

    def broken(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr(search_mod, "embed_texts", broken)
    with pytest.raises(RuntimeError):
        build_index(run, docs, out, chunk=8, overwrite=True, progress=False)
    assert json.loads((out / "manifest.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.index"]  # no temporary left


def test_an_index_is_refused_with_another_tokenizer(run, index, tmp_path, stdlib_dir, run_cli):
    other = base_run(tmp_path, make_corpus(tmp_path, stdlib_dir), tokenizer="char", name="char")
    out, m = index
    code, _, err = run_cli("search", out, "river", "--run", other)
    _, tok, _, _ = load_model(other)
    assert code == 2 and m["tokenizer"]["fingerprint"] in err and tok.fingerprint in err, err
    assert search(out, "river", k=1, run=run)[0]["rank"] == 1  # the same run under its own name is fine


def test_read_documents_counts_what_it_skips(docs):
    stats = {}
    got = read_documents(docs, stats=stats)
    assert stats == {"binary_skipped": 1, "non_utf8_files": 0} and len(got) == 5
    assert sorted({d.source.rsplit("/", 1)[1] for d in got}) == ["bread.txt", "clouds.txt", "notes.jsonl",
                                                                   "rivers.txt"]  # fmt: skip
    latin = docs.parent / "latin1.txt"
    latin.write_bytes("café au lait".encode("latin-1"))
    stats = {}
    assert [d.text for d in read_documents(latin, stats=stats)] == ["caf\ufffd au lait"]
    assert stats == {"binary_skipped": 0, "non_utf8_files": 1}
    bad = docs.parent / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 has no string field 'text'"):
        read_documents(bad)
