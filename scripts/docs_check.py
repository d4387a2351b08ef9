"""Run every command of the docs, in order, the way a reader would: the docs check.

A command is a line starting with `slm ` inside a ```sh block of a docs page (a `\\` at the end of a line continues
it). Each page's commands run in one working directory (a fresh temporary one by default), so a page can train a
run and then look at it. Every command must exit 0.

    python scripts/docs_check.py docs/tutorial.md [--keep DIR] [--smoke]

--smoke shrinks the work so the whole page runs in seconds (tests/test_docs.py does this in the suite): every
`train.max_steps=N` becomes 4, evaluations use 2 batches, sampling makes at most 40 tokens. For that to work, each
`slm train` and `slm ablate` line of a page states its train.max_steps. Without --smoke the commands run as written
and their outputs (last lines) go to benchmarks/results/docs_<page>.md: the numbers quoted in the page come from
there. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FENCE = re.compile(r"^```sh\s*$(.*?)^```\s*$", re.M | re.S)
STEPS = re.compile(r"\btrain\.max_steps=\d+")
NEW_TOKENS = re.compile(r"--max-new-tokens \d+")


def commands(page: Path) -> list[str]:
    """The `slm ...` command lines of a page's ```sh blocks, continuation lines joined."""
    out = []
    for block in FENCE.findall(page.read_text(encoding="utf-8")):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()  # a comment after two spaces explains the line
            if line.startswith("slm "):
                out.append(" ".join(line.split()))
    return out


def smoke(command: str) -> str:
    """The same command, shrunk to seconds of work."""
    words = command.split()
    if words[1] in ("train", "ablate") and not STEPS.search(command):
        raise ValueError(f"a docs command trains without stating train.max_steps: {command}")
    command = STEPS.sub("train.max_steps=4 train.eval_batches=2 train.eval_every=2", command)
    return NEW_TOKENS.sub("--max-new-tokens 40", command)


def run_page(page: Path, workdir: Path, *, smoke_mode: bool = False, slm: list[str] | None = None,
             echo=print) -> list[dict]:  # fmt: skip
    """Run a page's commands in `workdir`; a list of {command, rc, seconds, tail}. Stops at the first failure."""
    slm = slm or [sys.executable, "-m", "slmkit"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    records = []
    for command in commands(page):
        run = smoke(command) if smoke_mode else command
        echo(f"$ {run}")
        t0 = time.perf_counter()
        proc = subprocess.run([*slm, *shlex.split(run)[1:]], cwd=workdir, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        records.append({"command": command, "ran": run, "rc": proc.returncode, "seconds": round(seconds, 1),
                        "tail": tail})  # fmt: skip
        if proc.returncode != 0:
            echo("\n".join(tail))
            break
    return records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pages", nargs="+", type=Path, help="docs pages (markdown)")
    ap.add_argument("--keep", type=Path, help="working directory to run in and keep (default: a temporary one)")
    ap.add_argument("--smoke", action="store_true", help="shrink every command to seconds of work")
    args = ap.parse_args()
    failed = False
    for page in args.pages:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = args.keep or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            records = run_page(page, workdir, smoke_mode=args.smoke)
        failed |= any(r["rc"] != 0 for r in records) or len(records) < len(commands(page))
        if not args.smoke:
            RESULTS.mkdir(parents=True, exist_ok=True)
            stem = f"docs_{page.stem}"
            (RESULTS / f"{stem}.json").write_text(json.dumps(records, indent=1) + "\n")
            lines = [f"# `{page}`: every command, run as written ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs)"]
            for r in records:
                lines += ["", f"## `{r['command']}`", f"exit {r['rc']}, {r['seconds']} s", "", "```", *r["tail"], "```"]
            (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
