"""`slm export`: write a run's checkpoint in one of the formats, atomically (see `slmkit.ship.export`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from slmkit.base.atomic import atomic_dir, check_out_dir
from slmkit.base.errors import SlmError
from slmkit.runs.checkpoint import load_model
from slmkit.ship.export.checks import check_export
from slmkit.ship.export.gguf import export_gguf
from slmkit.ship.export.hf import export_hf
from slmkit.ship.export.sbert import export_sentence_transformers

EXPORTERS: dict[str, Callable] = {"hf": export_hf, "gguf": export_gguf,
                                  "sentence-transformers": export_sentence_transformers}  # fmt: skip
"""Export formats: name -> fn(model, tokenizer, cfg, out_dir, **options). A new format adds one entry here and one
in checks.CHECKS."""


def export(run_dir: str | Path, out: str | Path, format: str = "hf", checkpoint: str = "best", force: bool = False,
           options: dict | None = None) -> Path:  # fmt: skip
    """`slm export`: write the run's checkpoint in `format` to `out` (atomic); returns out. `options` are the
    format's keyword arguments (gguf: type)."""
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
