"""Multi-process training on CPU (gloo) with torchrun: DDP and FSDP2 against one process, checkpoints across world
sizes, exact resume, and the clear errors (too many processes, a checkpoint of another model, no rendezvous).

The 2-process runs are real `torchrun --standalone --nproc-per-node 2` launches (~10 s each); they start together
with the 1-process reference so the module takes well under a minute and a half.
"""

import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from conftest import tiny_overrides

from slmkit.base.config_files import load_config
from slmkit.base.metrics import read_metrics
from slmkit.engine.runtime import Runtime
from slmkit.engine.train import train
from slmkit.runs import checkpoint as ckpt_io

B, T = 4, 32
RUN = tiny_overrides(
    f"model.block_size={T}",
    f"train.batch_size={B}",
    f"train.tokens_per_step={2 * B * T}",
    "train.eval_every=10",
    "train.log_every=10",
    "train.max_steps=20",
    "train.keep_last=5",
    "train.threads=1",
    "train.dtype=fp32",
)  # fmt: skip  (exactness is checked in fp32)
# tokens_per_step = 2 x B x T: one process accumulates 2 micro-batches of B; two processes take one each
TOL = 1e-5


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return tiny_dataset()


def _overrides(dataset, out, *extra):
    return [*RUN, f"data.dir={dataset}", f"train.out_dir={out}", *extra]


def _torchrun(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "slmkit", "train",
           *args, "--no-progress"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _slm(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "slmkit", *args, "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen, what: str) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{out[-4000:]}"


def _losses(run) -> dict[int, float]:
    """step -> train/loss (the last event of a step wins)."""
    return {e["step"]: e["train/loss"] for e in read_metrics(run) if "train/loss" in e}


def _truncate_to(src, dst, step: int):
    """A copy of run `src` whose latest checkpoint is `step` and whose metrics are empty (to resume from there)."""
    shutil.copytree(src, dst)
    for s, path in ckpt_io.checkpoints(dst):
        if s > step:
            shutil.rmtree(path)
    (dst / "metrics.jsonl").unlink()
    return dst


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """20 steps each: one process (accumulation 2); 2-process DDP (launched by `slm train --nproc 2`); 2-process FSDP
    (torchrun -m slmkit train); the 1-process run resumed at step 10 under 2-process FSDP ("resumed"); the DDP run
    resumed at step 10 in one process ("ddp-then-one"). Launches overlap with the in-process runs."""
    out = tmp_path_factory.mktemp("runs")
    ov = _overrides(dataset, out)
    ddp = _slm("train", *ov, "--name", "ddp", "--nproc", "2")
    fsdp = _torchrun(*ov, "train.parallel=fsdp", "--name", "fsdp")
    single = train(load_config(None, [*ov, "train.name=single"]), overrides=ov, progress=False)
    resumed = _torchrun("--resume", str(_truncate_to(single, out / "resumed", 10)), "train.parallel=fsdp")
    _wait(ddp, "slm train --nproc 2 (ddp)")
    train(resume=_truncate_to(out / "ddp", out / "ddp-then-one", 10), progress=False)
    _wait(fsdp, "torchrun fsdp")
    _wait(resumed, "torchrun resume under fsdp")
    return {name: out / name for name in ("single", "ddp", "fsdp", "resumed", "ddp-then-one")}


def _assert_close(a: dict, b: dict, steps, what: str) -> None:
    diffs = {s: abs(a[s] - b[s]) for s in steps}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, f"{what}: max |loss diff| {diffs[worst]:.2e} at step {worst}"


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_accumulation(runs):
    one, two = _losses(runs["single"]), _losses(runs["ddp"])
    assert sorted(two) == list(range(1, 21))
    _assert_close(one, two, range(1, 21), "DDP x2 vs 1 process x accum 2")
    cfg = ckpt_io.read_run_config(runs["ddp"])
    assert cfg.train.grad_accum == 1 and ckpt_io.read_run_config(runs["single"]).train.grad_accum == 2
    state = ckpt_io.read_state(ckpt_io.resolve_checkpoint(runs["ddp"], "latest"))
    assert state["tokens_seen"] == 20 * 2 * B * T
    assert state["loader"]["batches"] == 40 and state["loader"]["world_size"] == 1  # the one-process stream


@pytest.mark.slow
def test_fsdp_matches_ddp(runs):
    _assert_close(_losses(runs["ddp"]), _losses(runs["fsdp"]), range(1, 21), "FSDP x2 vs DDP x2")


@pytest.mark.slow
def test_resume_under_torchrun_from_a_one_process_checkpoint_is_exact(runs):
    resumed = _losses(runs["resumed"])
    assert sorted(resumed) == list(range(11, 21))
    _assert_close(_losses(runs["single"]), resumed, range(11, 21), "1 process -> resumed under FSDP x2")
    assert json.loads((runs["resumed"] / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_ddp_and_fsdp_checkpoints_load_in_one_process(runs):
    from safetensors import safe_open

    weights = {}
    for name in ("single", "ddp", "fsdp"):
        model, _, _, ckpt = ckpt_io.load_model(runs[name], "latest")
        weights[name] = model.state_dict()
        with safe_open(str(ckpt / ckpt_io.WEIGHTS_FILE), "pt") as f:
            weights[name + "/keys"] = sorted(f.keys())
    assert weights["ddp/keys"] == weights["fsdp/keys"] == weights["single/keys"]  # one folder format
    for name in ("ddp", "fsdp"):
        worst = max((weights[name][k] - weights["single"][k]).abs().max().item() for k in weights["single"])
        assert worst < 1e-4, f"{name} weights differ from one process by {worst:.2e}"


@pytest.mark.slow
def test_a_ddp_checkpoint_resumes_exactly_in_one_process(runs):
    resumed = _losses(runs["ddp-then-one"])
    assert sorted(resumed) == list(range(11, 21))
    _assert_close(_losses(runs["ddp"]), resumed, range(11, 21), "DDP x2 -> resumed in 1 process")


# ---------------------------------------------------------------------------------------------------------
# In-process pieces (the loader's shared batch stream, a one-rank process group) and bad input.


@pytest.mark.parametrize("mode,align", [("random", False), ("sequential", False), ("random", True)])
def test_ranks_share_out_the_batches_of_one_process(dataset, mode, align):
    """W ranks x accumulation A draw, step by step, exactly the batches of one process with accumulation W*A; the
    state saved by rank 0 resumes any world size dividing its batch count."""
    from slmkit.data.loader import TokenLoader

    def loader(rank=0, world=1):
        return TokenLoader(dataset, "train", 3, 16, seed=5, mode=mode, align_to_docs=align, rank=rank,
                           world_size=world, shard="batches")  # fmt: skip

    W, A, steps = 2, 3, 4
    one = loader()
    reference = [[one.next_batch()[0] for _ in range(W * A)] for _ in range(steps)]
    ranks = [loader(r, W) for r in range(W)]
    for step in range(steps):
        drawn = [ranks[r].next_batch()[0] for _ in range(A) for r in range(W)]
        assert sorted(map(tuple, torch.cat(drawn).tolist())) == sorted(map(tuple, torch.cat(reference[step]).tolist()))
    state = ranks[0].state_dict()
    assert state == one.state_dict() and state["world_size"] == 1  # the one-process stream's position
    single, pair = loader(), [loader(r, W) for r in range(W)]
    single.load_state_dict(state)
    for p in pair:
        p.load_state_dict(state)
    assert torch.equal(single.next_batch()[0], pair[0].next_batch()[0])  # global batch 24 = rank 0's
    assert torch.equal(single.next_batch()[0], pair[1].next_batch()[0])
    with pytest.raises(Exception, match="not a multiple of the world size 5"):
        loader(0, 5).load_state_dict(state)


@pytest.fixture
def one_rank_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _tiny_model(n_embd: int = 32):
    from slmkit.model.gpt import GPT

    cfg = load_config(None, ["model.n_layer=2", "model.n_head=2", f"model.n_embd={n_embd}", "model.block_size=16",
                             "model.vocab_size=64"])  # fmt: skip
    torch.manual_seed(0)
    return GPT(cfg.model), cfg


def test_full_state_round_trips_through_the_single_process_format(one_rank_group, tmp_path):
    from slmkit.engine.distributed import fsdp_shard, full_state, load_full_state
    from slmkit.model.optim import build_optimizer

    plain, cfg = _tiny_model()
    plain_opt = build_optimizer(plain, cfg.optim)
    x = torch.randint(0, 64, (2, 16))
    plain(x, x)[1].backward()
    plain_opt.step()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    from safetensors.torch import save_model

    save_model(plain, str(ckpt / ckpt_io.WEIGHTS_FILE))
    torch.save(plain_opt.state_dict(), ckpt / ckpt_io.OPTIM_FILE)

    sharded, _ = _tiny_model()
    fsdp_shard(sharded, "cpu", "bf16")  # the mixed-precision policy: bf16 compute, fp32 reduce
    opt = build_optimizer(sharded, cfg.optim)
    load_full_state(sharded, opt, ckpt)
    model_sd, optim_sd = full_state(sharded, opt)
    for k, v in plain.state_dict().items():
        assert torch.equal(model_sd[k], v), k
    ref = plain_opt.state_dict()
    assert set(optim_sd["state"]) == set(ref["state"])
    for i, st in ref["state"].items():
        assert torch.equal(optim_sd["state"][i]["exp_avg"], st["exp_avg"]), i
    assert [g["params"] for g in optim_sd["param_groups"]] == [g["params"] for g in ref["param_groups"]]
    sharded(x, x)[1].backward()  # bf16 forward/backward runs on the sharded model


def test_a_checkpoint_of_another_model_is_refused_clearly(one_rank_group, tmp_path):
    from safetensors.torch import save_model

    from slmkit.engine.distributed import fsdp_shard, load_full_state

    small, _ = _tiny_model(32)
    save_model(small, str(tmp_path / ckpt_io.WEIGHTS_FILE))
    big, _ = _tiny_model(64)
    with pytest.raises(ckpt_io.CheckpointError, match="does not fit this model"):
        ckpt_io.load_weights(big, tmp_path)  # one process / DDP
    fsdp_shard(big, "cpu", "fp32")
    with pytest.raises(ckpt_io.CheckpointError, match="does not fit this model"):
        load_full_state(big, None, tmp_path)  # FSDP


def test_too_many_processes_is_a_clear_error(run_cli, dataset, tmp_path):
    code, _, err = run_cli("train", *_overrides(dataset, tmp_path), "--nproc", "999")
    assert code == 2
    assert "--nproc 999 is more than" in err and "use --nproc" in err


def test_strip_nproc_keeps_everything_else():
    from slmkit.engine.launch import strip_nproc

    argv = ["train", "tiny", "optim.lr=1e-3", "--nproc", "2", "--name", "x", "--nproc=4"]
    assert strip_nproc(argv) == ["tiny", "optim.lr=1e-3", "--name", "x"]


def test_rendezvous_failure_says_what_to_check(monkeypatch):
    import torch.distributed as dist

    from slmkit.engine.distributed import DistributedError, init_process_group

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    rt = Runtime(device=torch.device("cpu"), dtype="fp32", rank=1, world_size=2)
    with pytest.raises(DistributedError, match="MASTER_ADDR/MASTER_PORT") as e:
        init_process_group(rt, timeout_s=2)
    assert "firewall" in str(e.value) and "--nnodes" in str(e.value) and f"127.0.0.1:{port}" in str(e.value)
    assert not dist.is_initialized()


def test_parallel_is_validated():
    from slmkit.base.config import ConfigError

    with pytest.raises(ConfigError, match="train.parallel"):
        load_config(None, ["train.parallel=zero3"])
