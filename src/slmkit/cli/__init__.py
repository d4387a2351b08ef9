"""The `slm` command. It only parses arguments and calls library functions; errors become one line and exit 2.

Verbs live in three modules by theme (core, study, ship); each has `register(sub)`.
"""

from __future__ import annotations

import argparse
import os
import sys

from slmkit import __version__
from slmkit.errors import SlmError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm",
        description="slmkit: train, diagnose, evaluate, fine-tune, quantize, export and serve small language models.",
        epilog="Run `slm COMMAND --help` for a command's options. Start with `slm train` (a small model on the\n"
        "Python standard library, a few minutes on a laptop CPU), then `slm sample runs/<name>`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"slmkit {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    from slmkit.cli import core, ship, study

    for module in (core, study, ship):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed, for commands that relaunch themselves
    if extra and getattr(args, "overrides_anywhere", False) and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "fn"):
        parser.print_help()
        return 0
    try:
        result = args.fn(args)
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
