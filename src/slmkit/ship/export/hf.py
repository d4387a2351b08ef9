"""Hugging Face checkpoints out (`slm export --format hf`) and in (`slm import-hf`).

Out: config.json + model.safetensors (GPT2LMHeadModel or LlamaForCausalLM, chosen by `hf.hf_architecture`) and a
fast tokenizer (tokenizer.json + tokenizer_config.json, see `slmkit.model.hf_tokenizer`) that AutoTokenizer loads.
The padded head rows are cut: the HF model has the tokenizer's vocab_size rows, and its logits equal our first
vocab_size logit columns. In: a local HF directory (`slmkit.model.hf.load_hf_model`) becomes a run dir.
"""

from __future__ import annotations

from pathlib import Path

from slmkit.base.atomic import atomic_dir, check_out_dir
from slmkit.base.config import RunConfig, TokenizerConfig
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import EOT, Tokenizer
from slmkit.model import hf
from slmkit.model.hf import load_hf_model
from slmkit.model.hf_tokenizer import hf_tokenizer
from slmkit.runs.checkpoint import TOKENIZER_DIR, init_run_dir, save_checkpoint, write_run_info


def export_hf(model, tokenizer: Tokenizer, cfg, out: Path) -> None:
    """Write an HF checkpoint of `model` (ours, vocab padded) into the empty directory `out`."""
    import transformers

    config = hf.hf_config(cfg.model, eot_id=tokenizer.special_tokens.get(EOT))
    arch = hf.hf_architecture(cfg.model)
    cls = transformers.GPT2LMHeadModel if arch == "gpt2" else transformers.LlamaForCausalLM
    hf_model = cls(config)
    missing, unexpected = hf_model.load_state_dict(hf.state_dict_to_hf(model.state_dict(), cfg.model), strict=False)
    if unexpected or [k for k in missing if not k.endswith("attn.bias") and k != "lm_head.weight"]:
        raise SlmError(f"HF mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    hf_model.save_pretrained(out, safe_serialization=True)
    hf_tokenizer(tokenizer, cfg.model.block_size).save_pretrained(out)


# ---------------------------------------------------------------------------------------------------------
# Import


def import_hf(src: str | Path, out: str | Path, force: bool = False) -> Path:
    """`slm import-hf`: a local GPT-2 or LLaMA HF checkpoint -> a run dir (config, tokenizer, one checkpoint) that
    sample, eval and fine-tuning accept."""

    src, out = Path(src), Path(out)
    check_out_dir(out, force)
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
