// The official `openai` Node SDK against a running nnspin host: NNSPIN_OPENAI_URL is its /v1 base URL.
import assert from "node:assert/strict";
import { test } from "node:test";
import OpenAI from "openai";

const baseURL = process.env.NNSPIN_OPENAI_URL;
assert.ok(baseURL, "set NNSPIN_OPENAI_URL (tests/test_openai_node_sdk.py does)");
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 120_000 });
const MODEL = "smollm2-135m-instruct";
const TINY = "tiny-random";
const EMBEDDING = "all-minilm-l6-v2";
const FRANCE = [{ role: "user", content: "What is the capital of France? Answer in English." }];

test("chat completion answers Paris", async () => {
  const completion = await client.chat.completions.create({ model: MODEL, messages: FRANCE, temperature: 0 });
  assert.equal(completion.object, "chat.completion");
  assert.match(completion.choices[0].message.content, /Paris/);
  assert.equal(completion.choices[0].finish_reason, "stop");
  assert.ok(completion.usage.prompt_tokens > 0);
});

test("streaming equals the whole answer and reports usage", async () => {
  const whole = await client.chat.completions.create({ model: MODEL, messages: FRANCE, temperature: 0 });
  const stream = await client.chat.completions.create({
    model: MODEL, messages: FRANCE, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  const ids = new Set();
  for await (const chunk of stream) {
    ids.add(chunk.id);
    text += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(ids.size, 1);
  assert.equal(usage.completion_tokens, whole.usage.completion_tokens);
});

test("seed reproduces, n gives several choices, stop is never emitted", async () => {
  const ask = (extra) => client.chat.completions.create({
    model: TINY, messages: [{ role: "user", content: "Tell me something" }], temperature: 1, max_tokens: 12, ...extra,
  });
  const [a, b] = await Promise.all([ask({ seed: 5 }), ask({ seed: 5 })]);
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  const three = await ask({ seed: 5, n: 3 });
  assert.deepEqual(three.choices.map((c) => c.index), [0, 1, 2]);
  const stopped = await client.chat.completions.create({
    model: MODEL, messages: FRANCE, temperature: 0, stop: [" Paris"],
  });
  assert.equal(stopped.choices[0].message.content.includes("Paris"), false);
});

test("json_schema output parses and has the schema's shape", async () => {
  const schema = {
    type: "object",
    properties: { name: { type: "string" }, country: { type: "string" }, population: { type: "integer" } },
    required: ["name", "country", "population"],
    additionalProperties: false,
  };
  const completion = await client.chat.completions.create({
    model: MODEL, temperature: 0, max_tokens: 120,
    messages: [{ role: "user", content: "Describe Paris as JSON." }],
    response_format: { type: "json_schema", json_schema: { name: "city", schema, strict: true } },
  });
  const city = JSON.parse(completion.choices[0].message.content);
  assert.deepEqual(Object.keys(city), ["name", "country", "population"]);
  assert.equal(typeof city.name, "string");
  assert.ok(Number.isInteger(city.population));
});

test("tool calls come back as tool_calls, whole and streamed", async () => {
  const tools = [{
    type: "function",
    function: {
      name: "get_weather", description: "Get the current weather in a city",
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
    },
  }];
  const request = {
    model: MODEL, temperature: 0, tools, tool_choice: "required",
    messages: [{ role: "user", content: "What is the weather in Paris?" }],
  };
  const completion = await client.chat.completions.create(request);
  const choice = completion.choices[0];
  assert.equal(choice.finish_reason, "tool_calls");
  const call = choice.message.tool_calls[0];
  assert.match(call.id, /^call_/);
  assert.equal(call.function.name, "get_weather");
  assert.equal(typeof JSON.parse(call.function.arguments).city, "string");

  const runner = client.chat.completions.stream(request);
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.tool_calls[0].function.name, "get_weather");
});

test("logprobs tokens concatenate to the content", async () => {
  const completion = await client.chat.completions.create({
    model: MODEL, messages: FRANCE, temperature: 0, max_tokens: 12, logprobs: true, top_logprobs: 2,
  });
  const choice = completion.choices[0];
  assert.equal(choice.logprobs.content.map((t) => t.token).join(""), choice.message.content);
  assert.ok(choice.logprobs.content.every((t) => t.top_logprobs.length === 2 && t.logprob <= 0));
});

test("responses: whole, streamed with the SDK's helper, and a function call", async () => {
  const request = { model: MODEL, input: FRANCE[0].content, temperature: 0, max_output_tokens: 40 };
  const response = await client.responses.create(request);
  assert.equal(response.object, "response");
  assert.match(response.output_text, /Paris/);
  const stream = client.responses.stream(request);
  let deltas = "";
  stream.on("response.output_text.delta", (event) => { deltas += event.delta; });
  const final = await stream.finalResponse();
  assert.equal(deltas, response.output_text);
  assert.equal(final.output_text, response.output_text);
  const call = await client.responses.create({
    model: MODEL, temperature: 0, tool_choice: "required", input: "What is the weather in Paris?",
    tools: [{ type: "function", name: "get_weather", strict: false,
      parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } }],
  });
  assert.equal(call.output[0].type, "function_call");
  assert.equal(call.output[0].name, "get_weather");
  assert.match(call.output[0].call_id, /^call_/);
});

test("embeddings: float and base64 (the SDK's default, decoded by it) agree", async () => {
  const input = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."];
  const floats = await client.embeddings.create({ model: EMBEDDING, input, encoding_format: "float" });
  const decoded = await client.embeddings.create({ model: EMBEDDING, input });
  assert.equal(floats.data.length, 3);
  assert.equal(floats.data[0].embedding.length, 384);
  const dot = (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0);
  for (let i = 0; i < 3; i++) {
    assert.ok(Math.abs(dot(floats.data[i].embedding, decoded.data[i].embedding) - 1) < 1e-5);
  }
  const [food, bread, baby] = floats.data.map((d) => d.embedding);
  assert.ok(dot(food, bread) > dot(food, baby));
  assert.ok(floats.usage.prompt_tokens > 0);
});

test("legacy completions continue a prompt", async () => {
  const completion = await client.completions.create({
    model: MODEL, prompt: "The capital of France is", max_tokens: 4, temperature: 0,
  });
  assert.equal(completion.object, "text_completion");
  assert.match(completion.choices[0].text, /^ Paris/);
});

test("errors surface as the SDK's typed errors", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: FRANCE, temperature: 7 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "temperature",
  );
  await assert.rejects(
    client.chat.completions.create({ model: "gpt-9", messages: FRANCE }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === "model_not_found",
  );
  const models = await client.models.list();
  assert.ok(models.data.some((m) => m.id === MODEL));
});
