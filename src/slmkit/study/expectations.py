"""Expected ranges for known presets and datasets, so a learner can tell whether a number is normal.

Each reference is a published, reproducible number with where it comes from. `hints(...)` turns them, plus the
rules of thumb that hold for any run (initial loss, perplexity, bits per byte), into plain sentences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slmkit.model.gpt import padded_vocab_size


@dataclass(frozen=True)
class Reference:
    """A known val loss for a setup: matched by preset name, or by (data source, tokenizer kind)."""

    source: str
    tokenizer: str
    step: int
    val_loss: float
    setup: str  # the model and batch that reached it, and where the number is from
    preset: str = ""


REFERENCES = (
    Reference("tinyshakespeare", "char", 2000, 1.88, "nanoGPT's CPU recipe (4 layers x 128 dims, block 64, batch 12, "
              "no dropout), as reported in the nanoGPT README", preset="shakespeare-char"),
    Reference("tinyshakespeare", "char", 5000, 1.47, "nanoGPT's GPU recipe (6 layers x 384 dims, block 256, batch 64, "
              "dropout 0.2), as reported in the nanoGPT README"),
)  # fmt: skip


def references_for(preset: str, source: str, tokenizer: str) -> list[Reference]:
    return [r for r in REFERENCES if (preset and r.preset == preset) or (r.source, r.tokenizer) == (source, tokenizer)]


def hints(preset: str, source: str, tokenizer: str, vocab_size: int | None, step: int,
          initial_val: float | None, final_val: float | None, bytes_per_token: float | None) -> list[str]:  # fmt: skip
    """Plain-language sentences that put this run's numbers next to what is expected."""
    out = []
    for r in references_for(preset, source, tokenizer):
        here = f"; this run: {final_val:.3f} at step {step}" if final_val is not None else ""
        verdict = ""
        if final_val is not None and step >= r.step:
            verdict = " (as expected)" if final_val <= r.val_loss + 0.1 else " (worse than the reference: see findings)"
        out.append(f"A healthy {source} {tokenizer}-level run reaches val loss ≈ {r.val_loss} at step {r.step} with "
                   f"{r.setup}{here}{verdict}.")  # fmt: skip
    if vocab_size:
        padded = padded_vocab_size(vocab_size)
        uniform = math.log(padded)
        pad = f" (the vocabulary of {vocab_size} padded to {padded} outputs)" if padded != vocab_size else ""
        msg = (f"At step 0 a randomly initialized model should score about the loss of a uniform guess, "
               f"ln({padded}) = {uniform:.2f}{pad}")  # fmt: skip
        if initial_val is not None:
            ok = abs(initial_val - uniform) < 0.5
            msg += f"; this run started at {initial_val:.2f}" + ("" if ok else " (unusual: check the init scale)")
        out.append(msg + ".")
    if final_val is not None:
        out.append(f"Perplexity e^loss = {math.exp(min(final_val, 50)):.1f}: on average the model is as unsure as a "
                   "choice among that many tokens.")  # fmt: skip
    if bytes_per_token:
        bpb = (final_val or 0) / math.log(2) / bytes_per_token
        value = f" = {bpb:.3f}" if final_val else ""
        out.append(f"Bits per byte = loss / ln 2 / bytes per token ({bytes_per_token:.2f} here){value}: "
                   "it does not depend on the tokenizer, so runs with different tokenizers compare. gzip needs "
                   "roughly 2.5-3 bits per byte of English text; a model above that has learned less than a "
                   "generic compressor.")  # fmt: skip
    return out


def entropy_hint(nats: float, vocab_size: int) -> str:
    """One line that puts a next-token entropy next to its range at this vocabulary size: 0 (certain) to ln(V) (a
    uniform guess over the V tokens, what an untrained model shows)."""
    top = math.log(vocab_size)
    share = nats / top if top > 0 else 0.0
    if share > 0.9:
        verdict = "close to a uniform guess: an untrained (or barely trained) model looks like this"
    elif share < 0.1:
        verdict = "nearly certain: typical inside a word or a fixed phrase the model has learned"
    else:
        verdict = ("in between: a trained model is sure mid-word and unsure where many continuations fit "
                   "(a new word, a new line)")  # fmt: skip
    return (
        f"An entropy of {nats:.2f} nats = {nats / math.log(2):.2f} bits is as unsure as a uniform choice among "
        f"e^H ≈ {math.exp(nats):,.1f} tokens. The range is 0 (certain) to ln(V) = ln({vocab_size:,}) = {top:.2f} nats "
        f"(a uniform guess); this is {100 * share:.0f}% of it, {verdict}."
    )
