//! Chat messages as clients send them, normalised into what a model's chat template expects.

use serde::Deserialize;

use crate::ApiError;
use crate::bindings::nnspin::llm::text::Message;

/// A message of a chat request. `content` may be a string, an array of `{"type": "text"}` parts, or
/// absent (an assistant turn that only called tools).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    /// Calls an assistant turn made (OpenAI's tool calling), shown to the model as the JSON it wrote.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolCall {
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
    pub fn as_model_output(&self) -> String {
        let arguments: serde_json::Value = serde_json::from_str(&self.function.arguments)
            .unwrap_or_else(|_| serde_json::Value::String(self.function.arguments.clone()));
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

/// Checks roles and content and turns the messages into template input.
pub fn template_messages(messages: &[ChatMessage]) -> Result<Vec<Message>, ApiError> {
    if messages.is_empty() {
        return Err(
            ApiError::wrong_shape("`messages` must contain at least one message")
                .with_param("messages"),
        );
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role {:?} is not one of {}",
                    m.role,
                    ROLES.join(", ")
                ))
                .with_param(format!("messages[{i}].role")));
            }
            let content = match &m.content {
                None => m
                    .tool_calls
                    .iter()
                    .flatten()
                    .map(ToolCall::as_model_output)
                    .collect::<Vec<_>>()
                    .join("\n"),
                Some(Content::Text(text)) => text.clone(),
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
                    text
                }
            };
            // Templates know `system`; `developer` is OpenAI's newer name for it.
            let role = if m.role == "developer" { "system".to_string() } else { m.role.clone() };
            Ok(Message { role, content })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn parse(json: &str) -> Vec<ChatMessage> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn text_parts_are_joined() {
        let m = template_messages(&parse(
            r#"[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]"#,
        ))
        .unwrap();
        assert_eq!(m[0].content, "ab");
    }

    #[test]
    fn bad_role_names_the_parameter() {
        let e = template_messages(&parse(r#"[{"role":"wizard","content":"x"}]"#)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidValue);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn tool_calls_are_shown_as_the_json_the_model_wrote() {
        let m = template_messages(&parse(
            r#"[{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"x\": 1}"}}]}]"#,
        ))
        .unwrap();
        assert_eq!(m[0].content, r#"{"name":"f","arguments":{"x":1}}"#);
    }

    #[test]
    fn empty_messages_are_refused() {
        assert_eq!(
            template_messages(&[]).unwrap_err().kind,
            ErrorKind::WrongShape
        );
    }
}
