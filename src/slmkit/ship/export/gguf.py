"""`slm export --format gguf`: a GGUF file that llama.cpp runs, for LLaMA-style and GPT-2-style models.

Three llama.cpp architectures: `llama` (RMSNorm, pre-norm, RoPE, SwiGLU, no biases, no QK-norm; GQA and a tied or
untied head are fine), `qwen3` (the same with QK-norm) and `gpt2` (LayerNorm, pre-norm, learned positions, GELU,
one head per key/value; biases written as zeros where the model has none). Anything else is refused naming the
field (`check_gguf`, which `slm export` and `slm config presets` also ask). Tensors use llama.cpp's names
(`token_embd`, `blk.N.attn_q`, ..., `output_norm`, `output`; llama/qwen3 leave a tied head out and llama.cpp reuses
`token_embd`; gpt2 files always carry `output`, and its q/k/v are one `attn_qkv`). The embedding and head keep only
the tokenizer's `vocab_size` rows (ours are padded). llama.cpp's GELU is the tanh form: a `gelu_exact` (erf) model
runs there with activations that differ by at most ~1e-3 (greedy tokens tested equal).

RoPE layout: our q/k projections follow Hugging Face's rotate-half convention (the two halves of each head are
rotated together), as llama.cpp's qwen3 does, while its llama rotates adjacent pairs. For llama, as llama.cpp's
own HF converter does, the rows of each q/k head are permuted so that adjacent pairs hold what the halves held:
per head, row r of the half h (h = 0, 1; r < head_dim/2) moves to row 2r + h.

Types (`type`): f16 stores every matrix in float16; q8_0 stores matrices whose rows are a multiple of 32 long in
Q8_0 (blocks of 32 values: one float16 scale = max|x|/127, then 32 int8), the rest in f16, and an untied `output`
head in f16 too (the logits are the most sensitive to it, and llama.cpp also quantizes the activations in Q8_0 dot
products: with the head in Q8_0 a small gpt2 model's greedy tokens left ours after 2, with it in f16 none did, as
llama.cpp's own k-quant mixes keep it wider). Norm weights and biases are f32.

Tokenizer: `tokenizer.ggml.model = "gpt2"` (byte-level BPE: tokens as byte-level strings, merges, token types,
`pre = "gpt-2"` for GPT-2's pre-tokenizer regex), from the bpe kind's tokenizer.json or, for the gpt2 kind, from
tiktoken's ranks; a char tokenizer of ASCII characters as the bytes themselves with no merge that applies (llama.cpp's
BPE then splits text into bytes and looks each up: our char encoding), one with wider characters is refused. The chat
template (when the tokenizer has the chat tokens) is stored as `tokenizer.chat_template`:
`slmkit.model.hf_tokenizer.CHAT_TEMPLATE`, the text the hf export writes too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import END_OF_TURN, EOT, Tokenizer, byte_to_unicode
from slmkit.model.arch_match import NO_GQA, describe_misses, match
from slmkit.model.hf_tokenizer import CHAT_TEMPLATE, hf_tokenizer_json

if TYPE_CHECKING:  # tensors arrive as arguments: the checks answer without importing torch
    import torch

GGUF_TYPES = ("f16", "q8_0")
GGUF_FILE = "model.gguf"
LLAMA_FIELDS = {"norm": "rmsnorm", "norm_position": "pre", "pos_emb": "rope", "mlp": "swiglu", "bias": False,
                "qkv_bias": False, "qk_norm": False}  # fmt: skip
"""ModelConfig values GGUF's llama architecture requires."""
GPT2_FIELDS = {"norm": "layernorm", "norm_position": "pre", "pos_emb": "learned", "mlp": ("gelu", "gelu_exact"),
               "qk_norm": False, "n_kv_head": NO_GQA}  # fmt: skip
GGUF_ARCHS = {"llama": LLAMA_FIELDS, "qwen3": {**LLAMA_FIELDS, "qk_norm": True}, "gpt2": GPT2_FIELDS}
"""llama.cpp architecture -> the ModelConfig values it requires, as `slmkit.model.arch_match` reads them (qwen3:
LLaMA with RMSNorm on each head's q, k)."""
GGUF_TOKENIZERS = ("bpe", "gpt2", "char")
"""Tokenizer kinds with a GGUF vocabulary (byte-level BPE; char: one byte per character, no merges)."""
Q8_BLOCK = 32

_LAYER = {  # ours (inside blocks.{i}) -> llama.cpp (inside blk.{i})
    "norm1.weight": "attn_norm.weight",
    "attn.q.weight": "attn_q.weight",
    "attn.k.weight": "attn_k.weight",
    "attn.v.weight": "attn_v.weight",
    "attn.o.weight": "attn_output.weight",
    "norm2.weight": "ffn_norm.weight",
    "mlp.gate.weight": "ffn_gate.weight",
    "mlp.up.weight": "ffn_up.weight",
    "mlp.down.weight": "ffn_down.weight",
}


class GGUFExportError(SlmError):
    """A model or tokenizer that GGUF's llama, qwen3 and gpt2 architectures cannot express."""


def gguf_arch(cfg) -> str | None:
    """The llama.cpp architecture that expresses cfg (ModelConfig): llama, qwen3 or gpt2; None when none does."""
    return match(cfg, GGUF_ARCHS)[0]


def _model_miss(cfg) -> str | None:
    exact, nearest, missed = match(cfg, GGUF_ARCHS)
    if exact:
        return None
    return (f"GGUF export supports LLaMA-style (llama, qwen3 with QK-norm) and GPT-2-style (gpt2) blocks; nearest, "
            f"{nearest}: {describe_misses(cfg, GGUF_ARCHS[nearest], missed)}")  # fmt: skip


def _tokenizer_miss(kind: str) -> str | None:
    if kind in GGUF_TOKENIZERS:
        return None
    return (f"a {kind} tokenizer has no GGUF equivalent (llama.cpp tokenizes with byte-level BPE or SentencePiece); "
            "train with tokenizer.kind=bpe:N, gpt2 or char for GGUF")  # fmt: skip


def check_model(cfg) -> None:
    """Refuse, naming each field, a model (ModelConfig) that no GGUF architecture of ours expresses."""
    if miss := _model_miss(cfg):
        raise GGUFExportError(miss)


def check_gguf(model_cfg, tokenizer_kind: str) -> None:
    """Refuse, naming every field at once, a model or tokenizer kind (char, bpe, gpt2) GGUF cannot express. The
    `gguf` entry of slmkit.ship.export.checks.CHECKS."""
    misses = [m for m in (_model_miss(model_cfg), _tokenizer_miss(tokenizer_kind)) if m]
    if misses:
        raise GGUFExportError("; ".join(misses))


# ---------------------------------------------------------------------------------------------------------
# Tensors


def permute_rope(w: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k rows from rotate-half order (HF, ours) to llama.cpp's adjacent-pair order, per head."""
    out_dim, in_dim = w.shape
    return w.reshape(heads, 2, out_dim // heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def unpermute_rope(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of permute_rope."""
    out_dim, in_dim = w.shape
    return w.reshape(heads, out_dim // heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _gpt2_tensors(sd: dict, cfg) -> dict[str, torch.Tensor]:
    """llama.cpp's gpt2 tensors: q/k/v as one `attn_qkv`, a bias beside every weight (zeros where we have none),
    `position_embd`, and always an `output` head."""
    import torch

    V = cfg.vocab_size

    def bias(name: str, rows: int) -> torch.Tensor:
        return sd.get(name, torch.zeros(rows))

    def pair(ours: str, theirs: str) -> dict[str, torch.Tensor]:
        w = sd[f"{ours}.weight"]
        return {f"{theirs}.weight": w, f"{theirs}.bias": bias(f"{ours}.bias", w.shape[0])}

    out = {"token_embd.weight": sd["wte.weight"][:V], "position_embd.weight": sd["wpe.weight"]}
    for i in range(cfg.n_layer):
        b = f"blocks.{i}"
        qkv = [f"{b}.attn.{x}" for x in ("q", "k", "v")]
        out |= pair(f"{b}.norm1", f"blk.{i}.attn_norm")
        out[f"blk.{i}.attn_qkv.weight"] = torch.cat([sd[f"{n}.weight"] for n in qkv])
        out[f"blk.{i}.attn_qkv.bias"] = torch.cat([bias(f"{n}.bias", sd[f"{n}.weight"].shape[0]) for n in qkv])
        out |= pair(f"{b}.attn.o", f"blk.{i}.attn_output")
        out |= pair(f"{b}.norm2", f"blk.{i}.ffn_norm")
        out |= pair(f"{b}.mlp.up", f"blk.{i}.ffn_up")
        out |= pair(f"{b}.mlp.down", f"blk.{i}.ffn_down")
    out |= pair("norm_f", "output_norm")
    out["output.weight"] = sd["lm_head.weight"][:V]
    return out


def gguf_tensors(model, cfg) -> dict[str, torch.Tensor]:
    """llama.cpp name -> fp32 tensor (vocabulary cut; llama: q/k permuted), in llama.cpp's order. llama.cpp's qwen3
    rotates halves as we do (NeoX order), so its q/k stay as they are, followed by their per-head norms."""
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    arch = gguf_arch(cfg)
    if arch == "gpt2":
        return {k: v.contiguous() for k, v in _gpt2_tensors(sd, cfg).items()}
    V, llama = cfg.vocab_size, arch == "llama"
    layer = _LAYER if llama else {**_LAYER, "attn.q_norm.weight": "attn_q_norm.weight",
                                  "attn.k_norm.weight": "attn_k_norm.weight"}  # fmt: skip
    out = {"token_embd.weight": sd["wte.weight"][:V]}
    for i in range(cfg.n_layer):
        for ours, theirs in layer.items():
            w = sd[f"blocks.{i}.{ours}"]
            if llama and ours == "attn.q.weight":
                w = permute_rope(w, cfg.n_head)
            elif llama and ours == "attn.k.weight":
                w = permute_rope(w, cfg.kv_heads)
            out[f"blk.{i}.{theirs}"] = w
    out["output_norm.weight"] = sd["norm_f.weight"]
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["lm_head.weight"][:V]
    return {k: v.contiguous() for k, v in out.items()}


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """Q8_0 bytes of a float matrix (rows, cols), cols % 32 == 0: (rows, cols/32 * 34) uint8, as ggml's reference
    quantize_row_q8_0 (scale d = max|x|/127 stored as f16, values round(x/d) half away from zero)."""
    rows, cols = x.shape
    blocks = x.astype(np.float32).reshape(-1, Q8_BLOCK)  # (n_blocks, 32)
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127  # (n_blocks, 1)
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    scaled = blocks * inv
    q = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int8)
    packed = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)  # (n_blocks, 34)
    return packed.reshape(rows, cols // Q8_BLOCK * (2 + Q8_BLOCK))


def dequantize_q8_0(data: np.ndarray, cols: int) -> np.ndarray:
    """Float32 (rows, cols) from Q8_0 bytes."""
    blocks = data.reshape(-1, 2 + Q8_BLOCK)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (n_blocks, 1)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return (q * d).reshape(-1, cols)


# ---------------------------------------------------------------------------------------------------------
# Tokenizer


def _hf_json(tokenizer: Tokenizer) -> dict:
    if miss := _tokenizer_miss(tokenizer.kind):
        raise GGUFExportError(miss)
    return json.loads(hf_tokenizer_json(tokenizer))  # gpt2: merges rebuilt from tiktoken's ranks


def _char_metadata(tokenizer: Tokenizer) -> dict:
    """A char vocabulary as byte-level BPE with no merge that applies: llama.cpp splits text into bytes and, merging
    none, looks each byte up, which is our char tokenizer exactly when every character is one byte (ASCII)."""
    wide = sorted(c for c in tokenizer.stoi if len(c.encode("utf-8")) != 1 or c in "\x00\x01")
    if wide:
        shown = ", ".join(repr(c) for c in wide[:5]) + (" ..." if len(wide) > 5 else "")
        raise GGUFExportError(f"this char vocabulary has {len(wide)} characters that are not one printable byte "
                              f"({shown}); GGUF's byte-level vocabulary holds a char tokenizer only when every "
                              "character is ASCII: export --format hf, or train with tokenizer.kind=bpe:N")  # fmt: skip
    b2u = byte_to_unicode()
    tokens = {i: b2u[c.encode("utf-8")[0]] for c, i in tokenizer.stoi.items()}
    tokens |= {i: t for t, i in tokenizer.special_tokens.items()}
    specials = set(tokenizer.special_tokens.values())
    n = tokenizer.vocab_size
    types = [3 if i in specials else 1 for i in range(n)]
    # llama.cpp refuses a BPE vocabulary without merges, and gguf writes no empty array: one merge of two control
    # bytes (\x00, \x01), never in a char vocabulary, so never applied to text this tokenizer can encode
    never = "".join(b2u[b] for b in (0, 1))
    return {"tokens": [tokens[i] for i in range(n)], "merges": [f"{never[0]} {never[1]}"], "types": types}


def tokenizer_metadata(tokenizer: Tokenizer) -> dict:
    """tokens (id order), merges ("a b"), token types (1 normal, 3 control) and special ids for GGUF."""
    if tokenizer.kind == "char":
        return _char_metadata(tokenizer)
    spec = _hf_json(tokenizer)
    vocab = dict(spec["model"]["vocab"])
    for t in spec.get("added_tokens", []):
        vocab[t["content"]] = t["id"]
    n = tokenizer.vocab_size
    tokens = [None] * n
    for text, i in vocab.items():
        if i < n:
            tokens[i] = text
    if any(t is None for t in tokens):
        raise GGUFExportError(f"the tokenizer's ids are not contiguous 0..{n - 1}; cannot write a GGUF vocabulary")
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    specials = set(tokenizer.special_tokens.values())
    types = [3 if i in specials else 1 for i in range(n)]
    return {"tokens": tokens, "merges": merges, "types": types}


# ---------------------------------------------------------------------------------------------------------
# Writing


def write_gguf(model, tokenizer: Tokenizer, cfg, path: str | Path, type: str = "f16", name: str = "slmkit") -> Path:
    """Write `model` (ours; cfg is its RunConfig) as a llama, qwen3 or gpt2 GGUF file at `path`."""
    import gguf

    if type not in GGUF_TYPES:
        raise GGUFExportError(f"unknown GGUF type {type!r}; use one of {', '.join(GGUF_TYPES)}")
    m = cfg.model
    check_model(m)
    vocab = tokenizer_metadata(tokenizer)
    path = Path(path)
    arch = gguf_arch(m)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(m.block_size)
    w.add_embedding_length(m.n_embd)
    w.add_block_count(m.n_layer)
    w.add_feed_forward_length(m.hidden_size)
    w.add_head_count(m.n_head)
    if arch == "gpt2":
        w.add_layer_norm_eps(m.norm_eps)
    else:
        w.add_head_count_kv(m.kv_heads)
        w.add_layer_norm_rms_eps(m.norm_eps)
        w.add_rope_freq_base(m.rope_theta)
        w.add_rope_dimension_count(m.head_dim)
    w.add_vocab_size(m.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if type == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    eot = tokenizer.token_id(EOT)
    if eot is not None:
        w.add_bos_token_id(eot)
        w.add_eos_token_id(eot)
    w.add_add_bos_token(False)
    if tokenizer.has_chat_tokens:
        w.add_eot_token_id(tokenizer.token_id(END_OF_TURN))
        w.add_chat_template(CHAT_TEMPLATE)
    for tname, t in gguf_tensors(model, m).items():
        a = t.numpy()
        if a.ndim == 1:
            w.add_tensor(tname, a.astype(np.float32))
        elif type == "q8_0" and a.shape[1] % Q8_BLOCK == 0 and tname != "output.weight":
            w.add_tensor(tname, quantize_q8_0(a), raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # bytes -> shape
        else:
            w.add_tensor(tname, a.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def export_gguf(model, tokenizer: Tokenizer, cfg, out: Path, type: str = "f16") -> None:
    """`slm export --format gguf`: write out/model.gguf (the EXPORTERS entry)."""
    check_gguf(cfg.model, tokenizer.kind)
    write_gguf(model, tokenizer, cfg, Path(out) / GGUF_FILE, type=type, name=cfg.train.name or "slmkit")
