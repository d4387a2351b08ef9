"""Every verb's arguments. Light on purpose: it imports no library code, so `slm --help` and `slm VERB --help`
answer at once. A verb names its handler as "module:function" of `slmkit.cli` (`core`, `study`, `ship`), imported
only when that verb runs.
"""

from __future__ import annotations

import argparse

from slmkit.base.checks import Range
from slmkit.base.chinchilla import TOKENS_PER_PARAM
from slmkit.cli.base import (
    add,
    add_checkpoint,
    add_field,
    add_overrides,
    add_sampling,
    config_arg,
    corpus,
    count,
    group,
    image_out,
    number,
    out_dir,
    positive,
    run_dir,
    text_file,
)


def register(sub) -> None:
    """Add every verb to the `slm` parser, in the order `slm --help` lists them."""
    for register_group in (register_core, register_study, register_ship):
        register_group(sub)


def register_core(sub) -> None:
    """Add this module's verbs to the `slm` parser."""
    cfg = group(sub, "config", "show config fields, values, defaults and help; list presets")
    p = add(cfg, "show", "config:cmd_config_show", "print every config field with its value, default and help")
    p.add_argument("config", nargs="?", type=config_arg, help="a preset name or TOML file (default: the embedded "
                   "default)")  # fmt: skip
    add_overrides(p, "dotted overrides, e.g. optim.lr=3e-4")
    add(cfg, "presets", "config:cmd_config_presets", "list the built-in presets")

    tk = group(sub, "tokenizer", "train, inspect and compare tokenizers")
    p = add(tk, "train", "core:cmd_tokenizer_train", "train a byte-level BPE tokenizer on a corpus")
    p.add_argument("source", type=corpus, help="corpus: built-in name, file, directory, glob, .jsonl or .parquet")
    p.add_argument("--vocab-size", type=count(1), default=8192, help="vocabulary size, special tokens included")
    p.add_argument("--out", required=True, type=out_dir, help="directory to save the tokenizer into")
    p.add_argument("--max-bytes", type=count(0, note="0: all"), default=0, help="train on at most this many bytes of "
                   "text (0: all)")  # fmt: skip
    p = add(tk, "info", "core:cmd_tokenizer_info", "show a tokenizer's kind, vocabulary size, specials and fingerprint")
    p.add_argument("path", help="a tokenizer directory, dataset directory or run directory")
    p = add(tk, "eval", "core:cmd_tokenizer_eval", "compare tokenizers by bytes per token on a sample")
    p.add_argument("source", type=corpus, help="sample corpus")
    p.add_argument("--tokenizers", nargs="+", default=["char", "gpt2", "bpe:8192"], metavar="KIND",
                   help="tokenizer kinds to compare")  # fmt: skip
    p.add_argument("--max-bytes", type=count(0, note="0: all"), default=2_000_000, help="sample size in bytes (0: all)")

    p = add(sub, "prepare", "core:cmd_prepare", "tokenize a corpus into a dataset directory (train/val shards)")
    p.add_argument("source", type=corpus, help="built-in name (python-stdlib, tinyshakespeare, tinystories, "
                   "wikitext-2), file, "
                   "directory, glob, .jsonl, .parquet or hf:<dataset>[:<config>]")  # fmt: skip
    add_field(p, "--tokenizer", "tokenizer.kind")
    p.add_argument("--out", required=True, help="dataset directory to write")
    add_field(p, "--val-fraction", "data.val_fraction")
    add_field(p, "--seed", "data.seed")
    add_field(p, "--text-field", "data.text_field")
    add_field(p, "--include", "data.include")
    add_field(p, "--exclude", "data.exclude")
    p.add_argument("--workers", type=count(0, note="0: one per CPU"), default=0, help="tokenizer workers (0: one per "
                   "CPU)")  # fmt: skip
    p.add_argument("--shard-tokens", type=count(1), default=100_000_000, help="tokens per shard file")
    p.add_argument("--force", action="store_true", help="rebuild even if the directory is already prepared")
    p.add_argument("--decontaminate", action="store_true", help="drop documents that share a 13-gram with an eval "
                   "task (by default they are kept and each task's count is printed: data.contamination)")  # fmt: skip
    p.add_argument("--no-contamination-check", action="store_true", help="skip the 13-gram check against the eval "
                   "tasks")  # fmt: skip

    dt = group(sub, "data", "inspect, measure and clean corpora and dataset directories")
    p = add(dt, "info", "core:cmd_data_info", "print a dataset directory's meta (tokenizer, counts, sources)")
    p.add_argument("dir")
    p = add(dt, "stats", "core:cmd_data_stats", "statistics of corpora or dataset directories: sizes, length "
            "histograms, duplicates, boilerplate, characters, language mix, top tokens and n-grams",
            DATA_STATS_HELP)  # fmt: skip
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="corpus sources (as for slm prepare) or prepared "
                   "dataset directories; several are a mixture, reported per source and together")  # fmt: skip
    p.add_argument("--out", type=out_dir, help="folder for stats.md, stats.json, stats.html and PNG charts "
                   "(default: print the summary only)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--tokenizer", default="auto", help="tokens are counted with: auto (a dataset's own, else gpt2), "
                   "gpt2, a tokenizer/dataset/run directory, or none")  # fmt: skip
    p.add_argument("--max-bytes", type=count(0, note="0: all"), default=0, help="read at most this much text of "
                   "each source (0: all)")  # fmt: skip
    add_field(p, "--text-field", "data.text_field")
    add_field(p, "--near-threshold", "data.near_threshold")
    p.add_argument("--workers", type=count(0, note="0: one per CPU on a large corpus"), default=0,
                   help="MinHash worker processes (0: one per CPU from 8 MB of text)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = add(dt, "clean", "core:cmd_data_clean", "write a cleaned corpus (quality filters, exact/near dedup, eval "
            "decontamination) with a report of what each rule removed", DATA_CLEAN_HELP)  # fmt: skip
    p.add_argument("source", type=corpus, help="corpus: built-in name, file, directory, glob, .jsonl, .parquet or "
                   "hf:<dataset>")  # fmt: skip
    p.add_argument("--out", required=True, type=out_dir, help="folder to write corpus.jsonl (or .parquet), "
                   "report.md and report.json into")  # fmt: skip
    p.add_argument("--dedup", default="exact,near", help="comma-separated: exact, near (none: no dedup; the same for "
                   "--filters)")  # fmt: skip
    p.add_argument("--filters", default="boilerplate,short,encoding,gopher,gopher-repetition", help="comma-separated "
                   "filters (boilerplate, short, encoding, gopher, gopher-repetition, c4, fineweb)")  # fmt: skip
    p.add_argument("--decontaminate", metavar="TASKS", help="remove documents sharing a 13-gram with these eval "
                   "tasks (comma-separated, or all); without it overlap with every task present is only "
                   "reported")  # fmt: skip
    p.add_argument("--no-contamination-check", action="store_true", help="do not check against the eval tasks")
    add_field(p, "--near-threshold", "data.near_threshold")
    p.add_argument("--format", default="jsonl", choices=("jsonl", "parquet"), help="output format")
    add_field(p, "--text-field", "data.text_field")
    add_field(p, "--include", "data.include")
    add_field(p, "--exclude", "data.exclude")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--workers", type=count(0, note="0: one per CPU on a large corpus"), default=0,
                   help="worker processes (0: one per CPU from 8 MB of text)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(
        sub,
        "train",
        "core:cmd_train",
        "train a model (no arguments: the embedded default, a few minutes on a CPU)",
        TRAIN_HELP,
    )
    p.add_argument("config", nargs="?", type=config_arg, help="preset name or TOML file (default: the embedded "
                   "default preset)")  # fmt: skip
    add_overrides(p, "dotted overrides typed against the config, e.g. optim.lr=3e-4 (also after the options)")
    p.add_argument("--name", help="run name (default: derived from the preset and overrides)")
    p.add_argument("--resume", metavar="RUN", type=run_dir, help="continue runs/<name> exactly from its newest intact "
                   "checkpoint (one whose files fail their checksums is named and skipped)")  # fmt: skip
    p.add_argument("--checkpoint", metavar="STEP", help="with --resume: the checkpoint to continue from (STEP, latest "
                   "or best); later ones are set aside, not deleted")  # fmt: skip
    p.add_argument("--allow-changed", action="store_true", help="with --resume: accept changed optimizer/schedule")
    p.add_argument("--init-from", metavar="RUN", type=run_dir, help="start from RUN's best weights (continued "
                   "pretraining on new text: add data.source=...); a config file, if given, must describe the same "
                   "model")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.add_argument("--nproc", type=count(0, note="0: this process"), default=0, metavar="N", help="train with N "
                   "processes on this machine (torchrun; one per GPU, or CPU cores shared out); train.parallel picks "
                   "ddp or fsdp")  # fmt: skip

    p = add(sub, "sample", "core:cmd_sample", "generate text from a trained run (streams to the terminal)")
    p.add_argument("run", type=run_dir, help="run directory, e.g. runs/default")
    add_checkpoint(p)
    p.add_argument("--prompt", default="", help="text to continue (default: start from end-of-text)")
    add_sampling(p, max_new_tokens=200, temperature=0.8, top_k=0)
    p.add_argument("--seed", type=int, default=None, help="make the sample reproducible")
    p.add_argument("--num-samples", type=count(1), default=1, help="how many samples (separated by ---)")
    p.add_argument("--stop", action="append", default=[], help="stop when this text appears (repeatable)")


def register_study(sub) -> None:
    """Add this module's verbs to the `slm` parser."""
    p = add(sub, "plot", "study:cmd_plot", "chart loss, val loss, gradient norm, LR and tokens/s of one or more runs")
    p.add_argument("runs", nargs="+", metavar="RUN", type=run_dir, help="run directories (several are overlaid)")
    p.add_argument("--x", choices=("step", "tokens", "time"), default="step", help="x axis")
    p.add_argument("--out", default="plot.png", type=image_out, help="PNG file to write")
    p.add_argument("--logy", action="store_true", help="log scale for the loss axis")

    p = add(
        sub, "doctor", "study:cmd_doctor", "diagnose a run: spikes, divergence, plateaus, clipping, overfitting, ..."
    )
    p.add_argument("run", type=run_dir, help="run directory")

    p = add(sub, "report", "study:cmd_report", "write RUN/report.md and a self-contained RUN/report.html")
    p.add_argument("run", type=run_dir, help="run directory")
    p.add_argument("--samples", type=count(0, note="0: none"), default=2, help="sample generations to include (0: "
                   "none)")  # fmt: skip

    p = add(sub, "inspect", "study:cmd_inspect", "see inside a model on one prompt: tokens, next-token "
            "probabilities and entropy, attention maps, logit lens (an HTML page)", INSPECT_HELP)  # fmt: skip
    p.add_argument("run", help="run directory (or a `slm quantize` output)")
    p.add_argument("--prompt", required=True, help="the text to look at, or @FILE for a file's text")
    p.add_argument("--out", help="folder for inspect.html and the PNGs (default: RUN/inspect)")
    add_checkpoint(p)
    p.add_argument("--top-k", type=int, default=5, help="most likely next tokens to list per position")
    p.add_argument("--layers", type=int, nargs="+", metavar="L", help="layers whose attention to draw, from 0 "
                   "(default: all)")  # fmt: skip
    p.add_argument("--heads", type=int, nargs="+", metavar="H", help="heads to draw in each layer, from 0 "
                   "(default: all)")  # fmt: skip

    p = add(sub, "tokenize", "study:cmd_tokenize", "show how a tokenizer splits a text: tokens, ids, bytes, bytes "
            "per token; --compare two tokenizers", TOKENIZE_HELP)  # fmt: skip
    p.add_argument("tokenizer", help="run, dataset or tokenizer directory, or gpt2")
    p.add_argument("text", help="the text, or @FILE for a file's text")
    p.add_argument("--compare", metavar="OTHER", help="a second tokenizer (directory or gpt2), shown side by side")
    p.add_argument("--limit", type=int, default=100, help="tokens to list one per line (0: all)")

    p = add(sub, "runs", "study:cmd_runs", "table of runs: name, parent, params, tokens, steps, val loss, status")
    p.add_argument("dir", nargs="?", default="runs", help="folder holding run directories")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    p = add(
        sub,
        "ablate",
        "study:cmd_ablate",
        "ablation study: vary one thing at a time over seeds; verdicts vs noise",
        ABLATE_HELP,
    )
    p.add_argument("config", nargs="?", type=config_arg, help="base preset name or TOML file (default: the "
                   "embedded default)")  # fmt: skip
    add_overrides(p, "dotted overrides applied to the base, e.g. train.max_steps=300")
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        required=True,
        help="a config key and the values to try (repeatable), e.g. optim.lr=1e-3,3e-4",
    )
    p.add_argument("--seeds", type=count(1), default=3, help="seeds per arm")
    p.add_argument("--grid", action="store_true", help="every combination of the --vary values, not one at a time")
    p.add_argument("--vary-data-seed", action="store_true", help="vary the data order with the seed too")
    p.add_argument("--parallel", type=count(1), default=1, help="train N runs at once in subprocesses")
    p.add_argument("--out", help="study directory (default: <train.out_dir>/ablate-<base name>)")
    p.add_argument("--no-train", action="store_true", help="only recompute the summary from finished runs")

    sc = group(sub, "scaling", "scaling laws: compute calculator, map of known models, fits, sweeps")
    p = add(
        sc,
        "calc",
        "study:cmd_scaling_calc",
        "parameters <-> Chinchilla tokens, compute, budgets, LR for a new batch",
        SCALING_CALC_HELP,
    )
    p.add_argument("--params", help="model parameters, e.g. 124M")
    p.add_argument("--tokens", help="training tokens, e.g. 2.5B")
    p.add_argument("--config", type=config_arg, help="preset or TOML: exact parameters and FLOPs/token (with the "
                   "attention term)")  # fmt: skip
    p.add_argument("--budget", help="compute budget in FLOPs (e.g. 1e18) or wall time (e.g. 2h; needs --run or "
                   "--measure): gives the compute-optimal N and D")  # fmt: skip
    p.add_argument("--run", type=run_dir, help="a run dir whose measured tokens/s gives this machine's FLOP/s")
    p.add_argument("--measure", action="store_true", help="measure FLOP/s with a few steps of --config's model")
    p.add_argument(
        "--ratio", type=positive(), default=TOKENS_PER_PARAM, help="tokens per parameter (default: %(default)g, "
        "Chinchilla)"
    )  # fmt: skip
    p.add_argument("--lr", type=positive(), help="the current learning rate (with --batch)")
    p.add_argument("--batch", type=positive(), nargs=2, metavar=("OLD", "NEW"), help="batch change for the sqrt LR "
                   "rule")  # fmt: skip
    p = add(
        sc, "map", "study:cmd_scaling_map", "PNG of known models on parameters vs tokens, the 20x line and your runs"
    )
    p.add_argument("runs", nargs="*", metavar="RUN", type=run_dir, help="run dirs, or folders holding them, to put "
                   "on the map")  # fmt: skip
    p.add_argument("--out", default="scaling-map.png", type=image_out, help="PNG to write")
    p.add_argument(
        "--ratio",
        type=positive(),
        default=TOKENS_PER_PARAM,
        help="tokens per parameter of the reference line (default: %(default)g)",
    )
    p = add(
        sc, "fit", "study:cmd_scaling_fit", "fit L(N, D) = E + A/N^a + B/D^b and the L(C) frontier to finished runs"
    )
    p.add_argument("runs", nargs="+", metavar="RUN", type=run_dir, help="run dirs, or folders holding them (>= 5 "
                   "runs)")  # fmt: skip
    p.add_argument("--out", default="scaling-fit.png", type=image_out, help="PNG to write")
    p.add_argument("--bootstrap", type=count(0, note="0: none"), default=100, help="bootstrap resamples for "
                   "uncertainties (0: none)")  # fmt: skip
    p.add_argument("--budget", help="extrapolate loss and optimal N, D to this many FLOPs, e.g. 1e18")
    p.add_argument("--json", action="store_true", help="print the fit as JSON")
    p = add(
        sc,
        "sweep",
        "study:cmd_scaling_sweep",
        "train the sizes x compute grid a fit needs, then fit and plot",
        SCALING_SWEEP_HELP,
    )
    p.add_argument("config", nargs="?", type=config_arg, help="base preset or TOML (default: the embedded default)")
    add_overrides(p, "dotted overrides applied to every run")
    p.add_argument("--budget", required=True, help="total compute: FLOPs (e.g. 2e13) or wall time (e.g. 30m)")
    p.add_argument("--sizes", default="2x32,2x48,2x64,4x64", help="model sizes as n_layer x n_embd, comma-separated")
    p.add_argument("--levels", type=count(1), default=3, help="compute levels per size (L(C) needs 3)")
    p.add_argument("--level-ratio", type=number(float, Range(1, low_open=True)), default=3.0, help="compute ratio "
                   "between levels (> 1)")  # fmt: skip
    p.add_argument("--out", default="runs/sweep", help="folder for the runs and the fit")
    p.add_argument("--parallel", type=count(1), default=1, help="train N runs at once in subprocesses")
    p.add_argument("--bootstrap", type=count(0, note="0: none"), default=100, help="bootstrap resamples for "
                   "uncertainties (0: none)")  # fmt: skip


def register_ship(sub) -> None:
    """Add this module's verbs to the `slm` parser."""
    p = add(
        sub, "sft", "ship:cmd_sft", "supervised fine-tuning of a run on chat/instruction data (a child run)", SFT_HELP
    )
    p.add_argument("parent", metavar="PARENT_RUN", type=run_dir, help="the run to fine-tune")
    sft_data = text_file("file of SFT records", "pass a .json or .jsonl file of alpaca, messages or prompt/completion "
                         "records")  # fmt: skip
    p.add_argument("--data", required=True, type=sft_data, help="alpaca .json/.jsonl, messages/ShareGPT .jsonl or "
                   "prompt/completion .jsonl")  # fmt: skip
    add_overrides(p, "dotted overrides, e.g. lora.rank=8 train.max_steps=500 (also after the options)")
    p.add_argument("--checkpoint", default="best", help="parent checkpoint: best | latest | STEP")
    p.add_argument("--name", help="child run name (default: <parent>-sft or <parent>-lora)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    p = add(sub, "embed-train", "ship:cmd_embed_train", "contrastive fine-tuning of a run into a sentence-embedding "
            "model (a child run)", EMBED_TRAIN_HELP)  # fmt: skip
    p.add_argument("parent", metavar="PARENT_RUN", type=run_dir, help="the run to fine-tune")
    pairs_data = text_file("pairs file", "pass a .jsonl/.tsv pairs file, an STS-B or SICK file, or text for simcse")
    p.add_argument("--data", required=True, type=pairs_data, help="pairs: .jsonl (anchor, positive, negative(s)) or "
                   ".tsv, STS-B train, SICK.txt, or text with embed.pairs=simcse")  # fmt: skip
    add_overrides(p, "dotted overrides, e.g. embed.pooling=last embed.learn_temperature=true lora.rank=8")
    p.add_argument("--checkpoint", default="best", help="parent checkpoint: best | latest | STEP")
    p.add_argument("--name", help="child run name (default: <parent>-embed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    p = add(sub, "embed", "ship:cmd_embed", "sentence embeddings of texts with a run (L2-normalized vectors)",
            EMBED_HELP)  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory (pretrained, sft, lora or embed-train)")
    p.add_argument("--input", required=True, help="a text file (one text a line; empty lines skipped) or .jsonl")
    p.add_argument("--out", help="vectors.npy (float32 matrix) or vectors.jsonl (default: JSON lines on stdout)")
    p.add_argument("--pooling", choices=("mean", "last", "eos"), help="how token states become one vector "
                   "(default: the run's embed.pooling)")  # fmt: skip
    p.add_argument("--instruction", default="", help="prefix put before every text (e.g. the run's "
                   "embed.instruction, for queries)")  # fmt: skip
    p.add_argument("--batch-size", type=count(1), default=64, help="texts per forward pass")
    p.add_argument("--no-normalize", action="store_true", help="keep raw pooled vectors (not unit length)")
    p.add_argument("--text-field", default="text", help=".jsonl input: the field holding the text")
    add_checkpoint(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(sub, "index", "ship:cmd_index", "build a semantic search index of documents with a run's embeddings",
            INDEX_HELP)  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory (pretrained, sft, lora or embed-train)")
    p.add_argument("--input", required=True, help="documents: a text file, .jsonl, .parquet or a directory of them")
    p.add_argument("--out", required=True, type=out_dir, help="index directory to write")
    p.add_argument("--pooling", choices=("mean", "last", "eos"), help="how token states become one vector "
                   "(default: the run's embed.pooling)")  # fmt: skip
    p.add_argument("--instruction", help="prefix put before each query at search time (default: the run's "
                   "embed.instruction); documents get none")  # fmt: skip
    p.add_argument("--chunk", type=count(0, note="0: the model's context"), default=0, help="tokens per passage at "
                   "most; longer documents are split at paragraphs, lines, words (0: the model's context)")  # fmt: skip
    p.add_argument("--text-field", default="text", help=".jsonl / .parquet input: the field holding the text")
    p.add_argument("--batch-size", type=count(1), default=64, help="passages per forward pass")
    add_checkpoint(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing index at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(sub, "search", "ship:cmd_search", "the passages of an index closest to a query (exact cosine)",
            SEARCH_HELP)  # fmt: skip
    p.add_argument("index", help="index directory (slm index)")
    p.add_argument("query", help="the text to search for")
    p.add_argument("-k", type=count(1), default=5, help="passages to return")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.add_argument("--run", type=run_dir, help="embed the query with this run instead of the one the index names "
                   "(its tokenizer must match)")  # fmt: skip
    p.add_argument("--checkpoint", help="checkpoint of the run: best | latest | STEP (default: the one that built "
                   "the index)")  # fmt: skip

    lo = group(sub, "lora", "LoRA adapters: merge them into a full model")
    p = add(lo, "merge", "ship:cmd_lora_merge", "write a new run dir with the adapters folded into full weights")
    p.add_argument("run", type=run_dir, help="a run fine-tuned with lora.rank > 0")
    add_checkpoint(p)
    p.add_argument("--name", help="name of the merged run (default: <run>-merged)")

    p = add(sub, "chat", "ship:cmd_chat", "chat with a fine-tuned run in the terminal (/reset, /system TEXT, /quit)")
    p.add_argument("run", type=run_dir, help="run directory of a fine-tuned (sft) run")
    add_checkpoint(p)
    p.add_argument("--system", default="", help="system message")
    add_sampling(p, max_new_tokens=256, temperature=0.7, top_k=50)
    p.add_argument("--seed", type=int, default=None, help="make the replies reproducible")

    p = add(
        sub,
        "eval",
        "ship:cmd_eval",
        "evaluate a run: val loss/ppl/bpb and zero-shot benchmarks (lm-eval scoring)",
        EVAL_HELP,
    )
    p.add_argument("run", type=run_dir, help="run directory")
    p.add_argument(
        "--tasks",
        default="val,hellaswag",
        help="comma-separated: val, hellaswag, arc_easy, arc_challenge, piqa, winogrande, lambada; embedding tasks "
        "sts-b, sts-b-dev, sick-r, sts12 .. sts16, wiki-retrieval (pooled as the run's embed.pooling); code tasks "
        "fim-line, next-line (held-out .py files: --data DIR, else python-stdlib's val split)",
    )
    add_field(p, "--limit", "eval.limit")
    add_checkpoint(p)
    p.add_argument("--data", type=text_file("text file or dataset directory", "pass --data FILE_OR_DATASET_DIR",
                   dir_ok=True), help="val task: a text file or dataset dir (else the run's dataset, val split); "
                   "code tasks: a folder of .py files (else python-stdlib's val split)")  # fmt: skip
    p.add_argument("--stride", type=count(0, note="0: block size"), default=0, help="val task: sliding-window stride "
                   "in tokens (0: block size)")  # fmt: skip
    p.add_argument("--val-tokens", type=count(0, note="0: all"), default=None, help="val task: tokens to score (0: "
                   "all; default: 262144)")  # fmt: skip
    p.add_argument(
        "--task-source",
        default="local",
        choices=("local", "hf"),
        help="benchmark items: local files "
        "under $SLM_DATA_DIR/eval, or hf: the Hugging Face datasets (needs network or the HF cache)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(sub, "score", "ship:cmd_score", "per-unit loss, perplexity, bits per byte and most surprising spans of "
            "text (JSONL)", SCORE_HELP)  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory")
    p.add_argument("--input", required=True, help="a text file, a folder of text files, or a .jsonl file")
    p.add_argument("--unit", default="doc", choices=("doc", "line", "window"), help="doc: each file or JSONL record; "
                   "line: each non-blank line; window: pieces of block_size tokens")  # fmt: skip
    p.add_argument("--out", help="JSONL file to write (default: stdout)")
    p.add_argument("--text-field", default="text", help=".jsonl input: the field holding the text")
    p.add_argument("--stride", type=count(0, note="0: block size"), default=0, help="sliding-window stride in tokens "
                   "for units longer than the block (0: block size)")  # fmt: skip
    p.add_argument("--top-spans", type=count(0), default=3, help="most surprising tokens to report per unit")
    add_checkpoint(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    an = group(sub, "anomaly", "flag out-of-domain text: calibrate a threshold on in-domain text, then detect")
    p = add(an, "fit", "ship:cmd_anomaly_fit", "calibrate a detector on in-domain held-out text and write it (JSON)",
            ANOMALY_FIT_HELP)  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory")
    p.add_argument("--normal", required=True, help="in-domain held-out text: a text file, folder or .jsonl (not the "
                   "training text: its scores are too low)")  # fmt: skip
    p.add_argument(
        "--fpr",
        type=number(float, Range(0, 1, low_open=True, high_open=True)),
        default=0.01,
        help="share of in-domain units to flag: the threshold is the (1 - fpr) quantile of their scores",
    )
    p.add_argument("--out", required=True, help="detector file to write, e.g. detector.json")
    p.add_argument("--score", default="bpb", choices=("bpb", "loss"), help="bpb: bits per byte; loss: nats per token")
    p.add_argument("--unit", default="doc", choices=("doc", "line", "window"), help="what one decision is about")
    p.add_argument("--text-field", default="text", help=".jsonl input: the field holding the text")
    p.add_argument("--stride", type=count(0, note="0: block size"), default=0, help="sliding-window stride in tokens "
                   "(0: block size)")  # fmt: skip
    add_checkpoint(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = add(an, "detect", "ship:cmd_anomaly_detect", "flag each unit of the input whose score is above the "
            "detector's threshold (JSONL)")  # fmt: skip
    p.add_argument("detector", help="detector file written by `slm anomaly fit`")
    p.add_argument("--input", required=True, help="a text file, a folder of text files, or a .jsonl file")
    p.add_argument("--out", help="JSONL file to write (default: stdout)")
    p.add_argument("--labels", help="one label per unit (1/anomaly or 0/normal), in order, or JSON lines "
                   "{\"id\", \"label\"}: report ROC-AUC, PR-AUC and the TPR at the detector's FPR")  # fmt: skip
    p.add_argument("--plot", type=image_out, default="anomaly-scores.png", help="with --labels: the image of both "
                   "classes' score histograms")  # fmt: skip
    p.add_argument("--report", help="with --labels: also write the metrics to this JSON file")
    p.add_argument("--unit", choices=("doc", "line", "window"), help="override the detector's unit")
    p.add_argument("--text-field", help="override the detector's .jsonl text field")
    p.add_argument("--run", type=run_dir, help="score with this run instead of the one the detector names (e.g. a "
                   "moved copy); its tokenizer must be the detector's")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    register_classify(sub)

    p = add(sub, "export", "ship:cmd_export", "export a run's checkpoint: hf (a transformers directory) or gguf "
            "(llama.cpp)")  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory")
    p.add_argument("--format", default="hf", help="hf (a transformers-loadable directory) | gguf (model.gguf for "
                   "llama.cpp; LLaMA-style models) | sentence-transformers (SentenceTransformer(DIR), pooled as the "
                   "run's embed.pooling)")  # fmt: skip
    p.add_argument("--type", choices=("f16", "q8_0"), help="gguf: tensor type of the matrices (default: f16)")
    p.add_argument("--out", required=True, help="directory to write (gguf: it holds model.gguf)")
    add_checkpoint(p)
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = add(sub, "quantize", "ship:cmd_quantize", "int8/bf16 copy of a run, with a size/speed/quality report vs fp32")
    p.add_argument("run", type=run_dir, help="run directory")
    p.add_argument(
        "--method",
        default="int8-dynamic",
        choices=("int8-dynamic", "int8-weight", "bf16"),
        help="int8-dynamic: fastest on CPU; int8-weight: int8 on disk, fp32 compute; bf16",
    )
    p.add_argument("--out", help="directory to write (default: <run>-<method> beside the run)")
    add_checkpoint(p)
    p.add_argument("--data", type=text_file("text file or dataset directory", "pass --data FILE_OR_DATASET_DIR",
                   dir_ok=True), help="dataset dir or text file for the val loss (default: the run's "
                   "dataset)")  # fmt: skip
    p.add_argument("--eval-tokens", type=count(0, note="0: all"), default=32768, help="val tokens to score (0: all)")
    p.add_argument("--no-report", action="store_true", help="skip the comparison with fp32")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = add(
        sub, "serve", "ship:cmd_serve", "OpenAI-compatible HTTP API and web chat page for a run (or quantized model)"
    )
    p.add_argument("run", type=run_dir, help="run directory or `slm quantize` output")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=count(1, 65535), default=8000, help="port to listen on")
    add_checkpoint(p)
    p.add_argument("--max-tokens-cap", type=count(1), default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--max-batch", "--slots", dest="max_batch", type=count(1), default=16, help="requests decoded "
                   "together, one batched forward per token (continuous batching); --slots is its former "
                   "name")  # fmt: skip
    p.add_argument("--max-queue", type=count(0), default=64, help="requests that may wait for a place in the batch; "
                   "one more is answered 429 (server busy) at once")  # fmt: skip
    p.add_argument("--threads", type=count(0, 1024, note="0: torch's choice"), default=None, help="torch CPU threads "
                   "(default: 1 on up to 4 cores, else min(4, cores/2): holds up on a busy CPU; 0: torch's own "
                   "choice)")  # fmt: skip
    p.add_argument("--allow-host", action="append", default=[], metavar="HOST", help="also answer requests "
                   "addressed to HOST (a name, name:port, or '*' for any; repeatable); by default only localhost, "
                   "127.0.0.1 and [::1] at --port, against DNS rebinding")  # fmt: skip
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN", help="let web pages of ORIGIN "
                   "(e.g. http://localhost:3000, or '*' for any; repeatable) call the API from a browser; by default "
                   "only the server's own pages may")  # fmt: skip

    p = add(sub, "complete", "ship:cmd_complete", "autocomplete at a cursor: continue a prefix, or fill in the middle "
            "between a prefix and a suffix (a model trained with data.fim_rate > 0)")  # fmt: skip
    p.add_argument("run", type=run_dir, help="run directory or `slm quantize` output")
    p.add_argument("--prefix", required=True, help="the text before the cursor, or @FILE for a file's text")
    p.add_argument("--suffix", default=None, help="the text after the cursor, or @FILE (needs a model trained with "
                   "data.fim_rate > 0)")  # fmt: skip
    p.add_argument("--mode", choices=("line", "block"), default="line", help="line: stop at the end of the line; "
                   "block: at the end of the middle (or --max-new-tokens)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=count(1), default=None, help="most tokens to generate (default: 48 in "
                   "line mode, 128 in block mode)")  # fmt: skip
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the usual for completion)")
    p.add_argument("--seed", type=int, default=None, help="make a sampled completion reproducible")
    add_checkpoint(p)
    p.add_argument("--json", action="store_true", help="print the completion with its counts and timing as JSON")

    p = add(
        sub,
        "import-hf",
        "ship:cmd_import_hf",
        "turn a local Hugging Face checkpoint (GPT-2, Llama, Qwen2, Qwen3, "
        "Phi-3) or a llama.cpp .gguf file of one into a run dir",
    )
    p.add_argument("dir", help="Hugging Face model directory (config.json, model.safetensors, tokenizer.json) or a "
                   ".gguf file (dequantized to fp32; tokenizer and chat template from its metadata)")  # fmt: skip
    p.add_argument("--out", required=True, help="run directory to create, e.g. runs/gpt2")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")

    p = add(
        sub,
        "lm-eval",
        "ship:cmd_lm_eval",
        "run lm-evaluation-harness with the slmkit model and the local task files",
        "lm-evaluation-harness's command line (needs lm-eval installed) with `--model slmkit` registered and\n"
        "the local tasks slm_hellaswag, slm_arc_easy, slm_arc_challenge, slm_piqa, slm_winogrande, slm_lambada\n"
        "available. Put its arguments after --:\n"
        "  slm lm-eval -- --model slmkit --model_args run=runs/x --tasks slm_hellaswag --limit 100",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="lm_eval arguments")

    p = add(
        sub, "compare", "ship:cmd_compare", "generations of several models side by side, each scored by every model"
    )
    p.add_argument("models", nargs="+", metavar="MODEL", type=run_dir, help="run directories or Hugging Face model "
                   "directories")  # fmt: skip
    p.add_argument("--prompts", required=True, type=text_file("prompts file", "write one prompt per line"),
                   help="text file, one prompt per line (\\n for a newline), or .jsonl")  # fmt: skip
    p.add_argument("--out", default="compare", type=out_dir, help="folder for compare.md and compare.html")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--num-seeds", type=count(1), default=1, help="samples per prompt and model, seeds seed..seed+N-1")
    add_sampling(p, max_new_tokens=64, temperature=0.8, top_k=0, top_p=False)
    p.add_argument("--checkpoint", default="best", help="checkpoint of the run dirs")


DATA_STATS_HELP = """statistics of one or more corpora (a mixture: reported per source and together): documents, tokens,
bytes; length histograms; exact and near (MinHash, word 5-grams) duplicate rates; lines repeated across documents
and the byte share of boilerplate lines; character classes and a language proxy (dominant script, and English
function words for Latin script); top tokens, words and word 3-grams (counted over the first 32 MB of each source).
With --out: stats.md, stats.json and an offline stats.html with PNG charts.

examples:
  slm data stats data/web.jsonl
  slm data stats wiki/ web.jsonl --out stats-mix
  slm data stats data/python-stdlib-bpe4096 --out stats-stdlib      a prepared dataset (its tokens, decoded)
"""


DATA_CLEAN_HELP = """write a cleaned copy of a corpus: OUT/corpus.jsonl ({"text", "source"} per line; or .parquet) that
slm prepare and data.source read, and OUT/report.md + report.json: what each rule removed (documents, bytes,
examples) and the eval overlap found.

order: exact dedup -> near dedup (first copy kept) -> boilerplate lines -> filters -> eval decontamination.
filters: boilerplate (lines seen in 2+ earlier documents: menus, cookie banners), short (< 50 words), encoding
(mojibake, replacement and control characters), and datatrove's gopher (Gopher quality rules), gopher-repetition
(repeated lines and n-grams: keyword spam), c4 (C4 line rules), fineweb (FineWeb's rules).
decontamination: 13-gram overlap (as GPT-3 and lm-eval) with the eval tasks under $SLM_DATA_DIR/eval.

examples:
  slm data clean crawl.jsonl --out crawl-clean
  slm data clean crawl.jsonl --out crawl-clean --filters gopher,c4 --dedup near --decontaminate all
  slm prepare crawl-clean/corpus.jsonl --tokenizer gpt2 --out data/crawl-clean
"""


TRAIN_HELP = """train a model and write a run directory (runs/<name>/: config, tokenizer, metrics.jsonl, checkpoints)

examples:
  slm train                                          the embedded default (python-stdlib corpus)
  slm train shakespeare-char                         nanoGPT's CPU recipe on TinyShakespeare
  slm train shakespeare-char optim.lr=3e-4           one change, run named shakespeare-char.lr=3e-4
  slm train configs/my.toml train.max_steps=200 --name my-test
  slm train --resume runs/shakespeare-char           continue exactly where it stopped (Ctrl-C or SIGTERM saves)
  slm train --resume runs/shakespeare-char --checkpoint 2000   continue from an earlier checkpoint
  slm train --init-from runs/default data.source=docs/   continued pretraining of a run on new text
  slm train gpt2-124m --nproc 8 train.parallel=fsdp  8 processes on this machine (docs/distributed.md)
"""


ABLATE_HELP = """run an ablation study: each --vary value changed alone against the base (all combinations with --grid),
each arm trained with --seeds seeds; then per arm the final val loss mean +- std with a 95% CI, the delta against
the base in nats, a Welch t-test (and bootstrap) of the delta, and a verdict: better, worse, or "not
distinguishable from noise" when the 95% CI of the delta covers 0.

seeds: seed-k sets train.seed (model init and dropout) to base seed + k - 1. The data order (train.data_seed)
stays the base's, so every arm sees the same batches and an arm's spread measures init noise only. With
--vary-data-seed the data order changes with the seed too and the spread is the full run-to-run noise.
Varying optim.lr scales optim.min_lr with it, so every LR arm has the same schedule shape.

the usual order of ablations (each settles what the next one needs):
  1. learning rate      nothing else is comparable at a bad LR
  2. warmup             then the schedule around that LR
  3. batch size         re-tune the LR with it (square-root rule: slm scaling calc --lr LR --batch OLD NEW)
  4. optimizer          adamw vs muon, betas, weight decay
  5. architecture       norm, mlp, pos_emb, qk_norm, width/depth

the study dir is resumable: rerun the same command; finished runs are skipped, interrupted ones resumed, crashed
ones moved aside into <arm>/.failed/ and rerun. Outputs: summary.md, summary.json, ablation.png, curves.png.

examples:
  slm ablate configs/base.toml --vary optim.lr=1e-3,3e-4,1e-4 --seeds 3
  slm ablate configs/base.toml --vary model.norm=rmsnorm --vary model.mlp=swiglu --grid --seeds 3
  slm ablate configs/base.toml --vary optim.warmup=0,200 --seeds 5 --out runs/warmup --parallel 2
"""


SCALING_CALC_HELP = """scaling calculator

examples:
  slm scaling calc --params 124M                      Chinchilla-optimal tokens (20x) and compute (6ND)
  slm scaling calc --config gpt2-124m --tokens 10B     exact FLOPs/token of a config (6N + attention)
  slm scaling calc --budget 1e18                      compute-optimal N and D for a FLOP budget
  slm scaling calc --budget 2h --run runs/default     ... for two hours at the speed a run measured here
  slm scaling calc --lr 3e-3 --batch 16 64            square-root rule: LR for a 4x larger batch
"""


SCALING_SWEEP_HELP = """train a grid of model sizes x compute levels within a total budget, then fit L(N, D) and L(C)

Level j gives every size c0 * level_ratio^j FLOPs, so each size is trained to several token counts and each compute
level is tried at several sizes: what both fits need. Runs are ordinary run dirs under --out; rerun to resume.

examples:
  slm scaling sweep tiny --budget 30m                 half an hour of this machine (speed measured first)
  slm scaling sweep tiny --budget 2e13 --sizes 2x32,2x64,4x64,4x128 --levels 3
"""


INSPECT_HELP = """see inside a model on one prompt: writes RUN/inspect/inspect.html (self-contained, opens offline)
and its PNGs. The page shows the prompt's tokens (ids, bytes, whitespace made visible); at each position the most
likely next tokens and the entropy (nats and bits) with what is normal at this vocabulary size; every layer's
attention per head as heatmaps; and the logit lens: the token each layer's residual stream would predict through
the final norm and the head.

Layers and heads count from 0. A prompt longer than the model's context is cut from the left (the page says so).

examples:
  slm inspect runs/shakespeare-char --prompt "ROMEO: But soft, what light"
  slm inspect runs/default --prompt @snippet.py --layers 0 3 --heads 0 1 --out inspect-default
"""


TOKENIZE_HELP = """show how a tokenizer splits a text: each token with its id and bytes, the bytes per token and the
tokenizer's fingerprint. With --compare, two tokenizers side by side (token counts and bytes per token of both).

A tokenizer is a run, dataset or tokenizer directory (char and bpe:N are learned from a corpus, so they come from a
directory), or gpt2.

examples:
  slm tokenize runs/default $'def main():\\n    return 0'   (bash's $'..' turns \\n into a newline)
  slm tokenize runs/shakespeare-char @notes.txt --compare gpt2
"""


def register_classify(sub) -> None:
    """`slm classify train|predict|eval`."""
    cl = group(sub, "classify", "text classification: fine-tune a run to answer with a label, predict, evaluate")
    p = add(cl, "train", "ship:cmd_classify_train", "fine-tune a run to continue \"<text>\\nLabel:\" with the label "
            "(a child run; loss on the label tokens only)", CLASSIFY_HELP)  # fmt: skip
    p.add_argument("parent", metavar="PARENT_RUN", type=run_dir, help="the run to fine-tune")
    p.add_argument("--data", required=True, help="labelled .jsonl: one object a line with the text and label fields")
    p.add_argument("--text-field", default="text", help="field holding the text")
    p.add_argument("--label-field", default="label", help="field holding the label")
    add_overrides(p, "dotted overrides, e.g. train.max_steps=500 optim.lr=1e-4 (also after the options)")
    p.add_argument("--checkpoint", default="best", help="parent checkpoint: best | latest | STEP")
    p.add_argument("--name", help="child run name (default: <parent>-classify)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    p = add(cl, "predict", "ship:cmd_classify_predict", "label each document: every label's likelihood is scored (no "
            "generation); JSONL of label, probability and all label probabilities")  # fmt: skip
    p.add_argument("run", type=run_dir, help="a run made by `slm classify train`")
    p.add_argument("--input", required=True, help=".jsonl (one document a record) or a text file (one a line)")
    p.add_argument("--text-field", help=".jsonl input: the field holding the text (default: the training one)")
    p.add_argument("--out", help="JSONL file to write (default: stdout)")
    add_checkpoint(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = add(cl, "eval", "ship:cmd_classify_eval", "accuracy, macro-F1, confusion matrix (PNG) and calibration error "
            "on labelled data")  # fmt: skip
    p.add_argument("run", type=run_dir, help="a run made by `slm classify train`")
    p.add_argument("--data", required=True, help="labelled .jsonl (held out from training)")
    p.add_argument("--text-field", help="field holding the text (default: the training one)")
    p.add_argument("--label-field", help="field holding the label (default: the training one)")
    p.add_argument("--plot", type=image_out, default="confusion.png", help="image of the confusion matrix")
    p.add_argument("--report", help="also write the metrics to this JSON file")
    p.add_argument("--predictions", help="also write each record's prediction to this JSONL file")
    add_checkpoint(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


CLASSIFY_HELP = """fine-tune a run as a classifier: each record becomes the prompt "<text>\\nLabel:" and the answer
" <label>", trained through `slm sft` (loss on the label tokens only). The child run holds classify.json (labels,
template, how many tokens of a text fit in the block; longer texts are cut to their start). Prediction scores every
label's likelihood, so the answer is always one of the labels.

examples:
  slm classify train runs/x --data train.jsonl --text-field text --label-field label train.max_steps=500
  slm classify predict runs/x-classify --input new.jsonl --out predictions.jsonl
  slm classify eval runs/x-classify --data test.jsonl --plot confusion.png --report metrics.json
"""

SFT_HELP = """fine-tune a run on instruction or chat data: loss only on the assistant's replies, a held-out split with
masked val loss, a child run dir that records its parent run and checkpoint. Same loop as `slm train`.

data formats (chosen from the first record, or data.format=...):
  alpaca             {"instruction", "input", "output"} (.json array or .jsonl)
  messages           {"messages": [{"role", "content"}, ...]} or ShareGPT {"conversations": [{"from", "value"}]}
  prompt_completion  {"prompt", "completion"}

examples:
  slm sft runs/default --data alpaca.json                        full fine-tuning
  slm sft runs/default --data chats.jsonl lora.rank=8            LoRA: only adapters train
  slm sft runs/default --data alpaca.json data.packing=false     one example per row (padded)
  slm lora merge runs/default-lora                               then: slm chat runs/default-lora-merged
"""


EVAL_HELP = """evaluate a run; results go to RUN/evals/<task>.json and a table with chance and reference models

tasks: val (loss, perplexity, bits per byte on the run's val split, or --data), hellaswag, arc_easy, arc_challenge,
piqa, winogrande (acc, acc_norm as lm-eval defines them, with standard errors), lambada (last-word accuracy and
perplexity). Task files are read from $SLM_DATA_DIR/eval/<task>/, or with --task-source hf from the Hugging Face
datasets Rowan/hellaswag, allenai/ai2_arc, baber/piqa, allenai/winogrande, EleutherAI/lambada_openai.

examples:
  slm eval runs/x --tasks val,hellaswag --limit 500
  slm eval runs/x --tasks val --data notes.txt --stride 128
  slm eval runs/x --tasks hellaswag,arc_easy --task-source hf
"""

EMBED_TRAIN_HELP = """contrastive fine-tuning (InfoNCE over in-batch and hard negatives) of a run into a
sentence-embedding model: a child run with the training loop's metrics, doctor, checkpoints, exact resume
and LoRA. With the STS Benchmark under $SLM_DATA_DIR, its dev Spearman is logged at every eval
(eval/sts-b-dev/spearman).

examples:
  slm embed-train runs/wiki --data pairs.jsonl                              anchor/positive(/negative) records
  slm embed-train runs/wiki --data sts-train.csv embed.min_score=4          STS-B pairs scored >= 4
  slm embed-train runs/wiki --data SICK.txt embed.learn_temperature=true    entailments, contradictions as negatives
  slm embed-train runs/wiki --data sentences.txt embed.pairs=simcse model.dropout=0.1"""

EMBED_HELP = """sentence embeddings of each line of a text file (or a .jsonl field) with any run: token states
pooled (mean, last or eos) and L2-normalized; a text's vector does not depend on its batch.

examples:
  slm embed runs/wiki-embed --input sentences.txt --out vectors.npy
  slm embed runs/wiki-embed --input queries.txt --instruction "query: " --out q.jsonl"""

INDEX_HELP = """build a semantic search index: documents split into passages of at most --chunk tokens (paragraphs
packed in order; an over-long paragraph split at lines, then words), embedded with the run, written atomically as a
directory (vectors.npy, passages.jsonl with each passage's file and line or row, manifest.json).

examples:
  slm index runs/wiki-embed --input docs/ --out docs.index
  slm index runs/wiki-embed --input articles.parquet --chunk 128 --instruction "query: " --out wiki.index
  slm search wiki.index "who built the first telescope?" -k 5"""

SEARCH_HELP = """the passages of an index closest to a query: the query is embedded as the documents were (same
run, checkpoint, pooling; the index's query instruction before it) and scored by exact cosine similarity.

examples:
  slm search docs.index "how are checkpoints written?"
  slm search docs.index "atomic writes" -k 10 --json"""

SCORE_HELP = """score text with a run: one JSON line per unit with tokens, loss (nats/token), ppl, bpb and the most
surprising tokens (start/end character offsets into the unit's text). A unit's first token is context only; longer
units than the block are scored with a sliding window of --stride tokens (the same numbers as `slm eval --data`).

examples:
  slm score runs/x --input notes.txt
  slm score runs/x --input docs/ --unit line --out scores.jsonl
  slm score runs/x --input data.jsonl --text-field body --stride 128"""

ANOMALY_FIT_HELP = """calibrate an out-of-domain detector: score in-domain held-out units (bits per byte by default)
and set the threshold so that about --fpr of them are flagged; writes run, checkpoint, score, threshold and
calibration statistics to --out.

examples:
  slm anomaly fit runs/x --normal heldout/ --fpr 0.01 --out detector.json
  slm anomaly detect detector.json --input new.jsonl --labels labels.txt --plot hist.png"""
