"""Spin's LLM interface (`fermyon:spin/llm@2.0.0`) on nnspin's host, driven by a real Spin app:
tests/components/spin-llm, written with spin-sdk's `llm` module and built as Spin builds it. Its greedy
answers are the OpenAI component's for the same prompt, its vectors the same as /v1/embeddings', and every
error of the interface comes back as the error variant the app maps to a status."""

import httpx
import pytest

from support import DEFAULT_MODEL, EMBEDDING_MODEL, ROOT, component, running_host, write_app

EXAMPLE = ROOT / "tests" / "components" / "spin-llm"
WASM = EXAMPLE / "target" / "wasm32-wasip2" / "release" / "spin_llm_example.wasm"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def app_host(tmp_path_factory):
    """The Spin app at /..., the OpenAI component at /v1/... on the same resident models."""
    assert WASM.exists(), "build it: cargo build --release --target wasm32-wasip2 --manifest-path " \
                          "tests/components/spin-llm/Cargo.toml"
    spin_app = "\n".join(['[component.spin-app]', f'source = "{WASM}"',
                          f'ai_models = ["{DEFAULT_MODEL}", "{EMBEDDING_MODEL}"]'])
    manifest = write_app(
        tmp_path_factory.mktemp("spin-llm"), "spin-llm", {"/v1/...": "openai", "/...": "spin-app"},
        [component("openai", "nnspin_openai.wasm", [DEFAULT_MODEL, EMBEDDING_MODEL]), spin_app],
    )
    with running_host(manifest) as host:
        yield host


def post(host, path, body):
    return httpx.post(host.url + path, json=body, timeout=120)


def test_greedy_inference_is_what_the_openai_api_answers(app_host):
    spin = post(app_host, "/infer", {"model": DEFAULT_MODEL, "prompt": PROMPT, "max_tokens": 24,
                                     "temperature": 0, "repeat_penalty": 1.0})
    assert spin.status_code == 200, spin.text
    openai = post(app_host, "/v1/completions", {"model": DEFAULT_MODEL, "prompt": PROMPT, "max_tokens": 24,
                                                "temperature": 0}).json()
    assert "Paris" in spin.json()["text"]
    assert spin.json()["text"] == openai["choices"][0]["text"]
    assert spin.json()["prompt_tokens"] == openai["usage"]["prompt_tokens"]
    assert spin.json()["generated_tokens"] == openai["usage"]["completion_tokens"]


def test_spins_default_parameters_sample_within_max_tokens(app_host):
    body = post(app_host, "/infer", {"model": DEFAULT_MODEL, "prompt": PROMPT}).json()
    assert body["text"] and 0 < body["generated_tokens"] <= 100


def test_embeddings_are_the_ones_v1_embeddings_returns(app_host):
    texts = ["A man is eating food.", "The girl is carrying a baby.", "short"]
    spin = post(app_host, "/embed", {"model": EMBEDDING_MODEL, "texts": texts})
    assert spin.status_code == 200, spin.text
    openai = post(app_host, "/v1/embeddings", {"model": EMBEDDING_MODEL, "input": texts}).json()
    for ours, theirs in zip(spin.json()["embeddings"], openai["data"], strict=True):
        assert max(abs(a - b) for a, b in zip(ours, theirs["embedding"], strict=True)) < 1e-5
    assert spin.json()["prompt_tokens"] == openai["usage"]["prompt_tokens"]


@pytest.mark.parametrize("path, body, says", [
    ("/infer", {"model": "llama2-chat", "prompt": "hi"}, "ModelNotSupported"),
    ("/infer", {"model": EMBEDDING_MODEL, "prompt": "hi"}, "embedding model"),
    ("/embed", {"model": DEFAULT_MODEL, "texts": ["hi"]}, "does not embed"),
    ("/infer", {"model": DEFAULT_MODEL, "prompt": "hi", "temperature": -1}, "temperature"),
    ("/infer", {"model": DEFAULT_MODEL, "prompt": ""}, "empty"),
    ("/embed", {"model": EMBEDDING_MODEL, "texts": ["word " * 300]}, "at most 256"),
])
def test_interface_errors_reach_the_app(app_host, path, body, says):
    response = post(app_host, path, body)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]


def test_the_example_serves_from_its_own_manifest():
    """`nnspin up -f tests/components/spin-llm`, the directory form Spin's own CLI takes."""
    with running_host(EXAMPLE) as host:
        body = post(host, "/infer", {"model": DEFAULT_MODEL, "prompt": PROMPT, "max_tokens": 8,
                                     "temperature": 0}).json()
        assert "Paris" in body["text"], body
