"""`slm` verbs for the core path: tokenizer, prepare, data, train, sample (config is in `cli/config.py`)."""

from __future__ import annotations

import sys

from slmkit.base.config_files import load_config
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import build_tokenizer, bytes_per_token, parse_kind, train_bpe
from slmkit.cli.base import SAMPLING_FLAGS, print_json, split_config_arg
from slmkit.data.dataset import find_tokenizer, read_meta
from slmkit.data.prepare import prepare
from slmkit.data.quality.clean import CleanSpec
from slmkit.data.quality.stats import data_stats
from slmkit.data.sources import iter_texts
from slmkit.engine.contamination import clean_corpus, eval_index_provider
from slmkit.engine.launch import launch_train, strip_nproc
from slmkit.engine.train import train
from slmkit.model.generate import check_sampling, sample_text, speed_line
from slmkit.runs.checkpoint import load_model, read_run_info
from slmkit.ship.finetune import init_from_config

# ---------------------------------------------------------------------------------------------------------
# tokenizer


def cmd_tokenizer_train(args) -> None:
    _, _ = parse_kind(f"bpe:{args.vocab_size}")
    tok = train_bpe(iter_texts(args.source, max_bytes=args.max_bytes), args.vocab_size)
    tok.save(args.out)
    print(f"saved {tok.name} tokenizer (fingerprint {tok.fingerprint}) to {args.out}")


def cmd_tokenizer_info(args) -> None:
    print_json(find_tokenizer(args.path).info())


def cmd_tokenizer_eval(args) -> None:
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
    if args.decontaminate and args.no_contamination_check:
        raise SlmError("--decontaminate needs the contamination check; drop --no-contamination-check")
    mode = "remove" if args.decontaminate else "off" if args.no_contamination_check else "warn"
    prepare(args.source, tokenizer=args.tokenizer, out=args.out, val_fraction=args.val_fraction, seed=args.seed,
            text_field=args.text_field, include=args.include, exclude=args.exclude, workers=args.workers,
            shard_tokens=args.shard_tokens, max_tokens=args.max_tokens, force=args.force,
            clean=CleanSpec(contamination=mode),
            eval_index=eval_index_provider(mode))  # fmt: skip


def cmd_data_info(args) -> None:
    print_json(read_meta(args.dir))


def _names(text: str | None) -> list[str]:
    """A comma-separated option as a list; "none" or empty is the empty list."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    return [] if items == ["none"] else items


def cmd_data_stats(args) -> None:
    stats = data_stats(args.sources, args.out, overwrite=args.overwrite, tokenizer=args.tokenizer,
                       max_bytes=args.max_bytes, text_field=args.text_field, near_threshold=args.near_threshold,
                       workers=args.workers, progress=not args.no_progress)  # fmt: skip
    print(stats["markdown"])
    if args.out:
        print(f"wrote {args.out}/stats.md, stats.json, stats.html and charts", file=sys.stderr)


def cmd_data_clean(args) -> None:
    if args.decontaminate and args.no_contamination_check:
        raise SlmError("--decontaminate needs the contamination check; drop --no-contamination-check")
    clean_corpus(args.source, args.out, dedup=_names(args.dedup), filters=_names(args.filters),
                 decontaminate=_names(args.decontaminate) or None, check=not args.no_contamination_check,
                 near_threshold=args.near_threshold, fmt=args.format, text_field=args.text_field,
                 include=args.include, exclude=args.exclude, overwrite=args.overwrite, workers=args.workers,
                 progress=not args.no_progress)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# train and sample


def cmd_train(args) -> int:
    config, overrides = split_config_arg(args.config, args.overrides)
    if args.nproc:  # N processes on this machine via torchrun, each running this command without --nproc
        device = next((o.split("=", 1)[1].strip() for o in overrides if o.startswith("train.device=")), "auto")
        return launch_train(strip_nproc(args.argv), args.nproc, device)
    if args.name:
        overrides.append(f"train.name={args.name}")
    if args.resume:
        if config is not None:
            raise SlmError(f"--resume uses the run's own config; drop {config!r} and give only overrides")
        run_dir = train(resume=args.resume, overrides=overrides, allow_changed=args.allow_changed,
                        progress=not args.no_progress, checkpoint=args.checkpoint)  # fmt: skip
        return 130 if read_run_info(run_dir).get("status") == "interrupted" else 0
    if args.checkpoint is not None:
        raise SlmError("--checkpoint picks the checkpoint to resume from; use it with --resume RUN")
    if args.init_from:
        cfg = init_from_config(args.init_from, config, overrides)
    else:
        cfg = load_config(config, overrides)
    run_dir = train(cfg, overrides=overrides, progress=not args.no_progress)

    return 130 if read_run_info(run_dir).get("status") == "interrupted" else 0


def cmd_sample(args) -> None:
    check_sampling(SAMPLING_FLAGS, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed)  # fmt: skip
    if args.seed is not None:  # sample i uses seed + i
        check_sampling({"seed": "--seed + --num-samples - 1"}, seed=args.seed + args.num_samples - 1)
    model, tokenizer, cfg, ckpt = load_model(args.run, args.checkpoint)
    tokenizer.encode(args.prompt, allow_special=True)  # a prompt it cannot encode fails before anything is printed
    print(f"# {ckpt} ({tokenizer.name})", file=sys.stderr)
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        print(args.prompt, end="", flush=True)  # the continuation reads on from the prompt
        stats: dict = {}
        sample_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, seed=seed, stop=args.stop, stats=stats,
                    on_text=lambda piece: print(piece, end="", flush=True))  # fmt: skip
        print()
        print(speed_line(stats), file=sys.stderr)
        if i + 1 < args.num_samples:
            print("---")
