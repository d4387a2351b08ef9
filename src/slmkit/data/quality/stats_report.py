"""The charts and the offline HTML page of `slm data stats` (matplotlib, imported only when charts are drawn)."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def _plt():
    import matplotlib  # optional and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional and slow to import

    return plt


def write_charts(stats: dict, out: Path) -> list[Path]:
    """PNG charts into `out`: document length histograms, character classes, language mix, duplicates and
    boilerplate per source, top tokens (or words). Returns their paths."""
    plt = _plt()
    sources = stats["sources"]
    paths = []

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, s in sources.items():
        h = s["bytes_per_doc"]
        if h["counts"]:
            ax.step(h["edges"][1:], h["counts"], where="pre", label=_short(name))
    ax.set(xscale="log", xlabel="bytes per document (power-of-two bins)", ylabel="documents",
           title="Document lengths")  # fmt: skip
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "lengths.png", plt))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(sources)
    for ax, key, title in ((axes[0], "char_classes", "Character classes"),
                           (axes[1], "languages", "Language (script + English function words)")):  # fmt: skip
        cats = sorted({c for s in sources.values() for c, v in s[key].items() if v >= 0.001})
        width = 0.8 / max(1, len(names))
        for k, name in enumerate(names):
            vals = [100 * sources[name][key].get(c, 0) for c in cats]
            ax.bar([i + k * width for i in range(len(cats))], vals, width, label=_short(name))
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, rotation=45, ha="right", fontsize=8)
        ax.set(ylabel="%", yscale="log", title=title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, out / "characters.png", plt))

    fig, ax = plt.subplots(figsize=(8, 4))
    keys = [("exact_duplicate_rate", "exact duplicates"), ("near_duplicate_rate", "near duplicates"),
            ("repeated_line_share", "repeated lines"), ("boilerplate_byte_share", "boilerplate bytes")]  # fmt: skip
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        ax.bar([i + k * width for i in range(len(keys))], [100 * sources[name][key] for key, _ in keys], width,
               label=_short(name))  # fmt: skip
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], [label for _, label in keys])
    ax.set(ylabel="% of documents / lines / bytes", title="Duplicates and boilerplate")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "duplicates.png", plt))

    first = next(iter(sources.values()))
    top = first.get("top_tokens") or first["top_words"]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.barh([repr(k)[1:-1] if isinstance(k, str) else str(k) for k, _ in top][::-1], [v for _, v in top][::-1])
    ax.set(xlabel="count", title=f"Top {'tokens' if 'top_tokens' in first else 'words'}: {_short(next(iter(sources)))}")
    fig.tight_layout()
    paths.append(_save(fig, out / "top.png", plt))
    return paths


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "..." + name[-width + 3 :]


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def write_html(stats: dict, markdown: str, charts: list[Path], path: Path) -> None:
    """A self-contained page (charts embedded as data: URLs; also beside it as files): the summary and charts."""
    imgs = "\n".join(f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                     for p in charts)  # fmt: skip
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Corpus statistics</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}pre{{white-space:pre-wrap;background:#f6f6f6;
padding:1em}}img{{max-width:100%;display:block;margin:1em 0}}</style></head><body>
<h1>Corpus statistics</h1>{imgs}<h2>Summary</h2><pre>{html.escape(markdown)}</pre></body></html>"""
    path.write_text(page, encoding="utf-8")
