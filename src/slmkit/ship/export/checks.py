"""What each export format can express, asked before anything is built: `CHECKS` (name -> function that raises,
naming the fields, for a model or tokenizer kind the format cannot express).

A refusal says what is possible instead, from the same checks: the other formats that accept the run, or that none
does, and which presets train models that the asked format accepts. `export_formats` (for `slm config presets`)
asks the checks too. This module imports no torch: the checks read config fields only.
"""

from __future__ import annotations

from collections.abc import Callable

from slmkit.base.config import ModelConfig
from slmkit.base.config_files import load_config, preset_names
from slmkit.base.errors import SlmError
from slmkit.model.hf_config import hf_architecture
from slmkit.ship.export.gguf import check_gguf


def check_hf(model_cfg: ModelConfig, tokenizer_kind: str) -> None:
    """Refuse (HFConversionError naming the fields) a model no HF class represents; every tokenizer kind has an HF
    equivalent. The `hf` entry of CHECKS."""
    hf_architecture(model_cfg)


CHECKS: dict[str, Callable[[ModelConfig, str], None]] = {"hf": check_hf, "gguf": check_gguf,
                                                         "sentence-transformers": check_hf}  # fmt: skip
"""name -> fn(model config, tokenizer kind: char | bpe | gpt2) raising SlmError when the format cannot express them."""


def refusal(format: str, model_cfg: ModelConfig, tokenizer_kind: str) -> SlmError | None:
    """The error `format`'s check raises for this model and tokenizer kind (char, bpe, gpt2), or None."""
    try:
        CHECKS[format](model_cfg, tokenizer_kind)
    except SlmError as e:
        return e
    return None


def export_formats(model_cfg: ModelConfig, tokenizer_kind: str) -> list[str]:
    """The formats that export this model and tokenizer kind (char, bpe, gpt2), by the exporters' own checks."""
    return [f for f in CHECKS if refusal(f, model_cfg, tokenizer_kind) is None]


def preset_export_formats(name: str) -> list[str]:
    """The formats that export runs of the built-in preset `name` (`slm config presets`)."""
    cfg = load_config(name)
    kind = cfg.tokenizer.kind  # a preset names char, gpt2 or bpe:<vocab size>, never a saved directory
    return export_formats(cfg.model, "bpe" if kind.startswith("bpe:") else kind)


def presets_exporting(format: str) -> list[str]:
    """The built-in presets whose runs `format` exports."""
    return [name for name in preset_names() if format in preset_export_formats(name)]


def check_export(format: str, model_cfg: ModelConfig, tokenizer_kind: str) -> None:
    """Raise `format`'s refusal of this run, followed by what is possible instead: the formats that accept it, or
    that none does yet (with their reasons) and the presets whose runs `format` accepts."""
    err = refusal(format, model_cfg, tokenizer_kind)
    if err is None:
        return
    others = {f: refusal(f, model_cfg, tokenizer_kind) for f in CHECKS if f != format}
    accepted = [f for f, e in others.items() if e is None]
    if accepted:
        advice = f"This run exports with {' or '.join('--format ' + f for f in accepted)}."
    else:
        reasons = "; ".join(f"--format {f}: {e}" for f, e in others.items())
        advice = f"No export format supports this model yet ({reasons})."
    presets = presets_exporting(format)
    if presets:
        advice += f" To export to {format}, train with the model fields of one of the presets {', '.join(presets)}."
    raise type(err)(f"{err}. {advice}") from None
