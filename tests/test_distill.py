"""Distillation (`distill.teacher=RUN`): the loss is alpha * CE + (1 - alpha) * T^2 * KL(teacher || student) over the
positions that count; the teacher is frozen and never part of the student's optimizer or checkpoints; validation
stays plain cross-entropy; a teacher with another tokenizer is refused before anything is written."""

from __future__ import annotations

import math

import pytest
import torch
from evalkit import make_dataset, make_run
from safetensors.torch import load_file

from slmkit.base.config import DistillConfig
from slmkit.base.metrics import read_metrics
from slmkit.engine.distill import DistillObjective, distill_loss
from slmkit.model.linear_ce import IGNORE_INDEX
from slmkit.runs.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_terms_match_their_definitions():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 12), torch.randn(2, 5, 12)  # 12 padded outputs, 10 real tokens
    y = torch.randint(0, 10, (2, 5))
    y[0, :2] = IGNORE_INDEX
    loss, ce, kl = distill_loss(s, t, y, vocab=10, temperature=2.0, alpha=0.3)
    keep = (y != IGNORE_INDEX).reshape(-1)
    ps = torch.softmax(t[..., :10].reshape(-1, 10)[keep] / 2, -1)  # the teacher's, at T = 2
    log_q = torch.log_softmax(s[..., :10].reshape(-1, 10)[keep] / 2, -1)
    want_kl = (ps * (ps.log() - log_q)).sum(-1).mean()
    want_ce = torch.nn.functional.cross_entropy(s.reshape(-1, 12)[keep], y.reshape(-1)[keep])
    assert kl.item() == pytest.approx(want_kl.item(), rel=1e-5) and ce.item() == pytest.approx(want_ce.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.3 * want_ce.item() + 0.7 * 4 * want_kl.item(), rel=1e-5)
    same = distill_loss(s, s.clone(), y, 10, 2.0, 0.0)
    assert same[2].item() == pytest.approx(0.0, abs=1e-6)  # a student equal to its teacher has nothing to learn
    assert distill_loss(s, t, y, 10, 1.0, 1.0)[0].item() == pytest.approx(want_ce.item(), rel=1e-5)  # alpha 1: CE


def test_no_position_counts_gives_zero_loss_and_gradient():
    s = torch.randn(1, 3, 8, requires_grad=True)
    loss, _, kl = distill_loss(s, torch.randn(1, 3, 8), torch.full((1, 3), IGNORE_INDEX), 8, 2.0, 0.5)
    loss.backward()
    assert loss.item() == 0.0 and kl.item() == 0.0 and s.grad.abs().sum().item() == 0.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = make_dataset(root)
    teacher = make_run(root, data, "teacher", "model.n_layer=2", "model.n_embd=64", "train.max_steps=8",
                       block_size=64)  # fmt: skip
    return root, data, teacher


def test_a_student_learns_from_a_frozen_teacher(runs):
    root, data, teacher = runs
    before = {k: v.clone() for k, v in load_model(teacher)[0].state_dict().items()}
    student = make_run(root, data, "student", "model.n_layer=1", "model.n_embd=32", f"distill.teacher={teacher}",
                       "distill.alpha=0.25", "train.max_steps=6", "train.eval_every=3", block_size=64)  # fmt: skip
    events = read_metrics(student)
    steps = [e for e in events if "train/kl" in e]
    assert len(steps) == 6 and all(e["train/kl"] >= 0 and e["train/ce"] > 0 for e in steps)
    for e in steps:  # the logged loss is the mix of the two terms (one micro-batch a step here)
        assert e["train/loss"] == pytest.approx(0.25 * e["train/ce"] + 0.75 * 4 * e["train/kl"], rel=1e-3)
    model, _, _, ckpt = load_model(student)
    saved = load_file(ckpt / "model.safetensors")
    assert set(saved) <= set(model.state_dict()) and model.config.n_embd == 32  # the student only, no teacher
    after = load_model(teacher)[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher was never updated
    val = [e["val/loss"] for e in events if "val/loss" in e]
    assert val and all(0 < v < math.log(512) + 1 for v in val)  # cross-entropy scale, not the mixed objective


def test_val_objective_is_plain_cross_entropy(runs):
    _, _, teacher = runs
    model = load_model(teacher)[0]
    objective = DistillObjective(DistillConfig(teacher=str(teacher)), model, 512)
    x = torch.randint(0, 512, (2, 16))
    y = torch.randint(0, 512, (2, 16))
    assert objective.val_objective(model, (x, y)).item() == pytest.approx(model(x, y)[1].item())
    assert list(objective.parameters()) == [] and objective.state_dict() == {}  # nothing of the teacher registered


def test_a_teacher_with_another_tokenizer_is_refused_before_anything_is_written(runs, run_cli):
    root, _, teacher = runs
    other = make_dataset(root / "other", tokenizer="bpe:400")
    out = root / "refused"
    code, _, err = run_cli("train", "tiny", f"data.dir={other}", "tokenizer.kind=bpe:400", f"distill.teacher={teacher}",
                           f"train.out_dir={out}",
                           "train.max_steps=2")  # fmt: skip
    assert code == 2 and "another tokenizer" in err and len(err.strip().splitlines()) == 1, err
    fingerprints = [w.rstrip("),;") for w in err.split() if len(w.rstrip("),;")) == 16]
    assert len(set(fingerprints)) == 2, err  # both fingerprints shown
    assert not out.exists() or not any(out.iterdir())
    code, _, err = run_cli("train", "tiny", "distill.alpha=1.5")
    assert code == 2 and "distill.alpha" in err


def test_children_do_not_inherit_the_teacher_or_the_parents_stream(runs, tmp_path):
    """A child run (sft, embed-train, classify, continued pretraining) reads its own data with its own objective."""
    from slmkit.runs import checkpoint as ckpt_io
    from slmkit.ship.finetune import init_from_config, sft_config

    root, data, teacher = runs
    model, tok, cfg, _ = load_model(teacher)
    parent = tmp_path / "streamed-distilled"
    stream = {"data.stream": True, "data.dir": "", "data.mix": ["python-stdlib=1"], "distill.teacher": str(teacher)}
    pcfg = cfg.replace(**stream)
    ckpt_io.init_run_dir(parent, pcfg, tok)
    ckpt_io.save_checkpoint(parent, 1, model, None, {}, pcfg, tok)
    sft_file = tmp_path / "sft.jsonl"
    sft_file.write_text('{"prompt": "a", "completion": "b"}\n')
    child = sft_config(parent, sft_file)
    assert (child.data.stream, child.data.mix, child.distill.teacher) == (False, [], "")
    cont = init_from_config(parent, None, [f"data.dir={data}"])
    assert (cont.data.stream, cont.data.mix, cont.distill.teacher) == (False, [], "")


# -- cached top-K teacher logits (distill.topk) ------------------------------------------------------------------


def test_topk_loss_over_the_whole_vocabulary_is_the_full_kl():
    torch.manual_seed(1)
    s, t = torch.randn(2, 4, 10), torch.randn(2, 4, 10)
    y = torch.randint(0, 10, (2, 4))
    top = t.topk(10, dim=-1)  # K = V: every token cached, in another order
    full = distill_loss(s, t, y, 10, 2.0, 0.5)
    cached = distill_loss(s, top.values, y, 10, 2.0, 0.5, teacher_ids=top.indices)
    assert cached[2].item() == pytest.approx(full[2].item(), rel=1e-5)
    k3 = t.topk(3, dim=-1)
    log_p = torch.log_softmax(k3.values / 2, -1)  # the teacher renormalised over its 3 cached tokens
    log_q = torch.log_softmax(s / 2, -1).gather(-1, k3.indices)
    want = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    got = distill_loss(s, k3.values, y, 10, 2.0, 0.5, teacher_ids=k3.indices)[2]
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_the_cache_holds_the_teachers_topk_at_every_position_and_is_reused(runs):
    from slmkit.data.loader import TokenLoader
    from slmkit.engine.teacher_cache import TeacherCache, ensure_cache

    root, data, teacher = runs
    model, tok, _, ckpt = load_model(teacher)
    path, seconds = ensure_cache(model, teacher, ckpt, data, 16, 5, tok.vocab_size, progress=False)
    cache = TeacherCache.open(path)
    loader = TokenLoader(data, "train", 1, 16)
    assert seconds is not None and cache.values.shape == (loader.num_tokens, 5) and path.parent.parent == teacher
    for start in (0, 16 * 3, loader.num_tokens - 17):  # the windows the cache was built from, and the tail one
        x = torch.from_numpy(loader.rows(torch.tensor([start]).numpy())[:, :-1].astype("int64"))
        with torch.no_grad():
            want = model(x)[0][..., : tok.vocab_size].topk(5, dim=-1)
        values, ids = cache.lookup(torch.tensor([start]), 16)
        assert torch.equal(ids, want.indices) and torch.allclose(values, want.values, atol=0.02, rtol=0.005)
    assert ensure_cache(model, teacher, ckpt, data, 16, 5, tok.vocab_size, progress=False) == (path, None)
    other, _ = ensure_cache(model, teacher, ckpt, data, 16, 3, tok.vocab_size, progress=False)
    assert other != path  # another K (or block size, dataset, checkpoint) is another cache


def test_a_student_trains_from_the_cached_logits(runs, run_cli):
    root, data, teacher = runs
    student = make_run(root, data, "cached", "model.n_layer=1", "model.n_embd=32", f"distill.teacher={teacher}",
                       "distill.topk=8", "train.max_steps=4", "train.eval_every=2", block_size=64)  # fmt: skip
    steps = [e for e in read_metrics(student) if "train/kl" in e]
    assert len(steps) == 4 and all(e["train/kl"] >= 0 for e in steps)
    assert len(list((teacher / "distill-cache").iterdir())) >= 1


@pytest.mark.parametrize(("extra", "says"), [("data.fim_rate=0.5", "no fixed positions"), ("distill.topk=100000",
                                             "more than the vocabulary")])  # fmt: skip
def test_a_cache_that_cannot_serve_the_student_is_refused(runs, run_cli, extra, says):
    root, data, teacher = runs
    code, _, err = run_cli("train", "tiny", f"data.dir={data}", "tokenizer.kind=bpe:512", f"distill.teacher={teacher}",
                           "distill.topk=8", extra, f"train.out_dir={root / 'no'}", "train.max_steps=2")  # fmt: skip
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (root / "no").exists() or not any((root / "no").iterdir())


def test_a_loader_with_positions_gives_each_windows_offset(runs):
    from slmkit.data.loader import TokenLoader

    _, data, _ = runs
    loader = TokenLoader(data, "train", 4, 16, seed=3, positions=True)
    x, y, starts = loader.next_batch()
    assert torch.equal(torch.from_numpy(loader.rows(starts.numpy())[:, :-1].astype("int64")), x)
    assert torch.equal(TokenLoader(data, "train", 4, 16, seed=3).next_batch()[0], x)  # the same batches as without
