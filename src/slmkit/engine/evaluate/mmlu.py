"""MMLU (Hendrycks et al. 2021): 57 subjects of four-way multiple choice, 0-shot (`mmlu`) and 5-shot (`mmlu_5shot`).

Prompts are lm-eval's `mmlu` task (lm_eval/tasks/mmlu/default), so the numbers equal lm-eval's on the same items
(tests/test_mmlu.py runs lm-eval's own task files over these questions):

    The following are multiple choice questions (with answers) about {subject, underscores as spaces}.\\n\\n
    [k solved examples: the first k of the subject's dev split, each "{question}\\nA. ..\\nD. ..\\nAnswer: {letter}"
     followed by "\\n\\n"]
    {question.strip()}\\nA. {choice 0}\\nB. {choice 1}\\nC. {choice 2}\\nD. {choice 3}\\nAnswer:

scored by the log-likelihood of " A", " B", " C", " D" (acc). The files are `$SLM_DATA_DIR/eval/mmlu/{dev,test}/
<subject>_{dev,test}.csv` with a header `question,choice0,choice1,choice2,choice3,answer` (SOURCES.md section 8).

Reported: `acc` over all questions (lm-eval's group score: weighted by subject size), `acc_macro` (the mean of the
57 subject accuracies, as the MMLU paper averages), and every subject's accuracy and count. `limit` applies per
subject, as lm-eval's --limit does for a group.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from slmkit.base.errors import SlmError

MMLU_TASKS = {"mmlu": 0, "mmlu_5shot": 5}
"""task name -> number of solved examples before each question."""
LETTERS = ("A", "B", "C", "D")


class MmluError(SlmError):
    """Missing or malformed MMLU files."""


@dataclass(frozen=True)
class Question:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int

    def text(self) -> str:
        """lm-eval's doc_to_text."""
        lines = [self.question.strip()] + [f"{letter}. {c}" for letter, c in zip(LETTERS, self.choices)]
        return "\n".join(lines) + "\nAnswer:"


def mmlu_dir(root: str | Path) -> Path:
    """The MMLU folder under an eval-data root (tasks.data_root(): $SLM_DATA_DIR/eval)."""
    return Path(root) / "mmlu"


def subjects(root: str | Path) -> list[str]:
    """The subjects with a test file, sorted; MmluError saying where the files go when there are none."""
    folder = mmlu_dir(root) / "test"
    names = sorted(p.name.removesuffix("_test.csv") for p in folder.glob("*_test.csv"))
    if not names:
        raise MmluError(f"task mmlu: no <subject>_test.csv files in {folder}; put MMLU there (format in "
                        "$SLM_DATA_DIR/SOURCES.md, section 8) or point SLM_DATA_DIR at a folder with "
                        "eval/mmlu/")  # fmt: skip
    return names


def read_questions(path: Path, subject: str) -> list[Question]:
    """One subject's CSV file (header row, answer as the index 0-3)."""
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                choices = tuple(row[f"choice{i}"] for i in range(4))
                answer = int(row["answer"])
                if not 0 <= answer < 4:
                    raise ValueError(f"answer {answer} is not 0-3")
                out.append(Question(subject, row["question"], choices, answer))  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError) as e:
                raise MmluError(f"{path}, line {n}: {type(e).__name__}: {e} (expected columns question, choice0-3, "
                                "answer as 0-3)") from None  # fmt: skip
    return out


def description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def prompt(q: Question, shots: list[Question]) -> str:
    """The full context of one question after `shots` solved examples (lm-eval's fewshot_context, plain text)."""
    solved = "".join(f"{s.text()} {LETTERS[s.answer]}\n\n" for s in shots)
    return description(q.subject) + solved + q.text()


def mmlu_requests(name: str, root: str | Path, limit: int = 0) -> list[tuple[str, str, int]]:
    """(subject, context, gold) of every scored question, subjects in name order, the first `limit` of each."""
    k = MMLU_TASKS[name]
    out = []
    for subject in subjects(root):
        questions = read_questions(mmlu_dir(root) / "test" / f"{subject}_test.csv", subject)
        shots = []
        if k:
            dev = mmlu_dir(root) / "dev" / f"{subject}_dev.csv"
            if not dev.is_file():
                raise MmluError(f"task {name}: {dev} is missing (the {k} solved examples come from the dev split)")
            shots = read_questions(dev, subject)[:k]
            if len(shots) < k:
                raise MmluError(f"task {name}: {dev} has {len(shots)} questions, {k} are needed")
        for q in questions[:limit] if limit else questions:
            out.append((subject, prompt(q, shots), q.answer))
    return out


CONTINUATIONS = [" " + letter for letter in LETTERS]


def mmlu_metrics(subjects_of: list[str], correct: list[bool]) -> dict:
    """acc over all questions (with its stderr), acc_macro over subjects, and per-subject acc and n."""
    per: dict[str, list[bool]] = {}
    for s, c in zip(subjects_of, correct):
        per.setdefault(s, []).append(c)
    n = max(len(correct), 1)
    acc = sum(correct) / n
    stderr = (acc * (1 - acc) / (n - 1)) ** 0.5 if n > 1 else 0.0  # the sample stderr of a mean of 0/1 values
    subject_acc = {s: sum(v) / len(v) for s, v in per.items()}
    return {
        "acc": acc,
        "acc_stderr": stderr,
        "acc_macro": sum(subject_acc.values()) / max(len(subject_acc), 1),
        "subjects": {s: {"acc": subject_acc[s], "n": len(per[s])} for s in per},
    }
