//! The chat completion request: parsed and validated in one place, so every client error is found
//! before generation starts.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use nnspin_guest::ApiError;
use nnspin_guest::chat::ChatMessage;
use nnspin_guest::generate::{self, GenerationParams};
use nnspin_guest::json_schema::Schema;
use nnspin_guest::request::{check_range, parse_body, whole_number};
use nnspin_guest::sampling::{PenaltyParams, SamplingParams};
use nnspin_guest::structured::Structure;

/// `max_tokens` of a chat completion when the request gives none.
const DEFAULT_MAX_TOKENS: u32 = 128;

/// The sampling and streaming fields chat and legacy completions share; unknown fields are ignored, as
/// OpenAI does.
#[derive(Debug, Deserialize)]
pub struct SamplingFields {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default, deserialize_with = "whole_number")]
    pub top_k: Option<u32>,
    #[serde(default, deserialize_with = "whole_number")]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string) → bias added to its logit, -100..100.
    #[serde(default)]
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Number of choices to generate.
    #[serde(default, deserialize_with = "whole_number")]
    pub n: Option<u32>,
}

/// A chat completion request.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(default, deserialize_with = "whole_number")]
    pub top_logprobs: Option<u32>,
    /// Checked by [`ChatRequest::structure`], so each mistake gets its own message.
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
}

/// `stop` is a string or a list of up to four strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Most sequences `stop` may list, and most choices `n` may ask for.
const MAX_STOP: usize = 4;
const MAX_CHOICES: u32 = 8;
/// Most alternatives `top_logprobs` may ask for.
const MAX_TOP_LOGPROBS: u32 = 20;

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// OpenAI answers every invalid request with 400 (the shared parser says 422 for JSON of the wrong
/// shape, as LocalLab's FastAPI does).
pub fn openai_status(mut error: ApiError) -> ApiError {
    if error.status == 422 {
        error.status = 400;
    }
    error
}

/// Parses an OpenAI request body: 400 for malformed JSON or the wrong shape.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse_body(body).map_err(openai_status)
}

impl ChatRequest {
    /// 400 for malformed JSON, JSON of the wrong shape, and values out of range (naming the parameter).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let request: Self = parse(body)?;
        request.sampling.validate()?;
        if let Some(0) = request.max_completion_tokens {
            return Err(
                ApiError::bad_request("`max_completion_tokens` must be at least 1")
                    .with_param("max_completion_tokens"),
            );
        }
        if let Some(top) = request.top_logprobs {
            if top > MAX_TOP_LOGPROBS {
                return Err(ApiError::bad_request(format!(
                    "`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {top}"
                ))
                .with_param("top_logprobs"));
            }
            if !request.logprobs {
                return Err(
                    ApiError::bad_request("`top_logprobs` needs `logprobs` set to true")
                        .with_param("top_logprobs"),
                );
            }
        }
        Ok(request)
    }

    /// `top_logprobs` alternatives per token, when `logprobs` is on.
    pub fn logprobs(&self) -> Option<usize> {
        self.logprobs
            .then(|| self.top_logprobs.unwrap_or(0) as usize)
    }

    /// What `response_format` asks of the output; 400 naming it for anything malformed.
    pub fn response_structure(&self) -> Result<Option<Structure>, ApiError> {
        let invalid =
            |message: String| ApiError::bad_request(message).with_param("response_format");
        let Some(format) = &self.response_format else {
            return Ok(None);
        };
        match format.get("type").and_then(Value::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(Structure::Json(Schema::any_object()))),
            Some("json_schema") => {
                let schema = format
                    .get("json_schema")
                    .and_then(|s| s.get("schema"))
                    .ok_or_else(|| {
                        invalid("`response_format.json_schema.schema` is required".into())
                    })?;
                let schema = Schema::compile(schema)
                    .map_err(|e| invalid(format!("`response_format.json_schema`: {e}")))?;
                Ok(Some(Structure::Json(schema)))
            }
            Some(other) => Err(invalid(format!(
                "`response_format.type` must be text, json_object or json_schema, got {other:?}"
            ))),
            None => Err(invalid(
                "`response_format` must be an object with a `type`".into(),
            )),
        }
    }

    /// Generation settings for choice `index`.
    pub fn generation_params(&self, index: u32) -> GenerationParams {
        let mut params =
            self.sampling
                .generation_params(index, self.max_completion_tokens, DEFAULT_MAX_TOKENS);
        params.logprobs = self.logprobs();
        params
    }
}

impl SamplingFields {
    pub fn validate(&self) -> Result<(), ApiError> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        if self.stop_sequences().len() > MAX_STOP {
            return Err(ApiError::bad_request(format!(
                "`stop` may hold at most {MAX_STOP} sequences"
            ))
            .with_param("stop"));
        }
        if let Some(n) = self.n
            && !(1..=MAX_CHOICES).contains(&n)
        {
            return Err(ApiError::bad_request(format!(
                "`n` must be between 1 and {MAX_CHOICES}, got {n}"
            ))
            .with_param("n"));
        }
        self.logit_bias()?;
        if let Some(0) = self.max_tokens {
            return Err(
                ApiError::bad_request("`max_tokens` must be at least 1").with_param("max_tokens")
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

    pub fn choices(&self) -> u32 {
        self.n.unwrap_or(1)
    }

    fn stop_sequences(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(Stop::One(stop)) => vec![stop.clone()],
            Some(Stop::Many(stops)) => stops.clone(),
        }
    }

    fn logit_bias(&self) -> Result<Vec<(u32, f32)>, ApiError> {
        let Some(bias) = &self.logit_bias else {
            return Ok(Vec::new());
        };
        bias.iter()
            .map(|(token, &value)| {
                let token = token.parse::<u32>().map_err(|_| {
                    ApiError::bad_request(format!("logit_bias key {token:?} is not a token id"))
                        .with_param("logit_bias")
                })?;
                check_range("logit_bias", Some(value), -100.0, 100.0)?;
                Ok((token, value))
            })
            .collect()
    }

    /// Generation settings for choice `index` (each choice samples with its own seed); `max_tokens`
    /// unless `newer_max` (chat's `max_completion_tokens`) is given, else `default_max`.
    pub fn generation_params(
        &self,
        index: u32,
        newer_max: Option<u32>,
        default_max: u32,
    ) -> GenerationParams {
        let requested = newer_max.or(self.max_tokens);
        let seed = self
            .seed
            .unwrap_or_else(wasip2::random::random::get_random_u64);
        GenerationParams {
            max_tokens: generate::max_new_tokens(requested, default_max),
            requested_max_tokens: requested,
            sampling: SamplingParams {
                temperature: self.temperature.unwrap_or(1.0),
                top_p: self.top_p.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0) as usize,
                seed: seed.wrapping_add(u64::from(index)),
            },
            penalties: PenaltyParams {
                presence: self.presence_penalty.unwrap_or(0.0),
                frequency: self.frequency_penalty.unwrap_or(0.0),
                ..PenaltyParams::default()
            },
            logit_bias: self.logit_bias().unwrap_or_default(),
            stop: self.stop_sequences(),
            time_limit: None,
            structure: None,
            logprobs: None,
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
    fn missing_messages_is_400() {
        let e = ChatRequest::parse(br#"{"model": "x"}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("messages"), "{}", e.message);
    }

    #[test]
    fn out_of_range_temperature_names_the_parameter() {
        let e = ChatRequest::parse(br#"{"messages": [], "temperature": 3}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("temperature")));
    }

    #[test]
    fn stop_penalties_bias_and_n_are_validated() {
        let ok = ChatRequest::parse(
            br#"{"messages": [], "stop": "\n", "presence_penalty": 1, "logit_bias": {"42": -100}, "n": 2, "seed": 1}"#,
        )
        .unwrap();
        let params = ok.generation_params(1);
        assert_eq!(
            (params.stop, params.logit_bias, params.sampling.seed),
            (vec!["\n".into()], vec![(42, -100.0)], 2)
        );
        for (body, param) in [
            (
                br#"{"messages": [], "stop": ["a","b","c","d","e"]}"#.as_slice(),
                "stop",
            ),
            (
                br#"{"messages": [], "frequency_penalty": -3}"#,
                "frequency_penalty",
            ),
            (br#"{"messages": [], "logit_bias": {"x": 1}}"#, "logit_bias"),
            (
                br#"{"messages": [], "logit_bias": {"1": 101}}"#,
                "logit_bias",
            ),
            (br#"{"messages": [], "n": 0}"#, "n"),
        ] {
            let e = ChatRequest::parse(body).unwrap_err();
            assert_eq!(
                (e.status, e.param.as_deref()),
                (400, Some(param)),
                "{}",
                e.message
            );
        }
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
