"""`slm classify train --method lm`: one child run per label, the likeliest label's model wins (`ship.classify_lm`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from classify_helpers import classifier_inputs, records, write_jsonl

from slmkit.runs import checkpoint as ckpt_io
from slmkit.ship import classify, classify_lm
from slmkit.ship.classify_data import ClassifyError, Example
from slmkit.ship.score import score_units

pytestmark = pytest.mark.usefixtures("one_thread")
LM_OV = ["train.max_steps=40", "optim.lr=3e-3", "train.batch_size=8", "train.eval_batches=2", "train.doctor=false"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, stdlib_dir):
    root = tmp_path_factory.mktemp("classify-lm")
    base, train_file, test_file = classifier_inputs(root, stdlib_dir, 60)
    clf = classify.train(base, train_file, text_field="body", label_field="kind", progress=False, overrides=LM_OV,
                         method="lm")  # fmt: skip
    return root, base, clf, train_file, test_file


def test_one_child_run_per_label_and_a_fitted_temperature(setup):
    root, base, clf, train_file, _ = setup
    assert clf == root / "runs" / "base-classify-lm" and not ckpt_io.is_run_dir(clf)
    meta = json.loads((clf / "classify.json").read_text())
    assert meta["method"] == "label-lms" and meta["labels"] == ["code", "prose"]
    assert meta["runs"] == {"code": "labels/label-00", "prose": "labels/label-01"}
    assert meta["priors"] == {"code": 0.5, "prose": 0.5} and meta["label_counts"] == {"code": 60, "prose": 60}
    assert meta["calibration"]["records"] == 12 and 0.1 <= meta["temperature"] <= 1000
    for k, lab in enumerate(meta["labels"]):
        run = clf / meta["runs"][lab]
        info = ckpt_io.read_run_info(run)
        assert info["status"] == "finished" and info["step"] == 40 and info["parent"] == str(base)
        cfg = ckpt_io.read_run_config(run)
        assert cfg.data.source == str(clf / "data" / f"label-{k:02d}.txt") and cfg.optim.lr == 3e-3
        texts = (clf / "data" / f"label-{k:02d}.txt").read_text().rstrip("\n").split("\n\n")
        assert len(texts) == 54  # 60 records less the 6 held out to fit the temperature
        want = [json.loads(x)["body"] for x in open(train_file) if json.loads(x)["kind"] == lab]
        assert set(texts) <= set(want)


def test_probabilities_are_the_tempered_posterior_of_each_label_models_likelihood(setup):
    _, _, clf_dir, _, _ = setup
    clf = classify.load_classifier(clf_dir)
    texts = ["def f(x):\n    return x + 1", "She walked along the harbour wall in the mist."]
    nll = np.zeros((2, 2))
    for j, lab in enumerate(clf.labels):  # reference: each label's run scored on its own
        model, tok, _, _ = ckpt_io.load_model(clf_dir / clf.runs[lab], "best")
        nll[:, j] = [r["loss"] * r["tokens"] for r in score_units(model, tok, texts, top_spans=0)]
    z = -nll / clf.meta["temperature"] + np.log(0.5)
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    assert np.allclose(clf.probabilities(texts), want, atol=1e-9)
    assert [r["label"] for r in clf.predict(enumerate(texts))] == ["code", "prose"]


def test_predict_streams_in_chunks_with_the_same_answers(setup, monkeypatch):
    _, _, clf_dir, _, _ = setup
    clf = classify.load_classifier(clf_dir)
    texts = ["def f(x):\n    return x + 1", "She walked along the harbour wall.", "import os\nos.getcwd()"]
    whole = list(clf.predict(enumerate(texts)))
    monkeypatch.setattr(classify_lm, "PREDICT_CHUNK", 2)
    read = []

    def items():
        for i, t in enumerate(texts):
            read.append(i)
            yield i, t

    stream = clf.predict(items())
    first = next(stream)
    assert read == [0, 1]  # the first record comes before the third text is read
    got = [first, *stream]  # the same answers (batches of other sizes round differently in the last digits)
    assert [(r["id"], r["label"]) for r in got] == [(r["id"], r["label"]) for r in whole]
    for a, b in zip(got, whole, strict=True):
        assert a["probs"] == pytest.approx(b["probs"], rel=1e-4, abs=1e-9)


def test_predict_and_eval_cli(setup, run_cli, tmp_path):
    _, _, clf, _, test_file = setup
    out = tmp_path / "pred.jsonl"
    code, _, err = run_cli("classify", "predict", clf, "--input", test_file, "--out", out, "--no-progress")
    assert code == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 24 and all(abs(sum(r["probs"].values()) - 1) < 1e-6 for r in rows)
    report = tmp_path / "m.json"
    code, stdout, err = run_cli("classify", "eval", clf, "--data", test_file, "--plot", tmp_path / "cm.png",
                                "--report", report, "--no-progress")  # fmt: skip
    assert code == 0, err
    m = json.loads(report.read_text())
    assert m["n"] == 24 and m["accuracy"] >= 0.9, m  # Python vs English: two 40-step LMs tell them apart


def test_bad_inputs_are_one_line_and_leave_nothing(setup, run_cli, tmp_path, stdlib_dir):
    root, base, clf, train_file, _ = setup
    before = sorted(p.name for p in (root / "runs").iterdir())
    for ov, key in (("data.source=x.txt", "data.source"), ("train.init_from=runs/y", "train.init_from")):
        code, _, err = run_cli("classify", "train", base, "--data", train_file, "--text-field", "body",
                               "--label-field", "kind", "--method", "lm", ov)  # fmt: skip
        assert code == 2 and len(err.strip().splitlines()) == 1 and f"{key} is set by" in err, err
    code, _, err = run_cli("classify", "train", base, "--data", train_file, "--method", "lm", "--name",
                           "base-classify-lm")  # fmt: skip
    assert code == 2 and "no string field 'text'" in err, err
    code, _, err = run_cli("classify", "train", base, "--data", train_file, "--text-field", "body", "--label-field",
                           "kind", "--method", "lm", "--name", "base-classify-lm")  # fmt: skip
    assert code == 2 and "already exists" in err, err
    few = write_jsonl(tmp_path / "few.jsonl", records(stdlib_dir, 3))
    code, _, err = run_cli("classify", "train", base, "--data", few, "--text-field", "body", "--label-field", "kind",
                           "--method", "lm")  # fmt: skip
    assert code == 2 and "label 'code' has" in err and "needs at least 330 per label here" in err, err
    code, _, err = run_cli("classify", "train", base, "--data", train_file, "--text-field", "body", "--label-field",
                           "kind", "--method", "lm", "train.max_steps=ten")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "max_steps" in err, err
    with pytest.raises(SystemExit) as exc:
        run_cli("classify", "train", base, "--data", train_file, "--method", "bayes")
    assert exc.value.code == 2
    assert sorted(p.name for p in (root / "runs").iterdir()) == before

    broken = tmp_path / "broken"
    broken.mkdir()
    meta = json.loads((clf / "classify.json").read_text())
    (broken / "classify.json").write_text(json.dumps({**meta, "runs": {"code": "labels/label-00"}}))
    code, _, err = run_cli("classify", "predict", broken, "--input", train_file, "--no-progress")
    assert code == 2 and "does not name a run for every label" in err, err
    (broken / "classify.json").write_text(json.dumps({**meta, "priors": {"code": 1.0}}))
    code, _, err = run_cli("classify", "predict", broken, "--input", train_file, "--no-progress")
    assert code == 2 and "does not give a prior for every label" in err, err
    (broken / "classify.json").write_text(json.dumps(meta))
    code, _, err = run_cli("classify", "predict", broken, "--input", train_file, "--no-progress")
    assert code == 2 and "the run of label 'code' cannot be read" in err, err


def test_calibration_split_holds_out_a_share_of_each_label():
    ex = [Example(i, f"t{i}", "a" if i < 80 else "b") for i in range(100)]
    fit, held = classify_lm.calibration_split(ex, ["a", "b"], 0.1, seed=1)
    assert len(held) == 10 and sum(e.label == "a" for e in held) == 8 and len(fit) == 90
    assert {e.line for e in fit} | {e.line for e in held} == set(range(100))
    assert classify_lm.calibration_split(ex, ["a", "b"], 0.1, seed=1)[1] == held  # seeded
    few = ex[75:85]  # 5 of each label: one each held out, under MIN_CALIBRATION: nothing held out
    assert classify_lm.calibration_split(few, ["a", "b"], 0.1, seed=1) == (few, [])
    with pytest.raises(ClassifyError, match=r"\[0, 1\)"):
        classify_lm.calibration_split(ex, ["a", "b"], 1.0, seed=1)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    nll = rng.normal(500, 20, size=(4000, 3))
    log_prior = np.log([0.5, 0.3, 0.2])
    p = classify_lm.posterior(nll, log_prior, 12.0)
    y = np.array([rng.choice(3, p=row) for row in p])
    t, loss = classify_lm.fit_temperature(nll, log_prior, y)
    assert 10.5 < t < 13.5 and loss == pytest.approx(classify_lm.fit_temperature(nll, log_prior, y)[1])
    separable = np.array([[0.0, 50.0], [50.0, 0.0]] * 10)
    assert classify_lm.fit_temperature(separable, np.log([0.5, 0.5]), np.array([0, 1] * 10))[0] == pytest.approx(0.1)
    assert classify_lm.default_steps(10**9, 4096) == classify_lm.MAX_STEPS
    assert classify_lm.default_steps(30_000, 4096) == 37 and classify_lm.default_steps(10, 4096) == 10


def test_a_stopped_training_is_resumed_keeping_the_finished_labels(setup, run_cli, monkeypatch, tmp_path, stdlib_dir):
    """Label 1's training stops part-way (as Ctrl-C or SIGTERM would: a checkpoint, status interrupted): the
    classifier is left unfinished and said so; --resume keeps label 0's run, continues label 1's and finishes."""
    root, base, _, train_file, test_file = setup
    real = classify_lm.train_run

    def stop_label_1(cfg=None, **kw):
        if cfg is not None and cfg.train.name == "label-01":
            kw["stop_after"] = 5
        return real(cfg, **kw)

    args = ["classify", "train", base, "--data", train_file, "--text-field", "body", "--label-field", "kind",
            "--method", "lm", "--name", "stopped", "--no-progress", *LM_OV]  # fmt: skip
    monkeypatch.setattr(classify_lm, "train_run", stop_label_1)
    code, _, err = run_cli(*args)
    assert code == 2 and "training of label 'prose' stopped (interrupted)" in err and "--resume" in err, err
    clf = root / "runs" / "stopped"
    assert not (clf / "classify.json").exists() and (clf / classify_lm.JOB_FILE).is_file()
    assert ckpt_io.read_run_info(clf / "labels" / "label-01")["step"] == 5
    monkeypatch.setattr(classify_lm, "train_run", real)
    code, _, err = run_cli("classify", "predict", clf, "--input", test_file, "--no-progress")
    assert code == 2 and "unfinished classifier" in err and "--resume" in err, err
    code, _, err = run_cli(*args)
    assert code == 2 and "already exists" in err and "--resume" in err, err
    other = write_jsonl(tmp_path / "other.jsonl", records(stdlib_dir, 60)[::-1])  # the same records, reordered
    code, _, err = run_cli(*[other if a == train_file else a for a in args], "--resume")
    assert code == 2 and "cannot resume" in err and "examples_sha256" in err, err

    label_0 = (clf / "labels" / "label-00" / "metrics.jsonl").read_text()
    code, out, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert "label 1/2 'code': trained already" in err and "label 2/2 'prose': resuming" in err
    assert (clf / "labels" / "label-00" / "metrics.jsonl").read_text() == label_0  # not trained again
    info = ckpt_io.read_run_info(clf / "labels" / "label-01")
    assert info["status"] == "finished" and info["step"] == 40 and info["resumed_from"]
    assert json.loads((clf / "classify.json").read_text())["runs"]["prose"] == "labels/label-01"
    code, _, err = run_cli("classify", "predict", clf, "--input", test_file, "--no-progress")
    assert code == 0, err
    code, _, err = run_cli(*args, "--resume")
    assert code == 2 and "finished classifier; nothing to resume" in err, err
