"""Which Hugging Face class represents a model, and the config.json on each side: torch-free, so the export
checks (`slm config presets` lists what every preset exports to) answer at once.

config.json is read by transformers 4.x and 5.x (pyproject allows both): 5.x keeps `rope_theta` only inside
`rope_parameters`, which 4.x does not read (it would silently use 10,000), so `portable_hf_config` writes it at the
top level too. The weights themselves are mapped in `slmkit.model.hf`.
"""

from __future__ import annotations

from slmkit.base.config import ModelConfig
from slmkit.base.errors import SlmError
from slmkit.model.arch_match import NO_GQA, describe_misses, match

_HF_CLASSES = {  # HF architecture -> (class name, the ModelConfig field values it requires: a value or a tuple of them)
    "gpt2": ("GPT2LMHeadModel", {"norm": "layernorm", "norm_position": "pre", "pos_emb": "learned",
                                 "mlp": ("gelu", "gelu_exact"),
                                 "bias": True, "tie_embeddings": True, "qk_norm": False, "n_kv_head": NO_GQA}),
    "llama": ("LlamaForCausalLM", {"norm": "rmsnorm", "norm_position": "pre", "pos_emb": "rope", "mlp": "swiglu",
                                   "bias": False, "qkv_bias": False, "qk_norm": False}),
    "qwen2": ("Qwen2ForCausalLM", {"norm": "rmsnorm", "norm_position": "pre", "pos_emb": "rope", "mlp": "swiglu",
                                   "bias": False, "qkv_bias": True, "qk_norm": False}),  # LLaMA + q/k/v biases
    "qwen3": ("Qwen3ForCausalLM", {"norm": "rmsnorm", "norm_position": "pre", "pos_emb": "rope", "mlp": "swiglu",
                                   "bias": False, "qkv_bias": False, "qk_norm": True}),  # LLaMA + q/k RMSNorm
}  # fmt: skip
CLASS_NAMES = {arch: cls for arch, (cls, _) in _HF_CLASSES.items()}


class HFConversionError(SlmError):
    """A model that no supported Hugging Face class represents, or an HF checkpoint we cannot read."""


def hf_architecture(cfg: ModelConfig) -> str:
    """'gpt2', 'llama', 'qwen2' or 'qwen3': the HF class that represents cfg exactly; HFConversionError naming the
    fields otherwise."""
    exact, arch, missed = match(cfg, {a: need for a, (_, need) in _HF_CLASSES.items()})
    if exact:
        return exact
    cls, need = _HF_CLASSES[arch]
    fields = describe_misses(cfg, need, missed, who=cls)
    raise HFConversionError(f"no Hugging Face class represents this model: {fields}; the closest is {cls}")


def model_config_from_hf(hf: dict) -> tuple[str, ModelConfig]:
    """(architecture, our ModelConfig) from an HF config.json dict; HFConversionError for what we cannot map."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        mlp = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}.get(act)
        if mlp is None:
            raise HFConversionError(f"GPT-2 checkpoint with activation_function={act!r}; only gelu_new, "
                                    "gelu_pytorch_tanh and gelu are supported")  # fmt: skip
        return kind, ModelConfig(n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                                 block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                                 norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp_hidden=hf.get("n_inner") or 0,
                                 **{**_HF_CLASSES["gpt2"][1], "mlp": mlp})  # fmt: skip
    if kind in ("llama", "qwen2", "qwen3", "phi3"):
        name = CLASS_NAMES.get(kind, "Phi3ForCausalLM")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise HFConversionError(f"{name} checkpoint with rope scaling {rope}; only plain RoPE is supported")
        if float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
            raise HFConversionError(f"{name} checkpoint with partial_rotary_factor != 1 (RoPE on part of each head) "
                                    "is not supported")  # fmt: skip
        if kind == "phi3" and hf.get("sliding_window") is not None:
            raise HFConversionError(f"{name} checkpoint with sliding_window={hf['sliding_window']} is not supported: "
                                    "every layer here attends to the whole context")  # fmt: skip
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise HFConversionError(f"{name} checkpoint with {flag}=true is not supported (our {kind} has no "
                                        "biases)")  # fmt: skip
        if hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or []):
            raise HFConversionError(f"{name} checkpoint with sliding-window attention (use_sliding_window / "
                                    "layer_types) is not supported: every layer here attends to the whole "
                                    "context")  # fmt: skip
        if hf.get("hidden_act", "silu") != "silu":
            raise HFConversionError(f"{name} checkpoint with hidden_act={hf['hidden_act']!r}; only silu is supported")
        n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, n_embd // n_head):
            raise HFConversionError(f"{name} checkpoint with head_dim {hf['head_dim']} != hidden_size / "
                                    f"num_attention_heads ({n_embd} / {n_head}); not supported")  # fmt: skip
        need = dict(_HF_CLASSES["llama" if kind == "phi3" else kind][1])  # Phi-3 is LLaMA with fused projections
        return kind, ModelConfig(n_layer=hf["num_hidden_layers"], n_head=n_head, n_embd=n_embd,
                                 n_kv_head=hf.get("num_key_value_heads") or n_head,
                                 block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
                                 norm_eps=hf.get("rms_norm_eps", 1e-6),
                                 rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                                 mlp_hidden=hf["intermediate_size"], tie_embeddings=bool(hf.get("tie_word_embeddings")),
                                 **need)  # fmt: skip
    raise HFConversionError(f"unsupported Hugging Face architecture {kind!r} (architectures "
                            f"{hf.get('architectures')}); import-hf reads gpt2, llama, qwen2, qwen3 "
                            "and phi3 checkpoints")  # fmt: skip


def gpt2_hf_config(cfg: ModelConfig) -> dict:
    """Keyword arguments of transformers.GPT2Config equivalent to cfg."""
    return dict(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                n_head=cfg.n_head, n_inner=cfg.hidden_size,
                activation_function="gelu" if cfg.mlp == "gelu_exact" else "gelu_new",
                layer_norm_epsilon=cfg.norm_eps, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                attn_pdrop=cfg.dropout, initializer_range=cfg.init_std, tie_word_embeddings=True)  # fmt: skip


def llama_hf_config(cfg: ModelConfig) -> dict:
    """Keyword arguments of transformers.LlamaConfig (or Qwen3Config, with mlp_bias dropped) equivalent to cfg."""
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.hidden_size,
                num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
                head_dim=cfg.head_dim, max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
                rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings, attention_bias=False,
                mlp_bias=False, hidden_act="silu", initializer_range=cfg.init_std)  # fmt: skip


def hf_config(cfg: ModelConfig, eot_id: int | None = None, eos_ids: list[int] | None = None):
    """The transformers config object (GPT2Config or LlamaConfig) equivalent to cfg; end-of-text is bos and eos,
    or `eos_ids` are (a chat model also ends at end-of-turn)."""
    import transformers  # optional and slow to import: only when an HF config object is built

    arch = hf_architecture(cfg)
    kwargs = gpt2_hf_config(cfg) if arch == "gpt2" else llama_hf_config(cfg)
    if arch in ("qwen2", "qwen3"):
        del kwargs["mlp_bias"]
        kwargs.update(use_sliding_window=False)
    if arch == "qwen2":  # its q/k/v always have biases, nothing else has
        del kwargs["attention_bias"]
    if eot_id is not None:
        kwargs.update(bos_token_id=eot_id, eos_token_id=eot_id)
    if eos_ids:
        kwargs.update(eos_token_id=eos_ids[0] if len(eos_ids) == 1 else list(eos_ids))
    config_cls = {"gpt2": transformers.GPT2Config, "llama": transformers.LlamaConfig,
                  "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[arch]  # fmt: skip
    return config_cls(**kwargs, architectures=[_HF_CLASSES[arch][0]])


def portable_hf_config(hf: dict, cfg: ModelConfig) -> dict:
    """The config.json dict the installed transformers wrote (`hf`), completed so that transformers 4.x and 5.x
    both read cfg from it: 5.x nests rope_theta in rope_parameters, 4.x reads only the top-level key."""
    out = dict(hf)
    if hf_architecture(cfg) != "gpt2":
        out["rope_theta"] = float(cfg.rope_theta)
        out.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": float(cfg.rope_theta)})
    return out
