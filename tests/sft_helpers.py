"""Helpers shared by the fine-tuning tests: a tiny pretrained bpe run and small SFT files, built in seconds."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import tiny_overrides

from slmkit.base.config_files import load_config
from slmkit.engine.train import train

# block 64, an eval every 10 steps, no doctor; base_run sets tokenizer.kind
BASE = tiny_overrides("model.block_size=64", "train.eval_every=10", "train.log_every=10", "train.doctor=false",
                      drop=("tokenizer.kind",))  # fmt: skip
SMALL_SFT = ["train.max_steps=6", "train.eval_every=3", "train.eval_batches=2", "train.batch_size=4"]


def alpaca_records(n: int) -> list[dict]:
    """Short, learnable instruction records (copy a word n times)."""
    words = ["apple", "river", "stone", "cloud", "green", "light", "house", "bread"]
    out = []
    for i in range(n):
        w, k = words[i % len(words)], 1 + i % 3
        out.append({"instruction": f"Repeat the word {w} {k} times.", "input": "", "output": " ".join([w] * k)})
    return out


def write_alpaca(path: Path, n: int = 40, jsonl: bool = False) -> Path:
    recs = alpaca_records(n)
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    else:
        path.write_text(json.dumps(recs, indent=1))
    return path


def base_run(root: Path, corpus: Path, tokenizer: str = "bpe:400", name: str = "base") -> Path:
    """Pretrain a tiny model on `corpus` (a folder) with `tokenizer`; returns the run dir."""
    from slmkit.data.prepare import prepare

    data = prepare(str(corpus), tokenizer=tokenizer, out=root / f"data-{name}", val_fraction=0.2, progress=False)
    ov = [*BASE, f"data.dir={data}", f"tokenizer.kind={tokenizer}", f"train.out_dir={root / 'runs'}",
          f"train.name={name}"]  # fmt: skip
    return train(load_config(None, ov), overrides=ov, progress=False)


def make_corpus(root: Path, stdlib_dir: Path) -> Path:
    corpus = root / "corpus"
    corpus.mkdir(exist_ok=True)
    for name in ("textwrap.py", "shlex.py", "fnmatch.py", "bisect.py", "colorsys.py", "heapq.py"):
        (corpus / name).write_text((stdlib_dir / name).read_text(encoding="utf-8"), encoding="utf-8")
    (corpus / "words.txt").write_text(" ".join(r["output"] + " " + r["instruction"] for r in alpaca_records(200)))
    return corpus
