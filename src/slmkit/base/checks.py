"""Checks of what a user gives: the range of every numeric config field, near-miss key suggestions, text files.

`RANGES` is the one table of ranges: dotted key -> `Range`. Each section's `__post_init__` (in `config.py`) checks
its fields against it, so a value out of range (NaN and infinity included) is refused wherever a config is built:
from a preset or TOML file, from dotted overrides, or in code. CLI flags that mirror a field (`cli.base.add_field`)
check the same range as they parse. `number_problem` is the check itself, also used for CLI options that are not
config fields and for sampling parameters (`model.generate.SAMPLING`). `text_file_problem` says why a file given as
text (a prompts file, a text to score, SFT data, a config) cannot be read as such. This module imports nothing of
slmkit: callers turn its messages into their own `SlmError`s.
"""

from __future__ import annotations

import codecs
import difflib
import math
import os
import typing

INT_MAX = 2**63 - 1
"""Largest integer torch and numpy take (seeds, sizes, counts): the upper bound of counts with no natural one."""


class Range(typing.NamedTuple):
    """Allowed values low..high of an int or float; `low_open`/`high_open` exclude that end. `note` says what a
    special value means (e.g. "0 disables"), shown in the error message."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def text(self, full: bool = False) -> str:
        """The range as a reader writes it: `>= 1`, `> 0`, `in [0, 1)`; `full` always gives the interval."""
        if self.high == math.inf or (self.high == INT_MAX and not full):
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"

    def above_low(self, v: float) -> bool:
        return v > self.low if self.low_open else v >= self.low

    def below_high(self, v: float) -> bool:
        return v < self.high if self.high_open else v <= self.high


def _num(v: float) -> str:
    if v == INT_MAX:
        return "2**63-1"
    if v == -(2**63):
        return "-2**63"
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


_POS = Range(1, INT_MAX)  # a count of at least one
_NAT = Range(0, INT_MAX)  # a count that may be zero (what 0 means is in the note)
_SEED = Range(0, INT_MAX)
_FRACTION_OPEN = Range(0, 1, high_open=True)  # dropout, val fraction, betas: [0, 1)
_POSITIVE = Range(0, low_open=True)  # a finite float > 0


def _nat(note: str) -> Range:
    return _NAT._replace(note=note)


RANGES: dict[str, Range] = {
    # model
    "model.n_layer": _POS,
    "model.n_head": _POS,
    "model.n_kv_head": _nat("0 = n_head"),
    "model.n_embd": _POS,
    "model.block_size": _POS,
    "model.vocab_size": _nat("0 = from the tokenizer"),
    "model.norm_eps": Range(0, 1, low_open=True),
    "model.rope_theta": _POSITIVE,
    "model.mlp_hidden": _nat("0 = derived from n_embd"),
    "model.dropout": _FRACTION_OPEN,
    "model.init_std": _POSITIVE,
    # data
    "data.val_fraction": _FRACTION_OPEN,
    "data.seed": _SEED,
    "data.near_threshold": Range(0, 1, low_open=True),
    "data.fim_rate": Range(0, 1, note="0 = no fill-in-the-middle"),
    "data.fim_spm_rate": Range(0, 1),
    "data.fim_line_rate": Range(0, 1),
    "data.shuffle_buffer": _POS._replace(note="documents; 1 = no document shuffle"),
    "data.val_tokens": _POS,
    "data.stream_workers": _nat("0 = one background thread"),
    # optim
    "optim.lr": _POSITIVE,
    "optim.min_lr": Range(0),
    "optim.weight_decay": Range(0),
    "optim.beta1": _FRACTION_OPEN,
    "optim.beta2": _FRACTION_OPEN,
    "optim.eps": _POSITIVE,
    "optim.grad_clip": Range(0, note="0 disables clipping"),
    "optim.warmup": Range(0, note="steps when >= 1, a fraction of train.max_steps when < 1"),
    "optim.decay_fraction": Range(0, 1),
    "optim.muon_lr": _POSITIVE,
    "optim.muon_momentum": _FRACTION_OPEN,
    # train
    "train.max_steps": _POS,
    "train.batch_size": _POS,
    "train.grad_accum": _POS,
    "train.tokens_per_step": _nat("0 = batch_size x block_size x grad_accum"),
    "train.seed": _SEED,
    "train.data_seed": Range(-1, INT_MAX, note="-1 = train.seed"),
    "train.eval_every": _nat("0 = only at the end"),
    "train.eval_batches": _POS,
    "train.log_every": _POS,
    "train.ckpt_every": _nat("0 = at every eval"),
    "train.ckpt_minutes": Range(0, note="0 disables"),
    "train.keep_last": _POS,
    "train.threads": Range(0, 1024, note="0 = torch decides"),
    # eval
    "eval.every": _nat("0 = only at the end"),
    "eval.limit": _nat("0 = all items"),
    # lora
    "lora.rank": _nat("0 = LoRA off"),
    "lora.alpha": _POSITIVE,
    "lora.dropout": _FRACTION_OPEN,
    # embed
    "embed.temperature": Range(0.001, 10),
    "embed.negatives": _nat("0 = in-batch negatives only"),
    "embed.min_score": Range(0, 5),
    "embed.cosent_weight": Range(0, 100, note="0 = InfoNCE only"),
    "embed.max_len": _nat("0 = model.block_size"),
    "embed.max_pairs": _nat("0 = all"),
    # distill
    "distill.temperature": Range(0.05, 100),
    "distill.alpha": Range(0, 1),
    "distill.topk": _nat("0 = the teacher runs on every batch"),
}
"""Every int and float field of the config tree (a test checks that none is missing)."""

QUALITY_FILTERS = ("boilerplate", "short", "encoding", "gopher", "gopher-repetition", "c4", "fineweb")
"""The names of data.filters (what each does: `slmkit.data.quality.filters`)."""
DEDUP_METHODS = ("exact", "near")
"""The names of data.dedup: exact (same text) and near (MinHash, Jaccard >= data.near_threshold)."""
CONTAMINATION_MODES = ("warn", "remove", "off")
"""data.contamination: what preparing does with documents sharing 13-grams with the eval tasks."""


def number_problem(name: str, value: object, rng: Range, kind: type = float) -> str | None:
    """Why `value` is not a valid `kind` (int or float) within `rng`, as one sentence naming `name`; None if it is.
    NaN and infinity are never valid; bools are not numbers here."""
    note = f" ({rng.note})" if rng.note else ""
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} must be a whole number {rng.text()}{note}, got {show(value)}"
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number {rng.text()}{note}, got {show(value)}"
    elif not math.isfinite(value if isinstance(value, float) else _as_float(value)):  # NaN, inf, an int past 1e308
        return f"{name} must be a finite number {rng.text()}{note}, got {show(value)}"
    if not rng.above_low(value) or not rng.below_high(value):
        return f"{name} must be {rng.text(full=not rng.below_high(value))}{note}, got {show(value)}"
    return None


def _as_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def show(value: object, width: int = 40) -> str:
    """A value for an error message, shortened (a 30-digit number or a long string stays readable on one line)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**width:
        try:
            return f"a number of {len(str(abs(value)))} digits"
        except ValueError:  # more digits than Python converts to text (4300)
            return f"a number of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------------------------------------------------
# Unknown keys: "did you mean ...?"

# Names people reach for (other libraries' spellings) -> this tree's field name; used by the "did you mean".
SYNONYMS = {
    "learning_rate": "lr", "learningrate": "lr", "max_lr": "lr", "peak_lr": "lr", "final_lr": "min_lr",
    "end_lr": "min_lr", "lr_min": "min_lr", "wd": "weight_decay", "decay": "weight_decay", "clip": "grad_clip",
    "grad_norm_clip": "grad_clip", "clip_grad": "grad_clip", "max_grad_norm": "grad_clip", "warmup_steps": "warmup",
    "warmup_iters": "warmup", "optimizer": "name", "lr_schedule": "schedule", "scheduler": "schedule",
    "batch": "batch_size", "bs": "batch_size", "micro_batch_size": "batch_size", "batch_size_per_device": "batch_size",
    "steps": "max_steps", "iters": "max_steps", "max_iters": "max_steps", "num_steps": "max_steps",
    "total_steps": "max_steps", "train_steps": "max_steps", "accum": "grad_accum",
    "gradient_accumulation": "grad_accum", "gradient_accumulation_steps": "grad_accum",
    "grad_accumulation": "grad_accum", "eval_interval": "eval_every",
    "eval_iters": "eval_batches", "log_interval": "log_every", "checkpoint_every": "ckpt_every",
    "save_every": "ckpt_every", "layers": "n_layer", "n_layers": "n_layer", "num_layers": "n_layer",
    "num_hidden_layers": "n_layer", "depth": "n_layer", "heads": "n_head", "n_heads": "n_head", "num_heads": "n_head",
    "num_attention_heads": "n_head", "kv_heads": "n_kv_head", "n_kv_heads": "n_kv_head",
    "num_key_value_heads": "n_kv_head", "dim": "n_embd", "width": "n_embd", "d_model": "n_embd", "n_embed": "n_embd",
    "hidden_size": "n_embd", "embd": "n_embd", "emb_dim": "n_embd", "context": "block_size",
    "context_length": "block_size", "ctx_len": "block_size", "seq_len": "block_size", "max_seq_len": "block_size",
    "seq_length": "block_size", "n_ctx": "block_size", "max_position_embeddings": "block_size",
    "vocab": "vocab_size", "n_vocab": "vocab_size", "ffn_hidden": "mlp_hidden", "intermediate_size": "mlp_hidden",
    "d_ff": "mlp_hidden", "tie_word_embeddings": "tie_embeddings", "tokenizer": "kind", "path": "source",
    "dataset": "source", "files": "include", "backend": "backends", "r": "rank",
    "lora_rank": "rank", "lora_alpha": "alpha", "target_modules": "targets",
}  # fmt: skip


def suggest(key: str, candidates: list[str], n: int = 3) -> list[str]:
    """Up to `n` known keys that `key` probably meant, best first: the same field name (or a known synonym such
    as learning_rate -> lr) in the same section first, then close spellings of the field name, then of the key."""
    section, _, tail = key.rpartition(".")
    tail = tail.strip().lower().replace("-", "_")
    by_tail: dict[str, list[str]] = {}
    for c in candidates:
        by_tail.setdefault(c.rpartition(".")[2], []).append(c)
    sections = {c.rpartition(".")[0] for c in candidates}
    section_fix = (
        section
        if section in sections or not section
        else next(iter(difflib.get_close_matches(section, sorted(sections), n=1, cutoff=0.6)), None)
    )
    picks: list[str] = []

    def add(keys: list[str]) -> None:  # same (or corrected) section first
        for c in sorted(keys, key=lambda c: c.rpartition(".")[0] != section_fix):
            if c not in picks and c != key:
                picks.append(c)

    for name in dict.fromkeys((SYNONYMS.get(tail, tail), tail, SYNONYMS.get(tail.rstrip("s"), tail.rstrip("s")))):
        add(by_tail.get(name, []))
    for name in difflib.get_close_matches(tail, list(by_tail), n=n, cutoff=0.85 if picks else 0.75):
        add(by_tail[name])
    if section_fix and section_fix != section:  # a misspelled section: "optm.lr"
        add(difflib.get_close_matches(f"{section_fix}.{tail}", candidates, n=n, cutoff=0.6))
    if not picks:  # a looser spelling of the field name, then words in common ("max_tokens" -> tokens_per_step)
        for name in difflib.get_close_matches(tail, list(by_tail), n=n, cutoff=0.6):
            add(by_tail[name])
        words = {w for w in tail.split("_") if len(w) > 2}
        add([c for t, cs in by_tail.items() if words & set(t.split("_")) for c in cs])
    return picks[:n]


# ---------------------------------------------------------------------------------------------------------
# Text files given as arguments


def text_file_problem(path: str | os.PathLike, what: str, hint: str, *, check_all: bool = True) -> str | None:
    """Why `path` is not a readable, non-empty UTF-8 text file, as one sentence ("no {what} PATH; {hint}", "PATH is
    a directory/empty/binary/not UTF-8 ..."); None when it is one. Binary: a NUL byte in the first 64 KiB. The whole
    file is decoded unless check_all is False (then the first 64 KiB)."""
    if not os.path.lexists(path):
        return f"no {what} {path}; {hint}"
    if os.path.isdir(path):
        return f"{path} is a directory, not a {what}; {hint}"
    try:
        with open(path, "rb") as f:
            decoder, offset, blank = codecs.getincrementaldecoder("utf-8")(), 0, True
            while True:
                block = f.read(1 << 16)
                if offset == 0 and b"\0" in block:
                    return f"{path} is a binary file, not a {what}; {hint}"
                try:
                    blank = not decoder.decode(block, final=not block).strip() and blank
                except UnicodeDecodeError as e:
                    at = offset + e.start
                    return f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {at}); save it as UTF-8"
                offset += len(block)
                if not block or not check_all:
                    break
    except OSError as e:
        return f"cannot read {path}: {e.strerror or e}"
    if blank and (check_all or offset < 1 << 16):
        return f"{path} is empty; {hint}"
    return None
