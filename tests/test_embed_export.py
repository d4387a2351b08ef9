"""slm export --format sentence-transformers: SentenceTransformer(DIR) loads offline and gives slm embed's vectors."""

import numpy as np
import pytest
from embed_helpers import FAST, write_pairs
from sft_helpers import base_run, make_corpus

from slmkit.ship.embed import embed_texts, load_encoder
from slmkit.ship.embed_train import embed_train

pytestmark = pytest.mark.usefixtures("one_thread")
sentence_transformers = pytest.importorskip("sentence_transformers")
TEXTS = ["a", "the river runs to the sea", "stone number 4", "a green house with light in every window and bread"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, stdlib_dir):
    root = tmp_path_factory.mktemp("embed-export")
    return root, base_run(root, make_corpus(root, stdlib_dir)), write_pairs(root / "pairs.tsv", 40)


@pytest.mark.parametrize("pooling", ["mean", "weighted", "eos"])
def test_sentence_transformers_gives_our_vectors(setup, run_cli, pooling, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, base, pairs = setup
    child = embed_train(base, pairs, [*FAST, f"embed.pooling={pooling}", "embed.instruction=query: ",
                                      f"train.name=st-{pooling}"], progress=False)  # fmt: skip
    out = root / f"st-{pooling}"
    code, _, err = run_cli("export", child, "--format", "sentence-transformers", "--out", out)
    assert code == 0, err
    st = sentence_transformers.SentenceTransformer(str(out), device="cpu", local_files_only=True)
    theirs = st.encode(TEXTS, batch_size=3)  # ragged batches, right-padded
    model, tok, cfg = load_encoder(child)
    ours, _ = embed_texts(model, tok, TEXTS, pooling=pooling)
    cos = (theirs * ours).sum(1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.9999, cos
    queries = st.encode(TEXTS[:2], prompt_name="query")
    ours_q, _ = embed_texts(model, tok, TEXTS[:2], pooling=pooling, instruction="query: ")
    assert ((queries * ours_q).sum(1) / np.linalg.norm(queries, axis=1)).min() >= 0.9999
