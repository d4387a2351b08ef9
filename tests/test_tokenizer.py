"""Tokenizers: round trips, HF/tiktoken id parity for bpe, fingerprints, save/load, CLI."""

import json

import pytest

from slmkit.base.tokenizer import (
    CHAT_TOKENS,
    EOT,
    META_FILE,
    CharTokenizer,
    TokenizerError,
    build_tokenizer,
    bytes_per_token,
    check_fingerprint,
    load_tokenizer,
    parse_kind,
    train_bpe,
)

TRICKY = "Café naïve — 日本語のテキスト, 你好, 🤖🚀 emoji, tabs\tand\nnewlines, <|endoftext|> literal, ’quotes’ ẞ"


@pytest.fixture(scope="module")
def corpus(stdlib_dir):
    return [p.read_text(encoding="utf-8") for p in sorted(stdlib_dir.glob("*.py"))[:60]]


@pytest.fixture(scope="module")
def bpe(corpus):
    return train_bpe(corpus + [TRICKY], 1024)


def test_round_trip_all_kinds(bpe, gpt2_files):
    toks = [CharTokenizer.from_texts([TRICKY]), build_tokenizer("gpt2"), bpe]
    for tok in toks:
        ids = tok.encode(TRICKY)
        assert tok.decode(ids) == TRICKY, tok
        assert tok.encode_batch([TRICKY, "x"], num_threads=2)[0] == ids


def test_bpe_ids_match_hugging_face(bpe, corpus):
    from tokenizers import Tokenizer as HF

    hf = HF.from_str(bpe.hf_json)
    for text in corpus[:40]:
        assert hf.encode(text).ids == bpe.encode(text)
    # HF matches special-token strings inside raw text; we do that only when asked (no prompt injection by default)
    assert hf.encode(TRICKY).ids == bpe.encode(TRICKY, allow_special=True)


def test_bpe_reserves_chat_tokens(bpe):
    assert bpe.has_chat_tokens and bpe.eot_id == bpe.special_tokens[EOT]
    ids = bpe.encode("<|user|>hi<|end|>", allow_special=True)
    assert ids[0] == bpe.special_tokens["<|user|>"] and ids[-1] == bpe.special_tokens["<|end|>"]
    assert bpe.special_tokens["<|user|>"] not in bpe.encode("<|user|>hi")  # plain text by default


def test_gpt2_known_ids(gpt2_files):
    tok = build_tokenizer("gpt2")
    assert tok.encode("hello world") == [31373, 995]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256


def test_fingerprint_is_stable_and_sensitive(tmp_path, bpe, corpus):
    assert bpe.fingerprint == train_bpe(corpus + [TRICKY], 1024).fingerprint  # deterministic training
    assert bpe.fingerprint != train_bpe(corpus, 1100).fingerprint
    a, b = CharTokenizer("abc"), CharTokenizer("abd")
    assert a.fingerprint != b.fingerprint and a.fingerprint == CharTokenizer("cba").fingerprint
    with pytest.raises(TokenizerError, match=f"{a.fingerprint}.*{b.fingerprint}"):
        check_fingerprint(a.fingerprint, b.fingerprint, "dataset x")


@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_save_load_preserves_fingerprint(tmp_path, kind, bpe, request):
    if kind == "gpt2":
        request.getfixturevalue("gpt2_files")
    tok = bpe if kind == "bpe" else CharTokenizer.from_texts([TRICKY]) if kind == "char" else build_tokenizer("gpt2")
    tok.save(tmp_path / kind)
    loaded = load_tokenizer(tmp_path / kind)
    assert loaded.fingerprint == tok.fingerprint and loaded.encode(TRICKY) == tok.encode(TRICKY)


def test_added_chat_tokens_survive_save(tmp_path, gpt2_files):
    tok = CharTokenizer.from_texts(["hello"])
    fp = tok.fingerprint
    tok.add_special_tokens(CHAT_TOKENS)
    assert tok.has_chat_tokens and tok.fingerprint != fp
    tok.save(tmp_path / "t")
    assert load_tokenizer(tmp_path / "t").special_tokens == tok.special_tokens
    g = build_tokenizer("gpt2")
    g.add_special_tokens(CHAT_TOKENS)
    assert g.vocab_size == 50257 + 4 and g.decode(g.encode("<|user|>", allow_special=True)) == "<|user|>"


def test_tampered_tokenizer_is_refused(tmp_path):
    CharTokenizer.from_texts(["hello"]).save(tmp_path / "t")
    meta = json.loads((tmp_path / "t" / META_FILE).read_text())
    meta["chars"] = "helo!"
    (tmp_path / "t" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(TokenizerError, match="fingerprint"):
        load_tokenizer(tmp_path / "t")


def test_unknown_kinds_and_empty_corpus(tmp_path):
    for bad in ("sentencepiece", "bpe:", "bpe:x"):
        with pytest.raises(TokenizerError, match="unknown tokenizer"):
            parse_kind(bad)
    with pytest.raises(TokenizerError, match="empty"):
        CharTokenizer.from_texts([""])
    with pytest.raises(TokenizerError, match="empty"):
        train_bpe([], 512)
    with pytest.raises(TokenizerError, match="no saved tokenizer"):
        load_tokenizer(tmp_path)


def test_char_tokenizer_unknown_character():
    with pytest.raises(TokenizerError, match="not in this char tokenizer"):
        CharTokenizer.from_texts(["abc"]).encode("abz")


def test_bytes_per_token(bpe, corpus):
    r = bytes_per_token(bpe, corpus[:5])
    assert 2.0 < r["bytes_per_token"] < 6.0
    assert bytes_per_token(CharTokenizer.from_texts(["aaa"]), ["aaa"])["bytes_per_token"] == 1.0
