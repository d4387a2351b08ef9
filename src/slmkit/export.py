"""Moving models out of slmkit (`slm export`) and Hugging Face checkpoints in (`slm import-hf`).

Formats are entries of `EXPORTERS` (name -> function writing into a fresh directory); `export()` resolves the
checkpoint, builds into a temporary sibling of --out and renames it into place, so a failed export leaves nothing
half-written, and it never replaces a non-empty --out without force.

`hf`: config.json + model.safetensors (GPT2LMHeadModel or LlamaForCausalLM, chosen by `hf.hf_architecture`) and
a fast tokenizer (tokenizer.json + tokenizer_config.json) that AutoTokenizer loads:
  - bpe: the tokenizer.json it was trained as;
  - gpt2: rebuilt from tiktoken's ranks (each merge recovered by running BPE on the token below its own rank);
  - char: a WordLevel model over single characters (a Split pre-tokenizer isolating every character, a Fuse
    decoder); characters outside the vocabulary become end-of-text, where our char tokenizer raises instead.
The padded head rows are cut: the HF model has the tokenizer's vocab_size rows, and its logits equal our first
vocab_size logit columns.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from slmkit import hf
from slmkit.atomic import atomic_dir
from slmkit.errors import SlmError
from slmkit.tokenizer import EOT, Tokenizer

# ---------------------------------------------------------------------------------------------------------
# Tokenizers as Hugging Face fast tokenizers


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The ordered merge list that tiktoken's ranks encode: each multi-byte token is the merge of the two parts
    BPE reaches when only merges ranked below the token are allowed."""
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 62))
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def _tiktoken_to_hf(tokenizer) -> str:
    """tokenizer.json text of a byte-level BPE equivalent to a tiktoken encoding (GPT-2's pattern)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    from slmkit.tokenizer import _bytes_to_unicode

    b2u = _bytes_to_unicode()

    def s(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    ranks = tokenizer.enc._mergeable_ranks
    vocab = {s(tok): rank for tok, rank in ranks.items()}
    merges = [(s(a), s(b)) for a, b in _merges_from_ranks(ranks)]
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    _add_specials(tk, tokenizer.special_tokens)
    return tk.to_str()


def _char_to_hf(tokenizer) -> str:
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab = dict(tokenizer.stoi)
    tk = HFTokenizer(models.WordLevel(vocab={**vocab, EOT: tokenizer.special_tokens[EOT]}, unk_token=EOT))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    _add_specials(tk, tokenizer.special_tokens)
    return tk.to_str()


def _add_specials(tk, specials: dict[str, int]) -> None:
    from tokenizers import AddedToken

    for text, i in sorted(specials.items(), key=lambda kv: kv[1]):
        tk.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        if tk.token_to_id(text) != i:
            raise SlmError(f"special token {text!r} would get id {tk.token_to_id(text)} in the HF tokenizer, not {i}")


def hf_tokenizer(tokenizer: Tokenizer, model_max_length: int):
    """A transformers PreTrainedTokenizerFast that encodes text as `tokenizer` does (end-of-text as eos and bos)."""
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast

    if tokenizer.kind == "bpe":
        text = tokenizer.hf_json
    elif tokenizer.kind == "gpt2":
        text = _tiktoken_to_hf(tokenizer)
    else:
        text = _char_to_hf(tokenizer)
    return PreTrainedTokenizerFast(
        tokenizer_object=HFTokenizer.from_str(text),
        eos_token=EOT,
        bos_token=EOT,
        unk_token=EOT if tokenizer.kind == "char" else None,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


# ---------------------------------------------------------------------------------------------------------
# Export


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


def export_gguf(model, tokenizer: Tokenizer, cfg, out: Path, type: str = "f16") -> None:
    """out/model.gguf for llama.cpp (LLaMA-style models; `type` f16 or q8_0); see slmkit.gguf_export."""
    from slmkit.gguf_export import export_gguf as write

    write(model, tokenizer, cfg, out, type=type)


EXPORTERS: dict[str, Callable] = {"hf": export_hf, "gguf": export_gguf}
"""Export formats: name -> fn(model, tokenizer, cfg, out_dir, **options). A new format adds one entry."""


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise SlmError(f"{out} exists and is not empty; pick another --out or pass --force to replace it")


def export(run_dir: str | Path, out: str | Path, format: str = "hf", checkpoint: str = "best", force: bool = False,
           options: dict | None = None) -> Path:  # fmt: skip
    """`slm export`: write the run's checkpoint in `format` to `out` (atomic); returns out. `options` are the
    format's keyword arguments (gguf: type)."""
    from slmkit.checkpoint import load_model

    if format not in EXPORTERS:
        raise SlmError(f"unknown export format {format!r}; available: {', '.join(EXPORTERS)}")
    out = Path(out)
    _check_out(out, force)
    model, tokenizer, cfg, ckpt = load_model(run_dir, checkpoint)
    if format == "hf":
        hf.hf_architecture(cfg.model)  # refuse before building anything
    if options and format != "gguf":
        raise SlmError(f"{', '.join('--' + k for k in options)} applies to --format gguf only")
    with atomic_dir(out) as tmp:
        EXPORTERS[format](model, tokenizer, cfg, tmp, **(options or {}))
        (tmp / "slmkit.json").write_text(
            json.dumps(
                {"run": str(run_dir), "checkpoint": str(ckpt), "format": format, "tokenizer": tokenizer.name}, indent=2
            )
            + "\n"
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# Import


def _read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
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


def _import_tokenizer(src: Path) -> Tokenizer:
    """Our tokenizer for an HF tokenizer.json (byte-level BPE with GPT-2's pre-tokenizer); gpt2 itself if it is."""
    from slmkit.tokenizer import bpe_from_hf_json, build_tokenizer

    path = src / "tokenizer.json"
    if not path.is_file():
        raise SlmError(f"{src} has no tokenizer.json; save the model's fast tokenizer there (save_pretrained)")
    text = path.read_text(encoding="utf-8")
    spec = json.loads(text)
    pre = spec.get("pre_tokenizer") or {}
    if spec.get("model", {}).get("type") != "BPE" or pre.get("type") != "ByteLevel":
        raise SlmError(
            f"{path}: only byte-level BPE tokenizers with GPT-2's pre-tokenizer can be imported "
            f"(found model {spec.get('model', {}).get('type')}, pre-tokenizer {pre.get('type')})"
        )
    if not any(t["content"] == EOT for t in spec.get("added_tokens", [])):
        raise SlmError(f"{path} has no {EOT} special token; slmkit needs it as end-of-text")
    tok = bpe_from_hf_json(text)
    try:
        gpt2 = build_tokenizer("gpt2")
        if gpt2.enc._mergeable_ranks == tok.enc._mergeable_ranks and gpt2.special_tokens == tok.special_tokens:
            return gpt2
    except SlmError:
        pass
    return tok


def load_hf_model(src: str | Path):
    """(our GPT in eval mode, our tokenizer, architecture) from a local GPT-2 or LLaMA HF checkpoint directory."""
    from slmkit.model import GPT

    src = Path(src)
    if not (src / "config.json").is_file():
        raise SlmError(f"{src} has no config.json; pass a Hugging Face model directory (save_pretrained output)")
    arch, mcfg = hf.model_config_from_hf(json.loads((src / "config.json").read_text()))
    tokenizer = _import_tokenizer(src)
    if mcfg.vocab_size < tokenizer.vocab_size:
        raise SlmError(f"{src}: model vocab_size {mcfg.vocab_size} < tokenizer's {tokenizer.vocab_size}")
    model = GPT(mcfg)
    model.load_state_dict(hf.state_dict_from_hf(_read_hf_weights(src), arch, mcfg), strict=True)
    return model.eval(), tokenizer, arch


def import_hf(src: str | Path, out: str | Path, force: bool = False) -> Path:
    """`slm import-hf`: a local GPT-2 or LLaMA HF checkpoint -> a run dir (config, tokenizer, one checkpoint) that
    sample, eval and fine-tuning accept."""
    from slmkit.checkpoint import TOKENIZER_DIR, init_run_dir, save_checkpoint, write_run_info
    from slmkit.config import RunConfig, TokenizerConfig

    src, out = Path(src), Path(out)
    _check_out(out, force)
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
