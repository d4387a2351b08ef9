"""`slm serve` under load: continuous batching against one request at a time, in one run.

Starts `slm serve RUN` in a subprocess (so the clients do not share its interpreter) once per setting, then each
client sends streaming chat requests back to back until the time is up. The settings are `--max-batch` values
(1 = the old behaviour: decoding one sequence at a time, the baseline) crossed with `--threads` values; each is
measured `--rounds` times, alternating order. Checks: no HTTP or stream errors, and every response complete (a
finish_reason, a final usage chunk and `data: [DONE]`). Records p50/p95 time-to-first-token (first content piece)
and whole-request latency, and the total generated tokens/s.

Then an overload run (`--overload-clients`, default 64) against a small queue (`--overload-queue`): every answer must
be a complete stream or a 429 with OpenAI's error body, none may time out (`--timeout`); a client that gets a 429
waits 0.25 s and retries.

    python benchmarks/bench_serve.py --run RUN                                  # max-batch 1 and 16, then 64 clients
    python benchmarks/bench_serve.py --run RUN --max-batch 16 --threads 1,2 --rounds 3 --overload-clients 0

The model of the recorded figures: `slm train tiny model.n_layer=6 model.n_head=6 model.n_embd=384
model.block_size=128 train.max_steps=20` then `slm quantize RUN` (int8-dynamic); speed does not depend on how well it
is trained. Writes benchmarks/results/serve.json and serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = ["Tell me a story.", "What is the capital of France?", "Write a short poem about the sea.",
           "How do I sort a list in Python?", "Who are you?", "Say something kind."]  # fmt: skip
TARGET_TOKENS_PER_S, TARGET_SPEEDUP, TARGET_TTFT_P95 = 550.0, 3.0, 0.5
THREAD_NAMES = {"torch": "0", "default": None}  # --threads values: N, torch (torch's own choice), default (serve's)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"slm serve exited with {proc.returncode}")
        try:
            return httpx.get(base + "/v1/models", timeout=2).json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, ValueError):
            time.sleep(0.3)
    raise SystemExit("slm serve did not come up")


async def one_request(client: httpx.AsyncClient, base: str, model: str, prompt: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.8, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    t0 = time.perf_counter()
    ttft, pieces, finish, usage, done = None, 0, None, None, False
    async with client.stream("POST", base + "/v1/chat/completions", json=body) as r:
        if r.status_code == 429:
            err = json.loads(await r.aread()).get("error", {})
            ok = {"message", "type", "param", "code"} <= set(err) and err["type"] == "rate_limit_error"
            return {"rejected": True, "error": None if ok else f"429 without OpenAI's error body: {err}"}
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line:
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            if chunk.get("usage"):
                usage = chunk["usage"]
            for ch in chunk.get("choices", []):
                if ch["delta"].get("content"):
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    pieces += 1
                finish = ch.get("finish_reason") or finish
    complete = done and finish in ("stop", "length") and usage is not None
    return {"ttft": ttft, "seconds": time.perf_counter() - t0, "tokens": usage["completion_tokens"] if usage else 0,
            "pieces": pieces, "finish": finish, "complete": complete}  # fmt: skip


async def client_loop(i: int, base: str, model: str, until: float, args, out: list) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout)) as client:
        n = 0
        while time.monotonic() < until:
            try:
                r = await one_request(client, base, model, PROMPTS[(i + n) % len(PROMPTS)], args.max_tokens)
            except (httpx.HTTPError, json.JSONDecodeError) as e:
                r = {"error": f"{type(e).__name__}: {e}"}
            out.append(r)
            if r.get("rejected"):
                await asyncio.sleep(0.25)
            n += 1


async def load(base: str, model: str, clients: int, args) -> tuple[list, float]:
    out: list = []
    t0 = time.monotonic()
    await asyncio.gather(*(client_loop(i, base, model, t0 + args.seconds, args, out) for i in range(clients)))
    return out, time.monotonic() - t0


def pct(a, q):
    return float(np.percentile(a, q)) if len(a) else None


def run_once(args, max_batch: int, threads: str, clients: int, max_queue: int | None = None) -> dict:
    """Start `slm serve` with one setting, load it with `clients` for args.seconds, stop it; the figures."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flag = THREAD_NAMES.get(threads, threads)
    cmd = [sys.executable, "-m", "slmkit", "serve", args.run, "--port", str(port), "--max-batch", str(max_batch),
           *(["--threads", flag] if flag is not None else []),
           *(["--max-queue", str(max_queue)] if max_queue is not None else [])]  # fmt: skip
    proc = subprocess.Popen(cmd)
    try:
        model = wait_ready(base, proc)
        load_before = os.getloadavg()
        results, wall = asyncio.run(load(base, model, clients, args))
        health = httpx.get(base + "/health").json()
    finally:
        proc.terminate()
        proc.wait(20)
    served = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if r.get("error")]
    ttft = np.array([r["ttft"] for r in served if r["ttft"] is not None])
    latency = np.array([r["seconds"] for r in served])
    tokens = sum(r["tokens"] for r in served)
    return {"model": model, "clients": clients, "seconds": wall, "max_batch": max_batch, "threads_flag": threads,
            "threads": health.get("threads"), "max_queue": health.get("max_queue"), "max_tokens": args.max_tokens,
            "requests": len(results), "served": len(served), "rejected_429": sum(bool(r.get("rejected")) for r in
            results), "errors": len(errors), "error_samples": errors[:5],
            "incomplete": sum(not r["complete"] for r in served), "ttft_p50_s": pct(ttft, 50),
            "ttft_p95_s": pct(ttft, 95), "latency_p50_s": pct(latency, 50), "latency_p95_s": pct(latency, 95),
            "tokens": tokens, "tokens_per_s": tokens / wall, "load_avg_before": load_before,
            "cpu_count": os.cpu_count(), "server_after": health}  # fmt: skip


def summary(r: dict) -> str:
    return (f"max-batch {r['max_batch']}, {r['threads']} thread(s) [{r['threads_flag']}], {r['clients']} clients x "
            f"{r['seconds']:.0f} s: {r['served']} served, {r['rejected_429']} x 429, {r['errors']} errors, "
            f"{r['incomplete']} incomplete; TTFT p50 {r['ttft_p50_s']:.3f} s, p95 {r['ttft_p95_s']:.3f} s; request p95 "
            f"{r['latency_p95_s']:.2f} s; {r['tokens_per_s']:.1f} tokens/s; mean batch "
            f"{r['server_after'].get('mean_batch')}")  # fmt: skip


def median_of(rows: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in rows]))


def report(rows: list[dict], over: dict | None, args, command: str) -> tuple[dict, str]:
    """The verdict against the issue's targets and the markdown page."""
    settings = list(dict.fromkeys((r["max_batch"], r["threads_flag"]) for r in rows))
    med = {s: {k: median_of([r for r in rows if (r["max_batch"], r["threads_flag"]) == s], k)
               for k in ("tokens_per_s", "ttft_p95_s", "latency_p95_s")} for s in settings}  # fmt: skip
    base = [m["tokens_per_s"] for (b, _), m in med.items() if b == 1]
    best = max((s for s in settings if s[0] > 1), key=lambda s: med[s]["tokens_per_s"], default=None)
    verdict = {}
    if best is not None:
        tps, baseline = med[best]["tokens_per_s"], max(base) if base else None
        clean = all(r["errors"] == 0 and r["incomplete"] == 0 for r in rows if (r["max_batch"], r["threads_flag"])
                    == best)  # fmt: skip
        verdict = {"setting": {"max_batch": best[0], "threads": best[1]}, "tokens_per_s": tps, "baseline": baseline,
                   "speedup": tps / baseline if baseline else None, "ttft_p95_s": med[best]["ttft_p95_s"],
                   "tokens_per_s_ok": tps >= TARGET_TOKENS_PER_S,
                   "speedup_ok": bool(baseline) and tps >= TARGET_SPEEDUP * baseline,
                   "ttft_ok": med[best]["ttft_p95_s"] <= TARGET_TTFT_P95, "errors_ok": clean}  # fmt: skip
    if over is not None:
        verdict["overload_ok"] = over["errors"] == 0 and over["incomplete"] == 0
    first = rows[0]
    lines = [f"# slm serve: continuous batching ({time.strftime('%Y-%m-%d')})", "", f"`{command}`", "",
             f"Model `{first['model']}` (6 layers x 384 dims, int8-dynamic; see the script's docstring); "
             f"{args.clients} streaming chat clients on loopback, back to back for {args.seconds:.0f} s per row, "
             f"max_tokens {args.max_tokens}, temperature 0.8; {first['cpu_count']} CPU cores shared with other work "
             f"(load average before each row shown). max-batch 1 decodes one request at a time: the old behaviour "
             f"and the baseline.", "",
             "| max-batch | threads (flag) | served | errors | TTFT p50 s | TTFT p95 s | request p95 s | tokens/s | "
             "mean batch | load avg |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['max_batch']} | {r['threads']} ({r['threads_flag']}) | {r['served']} | "
                     f"{r['errors'] + r['incomplete']} | {r['ttft_p50_s']:.3f} | {r['ttft_p95_s']:.3f} | "
                     f"{r['latency_p95_s']:.2f} | {r['tokens_per_s']:.1f} | {r['server_after'].get('mean_batch')} | "
                     f"{r['load_avg_before'][0]:.2f} |")  # fmt: skip
    if len(rows) > len(settings):
        lines += [
            "",
            "Median over rounds:",
            "",
            "| max-batch | threads (flag) | TTFT p95 s | request p95 s | tokens/s |",
            "|---|---|---|---|---|",
        ]
        for (b, t), m in med.items():
            lines.append(f"| {b} | {t} | {m['ttft_p95_s']:.3f} | {m['latency_p95_s']:.2f} | {m['tokens_per_s']:.1f} |")
    if verdict.get("setting"):
        v = verdict
        speed = f"{v['speedup']:.2f}x" if v["speedup"] else "n/a (no max-batch 1 row)"
        b, t = v["setting"]["max_batch"], v["setting"]["threads"]
        lines += ["", f"Continuous batching (max-batch {b}, threads {t}): "
                  f"{v['tokens_per_s']:.1f} tokens/s (target >= {TARGET_TOKENS_PER_S:.0f}: "
                  f"{'met' if v['tokens_per_s_ok'] else 'MISSED'}), {speed} the baseline (target >= "
                  f"{TARGET_SPEEDUP:.0f}x: {'met' if v['speedup_ok'] else 'MISSED'}), TTFT p95 {v['ttft_p95_s']:.3f} s "
                  f"(target <= {TARGET_TTFT_P95}: {'met' if v['ttft_ok'] else 'MISSED'}), errors or incomplete: "
                  f"{'none' if v['errors_ok'] else 'SOME'}."]  # fmt: skip
    if over is not None:
        lines += ["", f"Overload: {over['clients']} clients x {over['seconds']:.0f} s against max-batch "
                  f"{over['max_batch']} and a queue of {over['max_queue']}: {over['served']} served "
                  f"({over['incomplete']} incomplete), {over['rejected_429']} answered 429 with OpenAI's error body, "
                  f"{over['errors']} other errors or timeouts (client timeout {args.timeout:.0f} s); TTFT p95 of the "
                  f"served {over['ttft_p95_s']:.3f} s; {over['tokens_per_s']:.1f} tokens/s "
                  f"({'met' if verdict['overload_ok'] else 'MISSED'}: no errors other than 429s)."]  # fmt: skip
    return verdict, "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run dir or quantized model to serve")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-batch", default="1,16", help="comma list of the server's --max-batch (1: the baseline)")
    ap.add_argument("--threads", default="default", help="comma list of the server's torch threads: N, torch "
                    "(torch's own choice), default (slm serve's default)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=1, help="measure every setting this many times, in reverse order "
                    "every other round")  # fmt: skip
    ap.add_argument("--overload-clients", type=int, default=64, help="clients of the overload run (0: skip it)")
    ap.add_argument("--overload-queue", type=int, default=16, help="the server's --max-queue in the overload run")
    ap.add_argument("--timeout", type=float, default=60, help="a client gives up on a request after this many s")
    ap.add_argument("--out", default="serve", help="results name: benchmarks/results/NAME.{json,md}")
    args = ap.parse_args()
    batches = [int(b) for b in args.max_batch.split(",") if b.strip()]
    threads = [t.strip() for t in args.threads.split(",") if t.strip()]
    for t in threads:
        if t not in THREAD_NAMES and not t.isdigit():
            raise SystemExit(f"--threads {t!r}: give N, torch or default")
    settings = [(b, t) for b in batches for t in threads]
    rows = []
    for rnd in range(args.rounds):
        for b, t in settings if rnd % 2 == 0 else settings[::-1]:
            rows.append(run_once(args, b, t, args.clients) | {"round": rnd})
            print(summary(rows[-1]), flush=True)
    over = None
    if args.overload_clients:
        over = run_once(args, max(batches), threads[0], args.overload_clients, args.overload_queue)
        print("overload: " + summary(over), flush=True)
    command = "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:])
    verdict, page = report(rows, over, args, command)
    RESULTS.mkdir(exist_ok=True)
    doc = {"benchmark": "serve", "command": command, "run": args.run, "rows": rows, "overload": over,
           "verdict": verdict}  # fmt: skip
    (RESULTS / f"{args.out}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(page)
    print(page)
    if any(r["errors"] or r["incomplete"] for r in rows) or (over and (over["errors"] or over["incomplete"])):
        sys.exit(1)


if __name__ == "__main__":
    main()
