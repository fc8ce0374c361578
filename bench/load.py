#!/usr/bin/env python3
"""Overload test: ten times the host's capacity for a bounded time, on loopback, counting what happens to
every request.

    .venv/bin/python bench/load.py                  # 60 s, default model, capacity 4 + 4
    .venv/bin/python bench/load.py --duration 20 --model tiny-random

Starts target/debug/nnspin with the repository's spin.toml (OpenAI, and LocalLab with its documented rate
limit) and a capacity of --sequences decoding plus --queue waiting per model, then runs 10 x capacity
clients that send back to back: OpenAI chat (whole and streamed), legacy completions and LocalLab
/generate. Each request ends as exactly one of:

    completed  200 with a whole answer (a JSON body with a finish_reason, or a stream ending in [DONE])
    rejected   503 or 429 with Retry-After: refused before any work started, as documented
    error      any other status, or a 200 whose body is not a whole answer
    lost       no response at all (connection dropped, or no answer within --request-timeout)

and the host's own count of responses (/metrics) must match the client's. Host memory (RSS) is read after
a warm-up at capacity, right after the load, and after the host settles. Exits non-zero if anything is
lost or errs, or if the host dies.
"""

import argparse
import asyncio
import json
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from host import ROOT, start_host

PROMPTS = ["Name a colour.", "Say hello in French.", "What is 2 + 2?", "Give me a fruit."]


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def served_total(metrics: str) -> int:
    """Responses the host has sent, by its own count (every route and status)."""
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("nnspin_requests_total{")))


class Tally:
    def __init__(self):
        self.outcomes = Counter()
        self.statuses = Counter()
        self.examples: dict[str, str] = {}

    def add(self, kind: str, outcome: str, detail: str = ""):
        self.outcomes[outcome] += 1
        self.statuses[kind] += 1
        if outcome in ("error", "lost") and outcome not in self.examples:
            self.examples[outcome] = f"{kind}: {detail}"[:300]


async def one_request(client: httpx.AsyncClient, model: str, max_tokens: int, tally: Tally):
    prompt = random.choice(PROMPTS)
    kind = random.choice(["chat", "chat-stream", "completion", "locallab"])
    if kind == "locallab":
        path, body = "/locallab/generate", {"prompt": prompt, "max_length": max_tokens, "model_id": model}
    elif kind == "completion":
        path, body = "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens}
    else:
        path, body = "/v1/chat/completions", {"model": model, "max_tokens": max_tokens,
                                              "messages": [{"role": "user", "content": prompt}],
                                              "stream": kind == "chat-stream"}
    try:
        async with client.stream("POST", path, json=body) as response:
            payload = await response.aread()
    except (httpx.TransportError, httpx.TimeoutException) as e:
        tally.add(kind, "lost", repr(e))
        return
    status = response.status_code
    if status in (429, 503):
        whole = response.headers.get("retry-after", "").isdigit() and b"detail" in payload
        tally.add(f"{kind} {status}", "rejected" if whole else "error", payload.decode(errors="replace"))
    elif status != 200:
        tally.add(f"{kind} {status}", "error", payload.decode(errors="replace"))
    elif kind == "chat-stream":
        done = payload.rstrip().endswith(b"data: [DONE]") and b'"finish_reason":"' in payload
        tally.add(f"{kind} 200", "completed" if done else "error", payload[-200:].decode(errors="replace"))
    else:
        answer = json.loads(payload)
        finish = answer.get("finish_reason") or answer["choices"][0].get("finish_reason")
        tally.add(f"{kind} 200", "completed" if finish in ("stop", "length") else "error", str(answer))


async def client_loop(url: str, model: str, max_tokens: int, deadline: float, budget: list[int],
                      timeout: float, tally: Tally):
    # One connection per client, as SDK clients keep theirs.
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        while time.monotonic() < deadline and budget[0] > 0:
            budget[0] -= 1
            await one_request(client, model, max_tokens, tally)


async def run_load(url: str, clients: int, seconds: float, max_requests: int, model: str, max_tokens: int,
                   timeout: float) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds
    budget = [max_requests]
    await asyncio.gather(*(client_loop(url, model, max_tokens, deadline, budget, timeout, tally)
                           for _ in range(clients)))
    return tally


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    parser.add_argument("--sequences", type=int, default=4, help="sequences each model decodes at once")
    parser.add_argument("--queue", type=int, default=4, help="requests that may wait per model")
    parser.add_argument("--overload", type=int, default=10, help="clients per unit of capacity (default 10)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--request-timeout", type=float, default=120)
    args = parser.parse_args()

    capacity = args.sequences + args.queue
    clients = capacity * args.overload
    extra = ["--from", str(ROOT / "spin.toml")]
    if args.model != "smollm2-135m-instruct":
        # The repository's app serves the default model; any other gets an app of its own.
        app = Path("/tmp/nnspin-load-spin.toml")
        app.write_text((ROOT / "spin.toml").read_text().replace('"smollm2-135m-instruct"', f'"{args.model}"')
                       .replace('source = "target/', f'source = "{ROOT}/target/'))
        extra = ["--from", str(app)]
    process, url = start_host(*extra, "--max-sequences-per-model", str(args.sequences),
                              "--max-queue-per-model", str(args.queue))
    try:
        warm = asyncio.run(run_load(url, capacity, 5, 10 * capacity, args.model, args.max_tokens,
                                    args.request_timeout))
        time.sleep(1)
        served_before = served_total(httpx.get(url + "/metrics").text)
        rss_before = rss_mib(process.pid)
        print(f"capacity {capacity} ({args.sequences} decoding + {args.queue} queued per model), "
              f"{clients} clients for {args.duration:.0f} s against {url}, model {args.model}, "
              f"{args.max_tokens} tokens per answer; warm-up: {sum(warm.outcomes.values())} requests")
        started = time.monotonic()
        tally = asyncio.run(run_load(url, clients, args.duration, args.max_requests, args.model,
                                     args.max_tokens, args.request_timeout))
        elapsed = time.monotonic() - started
        rss_after = rss_mib(process.pid)
        time.sleep(5)
        rss_settled = rss_mib(process.pid)
        metrics = httpx.get(url + "/metrics").text
        served = served_total(metrics) - served_before
        alive = process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=30)

    sent = sum(tally.outcomes.values())
    print(f"\n{sent} requests in {elapsed:.1f} s ({sent / elapsed:.1f}/s)")
    for outcome in ("completed", "rejected", "error", "lost"):
        print(f"  {outcome:<10} {tally.outcomes[outcome]:>7}")
    print("by kind and status: " + ", ".join(f"{k}: {n}" for k, n in sorted(tally.statuses.items())))
    print(f"host counted {served} responses (client received {sent - tally.outcomes['lost']})")
    print(f"host RSS: {rss_before:.0f} MiB after warm-up, {rss_after:.0f} MiB after the load, "
          f"{rss_settled:.0f} MiB settled ({rss_settled - rss_before:+.0f} MiB)")
    for outcome, example in tally.examples.items():
        print(f"first {outcome}: {example}")
    failed = (tally.outcomes["error"] or tally.outcomes["lost"] or not alive
              or served != sent - tally.outcomes["lost"])
    if not alive:
        print("the host died")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
