//! The validation layer of the LocalLab API: each request body becomes its request type here, or the
//! error that says what is wrong with it, before any model is opened.

use serde::Deserialize;

use nnspin_guest::ApiError;
use nnspin_guest::chat::{ChatMessage, Conversation};
use nnspin_guest::generate::{self, GenerationParams};
use nnspin_guest::request::{check_range, float, parse_body, whole_number};
use nnspin_guest::sampling::{PenaltyParams, SamplingParams};
use nnspin_guest::text::Message;

/// New tokens when the request names no length.
const DEFAULT_MAX_TOKENS: u32 = 256;
/// Most prompts one `/generate/batch` request may carry.
const MAX_BATCH: usize = 32;

/// The generation settings every LocalLab endpoint accepts. LocalLab documents `max_length`; its
/// server reads `max_tokens`; both are honoured.
#[derive(Debug, Default, Deserialize)]
pub struct Settings {
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_length: Option<u32>,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_tokens: Option<u32>,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_new_tokens: Option<u32>,
    #[serde(default, deserialize_with = "float")]
    pub temperature: Option<f32>,
    #[serde(default, deserialize_with = "float")]
    pub top_p: Option<f32>,
    #[serde(default, deserialize_with = "whole_number")]
    pub top_k: Option<u32>,
    #[serde(default, deserialize_with = "float")]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub do_sample: Option<bool>,
    /// Seconds the server may spend generating.
    #[serde(default, deserialize_with = "float")]
    pub max_time: Option<f32>,
    #[serde(default, deserialize_with = "whole_number")]
    pub seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    pub prompt: String,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(flatten)]
    pub settings: Settings,
}

/// `/chat` as the client sends it.
#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    settings: Settings,
}

pub struct ChatRequest {
    /// The messages as template input.
    pub messages: Vec<Message>,
    pub settings: Settings,
}

#[derive(Debug, Deserialize)]
pub struct BatchRequest {
    pub prompts: Vec<String>,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Deserialize)]
pub struct ModelRequest {
    #[serde(default)]
    model_id: Option<String>,
}

impl GenerateRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let request: Self = parse_body(body)?;
        request.settings.validate()?;
        Ok(request)
    }
}

impl ChatRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let body: ChatBody = parse_body(body)?;
        body.settings.validate()?;
        Ok(Self {
            messages: Conversation::parse(&body.messages)?.messages(None),
            settings: body.settings,
        })
    }
}

impl BatchRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let request: Self = parse_body(body)?;
        request.settings.validate()?;
        if request.prompts.is_empty() || request.prompts.len() > MAX_BATCH {
            return Err(
                ApiError::invalid(format!("`prompts` must hold 1 to {MAX_BATCH} prompts"))
                    .with_param("prompts"),
            );
        }
        Ok(request)
    }
}

impl ModelRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        parse_body(body)
    }

    /// The model the request names, if it names one.
    pub fn model_id(self) -> Option<String> {
        self.model_id.filter(|id| !id.is_empty())
    }
}

impl Settings {
    fn validate(&self) -> Result<(), ApiError> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("repetition_penalty", self.repetition_penalty, 0.01, 10.0)?;
        check_range("max_time", self.max_time, 0.0, 3600.0)?;
        for (param, value) in [
            ("max_length", self.max_length),
            ("max_tokens", self.max_tokens),
            ("max_new_tokens", self.max_new_tokens),
        ] {
            if value == Some(0) {
                return Err(
                    ApiError::invalid(format!("`{param}` must be at least 1")).with_param(param)
                );
            }
        }
        Ok(())
    }

    fn requested_tokens(&self) -> Option<u32> {
        self.max_length.or(self.max_tokens).or(self.max_new_tokens)
    }

    pub fn generation_params(&self) -> GenerationParams {
        let greedy = self.do_sample == Some(false);
        GenerationParams {
            max_tokens: generate::max_new_tokens(self.requested_tokens(), DEFAULT_MAX_TOKENS),
            // LocalLab shortens the completion to what the context leaves.
            requested_max_tokens: None,
            sampling: SamplingParams {
                temperature: if greedy {
                    0.0
                } else {
                    self.temperature.unwrap_or(0.7)
                },
                top_p: self.top_p.unwrap_or(0.9),
                top_k: self.top_k.unwrap_or(0) as usize,
                seed: self
                    .seed
                    .unwrap_or_else(wasip2::random::random::get_random_u64),
            },
            penalties: PenaltyParams {
                repetition: self.repetition_penalty.unwrap_or(1.0),
                ..Default::default()
            },
            logit_bias: Vec::new(),
            stop: Vec::new(),
            time_limit: self.max_time.map(std::time::Duration::from_secs_f32),
            structure: None,
            logprobs: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::status;

    #[test]
    fn documented_and_server_field_names_both_set_the_length() {
        let documented =
            GenerateRequest::parse(br#"{"prompt": "x", "max_length": 7, "seed": 1}"#).unwrap();
        let server =
            GenerateRequest::parse(br#"{"prompt": "x", "max_tokens": 9, "seed": 1}"#).unwrap();
        assert_eq!(documented.settings.generation_params().max_tokens, 7);
        assert_eq!(server.settings.generation_params().max_tokens, 9);
    }

    #[test]
    fn client_defaults_are_accepted() {
        // What locallab-client 1.1.0 sends by default.
        let body = br#"{"prompt": "x", "model_id": null, "stream": false, "max_length": null, "temperature": 0.7,
                        "top_p": 0.9, "repetition_penalty": 1.15, "top_k": 80, "do_sample": true, "seed": 1}"#;
        let request = GenerateRequest::parse(body).unwrap();
        let params = request.settings.generation_params();
        assert_eq!(
            (params.sampling.top_k, params.penalties.repetition),
            (80, 1.15)
        );
    }

    #[test]
    fn do_sample_false_is_greedy() {
        let request =
            GenerateRequest::parse(br#"{"prompt": "x", "do_sample": false, "seed": 1}"#).unwrap();
        assert_eq!(
            request.settings.generation_params().sampling.temperature,
            0.0
        );
    }

    #[test]
    fn mistakes_get_the_statuses_locallab_gives() {
        let refused = |body: &[u8]| match GenerateRequest::parse(body) {
            Ok(_) => panic!("{} was accepted", String::from_utf8_lossy(body)),
            Err(e) => (status(e.kind), e.param),
        };
        assert_eq!(
            refused(br#"{"prompt": "x", "top_p": 2}"#),
            (400, Some("top_p".into()))
        );
        assert_eq!(refused(br#"{"max_length": 3}"#).0, 422);
        assert_eq!(refused(b"{oops").0, 400);
    }

    #[test]
    fn a_batch_holds_one_to_thirty_two_prompts() {
        let batch = |n: usize| {
            let prompts = vec!["\"x\""; n].join(",");
            BatchRequest::parse(format!(r#"{{"prompts": [{prompts}]}}"#).as_bytes())
        };
        assert!(batch(1).is_ok() && batch(32).is_ok());
        for n in [0, 33] {
            let e = batch(n).expect_err("refused");
            assert_eq!((status(e.kind), e.param.as_deref()), (400, Some("prompts")));
        }
    }
}
