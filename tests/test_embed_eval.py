"""Embedding tasks of slm eval: Spearman as scipy computes it, nDCG@10 / MRR@10 as BEIR defines them, the task
files, and `slm eval RUN --tasks sts-b,...` end to end."""

import json
import math

import numpy as np
import pytest
from scipy.stats import spearmanr
from sft_helpers import base_run, make_corpus

from slmkit.engine.evaluate.embedding import (
    EMBED_TASKS,
    EmbedTaskError,
    embed_task_files,
    rank_of_relevant,
    retrieval_items,
    score_retrieval,
    score_sts,
    spearman,
)
from slmkit.engine.evaluate.tasks import TaskError, check_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory, stdlib_dir):
    root = tmp_path_factory.mktemp("embed-eval")
    return base_run(root, make_corpus(root, stdlib_dir))


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 200).astype(float), rng.normal(size=200)
    y[:50] = x[:50]
    assert math.isclose(spearman(x, y), spearmanr(x, y).statistic, abs_tol=1e-12)
    assert math.isclose(spearman([1, 2, 3], [3, 2, 1]), -1.0)


def test_sts_and_retrieval_scores_of_a_known_encoder():
    table = {"a": [1, 0], "b": [1, 0.1], "c": [0, 1], "d": [0.2, 1], "e": [1, 1]}
    encode = lambda texts: np.array([table[t] for t in texts], dtype=float)  # noqa: E731
    m = score_sts(encode, [("a", "b", 5.0), ("a", "c", 0.0), ("a", "e", 2.5)])
    assert math.isclose(m["spearman"], 100.0)
    # query i's document is document i; documents ranked by cosine
    q = np.array([[1, 0], [0, 1], [1, 1]], dtype=float)
    d = np.array([[0, 1], [0.1, 1], [1, 1.05]], dtype=float)
    ranks = rank_of_relevant(q, d)
    assert ranks.tolist() == [3, 2, 1]
    lookup = {"q0": q[0], "q1": q[1], "q2": q[2], "d0": d[0], "d1": d[1], "d2": d[2]}
    enc = lambda texts: np.array([lookup[t] for t in texts])  # noqa: E731
    r = score_retrieval(enc, enc, ["q0", "q1", "q2"], ["d0", "d1", "d2"])
    assert math.isclose(r["mrr@10"], 100 * (1 / 3 + 1 / 2 + 1) / 3)
    assert math.isclose(r["ndcg@10"], 100 * (1 / math.log2(4) + 1 / math.log2(3) + 1) / 3)
    assert r["recall@10"] == 100


def test_task_names_and_missing_files(tmp_path, monkeypatch):
    assert check_tasks(["val", "sts-b", "wiki-retrieval"]) == ["val", "sts-b", "wiki-retrieval"]
    assert {"sts-b", "sick-r", "sts12", "sts16", "wiki-retrieval"} <= set(EMBED_TASKS)
    with pytest.raises(TaskError, match="sts-b-dev"):
        check_tasks(["sts-bb"])
    monkeypatch.setenv("SLM_DATA_DIR", str(tmp_path))
    with pytest.raises(EmbedTaskError, match="task sick-r: missing .*SICK.txt"):
        embed_task_files("sick-r")


def test_retrieval_items_hold_out_wikipedia(need_data):
    root = need_data("wikipedia/wiki-03.parquet")
    queries, docs = retrieval_items(root, limit=20)
    assert len(queries) == len(docs) == 20
    assert all(len(q.split()) >= 5 and 200 <= len(d) <= 1000 for q, d in zip(queries, docs))
    assert all(not d.startswith(q) for q, d in zip(queries, docs))


def test_slm_eval_scores_embedding_tasks(run, run_cli, need_data):
    need_data("embed/stsbenchmark/sts-test.csv", "embed/sick/SICK.txt", "wikipedia/wiki-03.parquet")
    code, out, err = run_cli("eval", run, "--tasks", "sts-b,sick-r,wiki-retrieval", "--limit", "40", "--no-progress")
    assert code == 0, err
    assert "| sts-b | spearman |" in out and "| wiki-retrieval | ndcg@10 |" in out
    assert "- Spearman x 100" in out and "TF-IDF scores 88 on wiki-retrieval" in out  # what the numbers mean
    saved = json.loads((run / "evals" / "sts-b.json").read_text())
    assert saved["n"] == 40 and saved["pooling"] == "mean" and -100 <= saved["metrics"]["spearman"] <= 100
    retrieval = json.loads((run / "evals" / "wiki-retrieval.json").read_text())
    assert retrieval["n"] == 40 and 0 <= retrieval["metrics"]["mrr@10"] <= retrieval["metrics"]["recall@10"]
    code, _, err = run_cli("eval", run, "--tasks", "sts-b", "--task-source", "hf")
    assert code == 2 and "local files only" in err


def test_a_limited_sts_task_spreads_its_items_over_the_file():
    """The STS files are ordered by genre: a limit takes every k-th item, not the first (one genre) ones."""
    from slmkit.engine.evaluate.embedding import spread

    items = list(range(10))
    assert spread(items, 0) == items and spread(items, 20) == items
    assert spread(items, 5) == [0, 2, 4, 6, 8] and spread(items, 3) == [0, 3, 6]
