"""The OpenAPI descriptions both components serve, held to the running host by schemathesis: property-based
requests from each document (valid and deliberately invalid ones, undeclared methods), and every response
checked against it. No 5xx, every status and body as documented, every invalid request refused with 4xx."""

import subprocess
import sys

import httpx
import pytest

from conftest import ROOT, TINY_MODEL, start_host

# Every check but positive_data_acceptance: OpenAI's cross-field rules (top_logprobs needs logprobs,
# tool_choice needs tools, echo excludes logprobs, a served model, a prompt within the context) are
# described in prose, which a generator of schema-valid bodies cannot read.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]
# Examples per operation and phase; about 20 s per API on the tiny model.
EXAMPLES = "50"


@pytest.fixture(scope="module")
def api_host(tmp_path_factory):
    """Both APIs on the tiny model, with completions capped at 4 tokens so thousands of generated requests
    stay quick; no rate limit (the fuzzer would only meet 429) and no model management (unloading the
    only model would turn later requests into 503s, which are right but not what this run tests)."""
    components = ROOT / "target" / "wasm32-wasip2" / "release"
    manifest = tmp_path_factory.mktemp("openapi") / "spin.toml"
    manifest.write_text(
        f"""
spin_manifest_version = 2
[application]
name = "openapi-conformance"
[[trigger.http]]
route = "/..."
component = "openai"
[[trigger.http]]
route = "/locallab/..."
component = "locallab"
[component.openai]
source = "{components / "nnspin_openai.wasm"}"
ai_models = ["{TINY_MODEL}"]
environment = {{ NNSPIN_MAX_TOKENS_CAP = "4" }}
[component.locallab]
source = "{components / "nnspin_locallab.wasm"}"
ai_models = ["{TINY_MODEL}"]
environment = {{ NNSPIN_MAX_TOKENS_CAP = "4" }}
"""
    )
    host = start_host(manifest, "--backend", "onnxruntime")
    yield host
    alive = host.process.poll() is None
    host.process.terminate()
    host.process.wait(timeout=30)
    assert alive, "the host died under schemathesis:\n" + "".join(host.log)


@pytest.mark.parametrize("path, server", [("/openapi.json", "/"), ("/locallab/openapi.json", "/locallab")])
def test_each_api_serves_its_description(api_host, path, server):
    document = httpx.get(api_host.url + path).json()
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": server}]
    for operations in document["paths"].values():
        for operation in operations.values():
            assert operation["responses"], operation["operationId"]


@pytest.mark.parametrize("path", ["/openapi.json", "/locallab/openapi.json"])
def test_schemathesis_finds_no_failure(api_host, path, tmp_path):
    schemathesis = ROOT / ".venv" / "bin" / "schemathesis"
    # One worker: hypothesis compiles strategy descriptions with `ast`, which is not thread-safe on 3.11.
    result = subprocess.run(
        [str(schemathesis), "run", api_host.url + path, *CHECKS, "--max-examples", EXAMPLES,
         "--workers", "1", "--request-timeout", "60", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    sys.stdout.write(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-4000:]
    assert "passed" in result.stdout
