//! A model's tokenizer, chat template and facts, as components use them: from the host through
//! `nnspin:llm/text`, or, in the portable build (feature `portable`), from one model's files compiled into
//! the component ([`compiled_in`]). Both offer the same names and signatures, so nothing else in a
//! component knows which it runs with.

#[cfg(not(feature = "portable"))]
pub use crate::bindings::nnspin::llm::text::{
    Detokenizer, Message, ModelInfo, ModelTask, TextError, Tokenizer, ToolCall, ToolCallSyntax,
    Vocabulary, models,
};

#[cfg(feature = "portable")]
pub mod compiled_in;
#[cfg(feature = "portable")]
pub use compiled_in::{
    Detokenizer, Message, ModelInfo, ModelTask, TextError, Tokenizer, ToolCall, ToolCallSyntax,
    Vocabulary, models,
};
