"""The doctor's rules: one function per pathology over a run's metric streams, and `diagnose` that runs them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.base.chinchilla import TOKENS_PER_PARAM
from slmkit.base.metrics import RunMetrics
from slmkit.engine.doctor.signals import (
    BLOW_UP,
    CLIP_FIX,
    CLIP_WHY,
    COLLAPSE_ABS,
    COLLAPSE_FRACTION,
    EXPLODE_FACTOR,
    SEVERITIES,
    Detector,
    Finding,
    clipping_verdict,
    explosion_limit,
    spike_limit,
)
from slmkit.model.optim import warmup_steps
from slmkit.runs.checkpoint import CheckpointError, check_run_dir, read_run_config
from slmkit.runs.table import run_params

# ---------------------------------------------------------------------------------------------------------
# Metric streams and run facts.


@dataclass
class Streams:
    """Per-step train metrics (aligned, in file order) and the eval points; steps a rollback superseded are
    left out (RunMetrics' rollback rule), so a spike that was rolled back is not diagnosed as if training kept it."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    clipped: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)

    @classmethod
    def from_events(cls, events: Iterable[dict]) -> Streams:
        m = RunMetrics.from_events(events)
        steps = m.with_key("train/loss")  # optimizer steps, and the trainer's NaN marker (loss only, NaN elsewhere)
        val_steps, val_loss = m.series("val/loss")
        return cls([int(e["step"]) for e in steps], *(m.column(steps, f"train/{k}") for k in _STREAM_KEYS),
                   val_steps=val_steps, val_loss=val_loss)  # fmt: skip


_STREAM_KEYS = ("loss", "grad_norm", "clipped", "lr", "tokens")  # the train/* columns of Streams, in field order


@dataclass
class RunFacts:
    """What the rules may know beyond the metrics (all optional)."""

    params: int | None = None
    grad_clip: float | None = None
    warmup: int | None = None
    max_steps: int | None = None
    vocab_size: int | None = None


def _finite(xs: Iterable[float]) -> list[float]:
    return [x for x in xs if math.isfinite(x)]


def _mean(xs: list[float]) -> float:
    xs = _finite(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _slope(xs: list[float]) -> float:
    """Least-squares slope of xs against their index."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(xs) / n
    num = sum((i - mx) * (x - my) for i, x in enumerate(xs))
    return num / sum((i - mx) ** 2 for i in range(n))


def _chunks(xs: list[float], n_chunks: int = 50, min_size: int = 5) -> tuple[list[float], int]:
    """Means of consecutive chunks, and the chunk size."""
    size = max(min_size, len(xs) // n_chunks)
    return [_mean(xs[i : i + size]) for i in range(0, len(xs) - size + 1, size)], size


def _episodes(flags: list[bool], gap: int = 2) -> list[tuple[int, int]]:
    """Index ranges [a, b] of flagged runs, merging runs separated by at most `gap` unflagged values."""
    out: list[list[int]] = []
    for i, f in enumerate(flags):
        if not f:
            continue
        if out and i - out[-1][1] <= gap + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return [(a, b) for a, b in out]


# ---------------------------------------------------------------------------------------------------------
# Rules. Each takes the streams and facts and returns findings.


def rule_nonfinite(s: Streams, facts: RunFacts) -> list[Finding]:
    for i, v in enumerate(s.loss):
        if not math.isfinite(v):
            last = _finite(s.loss[max(0, i - 10) : i])
            before = f" (it was {last[-1]:.3f} just before)" if last else ""
            return [Finding("divergence", "error", s.steps[i], s.steps[i], f"the train loss became {v}{before}",
                            "NaN/inf weights cannot recover: every later step is wasted",
                            "lower optim.lr (try 1/3), keep optim.grad_clip=1.0, lengthen optim.warmup, or use bf16 "
                            "instead of fp16; resume from the last good checkpoint", v)]  # fmt: skip
    return []


def rule_divergence(s: Streams, facts: RunFacts) -> list[Finding]:
    """The loss blows up far above where it started, rises steadily after its minimum, or ends above its start."""
    loss = s.loss
    bad = next((i for i, v in enumerate(loss) if not math.isfinite(v)), len(loss))
    loss = loss[:bad]  # a NaN/inf is rule_nonfinite's finding; judge the trend before it
    return _blow_up(s, loss, facts) or _rising(s, loss)


def _blow_up(s: Streams, loss: list[float], facts: RunFacts) -> list[Finding]:
    """The 5-step running median goes above BLOW_UP x the starting loss (worse than a uniform guess by far)."""
    if len(loss) < 10:
        return []
    start = statistics.median(loss[:3])
    med = [statistics.median(loss[max(0, i - 4) : i + 1]) for i in range(len(loss))]
    over = [i for i, m in enumerate(med) if m > BLOW_UP * start]
    if not over:
        return []
    a, b = over[0], over[-1]
    peak = max(med[a : b + 1])
    back = b + 1 < len(loss) and statistics.median(loss[-5:]) < start
    v = facts.vocab_size
    uniform = f"; a uniform guess over the vocabulary scores {math.log(v):.2f}" if v else ""
    fate = (f"it came back below the start by step {s.steps[-1]}, but those steps were wasted" if back else
            "it never came back below the starting loss")  # fmt: skip
    return [Finding("divergence", "warning" if back else "error", s.steps[a], s.steps[b],
                    f"the train loss blew up to {peak:.2f} ({peak / start:.1f}x its starting {start:.2f}{uniform}); "
                    + fate,
                    "the updates are so large that the model became confidently wrong: the LR is far too high "
                    "for this model (or the warmup far too short)",
                    "lower optim.lr by 3-10x, lengthen optim.warmup, keep optim.grad_clip=1.0", peak)]  # fmt: skip


def _rising(s: Streams, loss: list[float]) -> list[Finding]:
    if len(loss) < 30:
        return []
    means, size = _chunks(loss)
    m = min(range(len(means)), key=means.__getitem__)
    low, last, first = means[m], means[-1], means[0]
    tail = means[m:]
    rising = (len(tail) >= max(3, len(means) // 10) and last > low * 1.15 + 0.05 and _slope(tail) > 0
              and all(x > low * 1.1 for x in tail[-3:]))  # fmt: skip
    if not rising and not last > first * 1.05:
        return []
    a, b = s.steps[m * size], s.steps[len(loss) - 1]
    return [Finding("divergence", "error", a, b,
                    f"the train loss rose from {low:.3f} (around step {a}) to {last:.3f} by step {b}"
                    + (f", above where it started ({first:.3f})" if last > first else ""),
                    "the optimizer is pushing the weights away from a solution; the rest of the run is wasted and "
                    "it usually ends in NaN",
                    "lower optim.lr (try 1/3 of it), lengthen optim.warmup, keep optim.grad_clip=1.0; resume from the "
                    f"checkpoint before step {a}", last)]  # fmt: skip


def _spike_episodes(values: list[float], limit=spike_limit) -> list[dict]:
    """Episodes of values above a robust running baseline, with the baseline and whether the values came back."""
    det, flags, base = Detector(limit), [], []
    for v in values:
        base.append(det.win.stats()[0] if det.win.ready else float("nan"))
        flags.append(det.update(v))
        if det.adopted:  # a level shift: close the open episode here
            flags[-1] = True
    out = []
    for a, b in _episodes(flags):
        after = _finite(values[b + 1 : b + 21])
        peak = max(_finite(values[a : b + 1]) or [float("nan")])
        ref = base[a]
        recovered = bool(after) and statistics.median(after) <= ref + (peak - ref) / 2
        out.append({"a": a, "b": b, "peak": peak, "base": ref, "recovered": recovered, "tail": bool(after)})
    return out


def rule_loss_spike(s: Streams, facts: RunFacts) -> list[Finding]:
    eps = _spike_episodes(s.loss)
    out = []
    for e in eps[:5]:
        a, b = s.steps[e["a"]], s.steps[e["b"]]
        if e["recovered"]:
            fate = f"it recovered after {e['b'] - e['a'] + 1} step(s)"
        elif e["tail"]:
            fate = "it did NOT come back to the earlier level"
        else:
            fate = "the run ended before it came back"
        out.append(Finding("loss_spike", "warning" if e["recovered"] else "error", a, b,
                           f"the train loss jumped to {e['peak']:.3f} against a running median of {e['base']:.3f} "
                           f"({e['peak'] / e['base']:.1f}x); {fate}",
                           "a spike means one update moved the weights far; a few that recover cost little, but "
                           "spikes that do not recover undo training and often precede divergence",
                           "if spikes repeat: lower optim.lr or raise optim.warmup; check the data batch at that "
                           "step; set train.on_spike=skip (skip the update) or rollback (restore the last good "
                           "checkpoint and skip that data)", e["peak"]))  # fmt: skip
    if len(eps) > 5:
        out.append(Finding("loss_spike", "warning", s.steps[eps[5]["a"]], s.steps[eps[-1]["b"]],
                           f"{len(eps) - 5} more loss spikes after these", "see above", "see above",
                           float(len(eps))))  # fmt: skip
    return out


def rule_recurring_spikes(s: Streams, facts: RunFacts) -> list[Finding]:
    eps = _spike_episodes(s.loss)
    if len(eps) < 3:
        return []
    starts = [s.steps[e["a"]] for e in eps]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    mean = sum(gaps) / len(gaps)
    if mean < 5 or statistics.pstdev(gaps) > 0.2 * mean:
        return []
    return [Finding("recurring_spikes", "warning", starts[0], starts[-1],
                    f"{len(eps)} loss spikes at a regular interval of about {mean:.0f} steps "
                    f"(at steps {', '.join(map(str, starts[:8]))}{' ...' if len(starts) > 8 else ''})",
                    "spikes at a fixed period point to the data, not the optimizer: the same bad document, shard "
                    "or boundary comes back every pass (e.g. an epoch of a small dataset, a corrupt shard)",
                    "look at the batches at those steps (binary junk, repeated text, a wrong tokenizer); clean or "
                    "drop that shard, shuffle differently (train.data_seed), or use train.on_spike=rollback",
                    mean)]  # fmt: skip


def rule_grad_explosion(s: Streams, facts: RunFacts) -> list[Finding]:
    eps = _spike_episodes(s.grad_norm, explosion_limit)
    if not eps:
        return []
    worst = max(eps, key=lambda e: e["peak"] / max(e["base"], 1e-30))
    a, b = s.steps[eps[0]["a"]], s.steps[eps[-1]["b"]]
    clip = f"; clipping at {facts.grad_clip:g} bounded the updates" if facts.grad_clip else ""
    return [Finding("grad_explosion", "warning", a, b,
                    f"{len(eps)} episode(s) where the gradient norm reached >= {EXPLODE_FACTOR:g}x its running "
                    f"median; worst {worst['peak']:.3g} vs {worst['base']:.3g} at step {s.steps[worst['a']]}{clip}",
                    "a sudden huge gradient means the loss surface became very steep where the weights are; "
                    "unclipped, one such step can throw the model far away",
                    "keep optim.grad_clip=1.0; lower optim.lr; lengthen optim.warmup; model.qk_norm=true helps "
                    "attention-logit blow-ups", worst["peak"])]  # fmt: skip


def rule_grad_collapse(s: Streams, facts: RunFacts) -> list[Finding]:
    g = s.grad_norm
    early = _finite(g[: max(10, len(g) // 10)])
    if len(_finite(g)) < 10 or not early:
        return []
    typical = statistics.median(early)
    lim = max(COLLAPSE_ABS, COLLAPSE_FRACTION * typical)
    eps = [(a, b) for a, b in _episodes([math.isfinite(v) and v < lim for v in g], gap=0) if b - a >= 4]
    if not eps:
        return []
    a, b = eps[0]
    low = min(g[a : b + 1])
    return [Finding("grad_collapse", "error", s.steps[a], s.steps[b],
                    f"the gradient norm fell to {low:.2g} for {b - a + 1} steps (near zero; early in the run it was "
                    f"about {typical:.3g})",
                    "with no gradient the weights stop changing: training has silently stopped",
                    "check that the loss is not masked out (all targets ignored), that the LR schedule did not "
                    "reach 0, and for dead activations or a saturated softmax after a divergence",
                    low)]  # fmt: skip


def rule_constant_clipping(s: Streams, facts: RunFacts) -> list[Finding]:
    """Clipped on most steps after warmup AND either far above the limit or with a loss that stopped falling.

    A high clip rate alone is normal: nanoGPT's shakespeare-char recipe clips on nearly every step while its loss
    falls to the documented value (the thresholds and the evidence are in signals.py, next to CLIP_FAR)."""
    skip = max(facts.warmup or 0, len(s.loss) // 20)
    idx = range(skip, len(s.loss))
    if facts.grad_clip and any(not math.isfinite(s.clipped[i]) for i in idx):  # no clip flags: judge the norms
        steps = [(s.grad_norm[i] > facts.grad_clip, s.grad_norm[i]) for i in idx if math.isfinite(s.grad_norm[i])]
    else:
        steps = [(s.clipped[i] > 0, s.grad_norm[i]) for i in idx if math.isfinite(s.clipped[i])]
    if len(steps) < 20:
        return []
    rate = sum(c for c, _ in steps) / len(steps)
    norms = _finite([g for c, g in steps if c])
    med = statistics.median(norms) if norms else float("nan")
    ratio = med / facts.grad_clip if facts.grad_clip and norms else None
    before, after = _late_means(s.loss[skip:])
    progress = (before - after) / abs(before) if math.isfinite(before) and before else None  # None: too short
    verdict = clipping_verdict(rate, ratio, progress)
    if verdict is None:
        return []
    limit = f"limit {facts.grad_clip:g}, " if facts.grad_clip else ""
    what = (f"the gradient was clipped on {100 * rate:.0f}% of the steps after warmup ({limit}median clipped norm "
            f"{med:.3g}" + (f", {ratio:.1f}x the limit)" if verdict == "far" else
                            f") while the train loss stopped improving: {before:.3f} -> {after:.3f} over the last "
                            "two quarters"))  # fmt: skip
    return [Finding("constant_clipping", "warning", s.steps[skip], s.steps[-1], what, CLIP_WHY[verdict],
                    CLIP_FIX[verdict], rate)]  # fmt: skip


def _late_means(loss: list[float]) -> tuple[float, float]:
    """Mean loss over the third and over the last quarter of `loss` (NaN when under 20 values per quarter)."""
    loss = _finite(loss)
    q = len(loss) // 4
    if q < 20:
        return float("nan"), float("nan")
    return _mean(loss[-2 * q : -q]), _mean(loss[-q:])


def rule_overfitting(s: Streams, facts: RunFacts) -> list[Finding]:
    pts = [(st, v) for st, v in zip(s.val_steps, s.val_loss) if math.isfinite(v)]
    if len(pts) < 4:
        return []
    m = min(range(len(pts)), key=lambda i: pts[i][1])
    (best_step, best), (last_step, last) = pts[m], pts[-1]
    if len(pts) - m < 3 or last <= best + max(0.02, 0.02 * best) or pts[-2][1] <= best:
        return []
    train_at = _train_near(s, best_step)
    train_end = _mean(s.loss[-max(5, len(s.loss) // 20) :])
    if not train_end < train_at - 0.01:
        return []
    return [Finding("overfitting", "warning", best_step, last_step,
                    f"val loss rose from {best:.3f} (step {best_step}) to {last:.3f} (step {last_step}) while train "
                    f"loss fell from {train_at:.3f} to {train_end:.3f} (gap now {last - train_end:.3f})",
                    "the model is memorizing the training text instead of learning what generalizes; later "
                    "checkpoints are worse on new text",
                    f"use the best checkpoint (step {best_step}; `--checkpoint best` is the default), stop earlier, "
                    "add data, raise model.dropout to 0.1-0.2 or optim.weight_decay, or use a smaller model",
                    last - best)]  # fmt: skip


def _train_near(s: Streams, step: int, half: int = 10) -> float:
    idx = [i for i, st in enumerate(s.steps) if abs(st - step) <= half]
    return _mean([s.loss[i] for i in idx]) if idx else float("nan")


def rule_warmup(s: Streams, facts: RunFacts) -> list[Finding]:
    """Instability in the first steps: the loss climbs above its starting value, or the grad norm explodes."""
    n = len(s.loss)
    if n < 20:
        return []
    e = max(10, min(100, n // 10))
    start = min(_finite(s.loss[:3]) or [float("nan")])
    early = s.loss[1:e]
    peak_i = max(range(len(early)), key=lambda i: early[i] if math.isfinite(early[i]) else float("inf")) + 1
    peak = s.loss[peak_i]
    unstable_loss = not math.isfinite(peak) or peak > start * 1.1
    g = _finite(s.grad_norm[:e])
    unstable_grad = len(g) >= 5 and max(g) > EXPLODE_FACTOR * statistics.median(g)
    if not (unstable_loss or unstable_grad):
        return []
    what = (f"in the first {e} steps the train loss climbed to {peak:.3f} (step {s.steps[peak_i]}) above its "
            f"starting {start:.3f}" if unstable_loss else
            f"in the first {e} steps the gradient norm reached {max(g):.3g}, {max(g) / statistics.median(g):.0f}x "
            "its median")  # fmt: skip
    w = facts.warmup
    have = f"optim.warmup is {w} steps" if w is not None else "the warmup length is unknown"
    suggest = max(2 * (w or 0), n // 20, 10)
    return [Finding("warmup", "warning", s.steps[0], s.steps[e - 1], what,
                    "at the start Adam's moment estimates are poor and the weights are random, so full-size steps "
                    f"overshoot; {have}",
                    f"lengthen optim.warmup (try {suggest} steps, 2-5% of the run) or lower optim.lr",
                    peak)]  # fmt: skip


def rule_too_low_lr(s: Streams, facts: RunFacts) -> list[Finding]:
    loss = s.loss
    n = len(loss)
    if n < 30:
        return []
    first, last = _mean(loss[: max(3, n // 20)]), _mean(loss[-max(3, n // 10) :])
    if not (math.isfinite(first) and math.isfinite(last)) or first - last > 0.03 * abs(first) or last > first * 1.02:
        return []
    peak_lr = max(_finite(s.lr) or [float("nan")])
    return [Finding("too_low_lr", "warning", s.steps[0], s.steps[-1],
                    f"the train loss barely moved: {first:.3f} -> {last:.3f} "
                    f"({100 * (first - last) / first:.1f}%) in {n} steps at a peak LR of {peak_lr:.2g}",
                    "the updates are too small to make progress: compute is being spent without learning",
                    "raise optim.lr by 10x (small models train well at 1e-3 to 3e-3 with AdamW); check that the "
                    "warmup is not most of the run", first - last)]  # fmt: skip


def rule_early_plateau(s: Streams, facts: RunFacts) -> list[Finding]:
    """The loss is flat within the first 20% of the run: stuck from the start, or already done improving."""
    loss, n = s.loss, len(s.loss)
    if n < 50:
        return []
    w = min(facts.warmup or 0, n // 10)
    p20 = n // 5
    seg = _finite(loss[w:p20])
    if len(seg) >= 20:
        level = _mean(seg)
        change = -_slope(seg) * len(seg)
        if abs(change) < 0.02 * abs(level):
            return [Finding("early_plateau", "warning", s.steps[w], s.steps[p20 - 1],
                            f"the train loss stayed flat around {level:.3f} over the first 20% of the run "
                            f"(changed {change:+.3f}), right when it should fall fastest",
                            "nothing is being learned early on: the model is stuck (often at the unigram or "
                            "uniform prediction)",
                            "check the LR (too low, or warmup too long), the data (targets shifted by one token?), "
                            "and that the grad norm is not near zero", level)]  # fmt: skip
    start, at20, end = _mean(loss[:3]), _mean(loss[int(0.15 * n) : int(0.25 * n)]), _mean(loss[-n // 10 :])
    if start - at20 > 0.1 * abs(start) and at20 - end < 0.02 * abs(at20):
        return [Finding("early_plateau", "warning", s.steps[p20], s.steps[-1],
                        f"the train loss stopped improving by step {s.steps[p20]} (20% of the run): {at20:.3f} then "
                        f"{end:.3f} at the end",
                        "80% of the compute bought almost nothing",
                        "if the loss is noisy at that level the LR is too high for it (lower optim.lr or use a "
                        "decaying schedule); otherwise the model is too small for the data (more layers/width) or "
                        "the data is too small", at20 - end)]  # fmt: skip
    return []


def rule_chinchilla(s: Streams, facts: RunFacts) -> list[Finding]:
    tokens = max(_finite(s.tokens) or [0.0])
    if not facts.params or not tokens:
        return []
    ratio = tokens / facts.params
    if ratio >= TOKENS_PER_PARAM:
        return []
    need = TOKENS_PER_PARAM * facts.params
    per_step = tokens / max(s.steps[-1], 1)
    return [Finding("under_training", "info", s.steps[0], s.steps[-1],
                    f"trained on {tokens:,.0f} tokens for {facts.params:,} parameters: {ratio:.2g} tokens per "
                    f"parameter, below Chinchilla's compute-optimal ~{TOKENS_PER_PARAM:g}",
                    "the model has capacity it has not used yet; for this compute a smaller model trained on more "
                    "tokens would reach a lower loss",
                    f"train longer: {need:,.0f} tokens is about {need / per_step:,.0f} steps at {per_step:,.0f} "
                    "tokens/step (train.max_steps), or use a smaller model", ratio)]  # fmt: skip


RULES: dict[str, Callable[[Streams, RunFacts], list[Finding]]] = {
    "nonfinite": rule_nonfinite,
    "divergence": rule_divergence,
    "loss_spike": rule_loss_spike,
    "recurring_spikes": rule_recurring_spikes,
    "grad_explosion": rule_grad_explosion,
    "grad_collapse": rule_grad_collapse,
    "constant_clipping": rule_constant_clipping,
    "overfitting": rule_overfitting,
    "warmup": rule_warmup,
    "too_low_lr": rule_too_low_lr,
    "early_plateau": rule_early_plateau,
    "under_training": rule_chinchilla,
}
_UNSTABLE = {"divergence", "loss_spike", "grad_explosion"}


def run_facts(run_dir: str | Path) -> RunFacts:
    """Params, clip, warmup and vocab of a run dir (whatever of it can be read)."""

    try:
        cfg = read_run_config(run_dir)
    except CheckpointError:
        return RunFacts()
    return RunFacts(params=run_params(run_dir), grad_clip=cfg.optim.grad_clip or None,
                    warmup=warmup_steps(cfg.optim, cfg.train.max_steps), max_steps=cfg.train.max_steps,
                    vocab_size=cfg.model.vocab_size or None)  # fmt: skip


def diagnose(source: str | Path | Iterable[dict], facts: RunFacts | None = None) -> list[Finding]:
    """All findings for a run dir (facts read from it), a RunMetrics or an iterable of metric events, in step
    order. Rollbacks are applied first: only the steps the run kept are diagnosed."""
    if isinstance(source, (str, Path)):
        run_dir = check_run_dir(source)
        facts = facts or run_facts(run_dir)
        metrics = RunMetrics.read(run_dir)
    else:
        metrics = RunMetrics.from_events(source)
    s = Streams.from_events(metrics)
    facts = facts or RunFacts()
    if not s.loss:
        return []
    found = [f for rule in RULES.values() for f in rule(s, facts)]
    rules = {f.rule for f in found}
    if rules & _UNSTABLE or "warmup" in rules:
        found = [f for f in found if f.rule not in ("too_low_lr", "early_plateau")]
    warm = [f for f in found if f.rule == "warmup"]
    if warm:  # explosions inside the warmup window are that finding's evidence, not a second finding
        found = [f for f in found if not (f.rule == "grad_explosion" and f.end <= warm[0].end)]
    if any(f.rule == "too_low_lr" for f in found):  # weights that barely move keep their large initial gradient:
        found = [f for f in found if f.rule not in ("early_plateau", "constant_clipping")]  # not a too-high LR
    if any(f.rule == "divergence" and f.severity == "error" for f in found):
        found = [f for f in found if f.rule != "overfitting"]
    return sorted(found, key=lambda f: (-SEVERITIES.index(f.severity), f.start, f.rule))


def format_findings(findings: list[Finding]) -> str:
    if not findings:
        return "healthy: no problems found (loss, val loss and gradient norm look normal)"
    worst = max(findings, key=lambda f: SEVERITIES.index(f.severity)).severity
    counts = ", ".join(f"{sum(f.severity == s for f in findings)} {s}" for s in reversed(SEVERITIES)
                       if any(f.severity == s for f in findings))  # fmt: skip
    return "\n\n".join(f.format() for f in findings) + f"\n\n{len(findings)} finding(s): {counts} (worst: {worst})"
