"""`slm chat`: driven through stdin (library function with StringIO, and the real CLI in a subprocess)."""

import io
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
from slmkit.ship.chat import ChatSession, chat
from slmkit.ship.finetune import sft


@pytest.fixture(scope="module")
def run(tmp_path_factory, stdlib_dir):
    root = tmp_path_factory.mktemp("chat")
    base = base_run(root, make_corpus(root, stdlib_dir))
    return sft(base, write_alpaca(root / "a.json", 30), SMALL_SFT, progress=False)


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
