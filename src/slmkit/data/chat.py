"""Chat examples for supervised fine-tuning: reading them, rendering them to tokens with a loss mask, batching them.

Template `slm`: every conversation starts with end-of-text (as every pretraining document does), then each turn is

    <|role|>content<|end|>          role: system, user or assistant

The loss mask is 1 only on the assistant's content tokens and its `<|end|>`, so the model learns to answer and to
stop, never to imitate the user. A rendered example becomes one (x, y) pair of next-token inputs and targets,
y = -100 where the target is masked.

Formats (one record per conversation; `.json` holds an array, `.jsonl` one object per line):
- alpaca: {"instruction", "input" (optional), "output", "system" (optional)}
- messages: {"messages": [{"role", "content"}, ...]}, or ShareGPT's {"conversations": [{"from", "value"}, ...]}
- prompt_completion: {"prompt", "completion"}
- auto: chosen from the first record's keys.

Batching: with packing, whole examples are laid into block_size rows one after another (a new row when the next one
does not fit), so a row holds several examples but a loss target never crosses from one example into the next:
the targets are shifted inside each example before packing. Attention still sees earlier examples of the same row
(no document masking), which each example's leading end-of-text marks as a boundary, as in pretraining. Without
packing each row holds one example. Either way the tail of a row is padding (target -100). An example longer than
block_size + 1 tokens is cut to its first block_size + 1 tokens; one left with no assistant token is dropped.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from slmkit.base.tokenizer import ASSISTANT, CHAT_TOKENS, END_OF_TURN, EOT, SYSTEM, USER, Tokenizer, TokenizerError
from slmkit.data.sources import DataError
from slmkit.model.linear_ce import IGNORE_INDEX

ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}  # fmt: skip
FORMATS = ("alpaca", "messages", "prompt_completion")
Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


# ---------------------------------------------------------------------------------------------------------
# The template: messages <-> token ids and loss mask.


def ensure_chat_tokens(tokenizer: Tokenizer, allow_add: bool = True) -> Tokenizer:
    """The tokenizer with the chat tokens: bpe has them reserved; char and gpt2 get them appended when allowed."""
    if tokenizer.has_chat_tokens:
        return tokenizer
    if not allow_add or not hasattr(tokenizer, "add_special_tokens"):
        raise TokenizerError(
            f"the {tokenizer.name} tokenizer has no chat tokens ({', '.join(CHAT_TOKENS)}); set "
            "data.add_chat_tokens=true to add them (the embeddings grow), or fine-tune a bpe model"
        )
    tokenizer.add_special_tokens(CHAT_TOKENS)
    return tokenizer


def render(
    messages: list[Message], tokenizer: Tokenizer, *, add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """(ids, mask) of a conversation; mask 1 on assistant content and its end-of-turn. With add_generation_prompt
    the ids end with `<|assistant|>`, ready for the model to write the reply. DataError for a message that is not
    {"role": system | user | assistant, "content": str}."""
    check_messages(messages)
    tid = tokenizer.token_id
    ids, mask = [tid(EOT)], [0]
    for m in messages:
        body = tokenizer.encode(m["content"]) + [tid(END_OF_TURN)]
        ids += [tid(ROLE_TOKENS[m["role"]]), *body]
        mask += [0] + [int(m["role"] == "assistant")] * len(body)
    if add_generation_prompt:
        ids.append(tid(ASSISTANT))
        mask.append(0)
    return ids, mask


_TEMPLATES = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])


def _raise(message: str) -> None:
    raise DataError(f"the model's chat template refused the conversation: {message}")


_TEMPLATES.globals["raise_exception"] = _raise


def _template_text(messages: list[Message], tokenizer: Tokenizer, add_generation_prompt: bool) -> str:
    return _TEMPLATES.from_string(tokenizer.chat_template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=tokenizer.chat_bos,
        eos_token=tokenizer.chat_stops[0] if tokenizer.chat_stops else EOT)  # fmt: skip


def render_template(messages: list[Message], tokenizer: Tokenizer, *, add_generation_prompt: bool = True) -> list[int]:
    """Ids of a conversation under the tokenizer's own chat template (an imported model's), rendered as
    transformers' apply_chat_template does (a sandboxed Jinja environment, trim_blocks and lstrip_blocks), its
    special tokens encoded as such."""
    check_messages(messages)
    return tokenizer.encode(_template_text(messages, tokenizer, add_generation_prompt), allow_special=True)


def render_template_masked(messages: list[Message], tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """(ids, mask) of a conversation under the tokenizer's own chat template, for fine-tuning: mask 1 on what the
    template writes after each assistant turn's generation prompt (its content and end of turn), the part the model
    writes at inference. DataError when the template does not render a conversation's start as a prefix of the
    whole (some drop earlier turns' reasoning): train with data.chat_template=slm then."""
    check_messages(messages)
    pieces: list[tuple[str, int]] = []  # (text, 1 for a reply)
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _template_text(messages[:i], tokenizer, True)
        full = _template_text(messages[: i + 1], tokenizer, False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DataError(f"the model's chat template does not render turn {i} as a continuation of the turns "
                            "before it, so the reply's tokens cannot be found; use data.chat_template=slm")  # fmt: skip
        pieces += [(prompt[len(done) :], 0), (full[len(prompt) :], 1)]
        done = full
    whole = _template_text(messages, tokenizer, False)
    if not whole.startswith(done):
        raise DataError("the model's chat template renders the whole conversation differently from its turns; use "
                        "data.chat_template=slm")  # fmt: skip
    pieces.append((whole[len(done) :], 0))
    ids: list[int] = []
    mask: list[int] = []
    for text, reply in pieces:
        if text:
            piece = tokenizer.encode(text, allow_special=True)
            ids += piece
            mask += [reply] * len(piece)
    return ids, mask


def reply_stops(tokenizer: Tokenizer) -> list[int]:
    """The ids that end an assistant's reply: the model's own (chat_stops) or `<|end|>`, and end-of-text."""
    names = tokenizer.chat_stops if tokenizer.chat_template else (END_OF_TURN,)
    return [i for i in (*(tokenizer.token_id(t) for t in names), tokenizer.token_id(EOT)) if i is not None]


def prompt_for_reply(messages: list[Message], tokenizer: Tokenizer) -> list[int]:
    """The conversation's ids ending where the assistant's reply starts, under the model's template."""
    if tokenizer.chat_template:
        return render_template(messages, tokenizer, add_generation_prompt=True)
    return render(messages, tokenizer, add_generation_prompt=True)[0]


def check_messages(messages: list[Message]) -> None:
    """DataError naming the first message that is not {"role": system | user | assistant, "content": a string}."""
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if not isinstance(role, str) or role not in ROLE_TOKENS:
            raise DataError(f"message {i} has role {role!r}; the roles are {', '.join(ROLE_TOKENS)}")
        if not isinstance(m.get("content"), str):
            raise DataError(f"message {i} ({role}) has content {type(m.get('content')).__name__}; it must be text")


def render_text(messages: list[Message]) -> str:
    """The template as text (special tokens written out); encoding it with allow_special gives `render`'s ids."""
    check_messages(messages)
    return EOT + "".join(f"{ROLE_TOKENS[m['role']]}{m['content']}{END_OF_TURN}" for m in messages)


_TURN_RE = re.compile("(" + "|".join(re.escape(t) for t in ROLE_TOKENS.values()) + r")(.*?)" + re.escape(END_OF_TURN),
                      re.DOTALL)  # fmt: skip


def parse_text(text: str) -> list[Message]:
    """Messages back from rendered text (the inverse of render_text)."""
    roles = {t: r for r, t in ROLE_TOKENS.items()}
    return [{"role": roles[m.group(1)], "content": m.group(2)} for m in _TURN_RE.finditer(text)]


def to_example(ids: list[int], mask: list[int], max_len: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, y) next-token pair of one rendered conversation, cut to max_len + 1 tokens; None if no target remains."""
    if max_len is not None:
        ids, mask = ids[: max_len + 1], mask[: max_len + 1]
    x = np.asarray(ids[:-1], dtype=np.int64)
    y = np.where(np.asarray(mask[1:], dtype=bool), np.asarray(ids[1:], dtype=np.int64), IGNORE_INDEX)
    return (x, y) if (y != IGNORE_INDEX).any() else None


# ---------------------------------------------------------------------------------------------------------
# Reading records.


def _records(path: Path) -> list[tuple[int, object]]:
    """(line number, record) of a .json array or a .jsonl file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if text.lstrip().startswith("["):
        return _json_array(path, text)
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {n} is not valid JSON ({e.msg}); fix or remove that line") from None
    return out


def _json_array(path: Path, text: str) -> list[tuple[int, object]]:
    """Elements of a JSON array with the line each starts on."""
    dec, out, i = json.JSONDecoder(), [], text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return out
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {e.lineno} is not valid JSON ({e.msg})") from None
        out.append((text.count("\n", 0, i) + 1, obj))
        i = end


def detect_format(record: object) -> str:
    """alpaca | messages | prompt_completion from a record's keys."""
    keys = set(record) if isinstance(record, dict) else set()
    if "messages" in keys or "conversations" in keys:
        return "messages"
    if "instruction" in keys or "output" in keys:
        return "alpaca"
    if "prompt" in keys or "completion" in keys:
        return "prompt_completion"
    raise DataError(f"cannot tell the format of records with keys {sorted(keys)}; set data.format to one of "
                    f"{', '.join(FORMATS)}")  # fmt: skip


def _str(r: dict, key: str) -> str | None:
    v = r.get(key)
    return v if isinstance(v, str) else None


def to_messages(record: object, fmt: str) -> list[Message] | None:
    """The conversation of one record, or None when it lacks the fields its format needs."""
    if not isinstance(record, dict):
        return None
    if fmt == "alpaca":
        instruction, output = _str(record, "instruction"), _str(record, "output")
        if not instruction or output is None:
            return None
        extra = _str(record, "input") or ""
        msgs = [{"role": "system", "content": record["system"]}] if _str(record, "system") else []
        user = instruction + ("\n\n" + extra if extra.strip() else "")
        return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if fmt == "prompt_completion":
        prompt, completion = _str(record, "prompt"), _str(record, "completion")
        if prompt is None or completion is None:
            return None
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    turns = record.get("messages", record.get("conversations"))
    if not isinstance(turns, list):
        return None
    msgs = []
    for t in turns:
        if not isinstance(t, dict):
            return None
        role = t.get("role", _SHAREGPT_ROLES.get(str(t.get("from", "")).lower()))
        content = t.get("content", t.get("value"))
        if role not in ROLE_TOKENS or not isinstance(content, str):
            return None
        msgs.append({"role": role, "content": content})
    return msgs


def load_conversations(path: str | Path, fmt: str = "auto") -> list[list[Message]]:
    """Every conversation of an SFT file. DataError for an empty file, records missing their format's fields (how
    many, and the first line) and conversations without an assistant turn (they would train on nothing)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no SFT data file {path}; pass a .json or .jsonl file of alpaca, messages or "
                        "prompt/completion records")  # fmt: skip
    records = _records(path)
    if not records:
        raise DataError(f"{path} holds no records")
    fmt = detect_format(records[0][1]) if fmt in ("auto", "text") else fmt
    convs, bad, silent = [], [], []
    for line, rec in records:
        msgs = to_messages(rec, fmt)
        if msgs is None:
            bad.append(line)
        elif not any(m["role"] == "assistant" for m in msgs):
            silent.append(line)
        else:
            convs.append(msgs)
    if bad:
        need = {"alpaca": "instruction and output", "messages": "messages (role, content) or conversations (from, "
                "value)", "prompt_completion": "prompt and completion"}[fmt]  # fmt: skip
        raise DataError(f"{len(bad)} of {len(records)} records in {path} lack the fields the {fmt} format needs "
                        f"({need}); the first is at line {bad[0]}")  # fmt: skip
    if silent:
        raise DataError(f"{len(silent)} conversations in {path} have no assistant turn and would train on nothing; "
                        f"the first is at line {silent[0]}")  # fmt: skip
    return convs


# ---------------------------------------------------------------------------------------------------------
# Batches.


def pack_rows(examples: list[tuple[np.ndarray, np.ndarray]], order: np.ndarray, block_size: int, packing: bool,
              pad_id: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Rows x, y of shape (R, block_size) holding the examples in `order` (see the module docstring)."""
    rows: list[list[int]] = [[]]
    fill = 0  # tokens in the last row
    for i in order:
        n = len(examples[i][0])
        if rows[-1] and (not packing or fill + n > block_size):
            rows.append([])
            fill = 0
        rows[-1].append(int(i))
        fill += n
    x = np.full((len(rows), block_size), pad_id, dtype=np.int64)
    y = np.full((len(rows), block_size), IGNORE_INDEX, dtype=np.int64)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            ex_x, ex_y = examples[i]
            x[r, at : at + len(ex_x)], y[r, at : at + len(ex_y)] = ex_x, ex_y
            at += len(ex_x)
    return x, y


class ChatLoader:
    """Batches of (x, y) rows of SFT examples; the same interface as `TokenLoader` (next_batch, state_dict).

    Each epoch lays the examples out in an order drawn from (seed, epoch) (in file order when shuffle is off);
    rank r of W takes rows r, r+W, ... Its position is (epoch, row), so a restored state continues exactly.
    """

    def __init__(self, examples: list[tuple[np.ndarray, np.ndarray]], batch_size: int, block_size: int, *,
                 seed: int = 0, packing: bool = True, shuffle: bool = True, pad_id: int = 0, rank: int = 0,
                 world_size: int = 1):  # fmt: skip
        if not examples:
            raise DataError("no fine-tuning examples to batch")
        self.examples, self.batch_size, self.block_size = examples, batch_size, block_size
        self.seed, self.packing, self.shuffle, self.pad_id = seed, packing, shuffle, pad_id
        self.rank, self.world_size = rank, world_size
        self.epoch, self.row, self.batches = 0, 0, 0
        self._rows = self._layout(0)

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.examples)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        x, y = pack_rows(self.examples, order, self.block_size, self.packing, self.pad_id)
        self._all_rows = len(x)
        return x[self.rank :: self.world_size], y[self.rank :: self.world_size]

    @property
    def batches_per_pass(self) -> int:
        """Batches that read every row of this epoch's layout once (the same on every rank)."""
        return math.ceil(math.ceil(self._all_rows / self.world_size) / self.batch_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: int64 tensors (B, T); y = -100 on masked positions (prompts, padding)."""
        xs, ys = [], []
        while sum(len(a) for a in xs) < self.batch_size:
            x, y = self._rows
            take = min(self.batch_size - sum(len(a) for a in xs), len(x) - self.row)
            xs.append(x[self.row : self.row + take])
            ys.append(y[self.row : self.row + take])
            self.row += take
            if self.row >= len(x):
                self.epoch, self.row = self.epoch + 1, 0
                self._rows = self._layout(self.epoch)
        self.batches += 1
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    def _identity(self) -> dict:
        return {"kind": "chat", "examples": len(self.examples), "tokens": int(sum(len(x) for x, _ in self.examples)),
                "batch_size": self.batch_size, "block_size": self.block_size, "seed": self.seed,
                "packing": self.packing, "rank": self.rank, "world_size": self.world_size}  # fmt: skip

    def state_dict(self) -> dict:
        return {**self._identity(), "epoch": self.epoch, "row": self.row, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        diff = [f"{k} {state.get(k)!r} -> {v!r}" for k, v in self._identity().items() if state.get(k) != v]
        if diff:
            raise DataError(f"loader state does not fit this data ({'; '.join(diff)}); resume with the same file "
                            "and settings")  # fmt: skip
        self.epoch, self.row, self.batches = int(state["epoch"]), int(state["row"]), int(state["batches"])
        self._rows = self._layout(self.epoch)


# ---------------------------------------------------------------------------------------------------------
# A run's SFT data: split, render, loaders.


@dataclass
class ChatData:
    """The train and held-out examples of one SFT file, rendered with a tokenizer that has the chat tokens."""

    tokenizer: Tokenizer
    train: list[list[Message]]
    val: list[list[Message]]
    source: str
    template: str = "slm"  # "slm" or "model" (the tokenizer's own chat template)

    def render(self, conversation: list[Message]) -> tuple[list[int], list[int]]:
        if self.template == "model":
            return render_template_masked(conversation, self.tokenizer)
        return render(conversation, self.tokenizer)

    def examples(self, split: str, block_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        convs = self.train if split == "train" else self.val
        out = [to_example(*self.render(c), max_len=block_size) for c in convs]
        return [e for e in out if e is not None]

    def loaders(self, batch_size: int, block_size: int, packing: bool, rank: int = 0, world_size: int = 1):
        """`make(split, seed) -> ChatLoader`, the factory the Trainer takes; val is read in file order."""
        cache: dict = {}

        def make(split: str, seed: int) -> ChatLoader:
            if split not in cache:
                cache[split] = self.examples(split, block_size)
                if not cache[split]:
                    raise DataError(f"no {split} example of {self.source} keeps an assistant token within "
                                    f"block_size={block_size}; raise model.block_size")  # fmt: skip
            train = split == "train"
            return ChatLoader(cache[split], batch_size, block_size, seed=seed, packing=packing, shuffle=train,
                              pad_id=self.tokenizer.eot_id, rank=rank if train else 0,
                              world_size=world_size if train else 1)  # fmt: skip

        return make

    def describe(self, block_size: int) -> str:
        n_train = self.examples("train", block_size)
        cut = sum(len(x) >= block_size for x, _ in n_train)
        template = "the model's own chat template" if self.template == "model" else "the slm chat template"
        return (f"SFT data {self.source}: {len(self.train)} train / {len(self.val)} held-out conversations, "
                f"{sum(len(x) for x, _ in n_train):,} train tokens, {cut} cut to block_size={block_size}, "
                f"rendered with {template}")  # fmt: skip


def chat_template_for(choice: str, tokenizer: Tokenizer) -> str:
    """data.chat_template resolved against the tokenizer: "model" (its own template) or "slm"."""
    if choice == "model" and not tokenizer.chat_template:
        raise DataError("data.chat_template=model needs a parent with its own chat template (an imported model's); "
                        "this tokenizer has none: use data.chat_template=slm or auto")  # fmt: skip
    return "model" if choice == "model" or (choice == "auto" and tokenizer.chat_template) else "slm"


def load_chat_data(data_cfg, tokenizer: Tokenizer) -> ChatData:
    """Read, check and split the SFT file of a data config (data.source, data.format, val_fraction, seed).
    Every conversation is rendered once here, so a character the tokenizer cannot encode fails before any run.
    Tuning with the slm template on a model that had its own drops that template from the (run's) tokenizer, so
    chat and the server use the template the model was tuned with."""
    template = chat_template_for(data_cfg.chat_template, tokenizer)
    if template == "slm":
        ensure_chat_tokens(tokenizer, data_cfg.add_chat_tokens)
        tokenizer.chat_template, tokenizer.chat_stops, tokenizer.chat_bos = None, (), ""
    convs = load_conversations(data_cfg.source, data_cfg.format)
    data = ChatData(tokenizer, [], [], str(data_cfg.source), template)
    for c in convs:
        data.render(c)
    order = np.random.default_rng(data_cfg.seed).permutation(len(convs))
    n_val = int(round(len(convs) * data_cfg.val_fraction))
    if data_cfg.val_fraction > 0:
        n_val = max(1, n_val)
    if n_val >= len(convs):
        raise DataError(f"{data_cfg.source} has {len(convs)} conversations, too few to hold out "
                        f"data.val_fraction={data_cfg.val_fraction}; lower it or add examples")  # fmt: skip
    val = [convs[i] for i in sorted(order[:n_val])]
    train = [convs[i] for i in sorted(order[n_val:])]
    return ChatData(tokenizer, train, val or train, str(data_cfg.source), template)
