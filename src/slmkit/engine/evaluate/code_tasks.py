"""Code completion tasks on held-out source files: `fim-line` (single-line infilling) and `next-line`.

Items: in each held-out `.py` file, every function (`def`, nested ones too) whose body has a one-line statement
other than its docstring gives one item: one such line drawn from `np.random.default_rng([ITEM_SEED, file index,
function index])`. The item's prefix is the file up to that line's start (ending with a newline), the target is the
line, the suffix the rest of the file after the line's newline.

- `fim-line` (as single-line HumanEval-infilling and SantaCoder report it): the model writes the line between prefix
  and suffix. A model trained with fill-in-the-middle (data.fim_rate > 0) gets the FIM prompt (in SPM order when
  it was trained with SPM pieces, `slmkit.data.fim.infill_order`); any other model infills the only way it can, by
  continuing the prefix left to right.
- `next-line`: the model continues the prefix, suffix unseen.

Both decode greedily in line mode (`slmkit.data.fim.run_completion`, whitespace healing included) and score the
first line: exact match (after stripping whitespace at both ends) and edit similarity, 1 - Levenshtein distance /
the longer length (on the same stripped strings), each with its standard error. Prefix and suffix are cut from their
far ends to fit the context (`fim_prompt`); how many items were cut is reported.

Held-out files: `data` (a directory or glob of .py files, all used), else the val split of the `python-stdlib`
corpus as `slm prepare` draws it with the default data.seed and data.val_fraction, so a model trained on the default
corpus with those defaults is scored on files it never saw.
"""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from slmkit.base.config import DataConfig
from slmkit.base.console import progress as progress_bar
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer
from slmkit.data.fim import check_fim_model, fim_prompt, run_completion
from slmkit.data.prepare import assign_splits
from slmkit.data.sources import iter_documents
from slmkit.model.gpt import GPT

CODE_TASKS = {
    "fim-line": "single-line infilling in held-out functions: exact match and edit similarity",
    "next-line": "the next line of a held-out function from its prefix: exact match and edit similarity",
}
DEFAULT_SOURCE = "python-stdlib"
ITEM_SEED = 17
MAX_LINE_TOKENS = 48
"""Tokens generated per item: enough for a line of code."""


class CodeTaskError(SlmError):
    """No held-out files or no items to score."""


@dataclass
class LineItem:
    prefix: str
    target: str
    suffix: str
    where: str


# ---------------------------------------------------------------------------------------------------------
# Items


@lru_cache(maxsize=4)  # fim-line and next-line of one `slm eval` read the same files
def held_out_texts(data: str | Path | None = None, seed: int = DataConfig.seed,
                   val_fraction: float = DataConfig.val_fraction) -> tuple[tuple[str, str], ...]:  # fmt: skip
    """(name, text) of the held-out files: all .py files of `data`, else python-stdlib's val split."""
    if data is not None:
        docs = iter_documents(str(data), include=("*.py",)) if Path(data).is_dir() else iter_documents(str(data))
        pairs = [(d, "val") for d in docs]
    else:
        pairs = assign_splits(iter_documents(DEFAULT_SOURCE), val_fraction, seed)
    out: list[tuple[str, str]] = []
    for doc, split in pairs:
        if split != "val":
            continue
        if doc.first:
            out.append((doc.source, doc.text))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + doc.text)
    return tuple(out)


def _one_line_statements(fn: ast.AST) -> list[int]:
    """1-based line numbers of one-line statements in a function's body (nested bodies too), docstring excluded."""
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    lines = []
    for node in body:
        for sub in ast.walk(node):
            if isinstance(sub, ast.stmt) and sub.lineno == sub.end_lineno and not isinstance(sub, ast.FunctionDef):
                lines.append(sub.lineno)
    return sorted(set(lines))


def file_items(name: str, text: str, file_index: int) -> list[LineItem]:
    """One item per function with a one-line statement (see the module docstring); none for unparsable files."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines(keepends=True)
    starts = np.cumsum([0] + [len(x) for x in lines])
    items = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for k, fn in enumerate(functions):
        candidates = [i for i in _one_line_statements(fn) if lines[i - 1].strip()]
        if not candidates:
            continue
        rng = np.random.default_rng([ITEM_SEED, file_index, k])
        i = candidates[int(rng.integers(len(candidates)))] - 1  # 0-based line index
        line = lines[i]
        target = line.rstrip("\r\n")
        items.append(LineItem(text[: starts[i]], target, text[starts[i] + len(target) :], f"{name}:{i + 1}"))
    return items


def load_line_items(data: str | Path | None = None, limit: int = 0, seed: int = DataConfig.seed,
                    val_fraction: float = DataConfig.val_fraction) -> list[LineItem]:  # fmt: skip
    """The items of the held-out files, in file order; the first `limit` (0: all)."""
    texts = held_out_texts(data, seed, val_fraction)
    if not texts:
        where = data if data is not None else f"the val split of {DEFAULT_SOURCE}"
        raise CodeTaskError(f"no held-out .py files in {where}; pass --data DIR of .py files")
    items: list[LineItem] = []
    for index, (name, text) in enumerate(texts):
        items.extend(file_items(name, text, index))
        if limit and len(items) >= limit:
            break
    if not items:
        raise CodeTaskError("the held-out files have no function with a one-line statement; pass --data DIR")
    return items[:limit] if limit else items


# ---------------------------------------------------------------------------------------------------------
# Scoring


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein(a, b) / max(len(a), len(b)); 1.0 for two empty strings."""
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def _stderr(values: list[float]) -> float:
    n = len(values)
    return float(np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else 0.0


def run_code_task(model: GPT, tokenizer: Tokenizer, name: str, *, fim: str = "", data: str | Path | None = None,
                  limit: int = 0, progress: bool = False) -> dict:  # fmt: skip
    """Score `fim-line` or `next-line`; `fim`: how the model infills (`slmkit.data.fim.infill_order`: "spm" or
    "psm"; "" when it was trained without FIM), so fim-line gives it the suffix in that order (otherwise it continues
    the prefix). The result has the metrics, counts, and per item the target and the completion."""
    if name not in CODE_TASKS:
        raise CodeTaskError(f"{name!r} is not a code task; code tasks: {', '.join(CODE_TASKS)}")
    infill = name == "fim-line" and bool(fim)
    if infill:
        check_fim_model(tokenizer, None)
    items = load_line_items(data, limit)
    budget = model.config.block_size - MAX_LINE_TOKENS
    was_training = model.training
    exact, similar, cut, outputs = [], [], 0, []
    t0 = time.perf_counter()
    bar = progress_bar(len(items), name, "item", enabled=progress)
    for item in items:
        prompt = fim_prompt(tokenizer, item.prefix, item.suffix if infill else None, budget, order=fim)
        cut += bool(prompt.prefix_cut or prompt.suffix_cut)
        text, _, _ = run_completion(model, tokenizer, prompt, MAX_LINE_TOKENS, "line")
        got, want = text.strip(), item.target.strip()
        exact.append(float(got == want))
        similar.append(edit_similarity(got, want))
        outputs.append({"where": item.where, "target": item.target, "completion": text})
        bar.update(1)
    bar.close()
    model.train(was_training)
    seconds = time.perf_counter() - t0
    metrics = {"exact_match": float(np.mean(exact)), "exact_match_stderr": _stderr(exact),
               "edit_sim": float(np.mean(similar)), "edit_sim_stderr": _stderr(similar)}  # fmt: skip
    mode = f"infill-{fim}" if infill else "left-to-right"
    return {"task": name, "n": len(items), "metrics": metrics, "chance": None, "truncated": cut, "limit": limit,
            "source": str(data) if data is not None else DEFAULT_SOURCE, "mode": mode, "seconds": seconds,
            "items_per_s": len(items) / seconds if seconds else None, "completions": outputs}  # fmt: skip
