"""Hugging Face checkpoints as Optimum exports them (`optimum-cli export onnx --task text-generation-with-past`:
standard ONNX attention, explicit `past_key_values.*` caches, logits for every position, the chat template in
`chat_template.jinja`) load and serve as they are, on each backend.

The models are random-weight Llama and Qwen2 checkpoints built from a config by transformers and exported by
Optimum (tests/fixtures/optimum_models.py, which needs PyTorch; its outputs are committed); each fixture's
reference.json holds what transformers computed from the same weights, so the host is checked against the
framework the checkpoint came from.
"""

import json

import httpx
import openai
import pytest

from support import ROOT, openai_app, running_host

FIXTURES = ROOT / "tests" / "fixtures" / "optimum"
ARCHITECTURES = ["llama", "qwen2"]


def reference(arch: str) -> dict:
    return json.loads((FIXTURES / arch / "reference.json").read_text())


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def host(request, tmp_path_factory):
    manifest = openai_app(tmp_path_factory.mktemp("optimum"), ARCHITECTURES)
    with running_host(manifest, "--backend", request.param, models_dir=FIXTURES) as started:
        yield started


@pytest.fixture(scope="module")
def client(host):
    return openai.OpenAI(base_url=host.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_tokenizer_encodes_as_transformers_did(host, arch):
    expected = reference(arch)
    tokens = httpx.post(host.url + "/tokenize", json={"model": arch, "prompt": expected["prompt"]}).json()
    assert tokens["tokens"] == expected["prompt_ids"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_decoding_continues_as_transformers_does(client, arch):
    # Every greedy step of the reference is at least 0.1 logits from its runner-up.
    expected = reference(arch)
    completion = client.completions.create(model=arch, prompt=expected["prompt_ids"],
                                           max_tokens=len(expected["greedy_ids"]), temperature=0)
    assert completion.choices[0].text == expected["greedy_text"]
    assert completion.usage.completion_tokens == len(expected["greedy_ids"])
    streamed = "".join(chunk.choices[0].text
                       for chunk in client.completions.create(model=arch, prompt=expected["prompt_ids"],
                                                              max_tokens=len(expected["greedy_ids"]),
                                                              temperature=0, stream=True)
                       if chunk.choices)
    assert streamed == expected["greedy_text"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chat_uses_the_template_file_transformers_wrote(client, host, arch):
    expected = reference(arch)
    tokens = httpx.post(host.url + "/tokenize", json={"model": arch, "messages": expected["chat"]}).json()
    assert tokens["tokens"] == expected["chat_prompt_ids"]
    chat = client.chat.completions.create(model=arch, messages=expected["chat"], max_tokens=5, temperature=0)
    assert chat.usage.prompt_tokens == len(expected["chat_prompt_ids"])
    assert chat.choices[0].finish_reason == "length" and chat.choices[0].message.content
