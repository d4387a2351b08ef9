"""Text pairs for contrastive embedding training, and the sentence-similarity files evaluation reads.

Pair readers (each returns `Pair`s: anchor, positive, hard negatives, and a gold score or None):

    pairs   .jsonl  {"anchor": A, "positive": P, "negative": N | "negatives": [N, ...], "score": S}  (query/pos/neg
                    too; "score" optional)
            .tsv    A <TAB> P [<TAB> N ...]
    sts-b   the STS Benchmark release (genre, file, year, id, score, s1, s2): pairs scored >= min_score
    sick    SICK.txt, SemEval_set TRAIN: entailment pairs; a contradiction of the same sentence A is a hard negative
    simcse  unlabeled text (.txt lines, or the sentences of .jsonl/.parquet texts): each sentence is its own
            positive, the two copies told apart only by dropout (SimCSE)

A pair without a score is a positive (InfoNCE); a pair with one is a graded example for the CoSENT loss
(embed.cosent_weight > 0), whose score only ranks it against the other scored pairs of its batch. With
`scored=True`, sts-b and sick also give every one of their pairs with its gold score (STS-B similarity 0-5, SICK
relatedness 1-5).

A malformed line is one DataError naming the file and line. `PairData` splits the pairs (data.val_fraction,
data.seed) and tokenizes them; its `loaders` is the factory `Trainer` takes, making `PairLoader`s whose batches
are (ids (R, T), lengths (R,), n_pairs (1,), scores (B,)): B anchors, their B positives, then the hard negatives,
right-padded; scores NaN for unscored pairs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from slmkit.base.tokenizer import Tokenizer
from slmkit.data.sources import DataError

PAIR_KINDS = ("pairs", "sts-b", "sick", "simcse")
MIN_SENTENCE_CHARS = 20  # shorter pieces of split prose are mostly headings and list items, not sentences
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


class Pair(NamedTuple):
    anchor: str
    positive: str
    negatives: tuple[str, ...] = ()
    score: float | None = None
    """A gold similarity: the pair is a graded example (CoSENT), not a positive; None: a positive."""


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph: split after . ! ? followed by space and a capital, digit or opening quote."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; pass a pairs file (.jsonl, .tsv, STS-B, SICK)")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


# ---------------------------------------------------------------------------------------------------------
# Scored pairs (evaluation files; sts-b and sick training pairs are read from them too)


def read_sts_benchmark(path: str | Path) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score 0-5) of an STS Benchmark file (tab-separated, no quoting: see SOURCES.md)."""
    path, out = Path(path), []
    for n, line in enumerate(_lines(path), 1):
        f = line.split("\t")
        if not line.strip():
            continue
        try:
            out.append((f[5].strip(), f[6].strip(), float(f[4])))
        except (IndexError, ValueError):
            raise DataError(f"{path}:{n}: not an STS Benchmark line (genre, file, year, id, score, sentence1, "
                            "sentence2, tab-separated)") from None  # fmt: skip
    return out


def read_sick(path: str | Path, split: str) -> list[tuple[str, str, str, float]]:
    """(sentence_A, sentence_B, entailment label, relatedness 1-5) of SICK.txt rows whose SemEval_set is `split`
    (TRAIN, TRIAL or TEST)."""
    path = Path(path)
    lines = _lines(path)
    head = lines[0].split("\t") if lines else []
    need = ("sentence_A", "sentence_B", "entailment_label", "relatedness_score", "SemEval_set")
    if any(k not in head for k in need):
        raise DataError(f"{path}:1: not a SICK header (needs {', '.join(need)})")
    col = {k: head.index(k) for k in need}
    out = []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        f = line.split("\t")
        try:
            row = [f[col[k]] for k in need]
            if row[4].strip() == split:
                out.append((row[0].strip(), row[1].strip(), row[2].strip(), float(row[3])))
        except (IndexError, ValueError):
            raise DataError(f"{path}:{n}: not a SICK row ({len(f)} fields)") from None
    return out


def read_senteval_sts(folder: str | Path) -> list[tuple[str, str, float]]:
    """Every scored pair of a SentEval STS year folder (STS.input.<set>.txt + STS.gs.<set>.txt; an empty gold line
    is an unscored pair), sets in name order: MTEB's STS12-16 score all of a year's pairs together."""
    folder, out = Path(folder), []
    inputs = sorted(folder.glob("STS.input.*.txt"))
    if not inputs:
        raise DataError(f"{folder} holds no STS.input.<set>.txt files")
    for inp in inputs:
        gold = inp.with_name(inp.name.replace("STS.input.", "STS.gs."))
        pairs, scores = _lines(inp), _lines(gold)
        if len(scores) < len(pairs):
            raise DataError(f"{gold} has {len(scores)} lines for {len(pairs)} pairs in {inp}")
        for n, (line, score) in enumerate(zip(pairs, scores), 1):
            if not score.strip():
                continue
            f = line.split("\t")
            if len(f) < 2:
                raise DataError(f"{inp}:{n}: expected two tab-separated sentences")
            out.append((f[0].strip(), f[1].strip(), float(score)))
    return out


# ---------------------------------------------------------------------------------------------------------
# Training pairs


def _json_pair(path: Path, n: int, line: str) -> Pair:
    try:
        r = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
    if not isinstance(r, dict):
        raise DataError(f"{path}:{n}: expected a JSON object with anchor and positive")
    anchor, positive = r.get("anchor", r.get("query")), r.get("positive", r.get("pos"))
    negs = r.get("negatives", r.get("neg", [r["negative"]] if "negative" in r else []))
    negs = [negs] if isinstance(negs, str) else negs
    texts = [anchor, positive, *(negs if isinstance(negs, list) else [None])]
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise DataError(f"{path}:{n}: needs non-empty string fields anchor and positive (and negative(s), if any)")
    score = r.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or score != score):
        raise DataError(f"{path}:{n}: score must be a number (the pair's gold similarity), got {score!r}")
    return Pair(anchor.strip(), positive.strip(), tuple(t.strip() for t in negs), score)


def read_pair_file(path: str | Path) -> list[Pair]:
    """Pairs of a .jsonl or .tsv file (see the module doc); blank lines are skipped."""
    path, out = Path(path), []
    jsonl = path.suffix == ".jsonl"
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        if jsonl:
            out.append(_json_pair(path, n, line))
            continue
        f = [t.strip() for t in line.split("\t")]
        if len(f) < 2 or not all(f):
            raise DataError(f"{path}:{n}: expected anchor<TAB>positive[<TAB>negative...], all non-empty")
        out.append(Pair(f[0], f[1], tuple(f[2:])))
    return out


def sick_pairs(path: str | Path, scored: bool = False) -> list[Pair]:
    """SICK TRAIN entailment pairs (A, B), each with B' of every contradiction (A, B') as hard negatives; `scored`:
    then every TRAIN pair with its relatedness (graded examples for CoSENT)."""
    rows = read_sick(path, "TRAIN")
    contra: dict[str, list[str]] = {}
    for a, b, label, _ in rows:
        if label == "CONTRADICTION":
            contra.setdefault(a, []).append(b)
    pairs = [Pair(a, b, tuple(contra.get(a, ()))) for a, b, label, _ in rows if label == "ENTAILMENT"]
    return pairs + ([Pair(a, b, (), s) for a, b, _, s in rows] if scored else [])


def sts_pairs(path: str | Path, min_score: float, scored: bool = False) -> list[Pair]:
    """STS Benchmark pairs scored >= min_score as positives; `scored`: then every pair with its gold score."""
    rows = read_sts_benchmark(path)
    pairs = [Pair(a, b) for a, b, s in rows if s >= min_score]
    return pairs + ([Pair(a, b, (), s) for a, b, s in rows] if scored else [])


def simcse_sentences(path: str | Path, text_field: str = "text", limit: int = 0) -> list[Pair]:
    """Unlabeled sentences as (s, s) pairs: lines of a text file, or sentences of .jsonl/.parquet texts."""
    path = Path(path)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # local: optional, only for parquet sources
        except ImportError:
            raise DataError("reading .parquet needs pyarrow: pip install pyarrow") from None
        texts = (t for t in pq.read_table(path, columns=[text_field]).column(text_field).to_pylist() if t)
    elif path.suffix == ".jsonl":
        texts = (json.loads(line).get(text_field, "") for line in _lines(path) if line.strip())
    else:
        texts = iter(_lines(path))
    structured, out = path.suffix in (".parquet", ".jsonl"), []
    for text in texts:
        for s in split_sentences(text) if structured else [text.strip()]:
            if (len(s) >= MIN_SENTENCE_CHARS) if structured else bool(s):
                out.append(Pair(s, s))
                if limit and len(out) >= limit:
                    return out
    return out


def detect_kind(path: str | Path) -> str:
    """The reader for `embed.pairs = auto`: SICK by its header, STS-B by its 7+ field lines, else pairs (.jsonl,
    .tsv); anything else is refused (simcse is never guessed)."""
    path = Path(path)
    first = next((line for line in _lines(path) if line.strip()), "")
    if first.startswith("pair_ID\tsentence_A"):
        return "sick"
    f = first.split("\t")
    if len(f) >= 7 and re.fullmatch(r"\d+(\.\d+)?", f[4].strip()):
        return "sts-b"
    if path.suffix in (".jsonl", ".tsv"):
        return "pairs"
    raise DataError(f"cannot tell what pairs {path} holds; name it .jsonl or .tsv, or set embed.pairs to sts-b, "
                    "sick or simcse")  # fmt: skip


def read_pairs(path: str | Path, kind: str = "auto", *, min_score: float = 4.0, max_pairs: int = 0,
               text_field: str = "text", scored: bool = False) -> list[Pair]:  # fmt: skip
    """Training pairs of `path` read as `kind` (auto, pairs, sts-b, sick, simcse), the first `max_pairs` if > 0;
    `scored`: sts-b and sick add every pair with its gold score after their positives."""
    kind = detect_kind(path) if kind == "auto" else kind
    if kind == "simcse":
        pairs = simcse_sentences(path, text_field, max_pairs)
    elif kind == "sts-b":
        pairs = sts_pairs(path, min_score, scored)
    elif kind == "sick":
        pairs = sick_pairs(path, scored)
    elif kind == "pairs":
        pairs = read_pair_file(path)
    else:
        raise DataError(f"unknown pairs kind {kind!r}; use auto or one of: {', '.join(PAIR_KINDS)}")
    if not pairs:
        raise DataError(f"{path} gave no training pairs as {kind}; check the file (and embed.min_score for sts-b)")
    return pairs[:max_pairs] if max_pairs else pairs


# ---------------------------------------------------------------------------------------------------------
# Tokenized pairs, batches


def pad_batch(seqs: Sequence[Sequence[int]], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T_max) int64 and lengths (B,) int64. The pad id (0) is never read: attention is causal
    and pooling reads only each row's first `length` positions."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = torch.zeros((len(seqs), int(lengths.max())), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return ids.to(device), lengths.to(device)


Example = tuple[list[int], list[int], list[list[int]], float]  # anchor, positive, negatives' ids; score (NaN: none)


class PairLoader:
    """Batches of `batch_size` pairs, the same interface as TokenLoader (next_batch, state_dict). Each epoch orders
    the pairs by (seed, epoch) (file order when shuffle is off); rank r of W takes pairs r, r+W, ...; its position
    is (epoch, index), so a restored state continues exactly."""

    def __init__(self, examples: list[Example], batch_size: int, *, negatives: int = 1, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1):  # fmt: skip
        if not examples:
            raise DataError("no training pairs to batch")
        self.examples, self.batch_size, self.negatives = examples, batch_size, negatives
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.epoch, self.index, self.batches = 0, 0, 0
        self._order = self._layout(0)

    def _layout(self, epoch: int) -> np.ndarray:
        n = len(self.examples)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return order[self.rank :: self.world_size]

    @property
    def batches_per_pass(self) -> int:
        """Batches that read every pair once (the same on every rank)."""
        return math.ceil(math.ceil(len(self.examples) / self.world_size) / self.batch_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids (R, T), lengths (R,), n_pairs (1,), scores (B,) float32, NaN where a pair has none): rows are B
        anchors, B positives, then hard negatives."""
        picked: list[int] = []
        while len(picked) < self.batch_size:
            take = min(self.batch_size - len(picked), len(self._order) - self.index)
            picked.extend(int(i) for i in self._order[self.index : self.index + take])
            self.index += take
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._layout(self.epoch)
        self.batches += 1
        batch = [self.examples[i] for i in picked]
        rows = [a for a, _, _, _ in batch] + [p for _, p, _, _ in batch]
        rows += [n for _, _, negs, _ in batch for n in negs[: self.negatives]]
        ids, lengths = pad_batch(rows)
        scores = torch.tensor([score for _, _, _, score in batch], dtype=torch.float32)
        return ids, lengths, torch.tensor([len(batch)]), scores

    def _identity(self) -> dict:
        return {"kind": "pairs", "pairs": len(self.examples), "batch_size": self.batch_size, "seed": self.seed,
                "negatives": self.negatives, "rank": self.rank, "world_size": self.world_size}  # fmt: skip

    def state_dict(self) -> dict:
        return {**self._identity(), "epoch": self.epoch, "index": self.index, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        diff = [f"{k} {state.get(k)!r} -> {v!r}" for k, v in self._identity().items() if state.get(k) != v]
        if diff:
            raise DataError(f"loader state does not fit this data ({'; '.join(diff)}); resume with the same file "
                            "and settings")  # fmt: skip
        self.epoch, self.index, self.batches = int(state["epoch"]), int(state["index"]), int(state["batches"])
        self._order = self._layout(self.epoch)


@dataclass
class PairData:
    """The train and held-out pairs of one source, tokenized (anchors with the instruction prefix)."""

    train: list[Example]
    val: list[Example]
    source: str
    kind: str
    truncated: int
    negatives: int

    def loaders(self, batch_size: int, block_size: int = 0, packing: bool = True, rank: int = 0,
                world_size: int = 1):  # fmt: skip
        """`make(split, seed) -> PairLoader`, the factory the Trainer takes (block_size and packing: the chat
        loaders' signature; pairs are cut when read and never packed). Val is read in file order."""
        if len(self.train) < batch_size * world_size:
            raise DataError(f"{self.source} has {len(self.train)} training pairs, fewer than one batch of "
                            f"train.batch_size={batch_size}; lower train.batch_size or add pairs")  # fmt: skip

        def make(split: str, seed: int) -> PairLoader:
            if split == "train":
                return PairLoader(self.train, batch_size, negatives=self.negatives, seed=seed, rank=rank,
                                  world_size=world_size)  # fmt: skip
            return PairLoader(self.val, min(batch_size, len(self.val)), negatives=self.negatives, seed=seed,
                              shuffle=False)  # fmt: skip

        return make

    def describe(self, block_size: int = 0) -> str:
        negs = sum(bool(n) for _, _, n, _ in self.train)
        scored = sum(not np.isnan(s) for _, _, _, s in self.train)
        return (f"pairs {self.source} ({self.kind}): {len(self.train)} train / {len(self.val)} held-out pairs, "
                f"{negs} with hard negatives, {scored} scored (CoSENT), {self.truncated} texts cut to the length "
                "limit")  # fmt: skip


def load_pair_data(data_cfg, embed_cfg, tokenizer: Tokenizer, block_size: int) -> PairData:
    """Read, split and tokenize the pairs of a run's config (data.source, val_fraction, seed; embed.pairs,
    min_score, max_pairs, max_len, instruction, negatives, cosent_weight, pooling: eos appends end-of-text).
    Scored pairs without embed.cosent_weight, or embed.cosent_weight without scored pairs, are refused."""
    kind = detect_kind(data_cfg.source) if embed_cfg.pairs == "auto" else embed_cfg.pairs
    cosent = embed_cfg.cosent_weight > 0
    pairs = read_pairs(data_cfg.source, kind, min_score=embed_cfg.min_score, max_pairs=embed_cfg.max_pairs,
                       text_field=data_cfg.text_field, scored=cosent)  # fmt: skip
    n_scored = sum(p.score is not None for p in pairs)
    if n_scored and not cosent:
        raise DataError(f"{data_cfg.source} has {n_scored} pairs with a score, which only the CoSENT loss reads; "
                        "set embed.cosent_weight (e.g. 1) to train on them, or drop their score field")  # fmt: skip
    if cosent and n_scored < 2:
        raise DataError(f"embed.cosent_weight needs pairs with gold scores and {data_cfg.source} has {n_scored}; "
                        'use an STS-B or SICK file, or .jsonl pairs with a "score" field')  # fmt: skip
    max_len = min(embed_cfg.max_len or block_size, block_size)
    eos = embed_cfg.pooling == "eos"
    cut = 0

    def ids(text: str) -> list[int]:
        nonlocal cut
        t = tokenizer.encode(text)
        room = max_len - 1 if eos else max_len
        cut += len(t) > room
        return t[:room] + ([tokenizer.eot_id] if eos else [])

    examples = [(ids(embed_cfg.instruction + p.anchor), ids(p.positive), [ids(n) for n in p.negatives],
                 float("nan") if p.score is None else float(p.score)) for p in pairs]  # fmt: skip
    order = np.random.default_rng(data_cfg.seed).permutation(len(examples))
    n_val = max(1, int(round(len(examples) * data_cfg.val_fraction))) if data_cfg.val_fraction > 0 else 0
    if n_val >= len(examples):
        raise DataError(f"{data_cfg.source} has {len(examples)} pairs, too few to hold out "
                        f"data.val_fraction={data_cfg.val_fraction}; lower it or add pairs")  # fmt: skip
    val = [examples[i] for i in sorted(order[:n_val])]
    train = [examples[i] for i in sorted(order[n_val:])]
    return PairData(train, val or train, str(data_cfg.source), kind, cut, embed_cfg.negatives)
