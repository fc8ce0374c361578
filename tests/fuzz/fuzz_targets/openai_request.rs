//! OpenAI request bodies (chat, Responses, legacy completions and embeddings) through the whole validation layer that runs
//! before a model is opened: parsing, ranges, `response_format` schemas, tools, messages. Any body must
//! end in a request or a 400 (OpenAI's status for every invalid request), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nnspin_guest::ApiError;
use nnspin_openai::embeddings::EmbeddingsRequest;
use nnspin_openai::errors::status;
use nnspin_openai::request::{ChatRequest, CompletionRequest};
use nnspin_openai::responses::ResponsesRequest;

fn refused_with_400<T>(result: Result<T, ApiError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            assert_eq!(status(error.kind), 400, "{error}");
            None
        }
    }
}

fuzz_target!(|body: &[u8]| {
    // Generation settings too; without a seed they would ask the (absent) host for randomness.
    if let Some(chat) = refused_with_400(ChatRequest::parse(body))
        && chat.sampling.seed.is_some()
    {
        chat.generation_params();
    }
    refused_with_400(ResponsesRequest::parse(body));
    refused_with_400(EmbeddingsRequest::parse(body));
    if let Some(completion) = refused_with_400(CompletionRequest::parse(body))
        && completion.sampling.seed.is_some()
    {
        completion.generation_params();
    }
});
