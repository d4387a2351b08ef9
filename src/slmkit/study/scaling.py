"""Scaling laws: a compute calculator, a map of known models, fits of L(N, D) and L(C) from your own runs, sweeps.

- Calculator: Chinchilla-optimal tokens D = 20·N; training compute C ≈ 6·N·D plus the attention term
  (`GPT.flops_per_token()`); compute-optimal N and D for a FLOP budget or a wall-time budget at a measured
  FLOP/s; the square-root LR rule for a batch change.
- Fit (Hoffmann et al. 2022, approach 3): L(N, D) = E + A/N^α + B/D^β, fitted by minimizing the Huber loss
  (δ = 1e-3) of log-residuals, log L̂ = LSE(a − α·log N, b − β·log D, e), with L-BFGS started from the best
  points of a grid of initialisations. The same machinery fits the compute frontier L(C) = E + A/C^γ.
  Uncertainty: refits on bootstrap resamples of the runs.
- Sweep: a grid of model sizes × compute levels (an IsoFLOP-style grid) that both fits need, trained as ordinary
  run dirs under one folder; resumable like an ablation study.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from slmkit.base.atomic import atomic_write_json, nan_to_none
from slmkit.base.chinchilla import TOKENS_PER_PARAM
from slmkit.base.config import ConfigError, ModelConfig, RunConfig
from slmkit.base.metrics import series
from slmkit.data.dataset import load_dataset_tokenizer
from slmkit.data.prepare import ensure_prepared
from slmkit.model.gpt import GPT
from slmkit.runs.checkpoint import is_run_dir, read_run_config, read_run_info
from slmkit.study.queue import run_configs
from slmkit.study.scaling_fit import (  # noqa: F401 - re-exported
    HUBER_DELTA,
    FrontierFit,
    LawFit,
    ScalingError,
    fit_frontier,
    fit_law,
    fit_lse,
    format_fit,
    human,
)

"""Compute-optimal training tokens per parameter (Hoffmann et al. 2022, Table 3: ~20 tokens per parameter)."""


# (name, parameters, training tokens, family) with sources. Token counts marked ~ are estimates.
KNOWN_MODELS: list[tuple[str, float, float, str]] = [
    # GPT-2 (Radford et al. 2019): WebText ~40 GB ≈ 9B tokens; epochs not reported. ~10B is the usual estimate
    # (llm.c / nanoGPT reproduce the 124M on 10B FineWeb tokens).
    ("GPT-2 124M", 124e6, 10e9, "GPT-2"),
    ("GPT-2 1.5B", 1.5e9, 10e9, "GPT-2"),
    # GPT-3 (Brown et al. 2020, Table 2.2): 300B tokens.
    ("GPT-3 175B", 175e9, 300e9, "GPT-3"),
    # Chinchilla (Hoffmann et al. 2022): 70B parameters, 1.4T tokens.
    ("Chinchilla 70B", 70e9, 1.4e12, "Chinchilla"),
    # LLaMA (Touvron et al. 2023, Table 2): 7B/13B on 1.0T tokens, 33B/65B on 1.4T.
    ("LLaMA 7B", 6.7e9, 1.0e12, "LLaMA"),
    ("LLaMA 13B", 13e9, 1.0e12, "LLaMA"),
    ("LLaMA 33B", 32.5e9, 1.4e12, "LLaMA"),
    ("LLaMA 65B", 65.2e9, 1.4e12, "LLaMA"),
    # Llama 3 (Meta 2024 model card, "The Llama 3 Herd of Models"): 15T tokens.
    ("Llama-3 8B", 8e9, 15e12, "Llama 3"),
    ("Llama-3 70B", 70e9, 15e12, "Llama 3"),
    # SmolLM2 (Allal et al. 2025, HF model cards): 135M on 2T tokens, 360M on 4T.
    ("SmolLM2 135M", 135e6, 2e12, "SmolLM2"),
    ("SmolLM2 360M", 360e6, 4e12, "SmolLM2"),
    # TinyStories (Eldan & Li 2023): 1M-33M models on the TinyStories corpus (~0.5B tokens; ~ one pass assumed).
    ("TinyStories 1M", 1e6, 0.5e9, "TinyStories"),
    ("TinyStories 3M", 3e6, 0.5e9, "TinyStories"),
    ("TinyStories 8M", 8e6, 0.5e9, "TinyStories"),
    ("TinyStories 28M", 28e6, 0.5e9, "TinyStories"),
    ("TinyStories 33M", 33e6, 0.5e9, "TinyStories"),
]


# ---------------------------------------------------------------------------------------------------------
# Parsing numbers like 124M, 2T, 1e18, and durations like 90s, 10m, 2h


_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}


def parse_count(text: str | float) -> float:
    """`124M` -> 1.24e8, `1.5B`, `2T`, `3e18`, `1_000` (case-insensitive)."""
    if isinstance(text, (int, float)):
        return float(text)
    s = text.strip().replace("_", "").replace(",", "").lower()
    mult = _SUFFIX.get(s[-1:], 1.0) if s and not s[-1].isdigit() else 1.0
    try:
        return float(s[:-1] if mult != 1.0 else s) * mult
    except ValueError:
        raise ScalingError(f"cannot read {text!r} as a number; use e.g. 124M, 1.5B, 2T or 3e18") from None


def parse_duration(text: str) -> float | None:
    """`90s`, `10m`, `2h`, `1d` -> seconds; None when `text` is not a duration."""
    m = re.fullmatch(r"\s*([\d.]+)\s*(s|sec|m|min|h|d)\s*", text.lower())
    if not m:
        return None
    return float(m.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[m.group(2)]


# ---------------------------------------------------------------------------------------------------------
# Calculator


def guess_vocab(tokenizer_kind: str) -> int:
    """The vocabulary size a tokenizer kind will have (char: a typical 128), for configs with vocab_size 0."""
    if tokenizer_kind.startswith("bpe:"):
        return int(tokenizer_kind[4:])
    return {"char": 128}.get(tokenizer_kind, 50257)


def model_size(model_cfg: ModelConfig, vocab_size: int = 0) -> tuple[int, float]:
    """(parameters, training FLOPs per token) of a model config, built on the meta device (no memory used)."""

    if model_cfg.vocab_size == 0:
        model_cfg = ModelConfig(**{**asdict(model_cfg), "vocab_size": vocab_size or 50257})
    with torch.device("meta"):
        model = GPT(model_cfg)
    return model.num_params(), model.flops_per_token()


def chinchilla_tokens(params: float, ratio: float = TOKENS_PER_PARAM) -> float:
    return ratio * params


def chinchilla_params(tokens: float, ratio: float = TOKENS_PER_PARAM) -> float:
    return tokens / ratio


def compute_optimal(flops: float, ratio: float = TOKENS_PER_PARAM, overhead: float = 1.0) -> tuple[float, float]:
    """(N, D) with D = ratio·N spending `flops` = 6·overhead·N·D (overhead = attention share, ~1 to 1.3)."""
    n = math.sqrt(flops / (6.0 * overhead * ratio))
    return n, ratio * n


def sqrt_lr(lr: float, old_batch: float, new_batch: float) -> float:
    """Square-root rule: scale the LR by sqrt(new batch / old batch) (batches in tokens or sequences per step)."""
    return lr * math.sqrt(new_batch / old_batch)


def run_flops_per_s(run_dir: str | Path) -> tuple[float, float]:
    """(median tokens/s, achieved FLOP/s) of a run from its metrics (the first steps, which warm up, are skipped)."""

    _, tok_s = series(run_dir, "perf/tok_per_s")
    if not tok_s:
        raise ScalingError(f"{run_dir} has no perf/tok_per_s metrics; train it first or use --measure")
    tps = float(np.median(tok_s[min(3, len(tok_s) - 1) :]))
    _, fpt = model_size(read_run_config(run_dir).model)
    return tps, tps * fpt


def measure_flops_per_s(cfg: RunConfig, steps: int = 4, vocab_size: int = 0) -> tuple[float, float]:
    """(tokens/s, FLOP/s) of a few real training steps of `cfg`'s model on random tokens, on the CPU."""

    m = cfg.model
    mc = ModelConfig(**{**asdict(m), "vocab_size": m.vocab_size or vocab_size or guess_vocab(cfg.tokenizer.kind)})
    model = GPT(mc)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, mc.vocab_size, (cfg.train.batch_size, mc.block_size))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    tps = x.numel() / float(np.median(times[1:]))
    return tps, tps * model.flops_per_token()


@dataclass
class Calc:
    """Everything the calculator could derive from what it was given (None where it could not)."""

    params: float | None = None
    tokens: float | None = None
    flops: float | None = None
    flops_per_token: float | None = None
    seconds: float | None = None
    flops_per_s: float | None = None
    lr: float | None = None
    notes: list[str] = field(default_factory=list)


def calculate(params: float | None = None, tokens: float | None = None, budget: str | None = None,
              cfg: RunConfig | None = None, flops_per_s: float | None = None, ratio: float = TOKENS_PER_PARAM,
              lr: float | None = None, batch: tuple[float, float] | None = None) -> Calc:  # fmt: skip
    """The calculator behind `slm scaling calc`.

    Give a model (`params`, or `cfg` for exact parameters and FLOPs/token with the attention term) and/or tokens;
    or a `budget` (FLOPs like 1e18, or a duration like 2h, which needs `flops_per_s`) for the compute-optimal N, D.
    `lr` and `batch=(old, new)` give the square-root-rule LR for a batch change.
    """
    c = Calc(flops_per_s=flops_per_s)
    overhead = 1.0
    if cfg is not None:
        n, fpt = model_size(cfg.model, guess_vocab(cfg.tokenizer.kind))
        params, c.flops_per_token = params or n, fpt
        overhead = fpt / (6.0 * n)
        c.notes.append(f"config: {human(n)} parameters, {human(fpt)} FLOPs/token (6N + attention; x{overhead:.2f})")
    if budget is not None:
        secs = parse_duration(budget)
        if secs is not None:
            if not flops_per_s:
                raise ScalingError("a wall-time budget needs this machine's speed: give --run RUN or --measure")
            c.seconds, flops = secs, secs * flops_per_s
        else:
            flops = parse_count(budget)
        c.flops = flops
        params, tokens = compute_optimal(flops, ratio, overhead)
        c.notes.append(f"compute-optimal for {flops:.3g} FLOPs at {ratio:g} tokens/parameter")
    elif params is not None and tokens is None:
        tokens = chinchilla_tokens(params, ratio)
        c.notes.append(f"tokens = {ratio:g} x parameters (Chinchilla-optimal)")
    elif tokens is not None and params is None:
        params = chinchilla_params(tokens, ratio)
        c.notes.append(f"parameters = tokens / {ratio:g} (Chinchilla-optimal)")
    c.params, c.tokens = params, tokens
    if params is not None and tokens is not None and c.flops is None:
        c.flops = (c.flops_per_token or 6.0 * params) * tokens
    if c.flops is not None and flops_per_s and c.seconds is None:
        c.seconds = c.flops / flops_per_s
    if lr is not None and batch is not None:
        c.lr = sqrt_lr(lr, *batch)
    return c


def format_calc(c: Calc) -> str:
    lines = []
    if c.params is not None:
        lines.append(f"parameters N      {human(c.params):>10}  ({c.params:.4g})")
    if c.tokens is not None:
        per = f"; {c.tokens / c.params:.1f} per parameter" if c.params else ""
        lines.append(f"tokens D          {human(c.tokens):>10}  ({c.tokens:.4g}{per})")
    if c.flops is not None:
        lines.append(f"compute C         {c.flops:>10.3g}  FLOPs")
    if c.flops_per_s:
        lines.append(f"speed             {c.flops_per_s:>10.3g}  FLOP/s (measured)")
    if c.seconds is not None:
        lines.append(f"wall time         {c.seconds / 3600:>10.3g}  hours")
    if c.lr is not None:
        lines.append(f"suggested lr      {c.lr:>10.3g}  (square-root rule)")
    return "\n".join(lines + [f"note: {n}" for n in c.notes])


# ---------------------------------------------------------------------------------------------------------
# Points from run dirs


@dataclass
class RunPoint:
    """One finished run as a scaling data point."""

    name: str
    params: float
    tokens: float
    flops: float
    loss: float


def run_point(run_dir: str | Path) -> RunPoint:
    """Parameters, tokens seen, training FLOPs and final val loss of a finished run."""

    info = read_run_info(run_dir)
    cfg = read_run_config(run_dir)
    n, fpt = model_size(cfg.model)
    tokens = float(info.get("tokens_seen") or 0)
    _, val = series(run_dir, "val/loss")
    if info.get("status") != "finished" or not val or not tokens or not math.isfinite(val[-1]):
        raise ScalingError(f"{run_dir} is not a finished run with a val loss (status {info.get('status')!r})")
    return RunPoint(Path(run_dir).name, float(n), tokens, fpt * tokens, val[-1])


def collect_points(paths: Sequence[str | Path]) -> list[RunPoint]:
    """Points from run dirs; a folder that is not a run dir contributes every finished run below it."""

    points = []
    for p in map(Path, paths):
        dirs = [p] if is_run_dir(p) else sorted(d.parent for d in p.rglob("run.json") if ".failed" not in d.parts)
        if not dirs:
            raise ScalingError(f"{p} is not a run directory and holds none")
        for d in dirs:
            if read_run_info(d).get("status") == "finished" or d == p:
                points.append(run_point(d))
    return points


def frontier(points: Sequence[RunPoint], bin_decades: float = 0.1) -> list[RunPoint]:
    """The compute frontier: the best run of each compute level (runs within `bin_decades` of log10 C are one
    level, as in a sweep's IsoFLOP grid), kept when it beats every cheaper level."""
    levels: list[list[RunPoint]] = []
    for p in sorted(points, key=lambda p: p.flops):
        if levels and math.log10(p.flops) - math.log10(levels[-1][0].flops) < bin_decades:
            levels[-1].append(p)
        else:
            levels.append([p])
    out, best = [], math.inf
    for level in levels:
        p = min(level, key=lambda p: p.loss)
        if p.loss < best:
            out.append(p)
            best = p.loss
    return out


# ---------------------------------------------------------------------------------------------------------
# Plots


def plot_map(path: str | Path, points: Sequence[RunPoint] = (), ratio: float = TOKENS_PER_PARAM) -> Path:
    """Parameters vs training tokens: known models, the `ratio`× line, and the user's runs."""
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), layout="constrained")
    ax = fig.add_subplot()
    families = sorted({f for *_, f in KNOWN_MODELS})
    cmap = matplotlib.colormaps["tab10"]
    for i, fam in enumerate(families):
        rows = [(name, n, d) for name, n, d, f in KNOWN_MODELS if f == fam]
        ax.scatter([n for _, n, _ in rows], [d for *_, d in rows], label=fam, color=cmap(i % 10), s=30)
        for j, (name, n, d) in enumerate(rows):  # staggered so a family's labels do not overprint
            label = name if j == 0 else name.split()[-1]
            ax.annotate(label, (n, d), fontsize=7, xytext=(3, 3 + 9 * (j % 3)), textcoords="offset points")
    if points:
        ax.scatter([p.params for p in points], [p.tokens for p in points], marker="*", s=90, color="black",
                   label="your runs", zorder=3)  # fmt: skip
    ns = [p.params for p in points] + [n for _, n, _, _ in KNOWN_MODELS]
    xs = np.logspace(math.log10(min(ns)) - 0.5, math.log10(max(ns)) + 0.5, 50)
    ax.plot(xs, ratio * xs, "k--", lw=1, label=f"{ratio:g} tokens/parameter (Chinchilla-optimal)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("training tokens D")
    ax.set_title("scaling map (above the line: more tokens per parameter than compute-optimal)")
    ax.legend(fontsize="small", loc="upper left")
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_fit(path: str | Path, points: Sequence[RunPoint], law: LawFit | None, front: FrontierFit | None) -> Path:
    """Left: loss vs tokens per model size with the fitted L(N, D). Right: loss vs compute with the frontier fit."""
    import matplotlib
    import matplotlib.ticker
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    sizes = sorted({p.params for p in points})
    cmap = matplotlib.colormaps["viridis"]
    for i, n in enumerate(sizes):
        color = cmap(i / max(1, len(sizes) - 1))
        pts = sorted((p for p in points if p.params == n), key=lambda p: p.tokens)
        ax1.scatter([p.tokens for p in pts], [p.loss for p in pts], color=color, label=f"N = {human(n)}")
        if law is not None:
            ds = np.logspace(math.log10(pts[0].tokens) - 0.3, math.log10(pts[-1].tokens) + 0.3, 40)
            ax1.plot(ds, law.predict(n, ds), color=color, lw=1)
    ax1.set(xscale="log", xlabel="tokens D", ylabel="final val loss", title="L(N, D) fit")
    ax1.legend(fontsize="small")
    ax2.scatter([p.flops for p in points], [p.loss for p in points], color="0.6", label="runs")
    fr = frontier(points)
    ax2.scatter([p.flops for p in fr], [p.loss for p in fr], color="tab:red", label="frontier")
    if front is not None:
        cs = np.logspace(math.log10(min(p.flops for p in points)), math.log10(max(p.flops for p in points)) + 1, 50)
        ax2.plot(cs, front.predict(cs), "r--", lw=1, label=f"L(C), gamma = {front.gamma:.3f}")
    ax2.set(xscale="log", xlabel="training FLOPs C", ylabel="final val loss", title="compute frontier")
    ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return Path(path)


def fit_warnings(law: LawFit | None, front: FrontierFit | None, points: Sequence[RunPoint]) -> list[str]:
    """Plain-words flags for fits the data cannot pin down (common with few, small runs)."""
    out = []
    exps = ([("alpha", law.alpha), ("beta", law.beta)] if law else []) + ([("gamma", front.gamma)] if front else [])
    bad = [f"{k} = {v:.3g}" for k, v in exps if not 0.01 < v < 1.5]
    if bad or any(not math.isfinite(f.A) for f in (law, front) if f is not None):
        out.append(f"exponents outside the usual 0.05-1 range ({', '.join(bad) or 'A overflows'}): the runs do not "
                   "pin the law down; add runs over a wider range of sizes and token counts")  # fmt: skip
    min_loss = min(p.loss for p in points)
    if any(f is not None and f.E < 0.2 * min_loss for f in (law, front)):
        out.append("E (irreducible loss) is near 0: the runs are too far from saturation to see it; "
                   "treat extrapolations far beyond the runs with suspicion")  # fmt: skip
    return out


def fit_runs(paths: Sequence[str | Path], out: str | Path | None = None, n_boot: int = 100,
             budget: float | None = None) -> dict:  # fmt: skip
    """`slm scaling fit`: both fits from run dirs (each where there are enough runs), a plot, a text report."""
    points = collect_points(paths)
    result: dict = {"points": [asdict(p) for p in points], "law": None, "frontier": None, "notes": []}
    law = front = None
    try:
        law = fit_law([p.params for p in points], [p.tokens for p in points], [p.loss for p in points], n_boot)
        result["law"] = law.to_dict()
    except ScalingError as e:
        result["notes"].append(str(e))
    fr = frontier(points)
    try:
        front = fit_frontier([p.flops for p in fr], [p.loss for p in fr], n_boot)
        result["frontier"] = front.to_dict()
    except ScalingError as e:
        result["notes"].append(str(e))
    if law is None and front is None:
        raise ScalingError("; ".join(result["notes"]) + " — run `slm scaling sweep` to make enough runs")
    result["notes"] += fit_warnings(law, front, points)
    if n_boot and any(f is not None and not f.std for f in (law, front)):
        result["notes"].append("a fit with no ± has too few points (or resamples) for a bootstrap; add runs")
    result["report"] = "\n\n".join(format_fit(f, budget) for f in (law, front) if f is not None)
    result["report"] += "".join(f"\nnote: {n}" for n in result["notes"])
    if out is not None:
        result["plot"] = str(plot_fit(out, points, law, front))
    return result


# ---------------------------------------------------------------------------------------------------------
# Sweep


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """`2x16,2x32,4x64` -> [(n_layer, n_embd), ...]."""
    try:
        return [tuple(int(v) for v in s.lower().split("x")) for s in text.split(",")]  # type: ignore[misc]
    except ValueError:
        raise ScalingError(f"--sizes {text!r} must look like 2x32,2x64,4x64 (n_layer x n_embd)") from None


def _size_overrides(base: RunConfig, n_layer: int, n_embd: int) -> dict:
    head_dim = base.model.head_dim
    n_head = max(1, n_embd // head_dim)
    while n_embd % n_head or (base.model.pos_emb == "rope" and (n_embd // n_head) % 2):
        n_head -= 1
    kv = base.model.n_kv_head if base.model.n_kv_head and n_head % base.model.n_kv_head == 0 else 0
    return {"model.n_layer": n_layer, "model.n_embd": n_embd, "model.n_head": n_head, "model.n_kv_head": kv}


def plan_sweep(base: RunConfig, budget: float, sizes: Sequence[tuple[int, int]], levels: int = 3,
               level_ratio: float = 3.0, out: str | Path = "runs/sweep", vocab_size: int = 0,
               min_steps: int = 5) -> list[RunConfig]:  # fmt: skip
    """Configs of a sizes × compute-levels grid spending `budget` FLOPs in all.

    Level j gets c_0·ratio^j FLOPs per run (for every size), so each size is trained to several token counts and
    each compute level is tried at several sizes — what both the L(N, D) and the L(C) fits need.
    """
    if len(sizes) * levels < 5:
        raise ScalingError(f"{len(sizes)} sizes x {levels} levels = {len(sizes) * levels} runs; the fit needs >= 5")
    c0 = budget / (len(sizes) * sum(level_ratio**j for j in range(levels)))
    tok_per_step = base.train.batch_size * base.train.grad_accum * base.model.block_size
    cfgs = []
    for (n_layer, n_embd), j in itertools.product(sizes, range(levels)):
        over = _size_overrides(base, n_layer, n_embd)
        cfg = base.replace(**over)
        _, fpt = model_size(cfg.model, vocab_size or guess_vocab(base.tokenizer.kind))
        steps = round(c0 * level_ratio**j / (fpt * tok_per_step))
        if steps < min_steps:
            need = budget * min_steps / max(steps, 0.5)
            raise ScalingError(f"budget {budget:.3g} FLOPs gives the {n_layer}x{n_embd} model only {steps} steps; "
                               f"raise --budget to about {need:.2g} or use smaller --sizes")  # fmt: skip
        warm = base.optim.warmup if base.optim.warmup < 1 else min(base.optim.warmup, max(1, steps // 10))
        cfgs.append(cfg.replace(**{"train.max_steps": steps, "train.eval_every": steps, "optim.warmup": warm,
                                   "train.out_dir": str(out), "train.name": f"{n_layer}x{n_embd}-c{j}"}))  # fmt: skip
    return cfgs


def sweep(base: RunConfig, budget: str, sizes: Sequence[tuple[int, int]], levels: int = 3, level_ratio: float = 3.0,
          out: str | Path = "runs/sweep", parallel: int = 1, n_boot: int = 100) -> dict:  # fmt: skip
    """`slm scaling sweep`: plan the grid for the budget (FLOPs, or a duration at this machine's measured speed),
    train what is not finished yet, then fit and plot into `out/` (fit.png, map.png, fit.json)."""
    import json

    secs = parse_duration(budget)
    vocab = _dataset_vocab(base)
    if secs is not None:
        _, fps = measure_flops_per_s(base, vocab_size=vocab)
        flops = secs * fps * 0.5  # half: evaluation, checkpoints and start-up take the rest
    else:
        flops = parse_count(budget)
    cfgs = plan_sweep(base, flops, sizes, levels, level_ratio, out, vocab_size=vocab)
    results = run_configs(cfgs, parallel, log_dir=Path(out) / "logs")
    done = [d for d, status in results.items() if status == "finished"]
    fit = fit_runs(done, Path(out) / "fit.png", n_boot=n_boot, budget=flops * 10)
    pts = [RunPoint(**p) for p in fit["points"]]
    fit["map"] = str(plot_map(Path(out) / "map.png", pts))
    fit["budget_flops"] = flops
    atomic_write_json(Path(out) / "fit.json", json.loads(json.dumps(nan_to_none(fit))))
    return fit


def _dataset_vocab(cfg: RunConfig) -> int:
    """The vocabulary size the runs will have (prepares the dataset if needed, as training would)."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    try:
        return load_dataset_tokenizer(ensure_prepared(cfg.data, cfg.tokenizer.kind)).vocab_size
    except (ImportError, ConfigError):
        return guess_vocab(cfg.tokenizer.kind)
