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
def setup(tmp_path_factory, data_dir):
    from lm_eval.tasks import TaskManager

    from slmkit.engine.evaluate.harness import write_lm_eval_tasks
    from slmkit.runs.checkpoint import load_model
    from slmkit.ship.export import export

    root = tmp_path_factory.mktemp("parity")
    run = make_run(root, make_dataset(root), "parity", block_size=512)
    names = write_lm_eval_tasks(root / "tasks")
    model, tok, _, _ = load_model(run)
    model = model.double()
    ours = {t: run_task(model, tok, t, limit=LIMIT) for t in TASKS}
    hf_dir = export(run, root / "hf")
    return run, hf_dir, names, TaskManager(include_path=str(root / "tasks"), include_defaults=False), ours


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


def test_plain_lm_eval_command_finds_the_slmkit_model(setup, tmp_path):
    """`make setup` installs the plugin .pth, so lm-eval's own console script knows `--model slmkit`."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from slmkit.engine.evaluate.harness import write_lm_eval_tasks

    run, _, _, _, ours = setup
    names = write_lm_eval_tasks(tmp_path / "tasks", ["arc_easy"])
    lm_eval_cli = Path(sys.executable).parent / "lm_eval"
    out = tmp_path / "out"
    cmd = [str(lm_eval_cli), "--model", "slmkit", "--model_args", f"run={run},dtype=float64", "--device", "cpu",
           "--tasks", names["arc_easy"], "--include_path", str(tmp_path / "tasks"), "--limit", "5",
           "--output_path", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(next(out.rglob("results*.json")).read_text())["results"][names["arc_easy"]]
    assert "acc,none" in result
