"""Open a run's report.html in headless Chromium and check that the screenshot shows the charts.

    python scripts/check_report_chromium.py                 # trains a 300-step tiny run in a temp dir first
    python scripts/check_report_chromium.py --run RUN --screenshot shot.png

Exit 0 when the page rendered with its charts, 1 when not, 77 when no Chromium is installed (Debian: apt-get install
chromium). The test suite runs this script when Chromium is installed (tests/test_report.py).

The check: the screenshot is a real page (many non-white pixels, many distinct colours) and it holds the charts'
coloured lines. The report's own styling is greyscale, so saturated pixels can only come from the embedded charts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=4",
        "train.max_steps=300", "train.eval_every=100", "train.eval_batches=2", "train.log_every=100",
        "tokenizer.kind=char", "optim.lr=3e-3", "optim.min_lr=3e-4", "optim.warmup=20"]  # fmt: skip
STDLIB_FILES = ("textwrap.py", "shlex.py", "fnmatch.py", "bisect.py", "colorsys.py", "heapq.py", "glob.py")


def find_browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def screenshot(browser: str, page: Path, out: Path, width: int = 1200, height: int = 3000) -> Path:
    """Render `page` headless into the PNG `out`."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={width},{height}", page.resolve().as_uri()]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return out


def analyse(png: Path) -> dict:
    """Fractions of non-white and of saturated (chart-coloured) pixels, and the number of distinct colours."""
    import matplotlib.image
    import numpy as np

    img = matplotlib.image.imread(str(png))[..., :3]  # (H, W, 3) floats in [0, 1]
    hi, lo = img.max(axis=2), img.min(axis=2)
    saturated = (hi - lo) > 0.25
    colours = np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    return {"height": img.shape[0], "width": img.shape[1], "non_white": float((lo < 0.95).mean()),
            "saturated": float(saturated.mean()), "colours": int(len(colours))}  # fmt: skip


def ok(stats: dict) -> bool:
    return stats["non_white"] > 0.02 and stats["colours"] > 200 and stats["saturated"] > 0.001


def tiny_run(workdir: Path) -> Path:
    """Train the 300-step tiny run on a few stdlib files (char tokenizer; no shared data needed)."""
    import os

    from slmkit.base.config_files import load_config
    from slmkit.data.prepare import prepare
    from slmkit.engine.train import train

    corpus = workdir / "corpus"
    corpus.mkdir()
    stdlib = Path(os.__file__).parent
    for name in STDLIB_FILES:
        (corpus / name).write_text((stdlib / name).read_text(encoding="utf-8"), encoding="utf-8")
    data = workdir / "data"
    prepare(str(corpus), tokenizer="char", out=data, val_fraction=0.2, progress=False)
    ov = [*TINY, f"data.dir={data}", f"train.out_dir={workdir / 'runs'}", "train.name=report-check"]
    return train(load_config(None, ov), overrides=ov, progress=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="an existing run dir (default: train a 300-step tiny run in a temp dir)")
    ap.add_argument("--screenshot", help="also copy the screenshot here")
    args = ap.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("no chromium found (apt-get install chromium); skipped")
        return 77
    from slmkit.study.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else tiny_run(Path(tmp))
        _, page = write_report(run, samples=1)
        shot = screenshot(browser, page, Path(tmp) / "shot.png")
        stats = analyse(shot)
        if args.screenshot:
            shutil.copy(shot, args.screenshot)
    stats["ok"] = ok(stats)
    print(json.dumps(stats))
    return 0 if stats["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
