"""Fill-in-the-middle: (a) FIM for free, (b) editor-grade latency.

(a) Two models of the same size, trained on the same tokens of python-stdlib (bpe:4096, its FIM tokens reserved),
one with data.fim_rate=0.5 and one with 0. Targets: the FIM model's `fim-line` exact match >= 2x the other's (which
infills by continuing the prefix left to right), and its left-to-right val loss worse by <= 2%.

(b) Latency at batch 1: the `code` preset (briefly trained: latency does not depend on the weights' values),
quantized int8-dynamic (`slm quantize`), a 512-token context (496 prompt tokens of prefix and suffix + 16 new
tokens). Targets: p50 <= 50 ms and p95 <= 100 ms, in-process (`slmkit.data.fim`, exactly 16 tokens, stop ids off)
and through `slm serve` over loopback (POST /v1/completions with `suffix`, max_tokens 16; a reply may stop early at
end-of-middle, so its token count is reported).

    nice -n 5 python benchmarks/bench_fim.py [--work /tmp/slm-bench-fim] [--steps 400] [--items 300] [--set K=V ...]

    nice -n 5 python benchmarks/bench_fim.py --work W --steps 3000 --set model.pos_emb=rope \
        --fim-set data.fim_line_rate=0.5 --name fim_rope_lines --skip-latency     # a variant of the FIM model only

Runs and data are kept in --work and reused by a second call. Writes benchmarks/results/fim.json and fim.md
(fim_4x128.* keep the figures of the default 4 x 128 pair; fim.* now hold --set model.n_embd=256 --set
train.dtype=bf16 --steps 3500).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

RESULTS = Path(__file__).resolve().parent / "results"
QUALITY = ["model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.block_size=256", "train.batch_size=16",
           "optim.lr=3e-3", "optim.min_lr=3e-4", "optim.warmup=50", "train.eval_every=100000", "train.threads=2",
           "train.seed=1", "tokenizer.kind=bpe:4096"]  # fmt: skip
TARGETS = {"fim_exact_ratio": 2.0, "val_loss_worse_pct": 2.0, "p50_ms": 50.0, "p95_ms": 100.0}
CONTEXT, NEW_TOKENS = 512, 16


def prepared(work: Path) -> Path:
    from slmkit.data.prepare import prepare

    out = work / "data" / "python-stdlib-bpe4096"
    if not (out / "meta.json").is_file():
        prepare("python-stdlib", tokenizer="bpe:4096", out=out, progress=False)
    return out


def _shape(cfg) -> tuple:
    """What a reused run must share with this call's config: the size the report names, the dtype, the steps."""
    m = cfg.model
    return m.n_layer, m.n_head, m.n_embd, m.block_size, m.mlp, m.pos_emb, cfg.train.dtype, cfg.train.max_steps


def trained(work: Path, name: str, preset: str, overrides: list[str]) -> tuple[Path, float | None]:
    """(run dir, training seconds; None when the run was already there, which must have the same `_shape`)."""
    from slmkit.base.config_files import load_config
    from slmkit.engine.train import train
    from slmkit.runs.checkpoint import read_run_config

    run = work / "runs" / name
    overrides = [*overrides, f"train.name={name}", f"train.out_dir={work / 'runs'}"]
    cfg = load_config(preset, overrides)
    if (run / "run.json").is_file() and json.loads((run / "run.json").read_text()).get("status") == "finished":
        if _shape(read_run_config(run)) != _shape(cfg):
            raise SystemExit(f"{run} was trained with other settings than this call's (model, dtype or steps); "
                             "pass another --work, or the settings it was trained with")  # fmt: skip
        return run, None
    if run.exists():  # an unfinished run of an earlier call, in the benchmark's own folder: start it again
        shutil.rmtree(run)
    t0 = time.time()
    train(cfg, overrides=overrides, progress=False)
    status = json.loads((run / "run.json").read_text()).get("status")
    if status != "finished":  # Ctrl-C / SIGTERM stop training cleanly (a checkpoint): stop the benchmark too
        raise SystemExit(f"{run} did not finish (status {status}); the benchmark stops")
    return run, time.time() - t0


def quality(work: Path, data: Path, steps: int, items: int, extra: list[str], fim_extra: list[str]) -> dict:
    from slmkit.base.config_files import load_config
    from slmkit.engine.evaluate import evaluate_run

    cfg = load_config("default", [*QUALITY, *extra])
    m = cfg.model
    size = f"{m.n_layer} x {m.n_embd}, block {m.block_size}, {cfg.train.dtype}"
    out = {"load_avg_start": os.getloadavg(), "overrides": extra, "fim_overrides": fim_extra, "model": size}
    fim_name = "fim50" + "".join("-" + x.partition("=")[0].split(".")[-1] + x.partition("=")[2] for x in fim_extra)
    for name, rate in (("fim0", 0.0), ("fim50", 0.5)):
        own = fim_extra if rate else []
        run, seconds = trained(work, fim_name if rate else name, "default",
                               [*QUALITY, *extra, f"data.dir={data}", f"data.fim_rate={rate}",
                                f"train.max_steps={steps}", *own])  # fmt: skip
        res = evaluate_run(run, ["val", "fim-line", "next-line"], limit=items, progress=False)
        out[name] = {"fim_rate": rate, "train_seconds": seconds, "val_loss": res["val"]["metrics"]["loss"],
                     **{f"{t}/{m}": v for t in ("fim-line", "next-line") for m, v in res[t]["metrics"].items()},
                     "fim_line_mode": res["fim-line"]["mode"], "items": res["fim-line"]["n"]}  # fmt: skip
    for name, run_name in (("fim0", "fim0"), ("fim50", fim_name)):
        out[name]["middle_loss"] = middle_losses(work / "runs" / run_name, data)
    base, fim = out["fim0"], out["fim50"]
    ratio = fim["fim-line/exact_match"] / base["fim-line/exact_match"] if base["fim-line/exact_match"] else None
    worse = 100 * (fim["val_loss"] - base["val_loss"]) / base["val_loss"]
    out["fim_exact_ratio"], out["val_loss_worse_pct"] = ratio, worse
    out["met"] = {"fim_exact_ratio": ratio is not None and ratio >= TARGETS["fim_exact_ratio"],
                  "val_loss_worse_pct": worse <= TARGETS["val_loss_worse_pct"]}  # fmt: skip
    out["tokens_per_model"] = steps * cfg.train.batch_size * cfg.model.block_size
    out["load_avg_end"] = os.getloadavg()
    return out


def middle_losses(run: Path, data: Path, windows: int = 200) -> dict:
    """Why infilling does or does not pay: the mean loss of a middle's tokens (after its first) when the model reads
    them in PSM order (prefix, suffix, then the middle), in SPM order (suffix, then prefix and middle) and left to
    right (prefix, middle: the suffix unseen). Val windows of 240 tokens cut at two seeded points, as training cuts."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from slmkit.data.loader import TokenLoader
    from slmkit.runs.checkpoint import load_model

    model, tok, _, _ = load_model(run)
    pre, suf, mid = (tok.token_id(t) for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    loader = TokenLoader(data, "val", windows, 256, seed=5)
    rng = np.random.default_rng(0)
    sums = {"psm": 0.0, "spm": 0.0, "left_to_right": 0.0}

    def middle_loss(ids: list[int], k: int) -> float:
        x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
        with torch.no_grad():
            losses = F.cross_entropy(model(x)[0][0], y[0], reduction="none")
        return losses[-(k - 1) :].mean().item()  # the middle's tokens after its first: the last k - 1 targets

    for w in loader.next_batch()[0].tolist():
        w = w[:240]
        a, b = sorted(rng.choice(np.arange(20, 220), 2, replace=False).tolist())
        P, M, S = w[:a], w[a:b], w[b:]
        sums["psm"] += middle_loss([pre, *P, suf, *S, mid, *M], len(M))
        sums["spm"] += middle_loss([pre, suf, *S, mid, *P, *M], len(M))
        sums["left_to_right"] += middle_loss([*P, *M], len(M))
    return {k: v / windows for k, v in sums.items()}


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": _pct(ms, 50), "p95_ms": _pct(ms, 95), "mean_ms": statistics.fmean(ms)}


def latency_item(long_enough: int = 4000):
    """A held-out stdlib file cut at a line in its middle: (prefix, suffix) far longer than the context."""
    from slmkit.engine.evaluate.code_tasks import load_line_items

    for item in load_line_items(limit=2000):
        if len(item.prefix) > long_enough and len(item.suffix) > long_enough:
            return item.prefix, item.suffix
    raise SystemExit("no held-out item long enough for the latency prompt")


def in_process(qdir: Path, prefix: str, suffix: str, threads: int, repeats: int) -> dict:
    import torch

    from slmkit.data.fim import fim_prompt, run_completion
    from slmkit.runs.checkpoint import load_model

    torch.set_num_threads(threads)
    model, tok, _, _ = load_model(qdir)
    ms, cpu_ms, tokens = [], [], []
    for i in range(repeats + 3):
        t0, c0 = time.perf_counter(), time.process_time()
        prompt = fim_prompt(tok, prefix, suffix, CONTEXT - NEW_TOKENS)
        prompt.stop_ids = []  # exactly NEW_TOKENS tokens
        _, n, _ = run_completion(model, tok, prompt, NEW_TOKENS, "block")
        if i >= 3:  # warm-up first
            ms.append((time.perf_counter() - t0) * 1000)
            cpu_ms.append((time.process_time() - c0) * 1000)
            tokens.append(n)
    return {**_summary(ms), "cpu": _summary(cpu_ms), "threads": threads, "prompt_tokens": len(prompt.ids),
            "new_tokens": tokens[0]}  # fmt: skip


def through_server(qdir: Path, prefix: str, suffix: str, threads: int, repeats: int, port: int = 18431) -> dict:
    cmd = [sys.executable, "-m", "slmkit", "serve", str(qdir), "--port", str(port), "--max-batch", "1", "--threads",
           str(threads)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    why = proc.stderr.read() if proc.poll() is not None else "no answer in 120 s"
                    raise SystemExit(f"slm serve did not start: {why}") from None
                time.sleep(0.5)
        body = json.dumps({"model": qdir.resolve().name, "prompt": prefix, "suffix": suffix, "max_tokens": NEW_TOKENS,
                           "temperature": 0}).encode()  # fmt: skip
        ms, tokens, truncation = [], [], None
        server = psutil.Process(proc.pid)
        for i in range(repeats + 3):
            if i == 3:
                cpu0 = sum(server.cpu_times()[:2])
            req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
            t0 = time.perf_counter()
            reply = json.loads(urllib.request.urlopen(req, timeout=60).read())
            if i >= 3:
                ms.append((time.perf_counter() - t0) * 1000)
                tokens.append(reply["usage"]["completion_tokens"])
                truncation = reply.get("truncation")
        cpu_ms = (sum(server.cpu_times()[:2]) - cpu0) * 1000 / repeats  # clock-tick resolution: a mean only
        return {**_summary(ms), "cpu_mean_ms": cpu_ms, "threads": threads,
                "prompt_tokens": reply["usage"]["prompt_tokens"],
                "completion_tokens_median": statistics.median(tokens), "truncation": truncation}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)


def latency(work: Path, data: Path, repeats: int, threads: int) -> dict:
    from slmkit.ship.quantize import quantize

    run, seconds = trained(work, "code-brief", "code", [f"data.dir={data}", "train.max_steps=30", "optim.warmup=5",
                                                        "train.eval_every=100000"])  # fmt: skip
    qdir = work / "code-brief-int8"
    if not (qdir / "quantization.json").is_file():
        quantize(run, "int8-dynamic", qdir, report=False, force=True)
    prefix, suffix = latency_item()
    out = {"run": str(run), "train_seconds": seconds, "quantized": str(qdir), "load_avg_start": os.getloadavg()}
    out["in_process"] = in_process(qdir, prefix, suffix, threads, repeats)
    out["server"] = through_server(qdir, prefix, suffix, threads, repeats)
    out["met"] = {f"{where}_{k}": out[where][k] <= TARGETS[k] for where in ("in_process", "server")
                  for k in ("p50_ms", "p95_ms")}  # fmt: skip
    out["load_avg_end"] = os.getloadavg()
    return out


def _trained(r: dict) -> str:
    return "reused from --work" if r["train_seconds"] is None else f"trained in {r['train_seconds']:.0f} s"


def markdown(res: dict) -> str:
    def load(part: dict) -> str:
        if "load_avg_start" not in part:
            return "load avg not recorded"
        return f"load avg {part['load_avg_start'][0]:.1f} at start, {part['load_avg_end'][0]:.1f} at end"

    lines = [f"fim ({res['machine']}, {res['cpu_count']} cores):"]
    q = res.get("quality")
    if q:
        a, b = q["fim0"], q["fim50"]
        ratio = "n/a (baseline 0)" if q["fim_exact_ratio"] is None else f"{q['fim_exact_ratio']:.2f}x"
        size = q.get("model", "4 x 128, block 256")
        lines += [
            f"- FIM for free ({size}, {q['tokens_per_model']:,} tokens each, {a['items']} fim-line items; "
            + (f"both with {' '.join(q['overrides'])}; " if q.get("overrides") else "")
            + (f"the FIM model with {' '.join(q['fim_overrides'])}; " if q.get("fim_overrides") else "")
            + ", ".join(f"{who} {_trained(r)}" for who, r in (("no-FIM run", a), ("FIM run", b)))
            + f", {load(q)}):",
            f"  - fim-line exact match {b['fim-line/exact_match']:.3f} (FIM, {b['fim_line_mode']}) vs "
            f"{a['fim-line/exact_match']:.3f} (no FIM, left to right): {ratio} (target >= 2x: "
            f"{'met' if q['met']['fim_exact_ratio'] else 'MISSED'})",
            f"  - fim-line edit similarity {b['fim-line/edit_sim']:.3f} vs {a['fim-line/edit_sim']:.3f}; next-line "
            f"exact {b['next-line/exact_match']:.3f} vs {a['next-line/exact_match']:.3f}",
            f"  - val loss (left to right) {b['val_loss']:.4f} vs {a['val_loss']:.4f}: {q['val_loss_worse_pct']:+.2f}% "
            f"(target <= +2%: {'met' if q['met']['val_loss_worse_pct'] else 'MISSED'})",
        ]
        if "middle_loss" in b:
            lines += [f"  - loss of a middle's tokens read in PSM / SPM order / left to right (suffix unseen), 200 val "
                      f"windows: {n} {r['middle_loss']['psm']:.3f} / {r['middle_loss']['spm']:.3f} / "
                      f"{r['middle_loss']['left_to_right']:.3f}" for n, r in (("FIM", b), ("no FIM", a))]  # fmt: skip
    lat = res.get("latency")
    if lat:
        lines.append(f"- latency: {load(lat)}")
        for where in ("in_process", "server"):
            r = lat[where]
            if where == "server":
                extra = (
                    f", median {r['completion_tokens_median']} tokens returned; server CPU mean "
                    f"{r['cpu_mean_ms']:.1f} ms"
                )
            else:
                extra = f"; CPU time p50 {r['cpu']['p50_ms']:.1f} ms, p95 {r['cpu']['p95_ms']:.1f} ms"
            ok = "met" if lat["met"][f"{where}_p50_ms"] and lat["met"][f"{where}_p95_ms"] else "MISSED"
            lines.append(f"- latency {where.replace('_', '-')} (code preset int8, {r['prompt_tokens']} prompt + "
                         f"{NEW_TOKENS} new tokens, {r['threads']} thread(s), n={r['n']}{extra}): p50 "
                         f"{r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms (targets 50 / 100 ms: {ok})")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/slm-bench-fim", help="where data, runs and artifacts go (reused)")
    ap.add_argument("--steps", type=int, default=400, help="training steps of each quality model (16 x 256 tokens)")
    ap.add_argument("--items", type=int, default=300, help="fim-line / next-line items")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override of both quality models after the 4 x 128 defaults (repeatable), e.g. "
                         "--set model.n_embd=256 --set train.dtype=bf16")  # fmt: skip
    ap.add_argument("--fim-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override of the FIM model only (repeatable), e.g. --fim-set data.fim_line_rate=0.5; "
                         "it gets its own run dir, the FIM-less model is reused")  # fmt: skip
    ap.add_argument("--name", default="fim", help="results file name: benchmarks/results/NAME.json and .md")
    ap.add_argument("--repeats", type=int, default=50, help="timed completions per latency path")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the latency paths")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--diagnose", action="store_true", help="only add the middle losses of the two trained models")
    args = ap.parse_args()
    work = Path(args.work)
    res = {"benchmark": "fim", "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "machine": platform.machine(),
           "targets": TARGETS}  # fmt: skip
    data = prepared(work)
    if args.diagnose:
        old = json.loads((RESULTS / "fim.json").read_text())
        for name in ("fim0", "fim50"):
            old["quality"][name]["middle_loss"] = middle_losses(work / "runs" / name, data)
        res = {**res, "quality": old["quality"]}
        args.skip_latency = True
    elif not args.skip_quality:
        res["quality"] = quality(work, data, args.steps, args.items, args.set, args.fim_set)
    if not args.skip_latency:
        res["latency"] = latency(work, data, args.repeats, args.threads)
    res["load_avg_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    js, md = RESULTS / f"{args.name}.json", RESULTS / f"{args.name}.md"
    old = json.loads(js.read_text()) if js.is_file() else {}
    res = {**old, **res}  # a partial run (--skip-...) keeps the other part's last figures
    js.write_text(json.dumps(res, indent=1))
    md.write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
