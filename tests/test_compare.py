"""`slm compare`: same prompts and seeds through several models, every generation scored by every model."""

from __future__ import annotations

import math

import pytest
from evalkit import make_dataset, make_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = make_dataset(root)
    return root, make_run(root, data, "a", block_size=64), make_run(root, data, "b", "train.seed=7", block_size=64)


def test_compare_writes_markdown_and_html(two_runs, run_cli, tmp_path):
    root, a, b = two_runs
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def main(\nimport os\\nimport sys\n")
    code, out, err = run_cli(
        "compare", a, b, "--prompts", prompts, "--out", tmp_path / "cmp", "--num-seeds", "2", "--max-new-tokens", "8"
    )
    assert code == 0, err
    md = (tmp_path / "cmp" / "compare.md").read_text()
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert md.count("## Prompt") == 2 and "| ppl a | ppl b |" in md and "<table>" in html
    assert md.count("\n| a | 0 |") == 2 and md.count("\n| b | 1 |") == 2


def test_same_seed_same_text_and_cross_perplexities(two_runs, tmp_path):
    from slmkit.study.compare import compare

    _, a, b = two_runs
    r1 = compare([a, b], ["def "], tmp_path / "x", seeds=(3,), max_new_tokens=6)
    r2 = compare([a, b], ["def "], tmp_path / "y", seeds=(3,), max_new_tokens=6)
    assert [r["text"] for r in r1["rows"]] == [r["text"] for r in r2["rows"]]
    for row in r1["rows"]:
        assert set(row["ppl"]) == {"a", "b"}
        assert all(math.isnan(v) or v > 1 for v in row["ppl"].values())
