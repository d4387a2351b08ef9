"""`slm complete`: what an editor asks for at a cursor: the text that goes between a prefix and an optional suffix.

Without a suffix the model continues the prefix. With one it fills in the middle, which needs a model trained with
`data.fim_rate` > 0 (its tokenizer has the FIM tokens; `slmkit.data.fim`). Decoding is greedy by default; `line`
mode stops at the end of the line, `block` mode at the end of the middle (end-of-text) or after max_new_tokens.
A prefix and suffix that do not fit the context (block_size minus the tokens to generate) are cut from their far
ends, and the result says how many tokens each lost.

`Completer` loads a model once and completes many times (what the latency benchmark times); `complete` is the verb.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from slmkit.base.errors import SlmError
from slmkit.data.fim import MODES, FimError, check_fim_model, fim_prompt, infill_order, run_completion
from slmkit.model.generate import check_sampling
from slmkit.model.qweights import is_quantized_dir
from slmkit.runs.checkpoint import CONFIG_FILE, load_model, read_run_config, resolve_checkpoint

DEFAULT_MAX_NEW = {"line": 48, "block": 128}
"""Tokens generated when max_new_tokens is not given, per mode."""


@dataclass
class Completion:
    """One completion: its text, why it ended, its token counts, what was cut to fit and how long it took."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    prefix_tokens_cut: int
    suffix_tokens_cut: int
    infill: bool
    ms: float

    def to_dict(self) -> dict:
        return asdict(self)


class Completer:
    """A loaded model (a run dir or a `slm quantize` artifact) that completes prefixes, with or without a suffix."""

    def __init__(self, run: str | Path, checkpoint: str = "best"):
        self.model, self.tokenizer, self.cfg, self.ckpt = load_model(run, checkpoint)
        self.block = self.model.config.block_size

    def complete(self, prefix: str, suffix: str | None = None, *, mode: str = "line",
                 max_new_tokens: int | None = None, temperature: float = 0.0,
                 seed: int | None = None) -> Completion:  # fmt: skip
        """Complete at the cursor between `prefix` and `suffix` (None: no suffix). FimError for a suffix this model
        cannot use, an empty prefix and suffix, or too little context for the prompt."""
        if mode not in MODES:
            raise FimError(f"unknown completion mode {mode!r}; use line or block")
        max_new = min(DEFAULT_MAX_NEW[mode], self.block // 2) if max_new_tokens is None else max_new_tokens
        check_sampling({"max_new_tokens": "--max-new-tokens", "temperature": "--temperature"},
                       max_new_tokens=max_new, temperature=temperature, seed=seed)  # fmt: skip
        if suffix is not None:
            check_fim_model(self.tokenizer, self.cfg.data.fim_rate)
        if max_new >= self.block - 1:
            raise FimError(f"--max-new-tokens {max_new} leaves no room for the prompt in this model's context of "
                           f"{self.block} tokens; ask for fewer")  # fmt: skip
        t0 = time.perf_counter()
        order = infill_order(self.cfg.data.fim_rate, self.cfg.data.fim_spm_rate)
        prompt = fim_prompt(self.tokenizer, prefix, suffix, self.block - max_new, order=order)
        try:
            text, n, finish = run_completion(self.model, self.tokenizer, prompt, max_new, mode,
                                             temperature=temperature, seed=seed)  # fmt: skip
        except ValueError as e:  # e.g. a character a char-level vocabulary lacks
            raise SlmError(f"the text cannot be encoded by this model's tokenizer: {e}") from None
        ms = (time.perf_counter() - t0) * 1000
        return Completion(text, finish, len(prompt.ids), n, prompt.prefix_cut, prompt.suffix_cut, prompt.infill, ms)


def trained_fim(run: str | Path, checkpoint: str = "best") -> tuple[float, float]:
    """(data.fim_rate, data.fim_spm_rate) a run (or a quantized copy of one) was trained with: a fim_rate > 0 means
    it can fill in the middle; the spm rate says in which order it reads an infill (`infill_order`)."""
    if is_quantized_dir(run):
        data = read_run_config(run).data
    else:
        ckpt = resolve_checkpoint(run, checkpoint)
        data = read_run_config(ckpt if (ckpt / CONFIG_FILE).is_file() else run).data
    return data.fim_rate, data.fim_spm_rate


def complete(run: str | Path, prefix: str, suffix: str | None = None, *, mode: str = "line",
             max_new_tokens: int | None = None, checkpoint: str = "best", temperature: float = 0.0,
             seed: int | None = None) -> Completion:  # fmt: skip
    """`slm complete`: the completion at a cursor between `prefix` and `suffix` (see the module docstring)."""
    if not prefix and not suffix:  # before the model loads
        raise FimError("the prefix and the suffix are both empty; give the text before the cursor (and after it)")
    if mode not in MODES:
        raise FimError(f"unknown completion mode {mode!r}; use line or block")
    return Completer(run, checkpoint).complete(prefix, suffix, mode=mode, max_new_tokens=max_new_tokens,
                                               temperature=temperature, seed=seed)  # fmt: skip
