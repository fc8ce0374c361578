"""The legacy `/v1/completions` endpoint and assistant prefill, through the official SDK."""

import httpx
import openai
import pytest

from support import DEFAULT_MODEL, ROOT, TINY_MODEL, assert_json_error

PROMPT = "The capital of France is"


def test_completion_continues_the_prompt(client):
    completion = client.completions.create(model=DEFAULT_MODEL, prompt=PROMPT, max_tokens=5, temperature=0)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.choices[0].text.startswith(" Paris")
    assert completion.usage.prompt_tokens == 5 and completion.usage.completion_tokens == 5


def test_default_max_tokens_is_sixteen(client):
    # The tiny model does not end this early: without `max_tokens` it is cut off at exactly 16.
    completion = client.completions.create(model=TINY_MODEL, prompt="Once upon a time", temperature=0)
    assert completion.usage.completion_tokens == 16 and completion.choices[0].finish_reason == "length"


def test_echo_several_prompts_and_choices(client):
    completion = client.completions.create(
        model=DEFAULT_MODEL, prompt=[PROMPT, "One, two, three,"], n=2, max_tokens=4, temperature=0, echo=True,
    )
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert completion.choices[0].text.startswith(PROMPT + " Paris")
    assert completion.choices[2].text.startswith("One, two, three,")


def test_token_id_prompt_equals_text_prompt(client):
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(ROOT / "models" / DEFAULT_MODEL / "tokenizer.json")).encode(PROMPT).ids
    by_text = client.completions.create(model=DEFAULT_MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model=DEFAULT_MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_streaming_equals_whole_and_logprobs_line_up(client):
    kwargs = dict(model=DEFAULT_MODEL, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=2)
    whole = client.completions.create(**kwargs).choices[0]
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks) == whole.text
    assert chunks[-1].choices[0].finish_reason == "length"
    lp = whole.logprobs
    assert "".join(lp.tokens) == whole.text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert all(p <= 0 for p in lp.token_logprobs)


@pytest.mark.parametrize(
    "extra, param",
    [({"suffix": "end"}, "suffix"), ({"logprobs": 6}, "logprobs"), ({"best_of": 3}, "best_of"),
     ({"echo": True, "logprobs": 1}, "echo"), ({"prompt": {"text": "x"}}, "prompt"), ({"prompt": []}, "prompt"),
     ({"prompt": [999999999]}, "prompt"), ({"temperature": -1}, "temperature")],
)
def test_invalid_completion_requests_are_400(host, extra, param):
    body = {"model": TINY_MODEL, "prompt": "x", "max_tokens": 2, **extra}
    error = assert_json_error(httpx.post(host.openai_url + "/completions", json=body), 400)
    assert error["error"]["param"] == param


def test_assistant_prefill_is_continued(client):
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL, temperature=0, max_tokens=8,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in English."},
                  {"role": "assistant", "content": "The capital of France is"}],
    )
    assert completion.choices[0].message.content.startswith(" Paris")
