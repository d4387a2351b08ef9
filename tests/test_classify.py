"""`slm classify train|predict|eval` and `ship.classify`: a tiny bpe model learns to tell Python from English."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from classify_helpers import classifier_inputs, records, write_jsonl

from slmkit.data.chat import render, to_example
from slmkit.model.linear_ce import IGNORE_INDEX
from slmkit.runs import checkpoint as ckpt_io
from slmkit.ship import classify, finetune
from slmkit.ship.classify_data import ClassifyError, classification_metrics, expected_calibration_error, wilson

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, stdlib_dir):
    root = tmp_path_factory.mktemp("classify")
    base, train_file, test_file = classifier_inputs(root, stdlib_dir, 40)
    ov = ["train.max_steps=300", "train.eval_every=100", "optim.lr=3e-3", "train.batch_size=8", "train.eval_batches=2"]
    child = classify.train(base, train_file, text_field="body", label_field="kind", progress=False, overrides=ov)
    return root, base, child, train_file, test_file


def test_child_run_records_labels_template_and_parent(setup):
    root, base, child, train_file, _ = setup
    meta = json.loads((child / "classify.json").read_text())
    assert meta["labels"] == ["code", "prose"] and meta["template"] == "{text}\nLabel:"
    assert meta["label_counts"] == {"code": 40, "prose": 40} and meta["text_field"] == "body"
    assert 8 <= meta["text_budget"] < 64
    info = ckpt_io.read_run_info(child)
    assert info["status"] == "finished" and info["parent"] == str(base) and child.name == "base-classify"
    cfg = ckpt_io.read_run_config(child)
    assert cfg.data.format == "prompt_completion" and cfg.data.source == meta["pairs"]
    assert (root / "runs" / "base-classify.classify.jsonl").is_file()


def test_loss_falls_on_the_label_tokens_only(setup):
    root, _, child, _, _ = setup
    tok = ckpt_io.run_tokenizer(child)
    first = json.loads((root / "runs" / "base-classify.classify.jsonl").read_text().splitlines()[0])
    assert first["prompt"].endswith("\nLabel:") and first["completion"] in (" code", " prose")
    msgs = [{"role": "user", "content": first["prompt"]}, {"role": "assistant", "content": first["completion"]}]
    x, y = to_example(*render(msgs, tok))
    targets = y[y != IGNORE_INDEX].tolist()
    assert targets == tok.encode(first["completion"]) + [tok.token_id("<|end|>")]


def test_probabilities_are_the_softmax_of_exact_label_likelihoods(setup):
    _, _, child, _, _ = setup
    clf = classify.load_classifier(child)
    text = "def f(x):\n    return x + 1"
    ll = clf.log_likelihoods(text)
    ctx = clf.prompt_ids(text)
    for k, cont in enumerate(clf.conts):  # reference: one plain forward pass over prompt + label
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logits, _ = clf.model(ids[:, :-1])
        logp = torch.log_softmax(logits[0, :, : clf.tokenizer.vocab_size].double(), -1)
        want = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        assert abs(ll[k] - want) < 1e-4, (ll[k], want)
    p = clf.probabilities(text)
    assert np.allclose(p, np.exp(ll) / np.exp(ll).sum()) and abs(p.sum() - 1) < 1e-9


def test_predict_and_eval_cli(setup, run_cli, tmp_path):
    _, _, child, _, test_file = setup
    out = tmp_path / "pred.jsonl"
    code, _, err = run_cli("classify", "predict", child, "--input", test_file, "--out", out, "--no-progress")
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 24 and {r["label"] for r in rows} <= {"code", "prose"}
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-6 and r["probability"] == max(r["probs"].values())
               for r in rows)  # fmt: skip
    plain = tmp_path / "docs.txt"
    plain.write_text("def g(self):\n\nShe walked to the station.\n")
    code, stdout, _ = run_cli("classify", "predict", child, "--input", plain, "--no-progress")
    assert code == 0 and [json.loads(x)["id"] for x in stdout.splitlines()] == ["1", "3"]

    plot, report = tmp_path / "cm.png", tmp_path / "m.json"
    code, stdout, err = run_cli("classify", "eval", child, "--data", test_file, "--plot", plot, "--report", report,
                                "--no-progress")  # fmt: skip
    assert code == 0, err
    m = json.loads(report.read_text())
    assert m["n"] == 24 and np.array(m["confusion"]).sum() == 24 and plot.stat().st_size > 1000
    assert m["accuracy"] >= 0.8, m  # Python vs English: a 2-layer model learns it in 300 steps (4 s)
    assert m["accuracy_ci95"][0] < m["accuracy"] < m["accuracy_ci95"][1] or m["accuracy"] == 1.0
    assert "accuracy" in stdout and "macro-F1" in stdout


def _one_line_exit_2(run_cli, *args, match: str) -> str:
    code, _, err = run_cli(*args)
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and match in err, err
    return err


def test_bad_inputs_are_one_line_and_make_no_run(setup, run_cli, tmp_path, stdlib_dir):
    root, base, child, train_file, _ = setup
    before = sorted(p.name for p in (root / "runs").iterdir())
    rows = records(stdlib_dir, 4)
    missing = [r if i not in (1, 4, 5) else {"body": r["body"]} for i, r in enumerate(rows)]
    err = _one_line_exit_2(run_cli, "classify", "train", base, "--data", write_jsonl(tmp_path / "m.jsonl", missing),
                           "--text-field", "body", "--label-field", "kind", match="3 of 8 records")  # fmt: skip
    assert "line 2" in err and "'kind'" in err
    one = [r for r in rows if r["kind"] == "code"]
    _one_line_exit_2(run_cli, "classify", "train", base, "--data", write_jsonl(tmp_path / "one.jsonl", one),
                     "--text-field", "body", "--label-field", "kind", match="at least two labels")  # fmt: skip
    (tmp_path / "blank.jsonl").write_text("\n\n")
    _one_line_exit_2(run_cli, "classify", "train", base, "--data", tmp_path / "blank.jsonl", match="blank.jsonl")
    _one_line_exit_2(run_cli, "classify", "train", base, "--data", train_file, "--text-field", "text",
                     "--label-field", "kind", match="no string field 'text'")  # fmt: skip
    _one_line_exit_2(run_cli, "classify", "train", base, "--data", train_file, "--text-field", "body",
                     "--label-field", "kind", "data.format=alpaca", match="data.format is set by")  # fmt: skip
    assert sorted(p.name for p in (root / "runs").iterdir()) == before

    odd = [{"body": "hello there", "kind": "poem"}, {"body": "x = 1", "kind": "code"}, {"body": "a", "kind": "song"}]
    err = _one_line_exit_2(run_cli, "classify", "eval", child, "--data", write_jsonl(tmp_path / "odd.jsonl", odd),
                           "--plot", tmp_path / "cm.png", match="the model does not know")  # fmt: skip
    assert "'poem', 'song'" in err and "line 1" in err and "'code', 'prose'" in err
    assert not (tmp_path / "cm.png").exists()
    (tmp_path / "empty.txt").write_text("  \n\n")
    _one_line_exit_2(run_cli, "classify", "predict", child, "--input", tmp_path / "empty.txt", match="empty")
    (tmp_path / "empty.jsonl").write_text("\n")
    _one_line_exit_2(run_cli, "classify", "predict", child, "--input", tmp_path / "empty.jsonl", match="empty")
    _one_line_exit_2(run_cli, "classify", "predict", base, "--input", train_file, match="not a classifier run")
    with pytest.raises(ClassifyError, match="empty .zero documents."):
        classify.read_examples(tmp_path / "empty.jsonl", "body")


def test_a_stopped_training_is_resumed(setup, run_cli, monkeypatch):
    """The child's training stops part-way (a checkpoint, status interrupted, as Ctrl-C or SIGTERM leave it): no
    classify.json is written and the error says --resume; the same command with --resume finishes the run."""
    root, base, _, train_file, test_file = setup
    real = finetune.train
    monkeypatch.setattr(finetune, "train", lambda cfg, **kw: real(cfg, **kw, stop_after=4))
    args = ["classify", "train", base, "--data", train_file, "--text-field", "body", "--label-field", "kind",
            "--name", "halted", "--no-progress", "train.max_steps=12", "train.batch_size=8",
            "train.eval_batches=2"]  # fmt: skip
    code, _, err = run_cli(*args)
    assert code == 2 and "stopped (interrupted)" in err and "--resume" in err, err
    child = root / "runs" / "halted"
    assert not (child / "classify.json").exists() and ckpt_io.read_run_info(child)["step"] == 4
    monkeypatch.setattr(finetune, "train", real)
    code, _, err = run_cli("classify", "predict", child, "--input", test_file, "--no-progress")
    assert code == 2 and "unfinished classifier" in err, err
    code, _, err = run_cli(*args)
    assert code == 2 and "already exists" in err and "--resume" in err, err
    code, _, err = run_cli(*[a for a in args if a != "--name" and a != "halted"], "--name", "other", "--resume")
    assert code == 2 and "nothing to resume" in err, err
    code, _, err = run_cli(*args, "--resume")
    assert code == 0, err
    info = ckpt_io.read_run_info(child)
    assert info["status"] == "finished" and info["step"] == 12 and info["resumed_from"]
    assert json.loads((child / "classify.json").read_text())["labels"] == ["code", "prose"]
    code, _, err = run_cli(*args, "--resume")
    assert code == 2 and "finished classifier; nothing to resume" in err, err


def test_metrics_against_references():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=200)
    y = np.where(rng.random(200) < 0.6, probs.argmax(1), rng.integers(0, 3, 200))
    m = classification_metrics(y, probs, ["a", "b", "c"])
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
    assert np.array_equal(m["confusion"], sk.confusion_matrix(y, pred))
    assert m["log_loss"] == pytest.approx(sk.log_loss(y, probs))
    conf, correct = np.array([0.95, 0.95, 0.55, 0.55]), np.array([1.0, 0.0, 1.0, 1.0])
    assert expected_calibration_error(conf, correct) == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    lo, hi = wilson(80, 100)  # the textbook value: 0.7112 - 0.8666
    assert math.isclose(lo, 0.7112, abs_tol=1e-4) and math.isclose(hi, 0.8666, abs_tol=1e-4)
