"""Stream mode, set-up: the sources of a run (`data.source`, or `data.mix` with weights), the tokenizer, the fixed
val set, and `StreamData`, which makes a run's train and val loaders.

Tokenizer: `gpt2` or a tokenizer / dataset / run directory is used as it is. `char` and `bpe:N` are learnt from a
bounded sample, the first `SAMPLE_BYTES` of the sources in their natural order (split by the mix weights), and cached
under `$SLM_CACHE_DIR/stream-tokenizers/` keyed by sources, kind and sample size, so the next run starts at once.
For a large corpus train a bpe once (`slm prepare ... --max-bytes`, or a first stream run) and pass its directory as
tokenizer.kind. A char tokenizer learnt from a sample may meet characters it does not know later: such documents are
skipped and counted (`data/skipped_docs`).

Val set: documents held out by a keyed hash of their text (`stream_reader.is_held_out`, `data.val_fraction`,
`data.seed`): the same documents in every run, rank and resume, never trained on. The first `data.val_tokens` of them
(from each source its weight's share, in the source's natural order) are tokenized once and cached under
`$SLM_CACHE_DIR/stream-val/`, keyed by the sources' file plans, the tokenizer fingerprint and the split settings:
runs on the same source compare val losses on the same tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slmkit.base.atomic import atomic_dir, atomic_path
from slmkit.base.console import say
from slmkit.base.tokenizer import Tokenizer, TokenizerError, build_tokenizer, load_tokenizer, parse_kind
from slmkit.data.dataset import find_tokenizer
from slmkit.data.fim import FimSpec
from slmkit.data.sources import BUILTINS, DataError, cache_dir
from slmkit.data.stream import MixSource, StreamLoader
from slmkit.data.stream_reader import HF_TASK_DOCS, Reader, check_bad, plan_identity, plan_units, read_hf, unit_tasks

SAMPLE_BYTES = 32_000_000  # char / bpe tokenizers of a stream run are learnt from this much text


# ---------------------------------------------------------------------------------------------------------
# Sources and mixtures.


def source_name(source: str) -> str:
    """A short name for metrics (data/tokens/<name>): the built-in name, the hf dataset, the folder or file stem."""
    if source in BUILTINS:
        return source
    if source.startswith("hf:"):
        return source[3:].split(":")[0].rsplit("/", 1)[-1]
    parts = [p for p in Path(source).parts if not any(c in p for c in "*?[")]
    name = Path(parts[-1] if parts else "source").name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name) or "source"


def parse_mix(mix: list[str]) -> list[tuple[str, str, float]]:
    """(name, source, weight) of each `SOURCE=WEIGHT` entry of data.mix; DataError for a bad weight."""
    out, names = [], set()
    for entry in mix:
        source, sep, weight = entry.rpartition("=")
        try:
            w = float(weight)
        except ValueError:
            w = float("nan")
        if not sep or not source or not w > 0 or w == float("inf"):
            raise DataError(f"data.mix entry {entry!r} must be SOURCE=WEIGHT with a positive weight, "
                            "e.g. data.mix=[/data/wiki=0.7,python-stdlib=0.3]")  # fmt: skip
        name = base = source_name(source)
        n = 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.add(name)
        out.append((name, source, w))
    return out


def plan_sources(data_cfg) -> list[MixSource]:
    """The run's sources with their unit plans: data.mix, or data.source alone (weight 1)."""
    entries = parse_mix(data_cfg.mix) if data_cfg.mix else [(source_name(data_cfg.source), data_cfg.source, 1.0)]
    out = []
    for name, source, weight in entries:
        try:
            units = plan_units(source, data_cfg.text_field, data_cfg.include, data_cfg.exclude)
        except DataError as e:
            raise DataError(f"data.mix source {source!r}: {e}" if data_cfg.mix else str(e)) from None
        out.append(MixSource(name, source, weight, units, plan_identity(units)))
    return out


# ---------------------------------------------------------------------------------------------------------
# Tokenizer.


def _sample_texts(src: MixSource, text_field: str, max_bytes: int) -> Iterator[str]:
    """Texts of `src` in natural order until `max_bytes` of UTF-8 (all documents, train and val)."""
    seen = 0
    if src.units[0].kind == "hf":
        texts = (t for t in read_hf(src.source, text_field) if isinstance(t, str))
    else:
        reader = Reader("", text_field, 0.0, 0)
        texts = (t for u in src.units for task in unit_tasks(u, 0, 1, 0)
                 for _, t, _ in reader._documents(u, task[1], task[2], None) if isinstance(t, str))  # fmt: skip
    for text in texts:
        yield text
        seen += len(text.encode("utf-8", errors="replace"))
        if seen >= max_bytes:
            return


def stream_tokenizer(kind: str, sources: list[MixSource], data_cfg) -> tuple[Tokenizer, str]:
    """(tokenizer, ref): ref is what worker processes load (a tokenizer directory, or "gpt2")."""
    if Path(kind).is_dir():
        tok = find_tokenizer(kind)
        return tok, str(_cached_copy(tok, cache_dir() / "stream-tokenizers" / tok.fingerprint[:16]))
    base, _ = parse_kind(kind)
    if base == "gpt2":
        return build_tokenizer(kind), "gpt2"
    key = _digest([[s.source, s.weight, s.identity] for s in sources], kind, data_cfg.text_field, SAMPLE_BYTES)
    folder = cache_dir() / "stream-tokenizers" / f"{base}-{key}"
    if _loadable(folder):
        return load_tokenizer(folder), str(folder)
    total = sum(s.weight for s in sources)
    say(f"stream: learning a {kind} tokenizer from the first {SAMPLE_BYTES / 1e6:,.0f} MB of the data (cached in "
        f"{folder})")  # fmt: skip
    texts = (t for s in sources for t in _sample_texts(s, data_cfg.text_field, int(SAMPLE_BYTES * s.weight / total)))
    try:
        tok = build_tokenizer(kind, texts)
    except TokenizerError as e:
        raise DataError(f"could not learn a {kind} tokenizer from the data ({e}); does the source hold text?") from None
    return tok, str(_cached_copy(tok, folder))


def _loadable(folder: Path) -> bool:
    try:
        load_tokenizer(folder)
        return True
    except TokenizerError:
        return False


def _cached_copy(tok: Tokenizer, folder: Path) -> Path:
    if not _loadable(folder):
        with atomic_dir(folder) as tmp:
            tok.save(tmp)
    return folder


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# The val set.


def val_tokens(sources: list[MixSource], reader: Reader, tok: Tokenizer, n_tokens: int, min_tokens: int,
               seed: int, fraction: float) -> np.ndarray:  # fmt: skip
    """The held-out tokens of the run (cached; see the module docstring)."""
    cleaning = reader.cleaning()  # only what removes documents: a run without it keeps its old cache key
    key = _digest([[s.source, s.weight, s.identity] for s in sources], tok.fingerprint, n_tokens, seed, fraction,
                  reader.text_field, *([cleaning] if cleaning else []))  # fmt: skip
    path = cache_dir() / "stream-val" / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):  # a damaged cache file: build it again
            pass
    # the val set is cleaned as training is, but not checked where a check only counts (warn): no index held here
    check = reader.contamination if reader.contamination == "remove" else "off"
    bound = reader.unbound(val_fraction=fraction, val_seed=seed, contamination=check).bind(tok)
    total = sum(s.weight for s in sources)
    parts = [_held_out(s, bound, max(1, round(n_tokens * s.weight / total))) for s in sources]
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
    if len(tokens) < min_tokens:
        raise DataError(f"the held-out documents hold {len(tokens)} tokens, fewer than one val window of "
                        f"{min_tokens}; raise data.val_fraction (now {fraction}) or use a smaller block "
                        "size")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, tokens)
    return tokens


def _held_out(src: MixSource, reader: Reader, n_tokens: int) -> np.ndarray:
    """The first `n_tokens` tokens of `src`'s held-out documents, in natural order (fewer when the source ends)."""
    parts, have = [], 0
    if src.units[0].kind == "hf":
        tasks = _hf_chunks(src.units[0], reader.text_field)
    else:
        tasks = (t for u in src.units for t in unit_tasks(u, 0, 1, 0))
    records = bad = 0
    first_bad = ""
    for task in tasks:
        res = reader.run(task, held_out=True)
        records, bad, first_bad = records + res.records, bad + res.bad, first_bad or res.first_bad
        check_bad(bad, records, first_bad)
        for _, tokens, _ in res.docs:
            parts.append(tokens)
            have += len(tokens)
        if have >= n_tokens:
            break
    else:
        if records == bad:
            why = f" ({bad} bad records, first: {first_bad})" if bad else ""
            raise DataError(f"source {src.source!r} has no readable documents{why}; check the source and "
                            "data.text_field")  # fmt: skip
    return np.concatenate(parts)[:n_tokens] if parts else np.zeros(0, dtype=np.uint32)


def _hf_chunks(unit, text_field: str) -> Iterator[tuple]:
    """Tasks of HF_TASK_DOCS records of an hf: source, read here (lazily: only until the val set is full)."""
    texts: list = []
    for d, text in enumerate(read_hf(unit.path, text_field)):
        texts.append(text)
        if len(texts) == HF_TASK_DOCS:
            yield (unit, d + 1 - len(texts), d + 1, 1, 0, texts)
            texts = []
    if texts:
        yield (unit, d + 1 - len(texts), d + 1, 1, 0, texts)


class ValLoader:
    """Consecutive windows of the val tokens from the start (wrapping): every evaluation reads the same batches."""

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int):
        self.tokens, self.B, self.T = tokens, batch_size, block_size
        self.starts = np.arange(0, len(tokens) - block_size, block_size)
        self.batches = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = (self.batches * self.B + np.arange(self.B)) % len(self.starts)
        rows = self.tokens[self.starts[idx, None] + np.arange(self.T + 1)].astype(np.int64)  # (B, T+1)
        self.batches += 1
        t = torch.from_numpy(rows)
        return t[:, :-1], t[:, 1:]

    def state_dict(self) -> dict:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.batches = int(state["batches"])


# ---------------------------------------------------------------------------------------------------------
# What train() uses.


@dataclass
class StreamData:
    """A stream run's sources and tokenizer; `loaders()` makes the Trainer's loader factory."""

    data_cfg: object
    sources: list[MixSource]
    tokenizer: Tokenizer
    tokenizer_ref: str
    eval_index: str = ""
    """A saved eval 13-gram index the workers check documents against (set by the engine: eval_index_file)."""

    @classmethod
    def open(cls, data_cfg, tokenizer_kind: str, tokenizer: Tokenizer | None = None, ref: str = "") -> StreamData:
        """Plan the sources (footers only) and get the tokenizer: `tokenizer` + `ref` when resuming (the run's)."""
        sources = plan_sources(data_cfg)
        if tokenizer is None:
            tokenizer, ref = stream_tokenizer(tokenizer_kind, sources, data_cfg)
        return cls(data_cfg, sources, tokenizer, ref)

    def describe(self) -> str:
        units = ", ".join(f"{s.name} ({len(s.units)} units, weight {s.weight:g})" for s in self.sources)
        d, clean = self.data_cfg, []
        if d.filters:
            clean.append(f"filters {', '.join(d.filters)}")
        if self.eval_index and d.contamination != "off":
            clean.append("documents overlapping an eval task " + ("dropped" if d.contamination == "remove" else
                                                                  "counted"))  # fmt: skip
        return (f"data: streaming {units}; tokenizer {self.tokenizer.name}"
                + (f"; cleaning on the fly: {'; '.join(clean)}" if clean else ""))  # fmt: skip

    def reader(self) -> Reader:
        d = self.data_cfg
        dtype = "<u2" if self.tokenizer.vocab_size <= 1 << 16 else "<u4"
        return Reader(self.tokenizer_ref, d.text_field, d.val_fraction, d.seed, dtype, tuple(d.filters),
                      self.eval_index, d.contamination)  # fmt: skip

    def loaders(self, batch_size: int, block_size: int, rank: int, world_size: int, tokenizer: Tokenizer,
                allow_changed: bool = False):  # fmt: skip
        """loaders(split, seed) for the Trainer: one StreamLoader for "train", the fixed val windows for "val"
        (built once, on first use). `tokenizer` is the run's (with FIM tokens when data.fim_rate > 0)."""
        d, val = self.data_cfg, []
        fim = FimSpec.from_config(tokenizer, d)
        identity = {"mix": [[s.name, s.weight] for s in self.sources], "tokenizer": tokenizer.fingerprint,
                    "shuffle_buffer": d.shuffle_buffer}  # fmt: skip

        def make(split: str, seed: int):
            if not val:  # built (or read from the cache) before the first training batch: bad data fails at start
                val.append(val_tokens(self.sources, self.reader(), self.tokenizer, d.val_tokens, block_size + 1,
                                      d.seed, d.val_fraction))  # fmt: skip
            if split == "val":
                return ValLoader(val[0], batch_size, block_size)
            loader = StreamLoader(self.sources, self.reader(), self.tokenizer, batch_size, block_size, seed=seed,
                                  shuffle_buffer=d.shuffle_buffer, workers=d.stream_workers, rank=rank,
                                  world_size=world_size, fim=fim, identity=identity,
                                  allow_changed=allow_changed)  # fmt: skip
            loader.prime()
            return loader

        return make
