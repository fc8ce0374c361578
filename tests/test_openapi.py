"""The OpenAPI descriptions both components serve, held to the running host by schemathesis: property-based
requests from each document (valid and deliberately invalid ones, undeclared methods), and every response
checked against it. No 5xx, every status and body as documented, every invalid request refused with 4xx."""

import subprocess
import sys

import httpx
import pytest

from support import EMBEDDING_MODEL, ROOT, TINY_MODEL, component, running_host, write_app

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
    capped = {"environment": '{ NNSPIN_MAX_TOKENS_CAP = "4" }'}
    manifest = write_app(
        tmp_path_factory.mktemp("openapi"),
        "openapi-conformance",
        {"/...": "openai", "/locallab/...": "locallab"},
        [component("openai", "nnspin_openai.wasm", [TINY_MODEL, EMBEDDING_MODEL], **capped),
         component("locallab", "nnspin_locallab.wasm", [TINY_MODEL], **capped)],
    )
    with running_host(manifest, "--backend", "onnxruntime") as host:
        yield host


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
