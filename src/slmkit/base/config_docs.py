"""The help text of config fields: the docstring written right under each field of the config dataclasses
(`slmkit.base.config`, `slmkit.base.config_sections`), read from their source with `ast`, once. `slm --help`, the
CLI flags that mirror a field and `slm config show` read it through `slmkit.base.config.field_help` / `describe`.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

SOURCES = ("config.py", "config_sections.py")  # the modules in this folder that define the config tree


@functools.cache
def _docs_by_class() -> dict[str, dict[str, str]]:
    """Class name -> {field name -> the docstring written right under it}, for every class of the config modules
    (one parse of each file: `inspect.getsource` per class is several times slower, and `slm --help` reads them)."""
    classes = []
    for source in (Path(__file__).with_name(name) for name in SOURCES):  # the tree and its leaf sections
        try:
            classes += [n for n in ast.parse(source.read_text(encoding="utf-8")).body if isinstance(n, ast.ClassDef)]
        except OSError:  # pragma: no cover - source not available (frozen app)
            continue
    out = {}
    for cls in classes:
        docs = out.setdefault(cls.name, {})
        for node, nxt in zip(cls.body, cls.body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else None
                if isinstance(doc, str):
                    docs[node.target.id] = " ".join(doc.split())
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written right under it in the class body."""
    return _docs_by_class().get(cls.__name__, {})
