//! Tokenizers and chat templates, built once per model and served to components through the
//! `nnspin:llm/text` interface.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use minijinja::{Environment, ErrorKind, context};
use tokenizers::Tokenizer;
use wasmtime::component::{HasData, Resource, ResourceTable};

use crate::bindings::text::{self, Message, ModelInfo, TextError};
use crate::models::{Model, ModelAccess};
use crate::vocabulary::Vocabulary;

/// A model's tokenizer and compiled chat template.
pub struct TextModel {
    tokenizer: Tokenizer,
    templates: Environment<'static>,
    bos_token: String,
    eos_token: String,
    vocabulary: OnceLock<Vocabulary>,
}

const CHAT_TEMPLATE: &str = "chat";

impl TextModel {
    /// Reads `tokenizer.json` and `tokenizer_config.json` (chat template, bos and eos tokens).
    pub fn load(model_dir: &Path) -> wasmtime::Result<Self> {
        let tokenizer_path = model_dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| wasmtime::format_err!("{}: {e}", tokenizer_path.display()))?;
        let config_path = model_dir.join("tokenizer_config.json");
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)
            .map_err(|e| wasmtime::format_err!("{}: {e}", config_path.display()))?;
        let token = |key: &str| match &config[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        let template = config["chat_template"].as_str().ok_or_else(|| {
            wasmtime::format_err!("{} has no chat_template", config_path.display())
        })?;
        let mut templates = Environment::new();
        templates.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        templates.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        templates
            .add_template_owned(CHAT_TEMPLATE, template.to_string())
            .map_err(|e| wasmtime::format_err!("{}: chat template: {e}", config_path.display()))?;
        Ok(Self {
            tokenizer,
            templates,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            vocabulary: OnceLock::new(),
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        self.tokenizer
            .encode_fast(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| TextError::InvalidInput(e.to_string()))
    }

    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        let messages: Vec<_> = messages
            .iter()
            .map(|m| context! { role => m.role, content => m.content })
            .collect();
        self.templates
            .get_template(CHAT_TEMPLATE)
            .and_then(|t| {
                t.render(context! {
                    messages, add_generation_prompt,
                    bos_token => self.bos_token, eos_token => self.eos_token,
                })
            })
            .map_err(|e| TextError::InvalidInput(format!("chat template: {e}")))
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
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

/// An opened tokenizer, as a guest holds it.
pub struct TokenizerHandle(Arc<Model>);

/// Incremental detokenization: decodes a short window of recent tokens and emits only the text that is
/// complete, so multi-byte characters split across tokens never reach the client half-written.
pub struct Detokenizer {
    model: Arc<Model>,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the window whose text was already emitted up to `read`.
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    fn push(&mut self, token: u32) -> String {
        self.ids.push(token);
        let text = &self.model.text;
        let before = text.decode(&self.ids[self.prefix..self.read], self.skip_special_tokens);
        let after = text.decode(&self.ids[self.prefix..], self.skip_special_tokens);
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            let delta = after.get(before.len()..).unwrap_or_default().to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            delta
        } else {
            String::new()
        }
    }
}

/// What the text host functions see of an instance's state.
pub struct TextView<'a> {
    pub table: &'a mut ResourceTable,
    pub models: &'a ModelAccess,
}

/// Marker tying [`TextView`] to the generated `add_to_linker` functions.
pub struct Text;

impl HasData for Text {
    type Data<'a> = TextView<'a>;
}

impl text::Host for TextView<'_> {
    async fn models(&mut self) -> wasmtime::Result<Vec<ModelInfo>> {
        Ok(self.models.resident().map(|m| m.info.clone()).collect())
    }
}

impl text::HostTokenizer for TextView<'_> {
    async fn open(
        &mut self,
        model: String,
    ) -> wasmtime::Result<Result<Resource<TokenizerHandle>, TextError>> {
        match self.models.get(&model) {
            Some(m) => Ok(Ok(self.table.push(TokenizerHandle(m))?)),
            None => Ok(Err(TextError::NotFound(format!(
                "model {model:?} is not available to this component"
            )))),
        }
    }

    async fn info(&mut self, tokenizer: Resource<TokenizerHandle>) -> wasmtime::Result<ModelInfo> {
        Ok(self.table.get(&tokenizer)?.0.info.clone())
    }

    async fn encode(
        &mut self,
        tokenizer: Resource<TokenizerHandle>,
        text: String,
    ) -> wasmtime::Result<Result<Vec<u32>, TextError>> {
        Ok(self.table.get(&tokenizer)?.0.text.encode(&text))
    }

    async fn apply_chat_template(
        &mut self,
        tokenizer: Resource<TokenizerHandle>,
        messages: Vec<Message>,
        add_generation_prompt: bool,
    ) -> wasmtime::Result<Result<String, TextError>> {
        Ok(self
            .table
            .get(&tokenizer)?
            .0
            .text
            .apply_chat_template(&messages, add_generation_prompt))
    }

    async fn vocabulary(
        &mut self,
        tokenizer: Resource<TokenizerHandle>,
    ) -> wasmtime::Result<text::Vocabulary> {
        let vocabulary = self.table.get(&tokenizer)?.0.text.vocabulary();
        Ok(text::Vocabulary {
            bytes: vocabulary.bytes.clone(),
            ends: vocabulary.ends.clone(),
        })
    }

    async fn detokenizer(
        &mut self,
        tokenizer: Resource<TokenizerHandle>,
        skip_special_tokens: bool,
    ) -> wasmtime::Result<Resource<Detokenizer>> {
        let model = self.table.get(&tokenizer)?.0.clone();
        let detokenizer = Detokenizer {
            model,
            skip_special_tokens,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        };
        Ok(self.table.push(detokenizer)?)
    }

    async fn drop(&mut self, tokenizer: Resource<TokenizerHandle>) -> wasmtime::Result<()> {
        self.table.delete(tokenizer)?;
        Ok(())
    }
}

impl text::HostDetokenizer for TextView<'_> {
    async fn push(
        &mut self,
        detokenizer: Resource<Detokenizer>,
        token: u32,
    ) -> wasmtime::Result<String> {
        Ok(self.table.get_mut(&detokenizer)?.push(token))
    }

    async fn drop(&mut self, detokenizer: Resource<Detokenizer>) -> wasmtime::Result<()> {
        self.table.delete(detokenizer)?;
        Ok(())
    }
}
