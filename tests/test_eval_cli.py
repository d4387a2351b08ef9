"""`slm eval` end to end on a tiny run, and benchmarks during training (eval.tasks / eval.every)."""

from __future__ import annotations

import json

import pytest
from evalkit import make_dataset, make_run

from slmkit.base.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    data = make_dataset(root)
    return root, data, make_run(root, data, "tiny", block_size=64)


@pytest.mark.slow
def test_slm_eval_writes_results_and_prints_the_table(tiny, run_cli, need_tasks):
    need_tasks("hellaswag", "winogrande", "lambada")
    _, _, run = tiny
    code, out, err = run_cli(
        "eval",
        run,
        "--tasks",
        "val,hellaswag,winogrande,lambada",
        "--limit",
        "8",
        "--val-tokens",
        "2000",
        "--no-progress",
    )
    assert code == 0, err
    for task in ("val", "hellaswag", "winogrande", "lambada"):
        res = json.loads((run / "evals" / f"{task}.json").read_text())
        assert res["task"] == task and res["step"] == 5 and "checkpoint" in res
    hs = json.loads((run / "evals" / "hellaswag.json").read_text())
    assert hs["n"] == 8 and set(hs["metrics"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert hs["truncated"] > 0  # block_size 64 is shorter than many HellaSwag items: cut and counted
    val = json.loads((run / "evals" / "val.json").read_text())["metrics"]
    assert val["tokens"] == 1999 and val["bpb"] > 0 and val["ppl"] > 1
    assert "| hellaswag | acc_norm |" in out and "GPT-2 124M" in out and "SmolLM2-135M" in out
    assert "SmolLM2-360M" in out and "SOTA small (target)" in out
    assert "| lambada | ppl |" in out and "| 0.25 |" in out


def test_eval_on_a_text_file_with_stride(tiny, run_cli, tmp_path):
    _, _, run = tiny
    text = tmp_path / "t.txt"
    text.write_text("def f(x):\n    return x\n" * 30)
    code, out, err = run_cli("eval", run, "--tasks", "val", "--data", text, "--stride", "16", "--no-progress")
    assert code == 0, err
    res = json.loads((run / "evals" / "val.json").read_text())["metrics"]
    assert res["stride"] == 16 and 0 < res["bytes"] < len(text.read_text()) and res["source"] == str(text)


def test_bad_task_names_and_missing_files_are_one_line_errors(tiny, run_cli, monkeypatch, tmp_path):
    _, _, run = tiny
    code, _, err = run_cli("eval", run, "--tasks", "hellaswag,boolq")
    assert code == 2 and "unknown task 'boolq'" in err and "arc_easy" in err
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path))
    code, _, err = run_cli("eval", run, "--tasks", "piqa")
    assert code == 2 and f"{tmp_path}/eval/piqa/valid.jsonl" in err


@pytest.mark.slow
def test_training_runs_benchmarks_every_k_steps(tiny, need_tasks):
    need_tasks("arc_easy", "winogrande")
    root, data, _ = tiny
    run = make_run(
        root, data, "with-evals", "eval.tasks=arc_easy,winogrande", "eval.every=2", "eval.limit=4", block_size=64
    )
    events = [e for e in read_metrics(run) if "eval/arc_easy/acc" in e]
    assert [e["step"] for e in events] == [2, 4, 5]
    assert all("eval/arc_easy/acc_norm" in e and "eval/winogrande/acc" in e for e in events)


def test_training_refuses_an_unknown_task_before_it_starts(tiny):
    from slmkit.engine.evaluate.tasks import TaskError

    root, data, _ = tiny
    with pytest.raises(TaskError, match="unknown task 'hella'"):
        make_run(root, data, "bad-evals", "eval.tasks=hella", block_size=64)


def test_eval_names_the_files_it_wrote(tiny, run_cli, tmp_path):
    _, _, run = tiny
    text = tmp_path / "t.txt"
    text.write_text("def g(y):\n    return y\n" * 20)
    code, _, err = run_cli("eval", run, "--tasks", "val", "--data", text, "--no-progress")
    assert code == 0, err
    line = next(line for line in err.splitlines() if line.startswith("wrote "))
    assert line == f"wrote {run / 'evals' / 'val.json'}" and "<task>" not in err
