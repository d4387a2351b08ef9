"""`slm chat RUN`: a multi-turn terminal chat with a fine-tuned run, streaming its replies.

`ChatSession` holds the conversation and renders it with the chat template (`slmkit.data.chat.prompt_for_reply`:
the `slm` template, or an imported model's own); each reply is generated until end-of-turn (the model's own, e.g.
<|im_end|>, for an imported template), end-of-text or max_new_tokens. When the conversation no longer fits the context
window with room for the reply, the oldest turns (a user message and its answer) are dropped first; the system
message always stays. `chat_loop` reads lines from any text stream, so tests drive it with StringIO. A run that
was not fine-tuned for chat (a base model; `chat_tuned`) gets a one-line note under the banner.

Commands: /reset (forget the conversation), /system TEXT (set the system message; /system alone clears it), /quit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer
from slmkit.data.chat import Message, prompt_for_reply, reply_stops
from slmkit.model.generate import generate
from slmkit.runs.checkpoint import is_run_dir, load_model, read_run_config, read_run_info

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system message), /quit"


def chat_tuned(run: str | Path) -> bool | None:
    """Whether a run (or a `slm quantize` output) was fine-tuned for chat: True when its config.toml, or that of a
    run it descends from (run.json's `parent`, e.g. a merged LoRA run), has a chat data.format; False for a base
    model (pretrained on text only); None when it cannot tell (no config, an imported model, a missing parent)."""
    path, seen = Path(run), set()
    while True:
        try:
            if read_run_config(path).data.format != "text":
                return True
            info = read_run_info(path) if is_run_dir(path) else {}
        except SlmError:
            return None
        if info.get("imported_from"):
            return None
        if not info.get("parent"):
            return False
        seen.add(path.resolve())
        path = Path(info["parent"])
        if path.resolve() in seen:
            return None


def base_model_note(run: str | Path) -> str | None:
    """One line saying that a run was not fine-tuned for chat (so it will continue text rather than answer), or
    None when it was or when that cannot be told."""
    if chat_tuned(run) is not False:
        return None
    return (f"note: {Path(run).name} is a base model, not fine-tuned for chat (data.format = text): it continues the "
            f"text rather than answering; fine-tune it first: slm sft {run} --data FILE")  # fmt: skip


class ChatSession:
    """A conversation with one model: history, system message, trimming to the context, streaming replies."""

    def __init__(self, model, tokenizer: Tokenizer, *, system: str = "", max_new_tokens: int = 256,
                 temperature: float = 0.7, top_k: int = 50, top_p: float = 1.0, seed: int | None = None):  # fmt: skip
        if not tokenizer.has_chat_tokens and not tokenizer.chat_template:
            raise SlmError(f"this run's {tokenizer.name} tokenizer has no chat tokens: it was not fine-tuned for chat; "
                           "run `slm sft RUN --data FILE` first and chat with the child run")  # fmt: skip
        self.model, self.tok, self.system = model, tokenizer, system
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.seed = seed
        self.history: list[Message] = []
        self.trimmed = 0  # messages dropped from the front so far

    @property
    def prompt_budget(self) -> int:
        """Most prompt tokens that leave room for a reply inside the context window."""
        block = self.model.config.block_size
        return block - min(self.max_new_tokens, block // 2)

    def reset(self) -> None:
        self.history, self.trimmed = [], 0

    def messages(self) -> list[Message]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def prompt_ids(self) -> list[int]:
        """The rendered conversation ending in `<|assistant|>`, after dropping the oldest turns that do not fit."""
        ids = prompt_for_reply(self.messages(), self.tok)
        while len(ids) > self.prompt_budget and len(self.history) > 1:
            drop = 2 if len(self.history) > 2 else 1  # a user message and its reply
            self.history, self.trimmed = self.history[drop:], self.trimmed + drop
            ids = prompt_for_reply(self.messages(), self.tok)
        return ids

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """Add a user message, generate the answer (streamed to on_text), keep both in the history."""
        self.history.append({"role": "user", "content": text})
        stops = reply_stops(self.tok)
        ids, shown = [], 0
        for t in generate(self.model, self.prompt_ids(), self.max_new_tokens, temperature=self.temperature,
                          top_k=self.top_k, top_p=self.top_p, seed=self.seed, stop_ids=stops,
                          vocab_limit=self.tok.vocab_size):  # fmt: skip
            ids.append(t)
            text_so_far = self.tok.decode(ids)
            if text_so_far.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                continue
            if on_text is not None and len(text_so_far) > shown:
                on_text(text_so_far[shown:])
            shown = len(text_so_far)
        answer = self.tok.decode(ids)
        if on_text is not None and len(answer) > shown:
            on_text(answer[shown:])
        self.history.append({"role": "assistant", "content": answer})
        return answer


def chat_loop(session: ChatSession, stdin: TextIO, stdout: TextIO, *, banner: str = "") -> list[Message]:
    """Read user lines from stdin until EOF or /quit; write streamed replies to stdout. Returns the history."""

    def write(s: str) -> None:
        stdout.write(s)
        stdout.flush()

    write((banner + "\n" if banner else "") + HELP + "\n")
    while True:
        write("you> ")
        line = stdin.readline()
        if not line:  # EOF
            write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            session.reset()
            write("(conversation cleared)\n")
        elif text == "/system" or text.startswith("/system "):
            session.system = text[len("/system") :].strip()
            write(f"(system message {'set' if session.system else 'cleared'})\n")
        elif text.startswith("/"):
            write(f"(unknown command {text.split()[0]}) {HELP}\n")
        else:
            before = session.trimmed
            write("bot> ")
            session.reply(text, on_text=write)
            write("\n")
            if session.trimmed > before:
                write(f"(dropped the {session.trimmed - before} oldest messages to fit the context window)\n")
    return session.history


def chat(run: str, *, checkpoint: str = "best", stdin: TextIO | None = None, stdout: TextIO | None = None,
         system: str = "", max_new_tokens: int = 256, temperature: float = 0.7, top_k: int = 50, top_p: float = 1.0,
         seed: int | None = None) -> list[Message]:  # fmt: skip
    """Chat with a run in the terminal (or any pair of text streams); returns the final history."""

    model, tokenizer, _, ckpt = load_model(run, checkpoint)
    session = ChatSession(model, tokenizer, system=system, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_k=top_k, top_p=top_p, seed=seed)  # fmt: skip
    note = base_model_note(run)
    banner = f"# chatting with {ckpt}" + (f"\n{note}" if note else "")
    return chat_loop(session, stdin or sys.stdin, stdout or sys.stdout, banner=banner)
