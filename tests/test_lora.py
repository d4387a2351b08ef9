"""LoRA: zero-init equals the base, merge equals unmerged, only adapters train, optimizer memory, merge CLI."""

import copy

import pytest
import torch
from sft_helpers import SMALL_SFT, base_run, make_corpus, write_alpaca

from slmkit.base.config import LoraConfig, ModelConfig, OptimConfig
from slmkit.model.gpt import GPT
from slmkit.model.lora import (
    ADAPTER_FILE,
    LoraError,
    apply_lora,
    load_adapter,
    lora_targets,
    merge_lora,
    param_counts,
    save_adapter,
)
from slmkit.model.optim import build_optimizer
from slmkit.runs import checkpoint as ckpt_io

CFG = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=300, mlp="swiglu", bias=False,
                  tie_embeddings=False)  # fmt: skip


def model_and_batch(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
    return model, x


def test_zero_initialised_lora_equals_the_base():
    base, x = model_and_batch()
    adapted = apply_lora(copy.deepcopy(base), LoraConfig(rank=4, targets=["q", "k", "v", "o", "mlp"])).eval()
    assert len(lora_targets(adapted, LoraConfig(rank=4))) == 2 * 7  # q k v o up gate down per layer
    with torch.no_grad():
        a, b = base(x)[0], adapted(x)[0]
    assert torch.equal(a, b), f"max abs diff {(a - b).abs().max()}"


def test_merged_equals_unmerged():
    model, x = model_and_batch()
    apply_lora(model, LoraConfig(rank=4, alpha=8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_b"):
                p.normal_(0, 0.05)
        before = model(x)[0]
        merge_lora(model)
        after = model(x)[0]
    assert not any(".lora_" in n for n, _ in model.named_parameters())
    assert set(model.state_dict()) == set(GPT(CFG).state_dict())  # a plain GPT again
    diff = (before - after).abs().max().item()
    assert diff < 1e-5, f"max abs diff {diff}"


def test_only_adapters_train():
    model, x = model_and_batch()
    apply_lora(model, LoraConfig(rank=2, targets=["q", "v"]))
    trainable, total = param_counts(model)
    assert trainable == 2 * 2 * (2 * 64 + 64 * 2) and total > 50 * trainable
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = build_optimizer(model, OptimConfig(lr=1e-2))
    model.train()
    for _ in range(2):
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("lora_b"))


def optimizer_state_bytes(model, x) -> int:
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    model(x, x)[1].backward()
    opt.step()
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def test_optimizer_state_memory_lora_vs_full():
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=32, vocab_size=512)
    full, x = model_and_batch(cfg)
    lora = apply_lora(copy.deepcopy(full), LoraConfig(rank=8))
    full_bytes, lora_bytes = optimizer_state_bytes(full.train(), x), optimizer_state_bytes(lora.train(), x)
    print(f"AdamW state: full fine-tuning {full_bytes:,} bytes, LoRA rank 8 {lora_bytes:,} bytes "
          f"({100 * lora_bytes / full_bytes:.1f}%)")  # fmt: skip
    assert lora_bytes < 0.1 * full_bytes, (full_bytes, lora_bytes)


def test_targets_matching_nothing_are_refused():
    model, _ = model_and_batch(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=64))
    with pytest.raises(LoraError, match="match no module"):
        apply_lora(model, LoraConfig(rank=2, targets=["gate"]))  # a gelu MLP has no gate
    with pytest.raises(LoraError, match="not a projection"):
        apply_lora(model, LoraConfig(rank=2, targets=["qq"]))


def test_adapter_save_and_load(tmp_path):
    model, x = model_and_batch()
    apply_lora(model, LoraConfig(rank=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                p.normal_()
    size = save_adapter(model, tmp_path / ADAPTER_FILE)
    assert size < 0.2 * sum(p.numel() * 4 for p in model.parameters())
    other, _ = model_and_batch()
    apply_lora(other, LoraConfig(rank=4))
    load_adapter(other, tmp_path / ADAPTER_FILE)
    with torch.no_grad():
        assert torch.equal(model(x)[0], other(x)[0])


@pytest.mark.slow
def test_lora_sft_then_merge(tmp_path, stdlib_dir, run_cli, capsys):
    base = base_run(tmp_path, make_corpus(tmp_path, stdlib_dir))
    data = write_alpaca(tmp_path / "a.jsonl", 30, jsonl=True)
    code, _, err = run_cli("sft", base, "--data", data, *SMALL_SFT, "lora.rank=4", "--no-progress")
    assert code == 0, err
    assert "trainable" in err and "adapters:" in err
    child = tmp_path / "runs" / "base-lora"
    info = ckpt_io.read_run_info(child)
    assert info["parent"] == str(base)
    ckpt = ckpt_io.resolve_checkpoint(child, "best")
    assert (ckpt / ADAPTER_FILE).stat().st_size < (ckpt / ckpt_io.WEIGHTS_FILE).stat().st_size / 4
    lora_model, tok, _, _ = ckpt_io.load_model(child)
    base_model, _, _, _ = ckpt_io.load_model(base)
    for n, p in base_model.state_dict().items():  # the base weights did not move
        assert torch.equal(p, lora_model.state_dict()[n]), n
    code, out, err = run_cli("lora", "merge", child)
    assert code == 0, err
    merged_dir = tmp_path / "runs" / "base-lora-merged"
    assert out.strip() == str(merged_dir)
    assert ckpt_io.read_run_info(merged_dir)["parent"] == str(child)
    merged, _, mcfg, _ = ckpt_io.load_model(merged_dir)
    assert mcfg.lora.rank == 0
    x = torch.tensor([tok.encode("Repeat the word apple 2 times.")])
    with torch.no_grad():
        diff = (merged(x)[0] - lora_model(x)[0]).abs().max().item()
    assert diff < 1e-5, f"max abs diff {diff}"
    code, _, err = run_cli("lora", "merge", base)
    assert code == 2 and "no LoRA adapters" in err
