"""`slm` verbs that study runs: plot, doctor, report, runs, ablate, scaling."""

from __future__ import annotations

import sys

from slmkit.cli.base import add, group, print_json, split_config_arg

# ---------------------------------------------------------------------------------------------------------
# plot, doctor, report, runs


def cmd_plot(args) -> None:
    from slmkit.plots import plot_runs

    print(plot_runs(args.runs, args.out, x=args.x, logy=args.logy))


def cmd_doctor(args) -> None:
    from slmkit.doctor import diagnose, format_findings

    print(format_findings(diagnose(args.run)))


def cmd_report(args) -> None:
    from slmkit.report import write_report

    md, html = write_report(args.run, samples=args.samples)
    print(md)
    print(html)


def cmd_runs(args) -> None:
    from slmkit.runs import format_runs, list_runs

    rows = list_runs(args.dir)
    print_json(rows) if args.json else print(format_runs(rows))


# ---------------------------------------------------------------------------------------------------------
# ablate and scaling


def cmd_ablate(args) -> int:
    from slmkit.ablate import format_table, plan_study, run_study

    config, overrides = split_config_arg(args.config, args.overrides)
    study = plan_study(config, args.vary, seeds=args.seeds, grid=args.grid, out=args.out, overrides=overrides,
                       vary_data_seed=args.vary_data_seed)  # fmt: skip
    summary = run_study(study, parallel=args.parallel, train=not args.no_train)
    print(format_table(summary))
    print(f"\n{summary['seed_note']}\nwrote {study.dir}/summary.md, summary.json, ablation.png, curves.png")
    return 1 if any(r["missing"] for r in summary["arms"]) and not args.no_train else 0


def cmd_scaling_calc(args) -> None:
    from slmkit.config import load_config
    from slmkit.scaling import calculate, format_calc, measure_flops_per_s, parse_count, run_flops_per_s

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
    from slmkit.scaling import collect_points, plot_map

    print(plot_map(args.out, collect_points(args.runs) if args.runs else [], ratio=args.ratio))


def cmd_scaling_fit(args) -> None:
    from slmkit.scaling import fit_runs, parse_count

    budget = parse_count(args.budget) if args.budget else None
    result = fit_runs(args.runs, out=args.out, n_boot=args.bootstrap, budget=budget)
    print_json({k: v for k, v in result.items() if k != "report"}) if args.json else print(result["report"])
    print(f"wrote {args.out}", file=sys.stderr)


def cmd_scaling_sweep(args) -> None:
    from slmkit.config import load_config
    from slmkit.scaling import parse_sizes, sweep

    config, overrides = split_config_arg(args.config, args.overrides)
    result = sweep(load_config(config, overrides), args.budget, parse_sizes(args.sizes), levels=args.levels,
                   level_ratio=args.level_ratio, out=args.out, parallel=args.parallel,
                   n_boot=args.bootstrap)  # fmt: skip
    print(result["report"])
    print(f"wrote {args.out}/fit.png, map.png, fit.json", file=sys.stderr)


def register(sub) -> None:
    """Add this module's verbs to the `slm` parser."""
    p = add(sub, "plot", cmd_plot, "chart loss, val loss, gradient norm, LR and tokens/s of one or more runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several are overlaid)")
    p.add_argument("--x", choices=("step", "tokens", "time"), default="step", help="x axis (default: step)")
    p.add_argument("--out", default="plot.png", help="PNG file to write (default: plot.png)")
    p.add_argument("--logy", action="store_true", help="log scale for the loss axis")

    p = add(sub, "doctor", cmd_doctor, "diagnose a run: spikes, divergence, plateaus, clipping, overfitting, ...")
    p.add_argument("run", help="run directory")

    p = add(sub, "report", cmd_report, "write RUN/report.md and a self-contained RUN/report.html")
    p.add_argument("run", help="run directory")
    p.add_argument("--samples", type=int, default=2, help="sample generations to include (0: none)")

    p = add(sub, "runs", cmd_runs, "table of runs: name, parent, params, tokens, steps, val loss, status")
    p.add_argument("dir", nargs="?", default="runs", help="folder holding run directories (default: runs)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")

    p = add(
        sub, "ablate", cmd_ablate, "ablation study: vary one thing at a time over seeds; verdicts vs noise", ABLATE_HELP
    )
    p.add_argument("config", nargs="?", help="base preset name or TOML file (default: the embedded default)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to the base, e.g. train.max_steps=300")
    p.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        required=True,
        help="a config key and the values to try (repeatable), e.g. optim.lr=1e-3,3e-4",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default: 3)")
    p.add_argument("--grid", action="store_true", help="every combination of the --vary values, not one at a time")
    p.add_argument("--vary-data-seed", action="store_true", help="vary the data order with the seed too")
    p.add_argument("--parallel", type=int, default=1, help="train N runs at once in subprocesses (default: 1)")
    p.add_argument("--out", help="study directory (default: <train.out_dir>/ablate-<base name>)")
    p.add_argument("--no-train", action="store_true", help="only recompute the summary from finished runs")

    sc = group(sub, "scaling", "scaling laws: compute calculator, map of known models, fits, sweeps")
    p = add(
        sc,
        "calc",
        cmd_scaling_calc,
        "parameters <-> Chinchilla tokens, compute, budgets, LR for a new batch",
        SCALING_CALC_HELP,
    )
    p.add_argument("--params", help="model parameters, e.g. 124M")
    p.add_argument("--tokens", help="training tokens, e.g. 2.5B")
    p.add_argument("--config", help="preset or TOML: exact parameters and FLOPs/token (with the attention term)")
    p.add_argument("--budget", help="compute budget in FLOPs (e.g. 1e18) or wall time (e.g. 2h; needs --run or "
                   "--measure): gives the compute-optimal N and D")  # fmt: skip
    p.add_argument("--run", help="a run dir whose measured tokens/s gives this machine's FLOP/s")
    p.add_argument("--measure", action="store_true", help="measure FLOP/s with a few steps of --config's model")
    p.add_argument("--ratio", type=float, default=20.0, help="tokens per parameter (default: 20, Chinchilla)")
    p.add_argument("--lr", type=float, help="the current learning rate (with --batch)")
    p.add_argument("--batch", type=float, nargs=2, metavar=("OLD", "NEW"), help="batch change for the sqrt LR rule")
    p = add(sc, "map", cmd_scaling_map, "PNG of known models on parameters vs tokens, the 20x line and your runs")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run dirs, or folders holding them, to put on the map")
    p.add_argument("--out", default="scaling-map.png", help="PNG to write (default: scaling-map.png)")
    p.add_argument("--ratio", type=float, default=20.0, help="tokens per parameter of the reference line")
    p = add(sc, "fit", cmd_scaling_fit, "fit L(N, D) = E + A/N^a + B/D^b and the L(C) frontier to finished runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run dirs, or folders holding them (>= 5 runs)")
    p.add_argument("--out", default="scaling-fit.png", help="PNG to write (default: scaling-fit.png)")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for uncertainties (0: none)")
    p.add_argument("--budget", help="extrapolate loss and optimal N, D to this many FLOPs, e.g. 1e18")
    p.add_argument("--json", action="store_true", help="print the fit as JSON")
    p = add(
        sc,
        "sweep",
        cmd_scaling_sweep,
        "train the sizes x compute grid a fit needs, then fit and plot",
        SCALING_SWEEP_HELP,
    )
    p.add_argument("config", nargs="?", help="base preset or TOML (default: the embedded default)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    p.add_argument("--budget", required=True, help="total compute: FLOPs (e.g. 2e13) or wall time (e.g. 30m)")
    p.add_argument("--sizes", default="2x32,2x48,2x64,4x64", help="model sizes as n_layer x n_embd, comma-separated")
    p.add_argument("--levels", type=int, default=3, help="compute levels per size (default: 3; L(C) needs 3)")
    p.add_argument("--level-ratio", type=float, default=3.0, help="compute ratio between levels (default: 3)")
    p.add_argument("--out", default="runs/sweep", help="folder for the runs and the fit (default: runs/sweep)")
    p.add_argument("--parallel", type=int, default=1, help="train N runs at once in subprocesses")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for uncertainties")


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
