#!/usr/bin/env python3
"""nnspin beside the engines a user would run instead, on the same model, prompts and machine.

    .venv/bin/pip install -r bench/requirements.txt   # the peers (llama-cpp-python compiles llama.cpp: ~20 min)
    .venv/bin/python bench/peers.py                   # every engine installed; --engines, --repeat, --tokens
    .venv/bin/python bench/peers.py --model gemma3-270m --gguf FILE --engines nnspin,llama.cpp
                                                      # another exported model (models/NAME) and its GGUF
    .venv/bin/python bench/peers.py --host-args "--backend openvino --precision fast"
                                                      # nnspin in another backend or precision mode

Engines, each measured in a process of its own, one after another, so none competes with another:

    nnspin      the host (target/debug/nnspin) with an app of the OpenAI component serving only the model
                over HTTP: streamed /v1/chat/completions
    llama.cpp   llama-cpp-python's OpenAI server on the original GGUF, over HTTP with the same client (a GGUF
                without a chat template, such as Gemma 3 270M's, gets llama-cpp-python's format of its family)
    ort-genai   onnxruntime-genai's Python API on nnspin's own ONNX model directory (genai_config.json)
    ov-genai    OpenVINO GenAI's LLMPipeline reading the Q4_1 GGUF

Prompts are the model's own chat template's rendering, the end of turn suppressed. Figures: seconds from
start to ready (the model loaded), time to first token for 32/128/512-token prompts, single-stream decode
tokens/s (greedy), aggregate tokens/s and p50/p99 request latency at 1, 2, 4, 8 and 16 concurrent streams,
and resident memory. Then the physical limit: weight bytes read per token over measured memory bandwidth.
Times to first token and decode rates are medians of --repeat runs; each concurrency level runs once. Ratios
are nnspin / peer (above 1 is nnspin ahead for rates, behind for times and memory). Run it on an otherwise
idle machine.
"""

import argparse
import concurrent.futures
import functools
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from host import ROOT, start_host

# The model measured: set by `configure` from --model and --gguf.
MODEL = "smollm2-135m-instruct"
MODEL_DIR = ROOT / "models" / MODEL
GGUF: Path | None = None
PROMPT_TOKENS = [32, 128, 512]
STREAMS = [1, 2, 4, 8, 16]
ENGINES = ["nnspin", "llama.cpp", "ort-genai", "ov-genai"]
THREADS = 2
FILLER = ("Rivers carry water from mountains to the sea, shaping valleys, feeding forests and giving "
          "towns their reason to exist. ")


# ----------------------------------------------------------------------------------------------------
# Prompts: the same chat, rendered by the model's own template, for every engine.

SYSTEM = "Answer briefly."
# The model's end-of-turn tokens: suppressed, so every engine generates exactly the tokens asked for.
EOS: list[int] = []


def configure(model: str, gguf_file: Path | None) -> None:
    """Measures `model` (a directory under models/), whose GGUF is `gguf_file` (the default model's GGUF when
    None)."""
    global MODEL, MODEL_DIR, GGUF, EOS
    sys.path.insert(0, str(ROOT / "tools"))
    import export_model

    MODEL, MODEL_DIR = model, ROOT / "models" / model
    GGUF = gguf_file or export_model.default_model_gguf()
    vocab = json.loads((MODEL_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    eos = json.loads((MODEL_DIR / "generation_config.json").read_text()).get("eos_token_id", [])
    ends = [vocab[t] for t in export_model.END_OF_TURN if t in vocab]
    EOS = sorted({*(eos if isinstance(eos, list) else [eos]), *ends})


class Prompts:
    """User messages whose rendered chat is N tokens, each opening with a number never used before, so no
    engine's prefix cache can serve a measured request from an earlier one."""

    def __init__(self):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
        self.filler = self.tokenizer.encode(FILLER * 64).ids
        self.serial = 1000

    def length(self, user: str) -> int:
        return len(self.tokenizer.encode(render(user)).ids)

    def make(self, tokens: int) -> str:
        self.serial += 1
        head = f"Note {self.serial}."
        overhead = self.length(head + " ")
        return f"{head} " + self.tokenizer.decode(self.filler[: max(0, tokens - overhead)])


@functools.cache
def template():
    """The model's chat template, compiled as Hugging Face compiles templates, and its tokenizer config."""
    import jinja2

    config = json.loads((MODEL_DIR / "tokenizer_config.json").read_text())
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(config["chat_template"]), config


def render(user: str) -> str:
    """The chat as the model's template writes it: a system message, the user's, the assistant's turn."""
    compiled, config = template()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return compiled.render(messages=messages, add_generation_prompt=True, bos_token=config.get("bos_token") or "",
                           eos_token=config.get("eos_token") or "")


# ----------------------------------------------------------------------------------------------------
# Engines: each streams one greedy completion and reports (seconds to first token, tokens, seconds).

class HttpEngine:
    """An OpenAI-compatible server, streamed over HTTP by the same client for every engine."""

    def __init__(self, url: str, model: str, pid: int):
        self.url, self.model, self.pid = url, model, pid

    def stream(self, user: str, max_tokens: int) -> tuple[float, int, float]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        first, pieces, usage, total = stream_chat(self.url, self.model, messages, max_tokens)
        tokens = usage["completion_tokens"] if usage else len(pieces)
        return first, tokens, total

    def rss_mib(self) -> float:
        return rss_mib(self.pid)


def stream_chat(url: str, model: str, messages: list[dict], max_tokens: int) -> tuple[float, list[str], dict, float]:
    """Streams one greedy chat completion of exactly `max_tokens` tokens (end of turn suppressed) from an
    OpenAI-compatible server; returns the seconds to its first content, the content's pieces, the usage
    (empty if the server sends none) and the seconds in all."""
    body = json.dumps({
        "model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens,
        "logit_bias": {str(token): -100 for token in EOS},
        "stream": True, "stream_options": {"include_usage": True},
    }).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    started = time.perf_counter()
    first, pieces, usage = None, [], {}
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                pieces.append(event["choices"][0]["delta"]["content"])
    return first - started, pieces, usage, time.perf_counter() - started


class OrtGenai:
    def __init__(self):
        import onnxruntime_genai as og

        sys.path.insert(0, str(ROOT / "tools"))
        import export_model

        if not (MODEL_DIR / "genai_config.json").exists():
            export_model.write_genai_config(MODEL_DIR)
        self.og = og
        config = og.Config(str(MODEL_DIR))
        config.clear_providers()
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)

    def stream(self, user: str, max_tokens: int) -> tuple[float, int, float]:
        og = self.og
        ids = self.tokenizer.encode(render(user))
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + max_tokens, min_length=len(ids) + max_tokens,
                                  do_sample=False)
        started = time.perf_counter()
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        first, tokens = None, 0
        while not generator.is_done():
            generator.generate_next_token()
            tokens += 1
            first = first or time.perf_counter()
        return first - started, tokens, time.perf_counter() - started

    def rss_mib(self) -> float:
        return rss_mib(os.getpid())


class OvGenai:
    """LLMPipeline serves one generate call at a time: concurrent streams go in as one batched call."""

    def __init__(self):
        import openvino_genai as ov

        self.ov = ov
        self.pipe = ov.LLMPipeline(str(GGUF), "CPU", {"INFERENCE_NUM_THREADS": THREADS})
        self.lock = threading.Lock()

    def config(self, max_tokens: int):
        config = self.ov.GenerationConfig()
        config.max_new_tokens = max_tokens
        config.min_new_tokens = max_tokens
        config.apply_chat_template = False
        return config

    def stream(self, user: str, max_tokens: int) -> tuple[float, int, float]:
        stamps = []

        def on_text(_):
            stamps.append(time.perf_counter())
            return self.ov.StreamingStatus.RUNNING

        with self.lock:
            started = time.perf_counter()
            result = self.pipe.generate([render(user)], self.config(max_tokens), on_text)
            ended = time.perf_counter()
        return stamps[0] - started, self.count(result.texts[0]), ended - started

    def batch(self, user: str, streams: int, max_tokens: int) -> tuple[list[float], int, float]:
        started = time.perf_counter()
        result = self.pipe.generate([render(user + f" ({i})") for i in range(streams)], self.config(max_tokens))
        elapsed = time.perf_counter() - started
        return [elapsed] * streams, sum(self.count(text) for text in result.texts), elapsed

    def count(self, text: str) -> int:
        """Tokens in a generated text (the streamer is called per printable piece, not per token)."""
        return self.pipe.get_tokenizer().encode(text).input_ids.data.shape[1]

    def rss_mib(self) -> float:
        return rss_mib(os.getpid())


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# llama-cpp-python's chat format of each family the export has a default template for.
LLAMA_CPP_CHAT_FORMATS = {"gemma3": "gemma"}


def start_llama_cpp(*extra: str) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's OpenAI server on the GGUF, with `extra` server options."""
    import export_model  # configure() put tools/ on the path

    # A GGUF without a chat template was given its family's by the export; llama.cpp gets the same family's.
    template = json.loads((MODEL_DIR / "tokenizer_config.json").read_text())["chat_template"]
    family = next((arch for arch, default in export_model.DEFAULT_TEMPLATES.items() if default == template), None)
    if family:
        extra = ("--chat_format", LLAMA_CPP_CHAT_FORMATS[family], *extra)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "llama_cpp_server.py"), "--model", str(GGUF), "--host", "127.0.0.1",
         "--port", str(port), "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS),
         "--n_ctx", "4096", "--n_batch", "512",
         # By default a new request cancels the one being served; queue them instead.
         "--interrupt_requests", "False", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=1)
            return process, url
        except OSError:
            if process.poll() is not None:
                sys.exit("llama.cpp's server exited at start")
            time.sleep(0.5)
    sys.exit("llama.cpp's server did not start")


# ----------------------------------------------------------------------------------------------------
# Measurement of one engine (runs in its own process).

def measure(engine, repeat: int, tokens: int) -> dict[str, float]:
    prompts = Prompts()
    figures: dict[str, float] = {}
    engine.stream(prompts.make(32), 4)  # warm up
    for n in PROMPT_TOKENS:
        samples, length = [], 0
        for _ in range(repeat):
            user = prompts.make(n)
            length = prompts.length(user)
            samples.append(engine.stream(user, 1)[0])
        figures[f"TTFT {length}-token prompt, ms"] = 1000 * statistics.median(samples)
    rates = []
    for _ in range(repeat):
        ttft, generated, total = engine.stream(prompts.make(32), tokens)
        rates.append((generated - 1) / (total - ttft))
    figures[f"decode {tokens} tokens, tok/s"] = statistics.median(rates)
    # Each level once: its streams already give many latencies, and the levels take most of the time.
    for streams in STREAMS:
        aggregate, latencies = [], []
        for _ in range(1):
            if streams > 1 and hasattr(engine, "batch"):
                lat, generated, wall = engine.batch(prompts.make(32), streams, tokens)
            else:
                started = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(streams) as pool:
                    users = [prompts.make(32) for _ in range(streams)]
                    runs = list(pool.map(lambda user: engine.stream(user, tokens), users))
                wall = time.perf_counter() - started
                lat, generated = [run[2] for run in runs], sum(run[1] for run in runs)
            aggregate.append(generated / wall)
            latencies.extend(lat)
        latencies.sort()
        figures[f"{streams} streams, aggregate tok/s"] = statistics.median(aggregate)
        figures[f"{streams} streams, p50 latency s"] = latencies[len(latencies) // 2]
        figures[f"{streams} streams, p99 latency s"] = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    figures["resident memory, MiB"] = engine.rss_mib()
    return figures


def run_engine(name: str, repeat: int, tokens: int, host_args: list[str]) -> dict[str, float]:
    process = None
    started = time.perf_counter()
    try:
        if name == "nnspin":
            process, url = start_host("--threads", str(THREADS), *host_args, *app())
            engine = HttpEngine(url, MODEL, process.pid)
        elif name == "llama.cpp":
            process, url = start_llama_cpp()
            engine = HttpEngine(url, MODEL, process.pid)
        elif name == "ort-genai":
            engine = OrtGenai()
        else:
            engine = OvGenai()
        ready = time.perf_counter() - started
        return {"start to ready (model loaded), s": ready, **measure(engine, repeat, tokens)}
    finally:
        if process:
            process.terminate()
            process.wait(timeout=30)


def app() -> list[str]:
    """An app of the OpenAI component serving only the measured model, as each peer loads only it (the
    default spin.toml loads three models: its start time and memory would not compare)."""
    manifest = ROOT / "target" / "bench" / "peers-spin.toml"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(
        'spin_manifest_version = 2\n[application]\nname = "peers"\n'
        '[[trigger.http]]\nroute = "/v1/..."\ncomponent = "openai"\n'
        f'[component.openai]\nsource = "{ROOT}/target/wasm32-wasip2/release/nnspin_openai.wasm"\n'
        f'ai_models = ["{MODEL}"]\n')
    return ["--from", str(manifest)]


def installed(name: str) -> bool:
    module = {"nnspin": None, "llama.cpp": "llama_cpp", "ort-genai": "onnxruntime_genai",
              "ov-genai": "openvino_genai"}[name]
    if module is None:
        return (ROOT / "target/debug/nnspin").exists()
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------------------------------
# The physical limit.

def bandwidth_gb_s() -> float:
    """Read bandwidth with THREADS threads summing their halves of a 1 GiB array (numpy drops the GIL)."""
    import numpy as np

    data = np.ones(1 << 28, dtype=np.float32)
    parts = np.array_split(data, THREADS)
    best = 0.0
    for _ in range(5):
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(np.sum, parts))
        best = max(best, data.nbytes / (time.perf_counter() - started) / 1e9)
    return best


def weight_bytes_per_token() -> int:
    """Every weight is read once per decoded token, except the embedding table, of which one row is
    gathered (the output projection has its own copy, read whole)."""
    import onnx

    model = onnx.load(str(MODEL_DIR / "model.onnx"), load_external_data=False)
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer if "embed" not in t.name)


# ----------------------------------------------------------------------------------------------------

def print_targets(results: dict[str, dict[str, float]], peers: list[str]) -> None:
    """The performance targets nnspin is held to, each against the best peer on that figure: time to first
    token for a 128-token prompt at most 0.77x the best peer's, single-stream decode and the 8-stream
    aggregate at least 1.3x, and the 8-stream aggregate at least 4x nnspin's own single stream."""
    ours = results["nnspin"]
    ttft = min((f for f in ours if f.startswith("TTFT ")), key=lambda f: abs(int(re.findall(r"\d+", f)[0]) - 128))
    decode = next(f for f in ours if f.startswith("decode "))
    streams = "8 streams, aggregate tok/s"
    print("\ntargets (nnspin / the best peer on the figure):")
    for figure, lower_is_better, target in [(ttft, True, 0.77), (decode, False, 1.3), (streams, False, 1.3)]:
        best = (min if lower_is_better else max)(peers, key=lambda p: results[p][figure])
        ratio = ours[figure] / results[best][figure]
        met = ratio <= target if lower_is_better else ratio >= target
        print(f"  {figure}: {ours[figure]:.3g} against {best}'s {results[best][figure]:.3g}: {ratio:.2f}x "
              f"(target {'at most' if lower_is_better else 'at least'} {target}x): {'met' if met else 'missed'}")
    own = ours[streams] / ours[decode]
    print(f"  {streams} against nnspin's single stream: {own:.2f}x (target at least 4x): "
          f"{'met' if own >= 4 else 'missed'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, from: " + ", ".join(ENGINES))
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; medians are reported")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per stream for decode and concurrency")
    parser.add_argument("--model", default=MODEL, help="the model: a directory under models/")
    parser.add_argument("--gguf", type=Path,
                        help="its GGUF, for llama.cpp and OpenVINO GenAI (default: the default model's)")
    parser.add_argument("--host-args", default="",
                        help="more arguments for nnspin's host, e.g. '--backend openvino --precision fast'")
    parser.add_argument("--engine", help=argparse.SUPPRESS)  # internal: measure one engine, print JSON
    args = parser.parse_args()
    configure(args.model, args.gguf)

    if args.engine:
        print(json.dumps(run_engine(args.engine, args.repeat, args.tokens, shlex.split(args.host_args))))
        return

    results: dict[str, dict[str, float]] = {}
    for name in args.engines.split(","):
        if not installed(name):
            print(f"{name}: not installed (bench/requirements.txt), skipped", file=sys.stderr)
            continue
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        child = subprocess.run([sys.executable, __file__, "--engine", name, "--repeat", str(args.repeat),
                                "--tokens", str(args.tokens), "--model", args.model, "--host-args", args.host_args,
                                *(["--gguf", str(args.gguf)] if args.gguf else [])], capture_output=True, text=True)
        if child.returncode != 0:
            print(f"{name} failed:\n{child.stderr[-3000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])

    engines = list(results)
    peers = [e for e in engines if e != "nnspin"]
    header = ["figure", *engines, *(f"nnspin / {p}" for p in peers if "nnspin" in results)]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for figure in next(iter(results.values())) if results else []:
        row = [figure] + [f"{results[e][figure]:.3g}" for e in engines]
        if "nnspin" in results:
            row += [f"{results['nnspin'][figure] / results[p][figure]:.2f}" for p in peers]
        print("| " + " | ".join(row) + " |")

    if "nnspin" in results and peers:
        print_targets(results, peers)

    weights = weight_bytes_per_token()
    bandwidth = bandwidth_gb_s()
    print(f"\nweights read per token: {weights / 1e6:.0f} MB; memory bandwidth ({THREADS} threads): "
          f"{bandwidth:.1f} GB/s; decode ceiling: {bandwidth * 1e9 / weights:.0f} tok/s")


if __name__ == "__main__":
    main()
