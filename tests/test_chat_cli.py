"""`slm chat`: driven through stdin (library function with StringIO, and the real CLI in a subprocess)."""

import io
import json
import os
import subprocess
import sys

import pytest
from sft_helpers import SMALL_SFT, base_run, make_corpus, write_alpaca

from slmkit.base.config import ModelConfig
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import CharTokenizer
from slmkit.model.gpt import GPT
from slmkit.runs.checkpoint import load_model
from slmkit.ship.chat import ChatSession, base_model_note, chat, chat_tuned
from slmkit.ship.finetune import sft


@pytest.fixture(scope="module")
def base(tmp_path_factory, stdlib_dir):
    root = tmp_path_factory.mktemp("chat")
    return base_run(root, make_corpus(root, stdlib_dir))


@pytest.fixture(scope="module")
def run(base):
    return sft(base, write_alpaca(base.parent.parent / "a.json", 30), SMALL_SFT, progress=False)


def test_chat_through_stdin(run):
    script = "hello there\n/system You answer in one word.\nRepeat the word stone 2 times.\n/reset\nhi\n/quit\nnever\n"
    out = io.StringIO()
    history = chat(str(run), stdin=io.StringIO(script), stdout=out, temperature=0, max_new_tokens=12)
    text = out.getvalue()
    assert text.count("bot> ") == 3 and "(system message set)" in text and "(conversation cleared)" in text
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "hi"
    assert "never" not in text  # /quit stopped reading


def test_replies_stream_and_are_deterministic_when_greedy(run):
    model, tok, _, _ = load_model(run)
    pieces = []
    a = ChatSession(model, tok, temperature=0, max_new_tokens=20).reply("Repeat the word river 3 times.", pieces.append)
    assert "".join(pieces) == a
    assert ChatSession(model, tok, temperature=0, max_new_tokens=20).reply("Repeat the word river 3 times.") == a


def test_history_is_trimmed_from_the_oldest_turn(run):
    model, tok, cfg, _ = load_model(run)
    s = ChatSession(model, tok, system="Be brief.", temperature=0, max_new_tokens=16)
    turns = [{"role": r, "content": f"turn {i}"} for i in range(12) for r in ("user", "assistant")]
    s.history = turns[:-1]  # ends with a user message
    ids = s.prompt_ids()
    assert len(ids) <= s.prompt_budget == cfg.model.block_size - 16
    assert s.trimmed > 0 and s.trimmed % 2 == 0
    assert s.history == turns[s.trimmed : -1]  # the oldest went first, the newest stayed
    assert s.messages()[0] == {"role": "system", "content": "Be brief."}


def test_a_model_without_chat_tokens_is_refused():
    tok = CharTokenizer("abc")
    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=tok.vocab_size))
    with pytest.raises(SlmError, match="no chat tokens"):
        ChatSession(model, tok)


@pytest.mark.slow
def test_slm_chat_cli_subprocess(run):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "slmkit", "chat", str(run), "--temperature", "0",
                           "--max-new-tokens", "8"], input="hello\n/quit\n", capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "bot> " in proc.stdout and "/reset" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "slmkit", "chat", str(run) + "-missing"], capture_output=True,
                         text=True, env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_a_base_model_gets_a_one_line_note(base, run):
    assert chat_tuned(base) is False and chat_tuned(run) is True
    out = io.StringIO()
    chat(str(base), stdin=io.StringIO("/quit\n"), stdout=out)
    notes = [line for line in out.getvalue().splitlines() if "not fine-tuned for chat" in line]
    assert len(notes) == 1 and f"slm sft {base} --data FILE" in notes[0]
    out = io.StringIO()
    chat(str(run), stdin=io.StringIO("/quit\n"), stdout=out)
    assert "not fine-tuned" not in out.getvalue()


def test_chat_tuned_follows_the_parent_and_knows_when_it_cannot_tell(base, run, tmp_path):
    assert base_model_note(tmp_path) is None  # not a run: no config to tell from
    child = tmp_path / "child"
    child.mkdir()
    (child / "config.toml").write_text((base / "config.toml").read_text())  # a text-format config ...
    (child / "run.json").write_text(json.dumps({"name": "child", "parent": str(run)}))  # ... of an SFT run's child
    assert chat_tuned(child) is True
    (child / "run.json").write_text(json.dumps({"name": "child", "parent": str(tmp_path / "gone")}))
    assert chat_tuned(child) is None
    (child / "run.json").write_text(json.dumps({"name": "child", "imported_from": "/models/x", "parent": "/x"}))
    assert chat_tuned(child) is None


def test_serve_model_info_carries_the_note(base, run):
    from fastapi.testclient import TestClient

    from slmkit.ship.serve.app import create_app, load_engine

    for path, expect_note in ((base, True), (run, False)):
        engine, name = load_engine(path, slots=1)
        try:
            client = TestClient(create_app(engine, name, note=base_model_note(path)), base_url="http://localhost")
            info = client.get("/v1/models").json()["data"][0]
            assert info["id"] == name and ("not fine-tuned for chat" in info.get("note", "")) == expect_note
            page = client.get("/").text
            assert 'id="note"' in page and "info.note" in page
        finally:
            engine.stop()


def test_sft_cli_ends_with_next_slm_chat(base, run_cli, tmp_path):
    data = write_alpaca(tmp_path / "a.json", 12)
    code, _, err = run_cli("sft", base, "--data", data, "--no-progress", "--name", "next-line", "train.max_steps=2",
                           "train.eval_every=2", "train.eval_batches=1")  # fmt: skip
    assert code == 0, err
    last = err.strip().splitlines()[-1]
    assert "Next: slm chat " in last and last.endswith("next-line"), last
