"""Hugging Face checkpoints out (`slm export --format hf`) and in (`slm import-hf`).

Out: config.json + generation_config.json + model.safetensors (GPT2LMHeadModel or LlamaForCausalLM, chosen by
`hf_config.hf_architecture`), a fast tokenizer (tokenizer.json + tokenizer_config.json, see `slmkit.model.hf_tokenizer`)
and README.md, a model card that states the context length. transformers 4.x and 5.x both load the directory
(`hf_config.portable_hf_config`, `hf_tokenizer_config`). The padded head rows are cut: the HF model has the tokenizer's
vocab_size rows, and its logits equal our first vocab_size logit columns.

Chat: when the tokenizer has the chat tokens, tokenizer_config.json carries the `slm` chat template (the same
text the GGUF export stores) and `<|end|>` is an eos id next to end-of-text, so generate() stops at the end of
the assistant's turn. Context: n_positions / max_position_embeddings, the tokenizer's model_max_length and the
generation config's max_length are block_size. A learned-position (GPT-2) model has no positions past it, so
transformers cannot generate beyond block_size tokens (`slm sample` slides its window instead); the model card
says so. In: a local HF directory (`slmkit.model.hf.load_hf_model`) becomes a run dir.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from slmkit.base.atomic import atomic_dir, check_out_dir
from slmkit.base.config import RunConfig, TokenizerConfig
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import END_OF_TURN, EOT, Tokenizer
from slmkit.model.hf import load_hf_model, state_dict_to_hf
from slmkit.model.hf_config import CLASS_NAMES, hf_architecture, hf_config, portable_hf_config
from slmkit.model.hf_tokenizer import save_hf_tokenizer
from slmkit.runs.checkpoint import TOKENIZER_DIR, init_run_dir, save_checkpoint, write_run_info
from slmkit.ship.export.gguf_import import gguf_to_hf_dir

MODEL_CARD = "README.md"


def eos_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids generation stops at: end-of-text, and end-of-turn when the tokenizer has the chat tokens."""
    ids = [tokenizer.token_id(EOT)]
    if tokenizer.has_chat_tokens:
        ids.append(tokenizer.token_id(END_OF_TURN))
    return [i for i in ids if i is not None]


def export_hf(model, tokenizer: Tokenizer, cfg, out: Path) -> None:
    """Write an HF checkpoint of `model` (ours, vocab padded) into the empty directory `out`."""
    import transformers

    m = cfg.model
    hf_architecture(m)  # refuses, naming the fields, a model no HF class represents
    eot, eos = tokenizer.token_id(EOT), eos_ids(tokenizer)
    config = hf_config(m, eot_id=eot, eos_ids=eos)
    arch = hf_architecture(m)
    cls = getattr(transformers, CLASS_NAMES[arch])
    hf_model = cls(config)
    missing, unexpected = hf_model.load_state_dict(state_dict_to_hf(model.state_dict(), m), strict=False)
    if unexpected or [k for k in missing if not k.endswith("attn.bias") and k != "lm_head.weight"]:
        raise SlmError(f"HF mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    hf_model.generation_config = transformers.GenerationConfig(
        bos_token_id=eot, eos_token_id=eos[0] if len(eos) == 1 else eos, pad_token_id=eot, max_length=m.block_size
    )
    hf_model.save_pretrained(out, safe_serialization=True)
    config_path = Path(out) / "config.json"
    config_path.write_text(json.dumps(portable_hf_config(json.loads(config_path.read_text()), m), indent=2) + "\n")
    save_hf_tokenizer(tokenizer, m.block_size, Path(out))
    n_params = sum(p.numel() for p in hf_model.parameters())
    (Path(out) / MODEL_CARD).write_text(model_card(cfg, tokenizer, arch, n_params), encoding="utf-8")


def model_card(cfg, tokenizer: Tokenizer, arch: str, n_params: int) -> str:
    """README.md of an export: what the model is, its context length and what happens past it, chat use."""
    m, name = cfg.model, cfg.train.name or "slmkit model"
    n = m.block_size
    if arch == "gpt2":
        shape = f"GPT2LMHeadModel: learned absolute positions, {m.n_layer} layers, {m.n_embd} wide, {m.n_head} heads"
        context = (
            f"The model has learned position embeddings for {n} positions and nothing past them, so in transformers "
            f"the prompt and the generated tokens together cannot exceed {n} tokens: generate() fails (an index "
            f"error) beyond that. generation_config.json sets max_length = {n}, so generate() without "
            f"max_new_tokens stops there. `slm sample` goes further by sliding a window over the last {n} tokens; "
            f"do the same (keep only the last {n} tokens of the input) to continue past it."
        )
    else:
        shape = (f"{CLASS_NAMES[arch]}: RoPE (theta {m.rope_theta:g}), {m.n_layer} layers, {m.n_embd} wide, "
                 f"{m.n_head} query / {m.kv_heads} key-value heads")  # fmt: skip
        context = (
            f"The model was trained on windows of {n} tokens (max_position_embeddings = {n}, and "
            f"generation_config.json sets max_length = {n}). RoPE has no hard limit, so transformers runs past it, "
            "but the model never saw a longer context and its quality there is untested; `slm sample` slides a "
            f"window over the last {n} tokens instead."
        )
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- slmkit",
        "---",
        "",
        f"# {name}",
        "",
        "A small language model trained with slmkit and exported by `slm export --format hf`.",
        "",
        f"- Architecture: {shape}",
        f"- Parameters: {n_params:,}",
        f"- Tokenizer: {tokenizer.name} ({tokenizer.vocab_size} tokens; `{EOT}` is bos and eos)",
        f"- Context length: {n} tokens",
        "",
        "## Context length",
        "",
        context,
    ]
    if tokenizer.has_chat_tokens:
        lines += [
            "",
            "## Chat",
            "",
            f"tokenizer_config.json holds the `slm` chat template: `{EOT}`, then `<|role|>content{END_OF_TURN}` per "
            "turn (roles system, user, assistant). Use `tokenizer.apply_chat_template(messages, "
            f"add_generation_prompt=True)`; generation stops at `{END_OF_TURN}` (an eos id next to `{EOT}`).",
        ]
    # transformers 5.x loads every qwen2 model's tokenizer as Qwen2Tokenizer, whatever tokenizer_config.json says,
    # and that class splits text its own way: this directory's tokenizer must be loaded by its generic class
    tok_class = "PreTrainedTokenizerFast" if arch == "qwen2" else "AutoTokenizer"
    lines += [
        "",
        "## Use",
        "",
        "```python",
        f"from transformers import AutoModelForCausalLM, {tok_class}",
        "",
        f'tokenizer = {tok_class}.from_pretrained("path/to/this/directory")',
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")',
        "```",
        "",
    ]
    if arch == "qwen2":
        lines += ["`AutoTokenizer` would load transformers' own Qwen2 tokenizer class for this model type, which "
                  "splits text differently from the tokenizer the model was trained with: use "
                  "`PreTrainedTokenizerFast`.", ""]  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Import


def import_hf(src: str | Path, out: str | Path, force: bool = False) -> Path:
    """`slm import-hf`: a local GPT-2, LLaMA, Qwen2, Qwen3 or Phi-3 HF checkpoint, or a GGUF file of one -> a run
    dir (config, tokenizer, one checkpoint) that sample, eval and fine-tuning accept."""
    src, out = Path(src), Path(out)
    check_out_dir(out, force)
    if src.suffix == ".gguf":  # a llama.cpp file: dequantized into an HF directory first (gguf_import.py)
        with tempfile.TemporaryDirectory(prefix="slm-gguf-") as hf_dir:
            gguf_to_hf_dir(src, Path(hf_dir))
            model, tokenizer, arch = load_hf_model(hf_dir)
    else:
        model, tokenizer, arch = load_hf_model(src)
    with atomic_dir(out) as tmp:
        kind = "gpt2" if tokenizer.kind == "gpt2" else str(out.resolve() / TOKENIZER_DIR)
        cfg = RunConfig(
            model=model.config, tokenizer=TokenizerConfig(kind=kind), description=f"imported from {src}"
        ).replace(**{"train.name": out.name})
        init_run_dir(tmp, cfg, tokenizer, parent=str(src.resolve()), imported_from=str(src.resolve()), dataset=None)
        save_checkpoint(tmp, 0, model, None, {"tokens_seen": 0, "imported_from": str(src)}, cfg, tokenizer)
        write_run_info(tmp, name=out.name, status="finished", step=0, num_params=model.num_params(), architecture=arch)
    return out
