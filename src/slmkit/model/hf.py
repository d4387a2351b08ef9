"""Weight mapping between our GPT and Hugging Face GPT2LMHeadModel / LlamaForCausalLM / Qwen2 / Qwen3.

Each direction is a name table plus the few tensor surgeries HF needs: GPT-2 stores Linear weights transposed
(Conv1D, (in, out)) and fuses q/k/v into `c_attn`; LLaMA maps one to one (our RoPE uses HF's rotate-half
convention, so no permutation). Qwen2 is LLaMA plus q/k/v biases, Qwen3 LLaMA plus the q/k norms, Phi-3 LLaMA with
fused qkv and gate-up projections (split on import). Our embedding and head have `padded_vocab` rows: loading pads
HF's rows with zeros, exporting keeps the first `cfg.vocab_size` rows. Works on plain state dicts, so transformers
is only needed to build the HF model itself. `load_hf_model` reads a local HF model directory as our GPT and
tokenizer.

Which HF class represents a config, and the config.json on each side, are `slmkit.model.hf_config` (no torch).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from slmkit.base.config import ModelConfig
from slmkit.base.errors import SlmError
from slmkit.model.gpt import GPT, padded_vocab_size
from slmkit.model.hf_config import hf_architecture, model_config_from_hf
from slmkit.model.hf_tokenizer import tokenizer_from_hf_dir

StateDict = dict[str, torch.Tensor]

_GPT2_LAYER = {  # ours -> HF, inside blocks.{i} / transformer.h.{i}; Conv1D weights are transposed
    "norm1.weight": "ln_1.weight",
    "norm1.bias": "ln_1.bias",
    "attn.o.weight": "attn.c_proj.weight",
    "attn.o.bias": "attn.c_proj.bias",
    "norm2.weight": "ln_2.weight",
    "norm2.bias": "ln_2.bias",
    "mlp.up.weight": "mlp.c_fc.weight",
    "mlp.up.bias": "mlp.c_fc.bias",
    "mlp.down.weight": "mlp.c_proj.weight",
    "mlp.down.bias": "mlp.c_proj.bias",
}
_GPT2_TOP = {"wte.weight": "transformer.wte.weight", "wpe.weight": "transformer.wpe.weight",
             "norm_f.weight": "transformer.ln_f.weight", "norm_f.bias": "transformer.ln_f.bias"}  # fmt: skip

_LLAMA_LAYER = {
    "norm1.weight": "input_layernorm.weight",
    "attn.q.weight": "self_attn.q_proj.weight",
    "attn.k.weight": "self_attn.k_proj.weight",
    "attn.v.weight": "self_attn.v_proj.weight",
    "attn.o.weight": "self_attn.o_proj.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
_QKV_BIAS = {f"attn.{n}.bias": f"self_attn.{n}_proj.bias" for n in "qkv"}
"""Qwen2's extra per-layer weights: the biases of the q, k and v projections (our model.qkv_bias)."""
_QK_NORM = {"attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight"}
"""Qwen3's extra per-layer weights: the RMSNorm over each head's query and key (our model.qk_norm)."""
_LLAMA_TOP = {"wte.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}  # fmt: skip


def _pad_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    if w.size(0) >= rows:
        return w[:rows].clone()
    out = w.new_zeros(rows, *w.shape[1:])
    out[: w.size(0)] = w
    return out


# ---------------------------------------------------------------------------------------------------------
# GPT-2


def gpt2_state_dict_from_hf(hf_sd: StateDict, cfg: ModelConfig) -> StateDict:
    """Our state dict from a GPT2LMHeadModel state dict (cfg: layernorm, pre, learned, gelu, bias, tied)."""
    V, C = padded_vocab_size(cfg.vocab_size), cfg.n_embd
    sd = {ours: hf_sd[theirs].clone() for ours, theirs in _GPT2_TOP.items()}
    sd["wte.weight"] = _pad_rows(hf_sd["transformer.wte.weight"], V)
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        for ours, theirs in _GPT2_LAYER.items():
            w = hf_sd[h + theirs]
            sd[f"blocks.{i}.{ours}"] = (w.t() if w.dim() == 2 else w).clone()
        qw, kw, vw = hf_sd[h + "attn.c_attn.weight"].t().split(C, dim=0)  # (3C, C) -> 3 x (C, C)
        qb, kb, vb = hf_sd[h + "attn.c_attn.bias"].split(C)
        for name, w, b in (("q", qw, qb), ("k", kw, kb), ("v", vw, vb)):
            sd[f"blocks.{i}.attn.{name}.weight"], sd[f"blocks.{i}.attn.{name}.bias"] = w.clone(), b.clone()
    sd["lm_head.weight"] = sd["wte.weight"]
    return sd


def gpt2_state_dict_to_hf(sd: StateDict, cfg: ModelConfig) -> StateDict:
    """A GPT2LMHeadModel state dict (vocabulary cut to cfg.vocab_size) from ours."""
    out = {theirs: sd[ours].clone() for ours, theirs in _GPT2_TOP.items()}
    out["transformer.wte.weight"] = sd["wte.weight"][: cfg.vocab_size].clone()
    for i in range(cfg.n_layer):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in _GPT2_LAYER.items():
            w = sd[p + ours]
            out[h + theirs] = (w.t() if w.dim() == 2 else w).contiguous()
        out[h + "attn.c_attn.weight"] = torch.cat([sd[f"{p}attn.{n}.weight"] for n in "qkv"]).t().contiguous()
        out[h + "attn.c_attn.bias"] = torch.cat([sd[f"{p}attn.{n}.bias"] for n in "qkv"])
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


# ---------------------------------------------------------------------------------------------------------
# LLaMA


def _llama_layer(cfg: ModelConfig) -> dict[str, str]:
    return {**_LLAMA_LAYER, **(_QK_NORM if cfg.qk_norm else {}), **(_QKV_BIAS if cfg.qkv_bias else {})}


def llama_state_dict_from_hf(hf_sd: StateDict, cfg: ModelConfig) -> StateDict:
    """Our state dict from a LlamaForCausalLM (Qwen2: cfg.qkv_bias, Qwen3: cfg.qk_norm) state dict (cfg: rmsnorm,
    pre, rope, swiglu, no other bias)."""
    V = padded_vocab_size(cfg.vocab_size)
    sd = {}
    for ours, theirs in _LLAMA_TOP.items():
        if theirs in hf_sd:
            sd[ours] = _pad_rows(hf_sd[theirs], V) if ours != "norm_f.weight" else hf_sd[theirs].clone()
    if cfg.tie_embeddings or "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["wte.weight"]
    for i in range(cfg.n_layer):
        for ours, theirs in _llama_layer(cfg).items():
            sd[f"blocks.{i}.{ours}"] = hf_sd[f"model.layers.{i}.{theirs}"].clone()
    return sd


def llama_state_dict_to_hf(sd: StateDict, cfg: ModelConfig) -> StateDict:
    """A LlamaForCausalLM / Qwen3ForCausalLM state dict (vocabulary cut to cfg.vocab_size) from ours."""
    out = {theirs: sd[ours].clone() for ours, theirs in _LLAMA_TOP.items()}
    out["model.embed_tokens.weight"] = out["model.embed_tokens.weight"][: cfg.vocab_size]
    out["lm_head.weight"] = (
        out["model.embed_tokens.weight"] if cfg.tie_embeddings else out["lm_head.weight"][: cfg.vocab_size]
    )
    for i in range(cfg.n_layer):
        for ours, theirs in _llama_layer(cfg).items():
            out[f"model.layers.{i}.{theirs}"] = sd[f"blocks.{i}.{ours}"].clone()
    return out


def state_dict_to_hf(sd: StateDict, cfg: ModelConfig) -> StateDict:
    return (gpt2_state_dict_to_hf if hf_architecture(cfg) == "gpt2" else llama_state_dict_to_hf)(sd, cfg)


def unfuse_phi3(hf_sd: StateDict, cfg: ModelConfig) -> StateDict:
    """A Phi3ForCausalLM state dict with LLaMA's names: its fused qkv_proj split into q/k/v_proj (rows q | k | v)
    and gate_up_proj into gate_proj and up_proj (rows gate | up)."""
    out = dict(hf_sd)
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        for name, part in zip(("q", "k", "v"), out.pop(p + "self_attn.qkv_proj.weight").split([q, kv, kv])):
            out[f"{p}self_attn.{name}_proj.weight"] = part
        gate, up = out.pop(p + "mlp.gate_up_proj.weight").chunk(2)
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate, up
    return out


def state_dict_from_hf(hf_sd: StateDict, arch: str, cfg: ModelConfig) -> StateDict:
    if arch == "phi3":
        hf_sd = unfuse_phi3(hf_sd, cfg)
    return (gpt2_state_dict_from_hf if arch == "gpt2" else llama_state_dict_from_hf)(hf_sd, cfg)


# ---------------------------------------------------------------------------------------------------------
# Loading a Hugging Face model directory


def _read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    if (src / "model.safetensors").is_file():
        return load_file(src / "model.safetensors")
    index = src / "model.safetensors.index.json"
    if index.is_file():
        sd = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            sd.update(load_file(src / shard))
        return sd
    if (src / "pytorch_model.bin").is_file():
        return torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise SlmError(f"{src} holds no model.safetensors (or pytorch_model.bin); is it a Hugging Face model directory?")


def load_hf_model(src: str | Path):
    """(our GPT in eval mode, our tokenizer, architecture) from a local GPT-2, LLaMA, Qwen2 or Qwen3 HF checkpoint
    directory."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise SlmError(f"{src} has no config.json; pass a Hugging Face model directory (save_pretrained output)")
    arch, mcfg = model_config_from_hf(json.loads((src / "config.json").read_text()))
    tokenizer = tokenizer_from_hf_dir(src)
    if mcfg.vocab_size < tokenizer.vocab_size:
        raise SlmError(f"{src}: model vocab_size {mcfg.vocab_size} < tokenizer's {tokenizer.vocab_size}")
    model = GPT(mcfg)
    model.load_state_dict(state_dict_from_hf(_read_hf_weights(src), arch, mcfg), strict=True)
    return model.eval(), tokenizer, arch
