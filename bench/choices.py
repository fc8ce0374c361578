#!/usr/bin/env python3
"""What decoding a request's `n` choices as rows of one batch gains, on the served default model:

    .venv/bin/python bench/choices.py [--repeat 3] [-- nnspin up arguments]

For n = 1, 2, 4, 8 it asks for n sampled choices of one prompt in one request (the choices prefill the
prompt once, fork from its cache and decode in the same passes), and beside it the same choices as n
requests one after another (each with the choice's seed, its prompt found in the prefix cache: how the
choices ran before they were batched). It prints completion tokens per second of both and their ratio.
The end of a turn is kept out (`logit_bias`), so every choice generates `--tokens` tokens.
"""

import argparse
import json
import statistics
import time
import urllib.request

from host import start_host

MODEL = "smollm2-135m-instruct"
# The default model's end-of-turn and end-of-text tokens.
ENDS = {"2": -100, "0": -100}
PROMPT = ("Write a short story about a lighthouse keeper who finds a message in a bottle. "
          "Describe the sea, the weather, the keeper's daily routine and what the message says. ") * 3


def chat(url: str, n: int, seed: int, tokens: int) -> int:
    """One request of `n` choices; its completion tokens."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "n": n, "seed": seed,
            "temperature": 0.8, "max_tokens": tokens, "logit_bias": ENDS}
    request = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)["usage"]["completion_tokens"]


def rate(run) -> float:
    started = time.perf_counter()
    generated = run()
    return generated / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("host_args", nargs="*", help="arguments of `nnspin up`")
    args = parser.parse_args()
    process, url = start_host(*args.host_args)
    try:
        chat(url, 1, 0, 8)  # warm-up: the prompt's blocks are cached for every run after it
        print(f"{'n':>2} {'one request, tok/s':>19} {'one after another':>18} {'ratio':>6}")
        for n in (1, 2, 4, 8):
            together, apart = [], []
            for _ in range(args.repeat):
                together.append(rate(lambda: chat(url, n, 7, args.tokens)))
                apart.append(rate(lambda: sum(chat(url, 1, 7 + c, args.tokens) for c in range(n))))
            t, a = statistics.median(together), statistics.median(apart)
            print(f"{n:>2} {t:>19.1f} {a:>18.1f} {t / a:>5.2f}x", flush=True)
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
