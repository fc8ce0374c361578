"""`/tokenize` and `/detokenize` on the real host: the default model's own tokenizer, in vLLM's shapes and with
llama.cpp's names, counting a chat exactly as a chat request's usage counts it."""

import httpx
import pytest
from tokenizers import Tokenizer

from support import DEFAULT_MODEL, ROOT, assert_json_error

TEXT = "Tokenizers split text into pieces: héllo, 世界!"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(ROOT / "models" / DEFAULT_MODEL / "tokenizer.json"))


def test_a_prompt_is_tokenized_as_the_model_tokenizes(host, tokenizer):
    expected = tokenizer.encode(TEXT, add_special_tokens=False).ids
    context = httpx.get(f"{host.openai_url}/models/{DEFAULT_MODEL}").json()["context_length"]
    for field in ("prompt", "content"):
        body = httpx.post(host.url + "/tokenize", json={"model": DEFAULT_MODEL, field: TEXT,
                                                        "return_token_strs": True}).json()
        assert body["tokens"] == expected and body["count"] == len(expected)
        assert body["max_model_len"] == context
        assert "".join(body["token_strs"]).startswith("Tokenizers split text")
    back = httpx.post(host.url + "/detokenize", json={"model": DEFAULT_MODEL, "tokens": expected}).json()
    assert back == {"prompt": TEXT, "content": TEXT}


def test_messages_count_as_a_chat_request_counts_them(host, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    counted = httpx.post(host.url + "/tokenize", json={"messages": messages}).json()["count"]
    usage = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, max_tokens=1).usage
    assert counted == usage.prompt_tokens


@pytest.mark.parametrize("path, body", [
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}),
    ("/tokenize", {}),
    ("/tokenize", {"prompt": 5}),
    ("/detokenize", {"tokens": [10 ** 9]}),
    ("/detokenize", {"tokens": [-1]}),
    ("/detokenize", {}),
    ("/tokenize", {"prompt": "a", "model": "no-such-model"}),
    # Tools are checked whatever the input (schemathesis found one with a numeric description accepted).
    ("/tokenize", {"prompt": "a", "tools": [{"type": "function", "function": {"name": "f", "description": -1}}]}),
    ("/tokenize", {"messages": [{"role": "user", "content": "b"}],
                   "tools": [{"type": "function", "function": {"name": "f", "description": -1}}]}),
])
def test_bad_requests_are_json_errors(host, path, body):
    status = 404 if body.get("model") == "no-such-model" else 400
    assert_json_error(httpx.post(host.url + path, json=body), status)
