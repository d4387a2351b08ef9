"""Evaluation: loss / perplexity / bits per byte, zero-shot benchmarks scored as lm-eval scores them, the lm-eval
adapter (`harness.py`, imported lazily: it needs lm-eval installed).

    from slmkit.engine.evaluate import evaluate_run, format_table
    results = evaluate_run("runs/x", ["val", "hellaswag"], limit=500)
    print(format_table(results))
"""

from slmkit.engine.evaluate.suite import evaluate_run, evaluate_tasks, format_table, run_task
from slmkit.engine.evaluate.tasks import TASKS, TaskError, known_tasks

__all__ = ["TASKS", "TaskError", "evaluate_run", "evaluate_tasks", "format_table", "known_tasks", "run_task"]
