//! Chat messages as clients send them, normalised into what a model's chat template expects.
//!
//! A template that writes tool calls itself (Qwen's) gets the conversation as sent: assistant turns
//! with their `tool_calls`, `tool` turns with the results ([`Conversation::as_sent`]). For the others
//! (SmolLM2's, most small models'), tool results are not left as `tool` turns, which such templates
//! render as a speaker the model has never seen: each call the conversation had answered is stated with
//! its result in the system message ("Use this information to answer: f(args) = result"), where such
//! models use it, and the assistant turns that only made those calls are left out
//! ([`Conversation::messages`]).

use serde::Deserialize;
use serde_json::Value;

use crate::ApiError;
use crate::text::{Message, ToolCall as TemplateCall};

/// A message of text only.
pub fn text_message(role: &str, content: String) -> Message {
    Message {
        role: role.to_string(),
        content,
        tool_calls: Vec::new(),
        tool_call_id: None,
    }
}

/// A message of a chat request. `content` may be a string, an array of `{"type": "text"}` parts, or
/// absent (an assistant turn that only called tools).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// Calls an assistant turn made (OpenAI's tool calling).
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolCall {
    #[serde(default)]
    pub id: Option<String>,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON text, as OpenAI sends it.
    #[serde(default)]
    pub arguments: String,
}

impl ToolCall {
    /// The call as the model writes one: `{"name": ..., "arguments": {...}}`.
    fn as_model_output(&self) -> String {
        let arguments: Value = serde_json::from_str(&self.function.arguments)
            .unwrap_or_else(|_| Value::String(self.function.arguments.clone()));
        serde_json::json!({ "name": self.function.name, "arguments": arguments }).to_string()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// A call the conversation made and the result a `tool` message gave back.
#[derive(Debug, Clone, PartialEq)]
pub struct AnsweredCall {
    pub name: String,
    /// The arguments in canonical form ([`canonical_json`]).
    pub arguments: String,
    pub result: String,
}

/// A conversation, checked: its turns as template input and the calls it had answered.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// With the answered calls folded into notes.
    turns: Vec<Message>,
    /// As sent, calls and results in their own turns.
    sent: Vec<Message>,
    pub answered: Vec<AnsweredCall>,
}

impl Conversation {
    /// Checks roles and content and reads the tool calls and their results.
    pub fn parse(messages: &[ChatMessage]) -> Result<Self, ApiError> {
        if messages.is_empty() {
            return Err(
                ApiError::wrong_shape("`messages` must contain at least one message")
                    .with_param("messages"),
            );
        }
        let answers = answers(messages);
        let mut turns = Vec::with_capacity(messages.len());
        let mut sent = Vec::with_capacity(messages.len());
        let mut answered = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role {:?} is not one of {}",
                    m.role,
                    ROLES.join(", ")
                ))
                .with_param(format!("messages[{i}].role")));
            }
            let content = text(i, m.content.as_ref())?;
            let calls = m.tool_calls.as_deref().unwrap_or_default();
            // Templates know `system`; `developer` is OpenAI's newer name for it.
            let role = if m.role == "developer" {
                "system"
            } else {
                m.role.as_str()
            };
            sent.push(Message {
                tool_calls: calls
                    .iter()
                    .enumerate()
                    .map(|(c, call)| TemplateCall {
                        id: call.id.clone().unwrap_or_else(|| format!("call_{i}_{c}")),
                        name: call.function.name.clone(),
                        arguments: call.function.arguments.clone(),
                    })
                    .collect(),
                tool_call_id: m.tool_call_id.clone(),
                ..text_message(role, content.clone())
            });
            if m.role == "tool" && answers.iter().any(|&(_, _, message)| message == i) {
                continue;
            }
            let answered_here: Vec<_> = answers.iter().filter(|&&(at, _, _)| at == i).collect();
            for &&(_, call, message) in &answered_here {
                let call = &calls[call];
                answered.push(AnsweredCall {
                    name: call.function.name.clone(),
                    arguments: canonical_json(&call.function.arguments),
                    result: text(message, messages[message].content.as_ref())?,
                });
            }
            // The calls no `tool` message answered stay in the turn, as the model wrote them.
            let unanswered: Vec<String> = (0..calls.len())
                .filter(|c| !answered_here.iter().any(|&&(_, call, _)| call == *c))
                .map(|c| calls[c].as_model_output())
                .collect();
            let content = match (content.is_empty(), unanswered.is_empty()) {
                (true, true) if !calls.is_empty() => continue,
                (_, true) => content,
                (true, false) => unanswered.join("\n"),
                (false, false) => format!("{content}\n{}", unanswered.join("\n")),
            };
            turns.push(text_message(role, content));
        }
        Ok(Self {
            turns,
            sent,
            answered,
        })
    }

    /// The messages as sent, for a template that renders tool calls and results itself.
    pub fn as_sent(&self) -> &[Message] {
        &self.sent
    }

    /// The messages a chat template renders: the turns, with `instructions` (the functions the model
    /// may call, say) and the answered calls' results added to the system message (first, made when
    /// there is none).
    pub fn messages(&self, instructions: Option<&str>) -> Vec<Message> {
        let mut notes: Vec<String> = instructions.map(str::to_string).into_iter().collect();
        if !self.answered.is_empty() {
            let results: Vec<String> = self
                .answered
                .iter()
                .map(|c| format!("{}({}) = {}", c.name, c.arguments, c.result))
                .collect();
            notes.push(format!(
                "Use this information to answer: {}",
                results.join("\n")
            ));
        }
        let mut messages = self.turns.clone();
        if notes.is_empty() {
            return messages;
        }
        let notes = notes.join("\n\n");
        match messages.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{notes}", first.content);
            }
            _ => messages.insert(0, text_message("system", notes)),
        }
        messages
    }
}

/// Which `tool` message answers which call: `(message of the call, its index there, the tool message)`.
/// A tool message names its call by `tool_call_id`; one without (some clients send none) answers the
/// earliest call not answered yet.
fn answers(messages: &[ChatMessage]) -> Vec<(usize, usize, usize)> {
    let calls: Vec<(usize, usize, Option<&str>)> = messages
        .iter()
        .enumerate()
        .flat_map(|(i, m)| {
            m.tool_calls
                .iter()
                .flatten()
                .enumerate()
                .map(move |(c, call)| (i, c, call.id.as_deref()))
        })
        .collect();
    let mut found: Vec<(usize, usize, usize)> = Vec::new();
    for (t, message) in messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == "tool")
    {
        let open = |&&(i, c, _): &&(usize, usize, Option<&str>)| {
            i < t && !found.iter().any(|&(fi, fc, _)| (fi, fc) == (i, c))
        };
        let call = match message.tool_call_id.as_deref() {
            Some(id) => calls
                .iter()
                .filter(open)
                .find(|(_, _, call_id)| *call_id == Some(id)),
            None => calls.iter().find(open),
        };
        if let Some(&(i, c, _)) = call {
            found.push((i, c, t));
        }
    }
    found
}

/// A message's content as text: a string, or its text parts joined.
fn text(i: usize, content: Option<&Content>) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text.clone()),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "messages[{i}].content[{j}] has type {:?}; only text parts are supported",
                            part.kind
                        ))
                        .with_param(format!("messages[{i}].content")));
                    }
                }
            }
            Ok(text)
        }
    }
}

/// A JSON text in one canonical form (object keys sorted, no whitespace), so two calls with the same
/// arguments compare equal however each was written; text that is not JSON stays as it is, trimmed.
pub fn canonical_json(text: &str) -> String {
    fn sorted(value: Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(String, Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
            other => other,
        }
    }
    match serde_json::from_str::<Value>(text) {
        Ok(value) => sorted(value).to_string(),
        Err(_) => text.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn parse(json: &str) -> Vec<ChatMessage> {
        serde_json::from_str(json).unwrap()
    }

    fn conversation(json: &str) -> Conversation {
        Conversation::parse(&parse(json)).unwrap()
    }

    #[test]
    fn text_parts_are_joined() {
        let m = conversation(
            r#"[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]"#,
        )
        .messages(None);
        assert_eq!(m[0].content, "ab");
    }

    #[test]
    fn bad_role_names_the_parameter() {
        let e = Conversation::parse(&parse(r#"[{"role":"wizard","content":"x"}]"#)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidValue);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn unanswered_tool_calls_are_shown_as_the_json_the_model_wrote() {
        let m = conversation(
            r#"[{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"x\": 1}"}}]}]"#,
        )
        .messages(None);
        assert_eq!(m[0].content, r#"{"name":"f","arguments":{"x":1}}"#);
    }

    #[test]
    fn answered_calls_become_information_in_the_system_message() {
        let c = conversation(
            r#"[{"role":"system","content":"Be brief."},
                {"role":"user","content":"Weather in Tokyo?"},
                {"role":"assistant","content":null,"tool_calls":[
                    {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"unit\": \"c\", \"city\": \"Tokyo\"}"}},
                    {"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"{\"temp_c\": 21}"}]"#,
        );
        assert_eq!(
            c.answered,
            [AnsweredCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"Tokyo","unit":"c"}"#.into(),
                result: r#"{"temp_c": 21}"#.into(),
            }]
        );
        let m = c.messages(Some("You can call functions."));
        assert_eq!(
            m.len(),
            3,
            "the tool turn is folded; the unanswered call stays"
        );
        assert_eq!(m[0].role, "system");
        assert!(
            m[0].content
                .starts_with("Be brief.\n\nYou can call functions.\n\n")
        );
        assert!(m[0].content.ends_with(
            r#"Use this information to answer: get_weather({"city":"Tokyo","unit":"c"}) = {"temp_c": 21}"#
        ));
        assert_eq!(m[2].content, r#"{"name":"get_time","arguments":{}}"#);
    }

    #[test]
    fn the_conversation_as_sent_keeps_calls_and_results_in_their_turns() {
        let c = conversation(
            r#"[{"role":"developer","content":"Be brief."},
                {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"x\": 1}"}},
                    {"type":"function","function":{"name":"g","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"2"}]"#,
        );
        let sent = c.as_sent();
        let roles: Vec<_> = sent.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "assistant", "tool"]);
        let calls: Vec<_> = sent[1]
            .tool_calls
            .iter()
            .map(|t| (t.id.as_str(), t.name.as_str(), t.arguments.as_str()))
            .collect();
        assert_eq!(
            calls,
            [("call_1", "f", r#"{"x": 1}"#), ("call_1_1", "g", "{}")]
        );
        assert_eq!(
            (sent[2].content.as_str(), sent[2].tool_call_id.as_deref()),
            ("2", Some("call_1"))
        );
    }

    #[test]
    fn tool_messages_without_ids_answer_the_earliest_open_call() {
        let c = conversation(
            r#"[{"role":"user","content":"q"},
                {"role":"assistant","tool_calls":[{"function":{"name":"a","arguments":"{}"}},{"function":{"name":"b","arguments":"{}"}}]},
                {"role":"tool","content":"1"},{"role":"tool","content":"2"}]"#,
        );
        let results: Vec<_> = c
            .answered
            .iter()
            .map(|a| (a.name.as_str(), a.result.as_str()))
            .collect();
        assert_eq!(results, [("a", "1"), ("b", "2")]);
        assert_eq!(
            c.messages(None).len(),
            2,
            "the system note and the question"
        );
    }

    #[test]
    fn canonical_json_ignores_key_order_and_spacing_only() {
        assert_eq!(
            canonical_json(r#"{ "b": [1, {"d": 2, "c": 3}], "a": "x" }"#),
            canonical_json(r#"{"a":"x","b":[1,{"c":3,"d":2}]}"#)
        );
        assert_ne!(canonical_json(r#"{"a": 1}"#), canonical_json(r#"{"a": 2}"#));
        assert_eq!(canonical_json("  not json "), "not json");
    }

    #[test]
    fn empty_messages_are_refused() {
        assert_eq!(
            Conversation::parse(&[]).unwrap_err().kind,
            ErrorKind::WrongShape
        );
    }
}
