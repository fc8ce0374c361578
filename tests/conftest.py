"""Fixtures: the real nnspin host, started once per test session on each backend in each precision mode,
with the default model, the tiny random-weight model and the embedding model, and an OpenAI SDK client of
it. The helpers are in support.py."""

import openai
import pytest

from support import COMPONENTS, DEFAULT_MODEL, EMBEDDING_MODEL, TINY_MODEL, component, running_host, write_app

# Every test of the shared host runs on each backend in each precision mode, on the same model files.
CONFIGURATIONS = [(backend, precision) for backend in ("onnxruntime", "openvino") for precision in ("exact", "fast")]


@pytest.fixture(scope="session", params=CONFIGURATIONS, ids=lambda c: "-".join(c))
def host(request, tmp_path_factory):
    backend, precision = request.param
    assert (COMPONENTS / "nnspin_locallab.wasm").exists(), "build the components first (tools/setup.sh)"
    granted = tmp_path_factory.mktemp("granted")
    (granted / "greeting.txt").write_text("hello from the host")
    both = [DEFAULT_MODEL, TINY_MODEL]
    manifest = write_app(
        tmp_path_factory.mktemp("app"),
        "nnspin-e2e",
        {"/...": "openai", "/locallab/...": "locallab", "/limited/...": "limited", "/faults/...": "faults"},
        [
            component("openai", "nnspin_openai.wasm", both + [EMBEDDING_MODEL]),
            component("locallab", "nnspin_locallab.wasm", both, model_management="true"),
            # The same LocalLab component with LocalLab's documented rate limit.
            component("limited", "nnspin_locallab.wasm", [TINY_MODEL],
                      rate_limit="{ requests_per_minute = 60, burst = 10 }"),
            # Misbehaves on request; granted one directory only.
            component("faults", "nnspin_test_faults.wasm", [TINY_MODEL],
                      files=f'[{{ source = "{granted}", destination = "/data" }}]'),
        ],
    )
    # Short enough that the endless-loop and slow-client tests end quickly.
    with running_host(manifest, "--max-instance-cpu-ms", "2000", "--client-timeout-secs", "2",
                      "--backend", backend, "--precision", precision) as started:
        started.backend, started.precision = backend, precision
        yield started


@pytest.fixture(scope="session")
def client(host):
    return openai.OpenAI(base_url=host.openai_url, api_key="unused", max_retries=0, timeout=120)
