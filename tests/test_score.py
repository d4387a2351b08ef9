"""`slm score` and `ship.score`: per-unit loss equal to evaluate_text_loss, character offsets, unit splitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY

from slmkit.base.config_files import load_config
from slmkit.base.tokenizer import build_tokenizer
from slmkit.data.sources import DataError
from slmkit.engine.evaluate.loss import evaluate_text_loss
from slmkit.engine.train import train
from slmkit.runs.checkpoint import load_model
from slmkit.ship.score import (
    ScoreError,
    Unit,
    read_documents,
    score_source,
    score_units,
    split_units,
    token_char_offsets,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("score-runs")
    ov = [*TINY, f"data.dir={tiny_dataset()}", f"train.out_dir={out}", "train.name=tiny"]
    return train(load_config(None, ov), overrides=ov, progress=False)


@pytest.fixture(scope="module")
def loaded(run):
    model, tok, _cfg, _ckpt = load_model(run)
    return model, tok


@pytest.fixture
def texts(stdlib_dir):
    src = (stdlib_dir / "bisect.py").read_text(encoding="utf-8")
    return [src[:1500], src[1500:1600], "def f(x):\n    return x + 1\n"]


@pytest.mark.parametrize("stride", [0, 8])
def test_doc_loss_equals_evaluate_text_loss(loaded, texts, tmp_path, stride):
    model, tok = loaded
    results = list(score_units(model, tok, texts, stride=stride, batch_size=3))
    assert [r["id"] for r in results] == ["0", "1", "2"]
    for text, r in zip(texts, results, strict=True):
        f = tmp_path / "t.txt"
        f.write_text(text, encoding="utf-8")
        ref = evaluate_text_loss(model, tok, f, stride=stride, max_tokens=0)
        assert r["loss"] == pytest.approx(ref["loss"], abs=1e-5)
        assert r["bpb"] == pytest.approx(ref["bpb"], abs=1e-5)
        assert r["ppl"] == pytest.approx(ref["ppl"], rel=1e-5)
        assert (r["tokens"], r["bytes"], r["stride"]) == (ref["tokens"], ref["bytes"], ref["stride"])


def test_top_spans_point_at_the_most_surprising_characters(loaded, texts):
    model, tok = loaded
    r = next(score_units(model, tok, [Unit("a", texts[0])], top_spans=4))
    spans = r["top_spans"]
    assert len(spans) == 4
    bits = [s["surprisal_bits"] for s in spans]
    assert bits == sorted(bits, reverse=True)
    for s in spans:
        assert texts[0][s["start"] : s["end"]] == s["text"] == texts[0][s["token_index"]]  # char model: 1 char/token
    # the surprisal is the model's own: -log2 p(char | the text before it) (short text: one window)
    short = texts[2]
    r = next(score_units(model, tok, [short], top_spans=1))
    s = r["top_spans"][0]
    ids = torch.tensor([tok.encode(short)])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0][0, :, : model.config.vocab_size].float(), -1)
    p = s["token_index"]
    assert s["surprisal_bits"] == pytest.approx(-float(logp[p - 1, ids[0, p]]) / np.log(2), rel=1e-4)


def test_offsets_with_multibyte_characters_in_a_bpe_tokenizer():
    tok = build_tokenizer("bpe:300", ["naïve café — déjà vu 日本語 text " * 20])
    text = "a café — 日本語 déjà"
    ids = tok.encode(text)
    starts = token_char_offsets(tok, np.array(ids), text)
    assert starts[0] == 0 and starts == sorted(starts) and starts[-1] < len(text)
    pieces = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    assert "".join(pieces) == text


def test_unit_splitting(tmp_path, loaded):
    _model, tok = loaded
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("first line\n\nsecond line\n", encoding="utf-8")
    (d / "sub" / "b.txt").write_text("only one", encoding="utf-8")
    (d / ".hidden").write_text("skip me", encoding="utf-8")
    docs = list(read_documents(d))
    assert [i for i, _ in docs] == ["a.txt", "sub/b.txt"]
    assert [(u.id, u.text) for u in split_units(docs, "doc")] == [("a.txt", docs[0][1]), ("sub/b.txt", "only one")]
    assert [(u.id, u.text) for u in split_units(docs, "line")] == [
        ("a.txt:1", "first line"), ("a.txt:3", "second line"), ("sub/b.txt:1", "only one")]  # fmt: skip
    text = "def f(x):\n    return x\n" * 3
    wins = list(split_units([("m.py", text)], "window", tok, 16))
    assert "".join(u.text for u in wins) == text
    assert all(len(u.ids) <= 16 for u in wins) and [u.id for u in wins][:2] == ["m.py@0", "m.py@16"]
    j = tmp_path / "x.jsonl"
    j.write_text('{"id": "q1", "body": "hello"}\n\n{"body": "again"}\n', encoding="utf-8")
    assert list(read_documents(j, "body")) == [("q1", "hello"), ("x.jsonl:3", "again")]
    with pytest.raises(DataError, match="x.jsonl:1 has no string field 'text'"):
        list(read_documents(j))
    with pytest.raises(ScoreError, match="unknown unit"):
        list(split_units(docs, "para"))


def test_untokenizable_and_tiny_units_are_reported_not_fatal(loaded):
    model, tok = loaded
    a, b, c = score_units(model, tok, ["x", "caf\u00e9 \u2603", "def g(): pass"])
    assert a["loss"] is None and a["tokens"] == 0
    assert b["loss"] is None and "not in this char tokenizer" in b["error"]
    assert c["loss"] > 0


def test_slm_score_cli(run, run_cli, tmp_path, texts):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    out = tmp_path / "scores.jsonl"
    code, stdout, err = run_cli("score", run, "--input", src, "--unit", "line", "--out", out, "--no-progress")
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["id"] == "in.txt:1" and "scored 3 line unit(s)" in err
    code, stdout, err = run_cli("score", run, "--input", src, "--top-spans", "0", "--no-progress")
    assert code == 0 and json.loads(stdout)["top_spans"] == []
    code, _, err = run_cli("score", run, "--input", tmp_path / "missing.txt")
    assert code == 2 and "missing.txt" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    out2 = tmp_path / "bad-scores.jsonl"
    code, _, err = run_cli("score", run, "--input", bad, "--out", out2)
    assert code == 2 and "bad.jsonl:2 is not valid JSON" in err and not out2.exists()
    with pytest.raises(SystemExit) as e:  # a usage error: argparse exits 2
        run_cli("score", run, "--input", src, "--stride", "-1")
    assert e.value.code == 2


def test_score_source_rejects_an_empty_folder(loaded, tmp_path):
    model, tok = loaded
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScoreError, match="no files"):
        score_source(model, tok, tmp_path / "empty")
    (tmp_path / "empty" / "__init__.py").write_text("")
    with pytest.raises(ScoreError, match="every file in .* is empty"):
        score_source(model, tok, tmp_path / "empty")
    (tmp_path / "empty" / "m.py").write_text("x = 1\n")  # an empty __init__.py beside it is skipped, not an error
    assert [r["id"] for r in score_source(model, tok, tmp_path / "empty")] == ["m.py"]
