"""Bad input, verb by verb: every case exits 2 with exactly one stderr line `error: ...` (no traceback) and leaves
the disk as it was (files, sizes and mtimes of the run, the dataset and the working folder).

The cases are built from tables: every numeric config field x values outside its range (`base.checks.RANGES`),
the known-bad overrides x the verbs that take overrides, bad sampling values x the verbs that sample, bad files
(missing, a directory, binary, not UTF-8, empty, blank) x every kind of path argument, and each verb's numeric
options. They run in-process on one tiny run trained once; almost all fail at argument or config validation
before a model loads. The one input that used to hang (`slm eval --stride -5`) runs in a subprocess with a timeout.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from conftest import tiny_overrides

from slmkit.base.checks import INT_MAX, RANGES

pytestmark = pytest.mark.usefixtures("one_thread")

RUN, F, WS, DATA = "{run}", "{f}", "{ws}", "{data}"
BAD_FILES = {"missing": f"{F}/missing.txt", "dir": f"{F}/adir", "binary": f"{F}/binary.bin",
             "latin1": f"{F}/latin1.txt", "empty": f"{F}/empty.txt", "blank": f"{F}/blank.txt"}  # fmt: skip
PROMPTS, SFT_DATA, TEXT = f"{F}/prompts.txt", f"{F}/sft.jsonl", f"{F}/ok.txt"


# ---------------------------------------------------------------------------------------------------------
# The cases: (id, argv); {run}, {f}, {ws}, {data} are filled in with the fixture's paths.


def _field_type(key: str) -> type:
    from slmkit.base.config import RunConfig

    section, name = key.split(".")
    return typing.get_type_hints(type(getattr(RunConfig(), section)))[name]


def _out_of_range(key: str) -> list[str]:
    """Values of a numeric config field that its range refuses: below, above, huge, NaN/inf, wrong type."""
    rng, kind = RANGES[key], _field_type(key)
    low = rng.low if rng.low_open else rng.low - 1
    values = [low if kind is float else int(low)]
    if rng.high == INT_MAX:
        values.append(2**63)
    elif rng.high != math.inf:
        values.append(rng.high if rng.high_open else (rng.high + 1 if kind is int else rng.high + 0.5))
    values = [str(v) for v in values] + (["nan", "inf", "-inf"] if kind is float else ["1.5", "nan"]) + ["abc"]
    return values


def _config_cases() -> list[tuple[str, list[str]]]:
    return [(f"config-show-{key}={v}", ["config", "show", f"{key}={v}"]) for key in RANGES for v in _out_of_range(key)]


KNOWN_BAD_OVERRIDES = ["optim.grad_clip=-1", "train.ckpt_minutes=-1", "optim.beta1=2", "optim.eps=-1", "optim.lr=nan",
                       "model.mlp_hidden=-5", "train.threads=-1", "train.seed=1" + "0" * 30]  # fmt: skip
OVERRIDE_VERBS = {
    "train": ["train", "tiny"],
    "train-init-from": ["train", "--init-from", RUN],
    "sft": ["sft", RUN, "--data", SFT_DATA],
    "ablate": ["ablate", "tiny", "--vary", "optim.lr=1e-3", "--out", f"{WS}/abl"],
    "scaling-sweep": ["scaling", "sweep", "tiny", "--budget", "1e12", "--out", f"{WS}/sweep"],
}


def _override_cases() -> list[tuple[str, list[str]]]:
    return [(f"{verb}-{o}", [*argv, o]) for verb, argv in OVERRIDE_VERBS.items() for o in KNOWN_BAD_OVERRIDES]


BAD_SAMPLING = [("--temperature", "-1"), ("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "3"),
                ("--temperature", "hot"), ("--top-k", "-3"), ("--top-k", "1.5"), ("--top-p", "2"), ("--top-p", "-1"),
                ("--top-p", "nan"), ("--max-new-tokens", "-5"), ("--max-new-tokens", "0"), ("--max-new-tokens", "x"),
                ("--seed", "1" + "0" * 30), ("--seed", str(2**63)), ("--seed", str(-(2**63) - 1)),
                ("--seed", "1.5")]  # fmt: skip
SAMPLING_VERBS = {
    "sample": ["sample", RUN],
    "chat": ["chat", RUN],
    "compare": ["compare", RUN, "--prompts", PROMPTS, "--out", f"{WS}/cmp"],
}


def _sampling_cases() -> list[tuple[str, list[str]]]:
    cases = [(f"{verb}{flag}={v}", [*argv, flag, v]) for verb, argv in SAMPLING_VERBS.items()
             for flag, v in BAD_SAMPLING if not (verb == "compare" and flag == "--top-p")]  # fmt: skip
    last = str(2**63 - 1)
    return cases + [
        ("sample-num-samples-0", ["sample", RUN, "--num-samples", "0"]),
        ("sample-num-samples--1", ["sample", RUN, "--num-samples", "-1"]),
        ("sample-seed+i-overflows", ["sample", RUN, "--seed", last, "--num-samples", "2"]),
        ("compare-num-seeds-0", [*SAMPLING_VERBS["compare"], "--num-seeds", "0"]),
        ("compare-seed+i-overflows", [*SAMPLING_VERBS["compare"], "--seed", last, "--num-seeds", "2"]),
    ]


RUN_ARG_VERBS = {
    "sample": ["sample", "{x}"], "chat": ["chat", "{x}"], "eval": ["eval", "{x}", "--tasks", "val"],
    "export": ["export", "{x}", "--out", f"{WS}/ex"], "quantize": ["quantize", "{x}", "--out", f"{WS}/q"],
    "serve": ["serve", "{x}"], "doctor": ["doctor", "{x}"], "report": ["report", "{x}"],
    "plot": ["plot", "{x}", "--out", f"{WS}/p.png"], "lora-merge": ["lora", "merge", "{x}"],
    "sft": ["sft", "{x}", "--data", SFT_DATA], "compare": ["compare", "{x}", "--prompts", PROMPTS],
    "resume": ["train", "--resume", "{x}"], "init-from": ["train", "--init-from", "{x}"],
    "scaling-calc-run": ["scaling", "calc", "--run", "{x}"],
}  # fmt: skip
TEXT_ARG_VERBS = {
    "sft-data": ["sft", RUN, "--data", "{x}"],
    "compare-prompts": ["compare", RUN, "--prompts", "{x}", "--out", f"{WS}/cmp"],
    "eval-data": ["eval", RUN, "--tasks", "val", "--data", "{x}"],
    "quantize-data": ["quantize", RUN, "--data", "{x}", "--out", f"{WS}/q"],
}
CONFIG_ARG_VERBS = {
    "config-show": ["config", "show", "{x}"], "train": ["train", "{x}"],
    "ablate": ["ablate", "{x}", "--vary", "optim.lr=1e-3", "--out", f"{WS}/abl"],
    "scaling-sweep": ["scaling", "sweep", "{x}", "--budget", "1e12", "--out", f"{WS}/sweep"],
    "scaling-calc-config": ["scaling", "calc", "--config", "{x}"],
}  # fmt: skip
BAD_CONFIGS = {"no-such-preset": "nosuchpreset", "dir": f"{F}/adir", "binary": f"{F}/binary.toml",
               "latin1": f"{F}/latin1.toml", "empty": f"{F}/empty.toml", "blank": f"{F}/blank.toml",
               "not-toml": f"{F}/bad.toml"}  # fmt: skip
CORPUS_ARG_VERBS = {
    "tokenizer-train": ["tokenizer", "train", "{x}", "--out", f"{WS}/tok"],
    "tokenizer-eval": ["tokenizer", "eval", "{x}"],
    "prepare": ["prepare", "{x}", "--out", f"{WS}/prep"],
}
DIR_ARG_VERBS = {
    "data-info": ["data", "info", "{x}"], "tokenizer-info": ["tokenizer", "info", "{x}"],
    "import-hf": ["import-hf", "{x}", "--out", f"{WS}/imp"], "runs": ["runs", "{x}"],
}  # fmt: skip


def _fill(argv: list[str], x: str) -> list[str]:
    return [a.replace("{x}", x) for a in argv]


def _file_cases() -> list[tuple[str, list[str]]]:
    pick = {k: BAD_FILES[k] for k in ("missing", "dir", "binary", "empty")}
    cases = [(f"run-arg-{v}-{k}", _fill(a, p)) for v, a in RUN_ARG_VERBS.items() for k, p in pick.items()]
    cases += [(f"text-arg-{v}-{k}", _fill(a, p)) for v, a in TEXT_ARG_VERBS.items() for k, p in BAD_FILES.items()]
    cases += [(f"config-arg-{v}-{k}", _fill(a, p)) for v, a in CONFIG_ARG_VERBS.items() for k, p in BAD_CONFIGS.items()]
    cases += [(f"corpus-arg-{v}-{k}", _fill(a, p)) for v, a in CORPUS_ARG_VERBS.items() for k, p in pick.items()]
    dirs = [(v, a, k, p) for v, a in DIR_ARG_VERBS.items() for k, p in pick.items()]
    cases += [(f"dir-arg-{v}-{k}", _fill(a, p)) for v, a, k, p in dirs if (v, k) != ("runs", "dir")]  # empty: fine
    return cases


PREPARE = ["prepare", TEXT, "--out", f"{WS}/prep"]
SCALING_CALC_BAD = [("--params", "-5"), ("--params", "0"), ("--params", "abc"), ("--tokens", "-1"), ("--budget", "-1"),
                    ("--budget", "0h"), ("--ratio", "0"), ("--ratio", "nan"), ("--lr", "-1"),
                    ("--lr", "inf")]  # fmt: skip
SCALING_SWEEP_BAD = [("--levels", "0"), ("--level-ratio", "1"), ("--level-ratio", "nan"), ("--parallel", "0"),
                     ("--bootstrap", "-1"), ("--sizes", "abc"), ("--sizes", "0x32")]  # fmt: skip
OPTION_CASES = [
    # eval
    ("eval-stride-x", ["eval", RUN, "--tasks", "val", "--stride", "x"]),
    ("eval-limit--1", ["eval", RUN, "--tasks", "hellaswag", "--limit", "-1"]),
    ("eval-limit-nan", ["eval", RUN, "--tasks", "hellaswag", "--limit", "nan"]),
    ("eval-val-tokens--5", ["eval", RUN, "--tasks", "val", "--val-tokens", "-5"]),
    ("eval-val-tokens-1", ["eval", RUN, "--tasks", "val", "--val-tokens", "1"]),
    ("eval-tasks-empty", ["eval", RUN, "--tasks", ""]),
    ("eval-tasks-commas", ["eval", RUN, "--tasks", ",,"]),
    ("eval-tasks-unknown", ["eval", RUN, "--tasks", "nope"]),
    ("eval-data-without-val", ["eval", RUN, "--tasks", "hellaswag", "--data", TEXT]),
    ("eval-stride-without-val", ["eval", RUN, "--tasks", "hellaswag", "--stride", "8"]),
    ("eval-limit-without-benchmark", ["eval", RUN, "--tasks", "val", "--limit", "3"]),
    ("eval-task-source-without-benchmark", ["eval", RUN, "--tasks", "val", "--task-source", "hf"]),
    ("eval-data-one-token", ["eval", RUN, "--tasks", "val", "--data", f"{F}/one.txt"]),
    ("eval-checkpoint-99", ["eval", RUN, "--tasks", "val", "--checkpoint", "99"]),
    # quantize
    ("quantize-eval-tokens--1", ["quantize", RUN, "--eval-tokens", "-1", "--out", f"{WS}/q"]),
    ("quantize-method-int4", ["quantize", RUN, "--method", "int4", "--out", f"{WS}/q"]),
    ("quantize-data-with-no-report", ["quantize", RUN, "--data", TEXT, "--no-report", "--out", f"{WS}/q"]),
    ("quantize-out-existing", ["quantize", RUN, "--out", f"{WS}/full"]),
    ("quantize-out-a-file", ["quantize", RUN, "--out", f"{WS}/afile.txt"]),
    # serve
    *[(f"serve-port-{p}", ["serve", RUN, "--port", p]) for p in ("70000", "65536", "0", "-1", "x", "nan")],
    ("serve-slots-0", ["serve", RUN, "--slots", "0"]),
    ("serve-max-tokens-cap-0", ["serve", RUN, "--max-tokens-cap", "0"]),
    ("serve-threads--1", ["serve", RUN, "--threads", "-1"]),
    ("serve-threads-5000", ["serve", RUN, "--threads", "5000"]),
    # tokenizer, prepare
    ("tokenizer-train-vocab-0", ["tokenizer", "train", TEXT, "--out", f"{WS}/tok", "--vocab-size", "0"]),
    ("tokenizer-train-max-bytes--1", ["tokenizer", "train", TEXT, "--out", f"{WS}/tok", "--max-bytes", "-1"]),
    ("tokenizer-train-out-a-file", ["tokenizer", "train", TEXT, "--out", f"{WS}/afile.txt"]),
    ("tokenizer-eval-max-bytes--1", ["tokenizer", "eval", TEXT, "--max-bytes", "-1"]),
    ("tokenizer-eval-bogus-kind", ["tokenizer", "eval", TEXT, "--tokenizers", "bogus"]),
    *[(f"prepare-val-fraction-{v}", [*PREPARE, "--val-fraction", v]) for v in ("nan", "1", "-0.1", "inf")],
    *[(f"prepare-seed-{v}", [*PREPARE, "--seed", v]) for v in ("-1", "x", str(2**64))],
    ("prepare-workers--1", [*PREPARE, "--workers", "-1"]),
    ("prepare-shard-tokens-0", [*PREPARE, "--shard-tokens", "0"]),
    ("prepare-out-existing-dataset", ["prepare", TEXT, "--out", DATA, "--tokenizer", "char"]),
    ("prepare-out-a-file", ["prepare", TEXT, "--out", f"{WS}/afile.txt", "--tokenizer", "char"]),
    # train, sample, report, export, import-hf, compare, plot
    ("train-nproc--1", ["train", "--nproc", "-1"]),
    ("train-unknown-key", ["train", "tiny", "optim.learning_rate=1e-3"]),
    ("train-override-without-value", ["train", "tiny", "optim.lr"]),
    ("sample-checkpoint-abc", ["sample", RUN, "--checkpoint", "abc"]),
    ("sample-num-samples-x", ["sample", RUN, "--num-samples", "x"]),
    ("report-samples--1", ["report", RUN, "--samples", "-1"]),
    ("export-out-existing", ["export", RUN, "--out", f"{WS}/full"]),
    ("export-format-zzz", ["export", RUN, "--out", f"{WS}/ex", "--format", "zzz"]),
    ("import-hf-out-existing", ["import-hf", RUN, "--out", f"{WS}/full"]),
    ("compare-out-a-file", ["compare", RUN, "--prompts", PROMPTS, "--out", f"{WS}/afile.txt"]),
    ("plot-out-a-dir", ["plot", RUN, "--out", f"{WS}/full"]),
    ("plot-out-no-extension", ["plot", RUN, "--out", f"{WS}/plotfile"]),
    # ablate, scaling
    ("ablate-seeds-0", ["ablate", "tiny", "--vary", "optim.lr=1e-3", "--seeds", "0", "--out", f"{WS}/abl"]),
    ("ablate-parallel-0", ["ablate", "tiny", "--vary", "optim.lr=1e-3", "--parallel", "0", "--out", f"{WS}/abl"]),
    *[(f"scaling-calc-{flag}={v}", ["scaling", "calc", flag, v]) for flag, v in SCALING_CALC_BAD],
    ("scaling-calc-batch-0", ["scaling", "calc", "--lr", "1e-3", "--batch", "0", "2"]),
    ("scaling-map-ratio-nan", ["scaling", "map", "--ratio", "nan", "--out", f"{WS}/m.png"]),
    ("scaling-map-out-a-dir", ["scaling", "map", "--out", f"{WS}/full"]),
    ("scaling-fit-bootstrap--1", ["scaling", "fit", RUN, "--bootstrap", "-1"]),
    ("scaling-fit-budget--1", ["scaling", "fit", RUN, "--budget", "-1"]),
    *[(f"scaling-sweep-{flag}={v}", [*OVERRIDE_VERBS["scaling-sweep"], flag, v]) for flag, v in SCALING_SWEEP_BAD],
    ("scaling-sweep-budget--1", ["scaling", "sweep", "tiny", "--budget", "-1", "--out", f"{WS}/sweep"]),
    ("lm-eval-without-tasks", ["lm-eval"]),
    # usage errors
    ("unknown-verb", ["bogus"]),
    ("missing-required", ["sample"]),
    ("unknown-option", ["train", "--bogus"]),
]

CASES = _config_cases() + _override_cases() + _sampling_cases() + _file_cases() + OPTION_CASES


def test_the_case_tables():
    assert len(CASES) >= 218 and len({c for c, _ in CASES}) == len(CASES)


def test_every_numeric_config_field_has_a_range():
    from slmkit.base.config import all_keys

    numeric = {k for k in all_keys() if "." in k and _field_type(k) in (int, float)}
    assert numeric == set(RANGES)


# ---------------------------------------------------------------------------------------------------------
# The workspace: a tiny run, bad files, and a working folder; snapshots of all of it.


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_dataset):
    from slmkit.base.config_files import load_config
    from slmkit.engine.train import train

    root = tmp_path_factory.mktemp("bad-inputs")
    data = tiny_dataset()
    tiny = tiny_overrides("train.max_steps=2", "train.eval_every=2", "train.log_every=1")
    overrides = [*tiny, f"data.dir={data}", f"train.out_dir={root / 'runs'}", "train.name=tiny"]
    run = train(load_config(None, overrides), overrides=overrides, progress=False)
    f = root / "files"
    (f / "adir").mkdir(parents=True)
    (f / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (f / "latin1.txt").write_bytes("café naïve\n".encode("latin-1"))
    (f / "empty.txt").write_bytes(b"")
    (f / "blank.txt").write_text(" \n\t\n")
    (f / "one.txt").write_text("x")  # one token: nothing to predict
    (f / "ok.txt").write_text("def f(x):\n    return x\n" * 20)
    (f / "prompts.txt").write_text("def f\n")
    (f / "sft.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                 '{"role": "assistant", "content": "ok"}]}\n')  # fmt: skip
    for name in ("binary", "latin1", "empty", "blank"):
        (f / f"{name}.toml").write_bytes((f / f"{name}.{'bin' if name == 'binary' else 'txt'}").read_bytes())
    (f / "bad.toml").write_text("[optim\nlr = \n")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("keep")
    (root / "afile.txt").write_text("a file")
    (root / "cwd").mkdir()
    subs = {RUN: str(run), F: str(f), WS: str(root), DATA: str(data)}
    return root, data, subs


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file (size, mtime) and folder (its entries) under `roots`."""
    out = {}
    for root in roots:
        for d, dirs, files in os.walk(root):
            out[d] = tuple(sorted(dirs + files))
            for name in files:
                st = os.stat(os.path.join(d, name))
                out[os.path.join(d, name)] = (st.st_size, st.st_mtime_ns)
    return out


def _argv(argv: list[str], subs: dict[str, str]) -> list[str]:
    out = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("argv", [a for _, a in CASES], ids=[c for c, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(argv, ws, capsys, monkeypatch):
    from slmkit.cli import main

    root, data, subs = ws
    monkeypatch.chdir(root / "cwd")  # default outputs (plot.png, compare/, runs/) would land here
    before = snapshot(root, data)
    try:
        code = main(_argv(argv, subs))
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert snapshot(root, data) == before


def test_eval_with_a_negative_stride_is_refused_not_a_hang(ws):
    """`slm eval --stride -5` used to loop forever growing its window list; run it where a hang cannot stall the
    suite, both through the CLI and straight into the library (`sliding_nll`)."""
    root, _, subs = ws
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cli = [sys.executable, "-m", "slmkit", "eval", subs[RUN], "--tasks", "val", "--stride", "-5", "--no-progress"]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=120, env=env, cwd=root / "cwd")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    code = ("import numpy as np, sys\nfrom slmkit.runs.checkpoint import load_model\n"
            "from slmkit.engine.evaluate.loss import sliding_nll\nfrom slmkit.base.errors import SlmError\n"
            f"model = load_model({subs[RUN]!r})[0]\n"
            "try:\n    sliding_nll(model, np.arange(200) % 20, stride=-5)\nexcept SlmError as e:\n"
            "    print(e)\n    sys.exit(3)\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 3 and "stride" in proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "body, param, library",
    [
        ({"temperature": -1}, "temperature", {"temperature": -1}),
        ({"temperature": float("nan")}, "temperature", {"temperature": float("nan")}),
        ({"top_p": 2}, "top_p", {"top_p": 2}),
        ({"seed": 2**63}, "seed", {"seed": 2**63}),
        ({"seed": "7"}, "seed", {"seed": "7"}),
        ({"max_tokens": 0}, "max_tokens", {"max_new_tokens": 0}),
        ({"max_completion_tokens": -5}, "max_completion_tokens", {"max_new_tokens": -5}),
    ],
)
def test_the_server_refuses_sampling_values_in_the_library_words(body, param, library):
    """`slm serve` answers 400 with the message of `model.generate.check_sampling`, the check `slm sample`, `chat`
    and `compare` use (only the parameter's name is spelled as the client spelled it)."""
    pytest.importorskip("fastapi")
    from slmkit.model.generate import SamplingError, check_sampling
    from slmkit.ship.serve.protocol import APIError, parse_sampling

    with pytest.raises(APIError) as api:
        parse_sampling(body, cap=64)
    with pytest.raises(SamplingError) as lib:
        check_sampling({"max_new_tokens": param}, **library)
    assert api.value.status == 400 and api.value.param == param and api.value.message == str(lib.value)


def test_top_p_0_is_honoured_as_the_most_likely_token():
    """top_p = 0 keeps only the most likely token (the server used to turn it into 1.0: no nucleus at all)."""
    import torch

    from slmkit.base.config_files import load_config
    from slmkit.model.generate import generate, sample_next
    from slmkit.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(load_config(None, [*tiny_overrides(), "model.vocab_size=50"]).model)
    greedy = list(generate(model, [1, 2], 12, temperature=0))
    assert list(generate(model, [1, 2], 12, temperature=1.5, top_p=0.0, seed=5)) == greedy
    logits = torch.randn(50)
    assert sample_next(logits, 1.0, 0, 0.0, torch.Generator().manual_seed(1)) == int(torch.argmax(logits))
