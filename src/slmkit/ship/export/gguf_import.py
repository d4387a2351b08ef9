"""`slm import-hf FILE.gguf`: a llama.cpp GGUF file becomes a Hugging Face directory, then a run (`hf.import_hf`).

transformers' GGUF loader does the reading: the `gguf` package dequantizes every tensor (F32, F16, BF16, Q8_0,
Q4_0, Q4_1, the K-quants, ...) to fp32 and the tokenizer is rebuilt from the file's metadata (BPE vocabulary and
merges, special tokens, chat template). Its model cannot be saved by `save_pretrained` (transformers marks it as
quantized), so the fp32 weights, the config and the tokenizer are written here, into a directory `import_hf` reads
like any other. The architectures are transformers' GGUF ones that `import_hf` maps (llama, qwen2, qwen3, phi3);
others are refused naming the architecture.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from slmkit.base.errors import SlmError


class GGUFImportError(SlmError):
    """A GGUF file that cannot be read or converted."""


def gguf_to_hf_dir(path: Path, out: Path) -> None:
    """Dequantize the GGUF file `path` and write config.json, model.safetensors and the tokenizer files into `out`."""
    import transformers  # optional and slow to import: only for a GGUF import

    if not path.is_file():
        raise GGUFImportError(f"{path} is not a file; pass a .gguf file or a Hugging Face model directory")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                  dtype=torch.float32)  # fmt: skip
        tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as e:  # unsupported architecture or tensor type, damage
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise GGUFImportError(f"{path}: transformers' GGUF reader refused it: {why}") from None
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)  # the same tensor as the embedding: safetensors stores it once
    save_file(weights, str(out / "model.safetensors"))
    config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    (out / "config.json").write_text(json.dumps(config, indent=1, default=str) + "\n")
    tokenizer.save_pretrained(out)
