"""`slm eval` against lm-eval on 50 items of every local task: through our adapter and through lm-eval's own `hf`
backend on the exported model. Log-likelihoods agree to 1e-5 and accuracies are identical.

Everything runs in float64: a summed log-likelihood of a few hundred nats has a float32 resolution of ~3e-5, so
1e-5 is only meaningful in double precision (where any tokenization, split or truncation difference would
still show as a large gap)."""

from __future__ import annotations

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from evalkit import make_dataset, make_run  # noqa: E402

from slmkit.engine.evaluate import run_task  # noqa: E402
from slmkit.engine.evaluate.tasks import TASKS  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
LIMIT, TOL = 50, 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, need_tasks):
    need_tasks(*TASKS)
    from lm_eval.tasks import TaskManager

    from slmkit.engine.evaluate.harness import TASK_DIR
    from slmkit.runs.checkpoint import load_model
    from slmkit.ship.export.artifact import export

    root = tmp_path_factory.mktemp("parity")
    run = make_run(root, make_dataset(root), "parity", block_size=512)
    names = {t: f"slm_{t}" for t in TASKS}  # the shipped task files, reading $SLM_DATA_DIR/eval
    model, tok, _, _ = load_model(run)
    model = model.double()
    ours = {t: run_task(model, tok, t, limit=LIMIT) for t in TASKS}
    hf_dir = export(run, root / "hf")
    return run, hf_dir, names, TaskManager(include_path=str(TASK_DIR), include_defaults=False), ours


def _lm_eval(model, names, tm, **kw):
    out = lm_eval.simple_evaluate(
        model=model, tasks=list(names.values()), task_manager=tm, limit=LIMIT, log_samples=True, **kw
    )
    return {t: (out["results"][n], sorted(out["samples"][n], key=lambda s: s["doc_id"])) for t, n in names.items()}


def _compare(ours: dict, theirs: dict) -> None:
    for task, res in ours.items():
        agg, samples = theirs[task]
        assert len(samples) == res["n"] == LIMIT
        worst = max(
            abs(a - b[0]) for s, lls in zip(samples, res["loglikelihoods"]) for a, b in zip(lls, s["filtered_resps"])
        )
        assert worst <= TOL, f"{task}: max abs log-likelihood diff {worst:.3e}"
        for metric, value in res["metrics"].items():
            if metric == "ppl":
                assert agg["perplexity,none"] == pytest.approx(value, rel=1e-4), task
            elif not metric.endswith("_stderr"):
                assert agg[f"{metric},none"] == value, f"{task} {metric}: lm-eval {agg[f'{metric},none']} vs {value}"
                assert agg[f"{metric}_stderr,none"] == pytest.approx(res["metrics"][f"{metric}_stderr"]), task


def test_adapter_matches_slm_eval(setup):
    import slmkit.engine.evaluate.harness  # noqa: F401  (registers the "slmkit" model)

    run, _, names, tm, ours = setup
    _compare(ours, _lm_eval("slmkit", names, tm, model_args=f"run={run},dtype=float64"))


def test_hf_backend_on_export_matches_slm_eval(setup):
    _, hf_dir, names, tm, ours = setup
    _compare(
        ours, _lm_eval("hf", names, tm, model_args=f"pretrained={hf_dir},dtype=float64", device="cpu", batch_size=8)
    )


def test_rolling_and_generation_through_the_adapter(setup):
    from lm_eval.api.instance import Instance

    from slmkit.engine.evaluate.harness import SlmkitLM

    run = setup[0]
    lm = SlmkitLM(run=str(run))
    text = "def main():\n    return 1\n" * 80  # longer than one window: several disjoint windows
    req = Instance("loglikelihood_rolling", {}, (text,), 0)
    (ll,) = lm.loglikelihood_rolling([req])
    ids = lm.tok_encode(text)
    assert ll < 0 and len(ids) > lm.max_length
    gen = Instance("generate_until", {}, ("def ", {"until": ["\n"], "max_gen_toks": 8}), 0)
    (out,) = lm.generate_until([gen])
    assert isinstance(out, str) and "\n" not in out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("plain")
    return make_run(root, make_dataset(root), "tiny-plain", block_size=128)


def test_plain_lm_eval_command_with_the_local_tasks(tiny_run, need_tasks, tmp_path):
    """After `make setup` (the plugin's .pth), lm-eval's own console script, given nothing but the model, its run and
    the tasks, finds the `slmkit` model and the local slm_* tasks, files its results under the run's name and records
    the device the model ran on (lm-eval's default --device is cuda:0)."""
    import json
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path

    import torch

    from slmkit.lm_eval_plugin import PTH_NAME

    need_tasks("arc_easy", "hellaswag")
    if not (Path(sysconfig.get_paths()["purelib"]) / PTH_NAME).is_file():
        pytest.skip(f"the lm-eval plugin is not in {sys.prefix}: run `make setup` (python -m slmkit.lm_eval_plugin)")
    lm_eval_cli = Path(sys.executable).parent / "lm_eval"
    out = tmp_path / "out"
    cmd = [str(lm_eval_cli), "--model", "slmkit", "--model_args", f"run={tiny_run}",
           "--tasks", "slm_arc_easy,slm_hellaswag", "--limit", "3", "--output_path", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == [tiny_run.name]  # not a random folder name
    report = json.loads(next((out / tiny_run.name).glob("results*.json")).read_text())
    assert report["model_name"] == tiny_run.name
    assert report["config"]["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    for task in ("slm_arc_easy", "slm_hellaswag"):
        assert "acc,none" in report["results"][task] and report["n-samples"][task]["effective"] == 3


def test_the_plugin_adds_the_task_folder_to_every_task_manager(tmp_path, need_tasks):
    """In-process: the hook the .pth installs puts the slm_* tasks on any TaskManager's include path, once, before the
    caller's folders (so a copy pinned to another data folder by write_lm_eval_tasks overrides it)."""
    from pathlib import Path

    import lm_eval.tasks.manager
    from lm_eval.tasks import TaskManager

    from slmkit.engine.evaluate.harness import TASK_DIR, write_lm_eval_tasks
    from slmkit.lm_eval_plugin import include_slmkit_tasks

    need_tasks("piqa")
    include_slmkit_tasks(lm_eval.tasks.manager)  # what the .pth does when lm-eval loads; idempotent
    include_slmkit_tasks(lm_eval.tasks.manager)
    tm = TaskManager(include_defaults=False)
    assert {f"slm_{t}" for t in TASKS} <= set(tm.all_subtasks)
    assert tm.task_index["slm_piqa"].yaml_path.parent.resolve() == TASK_DIR.resolve()
    pinned = write_lm_eval_tasks(tmp_path / "tasks", ["piqa"])
    tm = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    assert tm.task_index[pinned["piqa"]].yaml_path.parent == tmp_path / "tasks"
    both = TaskManager(include_path=[str(TASK_DIR), tmp_path / "tasks"], include_defaults=False).include_path
    assert [Path(p).resolve() for p in both] == [TASK_DIR.resolve(), tmp_path / "tasks"]
    docs = list(tm.load([pinned["piqa"]])["tasks"][pinned["piqa"]].validation_docs())
    assert docs[0]["label"] in (0, 1) and {"goal", "sol1", "sol2"} <= set(docs[0])
