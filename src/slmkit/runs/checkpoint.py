"""Run directories and checkpoints.

A run dir is self-contained (DESIGN invariant 2):

    runs/<name>/
      run.json             name, status (running|finished|crashed|interrupted), parent, preset, times, versions
      config.toml          the resolved config
      tokenizer/           copy of the tokenizer (its fingerprint is checked against every dataset)
      metrics.jsonl        one JSON event per line
      checkpoints/
        index.json         latest and best step, best val loss
        step-000500/       model.safetensors, optimizer.pt, state.json, config.toml, tokenizer/

Every write is atomic; checkpoint retention keeps the last `keep_last` plus the best by val loss.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from slmkit import __version__
from slmkit.base.atomic import atomic_dir, atomic_write_json
from slmkit.base.config import ConfigError, RunConfig, from_dict
from slmkit.base.config_files import read_toml, save_config
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer, load_tokenizer
from slmkit.model.gpt import GPT
from slmkit.model.lora import apply_lora
from slmkit.model.qweights import is_quantized_dir, load_quantized

FORMAT_VERSION = 1
RUN_FILE, CONFIG_FILE, TOKENIZER_DIR, CKPT_DIR = "run.json", "config.toml", "tokenizer", "checkpoints"
INDEX_FILE, STATE_FILE, WEIGHTS_FILE, OPTIM_FILE = "index.json", "state.json", "model.safetensors", "optimizer.pt"
_STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(SlmError):
    """A run dir or checkpoint is missing, damaged or incompatible."""


# ---------------------------------------------------------------------------------------------------------
# Run directories


def new_run_dir(out_dir: str | Path, name: str, explicit: bool) -> Path:
    """Create runs/<name>; an explicit name that exists is an error, a derived one gets a -2, -3 ... suffix."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    if path.exists() and explicit:
        raise SlmError(f"run {path} already exists; pick another train.name or continue it with --resume {path}")
    path = out_dir / free_name(out_dir, name)
    path.mkdir(parents=True)
    return path


def free_name(out_dir: str | Path, base: str) -> str:
    """`base`, or the first of base-2, base-3 ... that names nothing in out_dir (the one run-name allocator)."""
    name, i = base, 2
    while (Path(out_dir) / name).exists():
        name, i = f"{base}-{i}", i + 1
    return name


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / RUN_FILE).is_file()


def check_run_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"run directory {path} does not exist; `slm runs` lists the runs")
    if not is_run_dir(path):
        raise CheckpointError(f"{path} is not a run directory ({RUN_FILE} missing); pass runs/<name>")
    return path


def read_run_info(run_dir: str | Path) -> dict:
    try:
        return json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {Path(run_dir) / RUN_FILE}: {e}") from None


def write_run_info(run_dir: str | Path, **fields: Any) -> dict:
    """Merge fields into run.json (atomic)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir) if is_run_dir(run_dir) else {"name": run_dir.name, "created": time.time(),
                                                                 "slmkit": __version__}  # fmt: skip
    info.update(fields, updated=time.time())
    atomic_write_json(run_dir / RUN_FILE, info)
    return info


def read_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the run dir is incomplete")
    try:
        return from_dict(read_toml(path))
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def run_tokenizer(run_dir: str | Path) -> Tokenizer:
    return load_tokenizer(Path(run_dir) / TOKENIZER_DIR)


def init_run_dir(run_dir: Path, cfg: RunConfig, tokenizer: Tokenizer, **info: Any) -> None:
    save_config(cfg, run_dir / CONFIG_FILE)
    tokenizer.save(run_dir / TOKENIZER_DIR)
    write_run_info(run_dir, status="running", preset=cfg.preset, tokenizer_fingerprint=tokenizer.fingerprint, **info)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile / DDP wrappers, so no `_orig_mod.` or `module.` prefix is saved."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


def rng_state() -> dict:
    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    def decode(s):
        return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())

    torch.set_rng_state(decode(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([decode(s) for s in state["cuda"]])


def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CKPT_DIR
    out = []
    for p in root.glob("step-*") if root.is_dir() else []:
        m = _STEP_RE.match(p.name)
        if m and (p / STATE_FILE).is_file() and (p / WEIGHTS_FILE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def read_index(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CKPT_DIR / INDEX_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def shared_names(model: torch.nn.Module) -> list[list[str]]:
    """Names of parameters that are one tensor (a tied head), each group sorted: the first is the name saved, as
    safetensors' save_model keeps it."""
    groups: dict[int, list[str]] = {}
    for name, p in _unwrap(model).named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [sorted(names) for names in groups.values() if len(names) > 1]


def save_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict, cfg: RunConfig, tokenizer: Tokenizer,
                    val_loss: float | None = None, keep_last: int = 2, model_state: dict | None = None,
                    optim_state: dict | None = None) -> Path:  # fmt: skip
    """Write checkpoints/step-NNNNNN atomically, update index.json, then apply the retention policy.

    `model_state` / `optim_state`: full state dicts gathered from a sharded (FSDP) model, written in place of
    `model`'s and `optimizer`'s own, in the same format, so the folder is the same whatever wrote it."""
    from safetensors.torch import save_file, save_model

    path = Path(run_dir) / CKPT_DIR / f"step-{step:06d}"
    meta = {"format": "pt", "step": str(step)}
    with atomic_dir(path) as tmp:
        if model_state is not None:
            dropped = {name for _, *others in shared_names(model) for name in others}
            weights = {k: v.contiguous() for k, v in model_state.items() if k not in dropped}
            save_file(weights, str(tmp / WEIGHTS_FILE), metadata=meta)
        else:
            save_model(_unwrap(model), str(tmp / WEIGHTS_FILE), metadata=meta)
        if optim_state is not None or optimizer is not None:
            torch.save(optim_state if optim_state is not None else optimizer.state_dict(), tmp / OPTIM_FILE)
        full_state = {"format_version": FORMAT_VERSION, "step": step, "val_loss": val_loss,
                      "tokenizer_fingerprint": tokenizer.fingerprint, "slmkit": __version__, "saved": time.time(),
                      **state}  # fmt: skip
        atomic_write_json(tmp / STATE_FILE, full_state)
        save_config(cfg, tmp / CONFIG_FILE)
        tokenizer.save(tmp / TOKENIZER_DIR)
    index = read_index(run_dir)
    index["latest"] = step
    if val_loss is not None and (index.get("best_val_loss") is None or val_loss < index["best_val_loss"]):
        index.update(best=step, best_val_loss=val_loss)
    atomic_write_json(Path(run_dir) / CKPT_DIR / INDEX_FILE, index)
    _apply_retention(run_dir, keep_last, index)
    return path


def _apply_retention(run_dir: Path, keep_last: int, index: dict) -> None:
    ckpts = checkpoints(run_dir)
    keep = {s for s, _ in ckpts[-keep_last:]} | {index.get("best")}
    for step, path in ckpts:
        if step not in keep:
            shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(run_dir: str | Path, which: str | int = "latest") -> Path:
    """`latest`, `best` (falls back to latest when no val loss was recorded) or a step number."""
    run_dir = check_run_dir(run_dir)
    ckpts = dict(checkpoints(run_dir))
    if not ckpts:
        raise CheckpointError(f"{run_dir} has no checkpoint yet; train it first (or wait for the first eval)")
    which = str(which)
    index = read_index(run_dir)
    if which == "latest":
        return ckpts[max(ckpts)]
    if which == "best":
        best = index.get("best")
        return ckpts.get(best, ckpts[max(ckpts)])
    if which.isdigit() and int(which) in ckpts:
        return ckpts[int(which)]
    raise CheckpointError(f"no checkpoint {which!r} in {run_dir}; have best, latest, steps {sorted(ckpts)}")


def read_state(ckpt: Path) -> dict:
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {ckpt} is damaged ({STATE_FILE}: {e}); use another --checkpoint") from None
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{ckpt} was written by a newer slmkit (format {state['format_version']}); upgrade")
    return state


def load_weights(model: torch.nn.Module, ckpt: Path, strict: bool = True) -> None:
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(_unwrap(model), str(ckpt / WEIGHTS_FILE), strict=False)
    except Exception as e:  # safetensors raises several types on damaged files or shape mismatches
        if "size mismatch" in str(e):
            raise CheckpointError(f"{ckpt} does not fit this model ({load_error_reason(e)}); is it a checkpoint of a "
                                  "run with the same model config?") from None  # fmt: skip
        raise CheckpointError(f"cannot load weights from {ckpt / WEIGHTS_FILE}: {load_error_reason(e)}") from None
    if strict and (missing or unexpected):
        raise CheckpointError(f"{ckpt} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_error_reason(e: Exception) -> str:
    """The informative line of a load error (torch puts "size mismatch for NAME: ..." under a generic header)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
    return next((ln for ln in lines if "size mismatch" in ln or "Missing key" in ln), lines[0])[:300]


def load_optimizer(optimizer, ckpt: Path) -> None:
    path = ckpt / OPTIM_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt} has no optimizer state; resume needs a full checkpoint")
    optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def load_model(run_dir: str | Path, which: str | int = "best", device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, config, checkpoint path) from a run dir: all that sampling or eval needs.
    A `slm quantize` output directory loads too (its one snapshot; `which` is ignored)."""

    if is_quantized_dir(run_dir):
        return load_quantized(run_dir, device)
    ckpt = resolve_checkpoint(run_dir, which)
    cfg = read_run_config(ckpt) if (ckpt / CONFIG_FILE).is_file() else read_run_config(run_dir)
    tokenizer = load_tokenizer(ckpt / TOKENIZER_DIR) if (ckpt / TOKENIZER_DIR).is_dir() else run_tokenizer(run_dir)
    state = read_state(ckpt)
    if state.get("tokenizer_fingerprint") not in (None, tokenizer.fingerprint):
        raise CheckpointError(f"{ckpt}: tokenizer fingerprint {tokenizer.fingerprint} differs from the one it was "
                              f"trained with ({state['tokenizer_fingerprint']}); the run dir was changed")  # fmt: skip
    model = GPT(cfg.model)
    if cfg.lora.rank:  # a LoRA run's checkpoints hold base weights and adapters (unmerged)
        apply_lora(model, cfg.lora)
    load_weights(model, ckpt)
    return model.to(device).eval(), tokenizer, cfg, ckpt
