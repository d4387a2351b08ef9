"""Property-based fuzzing (hypothesis) of the code that reads what users type: the config override parser and
`from_dict` either give a typed, validated config or raise ConfigError, never another exception; the chat template
renders any list of role/content strings or raises an SlmError; the sampling and range checks answer every value.
Example counts stay modest (each test runs in a second or two)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from slmkit.base.checks import RANGES, Range, number_problem  # noqa: E402
from slmkit.base.config import ConfigError, RunConfig, all_keys, apply_overrides, from_dict  # noqa: E402
from slmkit.base.config_files import load_config  # noqa: E402
from slmkit.base.errors import SlmError  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = all_keys()

# values a user might type: numbers in every spelling, specials, lists, TOML-ish text, and anything at all
typed_values = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "1_000", "0x10", "true", "False", "none", "", " ", "[]",
                     "[1, 2]", "['a', 'b']", "a,b", "[*.py, *.md]", "[", "]", "\"q\"", "1e-400", "9" * 30]),
    st.text(max_size=30),
)  # fmt: skip
BIG = 10**400  # more than a float holds
json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-BIG, BIG)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _config_or_config_error(build) -> RunConfig | None:
    try:
        cfg = build()
    except ConfigError as e:
        assert str(e) and "\n" not in str(e).strip(), repr(str(e))
        return None
    assert isinstance(cfg, RunConfig)
    return cfg


def _numbers_in_range(cfg: RunConfig) -> None:
    """A config that was accepted holds only values inside their ranges (no NaN, no infinity)."""
    for key, rng in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        kind = int if isinstance(value, int) and not isinstance(value, bool) else float
        assert number_problem(key, value, rng, kind) is None, (key, value)


@FUZZ
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=20)), value=typed_values)
def test_an_override_parses_to_a_typed_config_or_raises_config_error(key, value):
    cfg = _config_or_config_error(lambda: load_config(None, [f"{key}={value}"]))
    if cfg is not None:
        _numbers_in_range(cfg)


@FUZZ
@given(text=st.text(max_size=40))
def test_any_override_string_parses_or_raises_config_error(text):
    _config_or_config_error(lambda: from_dict(apply_overrides({}, [text])))


@FUZZ
@given(overrides=st.lists(st.tuples(st.sampled_from(KEYS), typed_values), max_size=5))
def test_several_overrides_together(overrides):
    cfg = _config_or_config_error(lambda: load_config(None, [f"{k}={v}" for k, v in overrides]))
    if cfg is not None:
        _numbers_in_range(cfg)


@FUZZ
@given(data=st.dictionaries(st.one_of(st.sampled_from([k.split(".")[0] for k in KEYS]), st.text(max_size=8)),
                            st.one_of(st.dictionaries(st.one_of(st.sampled_from([k.split(".")[-1] for k in KEYS]),
                                                                st.text(max_size=8)), json_like, max_size=5),
                                      json_like), max_size=5))  # fmt: skip
@example(data={"optim": {"lr": 10**400}})  # found by this test: OverflowError (an int too large for a float field)
def test_from_dict_builds_a_config_or_raises_config_error(data):
    cfg = _config_or_config_error(lambda: from_dict(data))
    if cfg is not None:
        _numbers_in_range(cfg)


@FUZZ
@given(value=st.one_of(json_like, st.integers(min_value=-(2**80), max_value=2**80)),
       rng=st.sampled_from(list(RANGES.values()) + [Range(0, 2, note="n"), Range(-(2**63), 2**63 - 1)]),
       kind=st.sampled_from([int, float]))  # fmt: skip
@example(value=10**400, rng=Range(0, low_open=True), kind=float)  # found by this test: passed as finite (a float field)
def test_the_range_check_answers_every_value(value, rng, kind):
    problem = number_problem("x", value, rng, kind)
    if problem is None:
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        assert isinstance(value, int) if kind is int else math.isfinite(float(value))
    else:
        assert problem.startswith("x must be") and len(problem) < 300


SAMPLING_PARAMS = {name: json_like for name in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")}


@FUZZ
@given(params=st.fixed_dictionaries({}, optional=SAMPLING_PARAMS))
def test_check_sampling_accepts_or_raises_sampling_error(params):
    from slmkit.model.generate import SamplingError, check_sampling

    try:
        check_sampling(**params)
    except SamplingError as e:
        assert e.param in params and str(e).startswith(e.param)


# ---------------------------------------------------------------------------------------------------------
# The chat template


@pytest.fixture(scope="module")
def chat_tokenizers(stdlib_dir):
    """A char tokenizer (chat tokens added), a small bpe one (chat tokens reserved) and gpt2 when its files are here."""
    from slmkit.base.tokenizer import build_tokenizer
    from slmkit.data.chat import ensure_chat_tokens

    text = [(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")]
    kinds = ["char", "bpe:300"] + ["gpt2"] * (Path(os.environ.get("TIKTOKEN_CACHE_DIR", "-")).is_dir())
    return [ensure_chat_tokens(build_tokenizer(kind, text)) for kind in kinds]


ROLES = st.one_of(st.sampled_from(["system", "user", "assistant"]), st.text(max_size=10))
CONTENT = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        ["<|end|>", "<|user|>hi", "<|endoftext|>", "\x00", "\ud7ff", "é", "\n\n", "", "\ud800", "a\udcffb"]
    ),
    st.text(st.characters(exclude_categories=()), max_size=20),  # lone surrogates too
)


@FUZZ
@given(messages=st.lists(st.fixed_dictionaries({"role": ROLES, "content": CONTENT}), max_size=5),
       gen=st.booleans())  # fmt: skip
@example(messages=[{"role": "", "content": ""}], gen=False)  # found by this test: KeyError for an unknown role
def test_any_messages_render_or_raise_an_slm_error(chat_tokenizers, messages, gen):
    from slmkit.data.chat import parse_text, render, render_text

    for tok in chat_tokenizers:
        try:
            ids, mask = render(messages, tok, add_generation_prompt=gen)
        except SlmError:
            continue
        assert len(ids) == len(mask) and all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
        assert set(mask) <= {0, 1} and any(mask) == any(m["role"] == "assistant" for m in messages)
        text = render_text(messages)
        if not any(t in m["content"] for m in messages for t in ("<|", "|>")):
            assert parse_text(text) == messages
