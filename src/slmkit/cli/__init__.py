"""The `slm` command. It only parses arguments and calls library functions; errors become one line and exit 2.

`parser` holds every verb's arguments; the handlers live in three modules by theme (`core`, `study`, `ship`), and
only the one a command needs is imported, so `slm --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from slmkit import __version__
from slmkit.base.errors import SlmError
from slmkit.cli.base import Parser
from slmkit.cli.parser import register

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="slm",
        description="slmkit: train, diagnose, evaluate, fine-tune, quantize, export and serve small language models.",
        epilog="Run `slm COMMAND --help` for a command's options. Start with `slm train` (a small model on the\n"
        "Python standard library, a few minutes on a laptop CPU), then `slm sample runs/<name>`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"slmkit {__version__}")
    register(parser.add_subparsers(title="commands", metavar="COMMAND"))
    return parser


def handler(spec: str | Callable) -> Callable:
    """The function a verb names as "module:function" (a module of slmkit.cli, imported now), or `spec` itself."""
    if callable(spec):
        return spec
    module, name = spec.split(":")
    return getattr(importlib.import_module(f"slmkit.cli.{module}"), name)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """`slm`'s command line as the verbs see it: dotted overrides may also follow the options (exit 2 otherwise)."""
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for commands that relaunch themselves
    if extra and getattr(args, "overrides_anywhere", False) and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not hasattr(args, "fn"):
        parser.print_help()
        return 0
    try:
        result = handler(args.fn)(args)
    except SlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `slm ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
