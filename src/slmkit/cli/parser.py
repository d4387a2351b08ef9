"""Every verb's arguments. Light on purpose: it imports no library code, so `slm --help` and `slm VERB --help`
answer at once. A verb names its handler as "module:function" of `slmkit.cli` (`core`, `study`, `ship`), imported
only when that verb runs.
"""

from __future__ import annotations

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
)
from slmkit.cli.parser_ship import register_ship


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

    p = add(sub, "prepare", "core:cmd_prepare", "tokenize a corpus into a dataset directory (train/val shards)",
            "tokenize a corpus into a dataset directory (train/val shards). A killed prepare, run again with the "
            "same arguments, continues from its last complete shard.")  # fmt: skip
    p.add_argument("source", type=corpus, help="built-in name (python-stdlib, tinyshakespeare, tinystories, "
                   "wikitext-2), file, directory, glob, .jsonl, .parquet or hf:<dataset>[:<config>[:<split>]] (the "
                   "train split unless named, e.g. hf:wikitext:wikitext-2-raw-v1:validation)")  # fmt: skip
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
    p.add_argument("--max-tokens", type=count(1), default=None, help="stop once the dataset holds this many "
                   "tokens, train and val together (the last document is cut; recorded in meta.json) (default: "
                   "all)")  # fmt: skip
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
