"""Parity with the field's scorers: MTEB scores our encoder on a local STS task (offline) with the Spearman our
`sts-b` task reports, and pytrec_eval (BEIR's scorer) gives our nDCG@10 and MRR@10."""

import math
import os

import numpy as np
import pytest
from sft_helpers import base_run, make_corpus

from slmkit.engine.evaluate.embedding import rank_of_relevant, score_retrieval, score_sts, sts_items
from slmkit.ship.embed import embed_texts, load_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, stdlib_dir):
    root = tmp_path_factory.mktemp("embed-mteb")
    model, tok, _ = load_encoder(base_run(root, make_corpus(root, stdlib_dir)))
    return lambda texts: embed_texts(model, tok, texts)[0]


def test_mteb_scores_our_encoder_on_local_sts_b_as_we_do(encoder, need_data, monkeypatch):
    need_data("embed/stsbenchmark/sts-test.csv")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets
    import mteb
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    items = sts_items("sts-b", limit=300)

    class LocalSTSB(AbsTaskSTS):
        metadata = TaskMetadata(name="SlmLocalSTSB", description="STS Benchmark test, local file",
                                dataset={"path": "local/stsb", "revision": "local"}, type="STS", category="t2t",
                                eval_splits=["test"], eval_langs=["eng-Latn"],
                                main_score="cosine_spearman")  # fmt: skip

        def load_data(self, **kwargs):
            cols = {"sentence1": [a for a, _, _ in items], "sentence2": [b for _, b, _ in items],
                    "score": [s for _, _, s in items]}  # fmt: skip
            self.dataset = {"default": {"test": datasets.Dataset.from_dict(cols)}}
            self.data_loaded = True

    class Encoder:  # mteb's EncoderProtocol around embed_texts
        mteb_model_meta = None

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            return encoder([t for batch in inputs for t in batch["text"]])

        def similarity(self, a, b):
            return a @ b.T

        def similarity_pairwise(self, a, b):
            return (a * b).sum(1)

    result = mteb.evaluate(Encoder(), tasks=[LocalSTSB()], cache=None, overwrite_strategy="always",
                           show_progress_bar=False)  # fmt: skip
    theirs = result.task_results[0].scores["test"][0]["cosine_spearman"]
    ours = score_sts(encoder, items)["spearman"]
    # mteb rounds cosines to float32, we keep float64: an untrained tiny model's cosines crowd within 1e-3 of 1, so
    # a few near-ties order differently (0.005 points here); a trained model's spread-out cosines agree closer
    assert math.isclose(100 * theirs, ours, abs_tol=0.05), (theirs, ours)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_pytrec_eval_gives_our_ndcg_and_mrr():
    import pytrec_eval

    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    d[:20] += 2 * q[:20]  # half the queries find their document near the top
    lookup = {f"q{i}": q[i] for i in range(40)} | {f"d{i}": d[i] for i in range(40)}
    enc = lambda texts: np.array([lookup[t] for t in texts])  # noqa: E731
    ours = score_retrieval(enc, enc, [f"q{i}" for i in range(40)], [f"d{i}" for i in range(40)])
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    run = {f"q{i}": {f"d{j}": float(sims[i, j]) for j in np.argsort(-sims[i])[:10]} for i in range(40)}  # top 10
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(40)}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank"}).evaluate(run)
    ndcg = 100 * np.mean([v["ndcg_cut_10"] for v in per_query.values()])
    mrr = 100 * np.mean([v["recip_rank"] for v in per_query.values()])  # over the top 10 only: MRR@10
    assert math.isclose(ours["ndcg@10"], ndcg, abs_tol=1e-9) and math.isclose(ours["mrr@10"], mrr, abs_tol=1e-9)
    assert (rank_of_relevant(q, d)[:20] <= 10).mean() > 0.5
