"""The transformer: shapes, parameter counts, FLOPs, loss masking, causality, every architecture option, KV cache."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from slmkit.base.config import ModelConfig
from slmkit.base.config_files import load_config
from slmkit.model.gpt import GPT, padded_vocab_size
from slmkit.model.linear_ce import IGNORE_INDEX


def tiny(**kw) -> ModelConfig:
    base = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=70)
    return ModelConfig(**{**base, **kw})


LLAMA = dict(norm="rmsnorm", pos_emb="rope", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2)


def _ids(cfg: ModelConfig, B: int = 2, T: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (B, T or cfg.block_size), generator=g)


def test_shapes_and_padded_vocab():
    torch.manual_seed(0)
    model = GPT(tiny())
    assert model.padded_vocab == 128 == padded_vocab_size(70)
    logits, loss = model(_ids(model.config))
    assert logits.shape == (2, 16, 128) and loss is None
    logits, loss = model(_ids(model.config), _ids(model.config, seed=1))
    assert loss.ndim == 0 and abs(loss.item() - math.log(128)) < 0.5  # near uniform at init
    assert model(_ids(model.config), last_only=True)[0].shape == (2, 1, 128)


def test_parameter_names_are_the_interface():
    model = GPT(tiny(**LLAMA, qk_norm=True))
    names = {n for n, _ in model.named_parameters()}
    for n in ("wte.weight", "blocks.0.norm1.weight", "blocks.0.attn.q.weight", "blocks.0.attn.k.weight",
              "blocks.0.attn.v.weight", "blocks.0.attn.o.weight", "blocks.0.attn.q_norm.weight",
              "blocks.0.attn.k_norm.weight", "blocks.1.norm2.weight", "blocks.1.mlp.up.weight",
              "blocks.1.mlp.gate.weight", "blocks.1.mlp.down.weight", "norm_f.weight", "lm_head.weight"):  # fmt: skip
        assert n in names, n
    assert model.blocks[0].attn.k.weight.shape == (2 * 8, 32)  # kv_heads * head_dim
    hidden = [n for n, p in model.named_parameters() if p.dim() == 2 and n not in ("wte.weight", "lm_head.weight")]
    assert all(n.startswith("blocks.") for n in hidden)
    tied = GPT(tiny())
    assert tied.lm_head.weight is tied.wte.weight and "wpe.weight" in dict(tied.named_parameters())


@pytest.mark.slow  # the first meta-device init imports torch's decompositions (a few seconds, once)
def test_gpt2_124m_parameter_count():
    """GPT-2 small is 124,439,808 parameters with its 50257-token vocabulary; we pad to 50304 rows."""
    cfg = load_config("gpt2-124m").model
    cfg = dataclasses.replace(cfg, vocab_size=50257)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.padded_vocab == 50304
    assert model.num_params() == 124_439_808 + (50304 - 50257) * 768 == 124_475_904
    assert model.num_params(non_embedding=True) == 124_475_904 - 50304 * 768 - 1024 * 768 == 85_056_000
    # 6N (N = non-embedding + the tied head's matmul) + 12 * L * C * T
    assert model.flops_per_token() == 6 * (85_056_000 + 50304 * 768) + 12 * 12 * 768 * 1024


def test_num_params_untied_and_rope():
    cfg = tiny(**LLAMA)
    model = GPT(cfg)
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params() == total
    assert model.num_params(non_embedding=True) == total - 128 * 32  # no wpe with rope; untied head counts
    assert model.flops_per_token() == 6 * (total - 128 * 32) + 12 * 2 * 32 * 16


def test_init_scheme():
    torch.manual_seed(0)
    cfg = tiny(n_layer=8, n_embd=256, n_head=4, vocab_size=1000)
    model = GPT(cfg)
    std = model.blocks[0].attn.q.weight.std().item()
    resid = model.blocks[0].mlp.down.weight.std().item()
    assert abs(std - 0.02) < 0.002 and abs(resid - 0.02 / math.sqrt(16)) < 0.001
    assert torch.all(model.blocks[0].attn.q.bias == 0) and torch.all(model.blocks[0].norm1.weight == 1)


def test_masked_targets_give_no_loss_and_no_gradient():
    torch.manual_seed(0)
    cfg = tiny()
    model = GPT(cfg)
    idx, targets = _ids(cfg), _ids(cfg, seed=1)
    masked = targets.clone()
    masked[:, :10] = IGNORE_INDEX
    logits, loss = model(idx, masked)
    logits.retain_grad()
    loss.backward()
    assert torch.all(logits.grad[:, :10] == 0) and logits.grad[:, 10:].abs().sum() > 0
    ref = torch.nn.functional.cross_entropy(logits[:, 10:].reshape(-1, 128).float(), targets[:, 10:].reshape(-1))
    assert torch.allclose(loss, ref)
    model.zero_grad()
    _, loss = model(idx, torch.full_like(targets, IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and all(p.grad is None or torch.all(p.grad == 0) for p in model.parameters())


@pytest.mark.parametrize("arch", [{}, LLAMA])
def test_causal(arch):
    """Changing future tokens never changes the logits of earlier positions."""
    torch.manual_seed(0)
    cfg = tiny(**arch)
    model = GPT(cfg).eval()
    a = _ids(cfg, B=1)
    b = a.clone()
    b[0, 9:] = (b[0, 9:] + 1) % cfg.vocab_size
    with torch.no_grad():
        la, lb = model(a)[0], model(b)[0]
    assert torch.allclose(la[:, :9], lb[:, :9], atol=1e-6) and not torch.allclose(la[:, 9:], lb[:, 9:])


OPTIONS = list(itertools.product(["layernorm", "rmsnorm"], ["pre", "post"], ["learned", "rope"],
                                 ["gelu", "gelu_exact", "swiglu", "relu2"]))  # fmt: skip


@pytest.mark.parametrize("norm,position,pos_emb,mlp", OPTIONS)
def test_every_architecture_trains(norm, position, pos_emb, mlp):
    """Forward + backward with every combination; qk_norm, bias, tying, GQA and dropout vary along."""
    i = OPTIONS.index((norm, position, pos_emb, mlp))
    cfg = tiny(norm=norm, norm_position=position, pos_emb=pos_emb, mlp=mlp, qk_norm=i % 2 == 0, bias=i % 3 != 0,
               tie_embeddings=i % 2 == 1, n_kv_head=(0, 1, 2)[i % 3], dropout=0.1 * (i % 2))  # fmt: skip
    torch.manual_seed(i)
    model = GPT(cfg)
    _, loss = model(_ids(cfg), _ids(cfg, seed=1))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert isinstance(model.norm_f, torch.nn.Identity) == (position == "post")


def test_gqa_equals_mha_with_repeated_kv_heads():
    """GQA with kv heads copied into every group is exactly multi-head attention."""
    torch.manual_seed(0)
    gqa_cfg = tiny(**LLAMA)
    mha_cfg = dataclasses.replace(gqa_cfg, n_kv_head=0)
    gqa, mha = GPT(gqa_cfg).eval(), GPT(mha_cfg).eval()
    sd = gqa.state_dict()
    hd, rep = gqa_cfg.head_dim, gqa_cfg.n_head // gqa_cfg.kv_heads
    for k in list(sd):
        if k.endswith(("attn.k.weight", "attn.v.weight")):
            sd[k] = sd[k].view(gqa_cfg.kv_heads, hd, -1).repeat_interleave(rep, dim=0).reshape(-1, gqa_cfg.n_embd)
    mha.load_state_dict(sd)
    idx = _ids(gqa_cfg)
    with torch.no_grad():
        assert torch.allclose(gqa(idx)[0], mha(idx)[0], atol=1e-6)


@pytest.mark.parametrize("arch", [{}, LLAMA, dict(LLAMA, qk_norm=True, norm_position="post", mlp="relu2")])
def test_kv_cache_logits_match_full_forward(arch):
    """Prefill, then single tokens, then a multi-token chunk: the same logits as one full forward."""
    torch.manual_seed(0)
    cfg = tiny(**arch)
    model = GPT(cfg).eval()
    idx = _ids(cfg, B=2)
    with torch.no_grad():
        full = model(idx)[0]
        cache = model.new_kv_cache(2)
        parts = [model(idx[:, :5], kv_cache=cache)[0]]
        parts += [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(5, 9)]
        parts.append(model(idx[:, 9:], kv_cache=cache)[0])
    assert cache.length == cfg.block_size
    diff = (torch.cat(parts, dim=1) - full).abs().max().item()
    assert diff < 1e-5, f"max abs diff {diff:.3e}"
    with pytest.raises(ValueError, match="exceed"):
        model(idx[:, :1], kv_cache=cache)


def test_bf16_training_on_cpu_runs_short_attention_in_fp32(monkeypatch):
    """The CPU flash-attention backward is slower in bf16 for short sequences, so training under bf16 autocast runs
    attention in fp32 there; inference (no grad) keeps bf16. The loss stays close to fp32's."""
    import slmkit.model.gpt as model_mod

    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kw):
        seen.append(q.dtype)
        return sdpa(q, k, v, *args, **kw)

    monkeypatch.setattr(model_mod.F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    model = GPT(tiny(**LLAMA))
    x, y = _ids(model.config), _ids(model.config, seed=1)
    _, ref = model(x, y)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(x, y)
    loss.backward()
    assert seen == [torch.float32] * 2 and abs(loss.item() - ref.item()) < 0.02
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    seen.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert seen == [torch.bfloat16] * 2


def test_training_forward_fuses_qkv_into_one_matmul_with_the_same_result():
    """With gradients on, q/k/v run as one matmul on the concatenated weights: same logits and gradients as the three
    projections (the no-grad path); a LoRA adapter on q keeps its own forward (its update is not dropped)."""
    from slmkit.base.config import LoraConfig
    from slmkit.model.lora import apply_lora

    torch.manual_seed(0)
    cfg = tiny(bias=True)
    model = GPT(cfg).eval()
    x = _ids(cfg)
    with torch.no_grad():
        separate = model(x)[0]
    fused = model(x)[0]
    assert torch.allclose(fused, separate, atol=1e-5)
    fused.square().mean().backward()
    assert all(model.blocks[0].attn.__getattr__(n).weight.grad is not None for n in "qkv")
    lora = apply_lora(GPT(cfg).eval(), LoraConfig(rank=2, targets=["q"]))
    attn = lora.blocks[0].attn
    assert not attn._plain_qkv()
    with torch.no_grad():
        attn.q.lora_b.normal_()
        ref = lora(x)[0]
    assert torch.allclose(lora(x)[0], ref, atol=1e-5)
