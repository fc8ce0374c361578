#!/usr/bin/env python3
"""Serverless figures of the nnspin host, on the repository's spin.toml and default model:

* per-request instantiation time, p50 and p99, of a fresh component instance (from the host's own
  measurements, logged at debug level), over --requests calls of GET /health;
* process start to first token, with a cold and with a warm compilation cache (median of --repeat);
* the host's resident memory with the default model loaded, after one chat completion.

    bench/cold_start.py [--requests 1000] [--repeat 3]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"


def start(cache_dir: str, log, log_level: str = "info") -> tuple[subprocess.Popen, str]:
    """Starts the host with its log going to the file `log` (a pipe would fill up and block it)."""
    process = subprocess.Popen(
        [str(ROOT / "target/debug/nnspin"), "up", "--listen", "127.0.0.1:0", "--cache-dir", cache_dir],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, "RUST_LOG": log_level},
    )
    for line in process.stdout:
        if "listening on " in line:
            return process, line.split("listening on ", 1)[1].strip()
    sys.exit("the host did not start")


def first_token(url: str) -> None:
    """Waits for readiness, then streams one completion until its first content token."""
    while True:
        try:
            with urllib.request.urlopen(url + "/health") as response:
                if response.status == 200:
                    break
        except (urllib.error.HTTPError, urllib.error.URLError):
            time.sleep(0.005)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
                       "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request) as response:
        for line in response:
            if line.startswith(b"data: {") and b'"content":""' not in line:
                return


def start_to_first_token(cache_dir: str) -> float:
    started = time.perf_counter()
    process, url = start(cache_dir, subprocess.DEVNULL)
    try:
        first_token(url)
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait()


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryFile("w+") as log:
        process, url = start(cache, log, "info,nnspin::serve=debug")
        first_token(url)
        print(f"host RSS with {MODEL} loaded, after one completion: {rss_bytes(process.pid) / 2**20:.0f} MiB")
        for _ in range(args.requests):
            with urllib.request.urlopen(url + "/health") as response:
                response.read()
        process.terminate()
        process.wait()
        log.seek(0)
        stderr = log.read()
        samples = sorted(int(us) for us in re.findall(r"instantiate_us=(\d+)", stderr))
        print(f"instantiation of a fresh component ({len(samples)} requests): "
              f"p50 {samples[len(samples) // 2]} us, p99 {samples[int(len(samples) * 0.99)]} us")

    cold, warm = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(start_to_first_token(cache))
            warm.append(start_to_first_token(cache))
    print(f"process start to first token, cold compilation cache: {1000 * statistics.median(cold):.0f} ms")
    print(f"process start to first token, warm compilation cache: {1000 * statistics.median(warm):.0f} ms")


if __name__ == "__main__":
    main()
