"""Serving throughput: aggregate completion tokens/s and time to first token at 1, 4 and 8 clients.

Starts `lmforge serve` (or uses --url) and runs N concurrent streaming chat clients, each sending
--requests requests one after another. Every request generates exactly --max-tokens tokens
(`ignore_eos`, an lmforge extension also known from vLLM) so that each run does the same work.
Throughput is the completion tokens of all requests over the wall time of the run; time to first
token (TTFT) is measured per request from sending it to the first content chunk. The ratio column
compares each row with the 1-client row of the same run (continuous batching is what lifts it).

    python bench/serve.py [--concurrency 1,4,8] [--requests 3] [--max-tokens 64] [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Explain how a bicycle works.",
    "Write a short story about a lighthouse keeper.",
    "Describe the water cycle to a child.",
    "What are the benefits of regular exercise?",
    "Summarise the history of the printing press.",
    "Give advice to someone learning to cook.",
    "Describe a walk through a forest in autumn.",
    "Why is the sky blue?",
]


@dataclass
class Run:
    clients: int
    seconds: float = 0.0
    tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def one_request(client: httpx.AsyncClient, url: str, model: str, question: str, max_tokens: int,
                      key: str | None, run: Run) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    started = time.perf_counter()
    first = None
    usage = None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                run.failures.append(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
                return
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    run.failures.append(str(chunk["error"]))
                    return
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                    first = time.perf_counter() - started
            if not done or usage is None or first is None:
                run.failures.append("stream ended early")
                return
    except httpx.HTTPError as exc:
        run.failures.append(f"{type(exc).__name__}: {exc}")
        return
    run.ttfts.append(first)
    run.tokens += usage["completion_tokens"]


async def measure(url: str, model: str, clients: int, requests: int, max_tokens: int, key: str | None) -> Run:
    run = Run(clients)
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def worker(index: int) -> None:
            for r in range(requests):
                question = QUESTIONS[(index + r * clients) % len(QUESTIONS)]
                await one_request(client, url, model, question, max_tokens, key, run)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        run.seconds = time.perf_counter() - started
    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, capacity: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "lmforge.cli.main", "serve", "--model", model, "--port", str(port),
               "--max-concurrency", str(capacity), "--log-level", "warning"]
    if threads:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, LMFORGE_API_KEY=""))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"lmforge serve exited: {process.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit("lmforge serve did not start within 300 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=None, help="a running server (default: start one)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--concurrency", default="1,4,8", help="client counts to measure (default 1,4,8)")
    parser.add_argument("--requests", type=int, default=3, help="requests per client (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the started server")
    parser.add_argument("--min-ratio", type=float, default=2.5,
                        help="fail unless the largest client count reaches this multiple of 1-client throughput")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    process = None
    url = args.url
    if url is None:
        process, url = start_server(args.model, max(levels), args.threads)
    try:
        health = httpx.get(url + "/health", timeout=10).json()
        model = health["model"]
        asyncio.run(measure(url, model, 1, 1, 8, args.api_key))  # warm-up: cache allocation, first kernels
        runs = []
        for clients in levels:
            run = asyncio.run(measure(url, model, clients, args.requests, args.max_tokens, args.api_key))
            runs.append(run)
            print(f"  {clients} clients: {run.tokens} tokens in {run.seconds:.1f} s", file=sys.stderr, flush=True)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)

    base = next((r for r in runs if r.clients == 1), runs[0])
    print(f"\nlmforge serve, {model}: {args.requests} streaming requests per client, {args.max_tokens} tokens each, "
          f"{os.cpu_count()} CPUs visible, torch threads {args.threads or 'default'}\n")
    print("| clients | requests | failed | completion tokens/s | vs 1 client | TTFT p50 (s) | TTFT p95 (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print(f"| {run.clients} | {len(run.ttfts) + len(run.failures)} | {len(run.failures)} | "
              f"{run.tokens_per_second:.1f} | {run.tokens_per_second / base.tokens_per_second:.2f}x | "
              f"{statistics.median(run.ttfts) if run.ttfts else float('nan'):.3f} | {percentile(run.ttfts, 0.95):.3f} |")
    failures = [f for run in runs for f in run.failures]
    for failure in failures[:10]:
        print(f"failed: {failure}")
    top = runs[-1]
    ratio = top.tokens_per_second / base.tokens_per_second
    verdict = "ok" if ratio >= args.min_ratio and not failures else "BELOW TARGET" if not failures else "FAILED REQUESTS"
    print(f"\n{top.clients} clients reach {ratio:.2f}x the 1-client throughput (target {args.min_ratio}x): {verdict}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
