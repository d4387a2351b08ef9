"""`slm` verbs for the core path: config, tokenizer, prepare, data, train, sample."""

from __future__ import annotations

import sys

from slmkit.cli.base import add, add_checkpoint, add_sampling, group, print_json, split_config_arg
from slmkit.errors import SlmError

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

    print_json(find_tokenizer(args.path).info())


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

    print_json(read_meta(args.dir))


# ---------------------------------------------------------------------------------------------------------
# train and sample


def cmd_train(args) -> int:
    from slmkit.config import load_config
    from slmkit.train import train

    config, overrides = split_config_arg(args.config, args.overrides)
    if args.nproc:  # N processes on this machine via torchrun, each running this command without --nproc
        from slmkit.distributed import launch_train, strip_nproc

        device = next((o.split("=", 1)[1].strip() for o in overrides if o.startswith("train.device=")), "auto")
        return launch_train(strip_nproc(args.argv), args.nproc, device)
    if args.name:
        overrides.append(f"train.name={args.name}")
    if args.resume:
        if config is not None:
            raise SlmError(f"--resume uses the run's own config; drop {config!r} and give only overrides")
        train(resume=args.resume, overrides=overrides, allow_changed=args.allow_changed, progress=not args.no_progress)
        return 0
    if args.init_from:
        from slmkit.finetune import init_from_config

        cfg = init_from_config(args.init_from, config, overrides)
    else:
        cfg = load_config(config, overrides)
    run_dir = train(cfg, overrides=overrides, progress=not args.no_progress)
    from slmkit.checkpoint import read_run_info

    return 130 if read_run_info(run_dir).get("status") == "interrupted" else 0


def cmd_sample(args) -> None:
    from slmkit.checkpoint import load_model
    from slmkit.generate import sample_text

    model, tokenizer, cfg, ckpt = load_model(args.run, args.checkpoint)
    print(f"# {ckpt} ({tokenizer.name})", file=sys.stderr)
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        print(args.prompt, end="", flush=True)  # the continuation reads on from the prompt
        sample_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, seed=seed, stop=args.stop,
                    on_text=lambda piece: print(piece, end="", flush=True))  # fmt: skip
        print()
        if i + 1 < args.num_samples:
            print("---")


def register(sub) -> None:
    """Add this module's verbs to the `slm` parser."""
    cfg = group(sub, "config", "show config fields, values, defaults and help; list presets")
    p = add(cfg, "show", cmd_config_show, "print every config field with its value, default and help")
    p.add_argument("config", nargs="?", help="a preset name or TOML file (default: the embedded default)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4")
    add(cfg, "presets", cmd_config_presets, "list the built-in presets")

    tk = group(sub, "tokenizer", "train, inspect and compare tokenizers")
    p = add(tk, "train", cmd_tokenizer_train, "train a byte-level BPE tokenizer on a corpus")
    p.add_argument("source", help="corpus: built-in name, file, directory, glob, .jsonl or .parquet")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--out", required=True, help="directory to save the tokenizer into")
    p.add_argument("--max-bytes", type=int, default=0, help="train on at most this many bytes of text (0: all)")
    p = add(tk, "info", cmd_tokenizer_info, "show a tokenizer's kind, vocabulary size, specials and fingerprint")
    p.add_argument("path", help="a tokenizer directory, dataset directory or run directory")
    p = add(tk, "eval", cmd_tokenizer_eval, "compare tokenizers by bytes per token on a sample")
    p.add_argument("source", help="sample corpus")
    p.add_argument("--tokenizers", nargs="+", default=["char", "gpt2", "bpe:8192"], metavar="KIND")
    p.add_argument("--max-bytes", type=int, default=2_000_000, help="sample size in bytes")

    p = add(sub, "prepare", cmd_prepare, "tokenize a corpus into a dataset directory (train/val shards)")
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

    dt = group(sub, "data", "inspect dataset directories")
    p = add(dt, "info", cmd_data_info, "print a dataset directory's meta (tokenizer, counts, sources)")
    p.add_argument("dir")

    p = add(
        sub,
        "train",
        cmd_train,
        "train a model (no arguments: the embedded default, a few minutes on a CPU)",
        TRAIN_HELP,
    )
    p.add_argument("config", nargs="?", help="preset name or TOML file (default: the embedded default preset)")
    p.add_argument("overrides", nargs="*", help="dotted overrides typed against the config, e.g. optim.lr=3e-4")
    p.add_argument("--name", help="run name (default: derived from the preset and overrides)")
    p.add_argument("--resume", metavar="RUN", help="continue runs/<name> exactly from its latest checkpoint")
    p.add_argument("--allow-changed", action="store_true", help="with --resume: accept changed optimizer/schedule")
    p.add_argument("--init-from", metavar="RUN", help="start from RUN's best weights (continued pretraining on new "
                   "text: add data.source=...); a config file, if given, must describe the same model")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.add_argument("--nproc", type=int, default=0, metavar="N", help="train with N processes on this machine "
                   "(torchrun; one per GPU, or CPU cores shared out); train.parallel picks ddp or fsdp")  # fmt: skip

    p = add(sub, "sample", cmd_sample, "generate text from a trained run (streams to the terminal)")
    p.add_argument("run", help="run directory, e.g. runs/default")
    add_checkpoint(p)
    p.add_argument("--prompt", default="", help="text to continue (default: start from end-of-text)")
    add_sampling(p, max_new_tokens=200, temperature=0.8, top_k=0)
    p.add_argument("--seed", type=int, default=None, help="make the sample reproducible")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--stop", action="append", default=[], help="stop when this text appears (repeatable)")


TRAIN_HELP = """train a model and write a run directory (runs/<name>/: config, tokenizer, metrics.jsonl, checkpoints)

examples:
  slm train                                          the embedded default (python-stdlib corpus)
  slm train shakespeare-char                         nanoGPT's CPU recipe on TinyShakespeare
  slm train shakespeare-char optim.lr=3e-4           one change, run named shakespeare-char.lr=3e-4
  slm train configs/my.toml train.max_steps=200 --name my-test
  slm train --resume runs/shakespeare-char           continue exactly where it stopped (Ctrl-C saves)
  slm train --init-from runs/default data.source=docs/   continued pretraining of a run on new text
  slm train gpt2-124m --nproc 8 train.parallel=fsdp  8 processes on this machine (docs/distributed.md)
"""
