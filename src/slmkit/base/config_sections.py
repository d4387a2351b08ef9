"""The shared checks of the config tree (`ConfigError`, field ranges and choices, the data section's stream-mode
rules) and its leaf sections: eval, log, lora, embed and distill, each a dataclass that owns its fields and their
checks. `slmkit.base.config` assembles them with the model, data, optim and train sections into `RunConfig`;
import them from there.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from slmkit.base.checks import RANGES, number_problem
from slmkit.base.errors import SlmError

POOLINGS = ("mean", "weighted", "last", "eos")
"""How token states become one sentence vector (`embed.pooling`, `slm embed --pooling`); see EmbedConfig.pooling."""


class ConfigError(SlmError, ValueError):
    """A user mistake in a config file or override; the message says what to change."""


def _check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name} = {value!r} is not one of {', '.join(map(repr, choices))}")


def check_stream_fields(data: Any) -> None:
    """The data section's rules for stream mode (data.stream, data.mix): what it reads and what it cannot apply."""
    if data.mix and not data.stream:
        raise ConfigError("data.mix needs data.stream=true (a prepared dataset reads one source)")
    if data.stream and data.format != "text":
        raise ConfigError(f"data.stream reads pretraining text; data.format={data.format} needs prepared data "
                          "(drop data.stream)")  # fmt: skip
    unused = [k for k, v in (("dir", data.dir), ("align_to_docs", data.align_to_docs)) if v]
    if data.stream and unused:
        raise ConfigError(f"data.{unused[0]} applies to prepared data, not to data.stream=true; drop it (or "
                          "prepare the data)")  # fmt: skip
    if data.stream and (data.dedup or "boilerplate" in data.filters):
        what = "data.dedup keeps the first copy of a document" if data.dedup else \
            "the boilerplate filter learns repeated lines from the documents before"  # fmt: skip
        raise ConfigError(f"{what}, which needs the corpus in order, not a shuffled stream: clean it once with "
                          "`slm data clean SOURCE --out DIR` and stream DIR/corpus.jsonl (data.filters' other "
                          "filters and data.contamination do work on the fly)")  # fmt: skip
    for entry in data.mix:
        weight = entry.rpartition("=")[2]
        try:
            ok = "=" in entry and 0 < float(weight) < float("inf")
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"data.mix entry {entry!r} must be SOURCE=WEIGHT with a positive weight, e.g. "
                              "data.mix=[/data/wiki=0.7,python-stdlib=0.3]")  # fmt: skip


def _check_ranges(section: str, obj: Any) -> None:
    """Every int/float field of a section within its range of `checks.RANGES` (NaN and infinity refused)."""
    for f in _fields(type(obj)):
        rng = RANGES.get(f"{section}.{f.name}")
        if rng is not None and f.type in (int, float):
            problem = number_problem(f"{section}.{f.name}", getattr(obj, f.name), rng, f.type)
            if problem:
                raise ConfigError(problem)


class _Field(typing.NamedTuple):
    name: str
    type: Any
    type_cls: type | None  # the dataclass type for a section, else None


@functools.cache
def _fields(cls: type) -> list[_Field]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        out.append(_Field(f.name, t, t if dataclasses.is_dataclass(t) else None))
    return out


@dataclass
class EvalConfig:
    """Evaluation during and after training."""

    tasks: list[str] = field(default_factory=list)
    """Benchmark tasks to run every eval.every steps (e.g. hellaswag, arc_easy)."""
    every: int = 0
    """Run eval.tasks every this many steps; 0 only at the end (when tasks are given)."""
    limit: int = 0
    """Items per task; 0 means all. The first N, as lm-eval's --limit takes them; for the STS tasks N spread over the
    file (their files are ordered by genre)."""

    def __post_init__(self) -> None:
        _check_ranges("eval", self)


@dataclass
class LogConfig:
    """Where metrics go. metrics.jsonl and the console are always written."""

    backends: list[str] = field(default_factory=list)
    """Extra metric backends: tensorboard, wandb, trackio."""
    project: str = "slmkit"
    """Project name for wandb and trackio."""

    def __post_init__(self) -> None:
        for b in self.backends:
            _check_choice("log", "backends", b, ("tensorboard", "wandb", "trackio"))


@dataclass
class LoraConfig:
    """Low-rank adapters (LoRA): train small matrices A, B beside frozen projections, W x + (alpha/rank) B A x."""

    rank: int = 0
    """Rank of the adapters; 0 turns LoRA off (every parameter trains)."""
    alpha: float = 16.0
    """Scale numerator: the adapter output is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter's input."""
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "mlp"])
    """Projections that get adapters: q, k, v, o (attention), up, gate, down, or mlp (all three)."""

    def __post_init__(self) -> None:
        _check_ranges("lora", self)
        if self.rank and not self.targets:
            raise ConfigError("lora.targets is empty; name projections such as q,v or q,k,v,o,mlp")


@dataclass
class EmbedConfig:
    """Sentence embeddings: how a text becomes one vector (slm embed, the embedding eval tasks) and the contrastive
    objective of an embedding run (data.format = pairs, `slm embed-train`)."""

    pooling: str = "mean"
    """How token states become one vector: mean (over the text's tokens) | weighted (a mean weighting token i by i, so
    later tokens, which have read more of the text, count more: SGPT's position-weighted mean) | last (the last
    token's state) | eos (an end-of-text token is appended and its state taken)."""
    instruction: str = ""
    """Prefix put before queries: the anchors of training pairs and the queries of retrieval tasks (e.g. "query: ")."""
    pairs: str = "auto"
    """How data.source holds training pairs: auto (from the file) | pairs (.jsonl anchor/positive[/negatives] or .tsv
    anchor<TAB>positive[<TAB>negative...]) | sts-b (STS Benchmark: pairs scored >= embed.min_score) | sick (SICK
    train: entailment pairs, contradictions as hard negatives) | simcse (unlabeled text, each sentence its own
    positive under dropout)."""
    temperature: float = 0.05
    """InfoNCE temperature: similarities are cosine / temperature (the start value when learn_temperature)."""
    learn_temperature: bool = False
    """Learn the temperature (as a log-scale parameter, CLIP-style) instead of keeping it fixed."""
    symmetric: bool = True
    """InfoNCE in both directions: anchors against positives (+ hard negatives) and positives against anchors."""
    negatives: int = 1
    """Hard negatives used per pair (when the data has them); 0 uses in-batch negatives only."""
    min_score: float = 4.0
    """embed.pairs = sts-b: the gold similarity (0-5) at or above which a pair is a positive."""
    cosent_weight: float = 0.0
    """Weight of the CoSENT loss (Su 2022; sentence-transformers' CoSENTLoss) on pairs with a gold score, added to
    InfoNCE: within a batch, every scored pair should have a higher cosine than each pair scored lower. > 0 also
    makes the sts-b and sick readers give every pair with its score (besides their positives), and lets a .jsonl
    pair carry "score"; 0 = InfoNCE only."""
    max_len: int = 0
    """Tokens per training text (longer ones are cut); 0 means model.block_size."""
    max_pairs: int = 0
    """Read at most this many pairs (simcse: sentences) from data.source; 0 reads all."""

    def __post_init__(self) -> None:
        _check_ranges("embed", self)
        _check_choice("embed", "pooling", self.pooling, POOLINGS)
        _check_choice("embed", "pairs", self.pairs, ("auto", "pairs", "sts-b", "sick", "simcse"))


@dataclass
class DistillConfig:
    """Knowledge distillation: learn from a teacher run's next-token distributions as well as from the text."""

    teacher: str = ""
    """Run directory of the teacher (same tokenizer as the student); empty: no distillation."""
    checkpoint: str = "best"
    """The teacher's checkpoint: best | latest | STEP."""
    temperature: float = 2.0
    """Both models' logits are divided by it before the KL term (softer distributions show more of the teacher)."""
    alpha: float = 0.5
    """Weight of the cross-entropy on the text; 1 - alpha goes to T^2 * KL(teacher || student)."""
    topk: int = 0
    """0: the teacher runs on every batch; K: its K largest logits over the training split are computed once, kept
    beside the teacher for later students, and the KL runs over those K tokens (a far cheaper student step)."""

    def __post_init__(self) -> None:
        _check_ranges("distill", self)
