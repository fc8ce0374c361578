#!/usr/bin/env python3
"""A 10-turn chat with a 300-token system prompt: the time to first token of every turn, for nnspin with
its prefix cache and without it, and for the peers with theirs, on the same model and machine.

    .venv/bin/pip install -r bench/requirements.txt   # the peers (llama-cpp-python compiles llama.cpp: ~20 min)
    .venv/bin/python bench/multiturn.py               # every engine installed; --engines, --answer-tokens
    .venv/bin/python bench/multiturn.py --engines nnspin,nnspin-uncached --host-args "--backend openvino"

Engines, one after another, each in a process of its own:

    nnspin            the host (target/debug/nnspin, spin.toml), streamed /v1/chat/completions
    nnspin-uncached   the same with --prefix-cache-mib 0
    llama.cpp         llama-cpp-python's OpenAI server on the GGUF: it reuses the longest prefix of the last
                      prompt it evaluated (llama.cpp's cache_prompt), and --cache keeps older ones in RAM
    ov-genai          OpenVINO GenAI's continuous-batching LLMPipeline on the GGUF, enable_prefix_caching on

Every turn sends the whole conversation so far (the engine's own earlier answers included), as an OpenAI
client does, and streams a greedy answer of --answer-tokens tokens (end of turn suppressed, so every engine
writes as many). A warm-up chat with another system prompt runs first, so one-time costs land in no turn.
The table gives each turn's prompt tokens and time to first token in ms, then turn 10's ratios.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request

from host import start_host
import peers
from peers import MODEL, MODEL_DIR, THREADS, rss_mib, start_llama_cpp, stream_chat

# The default model, its GGUF and end-of-turn tokens, as peers.py measures them.
peers.configure(MODEL, None)

ENGINES = ["nnspin", "nnspin-uncached", "llama.cpp", "ov-genai"]
TURNS = 10
SYSTEM_TOKENS = 300
POLICY = ("You are the support assistant of Northwind Rail, a regional train company. Be courteous and "
          "precise. Tickets are valid on the day printed on them; season tickets run for a calendar month "
          "from the first day of use. Bicycles travel free outside the morning peak, from 9:30 on weekdays. "
          "Refunds for delays of more than thirty minutes are paid to the original card within ten days. "
          "Lost property is kept at the central station for sixty days. Never promise what this policy "
          "does not state; when unsure, point the traveller to the ticket office. ")
QUESTIONS = [
    "Can I take my bicycle on the 8:15 train?",
    "My train was 45 minutes late. What do I get?",
    "How long is a season ticket valid?",
    "I left my umbrella on a train last week. Where can I find it?",
    "Can I use yesterday's ticket today?",
    "How is a delay refund paid?",
    "Is there a bicycle charge at weekends?",
    "What should I do if I am not sure which ticket to buy?",
    "How long does lost property stay at the station?",
    "Summarise the rules you told me about in one sentence.",
]


def system_prompt(tokens: int) -> str:
    """The policy, repeated and cut so the system message is `tokens` tokens long."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    ids = tokenizer.encode(POLICY * (tokens // 60 + 2)).ids[:tokens]
    return tokenizer.decode(ids)


def render(messages: list[dict]) -> str:
    """The conversation as SmolLM2's template writes it, ending with the assistant's turn."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + \
        "<|im_start|>assistant\n"


class HttpChat:
    def __init__(self, url: str, pid: int):
        self.url, self.pid, self.cached = url, pid, []

    def turn(self, messages: list[dict], tokens: int) -> tuple[float, str, int]:
        first, pieces, usage, _ = stream_chat(self.url, MODEL, messages, tokens)
        self.cached.append((usage.get("prompt_tokens_details") or {}).get("cached_tokens"))
        return first, "".join(pieces), usage.get("prompt_tokens", 0)

    def memory(self) -> str:
        return f"resident {rss_mib(self.pid):.0f} MiB"


class NnspinChat(HttpChat):
    def memory(self) -> str:
        metrics = urllib.request.urlopen(self.url + "/metrics").read().decode()
        figures = {}
        for name in ["nnspin_kv_cache_bytes", "nnspin_prefix_cache_resident_tokens",
                     "nnspin_prefix_cache_hits_total", "nnspin_prefix_cache_queries_total"]:
            line = next(line for line in metrics.splitlines() if line.startswith(f'{name}{{model="{MODEL}"}}'))
            figures[name] = float(line.rsplit(" ", 1)[1])
        return (f"{super().memory()}; KV buffers {figures['nnspin_kv_cache_bytes'] / 2**20:.0f} MiB, "
                f"{figures['nnspin_prefix_cache_resident_tokens']:.0f} tokens resident, "
                f"{figures['nnspin_prefix_cache_hits_total']:.0f} of "
                f"{figures['nnspin_prefix_cache_queries_total']:.0f} prompt tokens served from the cache")


class OvGenaiChat:
    def __init__(self):
        import openvino_genai as ov

        self.ov = ov
        scheduler = ov.SchedulerConfig()
        scheduler.enable_prefix_caching = True
        scheduler.cache_size = 1  # GB, as nnspin's default budget
        self.pipe = ov.LLMPipeline(str(peers.GGUF), "CPU", scheduler_config=scheduler,
                                   INFERENCE_NUM_THREADS=THREADS)
        self.tokenizer = self.pipe.get_tokenizer()

    def turn(self, messages: list[dict], tokens: int) -> tuple[float, str, int]:
        config = self.ov.GenerationConfig()
        config.max_new_tokens = tokens
        config.min_new_tokens = tokens
        config.apply_chat_template = False
        stamps = []

        def on_text(_):
            stamps.append(time.perf_counter())
            return self.ov.StreamingStatus.RUNNING

        prompt = render(messages)
        started = time.perf_counter()
        result = self.pipe.generate([prompt], config, on_text)
        length = self.tokenizer.encode(prompt).input_ids.data.shape[1]
        return stamps[0] - started, result.texts[0], length

    def memory(self) -> str:
        return f"resident {rss_mib(os.getpid()):.0f} MiB"


def converse(engine, tokens: int) -> dict:
    warm = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there."}]
    engine.turn(warm, 4)
    messages = [{"role": "system", "content": system_prompt(SYSTEM_TOKENS)}]
    turns = []
    for question in QUESTIONS[:TURNS]:
        messages.append({"role": "user", "content": question})
        ttft, answer, prompt_tokens = engine.turn(messages, tokens)
        messages.append({"role": "assistant", "content": answer})
        turns.append({"prompt_tokens": prompt_tokens, "ttft_ms": 1000 * ttft})
    return {"turns": turns, "memory": engine.memory(), "cached": getattr(engine, "cached", [])[1:]}


def run_engine(name: str, tokens: int, host_args: list[str]) -> dict:
    process = None
    try:
        if name.startswith("nnspin"):
            extra = ["--prefix-cache-mib", "0"] if name == "nnspin-uncached" else []
            process, url = start_host("--threads", str(THREADS), *host_args, *extra)
            engine = NnspinChat(url, process.pid)
        elif name == "llama.cpp":
            process, url = start_llama_cpp("--cache", "True")
            engine = HttpChat(url, process.pid)
        else:
            engine = OvGenaiChat()
        return converse(engine, tokens)
    finally:
        if process:
            process.terminate()
            process.wait(timeout=30)


def installed(name: str) -> bool:
    import importlib.util

    module = {"llama.cpp": "llama_cpp", "ov-genai": "openvino_genai"}.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, from: " + ", ".join(ENGINES))
    parser.add_argument("--answer-tokens", type=int, default=32, help="tokens of every answer")
    parser.add_argument("--host-args", default="",
                        help="more arguments for nnspin's host, e.g. \"--backend openvino\"")
    parser.add_argument("--engine", help=argparse.SUPPRESS)  # internal: measure one engine, print JSON
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(run_engine(args.engine, args.answer_tokens, shlex.split(args.host_args))))
        return

    results = {}
    for name in args.engines.split(","):
        if not installed(name):
            print(f"{name}: not installed (bench/requirements.txt), skipped", file=sys.stderr)
            continue
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        child = subprocess.run([sys.executable, __file__, "--engine", name, "--answer-tokens",
                                str(args.answer_tokens), "--host-args", args.host_args],
                               capture_output=True, text=True)
        if child.returncode != 0:
            print(f"{name} failed:\n{child.stderr[-3000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])

    engines = list(results)
    header = ["turn", *(f"{e} prompt tokens / TTFT ms" for e in engines)]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for turn in range(TURNS):
        # llama-cpp-python's stream reports no usage: its prompt length is not known here.
        cells = [f"{results[e]['turns'][turn]['prompt_tokens'] or '?'} / {results[e]['turns'][turn]['ttft_ms']:.0f}"
                 for e in engines]
        print(f"| {turn + 1} | " + " | ".join(cells) + " |")
    last = {e: results[e]["turns"][-1]["ttft_ms"] for e in engines}
    print()
    if "nnspin" in last and "nnspin-uncached" in last:
        print(f"turn {TURNS}: nnspin without the cache / with it: {last['nnspin-uncached'] / last['nnspin']:.1f}x")
    peers = [e for e in last if not e.startswith("nnspin")]
    if "nnspin" in last and peers:
        best = min(peers, key=last.get)
        print(f"turn {TURNS}: nnspin / best peer ({best}): {last['nnspin'] / last[best]:.2f}")
    for e in engines:
        print(f"{e}: {results[e]['memory']}" + (f"; cached tokens per turn {results[e]['cached']}"
                                                 if any(results[e]["cached"]) else ""))


if __name__ == "__main__":
    main()
