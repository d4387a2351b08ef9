"""`slm anomaly fit|detect` and `ship.anomaly`: a char model trained on Python flags English prose."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import tiny_overrides

from slmkit.base.config_files import load_config
from slmkit.data.dataset import split_shards
from slmkit.data.prepare import prepare
from slmkit.data.sources import DataError
from slmkit.data.unigram import Unigram, count_split
from slmkit.engine.train import train
from slmkit.runs.checkpoint import run_tokenizer
from slmkit.ship.anomaly import DetectorError, evaluate, read_detector, read_labels

pytestmark = pytest.mark.usefixtures("one_thread")

PROSE = """The harbour was quiet in the early morning, and the fishermen had not yet come down to their boats. A thin
mist lay over the water, so that the far side of the bay could only be guessed at from the sound of the bells on
the buoys. Anna walked along the sea wall with her hands in her pockets, thinking about the letter she had received
the night before. Her brother wrote that he would be coming home at the end of the summer, after three years away,
and that he hoped she would meet him at the station. She had read the letter four times, and each time it seemed to
say something a little different. Was he glad to be coming back, or only tired of being away? He had never been
good at saying what he meant. When they were children he used to leave notes under her door instead of speaking,
and she would spend the whole evening trying to work out whether he was angry with her or simply bored. Now the
notes were letters, and the door was a whole continent, but very little else had changed. A gull landed on the wall
beside her and looked at her with one yellow eye, as if it expected to be fed. She laughed and told it that she had
nothing, and it flew off towards the boats, where the first of the men were now arriving with their nets and their
flasks of tea. The sun was beginning to break through the mist, and the water turned from grey to a pale and
uncertain blue. She decided that she would write back that afternoon, and that she would say only that she would be
there, on the platform, whatever time the train arrived. Anything more could wait until she saw his face."""


HELD_OUT = ("string.py", "sched.py", "queue.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory, stdlib_dir):
    """A char model trained ~15 s on 40 stdlib modules (~600 KB: fewer files and it overfits, and prose is no more
    surprising to it than unseen code), none of HELD_OUT."""
    root = tmp_path_factory.mktemp("anomaly")
    src = root / "corpus"
    src.mkdir()
    files = sorted(p for p in stdlib_dir.glob("*.py") if 3000 < p.stat().st_size < 40000 and p.name not in HELD_OUT)
    for f in files[:40]:
        (src / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    data = prepare(str(src), tokenizer="char", out=root / "data", val_fraction=0.05, progress=False)
    ov = tiny_overrides("model.block_size=64", "model.n_embd=64", "train.batch_size=8", "train.max_steps=1000",
                        "train.eval_every=500", "train.log_every=500", "optim.lr=3e-3", f"data.dir={data}",
                        f"train.out_dir={root / 'runs'}", "train.name=tiny")  # fmt: skip
    return train(load_config(None, ov), overrides=ov, progress=False)


@pytest.fixture
def sources(tmp_path, stdlib_dir):
    normal = tmp_path / "normal"
    normal.mkdir()
    for name in ("sched.py", "queue.py"):  # held out: not among the training files
        (normal / name).write_text((stdlib_dir / name).read_text(encoding="utf-8"), encoding="utf-8")
    test = tmp_path / "test.jsonl"
    code = (stdlib_dir / "string.py").read_text(encoding="utf-8")
    prose = PROSE.replace("\n", " ")
    code = code[code.index("class Template") :]  # code, past the module's docstring and constants
    rows = [{"id": f"py{i}", "text": code[i : i + 200], "label": 0} for i in range(0, 6000, 200)]
    rows += [{"id": f"en{i}", "text": prose[i : i + 200], "label": 1} for i in range(0, len(prose) - 100, 200)]
    test.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"id": r["id"], "label": r["label"]}) + "\n" for r in rows[::-1]))
    return normal, test, labels, rows


def fit_detector(run_cli, run, normal, det, *extra) -> tuple[dict, str]:
    """`slm anomaly fit` that must succeed: (the detector it wrote, its stdout)."""
    code, out, err = run_cli("anomaly", "fit", run, "--normal", normal, *extra, "--out", det, "--no-progress")
    assert code == 0, err
    return json.loads(det.read_text()), out


def test_fit_then_detect_separates_prose_from_python(run, run_cli, sources, tmp_path):
    normal, test, labels, rows = sources
    det = tmp_path / "detector.json"
    d, out = fit_detector(run_cli, run, normal, det, "--unit", "window", "--fpr", "0.05")
    assert d["score"] == "bpb" and d["unit"] == "window" and d["fpr"] == 0.05 and d["run"] == str(run.resolve())
    assert d["calibration"]["scored"] >= 20 and d["calibration"]["flagged_fraction"] <= 0.05
    assert d["calibration"]["min"] <= d["threshold"] <= d["calibration"]["max"]
    assert "threshold" in out

    flags, plot, report = tmp_path / "flags.jsonl", tmp_path / "hist.png", tmp_path / "report.json"
    code, _, err = run_cli("anomaly", "detect", det, "--input", test, "--unit", "doc", "--labels", labels,
                           "--out", flags, "--plot", plot, "--report", report, "--no-progress")  # fmt: skip
    assert code == 0, err
    got = [json.loads(x) for x in flags.read_text().splitlines()]
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    m = json.loads(report.read_text())
    assert m["roc_auc"] > 0.75 and m["pr_auc"] > 0.35, m  # chance: 0.5 and 8/38 = 0.21
    assert m["units"] == len(rows) and 0 <= m["fpr_at_threshold"] < 0.5
    assert plot.read_bytes()[:4] == b"\x89PNG" and "ROC-AUC" in err
    en = [g["score"] for g in got if g["id"].startswith("en")]
    py = [g["score"] for g in got if g["id"].startswith("py")]
    assert np.median(en) > np.median(py)


def test_bad_inputs_are_one_line_exit_2(run, run_cli, sources, tmp_path, capsys):
    normal, test, _labels, rows = sources
    code, _, err = run_cli("anomaly", "fit", run, "--normal", tmp_path / "nope", "--out", tmp_path / "d.json")
    assert code == 2 and "nope" in err and not (tmp_path / "d.json").exists()
    with pytest.raises(SystemExit) as e:
        run_cli("anomaly", "fit", run, "--normal", normal, "--fpr", "1.5", "--out", tmp_path / "d.json")
    assert e.value.code == 2
    capsys.readouterr()  # the usage error's line
    (tmp_path / "junk.json").write_text("{}")
    code, _, err = run_cli("anomaly", "detect", tmp_path / "junk.json", "--input", test)
    assert code == 2 and "not a detector file" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(DetectorError, match="not a file"):
        read_detector(tmp_path / "missing.json")
    short = tmp_path / "short.txt"
    short.write_text("1\n0\n")
    with pytest.raises(DetectorError, match="2 labels for 3 units"):
        read_labels(short, ["a", "b", "c"])
    with pytest.raises(DetectorError, match="one class only"):
        evaluate([1.0, 2.0], np.array([0, 0]), 1.5)


def test_metrics_and_unencodable_units():
    m = evaluate([1.0, 2.0, "inf", None, 0.5], np.array([0, 1, 1, 0, 0]), 1.5)
    assert m["roc_auc"] == 1.0 and m["tpr_at_threshold"] == 1.0 and m["fpr_at_threshold"] == 0.0
    assert m["units"] == 4


def test_a_detector_refuses_another_runs_tokenizer(run, run_cli, sources, tmp_path, tiny_dataset, capsys):
    normal, test, _labels, _rows = sources
    det = tmp_path / "detector.json"
    code, _, err = run_cli("anomaly", "fit", run, "--normal", normal, "--out", det, "--no-progress")
    assert code == 0, err
    recorded = json.loads(det.read_text())["tokenizer_fingerprint"]
    ov = tiny_overrides(f"data.dir={tiny_dataset()}", f"train.out_dir={tmp_path / 'runs'}", "train.name=other",
                        "train.max_steps=2")  # fmt: skip
    other = train(load_config(None, ov), overrides=ov, progress=False)  # a char model of another corpus
    theirs = run_tokenizer(other).fingerprint
    capsys.readouterr()  # training's log lines
    assert theirs != recorded
    code, out, err = run_cli("anomaly", "detect", det, "--input", test, "--run", other, "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and recorded in err and theirs in err, err
    code, out, err = run_cli("anomaly", "detect", det, "--input", test, "--run", run, "--no-progress")
    assert code == 0 and len(out.splitlines()) > 10, err  # the detector's own run, named explicitly


# ---------------------------------------------------------------------------------------------------------
# --score ratio: loss minus a unigram model's loss


def test_unigram_losses_and_leave_out():
    uni = Unigram([3, 1, 0])  # add-0.5: probabilities 3.5/5.5, 1.5/5.5, 0.5/5.5
    assert uni.loss(np.array([0, 1])) == pytest.approx(-(np.log(3.5 / 5.5) + np.log(1.5 / 5.5)) / 2)
    # leave_out: as if [0, 1] had not been counted: counts [2, 0, 0], total 2
    assert uni.loss(np.array([0, 1]), leave_out=True) == pytest.approx(-(np.log(2.5 / 3.5) + np.log(0.5 / 3.5)) / 2)
    with pytest.raises(DataError, match="outside"):
        uni.loss(np.array([3]))
    with pytest.raises(DataError, match="not all counted"):
        uni.loss(np.array([2]), leave_out=True)
    with pytest.raises(DataError, match="non-empty"):
        Unigram([])


def test_training_split_counts_match_its_shards(run):
    dataset = json.loads((run / "run.json").read_text())["dataset"]
    tok = run_tokenizer(run)
    counts, tokens = count_split(dataset, "train", tok.vocab_size)
    want = np.concatenate([np.fromfile(p, dtype="<u2") for p, _ in split_shards(dataset, "train")])
    assert tokens == len(want) and (counts == np.bincount(want, minlength=tok.vocab_size)).all()
    _, head = count_split(dataset, "train", tok.vocab_size, limit=1000)
    assert head == 1000


def test_ratio_detector_from_training_counts(run, run_cli, sources, tmp_path):
    normal, test, labels, rows = sources
    det = tmp_path / "ratio.json"
    d, out = fit_detector(run_cli, run, normal, det, "--unit", "window", "--fpr", "0.05", "--score", "ratio")
    ref = d["reference"]
    assert d["score"] == "ratio" and d["version"] == 3 and ref["kind"] == "train" and "unigram reference" in out
    assert len(ref["counts"]) == run_tokenizer(run).vocab_size and sum(ref["counts"]) == ref["tokens"] > 100_000
    flags, report = tmp_path / "flags.jsonl", tmp_path / "report.json"
    code, _, err = run_cli("anomaly", "detect", det, "--input", test, "--unit", "doc", "--labels", labels,
                           "--out", flags, "--plot", tmp_path / "h.png", "--report", report,
                           "--no-progress")  # fmt: skip
    assert code == 0, err
    got = [json.loads(x) for x in flags.read_text().splitlines()]
    uni = Unigram(ref["counts"])
    tok = run_tokenizer(run)
    for g, r in zip(got[:3], rows[:3], strict=True):  # the score is the loss minus the unigram's loss
        assert g["ref_loss"] == pytest.approx(uni.loss(np.array(tok.encode(r["text"])[1:])))
        assert g["score"] == pytest.approx(g["loss"] - g["ref_loss"])
    assert json.loads(report.read_text())["roc_auc"] > 0.75


def test_ratio_detector_from_the_calibration_text(run, run_cli, sources, tmp_path):
    normal, _test, _labels, _rows = sources
    d, _ = fit_detector(run_cli, run, normal, tmp_path / "ratio.json", "--score", "ratio", "--reference", "normal")
    tok = run_tokenizer(run)
    texts = [p.read_text(encoding="utf-8") for p in sorted(normal.iterdir())]
    assert d["reference"]["kind"] == "normal" and d["reference"]["tokens"] == sum(len(tok.encode(t)) for t in texts)
    # each calibration unit is scored against the counts without its own tokens, so neither file's rare tokens
    # make it look ordinary: the leave-one-out ratio is above the one with the unit counted
    uni = Unigram(d["reference"]["counts"])
    ids = np.array(tok.encode(texts[0])[1:])
    assert uni.loss(ids, leave_out=True) > uni.loss(ids)


def test_ratio_refusals(run, run_cli, sources, tmp_path):
    normal, test, _labels, _rows = sources
    code, _, err = run_cli("anomaly", "fit", run, "--normal", normal, "--reference", "normal", "--out",
                           tmp_path / "d.json")  # fmt: skip
    assert code == 2 and "--score ratio" in err and len(err.strip().splitlines()) == 1
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    info = json.loads((moved / "run.json").read_text())
    (moved / "run.json").write_text(json.dumps({**info, "dataset": str(tmp_path / "gone")}))
    code, _, err = run_cli("anomaly", "fit", moved, "--normal", normal, "--score", "ratio", "--reference", "train",
                           "--out", tmp_path / "d.json")  # fmt: skip
    assert code == 2 and "--reference normal" in err and not (tmp_path / "d.json").exists(), err
    d, _ = fit_detector(run_cli, moved, normal, tmp_path / "d.json", "--score", "ratio")  # auto: falls back
    assert d["reference"]["kind"] == "normal"
    del d["reference"]["counts"]
    (tmp_path / "d.json").write_text(json.dumps(d))
    code, _, err = run_cli("anomaly", "detect", tmp_path / "d.json", "--input", test)
    assert code == 2 and "reference" in err and len(err.strip().splitlines()) == 1, err
