//! How a chat template writes tool calls, learned by rendering it.
//!
//! Templates of tool-calling models (Qwen2.5's and Qwen3's `<tool_call>` blocks, Hermes', Llama 3.1's
//! bare `{"name": ..., "parameters": ...}`) list `tools` in the prompt and render an assistant turn's
//! `tool_calls` in the syntax the model was trained to write. Rendering a probe conversation through the
//! template shows both: whether it reads `tools` at all, and what surrounds the JSON of each call. A
//! server then decodes calls in that syntax, as vLLM's per-model tool parsers do, without a table of
//! model families.

use serde_json::{Value, json};

use crate::{Message, TextModel, ToolCall};

/// The syntax of a call: `open`, a JSON object with the function's `name` and its arguments under
/// `arguments_key`, then `close`; several calls in one turn are joined by `separator`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallSyntax {
    pub open: String,
    pub close: String,
    /// `None` when the template renders only one call per turn.
    pub separator: Option<String>,
    pub arguments_key: String,
}

const PROBE_TOOL: &str = "nnspin_probe_tool";
const PROBE_CALLS: [&str; 2] = ["nnspin_probe_first", "nnspin_probe_second"];
const PROBE_ANSWER: &str = "nnspin probe answer";

fn probe_tools() -> String {
    let function = |name: &str| {
        json!({"type": "function", "function": {"name": name, "description": "A probe.",
            "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}}}})
    };
    let mut tools: Vec<Value> = vec![function(PROBE_TOOL)];
    tools.extend(PROBE_CALLS.iter().map(|name| function(name)));
    Value::Array(tools).to_string()
}

fn message(role: &str, content: &str, tool_calls: Vec<ToolCall>) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
        tool_calls,
        tool_call_id: None,
    }
}

fn probe_call(i: usize) -> ToolCall {
    ToolCall {
        id: format!("call_{i}"),
        name: PROBE_CALLS[i].into(),
        arguments: format!("{{\"n\": {i}}}"),
    }
}

/// The syntax `model`'s template writes calls in; `None` when it does not read `tools` or renders no
/// call this can find (the server then describes tools in its own words).
pub fn learn(model: &TextModel) -> Option<ToolCallSyntax> {
    let tools = probe_tools();
    let question = [message("user", "nnspin probe question", Vec::new())];
    let prompt = model
        .apply_chat_template(&question, Some(&tools), true)
        .ok()?;
    if !prompt.contains(PROBE_TOOL) {
        return None;
    }
    // What follows the generation prompt in a rendered turn: the model's own output, then the rest of
    // the conversation. A question follows the turn, since templates render a last assistant turn
    // apart (Qwen3 adds an empty reasoning block to it).
    let turn = |calls: Vec<ToolCall>, content: &str| {
        let conversation = [
            question[0].clone(),
            message("assistant", content, calls),
            message("user", "nnspin probe follow-up", Vec::new()),
        ];
        let rendered = model
            .apply_chat_template(&conversation, Some(&tools), false)
            .ok()?;
        rendered.strip_prefix(&prompt).map(str::to_string)
    };
    let answer = turn(Vec::new(), PROBE_ANSWER)?;
    let after_turn = answer.strip_prefix(PROBE_ANSWER)?;

    let one = turn(vec![probe_call(0)], "")?;
    let (start, end, arguments_key) = find_call(&one, 0, 0)?;
    let open = &one[..start];
    let close = one[end..].strip_suffix(after_turn)?;

    let separator = turn(vec![probe_call(0), probe_call(1)], "").and_then(|two| {
        let (_, first_end, _) = find_call(&two, 0, 0)?;
        let (second_start, _, _) = find_call(&two, first_end, 1)?;
        let between = two[first_end..second_start].strip_prefix(close)?;
        Some(between.strip_suffix(open)?.to_string())
    });
    Some(ToolCallSyntax {
        open: open.to_string(),
        close: close.to_string(),
        separator,
        arguments_key,
    })
}

/// Where in `text` (from `from`) probe call `i` is written as JSON: its start, end and arguments' key.
fn find_call(text: &str, from: usize, i: usize) -> Option<(usize, usize, String)> {
    let expected = json!({ "n": i });
    text[from..].match_indices('{').find_map(|(at, _)| {
        let start = from + at;
        let mut values = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        let Some(Ok(Value::Object(call))) = values.next() else {
            return None;
        };
        if call.get("name").and_then(Value::as_str) != Some(PROBE_CALLS[i]) {
            return None;
        }
        let key = call.iter().find(|(_, v)| **v == expected)?.0.clone();
        Some((start, start + values.byte_offset(), key))
    })
}
