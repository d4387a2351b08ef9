"""MMLU in `slm eval`: prompts and scores equal lm-eval's own `mmlu` task files (lm_eval/tasks/mmlu/default) run over
the same questions, 0-shot and 5-shot; per-subject and macro averages; bad files refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval
import pytest
from evalkit import make_dataset, make_run

from slmkit.engine.evaluate import run_task
from slmkit.engine.evaluate.mmlu import MMLU_TASKS, mmlu_metrics, mmlu_requests, read_questions

pytestmark = pytest.mark.usefixtures("one_thread")
SUBJECTS, LIMIT = ("abstract_algebra", "high_school_biology"), 8


@pytest.fixture(scope="module")
def mmlu_root(need_data, tmp_path_factory):
    """An eval root holding two real MMLU subjects (test + dev), so the suite's 57-subject loop stays short."""
    src = need_data(*(f"eval/mmlu/{sp}/{s}_{sp}.csv" for s in SUBJECTS for sp in ("test", "dev"))) / "eval" / "mmlu"
    root = tmp_path_factory.mktemp("mmlu-data") / "eval"  # as $SLM_DATA_DIR/eval
    for split in ("test", "dev"):
        (root / "mmlu" / split).mkdir(parents=True)
        for s in SUBJECTS:
            (root / "mmlu" / split / f"{s}_{split}.csv").write_bytes((src / split / f"{s}_{split}.csv").read_bytes())
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmlu-run")
    return make_run(root, make_dataset(root), "mmlu", block_size=512)


def _lm_eval_tasks(mmlu_root: Path, out: Path) -> list[str]:
    """lm-eval's own per-subject yaml (its template, description, few-shot rules), with only the dataset pointed
    at our questions as JSON lines."""
    default = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    names = []
    for s in SUBJECTS:
        files = {}
        for split in ("test", "dev"):
            qs = read_questions(mmlu_root / "mmlu" / split / f"{s}_{split}.csv", s)
            path = out / f"{s}_{split}.jsonl"
            path.write_text("".join(json.dumps({"question": q.question, "choices": list(q.choices),
                                                "answer": q.answer}) + "\n" for q in qs))  # fmt: skip
            files[split] = str(path)
        (out / f"parity_{s}.yaml").write_text(
            f"include: {default / f'mmlu_{s}.yaml'}\ntask: parity_mmlu_{s}\ntag: []\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {files['test']}\n    dev: {files['dev']}\n"
        )
        names.append(f"parity_mmlu_{s}")
    return names


@pytest.mark.parametrize("task", list(MMLU_TASKS))
def test_prompts_and_scores_equal_lm_eval_mmlu(task, run, mmlu_root, tmp_path):
    from lm_eval.tasks import TaskManager

    import slmkit.engine.evaluate.harness  # noqa: F401  (registers the "slmkit" model)
    from slmkit.runs.checkpoint import load_model

    model, tok, _, _ = load_model(run)
    ours = run_task(model.double(), tok, task, limit=LIMIT, root=mmlu_root)
    names = _lm_eval_tasks(mmlu_root, tmp_path)
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    shots = MMLU_TASKS[task]
    out = lm_eval.simple_evaluate(model="slmkit", model_args=f"run={run},dtype=float64", tasks=names,
                                  task_manager=tm, limit=LIMIT, num_fewshot=shots, log_samples=True)  # fmt: skip
    requests = mmlu_requests(task, mmlu_root, LIMIT)
    for i, (s, name) in enumerate(zip(SUBJECTS, names)):
        samples = sorted(out["samples"][name], key=lambda x: x["doc_id"])
        assert len(samples) == LIMIT
        for j, sample in enumerate(samples):
            assert sample["arguments"][0][0] == requests[i * LIMIT + j][1]  # the same prompt, character for character
            theirs = [r[0] for r in sample["filtered_resps"]]
            assert max(abs(a - b) for a, b in zip(theirs, ours["loglikelihoods"][i * LIMIT + j])) <= 1e-5
        assert out["results"][name]["acc,none"] == ours["metrics"]["subjects"][s]["acc"]
    assert ours["n"] == 2 * LIMIT and ours["chance"] == 0.25


def test_group_and_macro_averages():
    m = mmlu_metrics(["a"] * 4 + ["b"] * 2, [True, True, True, False, False, False])
    assert m["acc"] == pytest.approx(0.5) and m["acc_macro"] == pytest.approx((0.75 + 0.0) / 2)
    assert m["subjects"] == {"a": {"acc": 0.75, "n": 4}, "b": {"acc": 0.0, "n": 2}}


def test_slm_eval_mmlu_prints_the_averages_and_writes_subjects(run, mmlu_root, run_cli, monkeypatch):
    monkeypatch.setenv("SLM_DATA_DIR", str(mmlu_root.parent))
    code, out, err = run_cli("eval", run, "--tasks", "mmlu_5shot", "--limit", "2", "--no-progress")
    assert code == 0, err
    assert "| mmlu_5shot | acc |" in out and "| mmlu_5shot | acc_macro |" in out
    saved = json.loads((run / "evals" / "mmlu_5shot.json").read_text())
    assert set(saved["metrics"]["subjects"]) == set(SUBJECTS) and saved["n"] == 4


def test_bad_mmlu_files_are_one_line_errors(run, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path))
    code, _, err = run_cli("eval", run, "--tasks", "mmlu", "--no-progress")
    assert code == 2 and "no <subject>_test.csv files" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "eval" / "mmlu" / "test"
    bad.mkdir(parents=True)
    (bad / "x_test.csv").write_text("question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,7\n")
    code, _, err = run_cli("eval", run, "--tasks", "mmlu", "--no-progress")
    assert code == 2 and "x_test.csv, line 2" in err and "answer 7 is not 0-3" in err
    (bad / "x_test.csv").write_text("question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,3\n")
    code, _, err = run_cli("eval", run, "--tasks", "mmlu_5shot", "--no-progress")
    assert code == 2 and "x_dev.csv is missing" in err


def test_mmlu_questions_are_checked_for_contamination(mmlu_root):
    from slmkit.engine.contamination import resolve_tasks, task_texts

    assert resolve_tasks(["mmlu"], mmlu_root)[0] == ["mmlu"]
    texts = [t for _, t in task_texts("mmlu", mmlu_root)]
    questions = [q for s in SUBJECTS for q in read_questions(mmlu_root / "mmlu" / "test" / f"{s}_test.csv", s)]
    assert len(texts) == len(questions) and texts[0] == questions[0].question + "\n" + "\n".join(questions[0].choices)
