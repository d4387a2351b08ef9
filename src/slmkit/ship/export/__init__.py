"""`slm export`: a run's checkpoint in another tool's format.

Formats are entries of `EXPORTERS` (name -> function writing into a fresh directory): `hf` (a `transformers`
directory, `slmkit.ship.export.hf`) and `gguf` (a llama.cpp file, `slmkit.ship.export.gguf`). `export()` resolves
the checkpoint, builds into a temporary sibling of --out and renames it into place, so a failed export leaves
nothing half-written, and it never replaces a non-empty --out without force.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from slmkit.base.atomic import atomic_dir, check_out_dir
from slmkit.base.errors import SlmError
from slmkit.model.hf import hf_architecture
from slmkit.runs.checkpoint import load_model
from slmkit.ship.export.gguf import export_gguf
from slmkit.ship.export.hf import export_hf

EXPORTERS: dict[str, Callable] = {"hf": export_hf, "gguf": export_gguf}
"""Export formats: name -> fn(model, tokenizer, cfg, out_dir, **options). A new format adds one entry."""


def export(run_dir: str | Path, out: str | Path, format: str = "hf", checkpoint: str = "best", force: bool = False,
           options: dict | None = None) -> Path:  # fmt: skip
    """`slm export`: write the run's checkpoint in `format` to `out` (atomic); returns out. `options` are the
    format's keyword arguments (gguf: type)."""
    if format not in EXPORTERS:
        raise SlmError(f"unknown export format {format!r}; available: {', '.join(EXPORTERS)}")
    out = Path(out)
    check_out_dir(out, force)
    model, tokenizer, cfg, ckpt = load_model(run_dir, checkpoint)
    if format == "hf":
        hf_architecture(cfg.model)  # refuse before building anything
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
