//! `nnspin:llm/text`: the tokenizers and chat templates of the models a component may use.

use wasmtime::component::Resource;

use super::bindings::text::{self, Message, ModelInfo, ModelTask, TextError, ToolCallSyntax};
use super::resources::TokenizerHandle;
use super::view::LlmView;
use crate::registry::model::{Model, Task};
use nnspin_text::detokenizer::Detokenizer;

/// What a component is told about a model.
pub(crate) fn model_info(model: &Model) -> ModelInfo {
    let facts = &model.facts;
    ModelInfo {
        id: facts.id.clone(),
        task: match facts.task {
            Task::Generation => ModelTask::Generation,
            Task::Embedding { dimensions } => ModelTask::Embedding(dimensions),
        },
        context_length: facts.context_length,
        vocab_size: facts.vocab_size,
        eos_token_ids: facts.eos_token_ids.clone(),
        created: facts.created,
        owned_by: facts.owned_by.clone(),
        backend: model.backend.as_str().to_string(),
        device: model.device.as_str().to_string(),
        precision: model.precision.as_str().to_string(),
        sequences_per_context: model.sequences_per_context(),
    }
}

fn text_message(message: Message) -> nnspin_text::Message {
    nnspin_text::Message {
        role: message.role,
        content: message.content,
        tool_calls: message
            .tool_calls
            .into_iter()
            .map(|call| nnspin_text::ToolCall {
                id: call.id,
                name: call.name,
                arguments: call.arguments,
            })
            .collect(),
        tool_call_id: message.tool_call_id,
    }
}

fn invalid(error: nnspin_text::TextError) -> TextError {
    TextError::InvalidInput(error.to_string())
}

impl text::Host for LlmView<'_> {
    async fn models(&mut self) -> wasmtime::Result<Vec<ModelInfo>> {
        Ok(self.grants.resident().map(|m| model_info(&m)).collect())
    }
}

impl text::HostTokenizer for LlmView<'_> {
    async fn open(
        &mut self,
        model: String,
    ) -> wasmtime::Result<Result<Resource<TokenizerHandle>, TextError>> {
        match self.grants.model(&model) {
            Some(m) => Ok(Ok(self.table.push(TokenizerHandle(m))?)),
            None => Ok(Err(TextError::NotFound(format!(
                "model {model:?} is not available to this component"
            )))),
        }
    }

    async fn info(&mut self, tokenizer: Resource<TokenizerHandle>) -> wasmtime::Result<ModelInfo> {
        Ok(model_info(&self.table.get(&tokenizer)?.0))
    }

    async fn encode(
        &mut self,
        tokenizer: Resource<TokenizerHandle>,
        text: String,
        add_special_tokens: bool,
    ) -> wasmtime::Result<Result<Vec<u32>, TextError>> {
        Ok(self
            .table
            .get(&tokenizer)?
            .0
            .text
            .encode(&text, add_special_tokens)
            .map_err(invalid))
    }

    async fn apply_chat_template(
        &mut self,
        tokenizer: Resource<TokenizerHandle>,
        messages: Vec<Message>,
        tools: Option<String>,
        add_generation_prompt: bool,
    ) -> wasmtime::Result<Result<String, TextError>> {
        let messages: Vec<nnspin_text::Message> = messages.into_iter().map(text_message).collect();
        Ok(self
            .table
            .get(&tokenizer)?
            .0
            .text
            .apply_chat_template(&messages, tools.as_deref(), add_generation_prompt)
            .map_err(invalid))
    }

    async fn tool_call_syntax(
        &mut self,
        tokenizer: Resource<TokenizerHandle>,
    ) -> wasmtime::Result<Option<ToolCallSyntax>> {
        let text = &self.table.get(&tokenizer)?.0.text;
        Ok(text.tool_call_syntax().map(|syntax| ToolCallSyntax {
            open: syntax.open.clone(),
            close: syntax.close.clone(),
            separator: syntax.separator.clone(),
            arguments_key: syntax.arguments_key.clone(),
        }))
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
        let text = self.table.get(&tokenizer)?.0.text.clone();
        Ok(self
            .table
            .push(Detokenizer::new(text, skip_special_tokens))?)
    }

    async fn drop(&mut self, tokenizer: Resource<TokenizerHandle>) -> wasmtime::Result<()> {
        self.table.delete(tokenizer)?;
        Ok(())
    }
}

impl text::HostDetokenizer for LlmView<'_> {
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
