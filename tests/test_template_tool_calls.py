"""A model whose chat template defines tool calls uses them: a tiny random-weight Qwen3 GGUF carrying
Qwen2.5's chat template and its `<tool_call>` tokens (user-defined, as llama.cpp's converter marks them),
exported and served. The prompt lists `tools` and renders calls and results as Hugging Face's engine
renders the same template (jinja2 with its settings: the reference), calls are written in the template's
`<tool_call>` syntax under constrained decoding, and come back as OpenAI `tool_calls`."""

import json
import subprocess
import sys

import httpx
import jinja2
import jinja2.ext
import jinja2.sandbox
import pytest
from tokenizers import Tokenizer

from support import ROOT, openai_app, running_host

sys.path.insert(0, str(ROOT / "tools"))
import tiny_gguf  # noqa: E402

TEMPLATE = (ROOT / "text" / "tests" / "templates" / "qwen2.5.jinja").read_text()
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
MODEL = "tiny-qwen-tools"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
                   "required": ["city"]}}}]
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Tokyo?"}]
ANSWERED = QUESTION + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Tokyo\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21}"},
]


def reference_prompt(messages: list[dict], tools: list[dict] | None) -> str:
    """What transformers' `apply_chat_template` renders: jinja2 with trim_blocks and lstrip_blocks,
    `tojson` as json.dumps, calls' arguments as objects (as vLLM passes them)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    messages = json.loads(json.dumps(messages))
    for message in messages:
        message["content"] = message["content"] or ""
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return env.from_string(TEMPLATE).render(messages=messages, tools=tools, add_generation_prompt=True)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    root = tmp_path_factory.mktemp("template-tools")
    gguf = tiny_gguf.write("qwen3", root / f"{MODEL}.gguf", chat_template=TEMPLATE, user_defined=TOOL_TOKENS)
    subprocess.run([sys.executable, "tools/export_model.py", "--gguf", str(gguf), "--out",
                    str(root / "models" / MODEL)], cwd=ROOT, check=True, capture_output=True)
    with running_host(openai_app(root, [MODEL]), models_dir=root / "models") as host:
        host.tokenizer = Tokenizer.from_file(str(root / "models" / MODEL / "tokenizer.json"))
        yield host


def chat(host, **body) -> dict:
    response = httpx.post(f"{host.url}/v1/chat/completions", timeout=120,
                          json={"model": MODEL, "temperature": 0, "max_tokens": 120, **body})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("messages", [QUESTION, ANSWERED], ids=["question", "with-result"])
def test_the_prompt_is_the_templates_own_rendering_of_tools_calls_and_results(host, messages):
    expected = host.tokenizer.encode(reference_prompt(messages, TOOLS), add_special_tokens=False).ids
    response = httpx.post(f"{host.url}/tokenize", json={"model": MODEL, "messages": messages, "tools": TOOLS})
    assert response.status_code == 200, response.text
    assert response.json()["tokens"] == expected
    rendered = host.tokenizer.decode(expected, skip_special_tokens=False)
    assert "<tools>" in rendered and "You can call these functions" not in rendered
    if messages is ANSWERED:
        assert "<tool_response>\n{\"temp_c\": 21}\n</tool_response>" in rendered
    # A chat request with the same messages and tools is that prompt.
    assert chat(host, messages=messages, tools=TOOLS, max_tokens=1)["usage"]["prompt_tokens"] == len(expected)


def test_a_required_call_is_written_in_the_templates_syntax(host):
    body = chat(host, messages=QUESTION, tools=TOOLS, tool_choice="required", logprobs=True)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    calls = choice["message"]["tool_calls"]
    assert calls and all(c["function"]["name"] == "get_weather" for c in calls)
    assert all(json.loads(c["function"]["arguments"])["city"] in ("Paris", "Tokyo") for c in calls)
    # The model wrote Qwen's markers, one token each, around the JSON.
    tokens = [t["token"] for t in choice["logprobs"]["content"]]
    assert tokens[0] == "<tool_call>" and "</tool_call>" in tokens, tokens
    assert tokens.count("<tool_call>") == len(calls)


def test_parallel_tool_calls_false_allows_one_call(host):
    for seed in range(2):
        body = chat(host, messages=QUESTION, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                    temperature=1.5, seed=seed)
        assert len(body["choices"][0]["message"]["tool_calls"]) == 1


def test_a_streamed_call_arrives_whole_as_tool_calls(host):
    with httpx.stream("POST", f"{host.url}/v1/chat/completions", timeout=120, json={
            "model": MODEL, "messages": QUESTION, "tools": TOOLS, "tool_choice": "required",
            "temperature": 0, "max_tokens": 120, "stream": True}) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert not any("<tool_call>" in (d.get("content") or "") for d in deltas), "markers are not text"
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert calls and calls[0]["function"]["name"] == "get_weather"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
