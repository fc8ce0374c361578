#!/usr/bin/env python3
"""The portable OpenAI component on upstream `wasmtime serve`, beside nnspin.

The portable build (`--features portable`) compiles one model's tokenizer, chat template and facts into
the component, so it imports only WASI and wasi-nn and runs on a host that knows nothing of nnspin. This
command builds what that needs, each once and kept under target/:

- wasmtime-cli 48.0.8 (the version nnspin embeds) from crates.io with its `wasi-nn` feature (OpenVINO
  backend): about 30 minutes on 2 cores, the first time;
- the default model as a stateful OpenVINO IR (tools/export_openvino_ir.py), the form upstream's wasi-nn
  OpenVINO backend reads from `-S nn-graph=openvino::DIR`;
- the portable component, with models/smollm2-135m-instruct compiled in.

It then sends the same greedy chat completion, one request at a time, to:

1. upstream `wasmtime serve -S nn -S nn-graph=openvino::DIR` (its defaults: one instance per request, so
   each request builds the tokenizer and compiles the graph again);
2. the same, reusing instances (`--max-instance-reuse-count`), which keeps graph and tokenizer;
3. nnspin serving the portable component (`--backend openvino --precision fast`);
4. nnspin serving its own OpenAI component (tokenizer and template in the host, `nnspin:llm/text`).

Upstream compiles the graph with the OpenVINO CPU plugin's defaults (bf16 where the CPU has it, dynamic
int8 quantization), which is nnspin's `fast` precision on OpenVINO, so nnspin runs in that mode here too.
It prints each configuration's per-request latency (median and best of N), the answer, and the ratio to
nnspin's own component, and exits non-zero unless every configuration answers with "Paris".

    bench/portable.py [--requests 8] [--max-tokens 16]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import ROOT, start_host  # noqa: E402
from peers import free_port  # noqa: E402

MODEL = "smollm2-135m-instruct"
WASMTIME_VERSION = "48.0.8"
UPSTREAM = ROOT / "target/upstream-wasmtime"
PORTABLE = ROOT / "target/portable"
COMPONENT = PORTABLE / "wasm32-wasip2/release/nnspin_openai.wasm"
IR = PORTABLE / "ir" / MODEL
QUESTION = "What is the capital of France? Answer in one word."


def run(*command, **kwargs) -> None:
    print("$", " ".join(str(c) for c in command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True, **kwargs)


def wasmtime() -> Path:
    binary = UPSTREAM / "bin/wasmtime"
    if not binary.exists():
        run("cargo", "install", "wasmtime-cli", "--version", WASMTIME_VERSION, "--locked", "--features",
            "wasi-nn", "--root", UPSTREAM, env={**os.environ, "CARGO_TARGET_DIR": str(UPSTREAM / "build")})
    return binary


def ir() -> Path:
    if not (IR / "model.xml").exists():
        run(sys.executable, "tools/export_openvino_ir.py", "--model", f"models/{MODEL}", "--out", IR)
    return IR


def component() -> Path:
    # Cargo decides whether anything changed; its own target directory keeps the default build apart.
    run("cargo", "build", "--release", "--target", "wasm32-wasip2", "-p", "nnspin-openai", "--features",
        "portable", env={**os.environ, "NNSPIN_PORTABLE_MODEL": f"models/{MODEL}",
                         "CARGO_TARGET_DIR": str(PORTABLE)})
    return COMPONENT


def openvino_library_path() -> str:
    """LD_LIBRARY_PATH for upstream's OpenVINO: a directory with `libopenvino_c.so`, the name its library
    finder looks for (the wheel ships only versioned names, `libopenvino_c.so.2641`), and the wheel's own
    directory, where the libraries it loads next are."""
    import openvino

    libs = Path(openvino.__file__).parent / "libs"
    library = next(libs.glob("libopenvino_c.so*"))
    link_dir = UPSTREAM / "openvino-lib"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "libopenvino_c.so"
    link.unlink(missing_ok=True)
    link.symlink_to(library)
    return f"{link_dir}:{libs}"


def start_upstream(binary: Path, wasm: Path, graph: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`wasmtime serve` with wasi-nn (the graph preloaded from `graph`, named after its directory) and
    WASI's CLI interfaces (`-S cli`: components read their environment, as Spin's do)."""
    port = free_port()
    env = {**os.environ, "LD_LIBRARY_PATH": openvino_library_path()}
    log = open(UPSTREAM / "serve.log", "w")
    process = subprocess.Popen(
        [str(binary), "serve", "-S", "cli", "-S", "nn", "-S", f"nn-graph=openvino::{graph}",
         "--addr", f"127.0.0.1:{port}", *extra, str(wasm)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"wasmtime serve exited: {(UPSTREAM / 'serve.log').read_text()[-2000:]}")
        try:
            requests.get(f"{url}/health", timeout=5)
            return process, url
        except requests.ConnectionError:
            time.sleep(0.2)
    sys.exit("wasmtime serve did not start")


def portable_manifest(directory: Path, wasm: Path) -> Path:
    manifest = directory / "spin.toml"
    manifest.write_text(f"""spin_manifest_version = 2
[application]
name = "nnspin-portable"
[[trigger.http]]
route = "/..."
component = "openai"
[component.openai]
source = "{wasm}"
ai_models = ["{MODEL}"]
""")
    return manifest


def chat(url: str, max_tokens: int) -> tuple[float, str]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
            "max_tokens": max_tokens}
    start = time.perf_counter()
    response = requests.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        log = UPSTREAM / "serve.log"
        sys.exit(f"{url}: {response.status_code} {response.text[:500]}\n"
                 f"{log.read_text()[-2000:] if log.exists() else ''}")
    return elapsed, response.json()["choices"][0]["message"]["content"]


def measure(name: str, started: tuple[subprocess.Popen, str], requests_: int, max_tokens: int) -> dict:
    process, url = started
    try:
        chat(url, max_tokens)  # warm-up: what a first request pays is cold start, measured elsewhere
        timings, answer = [], ""
        for _ in range(requests_):
            elapsed, answer = chat(url, max_tokens)
            timings.append(elapsed)
    finally:
        process.terminate()
        process.wait(30)
    result = {"name": name, "median_ms": statistics.median(timings) * 1e3, "best_ms": min(timings) * 1e3,
              "answer": answer}
    print(f"{name}: median {result['median_ms']:.0f} ms, best {result['best_ms']:.0f} ms, {answer!r}", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=8, help="timed requests per configuration")
    p.add_argument("--max-tokens", type=int, default=16)
    args = p.parse_args()

    binary, graph, wasm = wasmtime(), ir(), component()
    run("cargo", "build", "-p", "nnspin")
    run("cargo", "build", "--release", "--target", "wasm32-wasip2", "-p", "nnspin-openai")
    if b"nnspin:llm/text" in wasm.read_bytes():
        sys.exit(f"{wasm} imports nnspin:llm/text: it is not the portable build")

    nnspin_args = ("--backend", "openvino", "--precision", "fast")
    results = []
    with tempfile.TemporaryDirectory() as directory:
        manifest = portable_manifest(Path(directory), wasm)
        configurations = [
            ("upstream wasmtime serve, portable component", lambda: start_upstream(binary, wasm, graph)),
            ("upstream wasmtime serve, portable component, instances reused",
             lambda: start_upstream(binary, wasm, graph, "--max-instance-reuse-count", "1000")),
            ("nnspin, portable component", lambda: start_host("--from", str(manifest), *nnspin_args)),
            ("nnspin, its own component", lambda: start_host(*nnspin_args)),
        ]
        for name, start in configurations:
            results.append(measure(name, start(), args.requests, args.max_tokens))

    own = results[-1]["median_ms"]
    print(f"\n{'configuration':<64} {'median':>9} {'best':>9} {'x nnspin':>9}")
    for r in results:
        print(f"{r['name']:<64} {r['median_ms']:>7.0f}ms {r['best_ms']:>7.0f}ms {r['median_ms'] / own:>9.2f}")
    wrong = [r["name"] for r in results if "Paris" not in r["answer"]]
    if wrong:
        sys.exit(f"no 'Paris' in the answer of: {', '.join(wrong)}")


if __name__ == "__main__":
    main()
