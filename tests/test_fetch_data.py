"""scripts/fetch_data.py (`make data`) offline: downloads from file:// and 127.0.0.1 URLs, the sha256 check, the
"already present" path, and the real pins against the local copy of the shared data."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import FETCH

CONTENT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
SHA = hashlib.sha256(CONTENT).hexdigest()


@pytest.fixture
def source(tmp_path) -> str:
    """A file:// URL of CONTENT."""
    path = tmp_path / "src" / "input.txt"
    path.parent.mkdir()
    path.write_bytes(CONTENT)
    return path.as_uri()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_fetch_verifies_then_reuses_what_is_present(tmp_path, source):
    out = tmp_path / "data"
    assert FETCH.fetch("tinyshakespeare/input.txt", source, SHA, out) == "fetched"
    assert (out / "tinyshakespeare" / "input.txt").read_bytes() == CONTENT
    gone = (tmp_path / "nowhere.txt").as_uri()  # a second call must not download: this URL would fail
    assert FETCH.fetch("tinyshakespeare/input.txt", gone, SHA, out) == "present"
    assert _leftovers(out) == ["input.txt"]


def test_a_wrong_hash_is_refused_and_nothing_is_left(tmp_path, source):
    out = tmp_path / "data"
    with pytest.raises(FETCH.FetchError, match=f"has sha256 {SHA}, expected 0+; not kept"):
        FETCH.fetch("x/input.txt", source, "0" * 64, out)
    assert _leftovers(out) == []


def test_a_damaged_file_is_downloaded_again(tmp_path, source):
    dest = tmp_path / "data" / "x" / "input.txt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(CONTENT[:-5])
    assert FETCH.fetch("x/input.txt", source, SHA, tmp_path / "data") == "fetched"
    assert dest.read_bytes() == CONTENT and _leftovers(dest.parent) == ["input.txt"]


def test_http_download_and_http_error(tmp_path):
    """A real HTTP round trip on 127.0.0.1: 200 is fetched and checked, 404 is a one-line FetchError."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "input.txt").write_bytes(CONTENT)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path / "www"), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert FETCH.fetch("a/input.txt", f"{base}/input.txt", SHA, tmp_path / "data") == "fetched"
        with pytest.raises(FETCH.FetchError, match=r"missing\.txt: HTTPError: HTTP Error 404") as e:
            FETCH.fetch("a/missing.txt", f"{base}/missing.txt", SHA, tmp_path / "data")
        assert "\n" not in str(e.value)
    finally:
        server.shutdown()
        server.server_close()
    assert _leftovers(tmp_path / "data") == ["input.txt"]


def test_main_reports_each_file_and_fails_when_one_fails(tmp_path, source, monkeypatch, capsys):
    monkeypatch.setattr(FETCH, "FILES", {"a/input.txt": (source, SHA), "b/input.txt": (source, "0" * 64)})
    assert FETCH.main(["--out", str(tmp_path / "data")]) == 1
    out, err = capsys.readouterr()
    assert "fetched  a/input.txt" in out and "1 of 2 files in" in out and "not fetchable" in out
    assert err.startswith("FAILED   b/input.txt: ") and err.count("\n") == 1
    monkeypatch.setattr(FETCH, "FILES", {"a/input.txt": (source, SHA)})
    assert FETCH.main(["--out", str(tmp_path / "data")]) == 0
    assert "present  a/input.txt" in capsys.readouterr().out


def test_the_file_table():
    """tiktoken finds its files under the sha1 of their URL; the conftest skip reasons rely on GPT2_FILES."""
    for rel in FETCH.GPT2_FILES:
        url, _ = FETCH.FILES[rel]
        assert rel == "tiktoken_cache/" + hashlib.sha1(url.encode()).hexdigest()
    assert len(FETCH.GPT2_FILES) == 2 and not set(FETCH.FILES) & set(FETCH.NOT_FETCHABLE)
    assert all(url.startswith("https://") and len(sha) == 64 for url, sha in FETCH.FILES.values())


def test_the_pins_match_the_shared_data(need_data, tmp_path):
    """The script run on a folder that already holds the shared data's files: every pin matches, nothing is
    downloaded (symlinks to the local copies, so this runs offline)."""
    data = need_data(*FETCH.FILES)
    out = tmp_path / "data"
    for rel in FETCH.FILES:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).symlink_to(data / rel)
    proc = subprocess.run([sys.executable, str(Path(FETCH.__file__)), "--out", str(out)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("present  ") == len(FETCH.FILES) and "fetched" not in proc.stdout
