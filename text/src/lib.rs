//! A model's tokenizer and chat template, and the facts of its configuration files.
//!
//! The host builds them once per model (loading a `tokenizer.json` costs 100-160 ms, far more than a whole
//! cold-started handler) and serves them to components through `nnspin:llm/text`; the portable build of a
//! component compiles one model's files in and builds them itself, since upstream hosts offer no such
//! interface. Both read the files through this crate, so they tokenize and template alike.

pub mod detokenizer;
pub mod facts;
mod python_json;
pub mod tool_syntax;
pub mod vocabulary;

use std::path::Path;
use std::sync::OnceLock;

use minijinja::{Environment, ErrorKind, context};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use tool_syntax::ToolCallSyntax;
use vocabulary::Vocabulary;

/// One chat message, as a chat template reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// The calls an assistant turn made.
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
}

/// A call an assistant turn made; `arguments` is a JSON text, as OpenAI clients send it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl Message {
    /// The message as Hugging Face's chat templates read it: OpenAI's fields, with each call's
    /// arguments an object (as transformers and vLLM pass them), so that `arguments | tojson` writes
    /// the JSON the model was trained on rather than a quoted string.
    fn template_input(&self) -> Value {
        let mut message = json!({"role": self.role, "content": self.content});
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .iter()
                .map(|call| {
                    let arguments = serde_json::from_str(&call.arguments)
                        .unwrap_or_else(|_| Value::String(call.arguments.clone()));
                    json!({"id": call.id, "type": "function",
                           "function": {"name": call.name, "arguments": arguments}})
                })
                .collect();
            message["tool_calls"] = Value::Array(calls);
        }
        if let Some(id) = &self.tool_call_id {
            message["tool_call_id"] = json!(id);
        }
        message
    }
}

/// Why a text operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{0}")]
    Tokenizer(String),
    /// The chat template refused the messages (templates raise exceptions) or failed to render.
    #[error("chat template: {0}")]
    Template(String),
}

/// A model's files could not be read as a tokenizer and chat template.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(String);

/// A model's tokenizer and compiled chat template.
pub struct TextModel {
    tokenizer: Tokenizer,
    /// Holds the chat template when the model has one (encoders have none).
    templates: Environment<'static>,
    bos_token: String,
    eos_token: String,
    vocabulary: OnceLock<Vocabulary>,
    tool_call_syntax: OnceLock<Option<ToolCallSyntax>>,
}

const CHAT_TEMPLATE: &str = "chat";

/// Where transformers (since 4.50) saves a tokenizer's chat template, and reads it first.
const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// `tokenizer_config.json`'s `chat_template`: a template, or a list of named ones (`{"name", "template"}`,
/// as tool-use variants are published) of which transformers applies the one named "default".
fn configured_template(config: &serde_json::Value) -> Option<&str> {
    match &config["chat_template"] {
        serde_json::Value::String(template) => Some(template),
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str()),
        _ => None,
    }
}

impl TextModel {
    /// Reads `tokenizer.json`, `tokenizer_config.json` (chat template, bos and eos tokens) and, where
    /// present, `chat_template.jinja`.
    pub fn load(model_dir: &Path) -> Result<Self, LoadError> {
        let read = |name: &str| {
            let path = model_dir.join(name);
            std::fs::read(&path).map_err(|e| LoadError(format!("{}: {e}", path.display())))
        };
        let template_file = model_dir.join(CHAT_TEMPLATE_FILE);
        let template = match std::fs::read_to_string(&template_file) {
            Ok(template) => Some(template),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(LoadError(format!("{}: {e}", template_file.display()))),
        };
        Self::from_json(
            &read("tokenizer.json")?,
            &read("tokenizer_config.json")?,
            template.as_deref(),
        )
    }

    /// Builds them from the contents of `tokenizer.json`, `tokenizer_config.json` and, where the model
    /// has one, `chat_template.jinja`.
    pub fn from_json(
        tokenizer: &[u8],
        tokenizer_config: &[u8],
        chat_template_file: Option<&str>,
    ) -> Result<Self, LoadError> {
        let tokenizer = Tokenizer::from_bytes(tokenizer)
            .map_err(|e| LoadError(format!("tokenizer.json: {e}")))?;
        let config: serde_json::Value = serde_json::from_slice(tokenizer_config)
            .map_err(|e| LoadError(format!("tokenizer_config.json: {e}")))?;
        let token = |key: &str| match &config[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        let mut templates = Environment::new();
        // As Hugging Face's template engine renders them (a newline after a block tag is dropped, and
        // whitespace before one): templates are written for that.
        templates.set_trim_blocks(true);
        templates.set_lstrip_blocks(true);
        templates.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        templates.add_filter("tojson", python_json::tojson);
        templates.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        if let Some(template) = chat_template_file.or_else(|| configured_template(&config)) {
            templates
                .add_template_owned(CHAT_TEMPLATE, template.to_string())
                .map_err(|e| LoadError(format!("chat template: {e}")))?;
        }
        Ok(Self {
            tokenizer,
            templates,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            vocabulary: OnceLock::new(),
            tool_call_syntax: OnceLock::new(),
        })
    }

    /// With `add_special_tokens`, the tokenizer's post-processor frames the text (BERT's `[CLS] … [SEP]`).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TextError> {
        self.tokenizer
            .encode_fast(text, add_special_tokens)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| TextError::Tokenizer(e.to_string()))
    }

    /// Renders the chat template; `tools` (a JSON array of OpenAI tool objects) is passed as the
    /// template's `tools`, which templates of tool-calling models list in the prompt.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        tools: Option<&str>,
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        let messages: Vec<Value> = messages.iter().map(Message::template_input).collect();
        let tools: Option<Value> = tools
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| TextError::Template(format!("tools: {e}")))?;
        let template = self.templates.get_template(CHAT_TEMPLATE).map_err(|_| {
            TextError::Template("the model has no chat template (it is not a chat model)".into())
        })?;
        template
            .render(context! {
                messages, tools, add_generation_prompt,
                bos_token => self.bos_token, eos_token => self.eos_token,
            })
            .map_err(|e| TextError::Template(e.to_string()))
    }

    /// The syntax the chat template writes tool calls in, when it describes tools itself; learned
    /// from the template on first use and kept.
    pub fn tool_call_syntax(&self) -> Option<&ToolCallSyntax> {
        self.tool_call_syntax
            .get_or_init(|| tool_syntax::learn(self))
            .as_ref()
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .unwrap_or_default()
    }

    /// Built on first use (about 20 ms for 49k tokens) and kept.
    pub fn vocabulary(&self) -> &Vocabulary {
        self.vocabulary
            .get_or_init(|| Vocabulary::of(&self.tokenizer))
    }

    pub fn vocab_size(&self) -> u32 {
        self.tokenizer.get_vocab_size(true) as u32
    }
}
