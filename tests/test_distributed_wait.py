"""Rank 0 working alone (`on_main`: making a run dir, preparing a dataset) for longer than the process group's
collective timeout: the other ranks poll the rendezvous store and wait without a deadline."""

import json
import os
import socket
import subprocess
import sys

_ON_MAIN_SCRIPT = """
import json, sys, time
import torch
from slmkit.data.sources import DataError
from slmkit.engine import distributed as d
from slmkit.engine.runtime import Runtime

rank = int(sys.argv[1])
rt = Runtime(device=torch.device("cpu"), dtype="fp32", rank=rank, world_size=2)
d.init_process_group(rt, timeout_s=1)  # collectives would time out after 1 s
out = {"slow": d.on_main(rt, lambda: (time.sleep(4), "prepared")[1])}  # rank 0 works 4 s: the other waits
try:
    d.on_main(rt, lambda: (_ for _ in ()).throw(DataError("empty corpus: x holds no text")))
except DataError as e:
    out["error"] = str(e)
out["agree"] = d.agree(rt, rank == 0)  # a collective still works afterwards
d.teardown()
print(json.dumps(out))
"""


def test_on_main_waits_past_the_collective_timeout(tmp_path):
    """Rank 0 prepares data (here: sleeps) for longer than the process group's timeout: the other rank polls the
    store instead of waiting in a collective, then gets the result, or rank 0's error, and goes on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _ON_MAIN_SCRIPT, str(r)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]  # fmt: skip
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    assert results[0] == results[1] == {"slow": "prepared", "error": "empty corpus: x holds no text", "agree": True}


def test_wait_for_key_polls_without_a_deadline():
    from slmkit.engine.distributed import wait_for_key

    class Store:
        calls = 0

        def check(self, keys):
            self.calls += 1
            return self.calls > 12

    slept = []
    store = Store()
    wait_for_key(store, "k", sleep=slept.append, most_s=0.5)
    assert store.calls == 13 and len(slept) == 12 and max(slept) == 0.5 and slept[0] < 0.05
