"""Helpers the tests share: starting and stopping the real host, writing the spin.toml apps they serve,
and reading its responses and metrics. Fixtures live in conftest.py; nothing here is a test."""

import contextlib
import json
import os
import queue
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ROOT / "target" / "wasm32-wasip2" / "release"
DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"
# sentence-transformers/all-MiniLM-L6-v2, exported by tools/export_encoder.py.
EMBEDDING_MODEL = "all-minilm-l6-v2"
CHAT = "/v1/chat/completions"


class Host:
    def __init__(self, process: subprocess.Popen, url: str, log: list[str], started: float):
        self.process = process
        self.url = url
        self.log = log
        # When the process was started (time.monotonic()), for what it reports of its uptime.
        self.started = started
        self.backend = "onnxruntime"
        self.precision = "exact"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def stop(self, timeout: float = 30) -> int:
        """Asks the host to stop (SIGTERM) unless it already has; returns its exit status."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=timeout)


def _command(manifest: Path, models_dir: Path, args) -> list[str]:
    binary = ROOT / "target" / "debug" / "nnspin"
    assert binary.exists(), "build the host first (tools/setup.sh)"
    return [str(binary), "up", "--from", str(manifest), "--listen", "127.0.0.1:0", "--models-dir",
            str(models_dir), *args]


def start_host(manifest: Path, *args: str, wait: str = "ready", env: dict | None = None,
               models_dir: Path = ROOT / "models", wrapper: tuple[str, ...] = ()) -> Host:
    """Starts `nnspin up` on a free port; returns once it prints `nnspin listening` (wait="listening")
    or `nnspin ready` (wait="ready"). `env` adds environment variables; `wrapper` is a command that runs
    it (`ip netns exec NAME`)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [*wrapper, *_command(manifest, models_dir, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), **(env or {})},
    )
    lines: "queue.Queue[str]" = queue.Queue()
    log: list[str] = []

    def pump():
        for line in process.stdout:
            log.append(line)
            lines.put(line)
        lines.put("")  # end of output

    threading.Thread(target=pump, daemon=True).start()
    url = None
    while True:
        try:
            line = lines.get(timeout=180)
        except queue.Empty:
            process.kill()
            raise RuntimeError("the host did not start in time:\n" + "".join(log))
        if "nnspin listening on " in line:
            url = line.split("listening on ", 1)[1].strip()
            if wait == "listening":
                return Host(process, url, log, started)
        if "nnspin ready" in line and url:
            return Host(process, url, log, started)
        if line == "":
            # Its output ended: it is exiting (it may not have been reaped yet, so wait for it).
            process.wait(timeout=30)
            raise RuntimeError("the host exited:\n" + "".join(log))


@contextlib.contextmanager
def running_host(manifest: Path, *args: str, **options):
    """A host for the `with` block: started as `start_host` does, stopped after, and required to have
    stayed up throughout (a host that died under a test fails it)."""
    host = start_host(manifest, *args, **options)
    try:
        yield host
    finally:
        alive = host.process.poll() is None
        host.stop()
    assert alive, "the host died during the test:\n" + "".join(host.log)


def failed_start(manifest: Path, *args: str, models_dir: Path = ROOT / "models") -> str:
    """Runs `nnspin up` expecting it to exit non-zero; returns what it wrote from its error on (the
    host's own `nnspin: error:` line, or the command line parser's `error:`)."""
    result = subprocess.run(_command(manifest, models_dir, args), cwd=ROOT, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode != 0, result.stdout + result.stderr
    start = result.stderr.find("nnspin: error:")
    return result.stderr[start if start >= 0 else result.stderr.index("error:"):]


def free_port() -> int:
    """A TCP port nothing listens on now (in the calling thread's network namespace)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def component(name: str, wasm: str, models: list[str], **keys) -> str:
    """A `[component.NAME]` table; `keys` are further keys, written as TOML values."""
    lines = [f"[component.{name}]", f'source = "{COMPONENTS / wasm}"',
             "ai_models = [" + ", ".join(f'"{m}"' for m in models) + "]"]
    lines += [f"{key} = {value}" for key, value in keys.items()]
    return "\n".join(lines)


def write_app(directory: Path, name: str, routes: dict[str, str], components: list[str]) -> Path:
    """Writes `directory/spin.toml`: `routes` maps each route to its component, `components` are their
    tables (see `component`)."""
    triggers = "".join(f'[[trigger.http]]\nroute = "{route}"\ncomponent = "{target}"\n'
                       for route, target in routes.items())
    manifest = directory / "spin.toml"
    manifest.write_text(f'spin_manifest_version = 2\n[application]\nname = "{name}"\n{triggers}\n'
                        + "\n\n".join(components) + "\n")
    return manifest


def one_component_app(directory: Path, name: str, wasm: str, models: list[str], route: str = "/...") -> Path:
    """A spin.toml serving only component `name` (built as `wasm`) at `route`, with `models`."""
    return write_app(directory, f"{name}-only", {route: name}, [component(name, wasm, models)])


def openai_app(directory: Path, models: list[str]) -> Path:
    """A spin.toml serving only the OpenAI component at /..., with `models`."""
    return one_component_app(directory, "openai", "nnspin_openai.wasm", models)


def assert_json_error(response: httpx.Response, status: int) -> dict:
    """The response is an error of `status` in the shape every error has; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["message"] and body["error"]["type"]
    assert body["detail"] == body["error"]["message"]
    return body


def metric(text: str, name: str, **labels) -> float:
    """One sample of the Prometheus exposition `text`."""
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = r"(?m)^" + re.escape(name) + (r"\{" + re.escape(selector) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(pattern, text)
    assert match, f"{name}{{{selector}}} missing from:\n{text}"
    return float(match.group(1))


def host_metric(host: Host, name: str, **labels) -> float:
    return metric(httpx.get(host.url + "/metrics").text, name, **labels)


def wait_for_metric(host: Host, name: str, value: float, seconds: float = 10.0, **labels):
    """Waits until the host's metric reaches `value` (requests end a moment after their last byte)."""
    deadline = time.monotonic() + seconds
    while (current := host_metric(host, name, **labels)) != value:
        assert time.monotonic() < deadline, f"{name} stayed at {current}, not {value}"
        time.sleep(0.05)


def contexts_alive(host: Host) -> float:
    text = httpx.get(host.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nnspin_execution_contexts{"))


def wait_for_no_contexts(host: Host, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while contexts_alive(host) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert contexts_alive(host) == 0


def tiny_chat(host: Host, max_tokens: int = 2) -> dict:
    """A greedy chat completion on the tiny model, which never ends its turn this early: it answers
    with exactly `max_tokens` tokens."""
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "temperature": 0}
    response = httpx.post(host.url + CHAT, json=body, timeout=60)
    assert response.status_code == 200, response.text
    completion = response.json()
    assert completion["usage"]["completion_tokens"] == max_tokens, completion
    assert completion["choices"][0]["finish_reason"] == "length", completion
    return completion


QUESTIONS = [
    "What is the capital of France? Answer in English.",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "What is 12 plus 30?",
    "List the days of the week.",
    "Why is the sky blue? Answer briefly.",
    "Translate 'good morning' into Spanish.",
    "Give a short tip for learning to cook.",
]


def answer(host: Host, question: str, stream: bool, model: str = DEFAULT_MODEL) -> str:
    """The greedy answer (24 tokens at most) to one user message, whole or streamed."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 24,
            "temperature": 0, "stream": stream}
    if not stream:
        response = httpx.post(host.url + CHAT, json=body, timeout=300)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]
    text = []
    with httpx.stream("POST", host.url + CHAT, json=body, timeout=300) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    text.append(choice["delta"].get("content") or "")
    return "".join(text)


def gathered_calls(stream):
    """The calls of a streamed answer, put together from their deltas as the SDK's helpers do."""
    calls, content, finish = {}, "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return [calls[i] for i in sorted(calls)], content, finish
