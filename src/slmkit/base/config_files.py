"""Configs on disk: the built-in presets, TOML files, and `load_config` (a preset or file, then dotted overrides).

A run dir and every checkpoint hold the resolved config as `config.toml` (`save_config`, atomic).
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

from slmkit.base.atomic import atomic_write_text
from slmkit.base.config import ConfigError, RunConfig, apply_overrides, from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


PRESETS_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def resolve_config_path(spec: str) -> Path:
    """A config argument is a TOML path or a preset name (e.g. `shakespeare-char`)."""
    p = Path(spec)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file {spec} not found; presets: {', '.join(preset_names())}")
        return p
    cand = PRESETS_DIR / f"{spec}.toml"
    if cand.is_file():
        return cand
    close = difflib.get_close_matches(spec, preset_names(), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"presets: {', '.join(preset_names())}"
    raise ConfigError(f"no config file or preset named {spec!r}; {hint}")


def read_toml(path: str | Path) -> dict:
    """A TOML file as a dict; ConfigError naming the file when it cannot be read, is not UTF-8 or not TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}): the file "
                          "is damaged; restore it or write it again") from None  # fmt: skip
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None


def load_config(spec: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a preset or TOML file (default: the embedded `default` preset) and apply dotted overrides."""
    path = resolve_config_path(spec or "default")
    data = read_toml(path)
    if path.parent.resolve() == PRESETS_DIR.resolve() and "preset" not in data:
        data["preset"] = path.stem
    return from_dict(apply_overrides(data, overrides or []))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        raise ConfigError("TOML has no null; use a default instead of None")
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(data: dict) -> str:
    """Write a two-level dict (scalars, then [section] tables) as TOML."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def to_toml(cfg: RunConfig) -> str:
    return dumps_toml(cfg.to_dict())


def save_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_text(path, to_toml(cfg))
