"""A prepared dataset directory: reading its meta, its tokenizer and its shards (`prepare` writes it, and
prepares it on first use: `slmkit.data.prepare.ensure_prepared`).

Layout (written by `slmkit.data.prepare.prepare`, built under a hidden name and renamed into place):

    meta.json             written last: its presence means the directory is complete
    tokenizer/            the tokenizer (Tokenizer.save), fingerprint recorded in meta.json
    train/000000.bin ...  raw little-endian token ids (dtype in meta.json), no header
    train/doc_starts.u64  uint64 offsets (into the split's concatenated tokens) of each document's end-of-text
    val/...               the same for the validation split

End-of-text is put *before* every document, so a document start is the position of its end-of-text token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slmkit.base.tokenizer import Tokenizer, TokenizerError, check_fingerprint, is_tokenizer_dir, load_tokenizer
from slmkit.data.sources import DataError

META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
DOC_STARTS_FILE = "doc_starts.u64"
SPLITS = ("train", "val")


def read_meta(dir: str | Path) -> dict:
    """The meta of a complete dataset directory; DataError saying what to do when it is missing or incomplete."""
    dir = Path(dir)
    if not dir.is_dir():
        raise DataError(f"no dataset directory {dir}; make it with `slm prepare SOURCE --out {dir}`")
    path = dir / META_FILE
    if not path.is_file():
        raise DataError(f"{dir} is incomplete (no {META_FILE}): re-run `slm prepare SOURCE --out {dir} --force`")
    redo = f"re-run `slm prepare SOURCE --out {dir} --force`"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is damaged (not UTF-8: byte 0x{e.object[e.start]:02x} at offset {e.start}); {redo}"
                        ) from None  # fmt: skip
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is damaged (not JSON: {e.msg} at line {e.lineno}); {redo}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tokenizer"), dict) or not isinstance(
            meta.get("splits"), dict):  # fmt: skip
        raise DataError(f"{path} is damaged (no tokenizer or splits); {redo}")
    return meta


def _recorded_fingerprint(dir: str | Path, meta: dict) -> str:
    fingerprint = meta["tokenizer"].get("fingerprint")
    if not isinstance(fingerprint, str):
        raise DataError(f"{Path(dir) / META_FILE} records no tokenizer fingerprint; re-run `slm prepare SOURCE --out "
                        f"{dir} --force`")  # fmt: skip
    return fingerprint


def find_tokenizer(path: str | Path) -> Tokenizer:
    """Load the tokenizer of a tokenizer directory, a dataset directory or a run directory (both keep `tokenizer/`)."""
    path = Path(path)
    for candidate in (path, path / TOKENIZER_DIR):
        if is_tokenizer_dir(candidate):
            return load_tokenizer(candidate)
    raise TokenizerError(f"no tokenizer in {path}: expected a tokenizer, dataset or run directory")


def load_dataset_tokenizer(dir: str | Path) -> Tokenizer:
    """The tokenizer a dataset was made with, checked against the fingerprint in its meta."""
    meta = read_meta(dir)
    tok = find_tokenizer(Path(dir) / TOKENIZER_DIR)
    check_fingerprint(_recorded_fingerprint(dir, meta), tok.fingerprint, f"the tokenizer copy in {dir}")
    return tok


def check_tokenizer(dir: str | Path, tokenizer: Tokenizer) -> None:
    """TokenizerError, showing both fingerprints, unless `dir` was made with `tokenizer`."""
    meta = read_meta(dir)
    check_fingerprint(_recorded_fingerprint(dir, meta), tokenizer.fingerprint, f"dataset {dir}")


def split_shards(dir: str | Path, split: str, meta: dict | None = None) -> list[tuple[Path, int]]:
    """(path, tokens) of each shard of `split`, in order."""
    meta = meta or read_meta(dir)
    if split not in meta["splits"]:
        raise DataError(f"{dir} has no split {split!r}; splits are {', '.join(meta['splits'])}")
    return [(Path(dir) / s["file"], s["tokens"]) for s in meta["splits"][split]["shards"]]


def doc_starts(dir: str | Path, split: str) -> np.ndarray:
    """Offsets (uint64) of the document starts (their end-of-text tokens) of `split`."""
    path = Path(dir) / split / DOC_STARTS_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing; re-run `slm prepare ... --out {dir} --force`")
    return np.fromfile(path, dtype="<u8")
