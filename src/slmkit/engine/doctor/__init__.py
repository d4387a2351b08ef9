"""The training doctor: rules that read metric streams, name what went wrong, and say what to try.

It watches the three signals that matter (train loss, val loss, gradient norm) plus the clip flag, LR and tokens.
Two ways in:

- offline, `diagnose(run_dir_or_events) -> list[Finding]` (what `slm doctor RUN` prints);
- live, `LiveDoctor.observe(step, metrics)` once per optimizer step inside the training loop. It keeps running
  robust statistics (median and MAD of the last `window` accepted values), costs a few microseconds per step,
  and reports each episode once, when it starts.

Spikes and gradient explosions are judged against a robust running baseline: a value is flagged when it is far
above the median of recent *unflagged* values (flagged values never enter the baseline, so a long bad stretch
does not become the new normal until it has lasted `window` steps, when it is adopted as a new level). Trends
(divergence, plateaus, a too-low LR) are judged on chunk means, so single noisy steps do not decide them.
"""

from slmkit.engine.doctor.live import LiveDoctor
from slmkit.engine.doctor.rules import RunFacts, Streams, diagnose, format_findings, run_facts
from slmkit.engine.doctor.signals import SEVERITIES, Finding

__all__ = ["SEVERITIES", "Finding", "LiveDoctor", "RunFacts", "Streams", "diagnose", "format_findings",
           "run_facts"]  # fmt: skip
