"""`slm serve` under load: 16 concurrent streaming clients for 30 s on loopback.

Starts `slm serve RUN` in a subprocess (so the clients do not share its interpreter), then each client sends
streaming chat requests back to back until the time is up. Checks: no HTTP or stream errors, and every response
complete (a finish_reason, a final usage chunk and `data: [DONE]`).
Records p50/p95 time-to-first-token (first content piece) and the total generated tokens/s.

    python benchmarks/bench_serve.py --run RUN [--clients 16] [--seconds 30] [--slots 16] [--threads 1]

Writes benchmarks/results/serve.json and serve.md.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run dir or quantized model to serve")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--slots", type=int, default=16, help="requests generated at once by the server")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    args = ap.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "slmkit", "serve", args.run, "--port", str(port), "--slots", str(args.slots),
           "--threads", str(args.threads)]  # fmt: skip
    proc = subprocess.Popen(cmd)
    try:
        model = wait_ready(base, proc)
        results, wall = asyncio.run(load(base, model, args.clients, args.seconds, args.max_tokens))
        health = httpx.get(base + "/health").json()
    finally:
        proc.terminate()
        proc.wait(20)
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttft = np.array([r["ttft"] for r in ok if r["ttft"] is not None])
    tokens = sum(r["tokens"] for r in ok)
    result = {"benchmark": "serve", "run": args.run, "model": model, "clients": args.clients, "seconds": wall,
              "slots": args.slots, "threads": args.threads, "max_tokens": args.max_tokens, "requests": len(results),
              "errors": len(errors), "error_samples": errors[:5], "incomplete": sum(not r["complete"] for r in ok),
              "ttft_p50_s": float(np.percentile(ttft, 50)) if len(ttft) else None,
              "ttft_p95_s": float(np.percentile(ttft, 95)) if len(ttft) else None,
              "tokens": tokens, "tokens_per_s": tokens / wall, "load_avg": os.getloadavg(), "cpu_count": os.cpu_count(),
              "server_after": health}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(result, indent=2) + "\n")
    line = (f"serve ({model}, {args.clients} streaming clients x {wall:.0f} s, {args.slots} slots, {args.threads} "
            f"thread(s)): {len(results)} requests, {len(errors)} errors, {result['incomplete']} incomplete; TTFT p50 "
            f"{result['ttft_p50_s']:.3f} s, p95 {result['ttft_p95_s']:.3f} s; {result['tokens_per_s']:.1f} tokens/s "
            f"total")  # fmt: skip
    (RESULTS / "serve.md").write_text(line + "\n")
    print(line)
    if errors or result["incomplete"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
