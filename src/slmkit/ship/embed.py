"""`slm embed`: sentence embeddings from any run (pretrained, SFT, LoRA or an embedding child run).

    from slmkit.ship.embed import embed_texts, load_encoder
    model, tokenizer, cfg = load_encoder("runs/x-embed")
    vectors, stats = embed_texts(model, tokenizer, ["a cat", "a dog"], pooling=cfg.embed.pooling)  # (2, C) float32

`embed_texts` (slmkit.engine.embedding) is the library function the server and semantic search build on; `embed`
is the verb: it reads one text a line (.txt; empty lines skipped and counted) or a field of .jsonl records, embeds
them with the run's pooling (embed.pooling unless given), and writes vectors.npy ((N, n_embd) float32, row i = the
i-th text kept) or vectors.jsonl ({"line", "embedding"} a text), atomically; an existing output is refused without
`overwrite`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slmkit.base.atomic import atomic_path
from slmkit.base.config import RunConfig
from slmkit.base.tokenizer import Tokenizer
from slmkit.data.sources import jsonl_records
from slmkit.engine.embedding import POOLINGS, EmbedError, check_pooling, embed_texts
from slmkit.model.gpt import GPT
from slmkit.runs.checkpoint import load_model

__all__ = ["POOLINGS", "EmbedError", "embed", "embed_texts", "load_encoder", "read_texts"]
OUT_SUFFIXES = (".npy", ".jsonl")


def load_encoder(run: str | Path, checkpoint: str = "best") -> tuple[GPT, Tokenizer, RunConfig]:
    """(model in eval mode, tokenizer, config) of a run: cfg.embed holds its pooling and instruction."""
    model, tokenizer, cfg, _ = load_model(run, checkpoint)
    return model, tokenizer, cfg


def read_texts(path: str | Path, text_field: str = "text") -> tuple[list[str], list[int], int]:
    """(texts, their 1-based line numbers, empty lines skipped) of a .txt file (one text a line) or a .jsonl file
    (`text_field` of each record; a record without it is an error naming its line)."""
    path = Path(path)
    if not path.is_file():
        raise EmbedError(f"{path} is not a file; pass a text file (one text a line) or a .jsonl file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise EmbedError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix == ".jsonl":
        records = [(n, text) for n, _, text in jsonl_records(path, lines, text_field)]
        empty = len(lines) - len(records)
    else:
        records, empty = list(enumerate(lines, 1)), 0
    texts, numbers = [], []
    for n, text in records:
        if not text.strip():
            empty += 1
            continue
        texts.append(text)
        numbers.append(n)
    if not texts:
        raise EmbedError(f"{path} holds no text to embed ({empty} empty lines)")
    return texts, numbers, empty


def check_out(out: str | Path, overwrite: bool) -> Path:
    """The output path, refused when it exists (without `overwrite`), is a directory or has another suffix."""
    out = Path(out)
    if out.suffix not in OUT_SUFFIXES:
        raise EmbedError(f"--out {out}: name a .npy (a float32 matrix) or .jsonl (one vector a line) file")
    if out.is_dir():
        raise EmbedError(f"--out {out} is a directory; name the vectors file to write")
    if out.exists() and not overwrite:
        raise EmbedError(f"{out} exists; pass --overwrite to replace it, or name another --out")
    return out


def write_vectors(out: Path, vectors: np.ndarray, lines: list[int]) -> None:
    """vectors.npy, or vectors.jsonl with each vector's input line number; atomic."""
    with atomic_path(out) as tmp:
        if out.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, vectors)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for n, v in zip(lines, vectors):
                    f.write(json.dumps({"line": n, "embedding": [round(float(x), 7) for x in v]}) + "\n")


def embed(run: str | Path, input: str | Path, out: str | Path | None = None, *, pooling: str | None = None,
          instruction: str = "", checkpoint: str = "best", batch_size: int = 64, normalize: bool = True,
          text_field: str = "text", overwrite: bool = False,
          progress: bool = True) -> tuple[np.ndarray, dict]:  # fmt: skip
    """`slm embed`: embed the texts of `input` with a run; write them to `out` when given. Returns (vectors, stats):
    stats adds to embed_texts' the input's empty lines skipped, the line numbers kept and the pooling used."""
    if out is not None:
        out = check_out(out, overwrite)  # before the model loads: a refused output costs nothing
    if batch_size < 1:
        raise EmbedError(f"--batch-size must be >= 1, got {batch_size}")
    texts, lines, empty = read_texts(input, text_field)
    model, tokenizer, cfg = load_encoder(run, checkpoint)
    pooling = pooling or cfg.embed.pooling
    check_pooling(pooling, tokenizer)
    vectors, stats = embed_texts(model, tokenizer, texts, pooling=pooling, instruction=instruction,
                                 batch_size=batch_size, normalize=normalize, progress=progress)  # fmt: skip
    stats.update(empty_skipped=empty, lines=lines, normalized=normalize)
    if out is not None:
        write_vectors(out, vectors, lines)
    return vectors, stats


def summary(stats: dict, out: str | Path | None) -> str:
    """One line for the console: how many texts, what was skipped or cut, the speed."""
    cut = f", {stats['truncated']} cut to {stats['max_len']} tokens" if stats["truncated"] else ""
    skipped = f", {stats['empty_skipped']} empty lines skipped" if stats["empty_skipped"] else ""
    where = f"; wrote {out}" if out else ""
    return (f"embedded {stats['texts']} texts ({stats['pooling']} pooling{skipped}{cut}) at "
            f"{stats['texts_per_s'] or 0:,.0f} texts/s{where}")  # fmt: skip
