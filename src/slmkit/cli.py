"""The `slm` command. It only parses arguments and calls library functions; errors become one line and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from slmkit import __version__
from slmkit.errors import SlmError

EXIT_USER_ERROR = 2


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ---------------------------------------------------------------------------------------------------------
# config


def cmd_config_show(args) -> None:
    from slmkit.config import describe, load_config

    cfg = load_config(args.config, args.overrides)
    rows = describe(cfg)
    width = max(len(k) for k, *_ in rows)
    for key, value, default, help_text in rows:
        mark = " " if value == default else "*"
        print(f"{mark} {key:<{width}} = {value!r:<16} (default {default!r})  {help_text}")
    print("\n* = differs from the default", file=sys.stderr)


def cmd_config_presets(args) -> None:
    from slmkit.config import PRESETS_DIR, preset_names, read_toml

    for name in preset_names():
        desc = read_toml(PRESETS_DIR / f"{name}.toml").get("description", "")
        print(f"{name:<28} {desc}")


# ---------------------------------------------------------------------------------------------------------
# tokenizer


def cmd_tokenizer_train(args) -> None:
    from slmkit.data.sources import iter_texts
    from slmkit.tokenizer import parse_kind, train_bpe

    _, _ = parse_kind(f"bpe:{args.vocab_size}")
    tok = train_bpe(iter_texts(args.source, max_bytes=args.max_bytes), args.vocab_size)
    tok.save(args.out)
    print(f"saved {tok.name} tokenizer (fingerprint {tok.fingerprint}) to {args.out}")


def cmd_tokenizer_info(args) -> None:
    from slmkit.data.dataset import find_tokenizer

    _print_json(find_tokenizer(args.path).info())


def cmd_tokenizer_eval(args) -> None:
    from slmkit.data.sources import iter_texts
    from slmkit.tokenizer import build_tokenizer, bytes_per_token

    sample = list(iter_texts(args.source, max_bytes=args.max_bytes))
    rows = []
    for kind in args.tokenizers:
        tok = build_tokenizer(kind, sample)
        rows.append(bytes_per_token(tok, sample))
    print(f"{'tokenizer':<24} {'vocab':>7} {'bytes':>12} {'tokens':>12} {'bytes/token':>12}")
    for kind, r in zip(args.tokenizers, rows):
        print(f"{kind:<24} {r.get('vocab', ''):>7} {r['bytes']:>12,} {r['tokens']:>12,} {r['bytes_per_token']:>12.3f}")


# ---------------------------------------------------------------------------------------------------------
# data


def cmd_prepare(args) -> None:
    from slmkit.data.prepare import prepare

    prepare(args.source, tokenizer=args.tokenizer, out=args.out, val_fraction=args.val_fraction, seed=args.seed,
            text_field=args.text_field, include=args.include, exclude=args.exclude, workers=args.workers,
            shard_tokens=args.shard_tokens, force=args.force)  # fmt: skip


def cmd_data_info(args) -> None:
    from slmkit.data.dataset import read_meta

    _print_json(read_meta(args.dir))


# ---------------------------------------------------------------------------------------------------------
# parser


def _add(sub, name: str, fn: Callable, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=description or help_text,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.set_defaults(fn=fn)
    return p


def _group(sub, name: str, help_text: str):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(fn=lambda a, p=p: p.print_help())
    return p.add_subparsers(title="commands", metavar="COMMAND")


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

    cfg = _group(sub, "config", "show config fields, values, defaults and help; list presets")
    p = _add(cfg, "show", cmd_config_show, "print every config field with its value, default and help")
    p.add_argument("config", nargs="?", help="a preset name or TOML file (default: the embedded default)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4")
    _add(cfg, "presets", cmd_config_presets, "list the built-in presets")

    tk = _group(sub, "tokenizer", "train, inspect and compare tokenizers")
    p = _add(tk, "train", cmd_tokenizer_train, "train a byte-level BPE tokenizer on a corpus")
    p.add_argument("source", help="corpus: built-in name, file, directory, glob, .jsonl or .parquet")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--out", required=True, help="directory to save the tokenizer into")
    p.add_argument("--max-bytes", type=int, default=0, help="train on at most this many bytes of text (0: all)")
    p = _add(tk, "info", cmd_tokenizer_info, "show a tokenizer's kind, vocabulary size, specials and fingerprint")
    p.add_argument("path", help="a tokenizer directory, dataset directory or run directory")
    p = _add(tk, "eval", cmd_tokenizer_eval, "compare tokenizers by bytes per token on a sample")
    p.add_argument("source", help="sample corpus")
    p.add_argument("--tokenizers", nargs="+", default=["char", "gpt2", "bpe:8192"], metavar="KIND")
    p.add_argument("--max-bytes", type=int, default=2_000_000, help="sample size in bytes")

    p = _add(sub, "prepare", cmd_prepare, "tokenize a corpus into a dataset directory (train/val shards)")
    p.add_argument("source", help="built-in name (python-stdlib, tinyshakespeare, tinystories, wikitext-2), file, "
                   "directory, glob, .jsonl, .parquet or hf:<dataset>[:<config>]")  # fmt: skip
    p.add_argument("--tokenizer", default="bpe:8192", help="char | gpt2 | bpe:<vocab> | a tokenizer directory")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/val document split")
    p.add_argument("--text-field", default="text", help="field of .jsonl records / column of .parquet files")
    p.add_argument("--include", action="append", default=[], help="glob of files to include (directories)")
    p.add_argument("--exclude", action="append", default=[], help="glob of files to skip (directories)")
    p.add_argument("--workers", type=int, default=0, help="tokenizer workers (0: one per CPU)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file")
    p.add_argument("--force", action="store_true", help="rebuild even if the directory is already prepared")

    dt = _group(sub, "data", "inspect dataset directories")
    p = _add(dt, "info", cmd_data_info, "print a dataset directory's meta (tokenizer, counts, sources)")
    p.add_argument("dir")

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
