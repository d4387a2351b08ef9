"""`slm` verbs that study runs: plot, doctor, report, inspect, tokenize, runs, ablate, scaling."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from slmkit.base.config_files import load_config
from slmkit.base.errors import SlmError
from slmkit.cli.base import print_json, read_text_arg, split_config_arg
from slmkit.engine.doctor import diagnose, format_findings
from slmkit.runs.table import format_runs, list_runs
from slmkit.study.ablate import format_table, plan_study, run_study
from slmkit.study.inspect import (
    format_comparison,
    format_split,
    inspect_run,
    tokenize_text,
    write_inspect_page,
)
from slmkit.study.plots import plot_runs
from slmkit.study.report import write_report
from slmkit.study.scaling import (
    calculate,
    collect_points,
    fit_runs,
    format_calc,
    measure_flops_per_s,
    parse_count,
    parse_duration,
    parse_sizes,
    plot_map,
    run_flops_per_s,
    sweep,
)

# ---------------------------------------------------------------------------------------------------------
# plot, doctor, report, runs


def cmd_plot(args) -> None:
    print(plot_runs(args.runs, args.out, x=args.x, logy=args.logy))


def cmd_doctor(args) -> None:
    print(format_findings(diagnose(args.run)))


def cmd_report(args) -> None:
    md, html = write_report(args.run, samples=args.samples)
    print(md)
    print(html)


def cmd_inspect(args) -> None:
    result = inspect_run(args.run, read_text_arg(args.prompt), checkpoint=args.checkpoint, top_k=args.top_k,
                         layers=args.layers, heads=args.heads)  # fmt: skip
    page = write_inspect_page(result, args.out or Path(args.run) / "inspect")
    if result.cut:
        print(f"note: the prompt is {result.n_prompt_tokens} tokens, longer than the context of {result.block_size}; "
              f"the first {result.cut} were cut", file=sys.stderr)  # fmt: skip
    print(page)


def cmd_tokenize(args) -> None:
    text = read_text_arg(args.text)
    split = tokenize_text(args.tokenizer, text)
    if args.compare:
        print(format_comparison(split, tokenize_text(args.compare, text), args.limit))
    else:
        print(format_split(split, args.limit))


def cmd_runs(args) -> None:
    rows = list_runs(args.dir)
    print_json(rows) if args.json else print(format_runs(rows))


# ---------------------------------------------------------------------------------------------------------
# ablate and scaling


def cmd_ablate(args) -> int:
    config, overrides = split_config_arg(args.config, args.overrides)
    study = plan_study(config, args.vary, seeds=args.seeds, grid=args.grid, out=args.out, overrides=overrides,
                       vary_data_seed=args.vary_data_seed)  # fmt: skip
    summary = run_study(study, parallel=args.parallel, train=not args.no_train)
    print(format_table(summary))
    print(f"\n{summary['seed_note']}\nwrote {study.dir}/summary.md, summary.json, ablation.png, curves.png")
    return 1 if any(r["missing"] for r in summary["arms"]) and not args.no_train else 0


def _amount(flag: str, text: str | None, durations: bool = False) -> float | None:
    """A --params/--tokens/--budget value read as a count (124M, 3e18) or, with `durations`, a wall time (2h):
    SlmError unless it is a finite number > 0. The text itself is returned for a duration (the library reads it)."""
    if text is None:
        return None
    secs = parse_duration(text) if durations else None
    value = secs if secs is not None else parse_count(text)
    if not (math.isfinite(value) and value > 0):
        kinds = "a count such as 124M or 1e18, or a time such as 2h" if durations else "a count such as 124M or 2.5B"
        raise SlmError(f"{flag} must be more than 0 ({kinds}), got {text!r}")
    return value


def cmd_scaling_calc(args) -> None:
    _amount("--budget", args.budget, durations=True)
    cfg = load_config(args.config) if args.config else None
    fps = None
    if args.run:
        fps = run_flops_per_s(args.run)[1]
    elif args.measure:
        fps = measure_flops_per_s(cfg or load_config(None))[1]
    params, tokens = _amount("--params", args.params), _amount("--tokens", args.tokens)
    c = calculate(params=params, tokens=tokens, budget=args.budget, cfg=cfg, flops_per_s=fps, ratio=args.ratio,
                  lr=args.lr, batch=tuple(args.batch) if args.batch else None)  # fmt: skip
    print(format_calc(c))


def cmd_scaling_map(args) -> None:
    print(plot_map(args.out, collect_points(args.runs) if args.runs else [], ratio=args.ratio))


def cmd_scaling_fit(args) -> None:
    budget = _amount("--budget", args.budget)
    result = fit_runs(args.runs, out=args.out, n_boot=args.bootstrap, budget=budget)
    print_json({k: v for k, v in result.items() if k != "report"}) if args.json else print(result["report"])
    print(f"wrote {args.out}", file=sys.stderr)


def cmd_scaling_sweep(args) -> None:
    config, overrides = split_config_arg(args.config, args.overrides)
    _amount("--budget", args.budget, durations=True)
    sizes = parse_sizes(args.sizes)
    if any(n <= 0 for size in sizes for n in size):
        raise SlmError(f"--sizes {args.sizes!r}: every n_layer and n_embd must be at least 1 (e.g. 2x32,4x64)")
    result = sweep(load_config(config, overrides), args.budget, sizes, levels=args.levels,
                   level_ratio=args.level_ratio, out=args.out, parallel=args.parallel,
                   n_boot=args.bootstrap)  # fmt: skip
    print(result["report"])
    print(f"wrote {args.out}/fit.png, map.png, fit.json", file=sys.stderr)
