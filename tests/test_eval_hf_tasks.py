"""Benchmark items from Hugging Face datasets (`--task-source hf`), offline: `datasets.load_dataset` is replaced by
in-memory rows built from the local records, so both sources must give the same items and the same scores."""

from __future__ import annotations

import json
import os
import sys

import pytest
from evalkit import make_dataset, make_run

from slmkit.engine.evaluate.tasks import HF_DATASETS, TASKS, TaskError, load_items, read_hf_records, read_records

pytestmark = pytest.mark.usefixtures("one_thread")

N = 12


def hf_rows(task: str, n: int = N) -> list[dict]:
    """The first `n` local records of `task` in the shape of its Hugging Face dataset's rows."""
    rows = []
    for rec in read_records(task, limit=n):
        if task == "hellaswag":
            label, ctx = rec["ctx"].split(": ", 1)
            endings = rec["endings"]
            rows.append(
                {"activity_label": label, "ctx_a": ctx, "ctx_b": "", "endings": endings, "label": str(rec["label"])}
            )
        elif task in ("arc_easy", "arc_challenge"):
            keys = ["A", "B", "C", "D"][: len(rec["choices"])]
            choices = {"text": rec["choices"], "label": keys}
            question = rec["query"].removeprefix("Question: ")
            rows.append({"question": question, "choices": choices, "answerKey": keys[rec["gold"]]})
        elif task == "piqa":
            rows.append(dict(rec))
        elif task == "winogrande":
            a, b = rec["context_options"]
            common = os.path.commonprefix([a, b])
            cut = common.rfind(" ") + 1  # the blank starts a word
            sentence = a[:cut] + "_ " + rec["continuation"]
            rows.append({"sentence": sentence, "option1": a[cut:], "option2": b[cut:], "answer": str(rec["gold"] + 1)})
        else:
            rows.append({"text": rec["text"]})
    return rows


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace datasets.load_dataset by the rows above (read from the local files: the test asks for them); records
    every call."""
    datasets = pytest.importorskip("datasets")
    calls = []
    by_source = {spec: task for task, spec in HF_DATASETS.items()}

    def load_dataset(path, name=None, *, split):
        calls.append((path, name, split))
        return hf_rows(by_source[(path, name, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("task", list(TASKS))
def test_hf_items_equal_the_local_items(task, fake_hub, need_tasks):
    need_tasks(task)
    assert load_items(task, limit=N, source="hf") == load_items(task, limit=N)
    assert fake_hub == [HF_DATASETS[task]]
    assert len(load_items(task, limit=3, source="hf")) == 3


def test_hf_conversions_follow_lm_eval():
    pytest.importorskip("datasets")
    from slmkit.engine.evaluate.tasks import hf_to_record, to_item

    row = {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
           "endings": ["a [title] b", "c", "d", "e"], "label": "3"}  # fmt: skip
    item = to_item("hellaswag", hf_to_record("hellaswag", row))
    assert item.contexts == ["Roof shingle removal: A man is sitting on a roof. He"] and item.gold == 3
    assert item.continuations[0] == " a. b"
    arc = {"question": "Why?", "choices": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]}, "answerKey": "3"}
    item = to_item("arc_challenge", hf_to_record("arc_challenge", arc))
    assert item.requests()[2] == ("Question: Why?\nAnswer:", " z") and item.gold == 2
    wino = {"sentence": "Sarah was better than Maria so _ won.", "option1": "Sarah", "option2": "Maria", "answer": "1"}
    item = to_item("winogrande", hf_to_record("winogrande", wino))
    assert item.requests() == [
        ("Sarah was better than Maria so Sarah", " won."),
        ("Sarah was better than Maria so Maria", " won."),
    ]
    assert item.gold == 0


def test_local_source_never_calls_the_hub(monkeypatch, need_tasks):
    need_tasks(*TASKS)
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was called"))
    for task in TASKS:
        load_items(task, limit=2)


def test_offline_is_a_one_line_error_pointing_at_the_local_files():
    pytest.importorskip("datasets")
    # conftest sets HF_DATASETS_OFFLINE=1 and an empty HF_HOME: the real load_dataset fails without the network
    with pytest.raises(TaskError, match=r"could not fetch Hugging Face dataset baber/piqa") as e:
        read_hf_records("piqa")
    assert "\n" not in str(e.value) and "$SLM_DATA_DIR/eval/piqa work offline" in str(e.value)


def test_missing_datasets_package_gives_the_pip_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(TaskError, match="pip install datasets"):
        load_items("lambada", source="hf")


def test_unknown_source_is_refused():
    with pytest.raises(TaskError, match="unknown task source 'hub'"):
        load_items("piqa", source="hub")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalhf")
    return make_run(root, make_dataset(root), "tiny", block_size=64)


def test_slm_eval_task_source_hf(tiny_run, run_cli, fake_hub, need_tasks):
    need_tasks("arc_easy", "winogrande")
    code, out, err = run_cli("eval", tiny_run, "--tasks", "arc_easy,winogrande", "--limit", "5", "--task-source", "hf",
                             "--no-progress")  # fmt: skip
    assert code == 0, err
    assert [c[0] for c in fake_hub] == ["allenai/ai2_arc", "allenai/winogrande"]
    hf = json.loads((tiny_run / "evals" / "arc_easy.json").read_text())
    assert hf["source"] == "hf" and hf["n"] == 5 and "| arc_easy | acc_norm |" in out
    code, _, err = run_cli("eval", tiny_run, "--tasks", "arc_easy", "--limit", "5", "--no-progress")
    assert code == 0, err
    local = json.loads((tiny_run / "evals" / "arc_easy.json").read_text())
    assert local["source"] == "local" and local["metrics"] == hf["metrics"]


def test_slm_eval_task_source_hf_offline_exits_2_with_one_line(tiny_run, run_cli):
    pytest.importorskip("datasets")
    code, _, err = run_cli("eval", tiny_run, "--tasks", "lambada", "--task-source", "hf", "--no-progress")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "could not fetch Hugging Face dataset EleutherAI/lambada_openai" in lines[0]
