"""Run a list of tasks on a model: scores, standard errors, results files, the printed table.

`evaluate_run(run_dir, tasks)` is the `slm eval` verb; `evaluate_tasks(model, tokenizer, tasks)` is what the
training loop calls every eval.every steps (flat `eval/<task>/<metric>` keys).
"""

from __future__ import annotations

import math
import time
from numbers import Integral
from pathlib import Path

import numpy as np

from slmkit.base.atomic import atomic_write_json
from slmkit.base.config import EmbedConfig
from slmkit.base.console import progress as progress_bar
from slmkit.base.errors import SlmError
from slmkit.base.tokenizer import Tokenizer
from slmkit.data.fim import infill_order
from slmkit.engine.evaluate.code_tasks import CODE_TASKS, run_code_task
from slmkit.engine.evaluate.embedding import EMBED_TASKS, run_embed_task
from slmkit.engine.evaluate.loss import (
    DEFAULT_MAX_TOKENS,
    check_max_tokens,
    check_stride,
    check_text_source,
    evaluate_text_loss,
)
from slmkit.engine.evaluate.mmlu import CONTINUATIONS, MMLU_TASKS, mmlu_metrics, mmlu_requests
from slmkit.engine.evaluate.references import REFERENCES
from slmkit.engine.evaluate.scoring import Scorer, encode_pair
from slmkit.engine.evaluate.tasks import LOSS_TASK, TASKS, TaskError, check_tasks, data_root, load_items
from slmkit.model.gpt import GPT
from slmkit.runs.checkpoint import load_model, read_run_info, read_state

EVALS_DIR = "evals"


def mean_stderr(values: list[float]) -> float:
    """Sample standard deviation / sqrt(n), as lm-eval reports the stderr of a mean (0 for n < 2)."""
    n = len(values)
    if n < 2:
        return 0.0
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def task_metrics(name: str, items, scores: list[list[tuple[float, bool]]]) -> dict:
    """acc / acc_norm (multiple choice), acc (partial), acc + ppl (lambada), each with its stderr."""
    kind = TASKS[name].kind
    if kind == "lambada":
        lls = [s[0][0] for s in scores]
        per = {"acc": [float(s[0][1]) for s in scores]}
        out = {"ppl": math.exp(-sum(lls) / max(len(lls), 1))}
    else:
        per = {"acc": [], "acc_norm": []} if kind == "mc" else {"acc": []}
        for item, s in zip(items, scores):
            lls = np.array([ll for ll, _ in s])
            per["acc"].append(float(int(np.argmax(lls)) == item.gold))
            if kind == "mc":
                lengths = np.array([float(len(c)) for c in item.choice_texts])
                per["acc_norm"].append(float(int(np.argmax(lls / lengths)) == item.gold))
        out = {}
    for metric, values in per.items():
        out[metric] = sum(values) / max(len(values), 1)
        out[f"{metric}_stderr"] = mean_stderr(values)
    return out


def run_task(
    model: GPT,
    tokenizer: Tokenizer,
    name: str,
    *,
    limit: int = 0,
    root: str | Path | None = None,
    progress: bool = False,
    source: str = "local",
    embed: EmbedConfig | None = None,
    fim: str = "",
    data: str | Path | None = None,
) -> dict:
    """Score one benchmark task; the result holds the metrics, counts, timing and per-item log-likelihoods.

    source: "local" (files under $SLM_DATA_DIR/eval) or "hf" (the task's Hugging Face dataset, see tasks.py).
    An embedding task (embedding.EMBED_TASKS) pools as `embed` says (default EmbedConfig()). A code task
    (code_tasks.CODE_TASKS) reads held-out .py files (`data`, else python-stdlib's val split) and infills when `fim`
    says how (`slmkit.data.fim.infill_order` of the model's training: "spm", "psm", or "" for none)."""
    check_limit(limit)
    if name in CODE_TASKS:
        if source != "local":
            raise TaskError(f"task {name} reads local files only; drop --task-source {source}")
        return run_code_task(model, tokenizer, name, fim=fim, data=data, limit=limit, progress=progress)
    if name in EMBED_TASKS:
        if source != "local":
            raise TaskError(f"task {name} reads local files only; drop --task-source {source}")
        e = embed or EmbedConfig()
        return run_embed_task(model, tokenizer, name, pooling=e.pooling, instruction=e.instruction, limit=limit,
                              progress=progress)  # fmt: skip
    if name in MMLU_TASKS:
        if source != "local":
            raise TaskError(f"task {name} reads local files only; drop --task-source {source}")
        return run_mmlu(model, tokenizer, name, limit=limit, root=root, progress=progress)
    items = load_items(name, root, limit, source)
    if not items:
        raise TaskError(f"task {name} has no items to score ({source} source); check its files")
    scorer = Scorer(model)
    t0 = time.perf_counter()
    scores = []
    bar = progress_bar(len(items), name, "item", enabled=progress)
    for item in items:
        scores.append(scorer.score_requests([encode_pair(tokenizer, c, k) for c, k in item.requests()]))
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    return {
        "task": name,
        "n": len(items),
        "metrics": task_metrics(name, items, scores),
        "chance": TASKS[name].chance,
        "truncated": scorer.truncated,
        "limit": limit,
        "source": source,
        "seconds": seconds,
        "items_per_s": len(items) / seconds if seconds else None,
        "loglikelihoods": [[ll for ll, _ in s] for s in scores],
        "is_greedy": [[g for _, g in s] for s in scores],
    }


def run_mmlu(model: GPT, tokenizer: Tokenizer, name: str, *, limit: int = 0, root: str | Path | None = None,
             progress: bool = False) -> dict:  # fmt: skip
    """MMLU (mmlu.py): each question's four letters scored after its prompt; acc, acc_macro and per-subject acc."""
    requests = mmlu_requests(name, data_root() if root is None else root, limit)
    scorer = Scorer(model)
    t0 = time.perf_counter()
    correct, lls = [], []
    bar = progress_bar(len(requests), name, "question", enabled=progress)
    for _, context, gold in requests:
        scores = scorer.score_requests([encode_pair(tokenizer, context, c) for c in CONTINUATIONS])
        lls.append([ll for ll, _ in scores])
        correct.append(int(np.argmax(lls[-1])) == gold)
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    return {"task": name, "n": len(requests), "metrics": mmlu_metrics([s for s, _, _ in requests], correct),
            "chance": 0.25, "truncated": scorer.truncated, "limit": limit, "source": "local", "seconds": seconds,
            "items_per_s": len(requests) / seconds if seconds else None, "loglikelihoods": lls}  # fmt: skip


def check_limit(limit: int) -> None:
    """Refuse a negative (or fractional) number of items per task; 0 means all."""
    if isinstance(limit, bool) or not isinstance(limit, Integral) or limit < 0:
        raise TaskError(f"limit must be a whole number of items >= 0 (0 = all), got {limit!r}")


def evaluate_tasks(model: GPT, tokenizer: Tokenizer, tasks: list[str], limit: int = 0,
                   embed: EmbedConfig | None = None, fim: str = "") -> dict[str, float]:  # fmt: skip
    """Flat `eval/<task>/<metric>` values for the metrics log (the training loop's hook; `val` is skipped,
    the trainer logs val/* itself). `embed`: the run's pooling and instruction, for embedding tasks."""
    out = {}
    was_training = model.training
    for name in check_tasks(tasks):
        if name == LOSS_TASK:
            continue
        for metric, value in run_task(model, tokenizer, name, limit=limit, embed=embed, fim=fim)["metrics"].items():
            if not metric.endswith("_stderr"):
                out[f"eval/{name}/{metric}"] = value
    model.train(was_training)
    return out


def evaluate_run(
    run_dir: str | Path,
    tasks: list[str],
    *,
    limit: int = 0,
    checkpoint: str = "best",
    data: str | Path | None = None,
    stride: int = 0,
    val_tokens: int | None = None,
    progress: bool = True,
    write: bool = True,
    task_source: str = "local",
) -> dict[str, dict]:
    """`slm eval`: score a run's checkpoint on `tasks`; write RUN/evals/<task>.json (atomic); return the results.

    task_source: where benchmark items come from, "local" files or "hf" datasets (the only path that uses the
    network). data: the val task's text or dataset dir, and the code tasks' held-out .py files."""

    tasks = check_tasks(tasks)
    if not tasks:
        raise TaskError("no tasks to run; name some, e.g. --tasks val,hellaswag")
    check_limit(limit)
    check_stride(stride)
    if val_tokens is not None:
        check_max_tokens(val_tokens)
    if data is not None and LOSS_TASK in tasks:
        check_text_source(data)
    model, tokenizer, cfg, ckpt = load_model(run_dir, checkpoint)
    step = read_state(ckpt).get("step")
    results = {}
    for name in tasks:
        if name == LOSS_TASK:
            source = data or read_run_info(run_dir).get("dataset")
            if not source:
                raise SlmError(f"{run_dir} records no dataset; pass --data FILE_OR_DATASET_DIR for the val task")
            t0 = time.perf_counter()
            res = {
                "task": name,
                "n": None,
                "metrics": evaluate_text_loss(
                    model, tokenizer, source, stride, DEFAULT_MAX_TOKENS if val_tokens is None else val_tokens
                ),
                "chance": None,
                "truncated": 0,
                "seconds": time.perf_counter() - t0,
            }
        else:
            res = run_task(model, tokenizer, name, limit=limit, progress=progress, source=task_source, embed=cfg.embed,
                           fim=infill_order(cfg.data.fim_rate, cfg.data.fim_spm_rate), data=data)  # fmt: skip
        res.update(checkpoint=str(ckpt), step=step, tokenizer=tokenizer.name)
        results[name] = res
        if write:
            saved = {k: v for k, v in res.items() if k not in ("loglikelihoods", "is_greedy")}
            atomic_write_json(Path(run_dir) / EVALS_DIR / f"{name}.json", saved)
    return results


def format_table(results: dict[str, dict]) -> str:
    """Markdown table: our scores with stderr, chance, and the reference models' published numbers."""
    refs = list(REFERENCES)
    lines = [
        "| task | metric | value | ± stderr | chance | " + " | ".join(refs) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(refs),
    ]
    for name, res in results.items():
        m = res["metrics"]
        if name == LOSS_TASK:
            for metric in ("loss", "ppl", "bpb"):
                lines.append(f"| val | {metric} | {m[metric]:.4f} | | | " + " | ".join("" for _ in refs) + " |")
            continue
        for metric in [k for k in m if not k.endswith("_stderr") and isinstance(m[k], (int, float))]:
            chance = "" if metric == "ppl" or res["chance"] is None else f"{res['chance']:.2f}"
            ref = [REFERENCES[r].get(name, {}).get(metric) for r in refs]
            err = m.get(f"{metric}_stderr")
            lines.append(
                f"| {name} | {metric} | {m[metric]:.4f} | {'' if err is None else f'{err:.4f}'} | {chance} | "
                + " | ".join("" if v is None else f"{v:.4f}" for v in ref)
                + " |"
            )
        if res.get("truncated"):
            lines.append(f"| {name} | truncated | {res['truncated']} | | | " + " | ".join("" for _ in refs) + " |")
    return "\n".join(lines)
