"""`slm ... --help`: every verb's options show their defaults exactly once; overrides may follow the options."""

from __future__ import annotations

import argparse

import pytest

import slmkit.cli as cli
from slmkit.cli import build_parser

QUIET = (None, False, "", [])  # defaults that say nothing and are not shown


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of `slm` and every verb under it, groups included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


ALL = list(_parsers(build_parser()))


def _rendered(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The lines --help prints for one argument (what format_help prints for it), whitespace collapsed."""
    return " ".join(parser._get_formatter()._format_action(action).split())


def _arguments(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        yield action


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@pytest.mark.parametrize("path, parser", ALL, ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_default_is_shown_once(path, parser, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    parser.format_help()  # renders without error
    for action in _arguments(parser):
        text = _rendered(parser, action)
        assert text.count("default:") <= 1, f"slm {' '.join(path)}: {text}"
        shows = action.default not in QUIET and (action.option_strings or action.nargs in ("?", "*"))
        if shows:  # the value as written, or as the help's own %(default) format gives it (e.g. %(default)g)
            own = "%(default)" in (action.help or "")
            want = "default:" if own else f"default: {_shown(action.default)}"
            assert want in text, f"slm {' '.join(path)}: {text}"


def test_the_options_users_asked_about_show_their_defaults(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    helps = {" ".join(path): " ".join(p.format_help().split("options:", 1)[1].split()) for path, p in ALL if path}
    assert "--port PORT port to listen on (default: 8000)" in helps["serve"]
    for verb, tokens, temperature, top_k in (("sample", 200, 0.8, 0), ("chat", 256, 0.7, 50), ("compare", 64, 0.8, 0)):
        h = helps[verb]
        assert f"(default: {tokens})" in h.split("--max-new-tokens MAX_NEW_TOKENS", 1)[1].split("--", 1)[0]
        assert f"(default: {temperature})" in h.split("--temperature TEMPERATURE", 1)[1].split("--", 1)[0]
        assert f"(default: {top_k})" in h.split("--top-k TOP_K", 1)[1].split("--", 1)[0]
    assert (
        "--tokenizers KIND [KIND ...] tokenizer kinds to compare (default: char gpt2 bpe:8192)"
        in helps["tokenizer eval"]
    )


def test_export_help_names_both_formats(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = " ".join(capsys.readouterr().out.split())
    line = top.split(" export ", 1)[1].split(" quantize ", 1)[0]
    assert "hf" in line and "gguf" in line
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "gguf" in text.split("--format FORMAT", 1)[1] and "(default: hf)" in text


def test_every_verb_with_overrides_accepts_them_after_the_options():
    with_overrides = [" ".join(path) for path, p in ALL if any(a.dest == "overrides" for a in p._actions)]
    assert set(with_overrides) >= {"config show", "train", "ablate", "scaling sweep", "sft"}
    for path, p in ALL:
        if " ".join(path) in with_overrides:
            assert p.get_default("overrides_anywhere") is True, path


@pytest.mark.parametrize(
    "argv, config, overrides",
    [
        (["train", "tiny", "--no-progress", "train.max_steps=3", "optim.lr=1e-3"], "tiny",
         ["train.max_steps=3", "optim.lr=1e-3"]),
        (["train", "tiny", "optim.lr=1e-3", "--name", "x", "train.max_steps=3"], "tiny",
         ["optim.lr=1e-3", "train.max_steps=3"]),
        (["config", "show", "tiny", "optim.lr=1"], "tiny", ["optim.lr=1"]),
        (["ablate", "base", "--vary", "optim.lr=1e-3,3e-4", "train.max_steps=3"], "base", ["train.max_steps=3"]),
        (["scaling", "sweep", "tiny", "--budget", "1e12", "train.max_steps=3"], "tiny", ["train.max_steps=3"]),
        (["sft", "runs/x", "--data", "a.json", "lora.rank=8"], None, ["lora.rank=8"]),
    ],
)  # fmt: skip
def test_overrides_after_options_reach_the_handler(argv, config, overrides, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "handler", lambda spec: seen.append)
    assert cli.main(argv) == 0
    (args,) = seen
    assert args.overrides == overrides and getattr(args, "config", None) == config


def test_an_unknown_option_after_overrides_is_still_an_error(monkeypatch, capsys):
    monkeypatch.setattr(cli, "handler", lambda spec: pytest.fail("handler called"))
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "tiny", "--no-progress", "train.max_steps=3", "--bogus"])
    assert e.value.code == 2 and "--bogus" in capsys.readouterr().err
