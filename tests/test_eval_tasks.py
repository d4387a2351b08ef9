"""Task loaders on the shared files, lm-eval's request construction, and the scorer's shared-context batching."""

from __future__ import annotations

import pytest
import torch

from slmkit.base.config import ModelConfig
from slmkit.base.tokenizer import build_tokenizer
from slmkit.engine.evaluate.scoring import Scorer, encode_pair
from slmkit.engine.evaluate.suite import mean_stderr, task_metrics
from slmkit.engine.evaluate.tasks import TASKS, Item, TaskError, check_tasks, load_items, read_records, task_files
from slmkit.model.gpt import GPT

COUNTS = {
    "hellaswag": 10042,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "piqa": 1838,
    "winogrande": 1267,
    "lambada": 5153,
}


@pytest.mark.parametrize("task", list(TASKS))
def test_loaders_read_every_item(task, need_tasks):
    need_tasks(task)
    items = load_items(task)
    assert len(items) == COUNTS[task]
    n_choices = {"hellaswag": 4, "arc_easy": 4, "arc_challenge": 4, "piqa": 2, "winogrande": 2, "lambada": 1}[task]
    assert all(len(it.continuations) == n_choices and 0 <= it.gold < n_choices for it in items)
    assert all(k.startswith(" ") for it in items for k in it.continuations)
    assert len(load_items(task, limit=7)) == 7


def test_requests_follow_lm_eval_prompts(need_tasks):
    need_tasks("arc_easy", "piqa", "winogrande", "lambada")
    arc = load_items("arc_easy", limit=1)[0]
    assert arc.contexts[0].startswith("Question: ") and arc.contexts[0].endswith("\nAnswer:")
    piqa = load_items("piqa", limit=1)[0]
    assert piqa.contexts[0].startswith("Question: How do I ready a guinea pig") and piqa.gold == 0
    wino = load_items("winogrande", limit=1)[0]
    assert wino.requests()[1] == (
        "Sarah was a much better surgeon than Maria so Maria",
        " always got the easier cases.",
    )
    lam = load_items("lambada", limit=1)[0]
    assert lam.continuations == [" signs"] and not lam.contexts[0].endswith(" ")


def test_hellaswag_preprocess_equals_lm_evals(need_tasks):
    need_tasks("hellaswag")
    lm_utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    from slmkit.engine.evaluate.tasks import hellaswag_preprocess

    for rec in read_records("hellaswag", limit=2000):
        for text in (rec["ctx"], *rec["endings"]):
            assert hellaswag_preprocess(text) == lm_utils.preprocess(text)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(TaskError, match="unknown task 'hellaswagg'.*hellaswag, arc_easy"):
        check_tasks(["val", "hellaswagg"])


def test_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(TaskError, match=rf"{tmp_path}/piqa/valid.jsonl.*SLM_DATA_DIR"):
        task_files("piqa", root=tmp_path)


def test_encode_pair_matches_lm_eval_rules(gpt2_files):
    tok = build_tokenizer("gpt2")
    ctx, cont = encode_pair(tok, "Question: why?\nAnswer: ", "because")  # trailing space moves to the continuation
    assert tok.decode(ctx) == "Question: why?\nAnswer:" and tok.decode(cont) == " because"
    ctx, cont = encode_pair(tok, "", "hello")
    assert ctx == [tok.special_tokens["<|endoftext|>"]] and tok.decode(cont) == "hello"


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=100)
    return GPT(cfg).eval()


def test_shared_context_batching_equals_separate_passes(tiny_model):
    g = torch.Generator().manual_seed(1)
    ctx = torch.randint(0, 100, (9,), generator=g).tolist()
    conts = [torch.randint(0, 100, (n,), generator=g).tolist() for n in (1, 4, 7, 2)]
    scorer = Scorer(tiny_model)
    batched = scorer.score_choices(ctx, conts)
    separate = [scorer.score_full(ctx, c) for c in conts]
    for (a, ga), (b, gb) in zip(batched, separate):
        assert abs(a - b) < 1e-5 and ga == gb
    assert scorer.truncated == 0


def test_long_contexts_are_truncated_from_the_left_and_counted(tiny_model):
    scorer = Scorer(tiny_model)
    long_ctx, cont = list(range(40)), [5, 6, 7]
    ((ll, _),) = scorer.score_requests([(long_ctx, cont)])
    assert scorer.truncated == 1
    ((same, _),) = Scorer(tiny_model).score_requests([(long_ctx[-(24 + 1 - 3) :], cont)])
    assert abs(ll - same) < 1e-5


def test_metrics_as_lm_eval_defines_them():
    items = [Item(["q"], [" a", " bbbb"], 1, ["a", "bbbb"]), Item(["q"], [" a", " bbbb"], 0, ["a", "bbbb"])]
    scores = [[(-1.0, False), (-2.0, False)], [(-1.0, False), (-2.0, False)]]  # acc picks 0; acc_norm picks 1
    m = task_metrics("hellaswag", items, scores)
    assert m["acc"] == 0.5 and m["acc_norm"] == 0.5
    assert m["acc_stderr"] == pytest.approx(mean_stderr([0.0, 1.0])) == pytest.approx(0.5)
    lam = task_metrics("lambada", [Item(["x"], [" y"], 0, [" y"])] * 2, [[(-1.0, True)], [(-3.0, False)]])
    assert lam["acc"] == 0.5 and lam["ppl"] == pytest.approx(2.718281828**2)
