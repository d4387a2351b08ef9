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


# What the newer evals' numbers mean, with the baselines measured here (benchmarks/results/embed_lr4.md,
# embed_cosent.md, fim.md: 4-layer models trained minutes to an hour on this CPU) and published ones for scale.
EMBEDDING_SCALE = (
    "Spearman x 100 between the cosine of two sentences' vectors and human similarity: 0 is unrelated. For scale: "
    "TF-IDF word overlap scores 70 on STS-B test and 59 on SICK-R here; a 3M-parameter LM pretrained 15 minutes on "
    "Wikipedia, mean-pooled and never trained for similarity, 26 (STS-B); after 600 steps of `slm embed-train` 44, "
    "or 52 with embed.cosent_weight=1 on the STS-B and SICK scores (benchmarks/results/embed_cosent.md); pretrained "
    "35 minutes and fine-tuned in two stages (InfoNCE, then CoSENT on STS-B train), 58 (embed_two_stage.md); "
    "trained sentence encoders such as all-MiniLM-L6-v2 score about 82 on STS-B."
)
RETRIEVAL_SCALE = (
    "nDCG@10 x 100: 100 puts every query's own passage first; chance is near 1. For scale: TF-IDF scores 88 on "
    "wiki-retrieval here, a small pretrained LM 28, the same after `slm embed-train` 50, 57 from a parent pretrained "
    "35 minutes (benchmarks/results/embed_lr4.md, embed_1h.md). Below TF-IDF, ship TF-IDF (or train the encoder "
    "longer on in-domain pairs)."
)
CODE_SCALE = (
    "exact match: the share of held-out lines reproduced character for character (edit_similarity gives partial "
    "credit). Models of 1-4M parameters trained for minutes to half an hour on a CPU score 0.02-0.04 exact and about "
    "0.25 edit similarity (benchmarks/results/fim.md); code models of 100M+ parameters trained on billions of tokens "
    "reach 0.2-0.4 on single-line infilling."
)


def eval_hints(results: dict[str, dict]) -> list[str]:
    """One sentence per kind of task in `results` (as `evaluate_run` returns them) saying what its numbers mean."""
    names = set(results)
    out = []
    if any(n.startswith("sts") or n == "sick-r" for n in names):
        out.append(EMBEDDING_SCALE)
    if any(n.endswith("retrieval") for n in names):
        out.append(RETRIEVAL_SCALE)
    if names & {"fim-line", "next-line"}:
        out.append(CODE_SCALE)
    if "val" in names:
        m = results["val"]["metrics"]
        out.append(f"val: perplexity {m['ppl']:.1f} is e^loss, bits per byte {m['bpb']:.2f} compares across "
                   "tokenizers; gzip needs 2.5-3 bits per byte of English.")  # fmt: skip
    chance = [n for n, r in results.items() if r.get("chance")]
    if chance:
        out.append(f"{', '.join(chance)}: compare acc with the chance column; a model of a few million parameters "
                   "trained for minutes is expected to sit within a few points of chance on these (GPT-2 124M, "
                   "trained on 10B tokens, is 2-19 points above it: the reference columns).")  # fmt: skip
    return out
