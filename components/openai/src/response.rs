//! OpenAI's response shapes: `chat.completion`, `chat.completion.chunk` and `model`.

use serde::Serialize;
use serde_json::{Value, json};

use nnspin_guest::bindings::nnspin::llm::text::ModelInfo;
use nnspin_guest::generate::Outcome;

const SYSTEM_FINGERPRINT: &str = concat!("nnspin-", env!("CARGO_PKG_VERSION"));

/// What every object of one completion shares: the same id in each chunk of a stream.
pub struct Completion {
    id: String,
    created: u64,
    model: String,
}

impl Completion {
    pub fn new(model: &str) -> Self {
        let random = wasip2::random::random::get_random_bytes(12);
        let id = random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let created = wasip2::clocks::wall_clock::now().seconds;
        Self {
            id: format!("chatcmpl-{id}"),
            created,
            model: model.to_string(),
        }
    }
}

fn usage(outcome: &Outcome) -> Value {
    json!({
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    })
}

#[derive(Serialize)]
pub struct ChatCompletion {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    system_fingerprint: &'static str,
    choices: Vec<Value>,
    usage: Value,
}

impl ChatCompletion {
    pub fn new(completion: &Completion, content: String, outcome: &Outcome) -> Self {
        Self {
            id: completion.id.clone(),
            object: "chat.completion",
            created: completion.created,
            model: completion.model.clone(),
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: vec![json!({
                "index": 0,
                "message": { "role": "assistant", "content": content },
                "logprobs": null,
                "finish_reason": outcome.finish_reason.as_str(),
            })],
            usage: usage(outcome),
        }
    }
}

#[derive(Serialize)]
pub struct ChatChunk {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    system_fingerprint: &'static str,
    choices: Vec<Value>,
    /// Present (null until the last chunk) only when the client asked for usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Value>,
}

impl ChatChunk {
    pub fn new(
        completion: &Completion,
        delta: Value,
        finish_reason: Option<&str>,
        include_usage: bool,
    ) -> Self {
        Self {
            id: completion.id.clone(),
            object: "chat.completion.chunk",
            created: completion.created,
            model: completion.model.clone(),
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: vec![
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason }),
            ],
            usage: include_usage.then_some(Value::Null),
        }
    }

    /// The extra last chunk of `stream_options.include_usage`: no choices, the usage.
    pub fn usage(completion: &Completion, outcome: &Outcome) -> Self {
        Self {
            id: completion.id.clone(),
            object: "chat.completion.chunk",
            created: completion.created,
            model: completion.model.clone(),
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: Vec::new(),
            usage: Some(usage(outcome)),
        }
    }
}

pub fn model_object(model: &ModelInfo) -> Value {
    json!({
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
        "context_length": model.context_length,
    })
}
