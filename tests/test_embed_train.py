"""Contrastive fine-tuning as a child run of the one training loop: InfoNCE (and CoSENT on scored pairs), parent
recorded, learned temperature, exact resume, LoRA, the in-loop STS-B dev score, bad config."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from embed_helpers import FAST, write_pairs
from sft_helpers import base_run, make_corpus

from slmkit.base.config import ConfigError, EmbedConfig
from slmkit.base.metrics import series
from slmkit.engine.embedding import ContrastiveObjective, cosent, encode, info_nce
from slmkit.engine.train import train
from slmkit.runs import checkpoint as ckpt_io
from slmkit.ship.embed_train import embed_train, embed_train_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, stdlib_dir):
    root = tmp_path_factory.mktemp("embed-train")
    return root, base_run(root, make_corpus(root, stdlib_dir)), write_pairs(root / "pairs.jsonl", 80)


def test_info_nce_is_cross_entropy_over_in_batch_and_hard_negatives():
    torch.manual_seed(0)
    a, p, n = (F.normalize(torch.randn(k, 8), dim=-1) for k in (3, 3, 2))
    scale = torch.tensor(20.0)
    cands = torch.cat([p, n])
    manual = -sum(torch.log_softmax(scale * a[i] @ cands.T, 0)[i] for i in range(3)) / 3
    assert torch.allclose(info_nce(a, cands, scale), manual, atol=1e-6)
    obj = ContrastiveObjective(EmbedConfig(temperature=0.05, learn_temperature=True))
    assert math.isclose(obj.temperature(), 0.05, rel_tol=1e-6) and obj.logit_scale.requires_grad
    assert not list(ContrastiveObjective(EmbedConfig()).parameters())  # fixed: a buffer, nothing to train


def test_cosent_ranks_pairs_by_their_scores():
    cos, scores = torch.tensor([0.9, 0.5, 0.1]), torch.tensor([4.0, 2.0, 2.0])
    # pairs (i, j) with scores[i] > scores[j]: (0, 1) and (0, 2); ties and lower-scored pairs add nothing
    manual = torch.log(1 + torch.exp(20 * (cos[1] - cos[0])) + torch.exp(20 * (cos[2] - cos[0])))
    assert torch.allclose(cosent(cos, scores), manual)
    assert cosent(cos, scores) < cosent(cos.flip(0), scores)  # the wrong order costs more
    assert cosent(cos, torch.tensor([3.0, 3.0, 3.0])) == 0  # nothing to rank


def test_objective_mixes_infonce_on_positives_and_cosent_on_scored_pairs(setup):
    """A batch of 2 positives (NaN scores) and 2 scored pairs: InfoNCE over the positives' rows (every row of the
    batch a candidate), plus cosent_weight x CoSENT over the scored pairs' cosines."""
    root, base, _ = setup
    model, _, _, _ = ckpt_io.load_model(base)
    torch.manual_seed(0)
    ids, lengths = torch.randint(0, 50, (8, 5)), torch.tensor([5, 4, 3, 5, 2, 5, 4, 3])
    scores = torch.tensor([float("nan"), 4.5, float("nan"), 1.0])
    batch = (ids, lengths, torch.tensor([4]), scores)
    emb = F.normalize(encode(model, ids, lengths, "mean"), dim=-1)
    a, c = emb[:4], emb[4:]
    pos, scale = torch.tensor([0, 2]), torch.tensor(20.0)
    nce = (info_nce(a[pos], c, scale, pos) + info_nce(c[pos], a, scale, pos)) / 2
    graded = torch.tensor([1, 3])
    rank = cosent((a[graded] * c[graded]).sum(-1), scores[graded])
    got = ContrastiveObjective(EmbedConfig(cosent_weight=0.5))(model, batch)
    assert torch.allclose(got, nce + 0.5 * rank, atol=1e-5)
    assert torch.allclose(ContrastiveObjective(EmbedConfig())(model, batch), nce, atol=1e-5)  # weight 0: InfoNCE only
    only_scored = (ids, lengths, torch.tensor([4]), torch.tensor([4.0, 3.0, 2.0, 1.0]))
    got = ContrastiveObjective(EmbedConfig(cosent_weight=1.0))(model, only_scored)
    assert torch.allclose(got, cosent((a * c).sum(-1), only_scored[3]), atol=1e-5)
    tied = ContrastiveObjective(EmbedConfig(cosent_weight=1.0))(model, (ids, lengths, torch.tensor([4]),
                                                                        torch.full((4,), 2.0)))  # fmt: skip
    tied.backward()  # nothing to rank: a zero loss that still backpropagates (zero gradients), not an error
    assert tied.item() == 0


def test_a_child_run_trains_on_scored_pairs_with_cosent(setup, tmp_path):
    root, base, _ = setup
    recs = [{"anchor": f"the {w} number {i}", "positive": f"a {w} was seen {i}", "score": float(i % 5)}
            for i, w in enumerate(["apple", "river", "stone", "cloud", "green"] * 8)]  # fmt: skip
    recs += [{"anchor": f"a {w}", "positive": f"the {w}"} for w in ("house", "bread", "light", "stone")]
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    child = embed_train(base, path, [*FAST, "embed.cosent_weight=1", "train.name=cosent"], progress=False)
    assert ckpt_io.read_run_config(child).embed.cosent_weight == 1.0
    assert all(math.isfinite(v) for v in series(child, "train/loss")[1])


def test_child_run_records_parent_and_logs_the_loop_metrics(setup):
    root, base, pairs = setup
    child = embed_train(base, pairs, [*FAST, "train.max_steps=12", "train.eval_every=6", "optim.lr=3e-3"],
                        progress=False)  # fmt: skip
    info = ckpt_io.read_run_info(child)
    assert info["status"] == "finished" and info["parent"] == str(base) and child.name == "base-embed"
    cfg = ckpt_io.read_run_config(child)
    assert cfg.data.format == "pairs" and cfg.train.init_from == info["parent_checkpoint"]
    steps, losses = series(child, "train/loss")
    assert steps == list(range(1, 13)) and all(math.isfinite(v) for v in losses)
    val_steps, val = series(child, "val/loss")
    assert val_steps == [0, 6, 12] and val[-1] < val[0], val
    assert series(child, "train/grad_norm")[0] == steps


def test_resume_equals_an_uninterrupted_run_with_a_learned_temperature(setup):
    root, base, pairs = setup
    ov = [*FAST, "train.max_steps=4", "embed.learn_temperature=true", "model.dropout=0.1"]
    whole = train(embed_train_config(base, pairs, [*ov, "train.name=whole"]), progress=False)
    half_cfg = embed_train_config(base, pairs, [*ov, "train.name=half"])
    half = train(half_cfg, progress=False, stop_after=2)
    assert ckpt_io.read_run_info(half)["status"] == "interrupted"
    state = ckpt_io.read_state(ckpt_io.resolve_checkpoint(half, "latest"))
    assert state["objective"]["logit_scale"] != math.log(1 / 0.05)  # the temperature moved and was saved
    assert len(series(half, "train/temperature")[1]) == 2
    train(resume=half, progress=False)
    a, b = series(whole, "train/loss")[1], series(half, "train/loss")[1]
    assert len(a) == len(b) == 4 and max(abs(x - y) for x, y in zip(a, b)) < 1e-6, (a, b)


def test_lora_trains_adapters_only(setup):
    root, base, pairs = setup
    child = embed_train(base, pairs, [*FAST, "lora.rank=4", "train.name=lora"], progress=False)
    model, _, cfg, _ = ckpt_io.load_model(child)
    parent, *_ = ckpt_io.load_model(base)
    assert cfg.lora.rank == 4
    assert torch.equal(model.wte.weight, parent.wte.weight)  # frozen base weights
    assert series(child, "train/loss")[0] == [1, 2, 3, 4]


def test_in_loop_sts_b_dev_score(setup, need_data):
    need_data("embed/stsbenchmark/sts-dev.csv")
    root, base, pairs = setup
    child = embed_train(base, pairs, [*FAST, "eval.tasks=[sts-b-dev]", "eval.limit=64", "train.name=dev"],
                        progress=False)  # fmt: skip
    steps, rho = series(child, "eval/sts-b-dev/spearman")
    assert steps == [2, 4] and all(-100 <= r <= 100 for r in rho)
    assert ckpt_io.read_run_config(child).eval.every == 2  # each eval, as train.eval_every


def test_bad_pairs_file_and_changed_objective_on_resume_are_one_line(setup, run_cli, tmp_path):
    root, base, pairs = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "a", "positive": 3}\n')
    code, _, err = run_cli("embed-train", base, "--data", bad, *FAST)
    assert code == 2 and "bad.jsonl:2:" in err and len(err.strip().splitlines()) == 1, err
    half = train(embed_train_config(base, pairs, [*FAST, "train.name=changed"]), progress=False, stop_after=1)
    with pytest.raises(ConfigError, match="embed.temperature"):
        train(resume=half, overrides=["embed.temperature=0.1"], progress=False)


def test_bad_config_is_one_line(setup):
    root, base, pairs = setup
    with pytest.raises(ConfigError, match="dropout"):
        embed_train_config(base, pairs, ["embed.pairs=simcse", "model.dropout=0"])
    with pytest.raises(ConfigError, match="embed.temperature"):
        embed_train_config(base, pairs, ["embed.temperature=0"])
    with pytest.raises(ConfigError, match="embed.pooling"):
        embed_train_config(base, pairs, ["embed.pooling=max"])
    with pytest.raises(ConfigError, match="data.format"):
        embed_train_config(base, pairs, ["data.format=alpaca"])
