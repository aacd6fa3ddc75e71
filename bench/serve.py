"""Serving throughput: lmforge serve against llama-cpp-python's server on the same GGUF, same run.

Starts each server (or uses --url for lmforge) and runs N concurrent streaming chat clients at each
level of --concurrency, each client sending --requests requests one after another. Every request
asks for exactly --max-tokens tokens (lmforge: `ignore_eos`; llama.cpp: the end tokens banned by
`logit_bias`) so that both do the same work. Throughput is the completion tokens of all requests
over the wall time of the run; time to first token (TTFT) is measured per request from sending it
to the first content chunk. A peer that is not installed is printed as missing.

    python bench/serve.py [--concurrency 1,4,8] [--requests 3] [--max-tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # llama_peer
MODEL = "smollm2-135m-instruct"
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


@dataclass
class Server:
    peer: str
    url: str
    extra: dict  # request fields that make the peer generate exactly max_tokens
    process: subprocess.Popen | None = None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def one_request(client: httpx.AsyncClient, server: Server, question: str, max_tokens: int,
                      key: str | None, run: Run) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **server.extra}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    started = time.perf_counter()
    first = None
    usage = None
    chunks = 0
    try:
        async with client.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers) as response:
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
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - started
            if not done or first is None:
                run.failures.append("stream ended early")
                return
    except httpx.HTTPError as exc:
        run.failures.append(f"{type(exc).__name__}: {exc}")
        return
    run.ttfts.append(first)
    # llama-cpp-python's stream carries no usage; it sends one chunk per token.
    run.tokens += usage["completion_tokens"] if usage else chunks


async def measure(server: Server, clients: int, requests: int, max_tokens: int, key: str | None) -> Run:
    run = Run(clients)
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(1200.0), limits=limits) as client:

        async def worker(index: int) -> None:
            for r in range(requests):
                question = QUESTIONS[(index + r * clients) % len(QUESTIONS)]
                await one_request(client, server, question, max_tokens, key, run)

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        run.seconds = time.perf_counter() - started
    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_up(process: subprocess.Popen, url: str, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            process.log.seek(0)
            raise RuntimeError(f"{what} exited: {process.log.read()[-2000:]}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s")


def launch(command: list[str], **kwargs) -> subprocess.Popen:
    """Start a server with its log in a temporary file: a pipe nobody reads fills up (64 KB) and
    blocks a talkative server (llama.cpp logs the whole model load) before it ever answers."""
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True, **kwargs)
    process.log = log
    return process


def start_lmforge(capacity: int, threads: int | None, extra_flags: list[str], timeout: float) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "lmforge.cli.main", "serve", "--model", MODEL, "--port", str(port),
               "--max-concurrency", str(capacity), "--log-level", "warning", *extra_flags]
    if threads:
        command += ["--threads", str(threads)]
    process = launch(command, env=dict(os.environ, LMFORGE_API_KEY=""))
    server = Server("lmforge", f"http://127.0.0.1:{port}", {"ignore_eos": True}, process)
    wait_up(process, server.url, "lmforge serve", timeout)  # includes compiling the decode step
    return server


def start_llama_cpp(threads: int | None, timeout: float) -> Server:
    from lmforge.io.gguf import describe_gguf
    from lmforge.io.registry import named_model_path

    path = named_model_path(MODEL)
    _, tokenizer = describe_gguf(path)
    port = free_port()
    threads = threads or os.cpu_count()
    import llama_peer

    command = llama_peer.server_command(
        ["--model", str(path), "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
         "--n_threads", str(threads), "--n_threads_batch", str(threads),
         "--interrupt_requests", "False"],  # its default cuts off a streaming request when the next arrives
        extra_buffers=llama_peer.extra_buffers_work(str(path)))
    process = launch(command)
    ban_end = {str(token): -100 for token in sorted(tokenizer.eos_ids)}
    server = Server("llama.cpp", f"http://127.0.0.1:{port}", {"logit_bias": ban_end}, process)
    wait_up(process, server.url, "llama_cpp.server", timeout)
    return server


def stop(server: Server) -> None:
    if server.process is not None:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()


def measure_peer(server: Server, levels: list[int], args) -> list[Run]:
    asyncio.run(measure(server, 1, 1, 8, args.api_key))  # warm-up: cache allocation, first kernels
    runs = []
    for clients in levels:
        run = asyncio.run(measure(server, clients, args.requests, args.max_tokens, args.api_key))
        runs.append(run)
        print(f"  {server.peer}, {clients} clients: {run.tokens} tokens in {run.seconds:.1f} s", file=sys.stderr, flush=True)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="a running lmforge server (default: start one)")
    parser.add_argument("--api-key", default=None, help="key of the lmforge server given by --url")
    parser.add_argument("--peers", default="lmforge,llama.cpp", help="servers to measure (default lmforge,llama.cpp)")
    parser.add_argument("--concurrency", default="1,4,8", help="client counts to measure (default 1,4,8)")
    parser.add_argument("--requests", type=int, default=3, help="requests per client (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of each started server (default: all)")
    parser.add_argument("--lmforge-flags", default="", help="extra `lmforge serve` flags, e.g. '--compile off'")
    parser.add_argument("--start-timeout", type=float, default=1800, help="seconds a server may take to start")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    results: dict[str, list[Run] | str] = {}
    for peer in peers:
        if peer == "llama.cpp" and importlib.util.find_spec("llama_cpp") is None:
            results[peer] = "missing: llama-cpp-python is not installed (pip install -e '.[bench]')"
            continue
        server = None
        try:
            if peer == "lmforge":
                server = (Server("lmforge", args.url, {"ignore_eos": True}) if args.url else
                          start_lmforge(max(levels), args.threads, args.lmforge_flags.split(), args.start_timeout))
            elif peer == "llama.cpp":
                server = start_llama_cpp(args.threads, args.start_timeout)
            else:
                parser.error(f"unknown peer {peer!r} (lmforge, llama.cpp)")
            results[peer] = measure_peer(server, levels, args)
        except RuntimeError as error:
            results[peer] = f"failed: {error}"
        finally:
            if server is not None:
                stop(server)

    print(f"\n{MODEL}: {args.requests} streaming requests per client, {args.max_tokens} tokens each, "
          f"{os.cpu_count()} CPUs visible, threads {args.threads or 'default'}\n")
    print("| server | clients | requests | failed | completion tokens/s | vs llama.cpp | TTFT p50 (s) | TTFT p95 (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    reference = {r.clients: r.tokens_per_second for r in results.get("llama.cpp", []) if isinstance(r, Run)} \
        if isinstance(results.get("llama.cpp"), list) else {}
    for peer, runs in results.items():
        if isinstance(runs, str):
            print(f"| {peer} | {runs} | | | | | | |")
            continue
        for run in runs:
            ratio = f"{run.tokens_per_second / reference[run.clients]:.2f}x" if reference.get(run.clients) else "-"
            print(f"| {peer} | {run.clients} | {len(run.ttfts) + len(run.failures)} | {len(run.failures)} | "
                  f"{run.tokens_per_second:.1f} | {ratio} | "
                  f"{statistics.median(run.ttfts) if run.ttfts else float('nan'):.3f} | {percentile(run.ttfts, 0.95):.3f} |")
            for failure in run.failures[:3]:
                print(f"|   failed: {failure[:150]} | | | | | | | |")
    ours = results.get("lmforge")
    top = max(levels)
    if isinstance(ours, list) and reference.get(top):
        ratio = ours[-1].tokens_per_second / reference[top]
        verdict = "ok" if ratio >= 3 else "BELOW TARGET"
        print(f"\nlmforge at {top} clients: {ratio:.2f}x llama-cpp-python's server at {top} clients (target >= 3): {verdict}")
    else:
        print("\nno ratio: a server is missing or failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
