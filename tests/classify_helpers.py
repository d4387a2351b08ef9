"""Labelled records for the classify tests: pieces of Python (string.py) and of English prose."""

from __future__ import annotations

import json
from pathlib import Path

from sft_helpers import base_run, make_corpus

ENGLISH = """The harbour was quiet in the early morning and the fishermen had not yet come down to their boats. A thin
mist lay over the water so that the far side of the bay could only be guessed at from the sound of the bells. Anna
walked along the sea wall with her hands in her pockets, thinking about the letter she had received the night
before. Her brother wrote that he would be coming home at the end of the summer after three years away. She had read
the letter four times and each time it seemed to say something a little different. When they were children he used
to leave notes under her door instead of speaking. A gull landed on the wall beside her and looked at her with one
yellow eye as if it expected to be fed. The sun was beginning to break through the mist and the water turned from
grey to a pale and uncertain blue. She decided that she would write back that afternoon and say only that she would
be there on the platform whatever time the train arrived. Anything more could wait until she saw his face again."""


def _pieces(text: str, n: int, size: int, step: int) -> list[str]:
    text = " ".join(text.split())
    return [text[i : i + size] for i in range(0, step * n, step)]


def records(stdlib_dir, n: int, offset: int = 0) -> list[dict]:
    code = (stdlib_dir / "string.py").read_text(encoding="utf-8")
    code = code[code.index("class Template") :]
    eng = (ENGLISH + " ") * 4
    out = []
    for i, (c, e) in enumerate(zip(_pieces(code[offset * 9 :], n, 90, 37), _pieces(eng[offset * 9 :], n, 90, 41))):
        out += [{"body": c, "kind": "code", "n": i}, {"body": e, "kind": "prose", "n": i}]
    return out


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def classifier_inputs(root: Path, stdlib_dir: Path, n_train: int) -> tuple[Path, str, str]:
    """A tiny pretrained base run, and labelled train (n_train records a label) and test (12 a label) files."""
    base = base_run(root, make_corpus(root, stdlib_dir))
    train_file = write_jsonl(root / "train.jsonl", records(stdlib_dir, n_train))
    return base, train_file, write_jsonl(root / "test.jsonl", records(stdlib_dir, 12, offset=170))
