"""slm embed and embed_texts: pooling, batch independence, normalization, truncation, files in and out, bad input."""

import json

import numpy as np
import pytest
import torch
from sft_helpers import base_run, make_corpus

from slmkit.base.tokenizer import EOT
from slmkit.data.sources import DataError
from slmkit.engine.embedding import EmbedError, pool
from slmkit.ship.embed import embed, embed_texts, load_encoder, read_texts

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["a", "the river runs to the sea", "stone", "a green house with light in every window and bread on the table"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, stdlib_dir):
    root = tmp_path_factory.mktemp("embed")
    return base_run(root, make_corpus(root, stdlib_dir))


@pytest.fixture(scope="module")
def encoder(run):
    model, tokenizer, cfg = load_encoder(run)
    return model, tokenizer


@pytest.mark.parametrize("pooling", ["mean", "weighted", "last", "eos"])
def test_a_texts_vector_is_the_same_alone_and_in_a_ragged_batch(encoder, pooling):
    model, tok = encoder
    together, stats = embed_texts(model, tok, TEXTS, pooling=pooling, batch_size=4)
    for i, text in enumerate(TEXTS):
        alone, _ = embed_texts(model, tok, [text], pooling=pooling)
        diff = np.abs(alone[0] - together[i]).max()
        assert diff < 1e-5, f"{pooling} text {i}: max abs diff {diff}"
    assert together.shape == (4, model.config.n_embd) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)
    assert stats["texts"] == 4 and stats["truncated"] == 0 and stats["pooling"] == pooling


def test_pooling_reads_only_the_real_tokens(encoder):
    model, tok = encoder
    ids = tok.encode("the river runs")
    with torch.no_grad():
        h = model.hidden(torch.tensor([ids]))[0]  # (T, C)
    raw, _ = embed_texts(model, tok, ["the river runs"], normalize=False)
    assert np.allclose(raw[0], h.mean(0).numpy(), atol=1e-5)
    last, _ = embed_texts(model, tok, ["the river runs"], pooling="last", normalize=False)
    assert np.allclose(last[0], h[-1].numpy(), atol=1e-5)
    hidden = torch.arange(24.0).reshape(2, 3, 4)  # padded rows: only the first `length` positions count
    assert torch.equal(pool(hidden, torch.tensor([1, 3]), "mean")[0], hidden[0, 0])
    assert torch.equal(pool(hidden, torch.tensor([2, 3]), "last")[0], hidden[0, 1])
    # weighted: token i (1-based) weighs i, padding nothing: row 0 of length 2 is (1 h0 + 2 h1) / 3
    assert torch.allclose(pool(hidden, torch.tensor([2, 3]), "weighted")[0], (hidden[0, 0] + 2 * hidden[0, 1]) / 3)
    assert torch.allclose(
        pool(hidden, torch.tensor([1, 3]), "weighted")[1], (hidden[1] * torch.tensor([1.0, 2, 3])[:, None]).sum(0) / 6
    )


def test_long_texts_are_cut_and_counted(encoder):
    model, tok = encoder
    long = "stone " * 400
    vec, stats = embed_texts(model, tok, [long, "a"], max_len=16)
    assert stats["truncated"] == 1 and stats["max_len"] == 16
    same, _ = embed_texts(model, tok, [tok.decode(tok.encode(long)[:16])])
    assert np.abs(vec[0] - same[0]).max() < 1e-5
    _, stats = embed_texts(model, tok, [long])
    assert stats["truncated"] == 1 and stats["max_len"] == model.config.block_size


def test_instruction_prefixes_every_text(encoder):
    model, tok = encoder
    a, _ = embed_texts(model, tok, ["a river"], instruction="query: ")
    b, _ = embed_texts(model, tok, ["query: a river"])
    assert np.abs(a - b).max() < 1e-6


def test_bad_input_is_one_line(encoder, tmp_path, run):
    model, tok = encoder
    with pytest.raises(EmbedError, match="text 1 is empty"):
        embed_texts(model, tok, ["a", "  "])
    with pytest.raises(EmbedError, match="unknown pooling"):
        embed_texts(model, tok, ["a"], pooling="max")
    no_eot = load_encoder(run)[1]
    no_eot.special_tokens.pop(EOT)
    with pytest.raises(EmbedError, match="does not have"):
        embed_texts(model, no_eot, ["a"], pooling="eos")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 has no string field 'text'"):
        read_texts(bad)


def test_embed_verb_skips_empty_lines_and_refuses_to_overwrite(run, tmp_path, run_cli):
    src = tmp_path / "in.txt"
    src.write_text("the river\n\n   \nthe stone\n")
    out = tmp_path / "v.npy"
    code, _, err = run_cli("embed", run, "--input", src, "--out", out, "--no-progress")
    assert code == 0, err
    assert "embedded 2 texts" in err and "2 empty lines skipped" in err
    vectors = np.load(out)
    assert vectors.shape[0] == 2 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    code, _, err = run_cli("embed", run, "--input", src, "--out", out)
    assert code == 2 and "exists; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("embed", run, "--input", src, "--out", out, "--overwrite", "--pooling", "last")
    assert code == 0 and not np.allclose(np.load(out), vectors)
    code, out_text, _ = run_cli("embed", run, "--input", src, "--no-progress")
    lines = [json.loads(x) for x in out_text.splitlines()]
    assert [r["line"] for r in lines] == [1, 4] and len(lines[0]["embedding"]) == vectors.shape[1]
    assert np.allclose(lines[0]["embedding"], vectors[0], atol=1e-6)
    jl = tmp_path / "v.jsonl"
    vecs, stats = embed(run, src, jl, progress=False)
    assert [json.loads(x)["line"] for x in jl.read_text().splitlines()] == stats["lines"] == [1, 4]
    code, _, err = run_cli("embed", run, "--input", src, "--out", tmp_path / "v.txt")
    assert code == 2 and ".npy" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = run_cli("embed", run, "--input", empty)
    assert code == 2 and "no text to embed (2 empty lines)" in err
