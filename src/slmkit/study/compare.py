"""Side by side: the same prompts and seeds through several models, each generation scored by every model.

`slm compare RUN_A RUN_B [HF_DIR ...] --prompts FILE` writes compare.md and a self-contained compare.html: per
prompt, one row per (model, seed) with the generated text and its perplexity under every model (the perplexity of
the generation given the prompt, per token of the scoring model's own tokenizer; lower means that model finds
the text more likely). Reading what a model says is the evaluation numbers cannot replace.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

from slmkit.base.atomic import atomic_write_text
from slmkit.base.errors import SlmError
from slmkit.engine.evaluate.scoring import Scorer, encode_pair
from slmkit.model.generate import sample_text
from slmkit.model.hf import load_hf_model
from slmkit.runs.checkpoint import is_run_dir, load_model


@dataclass
class Entry:
    name: str
    model: object
    tokenizer: object


def load_entry(path: str | Path, checkpoint: str = "best") -> Entry:
    """A run dir or a Hugging Face model directory, loaded as our GPT."""

    path = Path(path)
    if is_run_dir(path):
        model, tok, _, _ = load_model(path, checkpoint)
    elif (path / "config.json").is_file():
        model, tok, _ = load_hf_model(path)
    else:
        raise SlmError(f"{path} is neither a run directory nor a Hugging Face model directory")
    return Entry(path.name, model, tok)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .jsonl file (field "prompt") or a text file (one per line, `\\n` for a newline)."""
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"no prompts file {path}; write one prompt per line")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        return [json.loads(ln)["prompt"] for ln in lines]
    return [ln.replace("\\n", "\n") for ln in lines]


def perplexity(entry: Entry, prompt: str, text: str) -> float:
    """exp(mean negative log-likelihood) of `text` after `prompt`, in the entry's tokens (nan for empty text)."""

    if not text:
        return float("nan")
    ctx, cont = encode_pair(entry.tokenizer, prompt, text)
    if not cont:
        return float("nan")
    ll, _ = Scorer(entry.model).score_full(ctx, cont)
    return math.exp(-ll / min(len(cont), entry.model.config.block_size))


def compare(
    models: list[str | Path],
    prompts: list[str],
    out: str | Path = "compare",
    *,
    seeds: tuple[int, ...] = (0,),
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 0,
    checkpoint: str = "best",
) -> dict:
    """Generate from every model for every prompt and seed; score each generation under every model; write
    OUT/compare.md and OUT/compare.html (atomic). Returns the rows as data."""

    if not models:
        raise SlmError("compare needs at least one run or HF directory")
    entries = [load_entry(m, checkpoint) for m in models]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        names = [f"{i + 1}:{n}" for i, n in enumerate(names)]
        for e, n in zip(entries, names):
            e.name = n
    rows = []
    for prompt in prompts:
        for entry in entries:
            for seed in seeds:
                text = sample_text(
                    entry.model,
                    entry.tokenizer,
                    prompt,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_k=top_k,
                    seed=seed,
                )
                ppl = {e.name: perplexity(e, prompt, text) for e in entries}
                rows.append({"prompt": prompt, "model": entry.name, "seed": seed, "text": text, "ppl": ppl})
    result = {
        "models": [str(m) for m in models],
        "names": names,
        "seeds": list(seeds),
        "rows": rows,
        "settings": {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k},
    }
    out = Path(out)
    atomic_write_text(out / "compare.md", to_markdown(result))
    atomic_write_text(out / "compare.html", to_html(result))
    return result


def _fmt(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.2f}"


def to_markdown(result: dict) -> str:
    names, s = result["names"], result["settings"]
    lines = [
        f"# Side by side: {', '.join(names)}",
        "",
        f"temperature {s['temperature']}, top-k {s['top_k']}, {s['max_new_tokens']} new tokens, seeds "
        f"{result['seeds']}; ppl = perplexity of the generation under each model (lower: more likely).",
        "",
    ]
    for prompt in dict.fromkeys(r["prompt"] for r in result["rows"]):
        lines += [
            f"## Prompt: `{prompt!r}`",
            "",
            "| model | seed | generation | " + " | ".join(f"ppl {n}" for n in names) + " |",
            "|---|---:|---|" + "---:|" * len(names),
        ]
        for r in (r for r in result["rows"] if r["prompt"] == prompt):
            text = r["text"].replace("|", "\\|").replace("\n", "<br>")
            lines.append(
                f"| {r['model']} | {r['seed']} | {text} | " + " | ".join(_fmt(r["ppl"][n]) for n in names) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def to_html(result: dict) -> str:
    names = result["names"]
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>slm compare</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:.4em;vertical-align:top}pre{white-space:pre-wrap;margin:0;"
        "max-width:60em}td.n{text-align:right;font-variant-numeric:tabular-nums}</style></head><body>",
        f"<h1>Side by side: {e(', '.join(names))}</h1>",
    ]
    for prompt in dict.fromkeys(r["prompt"] for r in result["rows"]):
        parts.append(
            f"<h2>Prompt</h2><pre>{e(prompt)}</pre><table><tr><th>model</th><th>seed</th><th>generation</th>"
            + "".join(f"<th>ppl {e(n)}</th>" for n in names)
            + "</tr>"
        )
        for r in (r for r in result["rows"] if r["prompt"] == prompt):
            parts.append(
                f"<tr><td>{e(r['model'])}</td><td class=n>{r['seed']}</td><td><pre>{e(r['text'])}</pre></td>"
                + "".join(f"<td class=n>{_fmt(r['ppl'][n])}</td>" for n in names)
                + "</tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
