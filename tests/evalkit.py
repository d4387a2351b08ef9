"""Tiny runs shared by the evaluation, export and compare tests: a bpe tokenizer on stdlib text, a few steps."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import tiny_overrides

# 5 steps, no doctor; the tokenizer is the bpe dataset's and make_run sets model.block_size
RUN = tiny_overrides("train.max_steps=5", "train.doctor=false",
                     drop=("model.block_size", "train.log_every", "tokenizer.kind"))  # fmt: skip
LLAMA = [
    "model.norm=rmsnorm",
    "model.pos_emb=rope",
    "model.mlp=swiglu",
    "model.bias=false",
    "model.n_kv_head=1",
    "model.tie_embeddings=false",
]


def make_dataset(root: Path, tokenizer: str = "bpe:512") -> Path:
    from slmkit.data.prepare import prepare

    src = root / "corpus"
    src.mkdir(parents=True, exist_ok=True)
    stdlib = Path(os.__file__).parent
    for name in ("textwrap.py", "shlex.py", "fnmatch.py", "bisect.py", "heapq.py", "glob.py"):
        (src / name).write_text((stdlib / name).read_text(encoding="utf-8"), encoding="utf-8")
    out = root / f"data-{tokenizer.replace(':', '')}"
    prepare(str(src), tokenizer=tokenizer, out=out, val_fraction=0.3, progress=False)
    return out


def make_run(root: Path, dataset: Path, name: str, *extra: str, block_size: int = 256) -> Path:
    from slmkit.base.config_files import load_config
    from slmkit.engine.train import train

    ov = [
        *RUN,
        f"model.block_size={block_size}",
        f"data.dir={dataset}",
        f"train.out_dir={root / 'runs'}",
        f"train.name={name}",
        *extra,
    ]
    return train(load_config(None, ov), overrides=ov, progress=False)
