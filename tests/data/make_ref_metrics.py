"""Write a reference run's metrics as a small test fixture for tests/test_doctor.py (the doctor's calibration).

    python tests/data/make_ref_metrics.py runs/shakespeare-char tests/data/ref-shakespeare-char.jsonl.gz

Keeps only what the doctor and the report's expectations read (step, train/loss, train/grad_norm, train/lr,
train/clipped, train/tokens, val/loss), rounded so that it gzips small; the first line holds the run's config.toml
and the run.json fields the report reads (`{"fixture": {...}}`).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

KEEP = {"train/loss": 4, "train/grad_norm": 4, "train/lr": None, "train/clipped": 0, "train/tokens": 0, "val/loss": 4}
INFO = ("name", "status", "preset", "num_params", "step", "tokens_seen", "best_val_loss", "slmkit")


def _round(key: str, v: float) -> float | int:
    digits = KEEP[key]
    if digits is None:
        return float(f"{v:.4g}")
    return int(v) if digits == 0 else round(v, digits)


def main(run_dir: str, out: str) -> None:
    run = Path(run_dir)
    info = json.loads((run / "run.json").read_text())
    lines = [{"fixture": {"config.toml": (run / "config.toml").read_text(),
                          "run.json": {k: info[k] for k in INFO if k in info}}}]  # fmt: skip
    for line in (run / "metrics.jsonl").read_text().splitlines():
        e = json.loads(line)
        kept = {k: _round(k, v) for k, v in e.items() if k in KEEP}
        if kept:
            lines.append({"step": e["step"], **kept})
    with gzip.GzipFile(out, "wb", mtime=0) as f:  # mtime=0: the same run gives the same bytes
        f.write("".join(json.dumps(x) + "\n" for x in lines).encode())


if __name__ == "__main__":
    main(*sys.argv[1:3])
