"""Prefix caching on both batched paths (ONNX Runtime's rows, OpenVINO's PagedAttention blocks), seen from
the OpenAI API: a host with the cache (the default) and one without (`--prefix-cache-mib 0`) give the same
answers and log-probabilities, whether a prompt's prefix came from a finished request, a running one, or
nowhere; the cache reports what it saved in `usage.prompt_tokens_details.cached_tokens` and in the metrics,
keeps serving under a budget too small for what it is asked to keep, and is not left half-written by a
client that leaves during a prefill. Rows reuse any prefix length, blocks whole blocks of 32 positions."""

import math
import socket
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from support import CHAT, DEFAULT_MODEL, QUESTIONS, TINY_MODEL, host_metric, openai_app, running_host

SYSTEM = ("You are a patient teacher. You answer every question in plain English, in one or two short "
          "sentences, and you never use lists.")


# Positions the cache reuses come in multiples of this, per backend.
GRANULARITY = {"onnxruntime": 1, "openvino": 32}


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return openai_app(tmp_path_factory.mktemp("prefix-cache"), [DEFAULT_MODEL, TINY_MODEL])


@pytest.fixture(scope="module")
def cached(app, backend):
    with running_host(app, "--backend", backend) as host:
        host.backend = backend
        yield host


@pytest.fixture(scope="module")
def uncached(app, backend):
    with running_host(app, "--backend", backend, "--prefix-cache-mib", "0") as host:
        host.backend = backend
        yield host


def reusable(host, tokens: int) -> int:
    """What the cache can hold of the first `tokens` tokens of a prompt: whole blocks on OpenVINO."""
    return tokens // GRANULARITY[host.backend] * GRANULARITY[host.backend]


def chat(host, messages, model=DEFAULT_MODEL, max_tokens=24) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "logprobs": True, "top_logprobs": 3}
    response = httpx.post(host.url + CHAT, json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_generation(a: dict, b: dict):
    """The same text, and at every token the same top log-probabilities (within 1e-3: a prompt computed
    in two parts moves logits of about 28 by up to 2.3e-4)."""
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    for x, y in zip(a["choices"][0]["logprobs"]["content"], b["choices"][0]["logprobs"]["content"], strict=True):
        assert x["token"] == y["token"]
        for p, q in zip(x["top_logprobs"], y["top_logprobs"], strict=True):
            assert p["token"] == q["token"] and math.isclose(p["logprob"], q["logprob"], abs_tol=1e-3), (x, y)


def cached_tokens(completion: dict) -> int:
    return completion["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_the_fixed_prompts_answer_alike_with_and_without_the_cache(cached, uncached):
    for question in QUESTIONS:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        reference = chat(uncached, messages)
        assert cached_tokens(reference) == 0
        first, again = chat(cached, messages), chat(cached, messages)
        assert_same_generation(first, reference)
        assert_same_generation(again, reference)
        # The system prompt is shared by every question after the first; the same request again finds
        # all of its prompt but the last token, which must be computed for its logits.
        assert cached_tokens(first) > 0 or question == QUESTIONS[0]
        assert cached_tokens(again) == reusable(cached, again["usage"]["prompt_tokens"] - 1)


def test_a_ten_turn_conversation_through_the_sdk_is_the_same_with_and_without_the_cache(cached, uncached):
    def converse(host) -> tuple[list[str], list[tuple[int, int]]]:
        client = openai.OpenAI(base_url=host.openai_url, api_key="unused", max_retries=0, timeout=300)
        messages = [{"role": "system", "content": SYSTEM}]
        answers, usage = [], []
        for turn in range(10):
            messages.append({"role": "user", "content": f"{QUESTIONS[turn % len(QUESTIONS)]} (question {turn + 1})"})
            completion = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, max_tokens=16,
                                                        temperature=0)
            text = completion.choices[0].message.content
            answers.append(text)
            usage.append((completion.usage.prompt_tokens, completion.usage.prompt_tokens_details.cached_tokens))
            messages.append({"role": "assistant", "content": text})
        return answers, usage

    with_cache, cached_usage = converse(cached)
    without, uncached_usage = converse(uncached)
    assert with_cache == without
    assert all(hit == 0 for _, hit in uncached_usage)
    # From the second turn on, the conversation so far is found: the previous turn's prompt at least.
    for (previous, _), (_, hit) in zip(cached_usage, cached_usage[1:]):
        assert hit >= reusable(cached, previous), cached_usage


def test_a_cache_entry_belongs_to_its_model(cached):
    messages = [{"role": "user", "content": "A prompt seen by the tiny model only, " * 8}]
    chat(cached, messages, model=TINY_MODEL, max_tokens=2)
    tiny = chat(cached, messages, model=TINY_MODEL, max_tokens=2)
    assert cached_tokens(tiny) == reusable(cached, tiny["usage"]["prompt_tokens"] - 1)
    # The default model finds at most the chat template's opening, which its own earlier prompts share.
    assert cached_tokens(chat(cached, messages, max_tokens=2)) < cached_tokens(tiny) / 4


def test_the_metrics_count_what_the_cache_saved(cached):
    labels = {"model": DEFAULT_MODEL}
    before = host_metric(cached, "nnspin_prefix_cache_hits_total", **labels)
    queried = host_metric(cached, "nnspin_prefix_cache_queries_total", **labels)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is a prime number?"}]
    chat(cached, messages, max_tokens=4)
    completion = chat(cached, messages, max_tokens=4)
    hits = host_metric(cached, "nnspin_prefix_cache_hits_total", **labels)
    assert hits - before >= cached_tokens(completion) > 0
    prompt = completion["usage"]["prompt_tokens"]
    assert host_metric(cached, "nnspin_prefix_cache_queries_total", **labels) - queried == 2 * prompt
    assert host_metric(cached, "nnspin_prefix_cache_resident_tokens", **labels) >= prompt
    assert host_metric(cached, "nnspin_kv_cache_bytes", **labels) > 0


def test_a_budget_too_small_for_every_conversation_evicts_and_keeps_serving(app, backend, uncached):
    # 12 MiB holds one finished row of 256 positions (45 KiB each), 2 MiB one block of 32: every new
    # conversation evicts the last.
    budget = {"onnxruntime": "12", "openvino": "2"}[backend]
    with running_host(app, "--backend", backend, "--prefix-cache-mib", budget) as small:
        for question in QUESTIONS[:4] + QUESTIONS[:2]:
            messages = [{"role": "user", "content": question}]
            assert_same_generation(chat(small, messages), chat(uncached, messages))
        assert host_metric(small, "nnspin_prefix_cache_evictions_total", model=DEFAULT_MODEL) >= 4
        messages = [{"role": "user", "content": QUESTIONS[1]}]
        assert cached_tokens(chat(small, messages)) > 0, "the last conversation is kept"


def test_a_client_that_leaves_during_a_prefill_leaves_nothing_half_written(cached, uncached):
    # Several prefill chunks (128 tokens each) long, so the client is gone while they run.
    long = " ".join(f"Sentence {i} of a long document about rivers and their mouths." for i in range(120))
    messages = [{"role": "user", "content": long + " What is this document about?"}]
    body = (f'{{"model": "{DEFAULT_MODEL}", "stream": true, "max_tokens": 8, "messages": '
            f'[{{"role": "user", "content": "{long} What is this document about?"}}]}}').encode()
    url = urlsplit(cached.url)
    for _ in range(3):
        with socket.create_connection((url.hostname, url.port)) as connection:
            connection.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                               + f"content-length: {len(body)}\r\n\r\n".encode() + body)
            assert connection.recv(12).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)
    assert_same_generation(chat(cached, messages, max_tokens=8), chat(uncached, messages, max_tokens=8))
