"""`slm tokenize`: a text split by a run's, dataset's or tokenizer directory's tokenizer (or gpt2), with ids, bytes,
bytes per token and the fingerprint; --compare puts two tokenizers side by side; bad input is one line, exit 2."""

from __future__ import annotations

import re

import pytest

from slmkit.base.tokenizer import train_bpe
from slmkit.data.dataset import find_tokenizer
from slmkit.study.inspect import tokenize_text

CODE = "def f(x):\n    return x"


def _rows(out: str) -> list[list[str]]:
    """The per-token table: (position, id, token, bytes...) rows."""
    table = out.split("bytes\n", 1)[1]
    return [line.split() for line in table.splitlines() if re.match(r"\s*\d+\s+\d+\s", line)]


def test_tokenize_with_a_dataset_dirs_tokenizer(tiny_dataset, run_cli):
    data = tiny_dataset()
    tok = find_tokenizer(data)
    code, out, err = run_cli("tokenize", data, CODE)
    assert code == 0 and err == ""
    assert f"tokenizer    char from {data} (fingerprint {tok.fingerprint}, vocabulary {tok.vocab_size:,})" in out
    assert "22 bytes -> 22 tokens: 1.00 bytes per token" in out
    assert "|d|e|f|␣|f|(|x|)|:|↵|␣|␣|␣|␣|r|e|t|u|r|n|␣|x|" in out  # the split, whitespace visible
    rows = _rows(out)
    assert [int(r[1]) for r in rows] == tok.encode(CODE) and [r[0] for r in rows] == [str(i) for i in range(22)]
    assert rows[3][2:] == ["␣", "20"] and rows[9][2:] == ["↵", "0a"]


def test_tokenize_reads_at_file_and_limits_the_listing(tiny_dataset, run_cli, tmp_path):
    (tmp_path / "snippet.py").write_text(CODE * 3, encoding="utf-8")
    code, out, _ = run_cli("tokenize", tiny_dataset(), f"@{tmp_path / 'snippet.py'}", "--limit", "4")
    assert code == 0 and "66 bytes -> 66 tokens" in out and len(_rows(out)) == 4
    assert "|d|e|f|␣| ... (62 more)" in out and "62 more tokens (--limit 0 lists them all)" in out


def test_byte_level_tokens_show_their_bytes(tmp_path, stdlib_dir, run_cli):
    """A byte-level BPE trained on ASCII splits '€' into byte tokens: each shown as hex, together the text."""
    train_bpe([(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")], 300).save(tmp_path / "tok")
    split = tokenize_text(str(tmp_path / "tok"), "price: 5€")
    assert b"".join(t.bytes for t in split.tokens) == "price: 5€".encode()
    assert [t.text for t in split.tokens][-3:] == ["⟨e2⟩", "⟨82⟩", "⟨ac⟩"]
    assert split.n_bytes == 11 and split.bytes_per_token == 11 / len(split.tokens) and split.name == "bpe:300"
    code, out, _ = run_cli("tokenize", tmp_path / "tok", "price: 5€")
    assert code == 0 and _rows(out)[-1][2:] == ["⟨ac⟩", "ac"]


def test_compare_two_tokenizers(tiny_dataset, gpt2_files, run_cli):
    code, out, _ = run_cli("tokenize", tiny_dataset(), CODE, "--compare", "gpt2")
    assert code == 0
    summary = dict(re.findall(r"^(tokens|bytes/token|tokenizer)\s+(\S+\s+\S+)$", out, re.M))
    assert summary["tokenizer"].split() == ["char", "gpt2"]
    char_n, gpt2_n = map(int, summary["tokens"].split())
    assert char_n == 22 and gpt2_n == len(tokenize_text("gpt2", CODE).tokens) < 22
    assert summary["bytes/token"].split() == ["1.00", f"{22 / gpt2_n:.2f}"]
    assert f"gpt2 needs {22 / gpt2_n:.2f}x fewer tokens" in out and out.count("== ") == 2


@pytest.mark.parametrize("args, message", [
    (["char", "x"], "a char tokenizer is learned from a corpus"),
    (["bpe:512", "x"], "a bpe:512 tokenizer is learned from a corpus"),
    (["no/such/dir", "x"], "no/such/dir: no such directory; give a run, dataset or tokenizer directory, or gpt2"),
    (["gpt2", ""], "empty text: nothing to tokenize"),
    (["gpt2", "@no/such/file.txt"], "cannot read no/such/file.txt: No such file or directory"),
])  # fmt: skip
def test_bad_input_is_one_line(args, message, run_cli):
    code, out, err = run_cli("tokenize", *args)
    assert code == 2 and out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1


def test_an_unknown_character_is_refused(tiny_dataset, run_cli):
    code, _, err = run_cli("tokenize", tiny_dataset(), "snow ☃")
    assert code == 2 and "character '☃' is not in this char tokenizer's vocabulary" in err
