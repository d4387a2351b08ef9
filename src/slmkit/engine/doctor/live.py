"""The live doctor: one observe() per optimizer step inside the training loop."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable

from slmkit.engine.doctor.rules import RunFacts, Streams, rule_nonfinite
from slmkit.engine.doctor.signals import (
    CLIP_FIX,
    CLIP_RATE,
    CLIP_WHY,
    COLLAPSE_ABS,
    COLLAPSE_FRACTION,
    Detector,
    Finding,
    RobustWindow,
    clipping_verdict,
    explosion_limit,
    spike_limit,
)


class LiveDoctor:
    """Watches the per-step metrics during training; returns each new episode's finding once.

    Live rules: NaN/inf loss, loss spikes, gradient explosion, gradient collapse, constant clipping (judged as
    `slm doctor` does: only with a norm far above the limit or a loss that stopped falling, see CLIP_FAR). The trend
    rules (plateaus, overfitting, too-low LR, under-training) need the whole run: `slm doctor` applies them.
    `is_spike(loss)` is the guard's question (train.on_spike): would this loss be flagged? It answers False after
    `max_guard` flagged steps in a row, so a guard never skips or rolls back forever.
    """

    def __init__(self, grad_clip: float = 0.0, warmup: int = 0, window: int = 64, max_guard: int = 20):
        self.loss = Detector(spike_limit, window)
        self.grad = Detector(explosion_limit, window)
        self.grad_clip, self.warmup, self.max_guard = grad_clip, warmup, max_guard
        self.window = window
        self.clips: deque[float] = deque(maxlen=window)
        self.clip_norms: deque[float] = deque(maxlen=window)  # the grad norms of the steps in `clips`
        self.loss_meds: list[tuple[int, float]] = []  # (step, the loss baseline's median) every `window` steps
        self.seen = 0  # steps observed
        self.early_grad = RobustWindow(window, 10)
        self.collapse_run = 0
        self.open: set[str] = set()  # rules with an episode in progress (reported already)
        self.guarded = False  # the last guard() call said "spike"
        self.first_loss: float | None = None  # median of the first `min_count` losses

    def is_spike(self, loss: float) -> bool:
        return self.loss.run < self.max_guard and self.loss.would_flag(loss)

    def guard(self, loss: float) -> bool:
        """`is_spike`, remembered in `guarded` for the step's log: the training loop's `skip_if`."""
        self.guarded = self.is_spike(loss)
        return self.guarded

    def observe(self, step: int, metrics: dict) -> list[Finding]:
        loss = float(metrics.get("train/loss", float("nan")))
        gnorm = float(metrics.get("train/grad_norm", float("nan")))
        out: list[Finding] = []
        if not math.isfinite(loss):
            out += self._episode("divergence", True, lambda: rule_nonfinite(Streams([step], [loss]), RunFacts())[0])
        base = self.loss.win.stats()[0] if self.loss.win.ready else float("nan")
        spike = self.loss.update(loss)
        self.seen += 1
        if self.seen % self.window == 0 and self.loss.win.ready:  # the loss level, for "stopped improving"
            self.loss_meds.append((step, self.loss.win.stats()[0]))
        out += self._episode("loss_spike", spike, lambda: Finding(
            "loss_spike", "warning", step, step, f"train loss {loss:.3f} jumped above its running median {base:.3f} "
            f"({loss / base:.1f}x)", "one update moved the weights far; repeated spikes precede divergence",
            "if it repeats: lower optim.lr, lengthen optim.warmup, or set train.on_spike=skip|rollback",
            loss))  # fmt: skip
        gbase = self.grad.win.stats()[0] if self.grad.win.ready else float("nan")
        out += self._episode("grad_explosion", self.grad.update(gnorm), lambda: Finding(
            "grad_explosion", "warning", step, step, f"gradient norm {gnorm:.3g} is {gnorm / gbase:.0f}x its running "
            f"median {gbase:.3g}", "a huge gradient can throw the weights far (clipping bounds the step)",
            "keep optim.grad_clip on; lower optim.lr; lengthen optim.warmup", gnorm))  # fmt: skip
        out += self._collapse(step, gnorm)
        out += self._clipping(step, metrics.get("train/clipped"), gnorm)
        return out

    def _episode(self, rule: str, active: bool, make: Callable[[], Finding]) -> list[Finding]:
        if not active:
            self.open.discard(rule)
            return []
        if rule in self.open:
            return []
        self.open.add(rule)
        return [make()]

    def _learning(self) -> bool:
        """The loss fell at least 3% below where it started (else clipping is the untouched init's gradient)."""
        if self.first_loss is None and self.loss.win.ready:
            self.first_loss = self.loss.win.stats()[0]
        return self.first_loss is not None and self.loss.win.stats()[0] < 0.97 * self.first_loss

    def _collapse(self, step: int, gnorm: float) -> list[Finding]:
        if not math.isfinite(gnorm):
            return []
        if not self.early_grad.ready:
            self.early_grad.add(gnorm)
            return []
        typical = self.early_grad.stats()[0]
        self.collapse_run = self.collapse_run + 1 if gnorm < max(COLLAPSE_ABS, COLLAPSE_FRACTION * typical) else 0
        return self._episode("grad_collapse", self.collapse_run >= 5, lambda: Finding(
            "grad_collapse", "error", step - 4, step, f"gradient norm {gnorm:.2g} for 5 steps (early typical "
            f"{typical:.3g})", "no gradient, no learning: training has silently stopped",
            "check loss masking, the LR schedule, dead activations", gnorm))  # fmt: skip

    def _clipping(self, step: int, clipped, gnorm: float) -> list[Finding]:
        if clipped is None or step <= self.warmup or not self._learning():
            return []
        self.clips.append(float(clipped))
        self.clip_norms.append(gnorm)
        full = len(self.clips) == self.clips.maxlen
        rate = sum(self.clips) / len(self.clips)
        if "constant_clipping" in self.open and rate >= CLIP_RATE / 2:
            return []  # still in the episode (re-armed only when the rate falls well below the threshold)
        if not (full and rate > CLIP_RATE):
            self.open.discard("constant_clipping")
            return []
        if self.seen % 8:  # judged every 8th step: a median per step would double observe's cost while clipping
            return []
        norms = [g for c, g in zip(self.clips, self.clip_norms) if c and math.isfinite(g)]
        med = statistics.median(norms) if norms else float("nan")
        ratio = med / self.grad_clip if self.grad_clip > 0 and norms else None
        since, before = self.loss_meds[len(self.loss_meds) // 2] if len(self.loss_meds) >= 4 else (0, float("nan"))
        now = self.loss.win.stats()[0]
        progress = (before - now) / abs(before) if math.isfinite(before) and before else None
        verdict = clipping_verdict(rate, ratio, progress)
        tail = (f", {ratio:.1f}x the limit)" if verdict == "far" else
                f") and the loss stopped improving ({before:.3f} at step {since}, {now:.3f} now)")  # fmt: skip
        return self._episode("constant_clipping", verdict is not None, lambda: Finding(
            "constant_clipping", "warning", step - len(self.clips) + 1, step, f"gradient clipped on {100 * rate:.0f}% "
            f"of the last {len(self.clips)} steps (limit {self.grad_clip:g}, median clipped norm {med:.3g}{tail}",
            CLIP_WHY[verdict], CLIP_FIX[verdict], rate))  # fmt: skip
