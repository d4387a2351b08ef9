"""Makes the plain `lm_eval --model slmkit --model_args run=runs/x --tasks slm_hellaswag ...` command work.

lm-eval (0.4.x) finds models only in its own registry and tasks only on a TaskManager's include path, and has no
plugin entry point for either. So `make setup` (or `python -m slmkit.lm_eval_plugin`) writes a one-line `.pth` file
into site-packages that imports this module at interpreter start. It does nothing until lm-eval itself is imported:

- right after `lm_eval.tasks.manager` has run, TaskManager is wrapped so that every TaskManager also indexes slmkit's
  task folder (engine/evaluate/lm_eval_tasks: slm_hellaswag, slm_arc_easy, ... over the data in $SLM_DATA_DIR/eval).
  It comes before any --include_path, so a folder given there overrides a task of the same name;
- right after `lm_eval.models` (lm-eval's model registry) has run, `slmkit.engine.evaluate.harness` is imported,
  which registers the `slmkit` model (and makes lm-eval record the run's name and the real device for it).

Programs that never use lm-eval pay one tiny import; the task hook imports nothing of slmkit.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import inspect
import sys
import sysconfig
from pathlib import Path

MODELS, TASK_MANAGER = "lm_eval.models", "lm_eval.tasks.manager"
PTH_NAME = "slmkit-lm-eval.pth"
TASK_DIR = Path(__file__).parent / "engine" / "evaluate" / "lm_eval_tasks"  # harness.TASK_DIR


def register_model(_module=None) -> None:
    try:
        import slmkit.engine.evaluate.harness  # noqa: F401  (registers "slmkit"; imports lm-eval: only on demand)
    except ImportError:  # lm-eval without its optional parts: its own models still work
        pass


def include_slmkit_tasks(manager_module) -> None:
    """Make `manager_module.TaskManager` index TASK_DIR first, whatever include_path it is given (once)."""
    cls = getattr(manager_module, "TaskManager", None)
    init = getattr(cls, "__init__", None)
    if init is None or getattr(init, "_slmkit", False) or "include_path" not in inspect.signature(init).parameters:
        return

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        bound = inspect.signature(init).bind(self, *args, **kwargs)
        given = bound.arguments.get("include_path")
        given = [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
        ours = TASK_DIR.resolve()
        bound.arguments["include_path"] = [ours, *(p for p in given if Path(p).resolve() != ours)]
        init(*bound.args, **bound.kwargs)

    __init__._slmkit = True
    cls.__init__ = __init__


HOOKS = {TASK_MANAGER: include_slmkit_tasks, MODELS: register_model}


class _RunAfterImport(importlib.abc.MetaPathFinder):
    """Runs HOOKS[name](module) right after lm-eval's module `name` has executed; gone once all have run."""

    def __init__(self, names):
        self.pending = set(names)

    def find_spec(self, name, path=None, target=None):
        if name not in self.pending:
            return None
        self.pending.discard(name)
        if not self.pending:
            sys.meta_path.remove(self)
        # let the normal finders locate lm-eval's module (this finder skips the name now)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_then_hook(module):
            run_module(module)
            HOOKS[name](module)

        spec.loader.exec_module = exec_then_hook
        return spec


def install() -> None:
    """Hook slmkit into lm-eval as soon as lm-eval loads its task manager and its models (called by the .pth)."""
    if any(isinstance(f, _RunAfterImport) for f in sys.meta_path):
        return
    for name in [n for n in HOOKS if n in sys.modules]:
        HOOKS[name](sys.modules[name])
    pending = [n for n in HOOKS if n not in sys.modules]
    if pending:
        sys.meta_path.insert(0, _RunAfterImport(pending))


def write_pth(site_packages: str | Path | None = None) -> Path:
    """Write the .pth file into this interpreter's site-packages; returns its path."""
    path = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    path.write_text("import slmkit.lm_eval_plugin; slmkit.lm_eval_plugin.install()\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"wrote {write_pth()}: `lm_eval --model slmkit --tasks slm_hellaswag ...` now finds our model and tasks")
