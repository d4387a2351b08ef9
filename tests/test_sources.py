"""Corpus sources: files, directories, globs, jsonl, parquet, built-ins (offline and a mocked download), hf:."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import urllib.error

import pytest

from slmkit.data import sources
from slmkit.data.sources import BUILTINS, DataError, SourceStats, iter_documents, iter_texts


def _docs(source, **kw):
    stats = SourceStats(source)
    return list(iter_documents(str(source), stats=stats, **kw)), stats


def test_text_file_is_one_document_with_its_hash(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello\nworld\n", encoding="utf-8")
    docs, stats = _docs(path)
    assert [d.text for d in docs] == ["hello\nworld\n"] and docs[0].first and docs[0].split is None
    meta = stats.to_meta()
    assert meta["files"] == 1 and meta["documents"] == 1 and meta["bytes"] == path.stat().st_size
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_large_file_comes_in_line_pieces_and_splits_by_position(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK_BYTES", 64)
    lines = [f"line {i} é\n" for i in range(100)]
    path = tmp_path / "big.txt"
    path.write_text("".join(lines), encoding="utf-8")
    docs, _ = _docs(path)
    assert len(docs) > 5 and "".join(d.text for d in docs) == "".join(lines)
    assert docs[0].first and not any(d.first for d in docs[1:])
    assert all(d.text.endswith("\n") for d in docs)  # cut at line ends

    docs, stats = _docs(path, split_at=0.9)
    train = "".join(d.text for d in docs if d.split == "train")
    val = "".join(d.text for d in docs if d.split == "val")
    assert train + val == "".join(lines) and train.endswith("\n") and val
    cut = int(path.stat().st_size * 0.9)
    assert len(train.encode()) >= cut and len(train.encode()) - cut < len(lines[0].encode()) + 1
    assert [d.first for d in docs if d.split == "val"][0] is True  # val starts a new document
    assert stats.sha256 == "" and stats.to_meta()["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_directory_with_include_exclude_skips_hidden_and_pycache(tmp_path):
    root = tmp_path / "proj"
    for rel in ("a.py", "b.md", "sub/c.py", "sub/d_test.py", ".hidden/e.py", "__pycache__/f.py", ".g.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n", encoding="utf-8")
    docs, stats = _docs(root)
    assert [d.text for d in docs] == ["# a.py\n", "# b.md\n", "# sub/c.py\n", "# sub/d_test.py\n"]
    docs, stats = _docs(root, include=["*.py"], exclude=["*_test.py"])
    assert [d.text for d in docs] == ["# a.py\n", "# sub/c.py\n"] and stats.files == 2 and stats.kind == "directory"
    # the hash covers relative paths, sizes and contents, so it does not depend on where the folder is
    moved = tmp_path / "elsewhere"
    root.rename(moved)
    assert _docs(moved, include=["*.py"], exclude=["*_test.py"])[1].to_meta()["sha256"] == stats.to_meta()["sha256"]


def test_glob_source(small_corpus):
    docs, stats = _docs(f"{small_corpus}/s*.py")
    names = sorted(p.name for p in small_corpus.glob("s*.py"))
    assert stats.kind == "glob" and stats.files == len(names) == len(docs)
    with pytest.raises(DataError, match="no files match"):
        _docs(f"{small_corpus}/*.nothing")


def test_jsonl_text_field_bad_lines_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    good = [json.dumps({"body": f"doc {i}"}) for i in range(50)]
    path.write_text("\n".join(good[:20] + ["{not json", json.dumps({"other": 1}), ""] + good[20:]) + "\n")
    docs, stats = _docs(path, text_field="body")
    assert [d.text for d in docs] == [f"doc {i}" for i in range(50)]
    assert stats.bad_lines == 2 and stats.first_bad_line == f"{path}:21"


def test_jsonl_fails_past_threshold_with_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps({"text": "ok"})] * 5 + ["oops"] * 20) + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl:6"):
        _docs(path)


def test_parquet_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["one", "two", None, "three"], "n": [1, 2, 3, 4]}), path)
    docs, stats = _docs(path, text_field="content")
    assert [d.text for d in docs] == ["one", "two", "three"] and stats.bad_lines == 1
    with pytest.raises(DataError, match="no column 'text'"):
        _docs(path)


def test_non_utf8_decoded_with_replacement_binary_skipped(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (root / "blob.bin").write_bytes(b"\x89PNG\0\0\0data")
    (root / "ok.txt").write_text("fine \ufffd already\n", encoding="utf-8")  # a real U+FFFD is not an error
    docs, stats = _docs(root)
    assert [d.text for d in docs] == ["caf\ufffd\n", "fine \ufffd already\n"]
    assert stats.non_utf8_files == 1 and stats.binary_files_skipped == 1


def test_missing_path_is_a_data_error():
    with pytest.raises(DataError, match="no such file, directory or built-in corpus"):
        iter_documents("/nonexistent/corpus.txt")


def test_python_stdlib_builtin_offline(stdlib_dir):
    files = sources.stdlib_files()
    assert files == sorted(files) and len(files) > 300
    rels = [f.relative_to(stdlib_dir).parts for f in files]
    assert not any({"test", "tests", "site-packages"} & set(r[:-1]) for r in rels)
    assert next(iter_texts("python-stdlib", max_bytes=1)) == files[0].read_text(encoding="utf-8")


def test_builtin_from_data_dir_and_iter_texts_limit(need_data):
    text = (need_data("tinyshakespeare/input.txt") / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    docs, stats = _docs("tinyshakespeare")
    assert "".join(d.text for d in docs) == text and stats.sha256 == ""
    assert stats.to_meta()["sha256"] == BUILTINS["tinyshakespeare"].sha256[0]
    assert sum(len(t) for t in iter_texts("tinyshakespeare", max_bytes=100_000)) < 2 * sources.BLOCK_BYTES


def test_wikitext_is_split_into_articles(need_data):
    need_data("wikitext-2/valid.txt", "wikitext-2/test.txt")
    docs, stats = _docs("wikitext-2")
    assert len(docs) > 50 and stats.files == 2
    heads = [d.text.lstrip(" \n") for d in docs]  # a file starts with a blank line
    assert all(h.startswith("= ") and not h.startswith("= = ") for h in heads)


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def test_builtin_download_is_verified_and_cached(tmp_path, monkeypatch):
    content = b"To be, or not to be\n"
    spec = BUILTINS["tinyshakespeare"]
    monkeypatch.setitem(BUILTINS, "tinyshakespeare", sources.Builtin(spec.name, spec.description, spec.files,
                        spec.urls, (hashlib.sha256(content).hexdigest(),)))  # fmt: skip
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("SLM_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: calls.append(url) or _Response(content))
    assert [d.text for d in iter_documents("tinyshakespeare")] == [content.decode()]
    assert calls == list(spec.urls) and (tmp_path / "cache" / "tinyshakespeare" / "input.txt").read_bytes() == content
    list(iter_documents("tinyshakespeare"))
    assert len(calls) == 1  # cached: downloaded once


def test_builtin_download_bad_hash_or_no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("SLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: _Response(b"tampered"))
    with pytest.raises(DataError, match="sha256"):
        iter_documents("tinystories")
    assert not list((tmp_path / "cache").rglob("*.txt"))  # nothing half-written

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match=r"empty/wikitext-2/valid\.txt .*put the file in"):
        iter_documents("wikitext-2")


def test_hf_source_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(DataError, match="pip install datasets"):
        list(iter_documents("hf:HuggingFaceFW/fineweb-edu:sample-10BT"))
