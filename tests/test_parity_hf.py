"""Our GPT against Hugging Face's reference implementations: same weights (through hf.py) -> same logits."""

from __future__ import annotations

import pytest
import torch

from slmkit.base.config import ModelConfig
from slmkit.model import hf, hf_config
from slmkit.model.gpt import GPT

transformers = pytest.importorskip("transformers")

TOL = 1e-5


def _assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOL, f"max abs diff {diff:.3e} > {TOL}"


def _gpt2_cfg(mlp: str = "gelu") -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=192, norm="layernorm",
                       norm_position="pre", pos_emb="learned", mlp=mlp, bias=True, tie_embeddings=True)  # fmt: skip


def _llama_cfg(tie: bool, vocab_size: int = 256) -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=32, vocab_size=vocab_size,
                       norm="rmsnorm", norm_eps=1e-6, norm_position="pre", pos_emb="rope", rope_theta=500000.0,
                       mlp="swiglu", mlp_hidden=160, bias=False, tie_embeddings=tie)  # fmt: skip


def _randomize(model: torch.nn.Module) -> None:
    """Random norm weights/biases too (HF inits them to 1/0, which would hide a mapping mistake)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)


def _ids(cfg: ModelConfig) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (2, cfg.block_size), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("mlp", ["gelu", "gelu_exact"])
def test_gpt2_logits_match_hf(mlp: str):
    """gelu is GPT-2's tanh form (activation_function gelu_new), gelu_exact the erf form (gelu); both round-trip."""
    torch.manual_seed(0)
    cfg = _gpt2_cfg(mlp)
    assert hf_config.model_config_from_hf(hf_config.gpt2_hf_config(cfg) | {"model_type": "gpt2"})[1].mlp == mlp
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config.gpt2_hf_config(cfg))).eval()
    _randomize(theirs)
    ours = GPT(cfg).eval()
    ours.load_state_dict(hf.gpt2_state_dict_from_hf(theirs.state_dict(), cfg), strict=True)
    assert ours.lm_head.weight is ours.wte.weight
    idx = _ids(cfg)
    with torch.no_grad():
        _assert_close(ours(idx)[0][..., : cfg.vocab_size], theirs(idx).logits)


@pytest.mark.parametrize("tie", [False, True])
def test_llama_logits_match_hf(tie: bool):
    torch.manual_seed(0)
    cfg = _llama_cfg(tie)
    theirs = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**hf_config.llama_hf_config(cfg), attn_implementation="eager")
    )
    theirs.eval()
    _randomize(theirs)
    ours = GPT(cfg).eval()
    ours.load_state_dict(hf.llama_state_dict_from_hf(theirs.state_dict(), cfg), strict=True)
    idx = _ids(cfg)
    with torch.no_grad():
        _assert_close(ours(idx)[0][..., : cfg.vocab_size], theirs(idx).logits)


def test_round_trip_to_hf_with_padded_vocab():
    """Export cuts the padded rows, import pads them back: both directions are exact inverses."""
    torch.manual_seed(0)
    for cfg, to_hf, from_hf in ((_gpt2_cfg().__class__(**{**_gpt2_cfg().__dict__, "vocab_size": 100}),
                                 hf.gpt2_state_dict_to_hf, hf.gpt2_state_dict_from_hf),
                                (_llama_cfg(False, vocab_size=100), hf.llama_state_dict_to_hf,
                                 hf.llama_state_dict_from_hf)):  # fmt: skip
        model = GPT(cfg)
        with torch.no_grad():  # padded rows are zero after a round trip; make them zero here too
            model.wte.weight[cfg.vocab_size :] = 0
            model.lm_head.weight[cfg.vocab_size :] = 0
        sd = model.state_dict()
        exported = to_hf(sd, cfg)
        assert exported["lm_head.weight"].shape[0] == 100
        back = from_hf(exported, cfg)
        assert back.keys() == sd.keys()
        for k in sd:
            assert torch.equal(back[k], sd[k]), k


def test_gpt2_exported_weights_load_into_hf():
    torch.manual_seed(0)
    cfg = _gpt2_cfg()
    ours = GPT(cfg).eval()
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config.gpt2_hf_config(cfg))).eval()
    missing, unexpected = theirs.load_state_dict(hf.gpt2_state_dict_to_hf(ours.state_dict(), cfg), strict=False)
    assert not unexpected and all(".attn.bias" in k or "masked_bias" in k for k in missing), (missing, unexpected)
    idx = _ids(cfg)
    with torch.no_grad():
        _assert_close(ours(idx)[0][..., : cfg.vocab_size], theirs(idx).logits)
