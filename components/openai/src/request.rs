//! The validation layer of the OpenAI API: a request body becomes a [`ChatRequest`] or a
//! [`CompletionRequest`] here, or the error that says what is wrong with it, before any model is opened.
//! Only what needs the model (the prompt's tokens against its context and vocabulary) is checked later,
//! by `GenerationRequest::new` and the completions' prompt reader.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use wasip2::http::types::IncomingRequest;

use nnspin_guest::ApiError;
use nnspin_guest::chat::{AnsweredCall, ChatMessage, Conversation};
use nnspin_guest::generate::{self, GenerationParams};
use nnspin_guest::http;
use nnspin_guest::json_schema::Schema;
use nnspin_guest::model::{self, Model};
use nnspin_guest::request::{check_range, float, parse_body, whole_number};
use nnspin_guest::sampling::{PenaltyParams, SamplingParams};
use nnspin_guest::structured::Structure;
use nnspin_guest::text::{Message, ModelTask};

use crate::tools::{CallFormat, Tools};

/// `max_tokens` of a chat completion when the request gives none.
const CHAT_DEFAULT_MAX_TOKENS: u32 = 128;
/// OpenAI's default for the legacy completions.
const COMPLETION_DEFAULT_MAX_TOKENS: u32 = 16;
/// Most sequences `stop` may list, and most choices `n` may ask for.
const MAX_STOP: usize = 4;
const MAX_CHOICES: u32 = 8;
/// Most alternatives chat's `top_logprobs` may ask for.
const MAX_TOP_LOGPROBS: u32 = 20;
/// Most log-probability alternatives the legacy endpoint gives.
const MAX_LEGACY_LOGPROBS: u32 = 5;

/// The sampling and streaming fields chat and legacy completions share; unknown fields are ignored, as
/// OpenAI does.
#[derive(Debug, Deserialize)]
pub struct SamplingFields {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    pub max_tokens: Option<u32>,
    #[serde(default, deserialize_with = "float")]
    pub temperature: Option<f32>,
    #[serde(default, deserialize_with = "float")]
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
    #[serde(default, deserialize_with = "float")]
    pub presence_penalty: Option<f32>,
    #[serde(default, deserialize_with = "float")]
    pub frequency_penalty: Option<f32>,
    /// Token id (as a string) → bias added to its logit, -100..100.
    #[serde(default)]
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Number of choices to generate.
    #[serde(default, deserialize_with = "whole_number")]
    pub n: Option<u32>,
}

/// `stop` is a string or a list of up to four strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The model id to open: the requested one, or for a missing model or `"auto"` the first the component
/// may use that generates text (`embedding` false) or embeds (`embedding` true).
pub fn model_id(requested: Option<&str>, embedding: bool) -> Result<String, ApiError> {
    match requested {
        Some(id) if !id.is_empty() && id != "auto" => Ok(id.to_string()),
        _ => model::models()
            .into_iter()
            .find(|m| matches!(m.task, ModelTask::Embedding(_)) == embedding)
            .map(|m| m.id)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "this server has no {} model: name one of GET /v1/models",
                    if embedding {
                        "embedding"
                    } else {
                        "text generation"
                    }
                ))
                .with_param("model")
            }),
    }
}

/// Reads a request body as `parse` does and opens the model its `sampling` fields name.
pub fn read<R>(
    request: IncomingRequest,
    parse: fn(&[u8]) -> Result<R, ApiError>,
    sampling: fn(&R) -> &SamplingFields,
) -> Result<(R, Model), ApiError> {
    let request = parse(&http::read_body(request)?)?;
    let model = Model::open_generator(&sampling(&request).resolve_model()?)?;
    Ok((request, model))
}

/// A chat completion request as the client sends it.
#[derive(Debug, Deserialize)]
struct ChatBody {
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    sampling: SamplingFields,
    #[serde(default, deserialize_with = "whole_number")]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    logprobs: bool,
    #[serde(default, deserialize_with = "whole_number")]
    top_logprobs: Option<u32>,
    /// Read by [`response_structure`], so each mistake gets its own message.
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
}

/// A valid chat completion request.
pub struct ChatRequest {
    pub sampling: SamplingFields,
    max_completion_tokens: Option<u32>,
    /// `top_logprobs` alternatives per token, when `logprobs` is on.
    pub logprobs: Option<usize>,
    /// The structure `response_format` asks for.
    pub format: Option<Structure>,
    /// The functions the model may call now, and how it must.
    pub tools: Option<Tools>,
    pub conversation: Conversation,
    /// The last message is an assistant turn the model continues.
    prefilled: bool,
}

/// A chat request's prompt for one model, as its template takes it.
pub struct ChatPrompt {
    pub messages: Vec<Message>,
    /// The template's `tools` (a JSON array), for a template that lists them itself.
    pub tools: Option<String>,
    /// The structure the output must have: a tool call in the model's format, or `response_format`'s.
    pub structure: Option<Structure>,
    /// Under `auto` once calls have results, the prompt an answer in text is written from: the
    /// conversation with the results, without the functions. The main prompt then only decides between
    /// a new call and this answer, and a call that repeats one already answered gives this answer too.
    pub answer_messages: Option<Vec<Message>>,
}

impl ChatRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let body: ChatBody = parse_body(body)?;
        body.sampling.validate()?;
        if let Some(0) = body.max_completion_tokens {
            return Err(
                ApiError::invalid("`max_completion_tokens` must be at least 1")
                    .with_param("max_completion_tokens"),
            );
        }
        if let Some(top) = body.top_logprobs {
            if top > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid(format!(
                    "`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {top}"
                ))
                .with_param("top_logprobs"));
            }
            if !body.logprobs {
                return Err(
                    ApiError::invalid("`top_logprobs` needs `logprobs` set to true")
                        .with_param("top_logprobs"),
                );
            }
        }
        let format = response_structure(body.response_format.as_ref())?;
        let tools = Tools::from_request(
            body.tools.as_ref(),
            body.tool_choice.as_ref(),
            body.parallel_tool_calls != Some(false),
        )?;
        // Checked here, with the functions as nnspin describes them, so a bad schema is refused before
        // any model is opened.
        if let Some(tools) = &tools {
            tools.structure(&CallFormat::Instructed, false)?;
        }
        Ok(Self {
            sampling: body.sampling,
            max_completion_tokens: body.max_completion_tokens,
            logprobs: body
                .logprobs
                .then(|| body.top_logprobs.unwrap_or(0) as usize),
            format,
            prefilled: body.messages.last().is_some_and(|m| m.role == "assistant"),
            tools,
            conversation: Conversation::parse(&body.messages)?,
        })
    }

    /// The calls the conversation made and had answered.
    pub fn answered(&self) -> &[AnsweredCall] {
        &self.conversation.answered
    }

    /// The prompt for a model that is told about functions and writes calls in `format`.
    pub fn prompt(&self, format: &CallFormat) -> Result<ChatPrompt, ApiError> {
        let tools = self.tools.as_ref();
        // Once calls have results, an answer in text is written from a prompt without the functions
        // (small models use the results better so); a last assistant turn is continued as it is.
        let answer_apart = tools.is_some_and(|t| !t.required())
            && !self.conversation.answered.is_empty()
            && !self.prefilled;
        let structure = match tools {
            Some(tools) => Some(tools.structure(format, answer_apart)?),
            None => self.format.clone(),
        };
        let (messages, template_tools) = chat_messages(&self.conversation, tools, format);
        Ok(ChatPrompt {
            messages,
            tools: template_tools,
            structure,
            answer_messages: answer_apart
                .then(|| chat_messages(&self.conversation, None, format).0),
        })
    }

    /// Generation settings (every choice samples from them with its own seed), the output held to
    /// `structure`.
    pub fn generation_params(&self, structure: Option<Structure>) -> GenerationParams {
        let mut params = self
            .sampling
            .generation_params(self.max_completion_tokens, CHAT_DEFAULT_MAX_TOKENS);
        params.logprobs = self.logprobs;
        params.structure = structure;
        params
    }

    /// Settings of the answer in text that replaces a repeated call: the same sampling, with no call
    /// allowed.
    pub fn answer_params(&self) -> GenerationParams {
        self.generation_params(Some(Structure::Text))
    }
}

/// A conversation's messages, and the template's `tools`, for a model told about `tools` as `format`
/// says: the functions described in the system message, the answered calls folded into notes; or the
/// conversation as sent, the functions listed by the template.
pub fn chat_messages(
    conversation: &Conversation,
    tools: Option<&Tools>,
    format: &CallFormat,
) -> (Vec<Message>, Option<String>) {
    match format {
        CallFormat::Instructed => (
            conversation.messages(tools.map(Tools::instructions).as_deref()),
            None,
        ),
        CallFormat::Template { .. } => (
            conversation.as_sent().to_vec(),
            tools.map(Tools::template_tools),
        ),
    }
}

/// What `response_format` asks of the output; invalid (naming it) when malformed.
fn response_structure(format: Option<&Value>) -> Result<Option<Structure>, ApiError> {
    let invalid = |message: String| ApiError::invalid(message).with_param("response_format");
    let Some(format) = format else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Structure::Json(Schema::any_object().into()))),
        Some("json_schema") => {
            let json_schema = format.get("json_schema").and_then(Value::as_object);
            let field = |name: &str| json_schema.and_then(|j| j.get(name));
            if field("name").is_some_and(|name| !name.is_string()) {
                return Err(invalid(
                    "`response_format.json_schema.name` must be a string".into(),
                ));
            }
            if field("strict").is_some_and(|strict| !strict.is_boolean() && !strict.is_null()) {
                return Err(invalid(
                    "`response_format.json_schema.strict` must be a boolean".into(),
                ));
            }
            let schema = field("schema")
                .filter(|schema| schema.is_object())
                .ok_or_else(|| {
                    invalid(
                        "`response_format.json_schema.schema` must be a JSON Schema object".into(),
                    )
                })?;
            let schema = Schema::compile(schema)
                .map_err(|e| invalid(format!("`response_format.json_schema`: {e}")))?;
            Ok(Some(Structure::Json(schema.into())))
        }
        Some(other) => Err(invalid(format!(
            "`response_format.type` must be text, json_object or json_schema, got {other:?}"
        ))),
        None => Err(invalid(
            "`response_format` must be an object with a `type`".into(),
        )),
    }
}

/// A legacy completion request, valid but for its prompt, which is read against the model.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// A string, a list of strings, a list of token ids, or a list of such lists.
    pub prompt: Value,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default, deserialize_with = "whole_number")]
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default, deserialize_with = "whole_number")]
    best_of: Option<u32>,
}

impl CompletionRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let invalid = |param: &str, message: String| ApiError::invalid(message).with_param(param);
        let request: Self = parse_body(body)?;
        request.sampling.validate()?;
        if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(invalid(
                "suffix",
                "`suffix` (fill-in-the-middle) is not supported by this model".into(),
            ));
        }
        if let Some(best_of) = request.best_of
            && best_of != request.sampling.choices()
        {
            return Err(invalid(
                "best_of",
                "`best_of` is not supported unless it equals `n`".into(),
            ));
        }
        if let Some(n) = request.logprobs
            && n > MAX_LEGACY_LOGPROBS
        {
            return Err(invalid(
                "logprobs",
                format!("`logprobs` must be between 0 and {MAX_LEGACY_LOGPROBS}, got {n}"),
            ));
        }
        if request.echo && request.logprobs.is_some() {
            return Err(invalid(
                "echo",
                "`echo` together with `logprobs` (prompt log-probabilities) is not supported"
                    .into(),
            ));
        }
        Ok(request)
    }

    /// Generation settings (every choice samples from them with its own seed).
    pub fn generation_params(&self) -> GenerationParams {
        let mut params = self
            .sampling
            .generation_params(None, COMPLETION_DEFAULT_MAX_TOKENS);
        params.logprobs = self.logprobs.map(|n| n as usize);
        params
    }
}

impl SamplingFields {
    fn validate(&self) -> Result<(), ApiError> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, 0.0, 1.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        if self.stop_sequences().len() > MAX_STOP {
            return Err(
                ApiError::invalid(format!("`stop` may hold at most {MAX_STOP} sequences"))
                    .with_param("stop"),
            );
        }
        if let Some(n) = self.n
            && !(1..=MAX_CHOICES).contains(&n)
        {
            return Err(ApiError::invalid(format!(
                "`n` must be between 1 and {MAX_CHOICES}, got {n}"
            ))
            .with_param("n"));
        }
        self.logit_bias()?;
        if let Some(0) = self.max_tokens {
            return Err(
                ApiError::invalid("`max_tokens` must be at least 1").with_param("max_tokens")
            );
        }
        Ok(())
    }

    pub fn resolve_model(&self) -> Result<String, ApiError> {
        model_id(self.model.as_deref(), false)
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
                    ApiError::invalid(format!("logit_bias key {token:?} is not a token id"))
                        .with_param("logit_bias")
                })?;
                check_range("logit_bias", Some(value), -100.0, 100.0)?;
                Ok((token, value))
            })
            .collect()
    }

    /// Generation settings: `max_tokens` unless `newer_max` (chat's `max_completion_tokens`) is given,
    /// else `default_max`.
    fn generation_params(&self, newer_max: Option<u32>, default_max: u32) -> GenerationParams {
        let requested = newer_max.or(self.max_tokens);
        GenerationParams {
            max_tokens: generate::max_new_tokens(requested, default_max),
            requested_max_tokens: requested,
            sampling: SamplingParams {
                temperature: self.temperature.unwrap_or(1.0),
                top_p: self.top_p.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(0) as usize,
                seed: self
                    .seed
                    .unwrap_or_else(wasip2::random::random::get_random_u64),
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
    use crate::errors::status;

    fn refused(body: &[u8]) -> ApiError {
        match ChatRequest::parse(body) {
            Ok(_) => panic!("{} was accepted", String::from_utf8_lossy(body)),
            Err(e) => e,
        }
    }

    #[test]
    fn malformed_json_is_400() {
        assert_eq!(status(refused(b"{\"messages\": [").kind), 400);
    }

    #[test]
    fn missing_messages_is_400() {
        let e = refused(br#"{"model": "x"}"#);
        assert_eq!(status(e.kind), 400);
        assert!(e.message.contains("messages"), "{}", e.message);
    }

    #[test]
    fn out_of_range_temperature_names_the_parameter() {
        let e = refused(br#"{"messages": [{"role":"user","content":"hi"}], "temperature": 3}"#);
        assert_eq!(
            (status(e.kind), e.param.as_deref()),
            (400, Some("temperature"))
        );
    }

    #[test]
    fn stop_penalties_bias_and_n_are_validated() {
        let ok = ChatRequest::parse(
            br#"{"messages": [{"role":"user","content":"hi"}], "stop": "\n", "presence_penalty": 1,
                 "logit_bias": {"42": -100}, "n": 2, "seed": 1}"#,
        )
        .unwrap();
        let params = ok.generation_params(None);
        assert_eq!(
            (params.stop, params.logit_bias, params.sampling.seed),
            (vec!["\n".into()], vec![(42, -100.0)], 1)
        );
        for (field, param) in [
            (r#""stop": ["a","b","c","d","e"]"#, "stop"),
            (r#""frequency_penalty": -3"#, "frequency_penalty"),
            (r#""logit_bias": {"x": 1}"#, "logit_bias"),
            (r#""logit_bias": {"1": 101}"#, "logit_bias"),
            (r#""n": 0"#, "n"),
        ] {
            let body = format!(r#"{{"messages": [{{"role":"user","content":"hi"}}], {field}}}"#);
            let e = refused(body.as_bytes());
            assert_eq!(
                (status(e.kind), e.param.as_deref()),
                (400, Some(param)),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn json_schema_fields_have_their_types() {
        for format in [
            r#"{"type": "json_schema", "json_schema": {"schema": {}, "strict": []}}"#,
            r#"{"type": "json_schema", "json_schema": {"schema": {}, "name": 5}}"#,
            r#"{"type": "json_schema", "json_schema": {"schema": true}}"#,
            r#"{"type": "json_schema", "json_schema": []}"#,
        ] {
            let body = format!(
                r#"{{"messages": [{{"role":"user","content":"hi"}}], "response_format": {format}}}"#
            );
            let e = refused(body.as_bytes());
            assert_eq!(e.param.as_deref(), Some("response_format"), "{format}");
        }
        let strict = br#"{"messages": [{"role":"user","content":"hi"}], "response_format":
            {"type": "json_schema", "json_schema": {"name": "n", "strict": true, "schema": {"type": "object"}}}}"#;
        assert!(ChatRequest::parse(strict).unwrap().format.is_some());
    }

    #[test]
    fn tool_results_under_auto_get_an_answer_prompt_without_the_functions() {
        let body = |choice: &str, last: &str| {
            format!(
                r#"{{"messages": [{{"role":"user","content":"Weather in Tokyo?"}},
                    {{"role":"assistant","tool_calls":[{{"id":"c1","type":"function","function":{{"name":"get_weather","arguments":"{{}}"}}}}]}},
                    {{"role":"tool","tool_call_id":"c1","content":"21"}}{last}],
                  "tools": [{{"type":"function","function":{{"name":"get_weather"}}}}], "tool_choice": "{choice}"}}"#
            )
        };
        let instructed = &CallFormat::Instructed;
        let auto = ChatRequest::parse(body("auto", "").as_bytes()).unwrap();
        let prompt = auto.prompt(instructed).unwrap();
        assert!(matches!(
            prompt.structure,
            Some(Structure::JsonOrDecline(_))
        ));
        assert!(
            prompt.messages[0]
                .content
                .contains("You can call these functions")
        );
        assert!(prompt.tools.is_none());
        let answer = prompt.answer_messages.unwrap();
        assert!(!answer[0].content.contains("You can call these functions"));
        assert!(answer[0].content.contains("get_weather({}) = 21"));
        assert_eq!(auto.answered().len(), 1);
        let required = ChatRequest::parse(body("required", "").as_bytes()).unwrap();
        let prompt = required.prompt(instructed).unwrap();
        assert!(prompt.answer_messages.is_none());
        assert!(matches!(prompt.structure, Some(Structure::Json(_))));
        let prefilled = body("auto", r#",{"role":"assistant","content":"It is"}"#);
        let prefilled = ChatRequest::parse(prefilled.as_bytes()).unwrap();
        let prompt = prefilled.prompt(instructed).unwrap();
        assert!(prompt.answer_messages.is_none());
        assert!(matches!(prompt.structure, Some(Structure::JsonOrText(_))));
    }

    #[test]
    fn a_template_that_writes_calls_gets_the_conversation_as_sent_and_the_tools() {
        use nnspin_guest::framed_grammar::Literal;
        let body = br#"{"messages": [{"role":"user","content":"Weather in Tokyo?"},
                {"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"c1","content":"21"}],
              "tools": [{"type":"function","function":{"name":"get_weather"}}]}"#;
        let request = ChatRequest::parse(body).unwrap();
        let template = CallFormat::Template {
            open: Literal::text("<tool_call>\n"),
            close: Literal::text("\n</tool_call>"),
            separator: Some(Literal::text("\n")),
            arguments_key: "arguments".into(),
        };
        let prompt = request.prompt(&template).unwrap();
        let roles: Vec<_> = prompt.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "tool"]);
        assert_eq!(prompt.messages[1].tool_calls[0].name, "get_weather");
        assert_eq!(prompt.messages[2].tool_call_id.as_deref(), Some("c1"));
        assert!(prompt.tools.unwrap().contains("get_weather"));
        let answer = prompt.answer_messages.unwrap();
        assert_eq!(
            answer.len(),
            3,
            "the answer reads the results where the template puts them"
        );
    }

    #[test]
    fn empty_messages_are_400() {
        assert_eq!(status(refused(br#"{"messages": []}"#).kind), 400);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let r = ChatRequest::parse(
            br#"{"messages": [{"role":"user","content":"hi"}], "frobnicate": 1}"#,
        )
        .unwrap();
        assert_eq!(r.conversation.messages(None).len(), 1);
    }
}
