"""An agent loop through the official SDK, as the OpenAI Agents SDK runs one with `tool_choice="required"`:
the first model call must call the tool; once a result has come back the tool choice is reset to `auto`
(the SDK's `reset_tool_choice`, on by default, so an agent does not loop), and the loop runs the calls the
model makes until it answers in text. Against the real default model at temperature 0, the loop must end
within three model calls, and the answer should carry the tool's value.

(Under `auto` from the first call, the default 135M model answers every one of these questions in text:
the tokens that open a call hold 0-3% of its first step's probability, whatever the functions' wording.)"""

import json
from types import SimpleNamespace

import pytest

from support import DEFAULT_MODEL, gathered_calls

# (question, tool, its parameters, what the tool returns, the value the answer should contain)
TASKS = [
    ("What's the weather in Tokyo?", "get_weather", {"city": {"type": "string"}}, {"temp_c": 21}, "21"),
    ("What is the stock price of ACME?", "get_stock_price", {"symbol": {"type": "string"}},
     {"price_usd": 187.5}, "187.5"),
    ("How many people live in Lyon?", "get_population", {"city": {"type": "string"}},
     {"population": 522250}, "522250"),
    ("What time is it in Sydney?", "get_time", {"city": {"type": "string"}}, {"time": "14:35"}, "14:35"),
    ("How many euros is 100 US dollars?", "convert_currency",
     {"amount": {"type": "number"}, "from": {"type": "string"}, "to": {"type": "string"}}, {"result": 92.4}, "92.4"),
]
MAX_MODEL_CALLS = 3
# How many answers must carry the tool's value: a majority, for the default model has 135M parameters (4
# of 5 on the exact paths; 3-4 in fast mode, which the suite does not run it in); the count is printed and
# recorded per configuration.
MIN_ANSWERS_WITH_THE_VALUE = 3


def tool(name, properties):
    return {"type": "function", "function": {
        "name": name, "description": f"{name.replace('_', ' ')} (returns JSON)",
        "parameters": {"type": "object", "properties": properties, "required": list(properties)}}}


def tool_choice(model_call):
    """`required` until a tool has run, then `auto`."""
    return "required" if model_call == 1 else "auto"


def run_agent(client, question, tools, run_tool):
    """The loop every agent framework runs; returns the final message and the model calls it took."""
    messages = [{"role": "user", "content": question}]
    for calls in range(1, MAX_MODEL_CALLS + 1):
        message = client.chat.completions.create(
            model=DEFAULT_MODEL, messages=messages, tools=tools, tool_choice=tool_choice(calls), temperature=0,
            max_tokens=60,
        ).choices[0].message
        if not message.tool_calls:
            return message, calls
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            result = run_tool(call.function.name, json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    pytest.fail(f"{question!r}: still calling tools after {MAX_MODEL_CALLS} model calls: {messages}")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_agent_loop_ends_with_an_answer_from_the_tool_result(client, host, stream, record_property):
    # CI time: the whole loop runs in exact mode on both backends, the streamed one on ONNX Runtime's.
    if host.precision != "exact" or (stream and host.backend != "onnxruntime"):
        pytest.skip("the agent loop runs in exact mode, streamed on ONNX Runtime only (CI time)")
    answers = []
    for question, name, properties, result, value in TASKS:
        ran = []

        def run_tool(called, arguments):
            assert called == name, arguments
            ran.append(arguments)
            return result

        if stream:
            message, calls = run_streamed_agent(client, question, [tool(name, properties)], run_tool)
        else:
            message, calls = run_agent(client, question, [tool(name, properties)], run_tool)
        assert message.content, question
        answers.append((question, ran, calls, value in message.content.replace(",", ""), message.content))
    used = sum(with_value for _, _, _, with_value, _ in answers)
    record_property("answers_with_the_tool_value", f"{used}/{len(TASKS)}")
    print(f"{used}/{len(TASKS)} answers carry the tool's value:", *answers, sep="\n")
    assert all(ran for _, ran, _, _, _ in answers), "every task should call its tool first"
    assert used >= MIN_ANSWERS_WITH_THE_VALUE, answers


def run_streamed_agent(client, question, tools, run_tool):
    """The same loop over streams, the calls gathered from their deltas as the SDK's helpers do."""
    messages = [{"role": "user", "content": question}]
    for calls in range(1, MAX_MODEL_CALLS + 1):
        gathered, content, _ = gathered_calls(client.chat.completions.create(
            model=DEFAULT_MODEL, messages=messages, tools=tools, tool_choice=tool_choice(calls), temperature=0,
            max_tokens=60, stream=True,
        ))
        if not gathered:
            return SimpleNamespace(content=content), calls
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in gathered]})
        for c in gathered:
            result = run_tool(c["name"], json.loads(c["arguments"]))
            messages.append({"role": "tool", "tool_call_id": c["id"], "content": json.dumps(result)})
    pytest.fail(f"{question!r}: still calling tools after {MAX_MODEL_CALLS} model calls: {messages}")
