"""Ablation studies: arms, seeds, and a real 2 arms x 2 seeds study on a tiny CPU config that is killed midway
(one run interrupted, one crashed), resumed, and writes its chart and summary."""

import json

import pytest
from conftest import at_train_step, raising, tiny_overrides

from slmkit.base.config import ConfigError
from slmkit.base.config_files import load_config
from slmkit.base.stats import NOISE, UNKNOWN
from slmkit.runs import checkpoint as ckpt_io
from slmkit.study.ablate import BASE_ARM, StudyError, make_arms, parse_vary, plan_study, run_study

# the base of the real studies: narrower than TINY, 6 steps with an eval every 3 (the kill test counts steps)
STUDY_BASE = tiny_overrides("model.n_embd=16", "train.eval_every=3", "train.log_every=100", "train.max_steps=6",
                            "train.threads=1")  # fmt: skip


def test_parse_vary():
    assert parse_vary("optim.lr=1e-3,3e-4") == ("optim.lr", ["1e-3", "3e-4"])
    with pytest.raises(ConfigError, match="section.field=value1,value2"):
        parse_vary("optim.lr")


def test_arms_change_one_thing_at_a_time():
    base = load_config(None, ["optim.lr=1e-3", "optim.min_lr=1e-4"])
    arms = make_arms(base, [("optim.lr", ["1e-3", "3e-4"]), ("model.norm", ["layernorm", "rmsnorm"])])
    assert [a.name for a in arms] == [BASE_ARM, "lr=3e-4", "norm=rmsnorm"]  # values equal to the base are dropped
    assert arms[1].overrides == {"optim.lr": "3e-4", "optim.min_lr": "3e-05"}  # the schedule scales with the LR
    grid = make_arms(base, [("optim.lr", ["3e-4", "1e-4"]), ("model.norm", ["rmsnorm"])], grid=True)
    assert len(grid) == 1 + (3 * 2 - 1) and "lr=3e-4,norm=rmsnorm" in [a.name for a in grid]
    with pytest.raises(ConfigError, match="unknown config key"):
        make_arms(base, [("optim.lrr", ["1"])])
    with pytest.raises(ConfigError, match="model.norm"):
        make_arms(base, [("model.norm", ["batchnorm"])])
    with pytest.raises(ConfigError, match="nothing to compare"):
        make_arms(base, [("optim.lr", ["1e-3"])])


def test_seeds_control_init_and_data_order_separately(tmp_path):
    study = plan_study(None, ["optim.lr=3e-4"], seeds=3, out=tmp_path / "s", overrides=["train.seed=10"])
    arm = study.arms[1]
    cfgs = [study.run_config(arm, k) for k in study.seeds]
    assert [c.train.seed for c in cfgs] == [10, 11, 12]
    assert {c.train.data_seed for c in cfgs} == {10}  # data order fixed: spread = init noise
    assert cfgs[0].optim.lr == 3e-4 and cfgs[0].train.name == "seed-1"
    assert cfgs[0].train.out_dir == str(tmp_path / "s" / "lr=3e-4")
    study.vary_data_seed = True
    assert [study.run_config(arm, k).train.data_seed for k in study.seeds] == [10, 11, 12]


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return tiny_dataset()


@pytest.mark.slow
def test_real_study_survives_a_kill_resumes_and_summarizes(dataset, tmp_path, monkeypatch):
    from slmkit.engine.train import train

    out = tmp_path / "study"
    study = plan_study(None, ["model.norm=rmsnorm"], seeds=2, out=out, overrides=[*STUDY_BASE, f"data.dir={dataset}"])
    assert [a.name for a in study.arms] == [BASE_ARM, "norm=rmsnorm"]
    rms = study.arms[1]
    # killed midway, part 1: one run stopped after 2 of its 6 steps (status interrupted, checkpoint at step 2)
    train(study.run_config(rms, 2), progress=False, stop_after=2)
    assert ckpt_io.read_run_info(study.run_dir(rms, 2))["status"] == "interrupted"
    # part 2: base/seed-2 crashes at its first step. Order: base/1, rmsnorm/1, base/2 (crash), rmsnorm/2 (resume)
    with monkeypatch.context() as patch:
        at_train_step(patch, 13, raising(RuntimeError("simulated crash")))
        summary = run_study(study)
    rows = {r["arm"]: r for r in summary["arms"]}
    assert rows[BASE_ARM]["n"] == 1 and rows[BASE_ARM]["missing"] == [2]
    assert rows["norm=rmsnorm"]["n"] == 2 and rows["norm=rmsnorm"]["vs_base"]["verdict"] == UNKNOWN
    assert ckpt_io.read_run_info(study.run_dir(rms, 2)).get("resumed_from")  # resumed, not restarted
    assert ckpt_io.read_run_info(study.run_dir(study.arms[0], 2))["status"] == "crashed"

    finished = {p: ckpt_io.read_run_info(p)["created"] for p in out.glob("*/seed-*") if p != out / "base" / "seed-2"}
    summary = run_study(plan_study(None, ["model.norm=rmsnorm"], seeds=2, out=out,
                                   overrides=[*STUDY_BASE, f"data.dir={dataset}"]))  # fmt: skip
    assert {p: ckpt_io.read_run_info(p)["created"] for p in finished} == finished  # skipped, not retrained
    assert ckpt_io.read_run_info(out / "base" / "seed-2")["status"] == "finished"
    assert len(list((out / "base" / ".failed").iterdir())) == 1  # the crashed run was kept aside
    rows = {r["arm"]: r for r in summary["arms"]}
    assert all(r["n"] == 2 and not r["missing"] for r in rows.values())
    c = rows["norm=rmsnorm"]["vs_base"]
    assert c["ci_low"] <= c["delta"] <= c["ci_high"] and c["verdict"] in ("better", "worse", NOISE)
    assert summary["ranking"][0] in rows and set(summary["ranking"]) == set(rows)
    for f in ("summary.md", "summary.json", "ablation.png", "curves.png", "study.json"):
        assert (out / f).stat().st_size > 0, f
    assert json.loads((out / "summary.json").read_text())["arms"][0]["arm"] == BASE_ARM
    md = (out / "summary.md").read_text()
    assert "norm=rmsnorm" in md and "Δ vs base" in md and c["verdict"] in md


def test_a_study_dir_refuses_a_different_base(dataset, tmp_path):
    out = tmp_path / "s"
    run_study(plan_study(None, ["optim.lr=3e-4"], seeds=1, out=out, overrides=[*STUDY_BASE, f"data.dir={dataset}"]),
              train=False)  # fmt: skip
    with pytest.raises(StudyError, match="different base"):
        run_study(plan_study(None, ["optim.lr=3e-4"], seeds=1, out=out, overrides=[*STUDY_BASE, "model.n_embd=32"]),
                  train=False)  # fmt: skip


def test_cli_ablate_help_and_errors(run_cli):
    from slmkit.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["ablate"].format_help()
    for word in ("learning rate", "warmup", "batch size", "optimizer", "architecture", "train.seed", "data_seed"):
        assert word in text, word
    code, _, err = run_cli("ablate", "--vary", "optim.lrr=1e-3", "train.max_steps=2")
    assert code == 2 and "unknown config key" in err
