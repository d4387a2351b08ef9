"""`slm` verbs that study runs: plot, doctor, report, runs, ablate, scaling."""

from __future__ import annotations

import sys

from slmkit.base.config_files import load_config
from slmkit.cli.base import print_json, split_config_arg
from slmkit.engine.doctor import diagnose, format_findings
from slmkit.runs.table import format_runs, list_runs
from slmkit.study.ablate import format_table, plan_study, run_study
from slmkit.study.plots import plot_runs
from slmkit.study.report import write_report
from slmkit.study.scaling import (
    calculate,
    collect_points,
    fit_runs,
    format_calc,
    measure_flops_per_s,
    parse_count,
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


def cmd_scaling_calc(args) -> None:
    cfg = load_config(args.config) if args.config else None
    fps = None
    if args.run:
        fps = run_flops_per_s(args.run)[1]
    elif args.measure:
        fps = measure_flops_per_s(cfg or load_config(None))[1]
    params, tokens = (parse_count(v) if v else None for v in (args.params, args.tokens))
    c = calculate(params=params, tokens=tokens, budget=args.budget, cfg=cfg, flops_per_s=fps, ratio=args.ratio,
                  lr=args.lr, batch=tuple(args.batch) if args.batch else None)  # fmt: skip
    print(format_calc(c))


def cmd_scaling_map(args) -> None:
    print(plot_map(args.out, collect_points(args.runs) if args.runs else [], ratio=args.ratio))


def cmd_scaling_fit(args) -> None:
    budget = parse_count(args.budget) if args.budget else None
    result = fit_runs(args.runs, out=args.out, n_boot=args.bootstrap, budget=budget)
    print_json({k: v for k, v in result.items() if k != "report"}) if args.json else print(result["report"])
    print(f"wrote {args.out}", file=sys.stderr)


def cmd_scaling_sweep(args) -> None:
    config, overrides = split_config_arg(args.config, args.overrides)
    result = sweep(load_config(config, overrides), args.budget, parse_sizes(args.sizes), levels=args.levels,
                   level_ratio=args.level_ratio, out=args.out, parallel=args.parallel,
                   n_boot=args.bootstrap)  # fmt: skip
    print(result["report"])
    print(f"wrote {args.out}/fit.png, map.png, fit.json", file=sys.stderr)
