"""runs/checkpoint.py: run dirs and the run-name allocator, atomic checkpoints and their round trip, retention,
resolving best/latest/STEP, tied weights, and the CheckpointError a damaged or changed run dir gives.

Checkpoints are written straight from a tiny model (no training), so every test takes a fraction of a second.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY

from slmkit.base.config_files import load_config
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import CharTokenizer
from slmkit.model.gpt import GPT
from slmkit.model.optim import build_optimizer
from slmkit.runs import checkpoint as ckpt_io
from slmkit.runs.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

CHARS = "abcdefghij \n"


def make(*extra: str):
    """(model, optimizer with state, config, tokenizer): TINY with a 13-token char vocabulary."""
    tok = CharTokenizer(CHARS)
    cfg = load_config(None, [*TINY, f"model.vocab_size={tok.vocab_size}", *extra])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg.optim)
    x = torch.randint(0, tok.vocab_size, (2, 8))
    model(x, x)[1].backward()
    opt.step()
    return model, opt, cfg, tok


@pytest.fixture
def parts():
    return make()


@pytest.fixture
def run(tmp_path, parts):
    """An initialised run dir (run.json, config.toml, tokenizer/) without checkpoints."""
    _, _, cfg, tok = parts
    run = ckpt_io.new_run_dir(tmp_path / "runs", "r", explicit=True)
    ckpt_io.init_run_dir(run, cfg, tok)
    return run


def save(run, parts, step, val_loss=None, keep_last=10, **state):
    model, opt, cfg, tok = parts
    return ckpt_io.save_checkpoint(run, step, model, opt, state, cfg, tok, val_loss=val_loss, keep_last=keep_last)


# ---------------------------------------------------------------------------------------------------------
# Run directories and names


def test_explicit_name_that_exists_is_an_error(tmp_path):
    out = tmp_path / "runs" / "deeper"  # created on demand
    first = ckpt_io.new_run_dir(out, "exp", explicit=True)
    assert first == out / "exp" and first.is_dir()
    with pytest.raises(SlmError, match="already exists") as e:
        ckpt_io.new_run_dir(out, "exp", explicit=True)
    assert f"--resume {first}" in str(e.value) and "train.name" in str(e.value)


def test_derived_names_get_numbered_suffixes(tmp_path):
    assert ckpt_io.free_name(tmp_path, "tiny.lr=3e-4") == "tiny.lr=3e-4"  # nothing there yet; creates nothing
    assert list(tmp_path.iterdir()) == []
    made = [ckpt_io.new_run_dir(tmp_path, "tiny.lr=3e-4", explicit=False).name for _ in range(3)]
    assert made == ["tiny.lr=3e-4", "tiny.lr=3e-4-2", "tiny.lr=3e-4-3"]
    (tmp_path / "x").write_text("a file takes the name too")
    assert ckpt_io.free_name(tmp_path, "x") == "x-2"


def test_init_run_dir_and_run_info(run, parts):
    _, _, cfg, tok = parts
    assert ckpt_io.is_run_dir(run) and ckpt_io.check_run_dir(run) == run
    info = ckpt_io.read_run_info(run)
    assert info["name"] == "r" and info["status"] == "running" and info["tokenizer_fingerprint"] == tok.fingerprint
    assert ckpt_io.read_run_config(run) == cfg
    assert ckpt_io.run_tokenizer(run).fingerprint == tok.fingerprint
    merged = ckpt_io.write_run_info(run, status="finished", step=10)
    assert merged["created"] == info["created"] and merged["status"] == "finished"
    assert ckpt_io.read_run_info(run)["step"] == 10 and ckpt_io.read_run_info(run)["name"] == "r"


# ---------------------------------------------------------------------------------------------------------
# Saving and loading


def test_save_and_load_round_trip(run, parts):
    model, opt, cfg, tok = parts
    path = save(run, parts, 3, val_loss=2.5, tokens_seen=3 * 4 * 32)
    assert path == run / "checkpoints" / "step-000003"
    assert ckpt_io.checkpoints(run) == [(3, path)]
    for f in ("model.safetensors", "optimizer.pt", "state.json", "config.toml", "tokenizer"):
        assert (path / f).exists(), f
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")] == []  # no .partial left
    state = ckpt_io.read_state(path)
    assert state["step"] == 3 and state["val_loss"] == 2.5 and state["tokens_seen"] == 384
    assert state["format_version"] == ckpt_io.FORMAT_VERSION and state["tokenizer_fingerprint"] == tok.fingerprint
    assert json.loads((run / "checkpoints" / "index.json").read_text()) == {"latest": 3, "best": 3,
                                                                           "best_val_loss": 2.5}  # fmt: skip

    loaded, ltok, lcfg, ckpt = ckpt_io.load_model(run, "latest")
    assert ckpt == path and lcfg == cfg and ltok.fingerprint == tok.fingerprint and not loaded.training
    want = model.state_dict()
    assert loaded.state_dict().keys() == want.keys()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, want[name]), name

    fresh_opt = build_optimizer(loaded, lcfg.optim)
    ckpt_io.load_optimizer(fresh_opt, path)
    for a, b in zip(fresh_opt.state_dict()["state"].values(), opt.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))


def test_saving_again_at_a_step_replaces_it(run, parts):
    save(run, parts, 5, val_loss=3.0, note="first")
    path = save(run, parts, 5, val_loss=2.0, note="second")
    assert ckpt_io.read_state(path)["note"] == "second" and ckpt_io.checkpoints(run) == [(5, path)]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["index.json", "step-000005"]


def test_rng_state_round_trip():
    state = ckpt_io.rng_state()
    a = torch.rand(5)
    ckpt_io.set_rng_state(json.loads(json.dumps(state)))  # it goes through state.json
    assert torch.equal(torch.rand(5), a)


def test_retention_keeps_the_last_k_and_the_best(run, parts):
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 2.0, 6: None}
    for step, loss in losses.items():
        save(run, parts, step, val_loss=loss, keep_last=2)
    assert [s for s, _ in ckpt_io.checkpoints(run)] == [2, 5, 6]  # best (2) + the last two
    index = ckpt_io.read_index(run)
    assert index == {"latest": 6, "best": 2, "best_val_loss": 1.0}  # a save without val loss keeps the best


def test_checkpoints_lists_only_complete_ones(run, parts):
    save(run, parts, 4)
    root = run / "checkpoints"
    (root / "step-000009").mkdir()  # no weights, no state: an interrupted copy
    (root / ".step-000010.abc.partial").mkdir()
    (root / "notes").mkdir()
    assert [s for s, _ in ckpt_io.checkpoints(run)] == [4]


# ---------------------------------------------------------------------------------------------------------
# Resolving a checkpoint


def test_resolve_best_latest_and_step(run, parts):
    for step, loss in ((10, 2.0), (20, 1.5), (30, 1.8)):
        save(run, parts, step, val_loss=loss)
    ckpts = run / "checkpoints"
    assert ckpt_io.resolve_checkpoint(run) == ckpts / "step-000030"  # latest by default
    assert ckpt_io.resolve_checkpoint(run, "latest") == ckpts / "step-000030"
    assert ckpt_io.resolve_checkpoint(run, "best") == ckpts / "step-000020"
    assert ckpt_io.resolve_checkpoint(run, 10) == ckpts / "step-000010"
    assert ckpt_io.resolve_checkpoint(run, "10") == ckpts / "step-000010"
    assert ckpt_io.load_model(run)[3] == ckpts / "step-000020"  # load_model defaults to best


def test_best_without_val_loss_is_the_latest(run, parts):
    save(run, parts, 1)
    save(run, parts, 2)
    assert ckpt_io.resolve_checkpoint(run, "best") == run / "checkpoints" / "step-000002"


@pytest.mark.parametrize("which", ["15", 15, "newest", "-1"])
def test_unknown_checkpoint_lists_what_there_is(run, parts, which):
    save(run, parts, 10, val_loss=2.0)
    save(run, parts, 20, val_loss=1.0)
    with pytest.raises(CheckpointError, match=r"have best, latest, steps \[10, 20\]") as e:
        ckpt_io.resolve_checkpoint(run, which)
    assert repr(str(which)) in str(e.value)


def test_resolve_errors_on_missing_and_empty_runs(tmp_path, run):
    with pytest.raises(CheckpointError, match="has no checkpoint yet"):
        ckpt_io.resolve_checkpoint(run)
    with pytest.raises(CheckpointError, match="does not exist; `slm runs` lists the runs"):
        ckpt_io.resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="is not a run directory \\(run.json missing\\)"):
        ckpt_io.load_model(tmp_path / "plain")


# ---------------------------------------------------------------------------------------------------------
# Tied weights


@pytest.mark.parametrize("gathered", [False, True], ids=["module", "full-state"])
def test_tied_weights_are_saved_once_and_reload_tied(tmp_path, gathered):
    model, opt, cfg, tok = make()
    assert model.lm_head.weight is model.wte.weight
    assert ckpt_io.shared_names(model) == [["lm_head.weight", "wte.weight"]]
    run = ckpt_io.new_run_dir(tmp_path, "tied", explicit=True)
    ckpt_io.init_run_dir(run, cfg, tok)
    state = model.state_dict() if gathered else None  # as FSDP's full_state gathers it: both names present
    path = ckpt_io.save_checkpoint(run, 1, model, opt, {}, cfg, tok, model_state=state)
    from safetensors import safe_open

    with safe_open(str(path / ckpt_io.WEIGHTS_FILE), "pt") as f:
        keys = set(f.keys())
    assert len(keys & {"lm_head.weight", "wte.weight"}) == 1 and len(keys) == len(model.state_dict()) - 1
    loaded = ckpt_io.load_model(run, "latest")[0]
    assert loaded.lm_head.weight is loaded.wte.weight
    assert torch.equal(loaded.wte.weight, model.wte.weight)


def test_untied_weights_are_both_saved(tmp_path):
    model, opt, cfg, tok = make("model.tie_embeddings=false")
    assert ckpt_io.shared_names(model) == []
    run = ckpt_io.new_run_dir(tmp_path, "untied", explicit=True)
    ckpt_io.init_run_dir(run, cfg, tok)
    ckpt_io.save_checkpoint(run, 1, model, None, {}, cfg, tok)
    loaded = ckpt_io.load_model(run, "latest")[0]
    assert loaded.lm_head.weight is not loaded.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert not (run / "checkpoints" / "step-000001" / ckpt_io.OPTIM_FILE).exists()  # no optimizer given


# ---------------------------------------------------------------------------------------------------------
# Damaged, missing or changed files: a CheckpointError that says what is wrong


def test_changed_tokenizer_is_refused(run, parts):
    path = save(run, parts, 1)
    other = CharTokenizer("xyz")
    shutil.rmtree(path / "tokenizer")
    other.save(path / "tokenizer")
    with pytest.raises(CheckpointError, match="tokenizer fingerprint .* differs from the one it was trained with") as e:
        ckpt_io.load_model(run, "latest")
    assert other.fingerprint in str(e.value) and parts[3].fingerprint in str(e.value)


def test_damaged_state_json(run, parts):
    path = save(run, parts, 1)
    (path / "state.json").write_text('{"step": 1, "val_lo')
    with pytest.raises(CheckpointError, match=r"step-000001 is damaged \(state.json: .*\); use another --checkpoint"):
        ckpt_io.read_state(path)
    with pytest.raises(CheckpointError, match="is damaged"):
        ckpt_io.load_model(run, "latest")


def test_newer_format_is_refused(run, parts):
    path = save(run, parts, 1)
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, "format_version": ckpt_io.FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match="written by a newer slmkit .*; upgrade"):
        ckpt_io.read_state(path)


def test_damaged_weights(run, parts):
    path = save(run, parts, 1)
    weights = path / ckpt_io.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a full disk
    with pytest.raises(CheckpointError, match=r"model.safetensors is damaged: 100 bytes, [\d,]+ were saved"):
        ckpt_io.load_model(run, "latest")
    with pytest.raises(CheckpointError, match="cannot load weights from .*model.safetensors"):
        ckpt_io.load_model(run, "latest", verify=False)  # what safetensors itself says


def test_weights_of_another_model(run, parts):
    path = save(run, parts, 1)
    _, _, wider, tok = make("model.n_embd=64")
    from slmkit.base.config_files import save_config

    save_config(wider, path / "config.toml")
    with pytest.raises(CheckpointError, match="does not fit this model .*same model config"):
        ckpt_io.load_model(run, "latest")


def test_missing_weights_leave_no_checkpoint(run, parts):
    path = save(run, parts, 1)
    (path / ckpt_io.WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no checkpoint yet"):
        ckpt_io.load_model(run, "latest")


def test_missing_optimizer_state(run, parts):
    path = save(run, parts, 1)
    (path / ckpt_io.OPTIM_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no optimizer state; resume needs a full checkpoint"):
        ckpt_io.load_optimizer(parts[1], path)


def test_missing_or_bad_config(run, parts):
    path = save(run, parts, 1)
    (path / "config.toml").unlink()
    assert ckpt_io.load_model(run, "latest")[2] == parts[2]  # falls back to the run's config.toml
    (run / "config.toml").unlink()
    with pytest.raises(CheckpointError, match="config.toml is missing; the run dir is incomplete"):
        ckpt_io.load_model(run, "latest")
    (run / "config.toml").write_text("[model]\nn_layer = 'two'\n")
    with pytest.raises(CheckpointError, match=r"config.toml: .*model.n_layer"):
        ckpt_io.read_run_config(run)


def test_damaged_run_json(run):
    (run / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read .*run.json"):
        ckpt_io.read_run_info(run)


def test_cli_shows_a_checkpoint_error_as_one_line(run, parts, run_cli):
    save(run, parts, 5)
    code, out, err = run_cli("sample", run, "--checkpoint", "7")
    assert code == 2 and out == "" and err.startswith("error: no checkpoint '7'") and err.count("\n") == 1
