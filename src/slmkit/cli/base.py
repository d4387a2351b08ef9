"""Shared pieces of the `slm` parser."""

from __future__ import annotations

import argparse
import copy
import json
import os

from slmkit.base.config import field_default, field_help


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every verb's --help: descriptions and epilogs as written (examples keep their lines), and each option's default
    appended as "(default: X)", unless the help already places it with %(default)s. Defaults that say nothing
    (None, False, "", []) are left out; an option with no help text gets one that is just its default."""

    @staticmethod
    def shows_default(action: argparse.Action) -> bool:
        d = action.default
        if d is argparse.SUPPRESS or action.help == argparse.SUPPRESS or d is None or d is False or d in ("", []):
            return False
        return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)

    @staticmethod
    def shown(value) -> str:
        return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not self.shows_default(action):
            return text
        return f"{text} (default: {self.shown(action.default).replace('%', '%%')})"

    def _format_action(self, action: argparse.Action) -> str:
        if not (action.help and action.help.strip()) and self.shows_default(action):
            action = copy.copy(action)  # argparse prints no help line at all for an option without help
            action.help, action.default = "(default: %(default)s)", self.shown(action.default)
        return super()._format_action(action)


def add(sub, name: str, fn: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=description or help_text, formatter_class=HelpFormatter)
    p.set_defaults(fn=fn)
    return p


def group(sub, name: str, help_text: str):
    p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
    p.set_defaults(fn=lambda a, p=p: p.print_help())
    return p.add_subparsers(title="commands", metavar="COMMAND")


def split_config_arg(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """`slm train optim.lr=1e-3` has no config file: the first positional is then an override."""
    if config is not None and "=" in config and not config.endswith(".toml") and not os.path.exists(config):
        return None, [config, *overrides]
    return config, list(overrides)


def add_overrides(p: argparse.ArgumentParser, help_text: str) -> None:
    """The `overrides` positional (dotted key=value strings); they may also follow the options (`slm train tiny
    --no-progress train.max_steps=3`): `main` adds such trailing key=value arguments to them."""
    p.add_argument("overrides", nargs="*", help=help_text)
    p.set_defaults(overrides_anywhere=True)


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP")


def add_sampling(p: argparse.ArgumentParser, *, max_new_tokens: int, temperature: float, top_k: int,
                 top_p: bool = True) -> None:  # fmt: skip
    """The sampling options of every verb that generates text."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=top_k, help="sample among the k most likely tokens (0: all)")
    if top_p:
        p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")


def add_field(p: argparse.ArgumentParser, flag: str, key: str, **kwargs) -> None:
    """A flag that mirrors the config field `key`: its type, default and help come from the config tree, and the
    help names the field (e.g. `--val-fraction` is data.val_fraction)."""
    default = field_default(key)
    if isinstance(default, list):
        kwargs.setdefault("action", "append")
        default = []
    elif not isinstance(default, bool):
        kwargs.setdefault("type", type(default))
    doc = field_help(key).replace("%", "%%")  # argparse formats help with %
    shown = "; default: %(default)s" if default not in (None, False, "", []) else ""  # else HelpFormatter's rule
    p.add_argument(flag, default=default, help=f"{doc} (the config's {key}{shown})", **kwargs)
