"""Run reports on a real tiny run: Markdown + self-contained HTML with every section; the headless-Chromium check
(scripts/check_report_chromium.py, a real 300-step run) when Chromium is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slmkit.study.expectations import hints

REPO = Path(__file__).resolve().parent.parent
# changes to the `tiny` preset (not conftest's TINY): the report lists them against the preset
PRESET_CHANGES = ["train.max_steps=40", "train.eval_every=20", "train.eval_batches=2", "train.log_every=100",
                  "model.n_embd=32", "train.name=rep"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, stdlib_dir):
    from slmkit.base.config_files import load_config
    from slmkit.data.prepare import prepare
    from slmkit.engine.train import train

    root = tmp_path_factory.mktemp("report")
    src = root / "corpus"
    src.mkdir()
    for name in ("textwrap.py", "shlex.py", "fnmatch.py", "bisect.py", "heapq.py"):
        (src / name).write_text((stdlib_dir / name).read_text(encoding="utf-8"), encoding="utf-8")
    prepare(str(src), tokenizer="char", out=root / "data", val_fraction=0.2, progress=False)
    ov = [*PRESET_CHANGES, f"data.source={src}", f"data.dir={root / 'data'}", f"train.out_dir={root / 'runs'}"]
    return train(load_config("tiny", ov), overrides=ov, progress=False)


def test_report_sections(run, run_cli):
    code, out, _ = run_cli("report", run, "--samples", "1")
    assert code == 0
    md, page = (run / "report.md"), (run / "report.html")
    assert out.split() == [str(md), str(page)]
    text = md.read_text()
    for heading in ("# Run report: rep", "## Summary", "## Is this normal?", "## Charts", "## Doctor", "## Samples",
                    "## Checkpoints", "## Config", "## Hardware and versions"):  # fmt: skip
        assert heading in text, heading
    for row in ("| parameters |", "| tokens seen | 20,480 |", "tokens / parameter", "| final val loss |",
                "| val perplexity |", "| val bits per byte |", "| MFU (median) |", "throughput"):  # fmt: skip
        assert row in text, row
    assert "Differences from preset `tiny`" in text and "| train.max_steps | 50 | 40 |" in text
    assert "ln(192)" in text and "(report.png)" in (text) and (run / "report.png").stat().st_size > 20_000
    assert "| 40 |" in text and "best, latest" in text  # checkpoint list
    html = page.read_text()
    assert "data:image/png;base64," in html and not re.search(r"(src|href)=['\"](?!data:)", html)  # self-contained
    assert "<table>" in html and "&lt;" not in html.split("<pre>")[0]


def test_expected_range_hints_for_known_setups():
    lines = hints("shakespeare-char", "tinyshakespeare", "char", 65, 2000, 4.2, 1.9, 1.0)
    assert any("1.88 at step 2000" in h and "as expected" in h for h in lines)
    assert any("ln(128)" in h for h in lines) and any("Bits per byte" in h for h in lines)
    assert not any("1.88" in h for h in hints("default", "python-stdlib", "bpe:4096", 4096, 500, 8.3, 3.0, 3.2))


@pytest.mark.slow
@pytest.mark.skipif(not any(map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))),
                    reason="no chromium (apt-get install chromium; .ci/run installs it)")  # fmt: skip
def test_report_renders_in_headless_chromium(tmp_path):
    shot = tmp_path / "shot.png"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_report_chromium.py"), "--screenshot",
                           str(shot)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert '"ok": true' in proc.stdout and shot.stat().st_size > 50_000
