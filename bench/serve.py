#!/usr/bin/env python3
"""Single-stream figures of nnspin, measured from the client side over HTTP, per backend and precision mode.

    bench/serve.py                                 # target/debug/nnspin with spin.toml in each configuration in turn
    bench/serve.py --configs onnxruntime:fast      # one configuration (backend:precision)
    bench/serve.py --url http://host:port

Prints, per configuration: per-request latency of a cold-started handler (GET /health: a fresh component
instance each time), time to first token for prompts of several lengths, and single-stream decode
tokens/s (greedy, streamed); then a side-by-side table with each configuration's ratio to the first one.
Each figure is the median of --repeat runs, since the machine is noisy.
"""

import argparse
import json
import statistics
import time
import urllib.request

from host import start_host

FILLER = "The quick brown fox jumps over the lazy dog. "


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


def measure(url: str, model: str, repeat: int) -> dict[str, float]:
    """Runs every figure against one host; returns them by name, printing as it goes."""
    figures = {}
    stream(url, model, "Hi", 4)  # warm up
    health = sorted(health_latency(url, 500))
    figures["GET /health p50, us"] = 1e6 * health[len(health) // 2]
    figures["GET /health p99, us"] = 1e6 * health[int(len(health) * 0.99)]
    for words in (4, 60, 300):
        prompt = (FILLER * (words // 9 + 1))[: words * 6] + " Summarize."
        runs = [stream(url, model, prompt, 1) for _ in range(repeat)]
        figures[f"TTFT {runs[0][3]}-token prompt, ms"] = 1000 * statistics.median(r[0] for r in runs)
    runs = [stream(url, model, "Write a long story about a dragon and a knight.", 128) for _ in range(repeat)]
    figures[f"decode {runs[0][1]} tokens, tok/s"] = statistics.median(r[2] for r in runs)
    for name, value in figures.items():
        print(f"  {name}: {value:.1f}", flush=True)
    return figures


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="measure a running host instead of starting one per configuration")
    p.add_argument("--configs", default="onnxruntime:exact,onnxruntime:fast,openvino:exact,openvino:fast",
                   help="backend:precision pairs, comma-separated")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    if args.url:
        measure(args.url, args.model, args.repeat)
        return
    results = {}
    for config in args.configs.split(","):
        backend, _, precision = config.partition(":")
        print(f"{config}:", flush=True)
        process, url = start_host("--backend", backend, "--precision", precision or "exact")
        try:
            results[config] = measure(url, args.model, args.repeat)
        finally:
            process.terminate()
            process.wait()
    backends = list(results)
    names = list(results[backends[0]])
    print("\n| figure | " + " | ".join(backends) + " | " + " | ".join(f"{b} / {backends[0]}" for b in backends[1:]) + " |")
    print("|---|" + "---|" * (2 * len(backends) - 1))
    for name in names:
        values = [results[b].get(name, float("nan")) for b in backends]
        ratios = [v / values[0] if values[0] else float("nan") for v in values[1:]]
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " | "
              + " | ".join(f"{r:.2f}" for r in ratios) + " |")


if __name__ == "__main__":
    main()
