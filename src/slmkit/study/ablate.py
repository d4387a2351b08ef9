"""Ablation studies: change one thing at a time, repeat over seeds, and say whether the change beats the noise.

A study is a directory:

    runs/<study>/
      study.json           the plan: base config, arms, seeds, how seeds are used
      base/seed-1/ ...     one ordinary run dir per (arm, seed); arm names read like `lr=1e-3`, `norm=rmsnorm`
      lr=1e-3/seed-1/
      summary.md  summary.json  ablation.png  curves.png

`run_study` is resumable: finished runs are skipped, interrupted ones (with a checkpoint) are resumed exactly,
crashed or half-made ones are moved aside into `<arm>/.failed/` and rerun. A finished run is never overwritten;
if it was trained with a different config than the plan asks for, the study stops and says so.

Seeds: seed-k sets `train.seed` (model init and dropout) to base seed + k - 1. The data order (`train.data_seed`)
stays the base's unless `vary_data_seed`, so by default an arm's spread measures init noise only and every arm sees
the same batches in the same order; with `vary_data_seed` it measures the full run-to-run noise.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.base.atomic import atomic_write_json, atomic_write_text, nan_to_none
from slmkit.base.config import ConfigError, RunConfig, diff_configs, from_dict, scaled_min_lr
from slmkit.base.config_files import load_config
from slmkit.base.metrics import series
from slmkit.base.stats import compare, mean_ci, mean_std
from slmkit.study.queue import StudyError, final_status, run_configs

STUDY_FILE = "study.json"
BASE_ARM = "base"
"""Keys that legitimately differ between a planned config and the run's saved (resolved) one."""


# ---------------------------------------------------------------------------------------------------------
# Arms


@dataclass
class Arm:
    """One setting to compare: the base plus `overrides` (dotted key -> value as typed on the command line)."""

    name: str
    overrides: dict[str, str] = field(default_factory=dict)


def parse_vary(spec: str) -> tuple[str, list[str]]:
    """`optim.lr=1e-3,3e-4` -> ("optim.lr", ["1e-3", "3e-4"])."""
    key, sep, values = spec.partition("=")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not vals:
        raise ConfigError(f"--vary {spec!r} must look like section.field=value1,value2 (e.g. optim.lr=1e-3,3e-4)")
    return key.strip(), vals


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """optim.lr -> lr, unless two varied keys share their last part (then the full key is kept)."""
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (t if tails.count(t) == 1 else k) for k, t in zip(keys, tails)}


def make_arms(base: RunConfig, varies: Sequence[tuple[str, Sequence[str]]], grid: bool = False) -> list[Arm]:
    """The base arm, then one arm per value changed alone (or every combination with `grid`).

    Values equal to the base's are dropped (that arm *is* the base). Bad keys or values raise ConfigError.
    Varying optim.lr scales optim.min_lr with it, so every LR arm has the same schedule shape.
    """
    keys = [k for k, _ in varies]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--vary names a key twice: {keys}; give all its values in one --vary")
    short = _short_names(keys)
    options = []
    for key, values in varies:
        kept = [v for v in values if base.replace(**_with_schedule(base, {key: v})) != base]  # ConfigError if bad
        options.append([(key, v) for v in kept])
    if grid:
        combos = [c for c in itertools.product(*[[None, *opt] for opt in options]) if any(c)]
        combos = [[kv for kv in c if kv] for c in combos]
    else:
        combos = [[kv] for opt in options for kv in opt]
    arms = [Arm(BASE_ARM)]
    for combo in combos:
        name = ",".join(f"{short[k]}={v}".replace("/", "_") for k, v in combo)
        arms.append(Arm(name, _with_schedule(base, dict(combo))))
    if len(arms) == 1:
        raise ConfigError("nothing to compare: every --vary value equals the base config's")
    return arms


def _with_schedule(base: RunConfig, overrides: dict[str, str]) -> dict[str, str]:
    """An LR arm scales the whole schedule: optim.min_lr keeps the base's min_lr/lr ratio (unless varied too)."""
    if "optim.lr" in overrides and "optim.min_lr" not in overrides:
        min_lr = scaled_min_lr(overrides["optim.lr"], base.optim.lr, base.optim.min_lr)
        if min_lr is None:
            raise ConfigError(f"optim.lr expects float, got {overrides['optim.lr']!r}")
        overrides["optim.min_lr"] = f"{min_lr:.6g}"
    return overrides


# ---------------------------------------------------------------------------------------------------------
# Plan


@dataclass
class Study:
    """What a study runs: `base` (resolved config), `arms`, `seeds` (1..n), and how seeds are used."""

    dir: Path
    base: RunConfig
    arms: list[Arm]
    seeds: list[int]
    vary_data_seed: bool = False
    spec: str = ""

    def run_config(self, arm: Arm, seed: int) -> RunConfig:
        """The full config of one run: base + arm overrides + seeds + where it lives."""
        t = self.base.train
        data_seed = t.data_seed if t.data_seed >= 0 else t.seed
        return self.base.replace(**arm.overrides).replace(**{
            "train.seed": t.seed + seed - 1,
            "train.data_seed": t.seed + seed - 1 if self.vary_data_seed else data_seed,
            "train.out_dir": str(self.dir / arm.name),
            "train.name": f"seed-{seed}",
        })  # fmt: skip

    def run_dir(self, arm: Arm, seed: int) -> Path:
        return self.dir / arm.name / f"seed-{seed}"

    def to_dict(self) -> dict:
        arms = [{"name": a.name, "overrides": a.overrides} for a in self.arms]
        return {"spec": self.spec, "base": self.base.to_dict(), "vary_data_seed": self.vary_data_seed,
                "seeds": self.seeds, "arms": arms}  # fmt: skip

    @classmethod
    def load(cls, study_dir: str | Path) -> Study:
        d = Path(study_dir)
        try:
            data = json.loads((d / STUDY_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StudyError(
                f"{d} is not an ablation study ({STUDY_FILE}: {e}); run `slm ablate BASE --vary ...`"
            ) from None
        arms = [Arm(a["name"], a["overrides"]) for a in data["arms"]]
        return cls(d, from_dict(data["base"]), arms, data["seeds"], data["vary_data_seed"], data.get("spec", ""))


def plan_study(base_spec: str | None, varies: Sequence[str], seeds: int = 3, grid: bool = False,
               out: str | Path | None = None, overrides: Sequence[str] = (),
               vary_data_seed: bool = False) -> Study:  # fmt: skip
    """Build the study plan from the command-line pieces (nothing is written)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    base = load_config(base_spec, list(overrides))
    arms = make_arms(base, [parse_vary(v) for v in varies], grid)
    if out is None:
        stem = Path(base_spec).stem if base_spec else "default"
        out = Path(base.train.out_dir) / f"ablate-{stem}"
    return Study(Path(out), base, arms, list(range(1, seeds + 1)), vary_data_seed, base_spec or "")


def _write_plan(study: Study) -> None:
    """Create or update study.json; a different base config or seed scheme in an existing study is an error."""
    path = study.dir / STUDY_FILE
    if path.is_file():
        old = Study.load(study.dir)
        changed = diff_configs(old.base, study.base)
        if changed or old.vary_data_seed != study.vary_data_seed:
            what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:3]) or "vary_data_seed"
            raise StudyError(f"{study.dir} holds a study with a different base ({what}); use another --out")
        names = {a.name for a in study.arms}
        study.arms += [a for a in old.arms if a.name not in names]  # keep arms of earlier invocations
        study.seeds = sorted(set(study.seeds) | set(old.seeds))
    study.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, study.to_dict())


def run_study(study: Study, parallel: int = 1, train: bool = True) -> dict:
    """Write the plan, train what is missing (seed-major: every arm gets seed 1 before any gets seed 2), summarize."""
    _write_plan(study)
    if train:
        cfgs = [study.run_config(arm, s) for s in study.seeds for arm in study.arms]
        run_configs(cfgs, parallel, log_dir=study.dir / "logs")
    return summarize(study.dir)


# ---------------------------------------------------------------------------------------------------------
# Statistics and outputs


def final_val_loss(run_dir: Path) -> float | None:
    """The last val/loss of a finished run (None when the run is not finished or has no finite val loss)."""
    if final_status(run_dir) != "finished":
        return None
    _, values = series(run_dir, "val/loss")
    return values[-1] if values and math.isfinite(values[-1]) else None


def arm_stats(study: Study) -> list[dict]:
    """Per arm: seeds, losses, mean, std, 95% CI, and the comparison with the base (rows in plan order)."""
    losses = {}
    for arm in study.arms:
        vals = [(s, final_val_loss(study.run_dir(arm, s))) for s in study.seeds]
        losses[arm.name] = {s: v for s, v in vals if v is not None}
    base = list(losses[BASE_ARM].values())
    rows = []
    for arm in study.arms:
        xs = list(losses[arm.name].values())
        m, sd = mean_std(xs)
        lo, hi = mean_ci(xs)
        row = {"arm": arm.name, "overrides": arm.overrides, "n": len(xs), "seeds": sorted(losses[arm.name]),
               "losses": xs, "mean": m, "std": sd, "ci_low": lo, "ci_high": hi,
               "missing": [s for s in study.seeds if s not in losses[arm.name]]}  # fmt: skip
        if arm.name != BASE_ARM:
            row["vs_base"] = compare(base, xs).to_dict()
        rows.append(row)
    return rows


def _ranked(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (math.isnan(r["mean"]), r["mean"]))


def _fmt(x: float, spec: str = ".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def seed_note(study: Study) -> str:
    t = study.base.train
    seeds = f"train.seed = {t.seed}..{t.seed + max(study.seeds) - 1}"
    if study.vary_data_seed:
        return f"{seeds} and train.data_seed likewise: the spread is the full run-to-run noise (init + data order)"
    data_seed = t.data_seed if t.data_seed >= 0 else t.seed
    return f"{seeds} (init, dropout); data order fixed (train.data_seed = {data_seed}): the spread is init noise"


def render_markdown(study: Study, rows: list[dict]) -> str:
    lines = [f"# Ablation study `{study.dir}`", "",
             f"Base: `{study.spec or 'default'}`; {len(study.seeds)} seeds per arm; {seed_note(study)}.",
             "Final val loss in nats (lower is better); Δ = arm − base; 95% CIs from the t distribution; "
             "the verdict uses the Welch CI of Δ (\"not distinguishable from noise\" when it covers 0).", "",
             "| rank | arm | n | val loss mean ± std | 95% CI | Δ vs base | Δ 95% CI (Welch) | p "
             "| Δ 95% CI (bootstrap) | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, r in enumerate(_ranked(rows), 1):
        c = r.get("vs_base")
        cells = [str(i), f"`{r['arm']}`", str(r["n"]), f"{_fmt(r['mean'])} ± {_fmt(r['std'])}",
                 f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"]  # fmt: skip
        if c:
            cells += [_fmt(c["delta"], "+.4f"), f"[{_fmt(c['ci_low'], '+.4f')}, {_fmt(c['ci_high'], '+.4f')}]",
                      _fmt(c["p_value"], ".3g"), f"[{_fmt(c['boot_low'], '+.4f')}, {_fmt(c['boot_high'], '+.4f')}]",
                      c["verdict"]]  # fmt: skip
        else:
            cells += ["(base)", "", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [f"{r['arm']}: seeds {r['missing']}" for r in rows if r["missing"]]
    if missing:
        lines += ["", "Not finished (rerun the study to complete): " + "; ".join(missing)]
    lines += ["", "![ablation](ablation.png)", "", "![curves](curves.png)", ""]
    return "\n".join(lines)


_VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red"}


def plot_bars(rows: list[dict], path: Path) -> None:
    """Final val loss per arm (mean, 95% CI error bars), the base mean as a dashed line, bars colored by verdict."""
    from matplotlib.figure import Figure

    rows = [r for r in rows if r["n"]]
    fig = Figure(figsize=(max(5, 1.1 * len(rows) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    means = [r["mean"] for r in rows]
    errs = [(r["ci_high"] - r["mean"]) if not math.isnan(r["ci_high"]) else 0.0 for r in rows]
    colors = ["tab:blue" if r["arm"] == BASE_ARM else _VERDICT_COLORS.get(r.get("vs_base", {}).get("verdict"), "0.6")
              for r in rows]  # fmt: skip
    ax.bar(range(len(rows)), means, yerr=errs, color=colors, capsize=4)
    base = next((r["mean"] for r in rows if r["arm"] == BASE_ARM), None)
    if base is not None:
        ax.axhline(base, color="tab:blue", ls="--", lw=1, label="base mean")
        ax.legend(loc="upper right")
    lo = min(m - e for m, e in zip(means, errs)) if means else 0
    hi = max(m + e for m, e in zip(means, errs)) if means else 1
    pad = 0.15 * (hi - lo) + 1e-3
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("final val loss (nats), mean ± 95% CI")
    ax.set_title("ablation: green = better than base, red = worse, grey = noise")
    fig.savefig(path, dpi=120)


def plot_curves(study: Study, path: Path) -> None:
    """Val loss over steps for every run, one color per arm (thin: each seed; thick: the mean over seeds)."""
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10"]
    for i, arm in enumerate(study.arms):
        color = cmap(i % 10)
        curves = [series(study.run_dir(arm, s), "val/loss") for s in study.seeds if study.run_dir(arm, s).is_dir()]
        curves = [c for c in curves if c[0]]
        for steps, vals in curves:
            ax.plot(steps, vals, color=color, lw=0.8, alpha=0.35)
        if curves:
            n = min(len(c[0]) for c in curves)
            mean = [sum(c[1][j] for c in curves) / len(curves) for j in range(n)]
            ax.plot(curves[0][0][:n], mean, color=color, lw=2, label=arm.name)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (nats)")
    ax.set_title("val loss per arm (thin: seeds, thick: mean)")
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


def summarize(study_dir: str | Path) -> dict:
    """Compute the statistics of a study from its run dirs and write summary.json, summary.md and both charts."""
    study = Study.load(study_dir)
    rows = arm_stats(study)
    ranking = [r["arm"] for r in _ranked(rows)]
    summary = {"study": str(study.dir), "spec": study.spec, "seeds": study.seeds, "seed_note": seed_note(study),
               "ranking": ranking, "arms": rows}  # fmt: skip
    atomic_write_json(study.dir / "summary.json", nan_to_none(summary))
    atomic_write_text(study.dir / "summary.md", render_markdown(study, rows))
    plot_bars(rows, study.dir / "ablation.png")
    plot_curves(study, study.dir / "curves.png")
    return summary


def format_table(summary: dict) -> str:
    """The ranking as console lines."""
    lines = [f"{'rank':<5} {'arm':<28} {'n':>2} {'val loss':>16} {'Δ vs base':>10} {'p':>7}  verdict"]
    by_name = {r["arm"]: r for r in summary["arms"]}
    for i, name in enumerate(summary["ranking"], 1):
        r = by_name[name]
        c = r.get("vs_base") or {}
        lines.append(f"{i:<5} {name:<28} {r['n']:>2} {_fmt(r['mean'])} ± {_fmt(r['std']):<7} "
                     f"{_fmt(c.get('delta', math.nan), '+.4f'):>10} {_fmt(c.get('p_value', math.nan), '.3g'):>7}  "
                     f"{c.get('verdict', '(base)')}")  # fmt: skip
    return "\n".join(lines)
