//! One model's tokenizer, chat template and facts compiled into the component, for hosts without
//! `nnspin:llm/text`. `NNSPIN_PORTABLE_MODEL` names the model directory at build time (see `build.rs`);
//! the model's id is that directory's name, which is also the name upstream `wasmtime serve` gives a graph
//! preloaded from a directory (`-S nn-graph=openvino::DIR`).
//!
//! The tokenizer is built on first use in an instance. A host that instantiates per request, as upstream
//! `wasmtime serve` does for a WASIp2 component, therefore pays for it on every request: the price of
//! needing no host interface, which nnspin's own host avoids by keeping tokenizers resident.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use nnspin_text::{TextModel, detokenizer, facts};

pub use nnspin_text::vocabulary::Vocabulary;

const ID: &str = env!("NNSPIN_PORTABLE_MODEL_ID");

macro_rules! model_file {
    ($name:literal) => {
        include_bytes!(concat!(env!("NNSPIN_PORTABLE_MODEL_DIR"), "/", $name))
    };
}

/// The model's `chat_template.jinja`, where it has one (it comes before `tokenizer_config.json`'s template).
#[cfg(portable_chat_template_file)]
const CHAT_TEMPLATE_FILE: Option<&str> = Some(include_str!(concat!(
    env!("NNSPIN_PORTABLE_MODEL_DIR"),
    "/chat_template.jinja"
)));
#[cfg(not(portable_chat_template_file))]
const CHAT_TEMPLATE_FILE: Option<&str> = None;

// A chat message, a call it made and a template's call syntax have the fields of `nnspin:llm/text`'s
// records.
pub use nnspin_text::tool_syntax::ToolCallSyntax;
pub use nnspin_text::{Message, ToolCall};

/// What a model computes; a portable build serves one generation model.
#[derive(Debug, Clone, Copy)]
pub enum ModelTask {
    Generation,
    Embedding(u32),
}

/// The facts `nnspin:llm/text` gives about a model, read from its files at build time.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub id: String,
    pub task: ModelTask,
    pub context_length: u32,
    pub vocab_size: u32,
    pub eos_token_ids: Vec<u32>,
    pub created: u64,
    pub owned_by: String,
    /// The host chooses engine, device and precision, and a portable component cannot ask which:
    /// `wasi-nn`, `unknown`, `unknown`.
    pub backend: String,
    pub device: String,
    pub precision: String,
    /// A wasi-nn host in general holds one sequence per execution context.
    pub sequences_per_context: u32,
}

/// Why a text operation failed.
#[derive(Debug, Clone)]
pub enum TextError {
    NotFound(String),
    InvalidInput(String),
}

struct Compiled {
    text: Arc<TextModel>,
    info: ModelInfo,
}

/// The compiled-in model, built on first use. Its files were checked when the component was built, so
/// an error here is a defect of the build; it is reported, not panicked on.
fn compiled() -> Result<&'static Compiled, TextError> {
    static COMPILED: OnceLock<Result<Compiled, String>> = OnceLock::new();
    COMPILED
        .get_or_init(build)
        .as_ref()
        .map_err(|e| TextError::InvalidInput(format!("model {ID:?}: {e}")))
}

fn build() -> Result<Compiled, String> {
    let json = |bytes: &[u8]| serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null);
    let config = json(model_file!("config.json"));
    let generation_config = json(model_file!("generation_config.json"));
    let text = TextModel::from_json(
        model_file!("tokenizer.json"),
        model_file!("tokenizer_config.json"),
        CHAT_TEMPLATE_FILE,
    )
    .map_err(|e| e.to_string())?;
    let eos_token_ids = facts::eos_token_ids(&config, &generation_config)
        .ok_or("no eos_token_id in generation_config.json or config.json")?;
    let info = ModelInfo {
        id: ID.to_string(),
        task: ModelTask::Generation,
        context_length: facts::position_limit(&config),
        vocab_size: facts::vocab_size(&config).unwrap_or_else(|| text.vocab_size()),
        eos_token_ids,
        created: env!("NNSPIN_PORTABLE_MODEL_CREATED").parse().unwrap_or(0),
        owned_by: "nnspin".to_string(),
        backend: "wasi-nn".to_string(),
        device: "unknown".to_string(),
        precision: "unknown".to_string(),
        sequences_per_context: 1,
    };
    Ok(Compiled {
        text: Arc::new(text),
        info,
    })
}

/// The one model this component serves.
pub fn models() -> Vec<ModelInfo> {
    compiled().map(|c| vec![c.info.clone()]).unwrap_or_default()
}

fn invalid(error: nnspin_text::TextError) -> TextError {
    TextError::InvalidInput(error.to_string())
}

/// The compiled-in model's tokenizer and chat template.
pub struct Tokenizer(&'static Compiled);

impl Tokenizer {
    pub fn open(model: &str) -> Result<Self, TextError> {
        if model != ID {
            return Err(TextError::NotFound(format!(
                "model {model:?} is not available to this component"
            )));
        }
        compiled().map(Self)
    }

    pub fn info(&self) -> ModelInfo {
        self.0.info.clone()
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TextError> {
        self.0
            .text
            .encode(text, add_special_tokens)
            .map_err(invalid)
    }

    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        tools: Option<&str>,
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        self.0
            .text
            .apply_chat_template(messages, tools, add_generation_prompt)
            .map_err(invalid)
    }

    pub fn tool_call_syntax(&self) -> Option<ToolCallSyntax> {
        self.0.text.tool_call_syntax().cloned()
    }

    pub fn vocabulary(&self) -> Vocabulary {
        self.0.text.vocabulary().clone()
    }

    pub fn detokenizer(&self, skip_special_tokens: bool) -> Detokenizer {
        Detokenizer(RefCell::new(detokenizer::Detokenizer::new(
            self.0.text.clone(),
            skip_special_tokens,
        )))
    }
}

/// Turns generated tokens into text as they arrive, never splitting a UTF-8 character.
pub struct Detokenizer(RefCell<detokenizer::Detokenizer>);

impl Detokenizer {
    pub fn push(&self, token: u32) -> String {
        self.0.borrow_mut().push(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_the_compiled_in_model() {
        assert!(matches!(
            Tokenizer::open("another-model"),
            Err(TextError::NotFound(_))
        ));
        let info = Tokenizer::open(ID).unwrap().info();
        assert_eq!(info.id, ID);
        assert!(matches!(info.task, ModelTask::Generation));
        assert!(!info.eos_token_ids.is_empty() && info.context_length > 0);
        assert_eq!(models().len(), 1);
    }

    #[test]
    fn a_rendered_chat_prompt_round_trips_through_tokens() {
        let tokenizer = Tokenizer::open(ID).unwrap();
        let messages = [Message {
            role: "user".into(),
            content: "Où est la tour Eiffel ? 🗼".into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }];
        let prompt = tokenizer
            .apply_chat_template(&messages, None, true)
            .unwrap();
        assert!(prompt.contains("Où est la tour Eiffel ? 🗼"));
        let tokens = tokenizer.encode(&prompt, false).unwrap();
        let detokenizer = tokenizer.detokenizer(false);
        let text: String = tokens.iter().map(|&t| detokenizer.push(t)).collect();
        assert_eq!(text, prompt);
        let vocabulary = tokenizer.vocabulary();
        assert!(tokens.iter().all(|&t| (t as usize) < vocabulary.ends.len()));
    }
}
