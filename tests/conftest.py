"""Starts the real nnspin host once per test session, on a free port, with the default model and the
tiny random-weight model, and hands tests its base URL."""

import os
import queue
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"


class Host:
    def __init__(self, process: subprocess.Popen, url: str, log: list[str]):
        self.process = process
        self.url = url
        self.log = log
        self.backend = "onnxruntime"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"


def start_host(manifest: Path, *args: str, wait: str = "ready", env: dict | None = None,
               models_dir: Path = ROOT / "models") -> Host:
    """Starts `nnspin up` on a free port; returns once it prints `nnspin listening` (wait="listening")
    or `nnspin ready` (wait="ready"). `env` adds environment variables."""
    binary = ROOT / "target" / "debug" / "nnspin"
    assert binary.exists(), "build the host first (tools/setup.sh)"
    process = subprocess.Popen(
        [
            str(binary), "up", "--from", str(manifest), "--listen", "127.0.0.1:0",
            "--models-dir", str(models_dir), *args,
        ],
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
                return Host(process, url, log)
        if "nnspin ready" in line and url:
            return Host(process, url, log)
        if line == "" and process.poll() is not None:
            raise RuntimeError("the host exited:\n" + "".join(log))


def failed_start(manifest: Path, *args: str, models_dir: Path = ROOT / "models") -> str:
    """Runs `nnspin up` expecting it to exit non-zero; returns what it wrote from its error on (the
    host's own `nnspin: error:` line, or the command line parser's `error:`)."""
    result = subprocess.run(
        [str(ROOT / "target" / "debug" / "nnspin"), "up", "--from", str(manifest), "--listen", "127.0.0.1:0",
         "--models-dir", str(models_dir), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode != 0, result.stdout + result.stderr
    start = result.stderr.find("nnspin: error:")
    return result.stderr[start if start >= 0 else result.stderr.index("error:"):]


def one_component_app(directory: Path, component: str, wasm: str, models: list[str], route: str = "/...") -> Path:
    """Writes a spin.toml serving only `component` (built as `wasm`) at `route`, with `models`."""
    manifest = directory / "spin.toml"
    listed = ", ".join(f'"{m}"' for m in models)
    manifest.write_text(
        f"""
spin_manifest_version = 2
[application]
name = "{component}-only"
[[trigger.http]]
route = "{route}"
component = "{component}"
[component.{component}]
source = "{ROOT / "target" / "wasm32-wasip2" / "release" / wasm}"
ai_models = [{listed}]
"""
    )
    return manifest


def openai_app(directory: Path, models: list[str]) -> Path:
    """Writes a spin.toml serving only the OpenAI component at /..., with `models`."""
    return one_component_app(directory, "openai", "nnspin_openai.wasm", models)


# Every test of the shared host runs on each backend, on the same model files.
BACKENDS = ["onnxruntime", "openvino"]


@pytest.fixture(scope="session", params=BACKENDS)
def host(request, tmp_path_factory) -> Host:
    components = ROOT / "target" / "wasm32-wasip2" / "release"
    assert (components / "nnspin_locallab.wasm").exists(), "build the components first (tools/setup.sh)"
    manifest = tmp_path_factory.mktemp("app") / "spin.toml"
    granted = tmp_path_factory.mktemp("granted")
    (granted / "greeting.txt").write_text("hello from the host")
    manifest.write_text(
        f"""
spin_manifest_version = 2

[application]
name = "nnspin-e2e"

[[trigger.http]]
route = "/..."
component = "openai"

[[trigger.http]]
route = "/locallab/..."
component = "locallab"

[[trigger.http]]
route = "/limited/..."
component = "limited"

[[trigger.http]]
route = "/faults/..."
component = "faults"

[component.openai]
source = "{components / "nnspin_openai.wasm"}"
ai_models = ["{DEFAULT_MODEL}", "{TINY_MODEL}"]

[component.locallab]
source = "{components / "nnspin_locallab.wasm"}"
ai_models = ["{DEFAULT_MODEL}", "{TINY_MODEL}"]
model_management = true

# The same LocalLab component with LocalLab's documented rate limit.
[component.limited]
source = "{components / "nnspin_locallab.wasm"}"
ai_models = ["{TINY_MODEL}"]
rate_limit = {{ requests_per_minute = 60, burst = 10 }}

# Misbehaves on request; granted one directory only.
[component.faults]
source = "{components / "nnspin_test_faults.wasm"}"
ai_models = ["{TINY_MODEL}"]
files = [{{ source = "{granted}", destination = "/data" }}]
"""
    )
    # Short enough that the endless-loop and slow-client tests end quickly.
    started = start_host(manifest, "--max-instance-cpu-ms", "2000", "--client-timeout-secs", "2",
                         "--backend", request.param)
    started.backend = request.param
    yield started
    alive = started.process.poll() is None
    started.process.terminate()
    started.process.wait(timeout=30)
    assert alive, "the host died during the tests:\n" + "".join(started.log)
