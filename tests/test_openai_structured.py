"""Structured output, tool calling and logprobs on the real default model, through the official SDK:
outputs are held to their schema by constrained decoding, so they must parse and validate."""

import json

import httpx
import jsonschema
import openai
import pytest

from tokenizers import Tokenizer

from support import DEFAULT_MODEL, ROOT, TINY_MODEL, assert_json_error, gathered_calls

CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population": {"type": "integer"},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
        "capital": {"type": "boolean"},
    },
    "required": ["name", "country", "population", "landmarks", "capital"],
    "additionalProperties": False,
}
CITY_FORMAT = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
CITY_QUESTION = [{"role": "user", "content": "Describe Paris as JSON: name, country, population, landmarks."}]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a time zone",
        # Bounded: where fast mode's int8 activations tip the small model into repeating itself, the call
        # still ends.
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 32}},
                       "required": ["zone"]},
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
# A tool with one possible call, so that a call made twice is the same call.
TOKYO_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Tokyo"]}}, "required": ["city"]}}}
TOKYO_QUESTION = [{"role": "user", "content": "What's the weather in Tokyo?"}]


def bias_towards(*openings):
    """A `logit_bias` that makes the default model open its answer with one of `openings`: the 135M model
    never opens a call under `auto` by itself (under 3% of its first step's probability)."""
    tokenizer = Tokenizer.from_file(str(ROOT / "models" / DEFAULT_MODEL / "tokenizer.json"))
    ids = [tokenizer.token_to_id(opening) for opening in openings]
    assert None not in ids, f"{openings} are not all tokens"
    return {str(token): 100 for token in ids}



@pytest.mark.parametrize("temperature, seed", [(0, None), (1.0, 3), (1.0, 11)])
def test_json_schema_output_parses_and_validates(client, temperature, seed):
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=CITY_QUESTION, response_format=CITY_FORMAT,
        temperature=temperature, seed=seed, max_tokens=200,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), CITY)


def test_json_schema_streams_the_same_valid_output(client):
    kwargs = dict(model=DEFAULT_MODEL, messages=CITY_QUESTION, response_format=CITY_FORMAT, temperature=0,
                  max_tokens=200)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
                       if c.choices)
    assert streamed == whole
    jsonschema.validate(json.loads(streamed), CITY)


def test_json_object_mode_returns_an_object(client):
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL, temperature=0, max_tokens=120, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": 'Reply with a JSON object with one key, "capital", giving the capital of France.'}],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


def test_required_tool_choice_returns_a_valid_call(client):
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=WEATHER_QUESTION, tools=[WEATHER, TIME], tool_choice="required",
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_named_tool_choice_calls_that_function(client):
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=WEATHER_QUESTION, tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=0,
    )
    (call,) = completion.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), TIME["function"]["parameters"])


def test_streamed_tool_call_accumulates_like_openai(client):
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=WEATHER_QUESTION, tools=[WEATHER], tool_choice="required",
        temperature=0, stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            assert call.index == 0
            name += call.function.name or ""
            arguments += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (name, finish) == ("get_weather", "tool_calls")
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])


def test_tool_results_come_back_as_tool_messages(client):
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}
    messages = WEATHER_QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=messages, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=40,
    )
    choice = completion.choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_call_already_answered_is_not_made_again_under_auto(client, stream):
    opening_a_call = bias_towards("{", '{"')
    first = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=TOKYO_QUESTION, tools=[TOKYO_WEATHER], temperature=0,
        logit_bias=opening_a_call,
    ).choices[0]
    (call,) = first.message.tool_calls
    assert json.loads(call.function.arguments) == {"city": "Tokyo"}
    answered = TOKYO_QUESTION + [
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})},
    ]
    kwargs = dict(model=DEFAULT_MODEL, messages=answered, tools=[TOKYO_WEATHER], temperature=0, max_tokens=16,
                  logit_bias=opening_a_call)
    # Still pushed towards a call, and the only call there is has its result: the model answers instead.
    if stream:
        calls, content, finish = gathered_calls(client.chat.completions.create(stream=True, **kwargs))
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        calls, content, finish = choice.message.tool_calls or [], choice.message.content, choice.finish_reason
    assert (calls, finish) == ([], "length") and content
    # Asked for a call, it gets one, however often it was made.
    required = client.chat.completions.create(**{**kwargs, "tool_choice": "required", "max_tokens": 60}).choices[0]
    assert required.message.tool_calls[0].function.name == "get_weather"


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_tool_calls_come_as_an_array_unless_false(client, parallel):
    kwargs = dict(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Weather and time in Paris?"}],
                  tools=[WEATHER, TIME], tool_choice="required", temperature=0, max_tokens=200,
                  parallel_tool_calls=parallel, logit_bias=bias_towards("["))
    whole = client.chat.completions.create(**kwargs).choices[0]
    calls, _, finish = gathered_calls(client.chat.completions.create(stream=True, **kwargs))
    assert finish == whole.finish_reason == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    # Pushed towards an array, the model opens one where calls may run in parallel, and cannot otherwise.
    assert len(calls) >= 1 if parallel else len(calls) == 1
    assert len({c.id for c in whole.message.tool_calls}) == len(calls)
    for call in calls:
        tool = {"get_weather": WEATHER, "get_time": TIME}[call["name"]]
        jsonschema.validate(json.loads(call["arguments"]), tool["function"]["parameters"])


def test_auto_tool_choice_lets_the_model_answer_in_text(client):
    completion = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Write a haiku about the sea."}],
        tools=[WEATHER], temperature=0, max_tokens=40,
    )
    choice = completion.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_logprobs_tokens_concatenate_to_the_content(client):
    kwargs = dict(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Name three colours."}],
                  temperature=0, max_tokens=24, logprobs=True, top_logprobs=3)
    # Whole and streamed both start from the prefix cache's copy of this prompt, so they compute alike even
    # in fast mode, where a row computed alone and one computed among others round differently.
    client.chat.completions.create(**kwargs)
    choice = client.chat.completions.create(**kwargs).choices[0]
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        # Greedy decoding picks the most likely token.
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
    streamed = [e for c in client.chat.completions.create(stream=True, **kwargs) if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": "json"}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "string", "pattern": "^a$"}}}}, "response_format"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": "get_weather"}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0]"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ],
)
def test_invalid_structure_tools_and_logprobs_are_400(host, extra, param):
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, **extra}
    error = assert_json_error(httpx.post(host.openai_url + "/chat/completions", json=body), 400)
    assert error["error"]["param"] == param
