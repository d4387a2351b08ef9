"""Zero-shot tasks: where their files are, how to read them, and how each item becomes log-likelihood requests.

Every multiple-choice item is a `Item`: one or more contexts and one or more continuations, scored the way
lm-eval's task definitions build their requests (so our numbers and lm-eval's agree):

    hellaswag      preprocess(activity_label + ": " + ctx)  +  " " + preprocess(ending)     x4, acc + acc_norm
    arc_easy/_ch.  "Question: {q}\\nAnswer:"                 +  " " + choice                 x4, acc + acc_norm
    piqa           "Question: {goal}\\nAnswer:"              +  " " + sol                    x2, acc + acc_norm
    winogrande     sentence up to the blank, option filled  +  " " + rest of the sentence   partial evaluation, acc
    lambada        text without its last word               +  " " + last word              acc (greedy) + ppl

The files are the ones described in $SLM_DATA_DIR/SOURCES.md (section 3), under $SLM_DATA_DIR/eval/<task>/.
The HellaSwag text export has no ctx_a/ctx_b split, so lm-eval's `ctx_b.capitalize()` cannot be applied; the
exported context is used as is (with lm-eval's preprocess). Scores are therefore close to, not identical with,
published HellaSwag numbers; they are identical with lm-eval run on the same files (see harness.py).
"""

from __future__ import annotations

import bz2
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import SlmError


class TaskError(SlmError):
    """An unknown task or missing task files."""


@dataclass
class Item:
    """One scored example. `contexts` has one entry (shared) or one per choice (winogrande's partial scoring)."""

    contexts: list[str]
    continuations: list[str]
    gold: int
    choice_texts: list[str]
    """The strings whose character length normalizes acc_norm (lm-eval: the choices, without the delimiter)."""

    def requests(self) -> list[tuple[str, str]]:
        """(context, continuation) pairs in choice order."""
        ctxs = self.contexts if len(self.contexts) > 1 else self.contexts * len(self.continuations)
        return list(zip(ctxs, self.continuations))


@dataclass(frozen=True)
class TaskSpec:
    name: str
    files: tuple[str, ...]
    kind: str  # "mc" (acc, acc_norm), "partial" (acc) or "lambada" (acc, ppl)
    chance: float
    description: str


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("hellaswag", ("hellaswag_val_full.txt.bz2",), "mc", 0.25, "HellaSwag validation, 10,042 items"),
        TaskSpec("arc_easy", ("arc_easy.jsonl",), "mc", 0.25, "ARC-Easy test, 2,376 items"),
        TaskSpec("arc_challenge", ("arc_challenge.jsonl",), "mc", 0.25, "ARC-Challenge test, 1,172 items"),
        TaskSpec("piqa", ("valid.jsonl", "valid-labels.lst"), "mc", 0.5, "PIQA validation, 1,838 items"),
        TaskSpec("winogrande", ("winogrande.jsonl",), "partial", 0.5, "WinoGrande 1.1 dev, 1,267 items"),
        TaskSpec("lambada", ("lambada_test.jsonl",), "lambada", 0.0, "LAMBADA (OpenAI), 5,153 items"),
    )
}
LOSS_TASK = "val"
"""Not a benchmark: loss, perplexity and bits per byte on the run's val split (see loss.py)."""


def known_tasks() -> list[str]:
    return [LOSS_TASK, *TASKS]


def check_tasks(names: list[str]) -> list[str]:
    """The names, validated; TaskError listing the known tasks for an unknown one."""
    for n in names:
        if n not in TASKS and n != LOSS_TASK:
            raise TaskError(f"unknown task {n!r}; known tasks: {', '.join(known_tasks())}")
    return list(names)


def data_root() -> Path:
    return Path(os.environ.get("SLM_DATA_DIR", "data")) / "eval"


def task_files(name: str, root: str | Path | None = None) -> list[Path]:
    """Paths of a task's files; TaskError naming where they were looked for and how to supply them."""
    spec = TASKS[check_tasks([name])[0]] if name in TASKS else None
    if spec is None:
        raise TaskError(f"{name!r} is not a benchmark task; known tasks: {', '.join(TASKS)}")
    folder = Path(root) / name if root is not None else data_root() / name
    paths = [folder / f for f in spec.files]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise TaskError(
            f"task {name}: missing {', '.join(str(p) for p in missing)}; put the files there (formats in "
            "$SLM_DATA_DIR/SOURCES.md, section 3) or point SLM_DATA_DIR at a folder holding eval/<task>/"
        )
    return paths


# ---------------------------------------------------------------------------------------------------------
# Readers: raw records in the source files' own fields (shared with the lm-eval task files in harness.py).


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_records(name: str, root: str | Path | None = None, limit: int = 0) -> list[dict]:
    """The task's examples as dicts of raw fields, in file order (first `limit` when > 0)."""
    paths = task_files(name, root)
    if name == "hellaswag":
        with bz2.open(paths[0], "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        n = len(lines) // 6
        recs = [
            {"ctx": lines[6 * i], "label": int(lines[6 * i + 1]), "endings": lines[6 * i + 2 : 6 * i + 6]}
            for i in range(n if not limit else min(n, limit))
        ]
        return recs
    if name == "piqa":
        recs = _jsonl(paths[0])
        labels = [int(x) for x in paths[1].read_text().split()]
        if len(labels) != len(recs):
            raise TaskError(f"{paths[1]} has {len(labels)} labels for {len(recs)} PIQA items in {paths[0]}")
        recs = [{**r, "label": lab} for r, lab in zip(recs, labels)]
    else:
        recs = _jsonl(paths[0])
    return recs[:limit] if limit else recs


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup: strip, ' [title]' -> '. ', drop [bracketed] markers, collapse double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def lambada_split(text: str) -> tuple[str, str]:
    """(context, target): the text without its last space-separated word, and ' ' + that word (lm-eval)."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def to_item(name: str, rec: dict) -> Item:
    """One raw record -> the requests lm-eval builds for it."""
    if name == "hellaswag":
        choices = [hellaswag_preprocess(e) for e in rec["endings"]]
        return Item([hellaswag_preprocess(rec["ctx"])], [" " + c for c in choices], rec["label"], choices)
    if name in ("arc_easy", "arc_challenge"):
        return Item([rec["query"] + "\nAnswer:"], [" " + c for c in rec["choices"]], rec["gold"], rec["choices"])
    if name == "piqa":
        choices = [rec["sol1"], rec["sol2"]]
        return Item([f"Question: {rec['goal']}\nAnswer:"], [" " + c for c in choices], rec["label"], choices)
    if name == "winogrande":
        cont = " " + rec["continuation"]
        return Item(list(rec["context_options"]), [cont, cont], rec["gold"], list(rec["context_options"]))
    if name == "lambada":
        ctx, target = lambada_split(rec["text"])
        return Item([ctx], [target], 0, [target])
    raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(known_tasks())}")


def load_items(name: str, root: str | Path | None = None, limit: int = 0) -> list[Item]:
    return [to_item(name, r) for r in read_records(name, root, limit)]
