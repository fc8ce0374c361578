"""OpenAI's Responses API (`client.responses`) on the real default model through the official SDK: whole and
streamed responses (every event validated against the SDK's own types), `responses.parse` with a Pydantic
model, a function tool round trip, and the stateless refusals."""

import json

import httpx
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from support import DEFAULT_MODEL, assert_json_error

QUESTION = "What is the capital of France? Answer in English."
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)


def test_a_response_answers_with_one_message(client):
    response = client.responses.create(model=DEFAULT_MODEL, input=QUESTION, temperature=0, max_output_tokens=60)
    assert (response.object, response.status, response.model) == ("response", "completed", DEFAULT_MODEL)
    (message,) = response.output
    assert (message.type, message.role, message.content[0].type) == ("message", "assistant", "output_text")
    assert "Paris" in response.output_text
    # The same answer as chat gives the same conversation, counted the same.
    chat = client.chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": QUESTION}],
                                          temperature=0, max_tokens=60)
    assert response.output_text == chat.choices[0].message.content
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert response.usage.total_tokens == chat.usage.total_tokens


def test_a_response_cut_off_is_incomplete(client):
    response = client.responses.create(model=DEFAULT_MODEL, input=QUESTION, temperature=0, max_output_tokens=3)
    assert (response.status, response.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert response.usage.output_tokens == 3 and response.output_text


def test_instructions_and_message_items_make_the_conversation(client):
    kwargs = dict(model=DEFAULT_MODEL, temperature=0, max_output_tokens=16)
    items = client.responses.create(
        instructions="Answer in one word.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}], **kwargs)
    chat = client.chat.completions.create(
        messages=[{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": QUESTION}],
        model=DEFAULT_MODEL, temperature=0, max_tokens=16)
    assert items.output_text == chat.choices[0].message.content
    assert items.instructions == "Answer in one word."


def test_a_streamed_response_is_the_sdks_event_sequence(client):
    kwargs = dict(model=DEFAULT_MODEL, input=QUESTION, temperature=0, max_output_tokens=6)
    whole = client.responses.create(**kwargs)
    with httpx.stream("POST", f"{client.base_url}responses", json={**kwargs, "stream": True}, timeout=120) as raw:
        lines = [line for line in raw.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    events = [EVENTS.validate_python(json.loads(line.removeprefix("data: ")))
              for line in lines if line.startswith("data: ")]
    assert names == [e.type for e in events], "each event is named as its type"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * deltas,
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.incomplete"]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert text == whole.output_text == done.output_text
    assert events[-4].text == text and done.usage.output_tokens == 6
    assert events[0].response.status == "in_progress" and done.status == "incomplete"
    # The SDK's own stream reader sees the same.
    streamed = client.responses.create(stream=True, **kwargs)
    assert "".join(e.delta for e in streamed if e.type == "response.output_text.delta") == text


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=40)
    country: str = pydantic.Field(max_length=40)
    capital: bool


def test_parse_fills_a_pydantic_model(client):
    response = client.responses.parse(
        model=DEFAULT_MODEL, input="Describe Paris as JSON: its name, its country, whether it is a capital.",
        text_format=City, temperature=0, max_output_tokens=120,
    )
    assert response.status == "completed"
    assert isinstance(response.output_parsed, City)
    assert response.output_parsed.name


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_function_tool_round_trip(client, stream):
    kwargs = dict(model=DEFAULT_MODEL, tools=[WEATHER], temperature=0, max_output_tokens=60)
    question = [{"role": "user", "content": "What's the weather in Tokyo?"}]
    if stream:
        events = list(client.responses.create(input=question, tool_choice="required", stream=True, **kwargs))
        kinds = [e.type for e in events]
        assert kinds[2:6] == ["response.output_item.added", "response.function_call_arguments.delta",
                              "response.function_call_arguments.done", "response.output_item.done"]
        first = events[-1].response
    else:
        first = client.responses.create(input=question, tool_choice="required", **kwargs)
    (call,) = first.output
    assert (call.type, call.name, first.status) == ("function_call", "get_weather", "completed")
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert isinstance(json.loads(call.arguments)["city"], str)
    answered = question + [
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp_c": 21})},
    ]
    answer = client.responses.create(input=answered, **kwargs)
    (message,) = answer.output
    assert message.type == "message" and answer.output_text


@pytest.mark.parametrize("body, param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]}, "input[0]"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"input": []}, "input"),
])
def test_what_it_cannot_do_is_a_400_naming_the_field(host, body, param):
    request = {"model": DEFAULT_MODEL, "input": "hi", **body}
    error = assert_json_error(httpx.post(host.openai_url + "/responses", json=request), 400)
    assert error["error"]["param"] == param


def test_responses_is_post_only(host):
    response = httpx.get(host.openai_url + "/responses")
    assert_json_error(response, 405)
    assert response.headers["allow"] == "POST"
