"""The LocalLab API of the real host, driven with the real `locallab-client` (PyPI) and raw HTTP.

The test app mounts the LocalLab component at /locallab (no rate limit) and again at /limited with
LocalLab's documented limit of 60 requests a minute in bursts of 10.
"""

import asyncio
import json
import time

import httpx
import pytest
from locallab_client import LocalLabClient

from support import DEFAULT_MODEL, TINY_MODEL

QUESTION = "What is the capital of France? Answer in English."  # no near tie at its first token


@pytest.fixture(scope="module")
def base(host):
    return host.url + "/locallab"


def with_client(base: str, use):
    """Runs `use(client)` with a fresh async client, as the client's own examples do."""

    async def run():
        client = LocalLabClient(base)
        try:
            return await use(client)
        finally:
            await client.close()

    return asyncio.run(run())


def greedy(**extra):
    # The client samples by default (temperature 0.7, repetition penalty 1.15); answers are checked greedily
    # (temperature 0; only generate() also takes do_sample).
    return {"temperature": 0.0, "max_length": 40, **extra}


def test_health_and_system_info(base, host):
    assert with_client(base, lambda c: c.health_check()) is True
    assert httpx.get(base + "/health").json() == {"status": "healthy"}
    info = with_client(base, lambda c: c.get_system_info())
    assert info["cpu"]["count"] >= 1
    assert info["memory"]["total_bytes"] > info["memory"]["available_bytes"] > 0
    assert info["memory"]["process_bytes"] > 50 << 20, "the resident model is counted"
    assert (info["backend"], info["device"], info["precision"]) == (host.backend, "cpu", host.precision)
    assert info["model"]["precision"] == host.precision
    assert info["model"]["model_id"] == DEFAULT_MODEL
    assert set(info["versions"]) == {"nnspin", "wasmtime", host.backend}
    # Whole seconds since the host started serving: no more than since its process started, and counting.
    assert info["uptime_seconds"] <= time.monotonic() - host.started + 1
    time.sleep(1.05)
    later = with_client(base, lambda c: c.get_system_info())
    assert later["uptime_seconds"] >= info["uptime_seconds"] + 1


def test_generate_answers_with_the_default_model(base):
    text = with_client(base, lambda c: c.generate(QUESTION, do_sample=False, **greedy()))
    assert "Paris" in text
    raw = httpx.post(base + "/generate", json={"prompt": QUESTION, **greedy()}, timeout=60).json()
    assert raw["response"] == raw["text"] == text
    assert raw["model"] == DEFAULT_MODEL
    usage = raw["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_streaming_generate_matches_the_whole_answer(base):
    async def stream(client):
        return [token async for token in client.stream_generate(QUESTION, **greedy())]

    tokens = with_client(base, stream)
    assert len(tokens) > 3
    assert "".join(tokens) == with_client(base, lambda c: c.generate(QUESTION, **greedy()))


def test_streaming_generate_wire_format(base):
    with httpx.stream("POST", base + "/generate", json={"prompt": "Write two lines.", "stream": True,
                                                         **greedy(max_length=30)}, timeout=60) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all("\n" not in event for event in events), "newlines inside tokens are escaped"


def test_chat_and_streaming_chat(base):
    messages = [{"role": "user", "content": QUESTION}]
    reply = with_client(base, lambda c: c.chat(messages, **greedy()))
    choice = reply["choices"][0]
    assert choice["message"]["role"] == "assistant" and "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"

    async def stream(client):
        return [chunk async for chunk in client.stream_chat(messages, max_length=40, temperature=0.0)]

    chunks = with_client(base, stream)
    assert chunks and all("choices" in chunk for chunk in chunks)
    streamed = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert "Paris" in streamed
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_chat_stream_is_server_sent_events_when_asked(base):
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_length": 4}
    with httpx.stream("POST", base + "/chat", json=body, headers={"accept": "text/event-stream"}) as response:
        assert response.headers["content-type"] == "text/event-stream"
        data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert json.loads(data[0])["choices"][0]["delta"]["content"]


def test_batch_generate(base):
    prompts = [QUESTION, "Name a color."]
    result = with_client(base, lambda c: c.batch_generate(prompts, **greedy()))
    assert len(result["responses"]) == 2
    assert "Paris" in result["responses"][0]
    assert result["responses"][0] == with_client(base, lambda c: c.generate(QUESTION, **greedy()))


def test_model_management_round_trip(base):
    def ids(models, **flags):
        return {m["id"] for m in models if all(m[k] == v for k, v in flags.items())}

    models = with_client(base, lambda c: c.list_models())
    assert ids(models) == {DEFAULT_MODEL, TINY_MODEL}
    assert ids(models, current=True) == {DEFAULT_MODEL}
    try:
        assert with_client(base, lambda c: c.load_model(TINY_MODEL)) is True
        current = with_client(base, lambda c: c.get_current_model())
        assert current["model_id"] == TINY_MODEL and current["loaded"] is True
        # Requests without a model now use the current one.
        assert httpx.post(base + "/generate", json={"prompt": "x", "max_length": 2}).json()["model"] == TINY_MODEL

        assert with_client(base, lambda c: c.unload_model()) is True
        models = with_client(base, lambda c: c.list_models())
        assert ids(models, loaded=False) == {TINY_MODEL}
        assert with_client(base, lambda c: c.get_current_model())["model_id"] is None
        response = httpx.post(base + "/generate", json={"prompt": "x"})
        assert response.status_code == 503 and "load" in response.json()["detail"]
        response = httpx.post(base + "/generate", json={"prompt": "x", "model_id": TINY_MODEL})
        assert response.status_code == 404
    finally:
        assert with_client(base, lambda c: c.load_model(TINY_MODEL)) is True
        assert with_client(base, lambda c: c.load_model(DEFAULT_MODEL)) is True
    assert with_client(base, lambda c: c.get_current_model())["model_id"] == DEFAULT_MODEL


def test_unknown_model_is_404_with_detail(base):
    response = httpx.post(base + "/models/load", json={"model_id": "no-such-model"})
    assert response.status_code == 404 and "no-such-model" in response.json()["detail"]
    response = httpx.post(base + "/generate", json={"prompt": "x", "model_id": "no-such-model"})
    assert response.status_code == 404 and response.json()["detail"]


def test_model_management_needs_the_grant(host):
    # The /limited mount of the component is not granted model_management.
    client = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"))
    response = client.post(host.url + "/limited/models/load", json={"model_id": TINY_MODEL})
    assert response.status_code == 403 and response.json()["detail"]


@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/generate", b"{not json", 400),
        ("/generate", json.dumps({"max_length": 3}).encode(), 422),
        ("/generate", json.dumps({"prompt": "x", "temperature": 5}).encode(), 400),
        ("/generate", json.dumps({"prompt": "x", "max_length": 0}).encode(), 400),
        ("/generate/batch", json.dumps({"prompts": []}).encode(), 400),
        ("/chat", json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400),
        ("/models/load", b"{}", 422),
        # Beyond the tiny model's 2048-token context: "input too long".
        ("/generate", json.dumps({"prompt": "hello " * 3000, "model_id": TINY_MODEL}).encode(), 413),
    ],
)
def test_bad_requests_get_status_and_detail(base, path, body, status):
    response = httpx.post(base + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_burst_of_eleven_is_refused_while_another_client_is_served(host):
    url = host.url + "/limited/health"
    first = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1"))
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    statuses = [first.get(url).status_code for _ in range(11)]
    assert statuses[:10] == [200] * 10
    assert statuses[10] == 429
    refused = first.get(url)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "rate limit" in refused.json()["detail"]
    assert other.get(url).status_code == 200


def test_streaming_request_beyond_the_context_fails_before_streaming(base):
    body = {"prompt": "hello " * 3000, "model_id": TINY_MODEL, "stream": True}
    response = httpx.post(base + "/generate", json=body, timeout=60)
    assert response.status_code == 413 and response.json()["detail"]
