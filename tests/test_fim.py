"""Fill-in-the-middle: sentinel tokens, the transform (pure, deterministic, reversible), the loader (exact resume),
training a FIM run, `slm complete`, the fim-line / next-line tasks, `suffix` at the server, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from slmkit.base.atomic import atomic_write_json
from slmkit.base.config import DataConfig
from slmkit.base.config_files import load_config
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import (
    CHAT_TOKENS,
    EOT,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    FIM_TOKENS,
    CharTokenizer,
    build_tokenizer,
    load_tokenizer,
    train_bpe,
)
from slmkit.data.dataset import load_dataset_tokenizer
from slmkit.data.fim import (
    FimError,
    FimSpec,
    ensure_fim_tokens,
    fim_piece,
    fim_prompt,
    fim_window,
    finish,
    heal,
    infill_order,
    line_start_tokens,
    permute,
)
from slmkit.data.loader import TokenLoader
from slmkit.data.sources import DataError
from slmkit.engine.evaluate.code_tasks import edit_similarity, file_items, run_code_task
from slmkit.engine.train import train
from slmkit.runs.checkpoint import load_model
from slmkit.ship.complete import Completer, complete

pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = FimSpec(rate=1.0, spm_rate=0.0, prefix_id=1001, suffix_id=1002, middle_id=1003, eot_id=0)
SOURCE = '''import os


def area(w, h):
    """The area."""
    total = w * h
    return total


def greet(name):
    message = "hello " + name
    print(message)
    return message
'''


# ---------------------------------------------------------------------------------------------------------
# Tokens


def test_bpe_reserves_the_fim_tokens_after_the_chat_tokens(stdlib_dir):
    bpe = train_bpe([(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")], 300)
    assert bpe.has_fim_tokens and bpe.has_chat_tokens
    ids = [bpe.special_tokens[t] for t in (EOT, *CHAT_TOKENS, *FIM_TOKENS)]
    assert ids == list(range(len(ids)))  # reserved first, in order
    assert bpe.special_tokens[FIM_PREFIX] not in bpe.encode(FIM_PREFIX)  # plain text unless allowed


def test_char_tokenizer_gets_fim_tokens_appended_and_keeps_them_through_save(tmp_path):
    tok = CharTokenizer("abc\n ")
    before, ids = tok.fingerprint, tok.encode("abc")
    assert not tok.has_fim_tokens and CharTokenizer("abc\n ").fingerprint == before  # unchanged without them
    ensure_fim_tokens(tok)
    assert tok.has_fim_tokens and tok.encode("abc") == ids and tok.fingerprint != before
    assert [tok.special_tokens[t] for t in FIM_TOKENS] == [6, 7, 8]  # after the 5 chars and end-of-text
    assert load_tokenizer(tok.save(tmp_path / "t")).fingerprint == tok.fingerprint


def test_bpe_with_appended_tokens_loads_with_the_same_fingerprint(stdlib_dir, tmp_path):
    bpe = train_bpe([(stdlib_dir / "glob.py").read_text(encoding="utf-8")], 300)
    bpe.add_special_tokens(["<|extra|>"])  # how an older bpe (no FIM tokens reserved) gets them
    again = load_tokenizer(bpe.save(tmp_path / "bpe"))
    assert again.fingerprint == bpe.fingerprint and again.special_tokens == bpe.special_tokens


def test_gpt2_fingerprint_is_unchanged_until_fim_tokens_are_added(gpt2_files):
    a, b = build_tokenizer("gpt2"), build_tokenizer("gpt2")
    assert not a.has_fim_tokens and a.fingerprint == b.fingerprint
    ensure_fim_tokens(b)
    assert b.token_id(FIM_PREFIX) == 50257 and b.fingerprint != a.fingerprint


# ---------------------------------------------------------------------------------------------------------
# The transform


def _undo(out: np.ndarray) -> np.ndarray:
    """The original content of a PSM or SPM piece."""
    s = out.tolist()
    p, q, m = s.index(SPEC.prefix_id), s.index(SPEC.suffix_id), s.index(SPEC.middle_id)
    if q == p + 1:  # SPM: <pre><suf> suffix <mid> prefix middle
        return np.array(s[m + 1 :] + s[q + 1 : m])
    return np.array(s[p + 1 : q] + s[m + 1 :] + s[q + 1 : m])


@pytest.mark.parametrize("spm", [0.0, 1.0])
def test_permute_rearranges_and_loses_nothing(spm):
    spec = SPEC.__class__(**{**SPEC.__dict__, "spm_rate": spm})
    content = np.arange(10, 60, dtype=np.int64)
    for seed in range(20):
        out = permute(content, np.random.default_rng(seed), spec)
        assert len(out) == len(content) + 3 and np.array_equal(_undo(out), content)
        assert (out[1] == spec.suffix_id) == (spm == 1.0)
    off = SPEC.__class__(**{**SPEC.__dict__, "rate": 0.0})
    assert np.array_equal(permute(content, np.random.default_rng(0), off), content)


def test_line_middles_are_one_whole_line_and_line_rate_0_keeps_the_draws(stdlib_dir):
    tok = ensure_fim_tokens(train_bpe([(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")], 400))
    starts = line_start_tokens(tok)
    assert starts[tok.encode("\n")[0]] and not starts[tok.encode("x")[0]]
    content = np.array(tok.encode(SOURCE), dtype=np.int64)
    spec = FimSpec.from_tokenizer(tok, 1.0, 0.0, line_rate=1.0)  # PSM: <pre> prefix <suf> suffix <mid> middle
    middles = set()
    for seed in range(30):
        s = permute(content, np.random.default_rng(seed), spec).tolist()
        p, q, m = s.index(spec.prefix_id), s.index(spec.suffix_id), s.index(spec.middle_id)
        prefix, suffix, middle = tok.decode(s[p + 1 : q]), tok.decode(s[q + 1 : m]), tok.decode(s[m + 1 :])
        assert prefix + middle + suffix == SOURCE  # nothing lost
        assert middle.startswith("\n") and suffix.startswith("\n")  # cut where lines start ...
        assert "\n" not in middle.lstrip("\n")  # ... around one line
        middles.add(middle.strip())
    assert len(middles) > 4  # different lines are drawn
    plain = FimSpec.from_tokenizer(tok, 1.0, 1.0)
    assert plain.line_starts is None
    for seed in range(5):  # line_rate 0 makes no extra draw: the cuts of older runs are unchanged
        rng = np.random.default_rng(seed)
        rng.random(2)
        lo, hi = np.sort(rng.integers(0, len(content) + 1, size=2))
        want = [plain.prefix_id, plain.suffix_id, *content[hi:], plain.middle_id, *content[:lo], *content[lo:hi]]
        assert permute(content, np.random.default_rng(seed), plain).tolist() == want
    with pytest.raises(SlmError, match="data.fim_rate is 0"):
        DataConfig(fim_line_rate=0.5)


def test_fim_window_is_a_pure_function_of_seed_document_and_offset():
    doc_a = np.array([0, *range(10, 30)])  # end-of-text then content
    doc_b = np.array([0, *range(40, 70)])
    window = np.concatenate([doc_a[5:], doc_b])
    out = fim_window(window, 7, 5, seed=3, spec=SPEC)
    assert len(out) == len(window) and np.array_equal(out, fim_window(window, 7, 5, 3, SPEC))
    assert not np.array_equal(out, fim_window(window, 7, 5, 4, SPEC))  # another seed, other cuts
    # the second piece (document 8, offset 0) is transformed the same wherever a window holds it
    piece = fim_piece(doc_b, 3, 8, 0, SPEC)
    assert piece[0] == 0 and piece[1] == SPEC.prefix_id
    assert np.array_equal(out[len(doc_a) - 5 + 3 :], piece[: len(out) - (len(doc_a) - 5 + 3)])


def make_docs_dataset(root, n_docs=60, doc_len=50):
    """A one-shard dataset of n_docs documents: end-of-text (0) then doc_len distinct tokens each."""
    (root / "train").mkdir(parents=True)
    tokens = np.concatenate([[0, *range(1 + d * doc_len, 1 + (d + 1) * doc_len)] for d in range(n_docs)])
    tokens.astype("<u4").tofile(root / "train" / "000000.bin")
    starts = np.arange(0, len(tokens), doc_len + 1, dtype=np.uint64)
    starts.astype("<u8").tofile(root / "train" / "doc_starts.u64")
    split = {"tokens": len(tokens), "documents": n_docs, "bytes": 0,
             "shards": [{"file": "train/000000.bin", "tokens": len(tokens)}]}  # fmt: skip
    atomic_write_json(root / "meta.json", {"dtype": "uint32", "splits": {"train": split}, "tokenizer": {}})
    return root


def test_loader_fim_batches_are_deterministic_resume_exactly_and_keep_every_token(tmp_path):
    ds = make_docs_dataset(tmp_path / "ds")
    spec = FimSpec(rate=0.5, spm_rate=0.5, prefix_id=9001, suffix_id=9002, middle_id=9003, eot_id=0)
    plain = TokenLoader(ds, "train", 8, 40, seed=5)
    a = TokenLoader(ds, "train", 8, 40, seed=5, fim=spec)
    batches = [a.next_batch() for _ in range(6)]
    state = a.state_dict()
    after = [a.next_batch() for _ in range(3)]
    b = TokenLoader(ds, "train", 8, 40, seed=5, fim=spec)
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(after, [b.next_batch() for _ in range(3)]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    sentinels = torch.cat([x for x, _ in batches])
    assert (sentinels == 9001).any() and (sentinels != 9001).any()
    for (x, y), (px, _) in zip(batches, [plain.next_batch() for _ in range(6)]):
        assert torch.equal(x[:, 1:], y[:, :-1])  # still next-token pairs
        for row, raw in zip(x, px):  # a row holds the raw window's first tokens in some order, plus sentinels
            kept = row[row < 9001]
            assert len(kept) >= len(row) - 3 * int((raw == 0).sum() + 1)
            assert set(kept.tolist()) <= set(range(0, 60 * 50 + 1))
    with pytest.raises(DataError, match="fim"):
        TokenLoader(ds, "train", 8, 40, seed=5).load_state_dict(state)  # FIM off: the state does not fit


# ---------------------------------------------------------------------------------------------------------
# Prompts


def test_fim_prompt_cuts_far_ends_and_says_how_much():
    tok = CharTokenizer("abcdefghij\n ")
    ensure_fim_tokens(tok)
    p = fim_prompt(tok, "a" * 50 + "b", "c" + "d" * 50, budget=24, healing=False)
    pre, suf, mid = (tok.token_id(t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))
    assert (
        len(p.ids) == 23 and p.ids[0] == pre and p.ids[-1] == mid
    )  # no end-of-text: the prefix was cut (its place stays free)
    text = tok.decode(p.ids)
    assert text.split(FIM_SUFFIX)[0].endswith("b") and text.split(FIM_SUFFIX)[1].startswith("c")  # near ends kept
    assert p.prefix_cut + p.suffix_cut == 102 - 20 and p.prefix_cut < 51 and p.suffix_cut < 51
    whole = fim_prompt(tok, "ab", "cd", budget=24)
    assert whole.ids[0] == tok.eot_id and (whole.prefix_cut, whole.suffix_cut) == (0, 0)
    assert set(whole.stop_ids) == {tok.eot_id, pre, suf, mid}
    with pytest.raises(FimError, match="both empty"):
        fim_prompt(tok, "", "", 24)
    with pytest.raises(FimError, match="no room"):
        fim_prompt(tok, "ab", "cd", 3)


def test_an_spm_prompt_puts_the_suffix_first_and_the_prefix_last():
    tok = CharTokenizer("abcdefghij\n ")
    ensure_fim_tokens(tok)
    pre, suf, mid = (tok.token_id(t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE))
    psm = fim_prompt(tok, "ab", "cd", budget=24)
    spm = fim_prompt(tok, "ab", "cd", budget=24, order="spm")
    ab, cd = tok.encode("ab"), tok.encode("cd")
    assert psm.ids == [tok.eot_id, pre, *ab, suf, *cd, mid]
    assert spm.ids == [tok.eot_id, pre, suf, *cd, mid, *ab]  # the order training's SPM pieces have: the middle follows
    cut = fim_prompt(tok, "a" * 50 + "b", "c" + "d" * 50, budget=24, healing=False, order="spm")
    assert cut.ids[-1] == tok.encode("b")[0] and cut.prefix_cut + cut.suffix_cut == 102 - 20  # same cuts as PSM
    assert [infill_order(0, 0.5), infill_order(0.5, 0.5), infill_order(0.5, 0)] == ["", "spm", "psm"]


def test_healing_holds_back_trailing_whitespace_and_finish_removes_it():
    assert heal("def f():\n    ") == ("def f():", "\n    ")
    assert heal("   ") == ("   ", "")
    assert finish("\n    return x\n    y", "\n    ", "line") == ("return x", True)
    assert finish("\n\treturn x", "\n    ", "block") == ("return x", False)  # other whitespace: stripped
    assert finish("x = 1", "", "line") == ("x = 1", False)


def test_code_items_mask_one_line_statement_per_function_and_edit_similarity():
    items = file_items("m.py", SOURCE, 0)
    assert len(items) == 2
    for item in items:
        assert item.prefix + item.target + item.suffix == SOURCE
        assert item.prefix.endswith("\n") and item.suffix.startswith("\n")
        assert item.target.strip() and '"""' not in item.target and not item.target.lstrip().startswith("def")
    assert edit_similarity("abc", "abc") == 1.0 and edit_similarity("", "") == 1.0
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)


# ---------------------------------------------------------------------------------------------------------
# A FIM run: train, resume, complete, evaluate; bad input


def _train(ds, out, name, *extra):
    overrides = tiny_overrides(f"data.dir={ds}", f"train.out_dir={out}", f"train.name={name}", "train.max_steps=6",
                               "train.eval_every=3", "model.block_size=64", *extra)  # fmt: skip
    return train(load_config("tiny", overrides), overrides=overrides, progress=False)


@pytest.fixture(scope="module")
def fim_run(tiny_dataset, tmp_path_factory):
    return _train(tiny_dataset(), tmp_path_factory.mktemp("runs"), "fim", "data.fim_rate=0.5", "data.fim_line_rate=0.5")


@pytest.fixture(scope="module")
def plain_run(tiny_dataset, tmp_path_factory):
    return _train(tiny_dataset(), tmp_path_factory.mktemp("runs"), "plain")


def test_fim_run_has_the_tokens_and_resumes_exactly(fim_run, tiny_dataset, tmp_path):
    model, tok, cfg, _ = load_model(fim_run)
    assert tok.has_fim_tokens and cfg.data.fim_rate == 0.5 and model.config.vocab_size >= tok.vocab_size
    assert cfg.data.fim_line_rate == 0.5
    assert tok.vocab_size == load_dataset_tokenizer(tiny_dataset()).vocab_size + 3  # appended to char
    lines = "data.fim_line_rate=0.5"  # line middles resume exactly too
    whole = _train(tiny_dataset(), tmp_path, "whole", "data.fim_rate=0.5", lines)
    cut = _train(tiny_dataset(), tmp_path, "cut", "data.fim_rate=0.5", lines, "train.ckpt_every=3")
    train(overrides=["train.max_steps=6"], resume=cut, progress=False)

    def losses(run):
        return [json.loads(x)["train/loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                if "train/loss" in x]  # fmt: skip

    assert losses(whole)[-1] == pytest.approx(losses(cut)[-1], rel=1e-5)


def test_complete_infills_and_continues(fim_run):
    c = Completer(fim_run)
    r = c.complete("def f(x):\n    ", "\n    return x\n", mode="line", max_new_tokens=8)
    assert r.infill and r.completion_tokens <= 8 and "\n" not in r.text and r.finish_reason in ("stop", "length")
    r = c.complete("def f(x):\n" * 40, "return x\n" * 40, mode="block", max_new_tokens=8)
    assert r.prefix_tokens_cut > 0 and r.suffix_tokens_cut > 0 and r.prompt_tokens <= 64 - 8
    r = complete(fim_run, "import os\n", mode="block", max_new_tokens=5)
    assert not r.infill and r.completion_tokens <= 5


def test_fim_line_task_infills_only_for_a_fim_model(fim_run, plain_run, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text(SOURCE, encoding="utf-8")
    for run, mode in ((fim_run, "infill-spm"), (plain_run, "left-to-right")):
        model, tok, cfg, _ = load_model(run)
        res = run_code_task(model, tok, "fim-line", fim=infill_order(cfg.data.fim_rate, cfg.data.fim_spm_rate),
                            data=tmp_path / "src")  # fmt: skip
        assert res["mode"] == mode and res["n"] == 2
        assert 0 <= res["metrics"]["exact_match"] <= 1 and 0 <= res["metrics"]["edit_sim"] <= 1
    res = run_code_task(model, tok, "next-line", data=tmp_path / "src", limit=1)
    assert res["n"] == 1 and res["mode"] == "left-to-right"


def test_eval_cli_runs_code_tasks_on_a_folder(fim_run, tmp_path, run_cli):
    (tmp_path / "m.py").write_text(SOURCE, encoding="utf-8")
    code, out, _ = run_cli("eval", fim_run, "--tasks", "fim-line,next-line", "--data", tmp_path, "--no-progress")
    assert code == 0 and "fim-line | exact_match" in out and "next-line | edit_sim" in out
    assert "- exact match: the share of held-out lines" in out and "Spearman" not in out  # only its own hints
    assert json.loads((fim_run / "evals" / "fim-line.json").read_text())["mode"] == "infill-spm"


def test_bad_input_is_one_line_and_exit_2(fim_run, plain_run, run_cli, tmp_path):
    code, _, err = run_cli("complete", plain_run, "--prefix", "def f():\n", "--suffix", "x\n")
    assert code == 2 and "data.fim_rate=0.5" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("complete", fim_run, "--prefix", "", "--suffix", "")
    assert code == 2 and "both empty" in err
    code, _, err = run_cli("train", "tiny", "data.fim_rate=1.5")
    assert code == 2 and "data.fim_rate must be in [0, 1]" in err
    (tmp_path / "p.txt").write_text("import os\n", encoding="utf-8")
    code, out, _ = run_cli("complete", fim_run, "--prefix", f"@{tmp_path / 'p.txt'}", "--max-new-tokens", "3",
                           "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["completion_tokens"] <= 3
    with pytest.raises(SlmError):
        DataConfig(fim_spm_rate=-0.1)


def test_a_model_without_fim_tokens_is_told_how_to_train_one(tmp_path, tiny_dataset):
    overrides = tiny_overrides(f"data.dir={tiny_dataset()}", f"train.out_dir={tmp_path}", "train.max_steps=2")
    run = train(load_config("tiny", overrides), overrides=overrides, progress=False)
    assert not load_model(run)[1].has_fim_tokens
    with pytest.raises(FimError, match="no fill-in-the-middle tokens.*data.fim_rate=0.5"):
        Completer(run).complete("a", "b")


def test_code_preset_trains_fim_with_a_512_context():
    cfg = load_config("code")
    assert cfg.data.fim_rate == 0.5 and cfg.model.block_size == 512


# ---------------------------------------------------------------------------------------------------------
# The server


def test_server_infills_with_suffix_and_refuses_it_for_a_model_without_fim(fim_run):
    fastapi = pytest.importorskip("fastapi")  # noqa: F841
    httpx = pytest.importorskip("httpx")
    from test_serve import start_server

    from slmkit.ship.serve.app import create_app
    from slmkit.ship.serve.engine import Engine

    model, tok, _, _ = load_model(fim_run)
    for fim_rate in (0.5, 0.0):
        engine = Engine(model, tok, max_batch=2).start()
        srv, thread, port = start_server(create_app(engine, "m", fim_rate=fim_rate, fim_spm_rate=fim_rate))
        url = f"http://127.0.0.1:{port}/v1/completions"
        try:
            body = {"model": "m", "prompt": "def f(x):\n" * 30, "suffix": "    return x\n" * 10, "max_tokens": 4}
            r = httpx.post(url, json=body, timeout=60)
            if fim_rate:
                assert r.status_code == 200, r.text
                cut = r.json()["truncation"][0]
                assert cut["prefix_tokens_cut"] > 0 and cut["suffix_tokens_cut"] > 0
                assert r.json()["usage"]["prompt_tokens"] <= 64 - 4
                r = httpx.post(url, json={**body, "prompt": [1, 2, 3]}, timeout=60)
                assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
                r = httpx.post(url, json={**body, "suffix": 5}, timeout=60)
                assert r.status_code == 400 and r.json()["error"]["param"] == "suffix"
                r = httpx.post(url, json={**body, "max_tokens": 63}, timeout=60)
                assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
            else:
                assert r.status_code == 400
                err = r.json()["error"]
                assert err["param"] == "suffix" and "data.fim_rate=0.5" in err["message"]
        finally:
            srv.should_exit = True
            thread.join(10)
            engine.stop()
