"""The `slm` front end (slmkit/cli): every verb and sub-verb has --help and a handler that resolves; unknown verbs
and flags exit 2; a SlmError becomes one `error: ...` line and exit 2; sft takes overrides after its options;
`python -m slmkit` is `slm`. The verbs are found by walking the parser, so a new verb is covered as it is added."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from slmkit import __version__
from slmkit.base.errors import SlmError
from slmkit.cli import EXIT_USER_ERROR, build_parser, handler, main


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: p for a in subs for name, p in a.choices.items()}


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """(words after `slm`, the `fn` default) of every verb and sub-verb."""
    out = []
    for name, sub in _subcommands(parser).items():
        out.append(((*path, name), sub.get_default("fn")))
        out += _walk(sub, (*path, name))
    return out


VERBS = _walk(build_parser())
IDS = [" ".join(words) for words, _ in VERBS]


def _exit_code(*argv: str) -> int:
    """main(argv) for argv that argparse answers itself (--help, usage errors): the SystemExit code."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    return e.value.code


def _patch_handler(monkeypatch, words: tuple[str, ...], fake) -> None:
    """Make verb `words` call `fake(args)` in place of its "module:function" handler."""
    spec = dict(VERBS)[words]
    module, name = spec.split(":")
    monkeypatch.setattr(importlib.import_module(f"slmkit.cli.{module}"), name, fake)


def test_the_walk_finds_the_verbs():
    words = {w for w, _ in VERBS}
    for verb in (("train",), ("sample",), ("sft",), ("eval",), ("serve",), ("config", "show"), ("scaling", "fit")):
        assert verb in words, verb
    assert len(VERBS) > 25


def test_help_lists_every_verb(capsys):
    assert _exit_code("--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: slm") and "slm COMMAND --help" in out
    for name in _subcommands(build_parser()):
        assert f"    {name} " in out or f"    {name}\n" in out, name


def test_no_arguments_prints_the_help(run_cli):
    code, out, _ = run_cli()
    assert code == 0 and out.startswith("usage: slm") and "commands:" in out


@pytest.mark.parametrize("words", [w for w, _ in VERBS], ids=IDS)
def test_every_verb_has_help(words, capsys):
    assert _exit_code(*words, "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: slm {' '.join(words)}") and "options:" in out


@pytest.mark.parametrize("words,fn", VERBS, ids=IDS)
def test_every_handler_resolves(words, fn):
    assert fn is not None, f"slm {' '.join(words)} sets no handler"
    assert callable(handler(fn)), f"slm {' '.join(words)}: {fn!r} does not name a function"


def test_handler_of_a_callable_is_itself():
    def fn(args):
        return 0

    assert handler(fn) is fn


def test_a_group_without_a_sub_verb_prints_its_help(run_cli):
    groups = [w for w, fn in VERBS if callable(fn)]
    assert ("config",) in groups and ("scaling",) in groups
    for words in groups:
        code, out, _ = run_cli(*words)
        assert code == 0 and out.startswith(f"usage: slm {' '.join(words)}"), words


@pytest.mark.parametrize(
    "argv,message",
    [
        (["bogus"], "invalid choice: 'bogus'"),
        (["config", "bogus"], "invalid choice: 'bogus'"),
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["runs", "--bogus", "x"], "unrecognized arguments: --bogus"),
        (["sample"], "the following arguments are required: run"),
        (["sft", "runs/x", "--data", "d.json", "stray"], "unrecognized arguments: stray"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    """A usage error is one line (`error: slm VERB: ...` and where the options are listed), exit code 2."""
    assert _exit_code(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: slm") and message in err and "--help` lists the options" in err
    assert len(err.splitlines()) == 1


def test_version(capsys):
    assert _exit_code("--version") == 0
    assert capsys.readouterr().out.strip() == f"slmkit {__version__}"


def test_slm_error_is_one_line_and_exit_2(run_cli):
    code, out, err = run_cli("config", "show", "tiny", "optim.lrr=1e-3")
    assert code == EXIT_USER_ERROR == 2 and out == ""
    assert err.startswith("error: ") and "unknown config key" in err and err.count("\n") == 1


def test_config_show_with_overrides_only(run_cli):
    """`slm config show [CONFIG] [key=value ...]` (README): no CONFIG, so the first key=value is an override."""
    code, out, err = run_cli("config", "show", "tiny", "optim.lr=3e-4")
    assert code == 0 and "optim.lr" in out and "0.0003" in out, err


def test_config_show_first_override_is_not_a_config_name(run_cli):
    code, out, err = run_cli("config", "show", "optim.lr=6e-3")
    assert code == 0 and "0.006" in out, err


def test_any_handler_raising_slm_error(run_cli, monkeypatch):
    def fail(args):
        raise SlmError("the run dir is damaged; pass another")

    _patch_handler(monkeypatch, ("runs",), fail)
    assert run_cli("runs", "somewhere") == (2, "", "error: the run dir is damaged; pass another\n")


def test_ctrl_c_exits_130(run_cli, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    _patch_handler(monkeypatch, ("runs",), interrupted)
    code, _, err = run_cli("runs")
    assert code == 130 and err == "interrupted\n"


def test_handler_return_value_is_the_exit_code(run_cli, monkeypatch):
    _patch_handler(monkeypatch, ("runs",), lambda args: 3)
    assert run_cli("runs")[0] == 3
    _patch_handler(monkeypatch, ("runs",), lambda args: None)
    assert run_cli("runs")[0] == 0


def test_sft_takes_overrides_after_its_options(run_cli, monkeypatch):
    seen = []
    _patch_handler(monkeypatch, ("sft",), seen.append)
    code, _, _ = run_cli("sft", "runs/base", "lora.rank=8", "--data", "a.json", "train.max_steps=5", "optim.lr=1e-4",
                         "--name", "child")  # fmt: skip
    assert code == 0
    (args,) = seen
    assert args.parent == "runs/base" and args.data == "a.json" and args.name == "child"
    assert args.overrides == ["lora.rank=8", "train.max_steps=5", "optim.lr=1e-4"]
    assert args.argv[0] == "sft"  # the command line as typed, for verbs that relaunch themselves


def test_train_overrides_and_config(run_cli, monkeypatch):
    seen = []
    _patch_handler(monkeypatch, ("train",), seen.append)
    run_cli("train", "tiny", "optim.lr=3e-4", "train.max_steps=2", "--name", "x")
    assert seen[0].config == "tiny" and seen[0].overrides == ["optim.lr=3e-4", "train.max_steps=2"]


def test_building_the_parser_imports_no_torch():
    """`slm --help` answers at once: the parser imports no library code (handlers are imported when they run)."""
    code = "import sys; from slmkit.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def test_python_m_slmkit():
    proc = subprocess.run([sys.executable, "-m", "slmkit", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"slmkit {__version__}", proc.stderr
    proc = subprocess.run([sys.executable, "-m", "slmkit", "bogus"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
