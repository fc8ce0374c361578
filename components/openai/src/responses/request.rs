//! The Responses API's request, read as the chat request it means: `input` items and `instructions`
//! become chat messages, `function_call`/`function_call_output` items the assistant's calls and their
//! results, the flat `tools`, `tool_choice` and `text.format` chat's nested ones. So one validation
//! layer ([`ChatRequest::parse`]) checks both APIs, and errors name this API's fields.
//!
//! nnspin keeps no state between requests: `previous_response_id`, `store: true` and `background: true`
//! are refused with 400 (send the whole conversation in `input`), as Ollama does.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use nnspin_guest::ApiError;
use nnspin_guest::request::parse_body;

use crate::request::{ChatRequest, SamplingFields};

/// A valid Responses request: the chat request it means, and what the response object echoes.
pub struct ResponsesRequest {
    pub chat: ChatRequest,
    pub echo: Echo,
}

/// The request's settings as the response object repeats them.
pub struct Echo {
    pub instructions: Value,
    pub max_output_tokens: Value,
    pub temperature: Value,
    pub top_p: Value,
    pub tools: Value,
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
    pub text: Value,
    pub metadata: Value,
}

/// The body as the client sends it; each field's type is checked where it is read.
#[derive(Debug, Deserialize)]
struct ResponsesBody {
    input: Value,
    #[serde(default)]
    model: Value,
    #[serde(default)]
    instructions: Value,
    #[serde(default)]
    max_output_tokens: Value,
    #[serde(default)]
    temperature: Value,
    #[serde(default)]
    top_p: Value,
    #[serde(default)]
    stream: Value,
    #[serde(default)]
    tools: Value,
    #[serde(default)]
    tool_choice: Value,
    #[serde(default)]
    parallel_tool_calls: Value,
    #[serde(default)]
    text: Value,
    #[serde(default)]
    metadata: Value,
    #[serde(default)]
    previous_response_id: Value,
    #[serde(default)]
    store: Value,
    #[serde(default)]
    background: Value,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message).with_param(param)
}

impl ResponsesRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let body: ResponsesBody = parse_body(body)?;
        if !body.previous_response_id.is_null() {
            return Err(invalid(
                "previous_response_id",
                "`previous_response_id` is not supported: nnspin keeps no responses, so send the whole \
                 conversation in `input`",
            ));
        }
        for (field, value) in [
            ("stream", &body.stream),
            ("store", &body.store),
            ("background", &body.background),
        ] {
            if !value.is_null() && !value.is_boolean() {
                return Err(invalid(field, format!("`{field}` must be a boolean")));
            }
        }
        for (field, value) in [("store", &body.store), ("background", &body.background)] {
            if value.as_bool() == Some(true) {
                return Err(invalid(
                    field,
                    format!("`{field}: true` is not supported: nnspin keeps no responses"),
                ));
            }
        }
        if !body.instructions.is_null() && !body.instructions.is_string() {
            return Err(invalid("instructions", "`instructions` must be a string"));
        }
        let strings = |map: &Map<String, Value>| map.values().all(Value::is_string);
        if !body.metadata.is_null() && !body.metadata.as_object().is_some_and(strings) {
            return Err(invalid(
                "metadata",
                "`metadata` must be an object whose values are strings",
            ));
        }
        let mut messages = Vec::new();
        if let Some(instructions) = body.instructions.as_str() {
            messages.push(json!({"role": "system", "content": instructions}));
        }
        messages.extend(input_messages(&body.input)?);
        let format = text_format(&body.text)?;
        let chat = json!({
            "model": body.model,
            "messages": messages,
            "max_completion_tokens": body.max_output_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "stream": body.stream.as_bool().unwrap_or(false),
            "tools": chat_tools(&body.tools)?,
            "tool_choice": chat_tool_choice(&body.tool_choice),
            "parallel_tool_calls": body.parallel_tool_calls,
            "response_format": format,
        });
        let chat = serde_json::to_vec(&chat).expect("values serialize");
        let chat = ChatRequest::parse(&chat).map_err(responses_param)?;
        let echo = Echo {
            instructions: body.instructions,
            max_output_tokens: body.max_output_tokens,
            temperature: json!(chat.sampling.temperature.unwrap_or(1.0)),
            top_p: json!(chat.sampling.top_p.unwrap_or(1.0)),
            tools: echoed_tools(&body.tools),
            tool_choice: match body.tool_choice {
                Value::Null => json!("auto"),
                choice => choice,
            },
            parallel_tool_calls: body.parallel_tool_calls.as_bool() != Some(false),
            text: json!({ "format": body.text.get("format").cloned().unwrap_or(json!({"type": "text"})) }),
            metadata: match body.metadata {
                Value::Null => json!({}),
                metadata => metadata,
            },
        };
        Ok(Self { chat, echo })
    }

    pub fn sampling(&self) -> &SamplingFields {
        &self.chat.sampling
    }
}

/// Chat's names for the fields of an error, as this API names them.
fn responses_param(mut error: ApiError) -> ApiError {
    error.param = error.param.map(|param| {
        match param.as_str() {
            "response_format" => "text.format",
            "max_completion_tokens" => "max_output_tokens",
            p if p.starts_with("messages") => "input",
            p => p,
        }
        .to_string()
    });
    error
}

/// The roles a message item may have; tool results are `function_call_output` items.
const MESSAGE_ROLES: [&str; 4] = ["system", "developer", "user", "assistant"];

/// `input` as chat messages: a string is one user message; a list holds message items (a role and
/// text content), `function_call` items (the assistant's calls) and `function_call_output` items.
fn input_messages(input: &Value) -> Result<Vec<Value>, ApiError> {
    let items = match input {
        Value::String(text) => return Ok(vec![json!({"role": "user", "content": text})]),
        Value::Array(items) if !items.is_empty() => items,
        _ => {
            return Err(invalid(
                "input",
                "`input` must be a string or a non-empty list of items",
            ));
        }
    };
    let mut messages: Vec<Value> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let field = |name: &str| item.get(name).and_then(Value::as_str);
        match (field("type"), field("role")) {
            (Some("message") | None, Some(role)) if MESSAGE_ROLES.contains(&role) => {
                messages.push(json!({
                    "role": role,
                    "content": content_text(&param, item.get("content"))?,
                }))
            }
            (Some("function_call"), _) => {
                let (Some(call_id), Some(name), Some(arguments)) =
                    (field("call_id"), field("name"), field("arguments"))
                else {
                    return Err(invalid(
                        &param,
                        format!(
                            "`{param}` (a function_call) needs `call_id`, `name` and `arguments` \
                             as strings"
                        ),
                    ));
                };
                let call = json!({"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": arguments}});
                // Calls in a row are one assistant turn, as the model made them.
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" && last["tool_calls"].is_array() => {
                        last["tool_calls"]
                            .as_array_mut()
                            .expect("checked")
                            .push(call)
                    }
                    _ => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            (Some("function_call_output"), _) => {
                let (Some(call_id), Some(output)) = (field("call_id"), item.get("output")) else {
                    return Err(invalid(
                        &param,
                        format!("`{param}` (a function_call_output) needs `call_id` and `output`"),
                    ));
                };
                let output = match output {
                    Value::String(text) => text.clone(),
                    parts => content_text(&param, Some(parts))?,
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            (Some("message") | None, role) => {
                return Err(invalid(
                    &param,
                    format!(
                        "`{param}` must be a message with a `role` of {}, a function_call or a \
                         function_call_output{}",
                        MESSAGE_ROLES.join(", "),
                        role.map(|role| format!(", not the role {role:?}"))
                            .unwrap_or_default()
                    ),
                ));
            }
            (Some(other), _) => {
                return Err(invalid(
                    &param,
                    format!(
                        "`{param}.type` {other:?} is not supported: items are messages, function_call \
                         and function_call_output"
                    ),
                ));
            }
        }
    }
    Ok(messages)
}

/// A message item's content as text: a string, or its `input_text`/`output_text` parts joined.
fn content_text(param: &str, content: Option<&Value>) -> Result<String, ApiError> {
    match content {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| {
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text").and_then(Value::as_str)) {
                    (Some("input_text" | "output_text" | "text"), Some(text)) => Ok(text),
                    _ => Err(invalid(
                        param,
                        format!(
                            "`{param}.content[{j}]` has type {kind:?}; only text parts \
                             (input_text, output_text) are supported"
                        ),
                    )),
                }
            })
            .collect(),
        _ => Err(invalid(
            param,
            format!("`{param}.content` must be a string or a list of text parts"),
        )),
    }
}

/// Flat function tools (`{"type": "function", "name", "parameters"}`) as chat's nested ones.
fn chat_tools(tools: &Value) -> Result<Value, ApiError> {
    let Value::Array(tools) = tools else {
        return Ok(tools.clone());
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| match tool.get("type").and_then(Value::as_str) {
            Some("function") => {
                let strict = tool.get("strict").unwrap_or(&Value::Null);
                if !strict.is_null() && !strict.is_boolean() {
                    return Err(invalid(
                        &format!("tools[{i}].strict"),
                        format!("`tools[{i}].strict` must be a boolean"),
                    ));
                }
                let mut function = tool.as_object().cloned().unwrap_or_default();
                function.remove("type");
                function.remove("strict");
                Ok(json!({"type": "function", "function": function}))
            }
            other => Err(invalid(
                &format!("tools[{i}]"),
                format!("`tools[{i}].type` {other:?} is not supported: only function tools are"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// The tools as the response object lists them: each with `strict` and `parameters`.
fn echoed_tools(tools: &Value) -> Value {
    let tools = tools.as_array().into_iter().flatten().map(|tool| {
        let mut tool = tool.as_object().cloned().unwrap_or_default();
        tool.entry("strict").or_insert(json!(false));
        tool.entry("parameters").or_insert(Value::Null);
        Value::Object(tool)
    });
    Value::Array(tools.collect())
}

/// `{"type": "function", "name": ...}` as chat's `{"type": "function", "function": {"name": ...}}`.
fn chat_tool_choice(choice: &Value) -> Value {
    match choice.get("name") {
        Some(name) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            json!({"type": "function", "function": {"name": name}})
        }
        _ => choice.clone(),
    }
}

/// `text.format` as chat's `response_format`: a flat json_schema format nests its schema.
fn text_format(text: &Value) -> Result<Value, ApiError> {
    let format = match text {
        Value::Null => return Ok(Value::Null),
        Value::Object(text) => text.get("format").cloned().unwrap_or(Value::Null),
        _ => return Err(invalid("text", "`text` must be an object")),
    };
    Ok(match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => {
            let mut json_schema: Map<String, Value> =
                format.as_object().cloned().unwrap_or_default();
            json_schema.remove("type");
            json!({"type": "json_schema", "json_schema": json_schema})
        }
        _ => format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nnspin_guest::structured::Structure;

    fn parse(body: Value) -> Result<ResponsesRequest, ApiError> {
        ResponsesRequest::parse(&serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn input_items_become_the_chat_they_mean() {
        let request = parse(json!({
            "model": "m", "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text", "text": "Tokyo?"}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\": \"Tokyo\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "{\"temp_c\": 21}"},
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": true}],
            "max_output_tokens": 50,
        }))
        .unwrap();
        let chat = &request.chat;
        let messages = chat.conversation.messages(None);
        assert_eq!(messages[0].role, "system");
        assert!(messages[0].content.starts_with("Be brief."));
        assert_eq!(messages[1].content, "Weather in Tokyo?");
        assert_eq!(chat.answered().len(), 1);
        assert_eq!(chat.answered()[0].result, r#"{"temp_c": 21}"#);
        assert_eq!(request.echo.max_output_tokens, 50);
        assert_eq!(request.echo.tools[0]["strict"], true);
        assert_eq!(request.echo.tool_choice, "auto");
    }

    #[test]
    fn json_schema_format_is_held_to_its_schema() {
        let request = parse(json!({"input": "hi", "text": {"format": {
            "type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": true}}}))
        .unwrap();
        assert!(matches!(request.chat.format, Some(Structure::Json(_))));
        let e =
            parse(json!({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}))
                .err()
                .expect("a json_schema format needs a schema");
        assert_eq!(e.param.as_deref(), Some("text.format"));
    }

    #[test]
    fn what_needs_state_or_other_inputs_is_refused_naming_the_field() {
        for (body, param) in [
            (
                json!({"input": "hi", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (json!({"input": "hi", "store": true}), "store"),
            (json!({"input": "hi", "background": true}), "background"),
            (json!({"input": []}), "input"),
            (json!({"input": 5}), "input"),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
                "input[0]",
            ),
            (
                json!({"input": [{"type": "reasoning", "summary": []}]}),
                "input[0]",
            ),
            (
                json!({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": null}]}),
                "input[0]",
            ),
            (
                json!({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}),
                "input[0]",
            ),
            (
                json!({"input": [{"role": "wizard", "content": "x"}]}),
                "input[0]",
            ),
            (
                json!({"input": "hi", "tools": [{"type": "web_search"}]}),
                "tools[0]",
            ),
            (
                json!({"input": "hi", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (json!({"input": "hi", "temperature": 3}), "temperature"),
            (json!({"input": "hi", "instructions": 1}), "instructions"),
            (json!({"input": "hi", "stream": "yes"}), "stream"),
            (json!({"input": "hi", "store": 0}), "store"),
            (json!({"input": "hi", "metadata": []}), "metadata"),
            (json!({"input": "hi", "metadata": {"k": 1}}), "metadata"),
            (
                json!({"input": [{"role": "tool", "content": "x"}]}),
                "input[0]",
            ),
            (
                json!({"input": [{"type": "message", "content": "x"}]}),
                "input[0]",
            ),
            (
                json!({"input": "hi", "tools": [{"type": "function", "name": "f", "strict": "yes"}]}),
                "tools[0].strict",
            ),
        ] {
            let e = parse(body.clone())
                .err()
                .unwrap_or_else(|| panic!("{body} was accepted"));
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        assert!(parse(json!({"input": "hi", "store": false})).is_ok());
    }
}
