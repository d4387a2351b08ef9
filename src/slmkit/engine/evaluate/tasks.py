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

With `source="hf"` (`slm eval --task-source hf`) the canonical Hugging Face datasets in `HF_DATASETS` are loaded
instead, through `datasets.load_dataset` (network or the HF cache; never touched unless that source is named), and
each row is converted to the local record shape above, so items and scoring are shared. HF HellaSwag keeps its
ctx_a/ctx_b split, so there lm-eval's exact preprocess (`ctx_b.capitalize()`) is applied.
"""

from __future__ import annotations

import bz2
import json
import os
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from slmkit.base.errors import SlmError
from slmkit.engine.evaluate.code_tasks import CODE_TASKS
from slmkit.engine.evaluate.embedding import EMBED_TASKS, embed_task_files
from slmkit.engine.evaluate.mmlu import MMLU_TASKS, subjects


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
    return [LOSS_TASK, *TASKS, *MMLU_TASKS, *EMBED_TASKS, *CODE_TASKS]


def check_tasks(names: list[str]) -> list[str]:
    """The names, validated; TaskError listing the known tasks for an unknown one."""
    for n in names:
        if n not in known_tasks():
            raise TaskError(f"unknown task {n!r}; known tasks: {', '.join(known_tasks())}")
    return list(names)


def data_root() -> Path:
    return Path(os.environ.get("SLM_DATA_DIR", "data")) / "eval"


def task_files(name: str, root: str | Path | None = None) -> list[Path]:
    """Paths of a task's files; TaskError naming where they were looked for and how to supply them (an embedding
    task's: `embedding.embed_task_files`)."""
    if name in EMBED_TASKS:
        return embed_task_files(name, root)
    if name in CODE_TASKS:  # held-out source files, not task files (code_tasks.py)
        return []
    if name in MMLU_TASKS:  # one test (and dev) file per subject (mmlu.py)
        root = Path(root) if root is not None else data_root()
        return [root / "mmlu" / "test" / f"{s}_test.csv" for s in subjects(root)]
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


def read_records(name: str, root: str | Path | None = None, limit: int = 0, source: str = "local") -> list[dict]:
    """The task's examples as dicts of raw fields, in file order (first `limit` when > 0).

    source: "local" (files under $SLM_DATA_DIR/eval) or "hf" (the Hugging Face dataset, same record shape)."""
    if source == "hf":
        return read_hf_records(name, limit)
    if source != "local":
        raise TaskError(f"unknown task source {source!r}; use one of: {', '.join(TASK_SOURCES)}")
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


# ---------------------------------------------------------------------------------------------------------
# Hugging Face datasets: the canonical copies lm-eval uses, converted to the local records' fields.

TASK_SOURCES = ("local", "hf")
HF_DATASETS: dict[str, tuple[str, str | None, str]] = {
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "piqa": ("baber/piqa", None, "validation"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation"),
    "lambada": ("EleutherAI/lambada_openai", "default", "test"),
}
"""task -> (dataset path, config name, split) for `datasets.load_dataset`."""


def hf_to_record(name: str, row: dict) -> dict:
    """One Hugging Face row -> the record the local reader gives for the same example."""
    if name == "hellaswag":
        ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()  # lm-eval's hellaswag process_docs
        return {"ctx": row["activity_label"] + ": " + ctx, "label": int(row["label"]), "endings": list(row["endings"])}
    if name in ("arc_easy", "arc_challenge"):
        choices = row["choices"]
        gold = list(choices["label"]).index(row["answerKey"])
        return {"query": "Question: " + row["question"], "choices": list(choices["text"]), "gold": gold}
    if name == "piqa":
        return {"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(row["label"])}
    if name == "winogrande":
        sentence = row["sentence"]
        blank = sentence.index("_")
        options = [sentence[:blank] + row["option1"], sentence[:blank] + row["option2"]]
        rest = sentence[blank + 1 :].strip()  # lm-eval's partial scoring: the text after the blank
        return {"context_options": options, "continuation": rest, "gold": int(row["answer"]) - 1}
    if name == "lambada":
        return {"text": row["text"]}
    raise TaskError(f"{name!r} is not a benchmark task; known tasks: {', '.join(TASKS)}")


def read_hf_records(name: str, limit: int = 0) -> list[dict]:
    """The task's Hugging Face dataset as local-shaped records (first `limit` when > 0); one-line TaskError when
    `datasets` is missing or the dataset cannot be fetched."""
    if name not in HF_DATASETS:
        raise TaskError(f"{name!r} is not a benchmark task; known tasks: {', '.join(TASKS)}")
    try:
        import datasets
    except ImportError:
        raise TaskError(
            f"task {name}: the Hugging Face source needs the datasets package (pip install datasets), or use the "
            "local files under $SLM_DATA_DIR/eval"
        ) from None
    path, config, split = HF_DATASETS[name]
    label = f"{path}{'/' + config if config else ''} ({split})"
    try:
        rows = datasets.load_dataset(path, config, split=split)
        rows = list(islice(rows, limit) if limit else rows)
    except Exception as e:  # offline, unknown to the hub, cache miss: datasets raises many types
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TaskError(
            f"task {name}: could not fetch Hugging Face dataset {label} ({why}); the local files under "
            f"$SLM_DATA_DIR/eval/{name} work offline (drop --task-source hf)"
        ) from None
    try:
        return [hf_to_record(name, dict(r)) for r in rows]
    except (KeyError, ValueError, TypeError) as e:
        raise TaskError(
            f"task {name}: unexpected row in Hugging Face dataset {label}: {type(e).__name__}: {e}"
        ) from None


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


def load_items(name: str, root: str | Path | None = None, limit: int = 0, source: str = "local") -> list[Item]:
    """The task's items from its local files or (source="hf") its Hugging Face dataset."""
    return [to_item(name, r) for r in read_records(name, root, limit, source)]
