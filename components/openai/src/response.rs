//! OpenAI's response shapes: `chat.completion`, `chat.completion.chunk`, `text_completion`, `model`,
//! and the two shapes of `logprobs`.

use serde::Serialize;
use serde_json::{Value, json};

use nnspin_guest::ApiError;
use nnspin_guest::generate::Outcome;
use nnspin_guest::http::EventStream;
use nnspin_guest::sampling::TokenLogprob;
use nnspin_guest::text::ModelInfo;
use nnspin_guest::vocabulary::Vocabulary;

const SYSTEM_FINGERPRINT: &str = concat!("nnspin-", env!("CARGO_PKG_VERSION"));

/// What every object of one completion shares: the same id in each chunk of a stream.
pub struct Completion {
    id: String,
    created: u64,
    model: String,
}

/// A fresh id as OpenAI's look: `prefix` and 24 random hex digits.
pub fn fresh_id(prefix: &str) -> String {
    let random = wasip2::random::random::get_random_bytes(12);
    random.iter().fold(String::from(prefix), |mut id, b| {
        id.push_str(&format!("{b:02x}"));
        id
    })
}

impl Completion {
    /// `prefix` is `chatcmpl` or `cmpl`, as OpenAI's ids begin.
    pub fn new(prefix: &str, model: &str) -> Self {
        Self {
            id: fresh_id(&format!("{prefix}-")),
            created: wasip2::clocks::wall_clock::now().seconds,
            model: model.to_string(),
        }
    }
}

/// Token counts of a response: the prompt once, the completions of every choice.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub prompt_tokens: u32,
    /// Of the prompt tokens, those the host's prefix cache held.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            cached_tokens: 0,
            completion_tokens: 0,
        }
    }

    /// Adds a finished choice: its completion, and, for a prompt's first choice (the prompt is counted
    /// once), how much of that prompt was cached.
    pub fn add(&mut self, outcome: &Outcome, first_choice: bool) {
        self.completion_tokens += outcome.completion_tokens;
        if first_choice {
            self.cached_tokens += outcome.cached_tokens;
        }
    }

    fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens.min(self.prompt_tokens)},
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

/// A response object: a whole completion, or one chunk of a stream.
#[derive(Serialize)]
pub struct Response<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    choices: Vec<Value>,
    /// In streams, present (null until the last chunk) only when the client asked for usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Value>,
}

impl<'a> Response<'a> {
    pub fn whole(
        completion: &'a Completion,
        object: &'static str,
        choices: Vec<Value>,
        usage: &Usage,
    ) -> Self {
        Self {
            head: completion.head(object),
            choices,
            usage: Some(usage.json()),
        }
    }

    pub fn chunk(
        completion: &'a Completion,
        object: &'static str,
        choice: Value,
        include_usage: bool,
    ) -> Self {
        Self {
            head: completion.head(object),
            choices: vec![choice],
            usage: include_usage.then_some(Value::Null),
        }
    }

    /// The extra last chunk of `stream_options.include_usage`: no choices, the usage.
    pub fn usage_chunk(completion: &'a Completion, object: &'static str, usage: &Usage) -> Self {
        Self {
            head: completion.head(object),
            choices: Vec::new(),
            usage: Some(usage.json()),
        }
    }
}

/// Ends a stream: the usage chunk when the client asked for one, then `[DONE]`.
pub fn end_stream(
    mut events: EventStream,
    completion: &Completion,
    object: &'static str,
    usage: Option<&Usage>,
) {
    if let Some(usage) = usage {
        events.send_json(&Response::usage_chunk(completion, object, usage));
    }
    events.send("[DONE]");
    events.finish();
}

/// Ends a stream that failed after it started (its status already sent): the error is its last event.
pub fn fail_stream(mut events: EventStream, error: &ApiError) {
    events.send_json(&error.body());
    events.send("[DONE]");
    events.finish();
}

/// A token as logprobs show it: its text (lossy where it holds part of a character) and its bytes.
pub fn token_text(vocabulary: &Vocabulary, token: u32) -> (String, &[u8]) {
    let bytes = vocabulary.token(token);
    (String::from_utf8_lossy(bytes).into_owned(), bytes)
}

/// Chat's `logprobs.content`: one entry per token with its `top_logprobs`.
pub fn chat_logprobs(vocabulary: &Vocabulary, logprobs: &[TokenLogprob]) -> Value {
    let entry = |token: u32, logprob: f32| {
        let (text, bytes) = token_text(vocabulary, token);
        json!({ "token": text, "logprob": logprob, "bytes": bytes })
    };
    let content: Vec<Value> = logprobs
        .iter()
        .map(|lp| {
            let mut e = entry(lp.token, lp.logprob);
            e["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
            e
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// The legacy completions' `logprobs`: parallel lists, offsets counted from `offset` in the text.
pub fn legacy_logprobs(vocabulary: &Vocabulary, logprobs: &[TokenLogprob], offset: usize) -> Value {
    let mut tokens = Vec::with_capacity(logprobs.len());
    let mut token_logprobs = Vec::with_capacity(logprobs.len());
    let mut top = Vec::with_capacity(logprobs.len());
    let mut offsets = Vec::with_capacity(logprobs.len());
    let mut at = offset;
    for lp in logprobs {
        let (text, _) = token_text(vocabulary, lp.token);
        offsets.push(at);
        at += text.len();
        tokens.push(text);
        token_logprobs.push(lp.logprob);
        let alternatives: serde_json::Map<String, Value> = lp
            .top
            .iter()
            .map(|&(t, l)| (token_text(vocabulary, t).0, json!(l)))
            .collect();
        top.push(alternatives);
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

pub fn model_object(model: &ModelInfo) -> Value {
    let (task, dimensions) = nnspin_guest::model::task(model);
    json!({
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
        "task": task,
        "dimensions": dimensions,
        "context_length": model.context_length,
        "backend": model.backend,
        "device": model.device,
        "precision": model.precision,
    })
}
