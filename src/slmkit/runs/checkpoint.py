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

Integrity: state.json records the size and CRC-32 of every weight and optimizer file of its checkpoint (`files`),
computed from the bytes as they are written; loading checks them first, so a damaged file is reported by name
instead of being sampled, served or trained on. Checkpoints saved before this (no `files`) load unverified, with a
note. A checkpoint folder is fsynced (files, then folder) before it is renamed into place.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import shutil
import socket
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slmkit import __version__
from slmkit.base.atomic import atomic_dir, atomic_write_json, clean_stale
from slmkit.base.config import ConfigError, RunConfig, from_dict
from slmkit.base.config_files import read_toml, save_config
from slmkit.base.console import say
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer, load_tokenizer
from slmkit.model.gpt import GPT
from slmkit.model.lora import apply_lora
from slmkit.model.qweights import is_quantized_dir, load_quantized

FORMAT_VERSION = 1
RUN_FILE, CONFIG_FILE, TOKENIZER_DIR, CKPT_DIR = "run.json", "config.toml", "tokenizer", "checkpoints"
INDEX_FILE, STATE_FILE, WEIGHTS_FILE, OPTIM_FILE = "index.json", "state.json", "model.safetensors", "optimizer.pt"
_STEP_RE = re.compile(r"^step-(\d+)$")
STARTING_FILE = ".starting"  # pid and host of the process creating a run dir, until its run.json exists
CHECKED_SUFFIXES = (".safetensors", ".pt")  # the files of a checkpoint whose size and CRC-32 state.json records
_CHUNK = 8 << 20


class CheckpointError(SlmError):
    """A run dir or checkpoint is missing, damaged or incompatible."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file is unreadable or fails its checksum (`resume` falls back to an older checkpoint)."""


def _json_object(path: Path) -> tuple[dict | None, str]:
    """(the JSON object in `path`, "") or (None, what is wrong with the file, in a few words)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start}"
    except json.JSONDecodeError as e:
        return None, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
    except OSError as e:
        return None, e.strerror or str(e)
    if not isinstance(data, dict):
        return None, f"a JSON {type(data).__name__}, not an object"
    return data, ""


def _read_json(path: Path, fix: str) -> dict:
    """The JSON object in `path`; CheckpointError naming the file, what is wrong with it and `fix` otherwise."""
    data, reason = _json_object(path)
    if data is None:
        raise CheckpointError(f"cannot read {path} ({reason}); {fix}")
    return data


# ---------------------------------------------------------------------------------------------------------
# Run directories


def new_run_dir(out_dir: str | Path, name: str, explicit: bool) -> Path:
    """Create runs/<name>; an explicit name that exists is an error, a derived one gets a -2, -3 ... suffix.

    A folder left by a run stopped before it started (no run.json; only what a start writes: `unstarted`) does not
    block its name: it is reused, with a line saying so. The new folder holds STARTING_FILE (this process) until
    `init_run_dir` writes run.json, so a start still in progress is never taken for an abandoned one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    if unstarted(path):
        say(f"reusing {path}: a run stopped before it started left it (no run.json, no checkpoint)")
        _mark_starting(path)
        return path
    if path.exists() and explicit:
        raise SlmError(f"run {path} already exists; pick another train.name or continue it with --resume {path}")
    path = out_dir / free_name(out_dir, name)
    path.mkdir(parents=True)
    _mark_starting(path)
    return path


_START_LEFTOVERS = {STARTING_FILE, CONFIG_FILE, TOKENIZER_DIR, CKPT_DIR, "metrics.jsonl", "tensorboard"}


def _mark_starting(path: Path) -> None:
    atomic_write_json(path / STARTING_FILE, {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})


def _starting_pid(path: Path) -> int | None:
    """The pid in STARTING_FILE when that process is alive on this machine (a start in progress), else None."""
    import psutil

    try:
        info = json.loads((path / STARTING_FILE).read_text(encoding="utf-8"))
        pid = int(info["pid"])
        if info.get("host") != socket.gethostname():
            return pid  # another machine's start: it cannot be checked, so it is not taken
        alive = psutil.Process(pid).create_time() <= float(info["time"]) + 1.0
        return pid if alive else None
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None


def unstarted(path: str | Path) -> bool:
    """True for a folder that a run killed before its run.json was written left behind: no run.json, nothing but
    what a start writes (config, tokenizer, an empty metrics file, no checkpoint), and no live process starting it."""
    path = Path(path)
    if not path.is_dir() or (path / RUN_FILE).exists():
        return False
    for p in path.iterdir():
        if p.name.startswith(".") and p.name != STARTING_FILE:
            continue  # temporaries of an interrupted atomic write
        if p.name not in _START_LEFTOVERS:
            return False
        if p.name == "metrics.jsonl" and p.stat().st_size > 0:
            return False
        if p.name == CKPT_DIR and any(not c.name.startswith(".") for c in p.iterdir()):
            return False
    return _starting_pid(path) is None


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
    if not is_run_dir(path) and any(path.iterdir()) and unstarted(path):
        raise CheckpointError(f"{path} was left by a run stopped before it started (no run.json, no checkpoint): "
                              f"nothing to load or resume; start it again with train.name={path.name} (the folder is "
                              "reused)")  # fmt: skip
    if not is_run_dir(path):
        raise CheckpointError(f"{path} is not a run directory ({RUN_FILE} missing); pass runs/<name>")
    return path


def read_run_info(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    return _read_json(path, "the file is damaged; restore it from a backup")


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
        raise CheckpointError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def run_tokenizer(run_dir: str | Path) -> Tokenizer:
    return load_tokenizer(Path(run_dir) / TOKENIZER_DIR)


def init_run_dir(run_dir: Path, cfg: RunConfig, tokenizer: Tokenizer, **info: Any) -> None:
    save_config(cfg, run_dir / CONFIG_FILE)
    tokenizer.save(run_dir / TOKENIZER_DIR)
    write_run_info(run_dir, status="running", preset=cfg.preset, tokenizer_fingerprint=tokenizer.fingerprint, **info)
    (run_dir / STARTING_FILE).unlink(missing_ok=True)


def clean_run_dir(run_dir: str | Path, older_than: float) -> list[str]:
    """Remove the temporaries a killed save left in a run dir (hidden `.NAME.*.partial` folders and `.NAME.*.tmp`
    files older than `older_than`, this process's start: base.atomic.clean_stale); returns what was done."""
    run_dir = Path(run_dir)
    done = []
    for folder in (run_dir, run_dir / TOKENIZER_DIR, run_dir / CKPT_DIR):
        done += clean_stale(folder, older_than)
    return done


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
    """checkpoints/index.json. It only repeats what the checkpoints' state.json hold, so a damaged one is rebuilt
    from them (with one line naming it) rather than trusted: an empty index would let retention drop the best."""
    path = Path(run_dir) / CKPT_DIR / INDEX_FILE
    if not path.is_file():
        return {}
    try:
        return _read_json(path, "rebuilding it from the checkpoints")
    except CheckpointError as e:
        say(f"warning: {e}")
        return rebuild_index(run_dir)


def rebuild_index(run_dir: str | Path) -> dict:
    """index.json's content from the checkpoints on disk: latest step, best step and val loss (their state.json)."""
    index: dict = {}
    for step, path in checkpoints(run_dir):
        index["latest"] = step
        try:
            val = json.loads((path / STATE_FILE).read_text(encoding="utf-8")).get("val_loss")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(val, (int, float)) and (index.get("best_val_loss") is None or val < index["best_val_loss"]):
            index.update(best=step, best_val_loss=val)
    return index


def shared_names(model: torch.nn.Module) -> list[list[str]]:
    """Names of parameters that are one tensor (a tied head), each group sorted: the first is the name saved, as
    safetensors' save_model keeps it."""
    groups: dict[int, list[str]] = {}
    for name, p in _unwrap(model).named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [sorted(names) for names in groups.values() if len(names) > 1]


class _Checked:
    """A binary file being written that counts and CRC-32s its bytes on the way (no second read of the file)."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.crc, self.size = 0, 0

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += memoryview(data).nbytes
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> dict:
        """Flush, fsync and close; the file's entry in state.json's `files`."""
        try:
            self.f.flush()
            os.fsync(self.f.fileno())
        finally:
            self.f.close()
        return {"bytes": self.size, "crc32": f"{self.crc:08x}"}


def _write_checked(path: Path, write: Callable[[_Checked], None]) -> dict:
    out = _Checked(path)
    try:
        write(out)
    except BaseException:
        out.f.close()
        raise
    return out.close()


def file_checksum(path: str | Path) -> dict:
    """{"bytes", "crc32"} of a file, read in 8 MB chunks (what `_Checked` records while writing)."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return {"bytes": size, "crc32": f"{crc:08x}"}


def save_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict, cfg: RunConfig, tokenizer: Tokenizer,
                    val_loss: float | None = None, keep_last: int = 2, model_state: dict | None = None,
                    optim_state: dict | None = None, extra: Callable[[Path], Any] | None = None) -> Path:  # fmt: skip
    """Write checkpoints/step-NNNNNN atomically, update index.json, then apply the retention policy.

    `model_state` / `optim_state`: full state dicts gathered from a sharded (FSDP) model, written in place of
    `model`'s and `optimizer`'s own, in the same format, so the folder is the same whatever wrote it. `extra(folder)`
    writes more files into the checkpoint before it is complete (the LoRA adapters). state.json records the size and
    CRC-32 of each weight and optimizer file (`files`); the folder is fsynced before it is renamed into place."""
    from safetensors.torch import save

    path = Path(run_dir) / CKPT_DIR / f"step-{step:06d}"
    meta = {"format": "pt", "step": str(step)}
    with atomic_dir(path) as tmp:
        files = {}
        full = model_state if model_state is not None else _unwrap(model).state_dict()
        dropped = {name for _, *others in shared_names(model) for name in others}  # a tied weight is saved once
        weights = {k: v.detach().contiguous() for k, v in full.items() if k not in dropped}
        blob = [save(weights, metadata=meta)]  # bytes, written by Python: a full disk is an OSError (ENOSPC)
        del weights
        files[WEIGHTS_FILE] = _write_checked(tmp / WEIGHTS_FILE, lambda f: f.write(blob.pop()))
        if optim_state is not None or optimizer is not None:
            optim = optim_state if optim_state is not None else optimizer.state_dict()
            files[OPTIM_FILE] = _write_checked(tmp / OPTIM_FILE, lambda f: torch.save(optim, f))
        if extra is not None:
            extra(tmp)
        for f in sorted(tmp.iterdir()):
            if f.suffix in CHECKED_SUFFIXES and f.name not in files and f.is_file():
                files[f.name] = file_checksum(f)
        full_state = {"format_version": FORMAT_VERSION, "step": step, "val_loss": val_loss,
                      "tokenizer_fingerprint": tokenizer.fingerprint, "slmkit": __version__, "saved": time.time(),
                      **state, "files": files}  # fmt: skip
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
    state, reason = _json_object(ckpt / STATE_FILE)
    if state is None:
        raise DamagedCheckpoint(f"checkpoint {ckpt} is damaged ({STATE_FILE}: {reason}); use another --checkpoint")
    version = state.get("format_version", 0)
    if not isinstance(version, int) or not isinstance(state.get("step", 0), int):
        raise DamagedCheckpoint(f"checkpoint {ckpt} is damaged ({STATE_FILE}: bad format_version or step); use "
                                "another --checkpoint")  # fmt: skip
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{ckpt} was written by a newer slmkit (format {state['format_version']}); upgrade")
    return state


_NOTED_UNVERIFIED: set[Path] = set()


def verify_file(ckpt: Path, name: str, state: dict | None = None) -> None:
    """DamagedCheckpoint naming `name` when its size or CRC-32 differs from state.json's record. A checkpoint saved
    before checksums were recorded is not checked (one note per run dir and process), nor a bare folder of weights
    without a state.json (nothing recorded to compare)."""
    if state is None and not (ckpt / STATE_FILE).exists():
        return
    state = read_state(ckpt) if state is None else state
    files = state.get("files")
    if not isinstance(files, dict):
        run = ckpt.parent.parent
        if run not in _NOTED_UNVERIFIED:
            _NOTED_UNVERIFIED.add(run)
            say(f"note: the checkpoints of {run} were saved without checksums (by an older slmkit); their files are "
                "loaded unverified")  # fmt: skip
        return
    want, path = files.get(name), ckpt / name
    if want is None:
        return  # a file state.json does not list: nothing recorded to compare
    fix = "use another --checkpoint (`slm train --resume RUN --checkpoint STEP` resumes from an earlier one)"
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DamagedCheckpoint(f"checkpoint file {path} cannot be read ({e.strerror or e}); {fix}") from None
    if size != want.get("bytes"):
        raise DamagedCheckpoint(f"checkpoint file {path} is damaged: {size:,} bytes, {want.get('bytes'):,} were "
                                f"saved (truncated or overwritten); {fix}")  # fmt: skip
    got = file_checksum(path)["crc32"]
    if got != want.get("crc32"):
        raise DamagedCheckpoint(f"checkpoint file {path} is damaged: its checksum (CRC-32 {got}) differs from the one "
                                f"saved ({want.get('crc32')}); {fix}")  # fmt: skip


def verify_checkpoint(ckpt: Path, state: dict | None = None) -> dict:
    """Check every file state.json records (sizes and CRC-32s); returns the state. DamagedCheckpoint otherwise."""
    state = read_state(ckpt) if state is None else state
    names = state.get("files") if isinstance(state.get("files"), dict) else {WEIGHTS_FILE: None}
    for name in names:
        verify_file(ckpt, name, state)
    return state


def load_weights(model: torch.nn.Module, ckpt: Path, strict: bool = True, verify: bool = True) -> None:
    """Load a checkpoint's weights into `model`, checking the file against state.json first (`verify`)."""
    from safetensors.torch import load_model

    if verify:
        verify_file(ckpt, WEIGHTS_FILE)
    try:
        missing, unexpected = load_model(_unwrap(model), str(ckpt / WEIGHTS_FILE), strict=False)
    except Exception as e:  # safetensors raises several types on damaged files or shape mismatches
        if "size mismatch" in str(e):
            raise CheckpointError(f"{ckpt} does not fit this model ({load_error_reason(e)}); is it a checkpoint of a "
                                  "run with the same model config?") from None  # fmt: skip
        raise DamagedCheckpoint(f"cannot load weights from {ckpt / WEIGHTS_FILE}: {load_error_reason(e)}") from None
    if strict and (missing or unexpected):
        raise CheckpointError(f"{ckpt} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_error_reason(e: Exception) -> str:
    """The informative line of a load error (torch puts "size mismatch for NAME: ..." under a generic header)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
    return next((ln for ln in lines if "size mismatch" in ln or "Missing key" in ln), lines[0])[:300]


def read_optimizer(ckpt: Path, verify: bool = True) -> dict:
    """The optimizer state dict of a checkpoint, checked: its checksum (`verify`), that it unpickles, and that every
    tensor in it is finite (a garbled file must not become a NaN loss blamed on the learning rate)."""
    path = ckpt / OPTIM_FILE
    if not path.is_file():
        raise DamagedCheckpoint(f"{ckpt} has no optimizer state; resume needs a full checkpoint")
    if verify:
        verify_file(ckpt, OPTIM_FILE)
    fix = "use another --checkpoint (`slm train --resume RUN --checkpoint STEP`)"
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError ... on truncated or garbled files
        raise DamagedCheckpoint(f"cannot read optimizer state {path} ({load_error_reason(e)}): the file is damaged; "
                                f"{fix}") from None  # fmt: skip
    if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
        raise DamagedCheckpoint(f"{path} is not an optimizer state (damaged file); {fix}")
    for slot in sd["state"].values():
        for name, t in slot.items() if isinstance(slot, dict) else ():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise DamagedCheckpoint(f"optimizer state {path} holds NaN or infinite values ({name}): the file is "
                                        f"damaged; {fix}")  # fmt: skip
    return sd


def load_optimizer(optimizer, ckpt: Path, verify: bool = True) -> None:
    sd = read_optimizer(ckpt, verify)
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt / OPTIM_FILE} does not fit this optimizer ({load_error_reason(e)}); resume "
                              "with the same optim settings") from None  # fmt: skip


def load_model(run_dir: str | Path, which: str | int = "best", device: str | torch.device = "cpu",
               verify: bool = True):  # fmt: skip
    """(model in eval mode, tokenizer, config, checkpoint path) from a run dir: all that sampling or eval needs.
    A `slm quantize` output directory loads too (its one snapshot; `which` is ignored). `verify` checks the weights
    file against its recorded checksum first (benchmarks/bench_checksum.py measures what that costs)."""

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
    if verify:
        verify_file(ckpt, WEIGHTS_FILE, state)
    load_weights(model, ckpt, verify=False)
    return model.to(device).eval(), tokenizer, cfg, ckpt


def set_aside_after(run_dir: str | Path, step: int, damaged: set[int] = frozenset()) -> list[Path]:
    """Rename the checkpoints after `step` (a resume from `step` makes them another history) to step-N.damaged
    (those in `damaged`) or step-N.abandoned, so `latest`, `best` and retention see only this history; nothing is
    deleted. index.json is rebuilt from what is left. Returns the new paths."""
    moved = []
    for s_, path in checkpoints(run_dir):
        if s_ > step:
            suffix = "damaged" if s_ in damaged else "abandoned"
            base = f"{path.name}.{suffix}"
            new = path.with_name(free_name(path.parent, base))
            os.replace(path, new)
            moved.append(new)
    if moved:
        atomic_write_json(Path(run_dir) / CKPT_DIR / INDEX_FILE, rebuild_index(run_dir))
    return moved


def no_space(e: BaseException) -> bool:
    """True for a write that failed because the disk (or the quota) is full."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def checkpoint_bytes(run_dir: str | Path) -> int:
    """The size of the newest checkpoint on disk (0 when there is none): about what the next save needs."""
    ckpts = checkpoints(run_dir)
    if not ckpts:
        return 0
    return sum(f.stat().st_size for f in ckpts[-1][1].rglob("*") if f.is_file())
