"""Supervised fine-tuning and continued pretraining through the training loop: child runs, masks, bad input."""

import json

import pytest
import torch
from sft_helpers import SMALL_SFT, base_run, make_corpus, write_alpaca

from slmkit.base.errors import SlmError
from slmkit.base.metrics import series
from slmkit.data.sources import DataError
from slmkit.engine.train import train
from slmkit.model.gpt import GPT
from slmkit.runs import checkpoint as ckpt_io
from slmkit.runs.parents import load_parent_weights
from slmkit.ship.finetune import sft, sft_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory, stdlib_dir):
    root = tmp_path_factory.mktemp("sft")
    corpus = make_corpus(root, stdlib_dir)
    return root, base_run(root, corpus), write_alpaca(root / "alpaca.json", 60)


def runs_in(root):
    return sorted(p.name for p in (root / "runs").iterdir())


@pytest.mark.slow
def test_sft_child_records_parent_and_masked_val_loss_drops(setup):
    root, base, data = setup
    child = sft(base, data, ["train.max_steps=40", "train.eval_every=20", "optim.lr=3e-3"], progress=False)
    info = ckpt_io.read_run_info(child)
    assert info["status"] == "finished" and info["parent"] == str(base)
    assert info["parent_checkpoint"] == str(ckpt_io.resolve_checkpoint(base, "best"))
    cfg = ckpt_io.read_run_config(child)
    assert cfg.data.format == "auto" and cfg.train.init_from == info["parent_checkpoint"]
    steps, val = series(child, "val/loss")
    assert steps == [0, 20, 40] and val[-1] < val[0] - 0.5, val
    model, tok, _, _ = ckpt_io.load_model(child)  # sample/eval load it like any run
    assert tok.has_chat_tokens and model.config.vocab_size == tok.vocab_size


def test_sft_resume_is_exact(setup):
    root, base, data = setup
    full = train(sft_config(base, data, [*SMALL_SFT, "train.name=sft-full"]), progress=False)
    half = train(sft_config(base, data, [*SMALL_SFT, "train.name=sft-half"]), progress=False, stop_after=3)
    train(resume=half, progress=False)
    assert series(full, "train/loss")[1] == series(half, "train/loss")[1]
    assert series(full, "val/loss")[1] == series(half, "val/loss")[1]


def test_padding_mode_trains(setup):
    root, base, data = setup
    run = sft(base, data, [*SMALL_SFT, "data.packing=false", "train.name=padded"], progress=False)
    assert ckpt_io.read_run_info(run)["status"] == "finished"


def test_bad_data_is_refused_before_any_run_dir(setup, run_cli):
    root, base, _ = setup
    before = runs_in(root)
    bad = root / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n{"input": "d"}\n')
    with pytest.raises(DataError, match=r"2 of 3 records .* line 2"):
        sft(base, bad, SMALL_SFT, progress=False)
    silent = root / "silent.jsonl"
    silent.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"}]}) + "\n")
    code, out, err = run_cli("sft", base, "--data", silent, *SMALL_SFT, "--no-progress")
    assert code == 2 and err.startswith("error: ") and "no assistant turn" in err and len(err.splitlines()) == 1
    code, _, err = run_cli("sft", base, "--data", root / "missing.json")
    assert code == 2 and "no SFT data file" in err
    code, _, err = run_cli("sft", base, "--data", silent, "lora.rank=4", "lora.targets=gate")
    assert code == 2
    assert runs_in(root) == before


@pytest.mark.slow
def test_char_parent_gets_chat_tokens_and_mean_rows(setup, tmp_path, stdlib_dir):
    root, _, data = setup
    base = base_run(tmp_path, make_corpus(tmp_path, stdlib_dir), tokenizer="char", name="charbase")
    with pytest.raises(SlmError, match="no chat tokens"):
        sft(base, data, [*SMALL_SFT, "data.add_chat_tokens=false"], progress=False)
    assert runs_in(tmp_path) == ["charbase"]
    cfg = sft_config(base, data, SMALL_SFT)
    child = train(cfg, progress=False)
    parent, ptok, pcfg, ckpt = ckpt_io.load_model(base)
    ctok = ckpt_io.run_tokenizer(child)
    assert ctok.vocab_size == ptok.vocab_size + 4 and ctok.has_chat_tokens
    grown = GPT(ckpt_io.read_run_config(child).model)
    load_parent_weights(grown, ckpt)
    old = pcfg.model.vocab_size
    mean = parent.wte.weight[:old].mean(0)
    assert torch.allclose(grown.wte.weight[old : old + 4], mean.expand(4, -1))
    assert torch.equal(grown.wte.weight[:old], parent.wte.weight[:old])


def test_continued_pretraining_with_init_from(setup, run_cli, monkeypatch, tmp_path, stdlib_dir):
    root, base, _ = setup
    monkeypatch.chdir(tmp_path)
    new_text = tmp_path / "new"
    new_text.mkdir()
    for name in ("queue.py", "sched.py", "string.py"):
        (new_text / name).write_text((stdlib_dir / name).read_text(encoding="utf-8"), encoding="utf-8")
    code, _, err = run_cli("train", "--init-from", base, f"data.source={new_text}", "model.n_layer=3",
                           f"train.out_dir={tmp_path / 'runs'}")  # fmt: skip
    assert code == 2 and "model.n_layer" in err and not (tmp_path / "runs").exists()
    code, _, err = run_cli("train", "--init-from", base, f"data.source={new_text}", "train.max_steps=1",
                           "optim.lr=1e-12", "optim.min_lr=0", f"train.out_dir={tmp_path / 'runs'}", "--name", "cpt",
                           "--no-progress")  # fmt: skip
    assert code == 0, err
    child = tmp_path / "runs" / "cpt"
    info = ckpt_io.read_run_info(child)
    assert info["parent"] == str(base) and info["status"] == "finished"
    a, _, _, _ = ckpt_io.load_model(base)
    b, _, _, _ = ckpt_io.load_model(child)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-6), name  # started from the parent's weights


def test_an_sft_lr_below_the_default_min_lr_scales_the_schedule(setup):
    _, base, data = setup
    assert sft_config(base, data, ["optim.lr=1e-5"]).optim.min_lr == pytest.approx(1e-6)  # SFT's min_lr = lr / 10
    assert sft_config(base, data, ["optim.lr=1e-5", "optim.min_lr=0"]).optim.min_lr == 0.0
    lora = sft_config(base, data, ["lora.rank=4"])
    assert (lora.optim.lr, lora.optim.min_lr) == (1e-3, 3e-5)  # the LoRA defaults are unchanged
