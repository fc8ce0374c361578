//! `POST /tokenize` and `POST /detokenize`, for clients that count tokens before they send a prompt: vLLM's
//! shapes (`prompt` or chat `messages` and `tools` in, `count`, `max_model_len` and `tokens` out;
//! `tokens` in, `prompt` out), with llama.cpp's names accepted and answered too (`content`).

use serde::Deserialize;
use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

use nnspin_guest::ApiError;
use nnspin_guest::chat::{ChatMessage, Conversation};
use nnspin_guest::http;
use nnspin_guest::model::Model;
use nnspin_guest::request::parse_body;

use crate::errors;
use crate::request;
use crate::response;
use crate::tools::{CallFormat, Tools};

/// What to tokenize: text as a prompt (`prompt`, or llama.cpp's `content`), or chat `messages` rendered
/// by the model's template exactly as a chat request renders them (a last assistant message continued).
#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
    /// The functions a chat offers, rendered as a chat request with them renders them.
    #[serde(default)]
    tools: Option<Value>,
    /// vLLM's: each token's text beside its id.
    #[serde(default)]
    return_token_strs: bool,
}

/// What the text to tokenize is.
enum Input {
    Text(String),
    Chat(Conversation, Option<Tools>),
}

impl TokenizeRequest {
    fn parse(body: &[u8]) -> Result<(Self, Input), ApiError> {
        let mut request: Self = parse_body(body)?;
        // Checked whatever the input, as the API describes them: they count only with `messages`.
        let tools = Tools::from_request(request.tools.as_ref(), None, true)?;
        let input = match (
            request.prompt.take(),
            request.content.take(),
            &request.messages,
        ) {
            (Some(text), None, None) | (None, Some(text), None) => Input::Text(text),
            (None, None, Some(messages)) => Input::Chat(Conversation::parse(messages)?, tools),
            _ => {
                return Err(ApiError::wrong_shape(
                    "give exactly one of `prompt`, `content` or `messages`",
                ));
            }
        };
        Ok((request, input))
    }
}

#[derive(Debug, Deserialize)]
struct DetokenizeRequest {
    #[serde(default)]
    model: Option<String>,
    tokens: Vec<u32>,
}

/// The model a request names, or the default.
fn open(model: Option<&str>) -> Result<Model, ApiError> {
    Model::open(&request::model_id(model, false)?)
}

pub fn tokenize(request: IncomingRequest, out: ResponseOutparam) {
    let result = http::read_body(request)
        .and_then(|body| TokenizeRequest::parse(&body))
        .and_then(|(request, input)| {
            let model = open(request.model.as_deref())?;
            let tokens = match input {
                Input::Text(text) => model.encode(&text)?,
                Input::Chat(conversation, tools) => {
                    let format = CallFormat::of(&model);
                    let (messages, tools) =
                        request::chat_messages(&conversation, tools.as_ref(), &format);
                    model.conversation_prompt(&messages, tools.as_deref())?
                }
            };
            let mut body = json!({
                "count": tokens.len(),
                "max_model_len": model.info.context_length,
                "tokens": tokens,
            });
            if request.return_token_strs {
                let vocabulary = model.vocabulary();
                let strs: Vec<String> = tokens
                    .iter()
                    .map(|&t| response::token_text(vocabulary, t).0)
                    .collect();
                body["token_strs"] = json!(strs);
            }
            Ok(body)
        });
    match result {
        Ok(body) => http::send_json(out, 200, &body),
        Err(error) => errors::send(out, &error),
    }
}

pub fn detokenize(request: IncomingRequest, out: ResponseOutparam) {
    let result = http::read_body(request)
        .and_then(|body| parse_body::<DetokenizeRequest>(&body))
        .and_then(|request| {
            let text = open(request.model.as_deref())?.decode(&request.tokens)?;
            Ok(json!({ "prompt": text, "content": text }))
        });
    match result {
        Ok(body) => http::send_json(out, 200, &body),
        Err(error) => errors::send(out, &error),
    }
}
