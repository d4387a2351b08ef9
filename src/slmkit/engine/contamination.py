"""The eval tasks as text for decontamination, and the verbs that need them: `slm data clean` (`clean_corpus`), the
overlap check of preparing a run's data (`eval_index_for`) and of a stream run's workers (`eval_index_file`).

`data/` cleans and checks corpora but cannot read eval tasks (they are engine code), so the engine reads each
task's items (`tasks.load_items`: any task `tasks.py` knows, MMLU, and the STS test sets), turns them into texts
(every context followed by every continuation, so a question, its answer choices and a LAMBADA passage with its last
word are all covered; each sentence of an STS pair) and builds the 13-gram index once per set of task files: it is
cached under `$SLM_CACHE_DIR/decontam/` by the files' names, sizes and modification times, so later checks load it
in milliseconds. Tasks whose files are absent are skipped with one note naming them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from slmkit.base.config import DataConfig
from slmkit.base.console import say
from slmkit.data.quality.clean import CleanSpec, clean
from slmkit.data.quality.decontam import FORMAT, NGRAM, EvalNGrams
from slmkit.data.sources import cache_dir
from slmkit.engine.evaluate.embedding import EMBED_TASKS, EmbedTaskError, sts_items
from slmkit.engine.evaluate.mmlu import MmluError, mmlu_dir, read_questions, subjects
from slmkit.engine.evaluate.tasks import TASKS, TaskError, data_root, load_items, task_files

STS_TASKS = tuple(n for n, spec in EMBED_TASKS.items() if spec.kind == "sts" and n != "sts-b-dev")
DECONTAM_TASKS = (*TASKS, "mmlu", *STS_TASKS)
"""Every eval task with text a corpus could contain (mmlu_5shot's questions are mmlu's; the STS test sets, not
STS-B dev, which trains; not wiki-retrieval, whose documents are a Wikipedia file meant to be held out)."""


def task_texts(name: str, root: str | Path | None = None) -> Iterator[tuple[int, str]]:
    """(item number, text) for every request of every item of task `name`: context + continuation (MMLU: each
    test question followed by its four choices, without the prompt's shared header)."""
    if name == "mmlu":
        eval_root = Path(root) if root is not None else data_root()
        questions = (q for s in subjects(eval_root) for q in read_questions(mmlu_dir(eval_root) / "test" /
                                                                               f"{s}_test.csv", s))  # fmt: skip
        for i, q in enumerate(questions):
            yield i, q.question + "\n" + "\n".join(q.choices)
        return
    if name in STS_TASKS:  # each sentence of a pair alone: a 13-gram does not span the two
        for i, (a, b, _) in enumerate(sts_items(name, root)):
            yield i, a
            yield i, b
        return
    for i, item in enumerate(load_items(name, root)):
        for ctx, cont in item.requests():
            yield i, ctx + cont


def resolve_tasks(names: Sequence[str] = (), root: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(tasks whose files are present, notes on the ones skipped). `names` empty or ["all"]: every task.
    TaskError listing the valid names for an unknown one."""
    names = [n for n in names if n] or ["all"]
    if "all" in names:
        names = list(DECONTAM_TASKS)
    for n in names:
        if n not in DECONTAM_TASKS:
            raise TaskError(f"unknown task {n!r} to decontaminate against; valid: all, {', '.join(DECONTAM_TASKS)}")
    present, missing = [], []
    for n in names:
        try:
            task_files(n, root)
            present.append(n)
        except (TaskError, MmluError, EmbedTaskError):
            missing.append(n)
    return present, [f"{', '.join(missing)}: task files not found, not checked"] if missing else []


def _cache_key(tasks: Sequence[str], root) -> str:
    h = hashlib.sha256(f"{FORMAT}:{NGRAM}".encode())
    for n in tasks:
        for p in task_files(n, root):
            st = p.stat()
            h.update(f"{n}\t{p.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def eval_index(names: Sequence[str] = (), root: str | Path | None = None) -> tuple[EvalNGrams | None, list[str]]:
    """(the 13-gram index of the tasks `names` whose files are present, or None when none are; notes on tasks
    skipped). Built once and cached (see the module docstring)."""
    index, notes, _ = _cached_index(names, root)
    return index, notes


def eval_index_file(data_cfg) -> str:
    """Stream mode: the cached index file of the run's data.contamination_tasks (built when missing), which the
    stream's workers load to check documents on the fly; "" when data.contamination is off or no task files are
    present. Notes on skipped tasks are logged."""
    if data_cfg.contamination == "off":
        return ""
    _, notes, path = _cached_index(tuple(data_cfg.contamination_tasks), load=False)
    for n in notes:
        say(f"contamination check: {n}")
    return str(path) if path is not None else ""


def _cached_index(names: Sequence[str], root=None, load: bool = True) -> tuple[EvalNGrams | None, list[str],
                                                                              Path | None]:  # fmt: skip
    """(index, notes, its cache file); `load` False: a valid cache file is not read (index None, path given)."""
    tasks, notes = resolve_tasks(names, root)
    if not tasks:
        return None, notes, None
    path = cache_dir() / "decontam" / f"{_cache_key(tasks, root)}.npz"
    if not load and EvalNGrams.is_valid(path):
        return None, notes, path
    index = EvalNGrams.load(path) if path.is_file() else None
    if index is None:
        texts: dict[str, list[tuple[int, str]]] = {}
        for n in tasks:
            try:
                texts[n] = list(task_texts(n, root))
            except (TaskError, KeyError, ValueError) as e:
                notes.append(f"{n}: its items could not be read ({type(e).__name__}: {e}), not checked")
        index = EvalNGrams.build(list(texts), ((k, i, t) for k, n in enumerate(texts) for i, t in texts[n]))
        index.save(path)
    return index, notes, path


def eval_index_provider(mode: str, tasks: Sequence[str] = ()) -> Callable[[], EvalNGrams | None] | None:
    """What `prepare` calls, only when it really prepares, to get the index of `tasks` (empty: all present); None
    when `mode` is off. Notes on skipped tasks are logged."""
    if mode == "off":
        return None

    def build() -> EvalNGrams | None:
        index, notes = eval_index(tuple(tasks))
        for n in notes:
            say(f"contamination check: {n}")
        return index

    return build


def eval_index_for(data_cfg) -> Callable[[], EvalNGrams | None] | None:
    """`eval_index_provider` for a run's data config (data.contamination, data.contamination_tasks)."""
    return eval_index_provider(data_cfg.contamination, tuple(data_cfg.contamination_tasks))


def clean_corpus(source: str, out: str | Path, *, dedup: Sequence[str] = (), filters: Sequence[str] = (),
                 decontaminate: Sequence[str] | None = None, check: bool = True,
                 near_threshold: float = DataConfig.near_threshold,
                 fmt: str = "jsonl", text_field: str = "text", include: Sequence[str] = (),
                 exclude: Sequence[str] = (), overwrite: bool = False, workers: int = 0,
                 progress: bool = True) -> dict:  # fmt: skip
    """`slm data clean`: filters and deduplicates `source` into `out` (see `data.quality.clean.clean`).

    `decontaminate` names eval tasks (or "all") whose overlapping documents are removed; without it, every task
    present is checked and overlap only reported (`check` False: not at all). Returns the report."""
    spec = CleanSpec(tuple(dedup), tuple(filters), near_threshold,
                     "remove" if decontaminate else ("warn" if check else "off"))  # fmt: skip
    index, notes = (None, []) if spec.contamination == "off" else eval_index(tuple(decontaminate or ()))
    if decontaminate and index is None:
        notes.append("no eval task files found: nothing decontaminated (set SLM_DATA_DIR)")
    for n in notes:
        say(f"clean: {n}")
    report = clean(source, out, spec, index=index, fmt=fmt, text_field=text_field, include=include,
                   exclude=exclude, overwrite=overwrite, workers=workers, progress=progress, notes=notes)  # fmt: skip
    for line in _overlap_lines(report):
        say(f"clean: contamination: {line}")
    return report


def _overlap_lines(report: dict) -> list[str]:
    cont = report.get("contamination") or {}
    return [f"{name}: {v['documents']:,} documents share {NGRAM}-grams with {v['items']:,} of its {v['of_items']:,} "
            "items" for name, v in cont.get("overlap", {}).items()]  # fmt: skip
