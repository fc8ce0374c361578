"""The OpenAI API of the real host, driven with the official `openai` Python SDK and raw HTTP."""

import json
from pathlib import Path

import httpx
import openai
import pytest
from tokenizers import Tokenizer

from support import DEFAULT_MODEL, EMBEDDING_MODEL, ROOT, TINY_MODEL, assert_json_error

QUESTION = "What is the capital of France? Answer in English."  # no near tie at its first token


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(ROOT / "models" / DEFAULT_MODEL / "tokenizer.json"))


def smollm_prompt(question: str) -> str:
    """What SmolLM2's chat template renders for one user message (it adds a default system turn)."""
    return (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_health(host):
    response = httpx.get(host.url + "/health")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_models_report_their_backend_device_and_precision(host):
    for model in httpx.get(host.openai_url + "/models").json()["data"]:
        assert (model["backend"], model["device"], model["precision"]) == (host.backend, "cpu", host.precision)


def test_models_lists_every_model_of_the_component(client):
    models = client.models.list().data
    assert [m.id for m in models] == [DEFAULT_MODEL, TINY_MODEL, EMBEDDING_MODEL]
    assert [(m.task, m.dimensions) for m in models] == [("generate", None), ("generate", None), ("embed", 384)]
    model = client.models.retrieve(DEFAULT_MODEL)
    assert model.object == "model" and model.owned_by


def test_default_model_answers_paris(client, tokenizer):
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=48,
    )
    choice = completion.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == DEFAULT_MODEL
    # Usage agrees with the model's own tokenizer.
    usage = completion.usage
    assert usage.prompt_tokens == len(tokenizer.encode(smollm_prompt(QUESTION), add_special_tokens=False).ids)
    assert usage.completion_tokens == len(tokenizer.encode(choice.message.content, add_special_tokens=False).ids)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_default_model_streams_the_same_answer(client, host):
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model=DEFAULT_MODEL, messages=messages, temperature=0, max_tokens=48)
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=messages,
        temperature=0,
        max_tokens=48,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1, "one id for the whole stream"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    content = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert content == whole.choices[0].message.content
    assert len(with_choices) > 3, "tokens arrive as separate events"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens)
    # The same prompt again: ONNX Runtime's prefix cache holds all of it but the last token, OpenVINO's the
    # whole blocks of 32 positions within that.
    reusable = usage.prompt_tokens - 1
    expected = reusable if host.backend == "onnxruntime" else reusable // 32 * 32
    assert usage.prompt_tokens_details.cached_tokens == expected


def test_auto_and_missing_model_use_the_default(host):
    for body in ({"model": "auto"}, {}):
        response = httpx.post(
            host.openai_url + "/chat/completions",
            json={**body, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"] == DEFAULT_MODEL


def test_max_tokens_ends_with_length(client):
    completion = client.chat.completions.create(
        model=TINY_MODEL, messages=[{"role": "user", "content": "Go on"}], temperature=0, max_tokens=5
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_same_seed_same_sampled_output(client):
    def sample(seed):
        return client.chat.completions.create(
            model=TINY_MODEL,
            messages=[{"role": "user", "content": "Tell me something"}],
            temperature=1.0,
            top_p=0.9,
            seed=seed,
            max_tokens=16,
        ).choices[0].message.content

    # The first run computes the prompt whole, later ones start from the prefix cache, whose logits agree
    # to 1e-4 of their scale but not bit for bit, and the tiny model's nearly flat distributions turn
    # such a difference into another sample (llama.cpp's cache_prompt has the same caveat). From the same
    # cache state, a seed repeats its output.
    sample(1234)
    assert sample(1234) == sample(1234)
    assert sample(1234) != sample(4321)


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b'{"messages": [', 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"model": DEFAULT_MODEL}).encode(), 400, None),
        (json.dumps({"messages": "hi"}).encode(), 400, None),
        (json.dumps({"messages": []}).encode(), 400, "messages"),
        (json.dumps({"messages": [{"role": "user"}, 3]}).encode(), 400, None),
        (json.dumps({"messages": [{"content": "no role"}]}).encode(), 400, None),
        (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "messages[0].role"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": 5}).encode(), 400, "temperature"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}).encode(), 404, "model"),
    ],
)
def test_bad_requests_get_json_errors(host, body, status, param):
    response = httpx.post(
        host.openai_url + "/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    error = assert_json_error(response, status)
    assert error["error"]["param"] == param


def test_unknown_model_through_the_sdk(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert raised.value.body["code"] == "model_not_found"


def test_unknown_routes_and_methods(host):
    assert_json_error(httpx.get(host.url + "/v1/nothing-here"), 404)
    wrong_method = httpx.get(host.openai_url + "/chat/completions")
    assert_json_error(wrong_method, 405)
    assert wrong_method.headers["allow"] == "POST"
    assert_json_error(httpx.get(host.openai_url + "/models/gpt-9"), 404)


def test_server_keeps_serving_after_errors(host, client):
    for _ in range(3):
        httpx.post(host.openai_url + "/chat/completions", content=b"\xff\xfe not json")
    completion = client.chat.completions.create(
        model=TINY_MODEL, messages=[{"role": "user", "content": "still there?"}], max_tokens=3, temperature=0
    )
    # The tiny model does not end its turn this early: a whole answer of three tokens.
    assert completion.usage.completion_tokens == 3 and completion.choices[0].message.content


def test_stop_sequences_end_the_answer_and_are_never_sent(client):
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=messages, temperature=0, max_tokens=48, stop=[" Paris", "zzz"]
    )
    assert whole.choices[0].message.content == "The capital of France is"
    assert whole.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=messages, temperature=0, max_tokens=48, stop=" Paris", stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == "The capital of France is"


def test_n_choices_each_sampled_with_its_own_seed(client, host):
    kwargs = dict(model=TINY_MODEL, messages=[{"role": "user", "content": "Tell me something"}],
                  temperature=1.0, seed=7, max_tokens=12)
    completion = client.chat.completions.create(n=3, **kwargs)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert len({c.message.content for c in completion.choices}) > 1
    assert completion.usage.completion_tokens >= 3
    if host.precision == "exact":
        # Choice 0 is the same as a single request with the same seed (fast kernels may round a row
        # decoded beside others differently, and the tiny model's flat distributions would show it).
        alone = client.chat.completions.create(**kwargs)
        assert completion.choices[0].message.content == alone.choices[0].message.content
    stream = client.chat.completions.create(n=2, stream=True, **kwargs)
    indexes = {c.choices[0].index for c in stream if c.choices}
    assert indexes == {0, 1}


def test_n_choices_decode_as_rows_of_one_batch(client, host):
    # A prompt longer than a cache block (32 positions on PagedAttention): the choices fork from its
    # cache, sharing its full blocks and recomputing only the rest.
    kwargs = dict(model=TINY_MODEL, temperature=1.0, seed=11, max_tokens=10,
                  messages=[{"role": "user", "content": "Tell me about " + "the sea and the sky, " * 8}])
    together = client.chat.completions.create(n=4, **kwargs)
    texts = [c.message.content for c in together.choices]
    assert len(set(texts)) > 1
    # Streamed, the choices' chunks interleave: each step decodes every running choice at once.
    chunks = [c.choices[0] for c in client.chat.completions.create(n=4, stream=True, **kwargs) if c.choices]
    order = [c.index for c in chunks if c.delta.content]
    assert order != sorted(order), order
    streamed = ["".join(c.delta.content or "" for c in chunks if c.index == i) for i in range(4)]
    # Each choice closes once, after its last piece (as soon as it ends, not when the batch does).
    for i in range(4):
        own = [c for c in chunks if c.index == i]
        assert [c.finish_reason is not None for c in own].count(True) == 1
        assert own[-1].finish_reason == together.choices[i].finish_reason
    if host.precision == "exact":
        assert streamed == texts
        # Each choice is what a request of its own with the choice's seed (seed + index) answers: a
        # forked row holds exactly the prompt's cache.
        for index, text in enumerate(texts):
            alone = client.chat.completions.create(**{**kwargs, "seed": 11 + index})
            assert alone.choices[0].message.content == text, index


def test_logit_bias_forces_a_token(client, tokenizer):
    (yes,) = tokenizer.encode("yes", add_special_tokens=False).ids
    completion = client.chat.completions.create(
        model=TINY_MODEL, messages=[{"role": "user", "content": "anything"}], temperature=0, max_tokens=5,
        logit_bias={str(yes): 100},
    )
    assert completion.choices[0].message.content == "yes" * 5


def test_frequency_penalty_changes_a_long_answer(client):
    kwargs = dict(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "List fruits."}],
                  temperature=0, max_tokens=40)
    plain = client.chat.completions.create(**kwargs).choices[0].message.content
    penalized = client.chat.completions.create(frequency_penalty=2.0, **kwargs).choices[0].message.content
    assert plain != penalized


@pytest.mark.parametrize(
    "extra, param",
    [({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"n": 9}, "n"), ({"presence_penalty": 3}, "presence_penalty"),
     ({"logit_bias": {"not-a-token": 1}}, "logit_bias"), ({"logit_bias": {"99999999": 1}}, "logit_bias")],
)
def test_invalid_generation_settings_name_their_parameter(host, extra, param):
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **extra}
    error = assert_json_error(httpx.post(host.openai_url + "/chat/completions", json=body), 400)
    assert error["error"]["param"] == param


def test_context_length_errors_state_both_numbers(host, client):
    context = next(m for m in httpx.get(host.openai_url + "/models").json()["data"] if m["id"] == TINY_MODEL)[
        "context_length"]
    messages = [{"role": "user", "content": "hello"}]
    prompt_tokens = client.chat.completions.create(model=TINY_MODEL, messages=messages, max_tokens=1).usage.prompt_tokens
    body = {"model": TINY_MODEL, "messages": messages, "max_tokens": context}
    error = assert_json_error(httpx.post(host.openai_url + "/chat/completions", json=body), 400)
    assert error["error"]["code"] == "context_length_exceeded"
    message = error["error"]["message"]
    assert str(context) in message and str(prompt_tokens) in message and str(context + prompt_tokens) in message
    long = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "word " * (context + 10)}]}
    error = assert_json_error(httpx.post(host.openai_url + "/chat/completions", json=long), 400)
    assert error["error"]["code"] == "context_length_exceeded"
