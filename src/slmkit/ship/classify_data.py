"""What `slm classify` reads and reports: labelled records, documents to label, and the metrics of a classifier.

A labelled file is JSONL, one object per line with a text field and a label field (a string, or a number or boolean
written as text). Everything a user can get wrong is one line: a missing file, a line that is not JSON, records
without the text or label field (how many, and the first line), no records at all, fewer than two classes.
Metrics: accuracy with its 95% Wilson interval, macro-F1 over the labels that occur, the confusion matrix (rows:
true label, columns: predicted) and expected calibration error (ECE: |accuracy - confidence| per confidence bin of
the top label's probability, weighted by the bin's share of records).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmkit.base.atomic import atomic_path
from slmkit.base.checks import text_file_problem
from slmkit.base.errors import SlmError
from slmkit.runs import checkpoint as ckpt_io

ECE_BINS = 10
META_FILE = "classify.json"  # what makes a folder a classifier; written last
RESUME_HINT = "run the same `slm classify train` command again with --resume to continue it"


class ClassifyError(SlmError):
    """Bad input to `slm classify`: a labelled file without its fields, one class, no records, unknown labels."""


@dataclass
class Example:
    """One record: its line number in the file, its text and its label (None where labels are not read)."""

    line: int
    text: str
    label: str | None


def require_finished(run: Path, what: str) -> None:
    """Refuse to go on from a training run that stopped before its last step (Ctrl-C or SIGTERM save a checkpoint
    and return): the classifier is left unfinished, to be resumed."""
    status = ckpt_io.read_run_info(run).get("status")
    if status != "finished":
        raise ClassifyError(f"training of {what} stopped ({status}) before its last step; {run} keeps what it "
                            f"learned: {RESUME_HINT}")  # fmt: skip


def refuse_finished(folder: Path) -> None:
    """--resume of a classifier that is already whole is refused."""
    if (folder / META_FILE).is_file():
        raise ClassifyError(f"{folder} is a finished classifier; nothing to resume (use another --name for a new one)")


def _check_file(path: Path, hint: str, what: str = "JSONL file") -> None:
    problem = text_file_problem(path, what, hint)
    if problem and problem.startswith(f"{path} is empty"):
        problem = f"{path} is empty (zero documents); {hint}"
    if problem:
        raise ClassifyError(problem)


def _records(path: Path) -> list[tuple[int, object]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ClassifyError(f"{path} line {n} is not valid JSON ({e.msg}); each line must be one JSON "
                                    "object") from None  # fmt: skip
    return out


def _label_text(v: object) -> str | None:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (str, int)) or (isinstance(v, float) and math.isfinite(v)):
        s = str(v).strip()
        return s or None
    return None


def read_examples(path: str | Path, text_field: str = "text", label_field: str | None = "label") -> list[Example]:
    """Every record of a JSONL file as an Example; with `label_field` None labels are not read."""
    path = Path(path)
    hint = f'pass a .jsonl file of {{"{text_field}": ...' + (f', "{label_field}": ...}}' if label_field else "}")
    _check_file(path, hint)
    records = _records(path)
    if not records:
        raise ClassifyError(f"{path} holds no records (zero documents); {hint}")
    no_text = [n for n, r in records if not isinstance(r, dict) or not isinstance(r.get(text_field), str)]
    if no_text:
        raise ClassifyError(f"{len(no_text)} of {len(records)} records in {path} have no string field "
                            f"{text_field!r} (the first at line {no_text[0]}); pass --text-field NAME")  # fmt: skip
    out = [Example(n, r[text_field], _label_text(r.get(label_field)) if label_field else None) for n, r in records]
    if label_field:
        missing = [ex.line for ex in out if ex.label is None]
        if missing:
            raise ClassifyError(f"{len(missing)} of {len(records)} records in {path} have no label field "
                                f"{label_field!r} (or an empty one; the first at line {missing[0]}); pass "
                                "--label-field NAME or fix those records")  # fmt: skip
    return out


def label_set(examples: list[Example], path: str | Path) -> list[str]:
    """The sorted labels of `examples`; ClassifyError for fewer than two, or a label with a line break (the label
    is the model's answer on the line after the prompt)."""
    labels = sorted({ex.label for ex in examples})
    if len(labels) < 2:
        raise ClassifyError(f"{path} has {len(labels)} class ({', '.join(map(repr, labels))}); a classifier needs at "
                            "least two labels")  # fmt: skip
    bad = [lab for lab in labels if "\n" in lab or "\r" in lab]
    if bad:
        raise ClassifyError(f"label {bad[0]!r} in {path} holds a line break; labels must be one line")
    return labels


def read_inputs(path: str | Path, text_field: str = "text") -> list[tuple[str, str]]:
    """(id, text) of each document to classify: a .jsonl record (id: its "id" field, else its line number) or a
    non-blank line of a text file (id: its line number). ClassifyError for zero documents."""
    path = Path(path)
    if path.suffix == ".jsonl":
        _check_file(path, f"pass a .jsonl file with a {text_field!r} field, or a text file of one document a line")
        records = _records(path)
        bad = [n for n, r in records if not isinstance(r, dict) or not isinstance(r.get(text_field), str)]
        if bad:
            raise ClassifyError(f"{len(bad)} of {len(records)} records in {path} have no string field "
                                f"{text_field!r} (the first at line {bad[0]}); pass --text-field NAME")  # fmt: skip
        items = [(str(r.get("id", n)), r[text_field]) for n, r in records]
    else:
        _check_file(path, "pass a text file of one document a line, or a .jsonl file", "text file")
        lines = path.read_text(encoding="utf-8").splitlines()
        items = [(str(n), line) for n, line in enumerate(lines, 1) if line.strip()]
    if not items:
        raise ClassifyError(f"{path} holds no documents (zero documents to classify)")
    return items


# ---------------------------------------------------------------------------------------------------------
# metrics


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over `bins` equal-width bins of confidence in [0, 1] (the last bin includes 1)."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)


def classification_metrics(y: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Metrics of probabilities `probs` (N, n_labels) against true label indices `y` (N,)."""
    pred = probs.argmax(axis=1)
    n, k = len(y), len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    f1 = {}
    for i, lab in enumerate(labels):
        tp, fp, fn = confusion[i, i], confusion[:, i].sum() - confusion[i, i], confusion[i].sum() - confusion[i, i]
        if tp + fp + fn:  # the label occurs (as truth or as prediction)
            f1[lab] = float(2 * tp / (2 * tp + fp + fn))
    correct = pred == y
    lo, hi = wilson(int(correct.sum()), n)
    return {
        "n": int(n),
        "labels": labels,
        "accuracy": float(correct.mean()),
        "accuracy_ci95": [lo, hi],
        "macro_f1": float(np.mean(list(f1.values()))),
        "f1": f1,
        "ece": expected_calibration_error(probs.max(axis=1), correct.astype(np.float64)),
        "mean_confidence": float(probs.max(axis=1).mean()),
        "log_loss": float(-np.mean(np.log(np.clip(probs[np.arange(n), y], 1e-12, None)))),
        "confusion": confusion.tolist(),
    }


def plot_confusion(confusion: np.ndarray, labels: list[str], out: str | Path) -> None:
    """The confusion matrix (rows true, columns predicted; counts written in the cells) as an image, atomically."""
    import matplotlib  # local: slow to import, used only here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(labels)
    size = max(4.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = confusion.max() if confusion.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center",
                    color="white" if confusion[i, j] > top / 2 else "black", fontsize=8)  # fmt: skip
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=100)
    plt.close(fig)
