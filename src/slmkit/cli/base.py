"""Shared pieces of the `slm` parser, and the checks its arguments get as they are parsed.

Bad input is refused in one line (`error: slm VERB: argument --x: what is wrong; what to do`, exit 2) before any
handler runs: numbers outside their range (`number`, and `add_field` with the config's own range), run directories
that are files (`run_dir`), text files that are missing, empty, binary or not UTF-8 (`text_file`, `config_arg`,
`corpus`). Only the standard library and `slmkit.base` are used, so `slm --help` stays fast.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

from slmkit.base.checks import INT_MAX, RANGES, Range, number_problem, text_file_problem
from slmkit.base.config import field_default, field_help
from slmkit.base.errors import SlmError

SAMPLING_FLAGS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_k": "--top-k",
                  "top_p": "--top-p", "seed": "--seed"}  # fmt: skip
"""How the sampling parameters of `model.generate.check_sampling` are spelled on the command line."""


class Parser(argparse.ArgumentParser):
    """argparse with usage errors in one line: `error: slm VERB: MESSAGE (`slm VERB --help` lists the options)`,
    exit code 2 (sub-parsers are made with this class too)."""

    def error(self, message: str):
        message = " ".join(message.split())
        self.exit(2, f"error: {self.prog}: {message} (`{self.prog} --help` lists the options)\n")


def number(kind: type, rng: Range) -> Callable[[str], int | float]:
    """An argparse type: an int or float (`kind`) within `rng`, NaN and infinity refused."""

    def parse(text: str) -> int | float:
        try:
            value = int(text) if kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'} {rng.text()}, got {text!r}"
            ) from None
        problem = number_problem("", value, rng, kind)
        if problem:
            raise argparse.ArgumentTypeError(problem.strip())
        return value

    parse.__name__ = kind.__name__
    return parse


def count(low: int = 0, high: int = INT_MAX, note: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number in low..high (`note` says what a special value means, e.g. "0: all")."""
    return number(int, Range(low, high, note=note))


def positive(note: str = "") -> Callable[[str], float]:
    """An argparse type: a finite number > 0."""
    return number(float, Range(0, low_open=True, note=note))


def run_dir(text: str) -> str:
    """An argparse type for a run directory argument: a path that exists must be a directory (a missing one is left
    to the library, which names what to do)."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a file, not a run directory; pass the run's folder (runs/<name>)")
    return text


def out_dir(text: str) -> str:
    """An argparse type for an output folder: a path that exists must be a directory (the library decides whether a
    non-empty one may be replaced)."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} exists and is a file; --out names a folder: pick another path")
    return text


def image_out(text: str) -> str:
    """An argparse type for an image file to write: not a directory, and with an extension (matplotlib would add
    .png to a bare name and write a file other than the one named)."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory; name the image file to write, e.g. {text}/plot.png")
    if not os.path.splitext(text)[1]:
        raise argparse.ArgumentTypeError(f"{text} has no file extension; name the image file, e.g. {text}.png")
    return text


def text_file(what: str, hint: str, dir_ok: bool = False) -> Callable[[str], str]:
    """An argparse type for a text file argument: a path that exists must be non-empty UTF-8 text (not binary); with
    `dir_ok`, a directory passes (e.g. a dataset directory, which the library checks). A missing path is left to the
    library, which refuses it in the same words (`base.checks.text_file_problem`)."""

    def check(text: str) -> str:
        if not os.path.lexists(text) or (dir_ok and os.path.isdir(text)):
            return text
        problem = text_file_problem(text, what, hint)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return text

    return check


def config_arg(text: str) -> str:
    """An argparse type for a config argument: a preset name, a dotted override, or a TOML file that is readable,
    non-empty UTF-8 text."""
    if not os.path.exists(text):
        return text  # a preset name or an override; load_config names the presets
    problem = text_file_problem(text, "config file", "write TOML fields in it (`slm config show` lists them) or name "
                                "a preset (`slm config presets`)")  # fmt: skip
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def corpus(text: str) -> str:
    """An argparse type for a corpus argument: a file given by name must hold something and not be binary (NUL
    bytes); bytes that are not UTF-8 are decoded with replacement and counted, as for every corpus file. A directory
    must hold at least one file that is not hidden."""
    hint = "pass a text file, .jsonl, .parquet, a directory or a built-in corpus name"
    if os.path.isdir(text):
        for _root, dirs, files in os.walk(text):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            if any(not f.startswith(".") for f in files):
                return text
        raise argparse.ArgumentTypeError(f"{text} is a directory with no files in it; {hint}")
    if os.path.isfile(text) and not text.endswith(".parquet"):
        try:
            with open(text, "rb") as f:
                head = f.read(8192)
        except OSError as e:
            raise argparse.ArgumentTypeError(f"cannot read {text}: {e.strerror or e}") from None
        if b"\0" in head:
            raise argparse.ArgumentTypeError(f"{text} is a binary file, not text; {hint}")
        if not head.strip() and os.path.getsize(text) == len(head):
            raise argparse.ArgumentTypeError(f"{text} is empty; {hint}")
    return text


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
    elif isinstance(default, (int, float)) and not isinstance(default, bool) and key in RANGES:
        kwargs.setdefault("type", number(type(default), RANGES[key]))  # the config's own range
    elif not isinstance(default, bool):
        kwargs.setdefault("type", type(default))
    doc = field_help(key).replace("%", "%%")  # argparse formats help with %
    shown = "; default: %(default)s" if default not in (None, False, "", []) else ""  # else HelpFormatter's rule
    p.add_argument(flag, default=default, help=f"{doc} (the config's {key}{shown})", **kwargs)


def read_text_arg(arg: str) -> str:
    """A text given on the command line, or @FILE for the contents of FILE (slm inspect, tokenize, complete)."""
    if not arg.startswith("@"):
        return arg
    path = Path(arg[1:])
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise SlmError(f"cannot read {path}: {e.strerror or e} (@FILE names a text file)") from None
    except UnicodeDecodeError:
        raise SlmError(f"{path} is not UTF-8 text (@FILE names a text file)") from None
