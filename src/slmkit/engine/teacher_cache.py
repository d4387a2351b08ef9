"""A teacher's top-K next-token logits over a dataset's training split, computed once (`distill.topk` > 0).

On-the-fly distillation runs the teacher's forward at every student step; for a teacher many times the student's
size that forward costs more than the student's whole step (benchmarks/bench_distill.py measures it). With
`distill.topk = K` the teacher reads the training split once instead, in consecutive windows of the student's
block size, and keeps for every position p of the split its K largest logits (fp16) and their token ids: row p
holds what the teacher predicts after tokens ..p. A student window starting at offset s then looks up rows
s .. s+T-1 (`TokenLoader(positions=True)` gives s), so its step costs a gather instead of a forward.

The teacher's context at row p is the part of p's cached window up to p (1 to T tokens), where the student at the
same token sees its own window's (also 1 to T tokens, from another start): the soft targets come from the same
model under a context of the same length range, not the student's exact one. The KL is then taken over the K
cached tokens (`slmkit.engine.distill.distill_loss`), the usual truncation of sparse or cached distillation.

The cache lives beside the teacher, `TEACHER_RUN/distill-cache/KEY/` (meta.json, values.npy, ids.npy), KEY naming
the teacher checkpoint, the dataset, the block size and K, so every later student of that teacher on that data
reuses it. It is built under a temporary name and renamed into place complete (`base.atomic.atomic_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slmkit.base.atomic import atomic_dir
from slmkit.base.console import progress as progress_bar
from slmkit.data.dataset import META_FILE
from slmkit.data.loader import TokenLoader

CACHE_DIR = "distill-cache"
FORMAT = 1
WINDOWS_PER_FORWARD = 16


def cache_key(checkpoint: Path, dataset_dir: Path, block_size: int, k: int) -> str:
    """What the cached logits depend on: the teacher's weights file, the dataset, the windows and K."""
    weights = sorted(p for p in Path(checkpoint).iterdir() if p.is_file())
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    meta = (Path(dataset_dir) / META_FILE).read_bytes()
    text = json.dumps([FORMAT, str(Path(checkpoint).resolve()), stamp, hashlib.sha256(meta).hexdigest(), block_size, k])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class TeacherCache:
    """The cached top-K logits (N, K) fp16 and ids (N, K) of a split of N tokens, memory-mapped."""

    dir: Path
    values: np.ndarray
    ids: np.ndarray
    meta: dict

    @classmethod
    def open(cls, dir: Path) -> TeacherCache:
        meta = json.loads((dir / "meta.json").read_text())
        values, ids = (np.load(dir / f"{n}.npy", mmap_mode="r") for n in ("values", "ids"))
        return cls(dir, values, ids, meta)

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def lookup(self, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (B, T, K) float32, ids (B, T, K) int64) of the windows starting at `starts` (B,)."""
        rows = starts.numpy()[:, None] + np.arange(block_size)  # (B, T): row of each input position
        values = torch.from_numpy(np.asarray(self.values[rows.reshape(-1)], dtype=np.float32))
        ids = torch.from_numpy(np.asarray(self.ids[rows.reshape(-1)]).astype(np.int64))
        return values.view(*rows.shape, -1), ids.view(*rows.shape, -1)


def ensure_cache(teacher: torch.nn.Module, run_dir: Path, checkpoint: Path, dataset_dir: Path, block_size: int,
                 k: int, vocab: int, autocast=contextlib.nullcontext,
                 progress: bool = True) -> tuple[Path, float | None]:  # fmt: skip
    """The cache directory of `teacher` (run `run_dir`, weights of `checkpoint`) over the training split of
    `dataset_dir`, built now unless it was before (`autocast`: the context of the teacher's forwards). Returns (its
    path for `TeacherCache.open`, seconds the build took; None when it was already there)."""
    dir = Path(run_dir) / CACHE_DIR / cache_key(checkpoint, dataset_dir, block_size, k)
    if (dir / "meta.json").is_file():
        return dir, None
    t0 = time.perf_counter()
    loader = TokenLoader(dataset_dir, "train", 1, block_size)
    n, T = loader.num_tokens, block_size
    starts = list(range(0, n - T, T))  # a window reads T + 1 tokens, so the last start is n - T - 1
    if starts[-1] + T < n - 1:
        starts.append(n - T - 1)  # the tail: rows up to n - 2 are the last any student window looks up
    with atomic_dir(dir) as tmp:
        values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np.float16, shape=(n, k))
        ids = np.lib.format.open_memmap(tmp / "ids.npy", mode="w+", dtype=np.uint16 if vocab <= 65536 else np.int32,
                                        shape=(n, k))  # fmt: skip
        bar = progress_bar(len(starts), "teacher logits", "window", enabled=progress)
        with torch.no_grad(), bar:
            for i in range(0, len(starts), WINDOWS_PER_FORWARD):
                chunk = np.array(starts[i : i + WINDOWS_PER_FORWARD], dtype=np.int64)
                x = torch.from_numpy(loader.rows(chunk)[:, :-1].astype(np.int64))
                with autocast():
                    logits, _ = teacher(x)
                top = logits[..., :vocab].float().topk(k, dim=-1)
                rows = (chunk[:, None] + np.arange(T)).reshape(-1)
                values[rows] = top.values.reshape(-1, k).numpy().astype(np.float16)
                ids[rows] = top.indices.reshape(-1, k).numpy()
                bar.update(len(chunk))
        values.flush(), ids.flush()
        del values, ids
        seconds = time.perf_counter() - t0
        meta = {"format": FORMAT, "teacher_checkpoint": str(checkpoint), "dataset": str(dataset_dir), "rows": n,
                "block_size": T, "k": k, "vocab": vocab, "windows": len(starts),
                "seconds": round(seconds, 1)}  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return dir, seconds
