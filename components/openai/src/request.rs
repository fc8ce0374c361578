//! The chat completion request: parsed and validated in one place, so every client error is found
//! before generation starts.

use serde::Deserialize;

use nnspin_guest::ApiError;
use nnspin_guest::chat::ChatMessage;
use nnspin_guest::generate::{self, GenerationParams};
use nnspin_guest::request::{check_range, parse_body};
use nnspin_guest::sampling::SamplingParams;

/// `max_tokens` when the request gives none.
const DEFAULT_MAX_TOKENS: u32 = 128;

/// Fields of OpenAI's request that nnspin acts on; unknown fields are ignored, as OpenAI does.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

impl ChatRequest {
    /// 400 for malformed JSON, 422 for JSON of the wrong shape, 400 naming the parameter for values
    /// out of range.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let request: Self = parse_body(body)?;
        request.validate()?;
        Ok(request)
    }

    fn validate(&self) -> Result<(), ApiError> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        if let Some(0) = self.max_tokens.or(self.max_completion_tokens) {
            let param = if self.max_tokens.is_some() {
                "max_tokens"
            } else {
                "max_completion_tokens"
            };
            return Err(
                ApiError::bad_request(format!("`{param}` must be at least 1")).with_param(param),
            );
        }
        Ok(())
    }

    /// The model id to open: the requested one, or the default for a missing model or `"auto"`.
    pub fn resolve_model(&self) -> Result<String, ApiError> {
        match self.model.as_deref() {
            Some(id) if !id.is_empty() && id != "auto" => Ok(id.to_string()),
            _ => generate::models()
                .into_iter()
                .next()
                .map(|m| m.id)
                .ok_or_else(|| ApiError::internal("this component has no model")),
        }
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    pub fn generation_params(&self) -> GenerationParams {
        let requested = self.max_completion_tokens.or(self.max_tokens);
        GenerationParams {
            max_tokens: generate::max_new_tokens(requested, DEFAULT_MAX_TOKENS),
            sampling: SamplingParams {
                temperature: self.temperature.unwrap_or(1.0),
                top_p: self.top_p.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0) as usize,
                seed: self
                    .seed
                    .unwrap_or_else(wasip2::random::random::get_random_u64),
            },
            repetition_penalty: 1.0,
            time_limit: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_is_400() {
        assert_eq!(
            ChatRequest::parse(b"{\"messages\": [").unwrap_err().status,
            400
        );
    }

    #[test]
    fn missing_messages_is_422() {
        let e = ChatRequest::parse(br#"{"model": "x"}"#).unwrap_err();
        assert_eq!(e.status, 422);
        assert!(e.message.contains("messages"), "{}", e.message);
    }

    #[test]
    fn out_of_range_temperature_names_the_parameter() {
        let e = ChatRequest::parse(br#"{"messages": [], "temperature": 3}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("temperature")));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let r = ChatRequest::parse(
            br#"{"messages": [{"role":"user","content":"hi"}], "frobnicate": 1}"#,
        )
        .unwrap();
        assert_eq!(r.messages.len(), 1);
    }
}
