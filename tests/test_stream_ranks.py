"""Stream mode under several processes: 2 gloo processes read disjoint documents whose union is the one-process set,
both when there are enough units to split (parquet row groups) and when there are not (one jsonl unit: every W-th
document)."""

import hashlib
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slmkit.base.tokenizer import CharTokenizer
from slmkit.data.stream import Pos, StreamLoader
from slmkit.data.stream_data import plan_sources
from slmkit.data.stream_reader import Reader

WORKER = """
import hashlib, json, sys
import torch.distributed as dist
from slmkit.base.tokenizer import load_tokenizer
from slmkit.data.stream import Pos, StreamLoader
from slmkit.data.stream_data import plan_sources
from slmkit.data.stream_reader import Reader

rank, world, init, tok_dir, out, *sources = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]
dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
tok = load_tokenizer(tok_dir)
result = {}
for source in sources:
    class Cfg:
        mix, text_field, include, exclude = [], "text", [], []
    Cfg.source = source
    loader = StreamLoader(plan_sources(Cfg), Reader(tok_dir, "text", 0.1, 7, "<u2"), tok, 2, 16, seed=5,
                          shuffle_buffer=4, rank=rank, world_size=world)
    seen = []
    for e, _, _, _, tokens in loader.packers[0].stream.documents(Pos()):
        if e > 0:
            break
        seen.append(hashlib.sha1(tokens.tobytes()).hexdigest())
    everyone = [None] * world
    dist.all_gather_object(everyone, seen)
    result[source] = everyone
if rank == 0:
    json.dump(result, open(out, "w"))
dist.destroy_process_group()
"""


class _Cfg:
    mix, text_field, include, exclude = [], "text", [], []

    def __init__(self, source):
        self.source = source


def _docs(n):
    return [f"document {i}: " + "lorem ipsum dolor sit amet " * (1 + i % 7) for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    texts = _docs(150)
    (root / "pq").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"text": texts[i * 50 : (i + 1) * 50]}), root / "pq" / f"p{i}.parquet",
                       row_group_size=10)  # fmt: skip
    with open(root / "one.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts[:60])
    tok_dir = CharTokenizer.from_texts(texts).save(root / "tok")
    return root, str(tok_dir)


def _one_process(source, tok_dir):
    from slmkit.base.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    loader = StreamLoader(plan_sources(_Cfg(source)), Reader(tok_dir, "text", 0.1, 7, "<u2"), tok, 2, 16, seed=5,
                          shuffle_buffer=4)  # fmt: skip
    seen = []
    for e, _, _, _, tokens in loader.packers[0].stream.documents(Pos()):
        if e > 0:
            break
        seen.append(hashlib.sha1(tokens.tobytes()).hexdigest())
    return seen


def test_two_gloo_processes_read_disjoint_documents(corpus, tmp_path):
    """pq: 15 row groups split between the ranks; one.jsonl: one unit, every other document per rank."""
    root, tok_dir = corpus
    sources, out = [str(root / "pq"), str(root / "one.jsonl")], tmp_path / "seen.json"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(r), "2", str(tmp_path / "pg"), tok_dir, str(out),
                               *sources], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]  # fmt: skip
    singles = {source: _one_process(source, tok_dir) for source in sources}
    for p in procs:
        text, _ = p.communicate(timeout=240)
        assert p.returncode == 0, text[-3000:]
    seen = json.loads(out.read_text())
    for source, single in singles.items():
        a, b = seen[source]
        assert a and b, f"{source}: each rank reads documents"
        assert not set(a) & set(b), f"{source}: the ranks share documents"
        assert sorted(a + b) == sorted(single), f"{source}: the ranks together read other documents than one process"
        assert len(single) == len(set(single)) > 40
