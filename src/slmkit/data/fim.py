"""Fill-in-the-middle (FIM): the training transform of Bavarian et al. 2022 and the prompts that use it.

Training (`fim_window`, called by the loader on every window when `data.fim_rate` > 0): a window of tokens is cut
into pieces at its end-of-text tokens (each piece is part of one document; a piece that starts with end-of-text
keeps it first). With probability `rate` a piece's tokens are cut at two uniformly drawn token positions into
prefix, middle and suffix and rearranged:

    PSM  <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle
    SPM  <|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix middle      (share `spm_rate`)

(SPM is the paper's appendix variant that StarCoder uses: the prefix runs straight into the middle.) With
`line_rate` (data.fim_line_rate), that share of the FIM pieces instead cut their middle at two consecutive line
starts (tokens that begin with a newline): the middle is one whole line, "\n" and indentation first, and the suffix
starts at the next line's newline, exactly what an editor's line completion asks for (`fim_prompt` holds the
prefix's trailing newline back, see `heal`). Uniform random cuts rarely make such a middle; with half the middles
whole lines, a 4 x 128 modern-block model's fim-line exact match is 0.053 against a FIM-less model's 0.040
(benchmarks/results/fim_modern_lines.md). The middle is
followed by whatever comes next in the window, usually the next document's end-of-text, so a model learns to end a
middle with end-of-text. Each rearranged piece is 3 tokens longer; the window is cut back to its length at the end.
This is the paper's context-level FIM (applied after windows are cut, per document piece), which it found better
than transforming whole documents before packing: every FIM example has its sentinels inside the context.

Every draw comes from `np.random.default_rng([seed, FIM_SALT, document index, offset in the document])`: a pure
function of the data seed and where the piece lies, so a resumed run sees the same pieces as an uninterrupted one,
and a streaming loader can call `fim_piece` with the same arguments.

Inference (`fim_prompt`): <|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix (SPM) for a model trained with
SPM pieces (`fim_spm_rate` > 0, the default), else <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> (PSM);
generation stops at end-of-text or any sentinel. SPM is the paper's recommended inference mode for models trained in
both orders: the middle continues the prefix directly, as in left-to-right text. Measured on a 4 x 128 python-stdlib
model (benchmarks/bench_fim.py): fim-line exact match 0.020 with the SPM prompt, 0.003 with PSM; its middle tokens
read in SPM order cost 2.94 nats against 3.16 in PSM order (4 x 256, 14 M tokens: 2.69 against 2.92). Prefix and
suffix that do not fit are cut from their far ends (the start of the prefix, the end of the suffix); the prompt
records how many tokens each lost.

Token boundaries (`heal`): a byte-level BPE joins a newline with the next line's indentation ("\n   " + " x"), so
a prefix that ends at a cursor after a newline or indentation ends in a token the model never saw there, and it
infills badly. As in "token healing", the prefix's trailing whitespace is held back from the prompt and the model
writes it itself; `finish` then removes it from the generated text (or, when the model wrote other whitespace, the
generated text's leading whitespace).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from slmkit.base.config import DataConfig
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, FIM_TOKENS, Tokenizer, TokenizerError
from slmkit.model.generate import generate
from slmkit.model.gpt import GPT

FIM_SALT = 0x46494D  # "FIM": keeps these draws apart from the loader's batch draws of the same seed
HOW_TO_TRAIN = "train one with data.fim_rate=0.5 (e.g. `slm train code data.fim_rate=0.5`)"
MODES = ("line", "block")
"""line: the completion ends at the end of the line; block: at the end of the middle (or max tokens)."""


class FimError(SlmError, ValueError):
    """A fill-in-the-middle request this model or input cannot serve."""


@dataclass(frozen=True)
class FimSpec:
    """What the transform needs: the rates, the token ids of the sentinels and end-of-text, and (for line middles)
    which token ids start a new line."""

    rate: float
    spm_rate: float
    prefix_id: int
    suffix_id: int
    middle_id: int
    eot_id: int
    line_rate: float = 0.0
    line_starts: np.ndarray | None = field(default=None, compare=False)
    """(vocab,) bool: the token's text begins with a newline. Needed when line_rate > 0."""

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, rate: float, spm_rate: float, line_rate: float = 0.0) -> FimSpec:
        if not tokenizer.has_fim_tokens:
            raise TokenizerError(f"the {tokenizer.name} tokenizer has no FIM tokens ({', '.join(FIM_TOKENS)})")
        tid = tokenizer.token_id
        starts = line_start_tokens(tokenizer) if line_rate > 0 else None
        return cls(rate, spm_rate, tid(FIM_PREFIX), tid(FIM_SUFFIX), tid(FIM_MIDDLE), tid(EOT), line_rate, starts)

    @classmethod
    def from_config(cls, tokenizer: Tokenizer, data: DataConfig) -> FimSpec | None:
        """The transform a run's data section asks for (data.fim_rate, fim_spm_rate, fim_line_rate); None at rate 0."""
        if data.fim_rate <= 0:
            return None
        return cls.from_tokenizer(tokenizer, data.fim_rate, data.fim_spm_rate, data.fim_line_rate)


def line_start_tokens(tokenizer: Tokenizer) -> np.ndarray:
    """(vocab_size,) bool: which token ids decode to text that begins with a newline."""
    return np.array([tokenizer.decode([i]).startswith("\n") for i in range(tokenizer.vocab_size)], dtype=bool)


def ensure_fim_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with the FIM tokens: a new bpe has them reserved; char, gpt2 and older bpe tokenizers get them
    appended after their vocabulary (the ids of every other token stay, so prepared data keeps its meaning)."""
    if tokenizer.has_fim_tokens:
        return tokenizer
    if not hasattr(tokenizer, "add_special_tokens"):
        raise TokenizerError(f"the {tokenizer.name} tokenizer has no FIM tokens and cannot get them")
    tokenizer.add_special_tokens(FIM_TOKENS)
    return tokenizer


# ---------------------------------------------------------------------------------------------------------
# Training: the transform


def permute(content: np.ndarray, rng: np.random.Generator, spec: FimSpec) -> np.ndarray:
    """`content` (n,) rearranged into PSM or SPM (n + 3,) with probability spec.rate, else returned as is. The draws
    are always made in the same order (fim?, spm?, two cuts, then for a FIM piece line middle? and which line), so
    they depend on nothing but the generator."""
    u_fim, u_spm = rng.random(2)
    lo, hi = np.sort(rng.integers(0, len(content) + 1, size=2))
    if u_fim >= spec.rate or len(content) == 0:
        return content
    if spec.line_rate > 0 and rng.random() < spec.line_rate:  # drawn last: line_rate 0 keeps the draws above
        starts = np.flatnonzero(spec.line_starts[content])
        if len(starts) >= 2:  # a whole line lies in the piece: it is the middle
            k = int(rng.integers(len(starts) - 1))
            lo, hi = starts[k], starts[k + 1]
    prefix, middle, suffix = content[:lo], content[lo:hi], content[hi:]
    pre, suf, mid = (np.array([t], dtype=content.dtype) for t in (spec.prefix_id, spec.suffix_id, spec.middle_id))
    if u_spm < spec.spm_rate:
        return np.concatenate([pre, suf, suffix, mid, prefix, middle])
    return np.concatenate([pre, prefix, suf, suffix, mid, middle])


def fim_piece(piece: np.ndarray, seed: int, doc: int, offset: int, spec: FimSpec) -> np.ndarray:
    """One document's piece (starting with its end-of-text when offset is 0), transformed as the module says: a pure
    function of (seed, document index, offset of the piece in the document)."""
    rng = np.random.default_rng([seed, FIM_SALT, doc, offset])
    if len(piece) and piece[0] == spec.eot_id:
        return np.concatenate([piece[:1], permute(piece[1:], rng, spec)])
    return permute(piece, rng, spec)


def fim_window(window: np.ndarray, first_doc: int, first_offset: int, seed: int, spec: FimSpec) -> np.ndarray:
    """A window (L,) of the token stream whose first token is at `first_offset` in document `first_doc`, with each
    document piece transformed (`fim_piece`), cut back to L tokens."""
    cuts = np.flatnonzero(window == spec.eot_id).tolist()
    if not cuts or cuts[0] != 0:
        cuts = [0, *cuts]
    bounds = [*cuts, len(window)]
    parts = []
    for i in range(len(cuts)):  # piece 0 lies in first_doc at first_offset; piece i > 0 starts document first_doc + i
        piece = window[bounds[i] : bounds[i + 1]]
        parts.append(fim_piece(piece, seed, first_doc + i, 0 if i else first_offset, spec))
    return np.concatenate(parts)[: len(window)]


# ---------------------------------------------------------------------------------------------------------
# Inference: the prompt


@dataclass
class FimPrompt:
    """Token ids to continue, the ids that end the completion, and how many tokens were cut from the start of the
    prefix and the end of the suffix to fit the context."""

    ids: list[int]
    stop_ids: list[int]
    prefix_cut: int
    suffix_cut: int
    infill: bool
    held: str = ""
    """The prefix's trailing whitespace, held back for the model to write (`heal`)."""

    def truncation(self) -> dict:
        return {"prefix_tokens_cut": self.prefix_cut, "suffix_tokens_cut": self.suffix_cut}


def infill_order(fim_rate: float, spm_rate: float) -> str:
    """How a model trained with data.fim_rate and data.fim_spm_rate infills: "" (it cannot), "spm" (it saw SPM
    pieces) or "psm"."""
    return "" if fim_rate <= 0 else "spm" if spm_rate > 0 else "psm"


def check_fim_model(tokenizer: Tokenizer, fim_rate: float | None) -> None:
    """FimError unless the model can infill: its tokenizer has the FIM tokens and (when its config is known) it was
    trained with data.fim_rate > 0."""
    if not tokenizer.has_fim_tokens:
        raise FimError(f"this model's tokenizer ({tokenizer.name}) has no fill-in-the-middle tokens, so it cannot "
                       f"complete with a suffix; {HOW_TO_TRAIN}")  # fmt: skip
    if fim_rate is not None and fim_rate <= 0:
        raise FimError(f"this model was trained without fill-in-the-middle (data.fim_rate=0), so it cannot complete "
                       f"with a suffix; {HOW_TO_TRAIN}")  # fmt: skip


def heal(prefix: str) -> tuple[str, str]:
    """(prefix without its trailing whitespace, that whitespace); a prefix of whitespace alone is kept whole."""
    body = prefix.rstrip()
    return (body, prefix[len(body) :]) if body else (prefix, "")


def fim_prompt(tokenizer: Tokenizer, prefix: str, suffix: str | None, budget: int, healing: bool = True,
               order: str = "psm") -> FimPrompt:  # fmt: skip
    """The prompt of a completion of `prefix` (left to right when `suffix` is None, else an infill between them) in
    at most `budget` tokens (the context left after the tokens to generate); `healing` holds back the prefix's
    trailing whitespace (`heal`); `order`: the infill's, "spm" or else PSM (`infill_order` of the model's
    training). Text is encoded with special-token strings as plain text. FimError for an empty prefix and suffix, or
    a budget too small for any text."""
    if not prefix and not suffix:
        raise FimError("the prefix and the suffix are both empty; give the text before the cursor (and after it)")
    held = ""
    if healing:
        prefix, held = heal(prefix)
    eot = tokenizer.token_id(EOT)
    p = tokenizer.encode(prefix)
    if suffix is None:
        keep = budget - 1  # one for a leading end-of-text, when the prefix starts a file
        if keep < 1:
            raise FimError(f"no room for the prompt: {budget} tokens of context are left after the new tokens")
        cut = max(0, len(p) - keep)
        ids = ([eot] if cut == 0 and eot is not None else []) + p[cut:]
        return FimPrompt(ids, [] if eot is None else [eot], cut, 0, False, held)
    s = tokenizer.encode(suffix)
    room = budget - 4  # end-of-text and the three sentinels
    if room < 2:
        raise FimError(f"no room for the prompt: {budget} tokens of context are left after the new tokens")
    s_keep = min(len(s), max(room - len(p), room // 4))  # the prefix gets at least 3/4 of the room it needs
    p_keep = min(len(p), room - s_keep)
    tid = tokenizer.token_id
    p_cut, s_cut = len(p) - p_keep, len(s) - s_keep
    head = [eot] if p_cut == 0 and eot is not None else []
    if order == "spm":
        ids = [*head, tid(FIM_PREFIX), tid(FIM_SUFFIX), *s[:s_keep], tid(FIM_MIDDLE), *p[p_cut:]]
    else:
        ids = [*head, tid(FIM_PREFIX), *p[p_cut:], tid(FIM_SUFFIX), *s[:s_keep], tid(FIM_MIDDLE)]
    stops = [t for t in (eot, *(tid(x) for x in FIM_TOKENS)) if t is not None]
    return FimPrompt(ids, stops, p_cut, s_cut, True, held)


def finish(text: str, held: str, mode: str) -> tuple[str, bool]:
    """(completion, whether it is complete) from the generated `text`: the held-back whitespace removed (see `heal`),
    then in line mode cut at the end of the line. Complete: the line ended (line mode)."""
    if held and text.startswith(held):
        text = text[len(held) :]
    elif held:
        text = text.lstrip(" \t") if "\n" not in held else text.lstrip()
    if mode == "line" and "\n" in text:
        return text[: text.index("\n")], True
    return text, False


def run_completion(model: GPT, tokenizer: Tokenizer, prompt: FimPrompt, max_new_tokens: int, mode: str = "line", *,
                   temperature: float = 0.0, seed: int | None = None) -> tuple[str, int, str]:  # fmt: skip
    """(completion text, tokens generated, finish reason: "stop" or "length") of a prompt: generation ends at a stop
    id (end-of-text, a sentinel), at the end of the line in line mode, or after max_new_tokens."""
    if mode not in MODES:
        raise FimError(f"unknown completion mode {mode!r}; use line or block")
    new: list[int] = []
    for tok in generate(model, prompt.ids, max_new_tokens, temperature=temperature, seed=seed,
                        stop_ids=prompt.stop_ids, vocab_limit=tokenizer.vocab_size):  # fmt: skip
        new.append(tok)
        if mode == "line":
            text, done = finish(tokenizer.decode(new), prompt.held, mode)
            if done:
                return text, len(new), "stop"
    text, _ = finish(tokenizer.decode(new), prompt.held, mode)
    return text, len(new), "length" if len(new) >= max_new_tokens else "stop"
