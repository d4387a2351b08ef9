"""Weight mapping between our GPT and Hugging Face GPT2LMHeadModel / LlamaForCausalLM.

Each direction is a name table plus the few tensor surgeries HF needs: GPT-2 stores Linear weights transposed
(Conv1D, (in, out)) and fuses q/k/v into `c_attn`; LLaMA maps one to one (our RoPE uses HF's rotate-half
convention, so no permutation). Our embedding and head have `padded_vocab` rows: loading pads HF's rows with
zeros, exporting keeps the first `cfg.vocab_size` rows. Works on plain state dicts, so transformers is only
needed to build the HF model itself. `load_hf_model` reads a local HF model directory as our GPT and tokenizer.

config.json is read by transformers 4.x and 5.x (pyproject allows both): 5.x keeps `rope_theta` only inside
`rope_parameters`, which 4.x does not read (it would silently use 10,000), so `portable_hf_config` writes it at the
top level too. `hf_architecture` imports no torch, so `slm config presets` can ask it without loading torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from slmkit.base.config import ModelConfig
from slmkit.base.errors import SlmError
from slmkit.model.hf_tokenizer import tokenizer_from_hf_dir

if TYPE_CHECKING:  # torch is imported where tensors are handled, so the architecture checks answer without it
    import torch

StateDict = dict[str, "torch.Tensor"]

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
_LLAMA_TOP = {"wte.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight",
              "lm_head.weight": "lm_head.weight"}  # fmt: skip


def _gpt():
    """slmkit.model.gpt, imported on first use: it imports torch, which the architecture checks must not need."""
    import slmkit.model.gpt as gpt  # torch: only where weights are handled (see the module docstring)

    return gpt


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
    V, C = _gpt().padded_vocab_size(cfg.vocab_size), cfg.n_embd
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
    import torch

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


def gpt2_hf_config(cfg: ModelConfig) -> dict:
    """Keyword arguments of transformers.GPT2Config equivalent to cfg."""
    return dict(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                n_head=cfg.n_head, n_inner=cfg.hidden_size, activation_function="gelu_new",
                layer_norm_epsilon=cfg.norm_eps, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                attn_pdrop=cfg.dropout, initializer_range=cfg.init_std, tie_word_embeddings=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# LLaMA


def llama_state_dict_from_hf(hf_sd: StateDict, cfg: ModelConfig) -> StateDict:
    """Our state dict from a LlamaForCausalLM state dict (cfg: rmsnorm, pre, rope, swiglu, no bias)."""
    V = _gpt().padded_vocab_size(cfg.vocab_size)
    sd = {}
    for ours, theirs in _LLAMA_TOP.items():
        if theirs in hf_sd:
            sd[ours] = _pad_rows(hf_sd[theirs], V) if ours != "norm_f.weight" else hf_sd[theirs].clone()
    if cfg.tie_embeddings or "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["wte.weight"]
    for i in range(cfg.n_layer):
        for ours, theirs in _LLAMA_LAYER.items():
            sd[f"blocks.{i}.{ours}"] = hf_sd[f"model.layers.{i}.{theirs}"].clone()
    return sd


def llama_state_dict_to_hf(sd: StateDict, cfg: ModelConfig) -> StateDict:
    """A LlamaForCausalLM state dict (vocabulary cut to cfg.vocab_size) from ours."""
    out = {theirs: sd[ours].clone() for ours, theirs in _LLAMA_TOP.items()}
    out["model.embed_tokens.weight"] = out["model.embed_tokens.weight"][: cfg.vocab_size]
    out["lm_head.weight"] = (
        out["model.embed_tokens.weight"] if cfg.tie_embeddings else out["lm_head.weight"][: cfg.vocab_size]
    )
    for i in range(cfg.n_layer):
        for ours, theirs in _LLAMA_LAYER.items():
            out[f"model.layers.{i}.{theirs}"] = sd[f"blocks.{i}.{ours}"].clone()
    return out


def llama_hf_config(cfg: ModelConfig) -> dict:
    """Keyword arguments of transformers.LlamaConfig equivalent to cfg."""
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.hidden_size,
                num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
                head_dim=cfg.head_dim, max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
                rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings, attention_bias=False,
                mlp_bias=False, hidden_act="silu", initializer_range=cfg.init_std)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Which HF class represents a config, and the config an HF checkpoint describes (export and import-hf)

_HF_CLASSES = {  # HF architecture -> (class name, the ModelConfig field values it requires)
    "gpt2": ("GPT2LMHeadModel", {"norm": "layernorm", "norm_position": "pre", "pos_emb": "learned", "mlp": "gelu",
                                 "bias": True, "tie_embeddings": True, "qk_norm": False}),
    "llama": ("LlamaForCausalLM", {"norm": "rmsnorm", "norm_position": "pre", "pos_emb": "rope", "mlp": "swiglu",
                                   "bias": False, "qk_norm": False}),
}  # fmt: skip


class HFConversionError(SlmError):
    """A model that no supported Hugging Face class represents, or an HF checkpoint we cannot read."""


def hf_architecture(cfg: ModelConfig) -> str:
    """'gpt2' or 'llama': the HF class that represents cfg exactly; HFConversionError naming the fields otherwise."""
    misses = {}
    for arch, (_, need) in _HF_CLASSES.items():
        misses[arch] = [k for k, v in need.items() if getattr(cfg, k) != v]
        if arch == "gpt2" and cfg.kv_heads != cfg.n_head:
            misses[arch].append("n_kv_head")
        if not misses[arch]:
            return arch
    arch = min(misses, key=lambda a: len(misses[a]))
    cls, need = _HF_CLASSES[arch]
    fields = ", ".join(f"model.{k} = {getattr(cfg, k)!r} ({cls} needs {need.get(k, 'n_head')!r})" for k in misses[arch])
    raise HFConversionError(f"no Hugging Face class represents this model: {fields}; the closest is {cls}")


def model_config_from_hf(hf: dict) -> tuple[str, ModelConfig]:
    """(architecture, our ModelConfig) from an HF config.json dict; HFConversionError for what we cannot map."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise HFConversionError(f"GPT-2 checkpoint with activation_function={act!r}; only gelu_new is supported")
        return kind, ModelConfig(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                                 block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                                 norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp_hidden=hf.get("n_inner") or 0,
                                 **_HF_CLASSES["gpt2"][1])  # fmt: skip
    if kind == "llama":
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise HFConversionError(f"LLaMA checkpoint with rope scaling {rope}; only plain RoPE is supported")
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise HFConversionError(f"LLaMA checkpoint with {flag}=true is not supported (our LLaMA has no biases)")
        if hf.get("hidden_act", "silu") != "silu":
            raise HFConversionError(f"LLaMA checkpoint with hidden_act={hf['hidden_act']!r}; only silu is supported")
        n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, n_embd // n_head):
            raise HFConversionError(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads; not supported")
        need = dict(_HF_CLASSES["llama"][1])
        return kind, ModelConfig(n_layer=hf["num_hidden_layers"], n_head=n_head, n_embd=n_embd,
                                 n_kv_head=hf.get("num_key_value_heads") or n_head,
                                 block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
                                 norm_eps=hf.get("rms_norm_eps", 1e-6),
                                 rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                                 mlp_hidden=hf["intermediate_size"], tie_embeddings=bool(hf.get("tie_word_embeddings")),
                                 **need)  # fmt: skip
    raise HFConversionError(f"unsupported Hugging Face architecture {kind!r} (architectures "
                            f"{hf.get('architectures')}); import-hf reads gpt2 and llama checkpoints")  # fmt: skip


def state_dict_to_hf(sd: StateDict, cfg: ModelConfig) -> StateDict:
    return (gpt2_state_dict_to_hf if hf_architecture(cfg) == "gpt2" else llama_state_dict_to_hf)(sd, cfg)


def state_dict_from_hf(hf_sd: StateDict, arch: str, cfg: ModelConfig) -> StateDict:
    return (gpt2_state_dict_from_hf if arch == "gpt2" else llama_state_dict_from_hf)(hf_sd, cfg)


def hf_config(cfg: ModelConfig, eot_id: int | None = None, eos_ids: list[int] | None = None):
    """The transformers config object (GPT2Config or LlamaConfig) equivalent to cfg; end-of-text is bos and eos,
    or `eos_ids` are (a chat model also ends at end-of-turn)."""
    import transformers

    arch = hf_architecture(cfg)
    kwargs = gpt2_hf_config(cfg) if arch == "gpt2" else llama_hf_config(cfg)
    if eot_id is not None:
        kwargs.update(bos_token_id=eot_id, eos_token_id=eot_id)
    if eos_ids:
        kwargs.update(eos_token_id=eos_ids[0] if len(eos_ids) == 1 else list(eos_ids))
    config_cls = transformers.GPT2Config if arch == "gpt2" else transformers.LlamaConfig
    return config_cls(**kwargs, architectures=[_HF_CLASSES[arch][0]])


def portable_hf_config(hf: dict, cfg: ModelConfig) -> dict:
    """The config.json dict the installed transformers wrote (`hf`), completed so that transformers 4.x and 5.x
    both read cfg from it: 5.x nests rope_theta in rope_parameters, 4.x reads only the top-level key."""
    out = dict(hf)
    if hf_architecture(cfg) == "llama":
        out["rope_theta"] = float(cfg.rope_theta)
        out.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": float(cfg.rope_theta)})
    return out


# ---------------------------------------------------------------------------------------------------------
# Loading a Hugging Face model directory


def _read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    import torch
    from safetensors.torch import load_file

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
    """(our GPT in eval mode, our tokenizer, architecture) from a local GPT-2 or LLaMA HF checkpoint directory."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise SlmError(f"{src} has no config.json; pass a Hugging Face model directory (save_pretrained output)")
    arch, mcfg = model_config_from_hf(json.loads((src / "config.json").read_text()))
    tokenizer = tokenizer_from_hf_dir(src)
    if mcfg.vocab_size < tokenizer.vocab_size:
        raise SlmError(f"{src}: model vocab_size {mcfg.vocab_size} < tokenizer's {tokenizer.vocab_size}")
    model = _gpt().GPT(mcfg)
    model.load_state_dict(state_dict_from_hf(_read_hf_weights(src), arch, mcfg), strict=True)
    return model.eval(), tokenizer, arch
