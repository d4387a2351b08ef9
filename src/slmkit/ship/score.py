"""Score text with a model: per unit (document, line or window) the tokens, loss, perplexity, bits per byte and the
most surprising tokens, with their character offsets into the unit's text.

A unit's loss is `engine.evaluate.loss.evaluate_text_loss` on the same text: its tokens after the first are each
predicted once by the sliding window (`token_nlls`, with the window's stride), and bits per byte divide the summed
NLL by the UTF-8 bytes of the predicted tokens. Units are read lazily from a text file, a folder of text files or a
JSONL file, scored in batches (windows of several units share a forward pass) and yielded in input order.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmkit.base.checks import text_file_problem
from slmkit.base.console import progress
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer, TokenizerError
from slmkit.data.sources import jsonl_records
from slmkit.engine.evaluate.loss import check_stride, loss_metrics, text_bytes, token_nlls
from slmkit.model.gpt import GPT

UNITS = ("doc", "line", "window")
DEFAULT_TOP_SPANS = 3
BATCH_TOKENS = 4096  # tokens per forward pass: block 128 gives 32 windows a batch (benchmarks/bench_score.py)
GROUP_TOKENS = 32_768  # tokens of units gathered before they are scored (bounds memory and output latency)
Reference = Callable[[np.ndarray], float]
"""A reference model's loss (nats per token) of a unit's predicted token ids, e.g. `data.unigram.Unigram.loss`."""


class ScoreError(SlmError):
    """Bad input to `slm score` / `slm anomaly`: a missing or unreadable source, a bad unit or text field."""


@dataclass
class Unit:
    """One piece of text to score: `id` names it in the output (file, file:line, jsonl line, ...)."""

    id: str
    text: str
    ids: np.ndarray | None = None  # token ids when the splitting already made them (window units)
    error: str = ""  # why the unit could not be tokenized (it is then reported with loss None and this error)


# ---------------------------------------------------------------------------------------------------------
# reading units


def _jsonl_texts(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        for n, rec, text in jsonl_records(path, f, text_field):
            yield str(rec.get("id", f"{path.name}:{n}")), text


def _files(path: Path) -> list[Path]:
    """The non-empty, non-hidden files under a folder (an empty file, such as a package's __init__.py, is no
    document); ScoreError when there are none."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(x.startswith(".") for x in
                                                                         p.relative_to(path).parts))  # fmt: skip
    if not files:
        raise ScoreError(f"{path} is a directory with no files in it; pass a text file, a folder of them or .jsonl")
    files = [f for f in files if f.stat().st_size > 0]
    if not files:
        raise ScoreError(f"every file in {path} is empty: nothing to score")
    return files


def check_input(path: str | Path) -> None:
    """Refuse, before a model is loaded, an input that is missing, empty, binary or not UTF-8."""
    path = Path(path)
    hint = "pass --input FILE, DIR (of text files) or FILE.jsonl"
    for f in _files(path) if path.is_dir() else [path]:
        problem = text_file_problem(f, "text file", hint)
        if problem:
            raise ScoreError(problem)


def read_documents(path: str | Path, text_field: str = "text") -> Iterator[tuple[str, str]]:
    """(id, text) of each document: a text file is one, a folder gives one per file (id: its relative path), a
    .jsonl file one per line (id: its "id" field, else file:line)."""
    path = Path(path)
    check_input(path)
    if path.is_dir():
        for f in _files(path):
            yield str(f.relative_to(path)), f.read_text(encoding="utf-8")
    elif path.suffix == ".jsonl":
        yield from _jsonl_texts(path, text_field)
    else:
        yield path.name, path.read_text(encoding="utf-8")


def split_units(docs: Iterable[tuple[str, str]], unit: str, tokenizer: Tokenizer | None = None,
                window: int = 0) -> Iterator[Unit]:  # fmt: skip
    """Units of `docs`: each document (doc), each non-blank line (line: id DOC:LINE), or consecutive pieces of
    `window` tokens (window: id DOC@CHAR_OFFSET; needs the tokenizer)."""
    if unit not in UNITS:
        raise ScoreError(f"unknown unit {unit!r}; pick one of {', '.join(UNITS)}")
    for doc_id, text in docs:
        if unit == "doc":
            yield Unit(doc_id, text)
        elif unit == "line":
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    yield Unit(f"{doc_id}:{n}", line)
        else:
            if tokenizer is None or window < 2:
                raise ScoreError("window units need the tokenizer and a window of at least 2 tokens")
            ids = np.asarray(_encode(tokenizer, text, doc_id), dtype=np.int64)
            starts = token_char_offsets(tokenizer, ids, text)
            for s in range(0, len(ids), window):
                e = min(s + window, len(ids))
                c0, c1 = starts[s], (starts[e] if e < len(ids) else len(text))
                yield Unit(f"{doc_id}@{c0}", text[c0:c1], ids[s:e])


# ---------------------------------------------------------------------------------------------------------
# scoring


def _encode(tokenizer: Tokenizer, text: str, what: str) -> list[int]:
    try:
        return tokenizer.encode(text)
    except TokenizerError as e:
        raise ScoreError(f"{what}: {e}") from None


def _token_bytes(tokenizer: Tokenizer, t: int) -> bytes:
    enc = getattr(tokenizer, "enc", None)  # tiktoken: the exact bytes, even for part of a multi-byte character
    if enc is not None and hasattr(enc, "decode_single_token_bytes"):
        return enc.decode_single_token_bytes(int(t))
    return tokenizer.decode([int(t)]).encode("utf-8")


def token_char_offsets(tokenizer: Tokenizer, ids: np.ndarray, text: str) -> list[int]:
    """The character offset into `text` where each token starts (a token starting inside a multi-byte character
    gets that character's offset)."""
    char_byte_starts = np.cumsum([0] + [len(c.encode("utf-8")) for c in text])  # byte offset of each char (+ end)
    offsets, b = [], 0
    for t in ids:
        offsets.append(min(bisect.bisect_right(char_byte_starts, b) - 1, len(text)))
        b += len(_token_bytes(tokenizer, t))
    return offsets


def _result(tokenizer: Tokenizer, unit: Unit, ids: np.ndarray, nll: np.ndarray, top_spans: int, stride: int,
            reference: Reference | None = None) -> dict:  # fmt: skip
    n = len(ids) - 1
    out = {"id": unit.id, "chars": len(unit.text)}
    if unit.error:
        return {**out, "tokens": 0, "loss": None, "ppl": None, "bpb": None, "bytes": 0, "stride": stride,
                "top_spans": [], "error": unit.error}  # fmt: skip
    if n < 1:
        return {**out, "tokens": 0, "loss": None, "ppl": None, "bpb": None, "bytes": 0, "stride": stride,
                "top_spans": [], "note": "fewer than 2 tokens: nothing is predicted"}  # fmt: skip
    metrics = loss_metrics(float(nll.sum()), n, text_bytes(tokenizer, ids[1:]))
    spans = []
    if top_spans:
        starts = token_char_offsets(tokenizer, ids, unit.text) + [len(unit.text)]
        for k in np.argsort(-nll, kind="stable")[:top_spans]:
            p = int(k) + 1  # the token ids[p] is the target of nll[k]
            c0 = starts[p]
            c1 = max(starts[p + 1], min(c0 + 1, len(unit.text)))  # a part of a character: that character
            spans.append({"start": c0, "end": c1, "text": unit.text[c0:c1], "token_index": p,
                          "surprisal_bits": float(nll[k]) / math.log(2)})  # fmt: skip
    if reference is not None:
        metrics["ref_loss"] = reference(ids[1:])
    return {**out, **metrics, "stride": stride, "top_spans": spans}


def batch_windows(block_size: int) -> int:
    """Windows of `block_size` tokens per forward pass: about BATCH_TOKENS tokens (fewer, larger calls are faster on
    a CPU; the logits of a batch take BATCH_TOKENS x vocabulary floats)."""
    return max(1, BATCH_TOKENS // block_size)


def score_units(model: GPT, tokenizer: Tokenizer, units: Iterable[Unit | str], *, stride: int = 0,
                top_spans: int = DEFAULT_TOP_SPANS, batch_size: int | None = None, show_progress: bool = False,
                total: int | None = None, reference: Reference | None = None) -> Iterator[dict]:  # fmt: skip
    """For each unit, in order: id, chars, tokens (predicted), loss (nats/token), ppl, bpb, bytes, stride and
    top_spans (the `top_spans` most surprising tokens: start/end character offsets into the unit's text, the text,
    token_index and surprisal in bits). Units are gathered up to GROUP_TOKENS tokens and scored together, so
    results stream; `batch_size` windows go through the model at once (default: BATCH_TOKENS // block_size, at
    least 1). A unit of fewer than 2 tokens has loss None (nothing is predicted); one the tokenizer cannot
    encode (a character a char model never saw) has loss None and `error` saying why. With `reference`, each
    scored unit also has ref_loss: the reference's loss of the same predicted tokens."""
    check_stride(stride)
    if isinstance(top_spans, bool) or not isinstance(top_spans, int) or top_spans < 0:
        raise ScoreError(f"top_spans must be a whole number >= 0, got {top_spans!r}")
    block = model.config.block_size
    stride_used = min(stride or block, block)
    batch_size = batch_size or batch_windows(block)
    bar = progress(total, desc="score", unit="unit", enabled=show_progress)
    group: list[tuple[Unit, np.ndarray]] = []
    have = 0

    def flush() -> Iterator[dict]:
        nlls = token_nlls(model, [ids for _, ids in group], stride, batch_size)
        for (unit, ids), nll in zip(group, nlls, strict=True):
            yield _result(tokenizer, unit, ids, nll, top_spans, stride_used, reference)
            bar.update(1)
        group.clear()

    try:
        for i, unit in enumerate(units):
            unit = Unit(str(i), unit) if isinstance(unit, str) else unit
            if unit.ids is not None:
                ids = unit.ids
            else:
                try:
                    ids = np.asarray(tokenizer.encode(unit.text), np.int64)
                except TokenizerError as e:  # text the tokenizer cannot spell (a char model's unseen character)
                    ids = np.zeros(0, np.int64)
                    unit = Unit(unit.id, unit.text, ids, error=str(e))
            group.append((unit, ids))
            have += len(ids)
            if have >= GROUP_TOKENS:
                yield from flush()
                have = 0
        if group:
            yield from flush()
    finally:
        bar.close()


def score_source(model: GPT, tokenizer: Tokenizer, source: str | Path, *, unit: str = "doc",
                 text_field: str = "text", **kwargs) -> Iterator[dict]:  # fmt: skip
    """`score_units` over the units of a text file, folder or .jsonl file (`read_documents`, `split_units`);
    window units are block_size tokens long."""
    if unit not in UNITS:
        raise ScoreError(f"unknown unit {unit!r}; pick one of {', '.join(UNITS)}")
    check_input(source)
    units = split_units(read_documents(source, text_field), unit, tokenizer, model.config.block_size)
    return score_units(model, tokenizer, units, **kwargs)
