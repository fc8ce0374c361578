//! A model a component may use, opened for one request: its graph over `wasi:nn` and its tokenizer and
//! chat template from [`crate::text`].

use std::cell::OnceCell;

use crate::ApiError;
use crate::bindings::wasi::nn::errors::{Error as NnError, ErrorCode};
use crate::bindings::wasi::nn::graph::{self, Graph};
use crate::bindings::wasi::nn::tensor::{Tensor, TensorType};
use crate::text::{self, Message, ModelInfo, ModelTask, TextError, Tokenizer, ToolCallSyntax};
use crate::vocabulary::Vocabulary;

pub struct Model {
    pub info: ModelInfo,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) graph: Graph,
    vocabulary: OnceCell<Vocabulary>,
}

/// What a model serves, in vLLM's words (`--task generate|embed`), and its vectors' size if it embeds.
pub fn task(info: &ModelInfo) -> (&'static str, Option<u32>) {
    match info.task {
        ModelTask::Generation => ("generate", None),
        ModelTask::Embedding(dimensions) => ("embed", Some(dimensions)),
    }
}

/// The models this component may use, the first being the default.
pub fn models() -> Vec<ModelInfo> {
    text::models()
}

impl Model {
    pub fn open(name: &str) -> Result<Self, ApiError> {
        let tokenizer = Tokenizer::open(name).map_err(|e| match e {
            TextError::NotFound(_) => ApiError::model_not_found(name),
            TextError::InvalidInput(message) => ApiError::internal(message),
        })?;
        let graph = graph::load_by_name(name).map_err(|e| nn_error(&e))?;
        Ok(Self {
            info: tokenizer.info(),
            tokenizer,
            graph,
            vocabulary: OnceCell::new(),
        })
    }

    /// Opens a model that generates text (for chat, completions and responses); an embedding model is
    /// a 400 naming it.
    pub fn open_generator(name: &str) -> Result<Self, ApiError> {
        let model = Self::open(name)?;
        match model.info.task {
            ModelTask::Generation => Ok(model),
            ModelTask::Embedding(_) => Err(ApiError::invalid(format!(
                "model {name:?} is an embedding model: it serves /v1/embeddings, not text generation"
            ))
            .with_param("model")),
        }
    }

    /// Opens an embedding model and the dimensions of its vectors; a generation model is a 400 naming
    /// it.
    pub fn open_encoder(name: &str) -> Result<(Self, u32), ApiError> {
        let model = Self::open(name)?;
        match model.info.task {
            ModelTask::Embedding(dimensions) => Ok((model, dimensions)),
            ModelTask::Generation => Err(ApiError::invalid(format!(
                "model {name:?} generates text and does not serve embeddings: use an embedding model \
                 of GET /v1/models"
            ))
            .with_param("model")),
        }
    }

    /// Each token's bytes, fetched from the host on first use.
    pub fn vocabulary(&self) -> &Vocabulary {
        self.vocabulary
            .get_or_init(|| self.tokenizer.vocabulary().into())
    }

    /// The syntax the model's chat template writes tool calls in, if it describes tools itself.
    pub fn tool_call_syntax(&self) -> Option<ToolCallSyntax> {
        self.tokenizer.tool_call_syntax()
    }

    /// The prompt of a chat: a last assistant message is a prefill the model continues, else the
    /// template opens the assistant's turn. `tools` (a JSON array) is the template's `tools`.
    pub fn conversation_prompt(
        &self,
        messages: &[Message],
        tools: Option<&str>,
    ) -> Result<Vec<u32>, ApiError> {
        match messages.last() {
            Some(last) if last.role == "assistant" => self.continuation_prompt(messages, tools),
            _ => self.chat_prompt(messages, tools),
        }
    }

    /// Renders the chat template so that the model continues the last message, an assistant turn the
    /// client started (a prefill), instead of opening a new turn.
    pub fn continuation_prompt(
        &self,
        messages: &[Message],
        tools: Option<&str>,
    ) -> Result<Vec<u32>, ApiError> {
        let prompt = self
            .tokenizer
            .apply_chat_template(messages, tools, false)
            .map_err(text_error)?;
        let last = messages.last().map_or("", |m| m.content.as_str());
        let end = match prompt.rfind(last) {
            Some(at) if !last.is_empty() => at + last.len(),
            _ => prompt.len(),
        };
        self.encode(&prompt[..end])
    }

    /// Renders the chat template and tokenizes the prompt.
    pub fn chat_prompt(
        &self,
        messages: &[Message],
        tools: Option<&str>,
    ) -> Result<Vec<u32>, ApiError> {
        let prompt = self
            .tokenizer
            .apply_chat_template(messages, tools, true)
            .map_err(text_error)?;
        self.encode(&prompt)
    }

    /// Token ids of `text` as written (a prompt's template frames it, not the tokenizer).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.tokenizer.encode(text, false).map_err(text_error)
    }

    /// Token ids of `text` framed as the tokenizer frames its model's inputs (BERT's `[CLS] … [SEP]`,
    /// Gemma's leading BOS).
    pub fn encode_framed(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.tokenizer.encode(text, true).map_err(text_error)
    }

    /// The text of `tokens`, special tokens included; ids beyond the vocabulary are refused.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, ApiError> {
        if let Some(&token) = tokens.iter().find(|&&t| t >= self.info.vocab_size) {
            return Err(ApiError::invalid(format!(
                "token {token} is beyond the vocabulary ({} tokens)",
                self.info.vocab_size
            ))
            .with_param("tokens"));
        }
        let detokenizer = self.tokenizer.detokenizer(false);
        Ok(tokens.iter().map(|&t| detokenizer.push(t)).collect())
    }
}

fn text_error(e: TextError) -> ApiError {
    match e {
        TextError::NotFound(message) => ApiError::not_found(message),
        TextError::InvalidInput(message) => ApiError::invalid(message).with_param("messages"),
    }
}

/// A pass's inputs as the wasi-nn tensors `compute` takes.
pub(crate) fn nn_inputs(
    inputs: impl IntoIterator<Item = nnspin_core::inputs::Input>,
) -> Vec<(String, Tensor)> {
    inputs
        .into_iter()
        .map(|input| {
            let tensor = Tensor::new(&input.dims, TensorType::I64, &input.data);
            (input.name.to_string(), tensor)
        })
        .collect()
}

/// The API error for a wasi-nn failure.
pub fn nn_error(e: &NnError) -> ApiError {
    match e.code() {
        ErrorCode::NotFound => ApiError::not_found(e.data()),
        ErrorCode::InvalidArgument => ApiError::invalid(e.data()),
        // The host reports a full queue as a timeout (wasi-nn has no "busy").
        ErrorCode::Timeout => ApiError::busy(e.data()),
        _ => ApiError::internal(format!("inference failed: {}", e.data())),
    }
}
