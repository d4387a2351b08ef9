"""`slm export`: a run's checkpoint in another tool's format.

Formats are entries of `EXPORTERS` (name -> function writing into a fresh directory) and `CHECKS` (name -> function
that raises, naming the fields, for a model or tokenizer kind the format cannot express): `hf` (a `transformers`
directory, `slmkit.ship.export.hf`) and `gguf` (a llama.cpp file, `slmkit.ship.export.gguf`). `export()` resolves
the checkpoint, asks the format's check, builds into a temporary sibling of --out and renames it into place, so a
failed export leaves nothing half-written, and it never replaces a non-empty --out without force.

A refusal says what is possible instead, from the same checks: the other formats that accept the run, or that none
does, and which presets train models that the asked format accepts. `export_formats` (for `slm config presets`)
asks the checks too. Importing this package loads no torch: the checks answer at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from slmkit.base.atomic import atomic_dir, check_out_dir
from slmkit.base.config import ModelConfig
from slmkit.base.config_files import load_config, preset_names
from slmkit.base.errors import SlmError
from slmkit.ship.export.gguf import check_gguf, export_gguf
from slmkit.ship.export.hf import check_hf, export_hf

EXPORTERS: dict[str, Callable] = {"hf": export_hf, "gguf": export_gguf}
"""Export formats: name -> fn(model, tokenizer, cfg, out_dir, **options). A new format adds one entry here and one
in CHECKS."""
CHECKS: dict[str, Callable[[ModelConfig, str], None]] = {"hf": check_hf, "gguf": check_gguf}
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


def export(run_dir: str | Path, out: str | Path, format: str = "hf", checkpoint: str = "best", force: bool = False,
           options: dict | None = None) -> Path:  # fmt: skip
    """`slm export`: write the run's checkpoint in `format` to `out` (atomic); returns out. `options` are the
    format's keyword arguments (gguf: type)."""
    from slmkit.runs.checkpoint import load_model  # torch: only when a run is really exported

    if format not in EXPORTERS:
        raise SlmError(f"unknown export format {format!r}; available: {', '.join(EXPORTERS)}")
    out = Path(out)
    check_out_dir(out, force)
    model, tokenizer, cfg, ckpt = load_model(run_dir, checkpoint)
    check_export(format, cfg.model, tokenizer.kind)  # refuse before building anything
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
