"""Helpers shared by the embedding tests: a tiny pretrained bpe run and small pairs files, built in seconds."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["apple", "river", "stone", "cloud", "green", "light", "house", "bread"]
FAST = ["train.max_steps=4", "train.eval_every=2", "train.eval_batches=1", "train.batch_size=8", "train.log_every=2",
        "eval.tasks=[]", "train.doctor=false"]  # fmt: skip
"""embed-train overrides of a 4-step child run without the STS-B dev score (tests that want it add it)."""


def pair_records(n: int) -> list[dict]:
    """Learnable pairs: two phrasings of one word, a hard negative about the next word."""
    out = []
    for i in range(n):
        w, other = WORDS[i % len(WORDS)], WORDS[(i + 1) % len(WORDS)]
        out.append({"anchor": f"the {w} number {i}", "positive": f"a {w} was seen {i}", "negative": f"no {other}"})
    return out


def write_pairs(path: Path, n: int = 80) -> Path:
    """A .jsonl (by suffix) or .tsv pairs file of `pair_records(n)`."""
    recs = pair_records(n)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    else:
        path.write_text("".join(f"{r['anchor']}\t{r['positive']}\t{r['negative']}\n" for r in recs), encoding="utf-8")
    return path
