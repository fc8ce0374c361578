#!/usr/bin/env python3
"""Single-stream figures of a running nnspin host, measured from the client side over HTTP.

    bench/serve.py                       # starts target/debug/nnspin with spin.toml on a free port
    bench/serve.py --url http://host:port

Prints: per-request latency of a cold-started handler (GET /health: a fresh component instance each time),
time to first token for prompts of several lengths, and single-stream decode tokens/s (greedy, streamed).
Each figure is the median of --repeat runs, since the machine is noisy.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILLER = "The quick brown fox jumps over the lazy dog. "


def start_host() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [str(ROOT / "target/debug/nnspin"), "up", "--listen", "127.0.0.1:0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    url = None
    for line in process.stdout:
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].strip()
        if "nnspin ready" in line and url:
            return process, url
    sys.exit("the host did not start")


def health_latency(url: str, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        with urllib.request.urlopen(url + "/health") as response:
            response.read()
        samples.append(time.perf_counter() - started)
    return samples


def stream(url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, int, float, int]:
    """Returns (seconds to first token, completion tokens, decode tokens/s, prompt tokens)."""
    body = json.dumps({
        "model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
        "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True},
    }).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    started = time.perf_counter()
    first = last = None
    usage = {}
    with urllib.request.urlopen(request) as response:
        for line in response:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    tokens = usage["completion_tokens"]
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    return first - started, tokens, rate, usage["prompt_tokens"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    process = None
    url = args.url
    if not url:
        process, url = start_host()
    try:
        stream(url, args.model, "Hi", 4)  # warm up
        health = sorted(health_latency(url, 500))
        print(f"GET /health (fresh instance per request): p50 {1e6 * health[len(health) // 2]:.0f} us, "
              f"p99 {1e6 * health[int(len(health) * 0.99)]:.0f} us")
        for words in (4, 60, 300):
            prompt = (FILLER * (words // 9 + 1))[: words * 6] + " Summarize."
            runs = [stream(url, args.model, prompt, 1) for _ in range(args.repeat)]
            ttft = statistics.median(r[0] for r in runs)
            print(f"time to first token, {runs[0][3]:4d}-token prompt: {1000 * ttft:.0f} ms")
        runs = [stream(url, args.model, "Write a long story about a dragon and a knight.", 128)
                for _ in range(args.repeat)]
        print(f"decode, single stream, {runs[0][1]} tokens: {statistics.median(r[2] for r in runs):.1f} tokens/s")
    finally:
        if process:
            process.terminate()


if __name__ == "__main__":
    main()
