#!/usr/bin/env python3
"""Fetch the public data files the tests need into data/shared/ (git-ignored), each checked against a pinned sha256.

`make data` runs this. The tests read $SLM_DATA_DIR when it is set and this folder otherwise, and skip a test whose
files are in neither (tests/conftest.py). Every file is taken from its original public location at a fixed commit
(provenance: SOURCES.md of the shared data), so its bytes never change: a download whose sha256 differs from the pin
is refused and nothing is left behind, and a file already present with the right hash is not downloaded again.
Files of the shared data that were made by hand (converted or re-encoded) exist nowhere to download; they are listed
in NOT_FETCHABLE, so that a test needing one can say so in its skip reason.

Standard library only, so that any python3 runs it, before `make setup` as well as after.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "shared"

_GH = "https://raw.githubusercontent.com"
_WIKITEXT = f"{_GH}/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2"
_PIQA = f"{_GH}/ybisk/ybisk.github.io/21edab439af693b961be2f069e8690a88d3b4e37/piqa/data"
_FOUNDRY = f"{_GH}/mosaicml/llm-foundry/8c8dd48f72168c5d51e2f7b151595892a8fba43d/scripts/eval/local_data"
_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"

# Path under the data folder -> (original public URL, sha256 of the file).
FILES: dict[str, tuple[str, str]] = {
    "tinyshakespeare/input.txt": (
        f"{_GH}/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    "wikitext-2/valid.txt": (
        f"{_WIKITEXT}/valid.txt",
        "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    ),
    "wikitext-2/test.txt": (
        f"{_WIKITEXT}/test.txt",
        "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
    ),
    "eval/piqa/valid.jsonl": (
        f"{_PIQA}/valid.jsonl",
        "93503cc97c679e459b065c3d13e848282e44b2a25213985bed3e5d458abef72d",
    ),
    "eval/piqa/valid-labels.lst": (
        f"{_PIQA}/valid-labels.lst",
        "b4192dc3a2a0363d9d60ccf79800cbbe2f32ebb17726efdde6970e0b8131bceb",
    ),
    "eval/lambada/lambada_test.jsonl": (
        f"{_GH}/cybertronai/bflm/620fff70127e0a7c741ee229ed2e33e25dd5185a/lambada_test.jsonl",
        "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226",
    ),
    "eval/hellaswag/hellaswag_val_full.txt.bz2": (
        f"{_GH}/klosax/hellaswag_text_data/1105d370f8340eac3c63a91fd1fa58e8999f9505/hellaswag_val_full.txt.bz2",
        "50b637899e4263c2bc456c2dc726c95d2c8cd8e2a552ea5bd7719ce3cb03fe5b",
    ),
    "eval/arc_easy/arc_easy.jsonl": (
        f"{_FOUNDRY}/world_knowledge/arc_easy.jsonl",
        "d2d12e59543acf9a5ef6079634a72b30215e36c2fd4236fff3bc855d287b87f5",
    ),
    "eval/arc_challenge/arc_challenge.jsonl": (
        f"{_FOUNDRY}/world_knowledge/arc_challenge.jsonl",
        "1ae3aeedf1951d881cbd5c2e3a31e78a1993d251479afbe4cb413b6707244636",
    ),
    "eval/winogrande/winogrande.jsonl": (
        f"{_FOUNDRY}/language_understanding/winogrande.jsonl",
        "ea1592526f3bfdd0948ed3acb1b4dfa3f83d23698917118688ee1df7f8d4b8d7",
    ),
    # tiktoken finds a cached file under the sha1 of its URL: these two are its GPT-2 encoder (the `gpt2` tokenizer),
    # with the hashes tiktoken itself checks, so that TIKTOKEN_CACHE_DIR=<data>/tiktoken_cache works offline.
    "tiktoken_cache/6d1cbeee0f20b3d9449abfede4726ed8212e3aee": (
        f"{_GPT2}/vocab.bpe",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
    "tiktoken_cache/6c7ea1a7e38e3a7f062df639a5b80947f075ffe6": (
        f"{_GPT2}/encoder.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
}
GPT2_FILES = tuple(rel for rel in FILES if rel.startswith("tiktoken_cache/"))

# Files of the shared data that cannot be downloaded as they are, and why. No test needs them today.
NOT_FETCHABLE: dict[str, str] = {
    **{f"wikipedia/wiki-0{i}.parquet": "converted by hand from WikiExtractor text to parquet" for i in range(4)},
    "gutenberg/gutenberg-12-authors.parquet": "a hand-picked selection of books, converted to parquet",
}


class FetchError(Exception):
    """A download that failed or whose sha256 is not the pinned one."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fetch(rel: str, url: str, sha256: str, out: Path) -> str:
    """Make `out/rel` the file with this sha256: "present" when it already is (no download), "fetched" after a
    download that matched. A failed or mismatching download raises FetchError and leaves nothing behind (the
    download goes to a temporary file in `out`, moved into place only once its hash is right)."""
    dest = out / rel
    if dest.is_file() and file_sha256(dest) == sha256:
        return "present"
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as resp:
            while block := resp.read(1 << 20):
                h.update(block)
                f.write(block)
        if h.hexdigest() != sha256:
            raise FetchError(f"{url} has sha256 {h.hexdigest()}, expected {sha256}; not kept")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    except OSError as e:
        raise FetchError(f"{url}: {type(e).__name__}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return "fetched"


def main(argv: list[str] | None = None) -> int:
    """Fetch every file of FILES into --out; one line per file; exit status 1 when any could not be had."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"data folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    failed = 0
    for rel, (url, sha256) in FILES.items():
        try:
            print(f"{fetch(rel, url, sha256, args.out):<8} {rel}", flush=True)
        except FetchError as e:
            failed += 1
            print(f"FAILED   {rel}: {e}", file=sys.stderr, flush=True)
    print(f"{len(FILES) - failed} of {len(FILES)} files in {args.out}")
    if NOT_FETCHABLE:
        print(f"not fetchable (made by hand; copy them from the shared data): {', '.join(NOT_FETCHABLE)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
