"""`slm config` verbs. Kept apart from the other handlers because they need no torch: they answer at once."""

from __future__ import annotations

import sys

from slmkit.base.config import describe
from slmkit.base.config_files import PRESETS_DIR, load_config, preset_names, read_toml
from slmkit.cli.base import split_config_arg
from slmkit.ship.export.checks import preset_export_formats


def cmd_config_show(args) -> None:
    cfg = load_config(*split_config_arg(args.config, args.overrides))
    rows = describe(cfg)
    width = max(len(k) for k, *_ in rows)
    for key, value, default, help_text in rows:
        mark = " " if value == default else "*"
        print(f"{mark} {key:<{width}} = {value!r:<16} (default {default!r})  {help_text}")
    print("\n* = differs from the default", file=sys.stderr)


def cmd_config_presets(args) -> None:
    """Each preset with the `slm export` formats its runs can use (the exporters' own checks) and its description."""
    rows = [(name, ",".join(preset_export_formats(name)) or "none",
             read_toml(PRESETS_DIR / f"{name}.toml").get("description", "")) for name in preset_names()]  # fmt: skip
    width = max(len("export"), *(len(formats) for _, formats, _ in rows))
    print(f"{'preset':<24} {'export':<{width}} description")
    for name, formats, desc in rows:
        print(f"{name:<24} {formats:<{width}} {desc}")
