"""`slm export`: a run's checkpoint in another tool's format.

- `checks`: what each format can express (torch-free, so `slm config presets` answers at once) and the refusal
  that says what is possible instead;
- `artifact`: `export()`, which resolves the checkpoint, asks the format's check, builds into a temporary sibling
  of --out and renames it into place (a failed export leaves nothing half-written; a non-empty --out is never
  replaced without force);
- `hf` (a `transformers` directory, and `slm import-hf`) and `gguf` (a llama.cpp file): the formats.
"""
