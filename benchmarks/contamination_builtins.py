"""Which eval sets the built-in corpora share text with: 13-gram overlap (the check `slm prepare` runs) of every
built-in corpus against every eval task whose files are in $SLM_DATA_DIR (HellaSwag, ARC, PIQA, WinoGrande,
LAMBADA, MMLU and the STS test sets). The README quotes the result.

    python benchmarks/contamination_builtins.py

Writes benchmarks/results/contamination_builtins.{json,md}.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from slmkit.data.quality.decontam import Contamination
from slmkit.data.sources import BUILTINS, DataError, iter_documents
from slmkit.engine.contamination import eval_index

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 256


def main() -> None:
    t0 = time.time()
    index, notes = eval_index()
    out = {"tasks": list(index.tasks) if index else [], "notes": notes, "corpora": {}}
    for name in BUILTINS:
        try:
            docs = [d.text for d in iter_documents(name)]
        except DataError as e:  # a built-in that is neither local nor downloadable here
            out["corpora"][name] = {"error": str(e)}
            continue
        found = Contamination(index)
        for i in range(0, len(docs), BATCH):
            batch = docs[i : i + BATCH]
            for text, hits in zip(batch, index.matches(batch)):
                found.record(text, hits)
        out["corpora"][name] = found.summary()
    out["seconds"] = round(time.time() - t0, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "contamination_builtins.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [f"# 13-gram overlap of the built-in corpora with the eval sets ({time.strftime('%Y-%m-%d')})", "",
             f"Tasks checked: {', '.join(out['tasks'])}." + (f" Skipped: {'; '.join(notes)}." if notes else ""), "",
             "| corpus | documents | overlapping tasks (documents, items hit / items) |",
             "| --- | ---: | --- |"]  # fmt: skip
    for name, res in out["corpora"].items():
        if "error" in res:
            lines.append(f"| {name} | | not read: {res['error']} |")
            continue
        hits = ", ".join(f"{t} ({v['documents']}, {v['items']}/{v['of_items']})" for t, v in res["overlap"].items())
        lines.append(f"| {name} | {res['documents_checked']:,} | {hits or 'none'} |")
    lines += ["", f"`python benchmarks/contamination_builtins.py`, {out['seconds']:.0f} s"]
    (RESULTS / "contamination_builtins.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
