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

/// Token counts of a response: the prompt once, the completions of every choice.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// The fields every object of one completion starts with, borrowed so a stream copies nothing per chunk.
#[derive(Serialize)]
struct Head<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
}

impl Completion {
    fn head(&self, object: &'static str) -> Head<'_> {
        Head {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
        }
    }
}

#[derive(Serialize)]
pub struct ChatCompletion<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    choices: Vec<Value>,
    usage: Value,
}

impl<'a> ChatCompletion<'a> {
    pub fn new(completion: &'a Completion, choices: Vec<(String, Outcome)>) -> Self {
        let usage = Usage {
            prompt_tokens: choices.first().map_or(0, |(_, o)| o.prompt_tokens),
            completion_tokens: choices.iter().map(|(_, o)| o.completion_tokens).sum(),
        };
        Self {
            head: completion.head("chat.completion"),
            choices: choices
                .into_iter()
                .enumerate()
                .map(|(index, (content, outcome))| {
                    json!({
                        "index": index,
                        "message": { "role": "assistant", "content": content },
                        "logprobs": null,
                        "finish_reason": outcome.finish_reason.as_str(),
                    })
                })
                .collect(),
            usage: usage.json(),
        }
    }
}

#[derive(Serialize)]
pub struct ChatChunk<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    choices: Vec<Value>,
    /// Present (null until the last chunk) only when the client asked for usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Value>,
}

impl<'a> ChatChunk<'a> {
    pub fn new(
        completion: &'a Completion,
        index: u32,
        delta: Value,
        finish_reason: Option<&str>,
        include_usage: bool,
    ) -> Self {
        Self {
            head: completion.head("chat.completion.chunk"),
            choices: vec![
                json!({ "index": index, "delta": delta, "logprobs": null, "finish_reason": finish_reason }),
            ],
            usage: include_usage.then_some(Value::Null),
        }
    }

    /// The extra last chunk of `stream_options.include_usage`: no choices, the usage.
    pub fn usage(completion: &'a Completion, usage: &Usage) -> Self {
        Self {
            head: completion.head("chat.completion.chunk"),
            choices: Vec::new(),
            usage: Some(usage.json()),
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
