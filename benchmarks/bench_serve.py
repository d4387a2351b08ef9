"""`slm serve` under load: 16 concurrent streaming clients for 30 s on loopback.

Starts `slm serve RUN` in a subprocess (so the clients do not share its interpreter), then each client sends
streaming chat requests back to back until the time is up. Checks: no HTTP or stream errors, and every response
complete (a finish_reason, a final usage chunk and `data: [DONE]`).
Records p50/p95 time-to-first-token (first content piece) and whole-request latency, and the total generated
tokens/s.

    python benchmarks/bench_serve.py --run RUN [--clients 16] [--seconds 30] [--slots 16] [--threads 1]
    python benchmarks/bench_serve.py --run RUN --seconds 20 --threads 1,2,torch    # a threads sweep

Writes benchmarks/results/serve.json and serve.md; a sweep over several --threads writes serve_threads.json and
serve_threads.md instead (one row per setting: TTFT and whole-request latency percentiles, tokens/s).
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


async def client_loop(i: int, base: str, model: str, until: float, max_tokens: int, out: list) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as client:
        n = 0
        while time.monotonic() < until:
            try:
                out.append(await one_request(client, base, model, PROMPTS[(i + n) % len(PROMPTS)], max_tokens))
            except (httpx.HTTPError, json.JSONDecodeError) as e:
                out.append({"error": f"{type(e).__name__}: {e}"})
            n += 1


async def load(base: str, model: str, clients: int, seconds: float, max_tokens: int) -> tuple[list, float]:
    out: list = []
    t0 = time.monotonic()
    await asyncio.gather(*(client_loop(i, base, model, t0 + seconds, max_tokens, out) for i in range(clients)))
    return out, time.monotonic() - t0


THREAD_NAMES = {"torch": "0", "default": None}  # --threads values: N, torch (torch's own choice), default (serve's)


def run_once(args, threads: str) -> dict:
    """Start `slm serve` with one threads setting, load it for args.seconds, stop it; the figures."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flag = THREAD_NAMES.get(threads, threads)
    cmd = [sys.executable, "-m", "slmkit", "serve", args.run, "--port", str(port), "--slots", str(args.slots),
           *(["--threads", flag] if flag is not None else [])]  # fmt: skip
    proc = subprocess.Popen(cmd)
    try:
        model = wait_ready(base, proc)
        load_before = os.getloadavg()
        results, wall = asyncio.run(load(base, model, args.clients, args.seconds, args.max_tokens))
        health = httpx.get(base + "/health").json()
    finally:
        proc.terminate()
        proc.wait(20)
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttft = np.array([r["ttft"] for r in ok if r["ttft"] is not None])
    latency = np.array([r["seconds"] for r in ok])
    tokens = sum(r["tokens"] for r in ok)

    def pct(a, q):
        return float(np.percentile(a, q)) if len(a) else None

    return {"benchmark": "serve", "run": args.run, "model": model, "clients": args.clients, "seconds": wall,
            "slots": args.slots, "threads_flag": threads, "threads": health.get("threads"),
            "max_tokens": args.max_tokens, "requests": len(results), "errors": len(errors),
            "error_samples": errors[:5], "incomplete": sum(not r["complete"] for r in ok),
            "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95), "latency_p50_s": pct(latency, 50),
            "latency_p95_s": pct(latency, 95), "tokens": tokens, "tokens_per_s": tokens / wall,
            "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "cpu_count": os.cpu_count(),
            "server_after": health}  # fmt: skip


def summary(r: dict) -> str:
    return (f"serve ({r['model']}, {r['clients']} streaming clients x {r['seconds']:.0f} s, {r['slots']} slots, "
            f"{r['threads']} thread(s) [{r['threads_flag']}]): {r['requests']} requests, {r['errors']} errors, "
            f"{r['incomplete']} incomplete; TTFT p50 {r['ttft_p50_s']:.3f} s, p95 {r['ttft_p95_s']:.3f} s; request "
            f"p95 {r['latency_p95_s']:.2f} s; {r['tokens_per_s']:.1f} tokens/s total")  # fmt: skip


def threads_table(rows: list[dict], args, command: str) -> str:
    first, note = rows[0], f" ({args.note})" if args.note else ""
    lines = [f"# slm serve: torch threads under load ({time.strftime('%Y-%m-%d')})", "", f"`{command}`", "",
             f"Model `{first['model']}`{note}; {args.clients} streaming chat clients on loopback, back to back for "
             f"{args.seconds:.0f} s per setting, max_tokens {args.max_tokens}, {args.slots} slots; "
             f"{first['cpu_count']} CPU cores, shared with other work (load average before each row shown).", "",
             "| threads (flag) | requests | errors | TTFT p50 s | TTFT p95 s | request p50 s | request p95 s | "
             "tokens/s | load avg before |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        bad = r["errors"] + r["incomplete"]
        lines.append(f"| {r['threads']} ({r['threads_flag']}) | {r['requests']} | {bad} | {r['ttft_p50_s']:.3f} | "
                     f"{r['ttft_p95_s']:.3f} | {r['latency_p50_s']:.2f} | {r['latency_p95_s']:.2f} | "
                     f"{r['tokens_per_s']:.1f} | {r['load_avg_before'][0]:.2f} |")  # fmt: skip
    torch_own = {r["threads"] for r in rows if r["threads_flag"] == "torch"}
    if torch_own:
        own = ", ".join(map(str, sorted(torch_own)))
        lines += ["", f"torch's own choice on this machine (`--threads 0`): {own} thread(s)."]
    flags = list(dict.fromkeys(r["threads_flag"] for r in rows))
    if len(rows) > len(flags):  # several rounds: the median of each setting
        lines += ["", "Median over rounds:", "", "| threads (flag) | TTFT p95 s | request p95 s | tokens/s |",
                  "|---|---|---|---|"]  # fmt: skip
        for f in flags:
            mine = [r for r in rows if r["threads_flag"] == f]
            med = {k: float(np.median([r[k] for r in mine])) for k in ("ttft_p95_s", "latency_p95_s", "tokens_per_s")}
            lines.append(f"| {mine[0]['threads']} ({f}) | {med['ttft_p95_s']:.3f} | {med['latency_p95_s']:.2f} | "
                         f"{med['tokens_per_s']:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run dir or quantized model to serve")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--slots", type=int, default=16, help="requests generated at once by the server")
    ap.add_argument("--threads", default="default", help="the server's torch threads: N, torch (torch's own choice), "
                    "default (slm serve's default), or a comma list of those, measured one after the other (then "
                    "the results go to serve_threads.{json,md})")  # fmt: skip
    ap.add_argument("--note", default="", help="what the model is, for the threads table (e.g. its shape)")
    ap.add_argument("--rounds", type=int, default=1, help="with several --threads: measure them all this many times, "
                    "in reverse order every other round")  # fmt: skip
    args = ap.parse_args()
    settings = [t.strip() for t in args.threads.split(",") if t.strip()]
    for t in settings:
        if t not in THREAD_NAMES and not t.isdigit():
            raise SystemExit(f"--threads {t!r}: give N, torch or default")
    sweep = len(settings) > 1
    rows = []
    for rnd in range(args.rounds if sweep else 1):
        for t in settings if rnd % 2 == 0 else settings[::-1]:
            rows.append(run_once(args, t) | {"round": rnd})
            print(summary(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    if sweep:
        command = "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:])
        doc = {"benchmark": "serve_threads", "command": command, "note": args.note, "rows": rows}
        (RESULTS / "serve_threads.json").write_text(json.dumps(doc, indent=2) + "\n")
        (RESULTS / "serve_threads.md").write_text(threads_table(rows, args, command))
    else:
        (RESULTS / "serve.json").write_text(json.dumps(rows[0], indent=2) + "\n")
        (RESULTS / "serve.md").write_text(summary(rows[0]) + "\n")
    if any(r["errors"] or r["incomplete"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
