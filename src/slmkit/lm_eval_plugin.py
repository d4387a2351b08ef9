"""Makes the plain `lm_eval --model slmkit --model_args run=runs/x --tasks ...` command work.

lm-eval (0.4.x) finds models only in its own registry and has no plugin entry point. So `make setup` (or
`python -m slmkit.lm_eval_plugin`) writes a one-line `.pth` file into site-packages that imports this module at
interpreter start. It does nothing until something imports `lm_eval.models` (lm-eval's own model registry);
right after that module has run, it imports `slmkit.engine.evaluate.harness`, which registers the `slmkit` model.
Programs that never use lm-eval pay one tiny import.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import sysconfig
from pathlib import Path

TARGET = "lm_eval.models"
PTH_NAME = "slmkit-lm-eval.pth"


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # one shot; let the normal finders locate lm-eval's module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_then_register(module):
            run_module(module)
            try:
                import slmkit.engine.evaluate.harness  # noqa: F401  (registers "slmkit")
            except ImportError:  # lm-eval without its optional parts: its own models still work
                pass

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Register `slmkit` with lm-eval as soon as lm-eval loads its models (called from the .pth file)."""
    if TARGET in sys.modules:
        import slmkit.engine.evaluate.harness  # noqa: F401
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def write_pth(site_packages: str | Path | None = None) -> Path:
    """Write the .pth file into this interpreter's site-packages; returns its path."""
    path = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    path.write_text("import slmkit.lm_eval_plugin; slmkit.lm_eval_plugin.install()\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"wrote {write_pth()}: `lm_eval --model slmkit ...` now finds the slmkit model")
