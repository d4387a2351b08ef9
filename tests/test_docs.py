"""The docs check: every `slm` command in docs/*.md is a valid command line, and the tutorial runs end to end
(shrunk to seconds by scripts/docs_check.py --smoke; the full-size run wrote benchmarks/results/docs_tutorial.md)."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

from slmkit.cli import build_parser, parse_args

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted((REPO / "docs").glob("*.md"))


def _docs_check():
    spec = importlib.util.spec_from_file_location("docs_check", REPO / "scripts" / "docs_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHECK = _docs_check()
COMMANDS = [(page.name, c) for page in PAGES for c in CHECK.commands(page)]


def test_the_tutorial_has_commands_and_no_unfilled_numbers():
    page = REPO / "docs" / "tutorial.md"
    assert len(CHECK.commands(page)) >= 10
    assert "RESULT_" not in page.read_text()


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_docs_command_parses(page, command):
    args = parse_args(build_parser(), shlex.split(command)[1:])  # argparse exits (a failure here) on a bad flag
    assert isinstance(args.fn, str)  # a verb's handler ("module:function"), not a verb group's help
    CHECK.smoke(command)  # every training command states train.max_steps, so the smoke run can shrink it


def test_tutorial_runs_end_to_end_shrunk(tmp_path, need_data, gpt2_files):
    need_data("tinyshakespeare/input.txt")
    records = CHECK.run_page(REPO / "docs" / "tutorial.md", tmp_path, smoke_mode=True, echo=lambda *_: None,
                             slm=[sys.executable, "-m", "slmkit"])  # fmt: skip
    failed = [r for r in records if r["rc"] != 0]
    assert not failed, failed[0]["ran"] + "\n" + "\n".join(failed[0]["tail"])
    assert len(records) == len(CHECK.commands(REPO / "docs" / "tutorial.md"))
    assert (tmp_path / "inspect-tut" / "inspect.html").is_file()
    assert (tmp_path / "tut-char.png").is_file()
    assert (tmp_path / "study-pos" / "summary.md").is_file()
