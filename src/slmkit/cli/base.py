"""Shared pieces of the `slm` parser."""

from __future__ import annotations

import argparse
import json
import os


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def add(sub, name: str, fn: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=description or help_text,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.set_defaults(fn=fn)
    return p


def group(sub, name: str, help_text: str):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(fn=lambda a, p=p: p.print_help())
    return p.add_subparsers(title="commands", metavar="COMMAND")


def split_config_arg(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """`slm train optim.lr=1e-3` has no config file: the first positional is then an override."""
    if config is not None and "=" in config and not config.endswith(".toml") and not os.path.exists(config):
        return None, [config, *overrides]
    return config, list(overrides)


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="best", help="best | latest | STEP (default: best)")


def add_sampling(p: argparse.ArgumentParser, *, max_new_tokens: int, temperature: float, top_k: int,
                 top_p: bool = True) -> None:  # fmt: skip
    """The sampling options of every verb that generates text."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=top_k, help="sample among the k most likely tokens (0: all)")
    if top_p:
        p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
