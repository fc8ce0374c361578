//! OpenAI request bodies (chat and legacy completions) through the whole validation layer that runs
//! before a model is opened: parsing, ranges, `response_format` schemas, tools, messages. Any body must
//! end in a request or a 400 (OpenAI's status for every invalid request), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nnspin_guest::ApiError;
use nnspin_openai::chat::Validated;
use nnspin_openai::completions::CompletionRequest;

fn refused_with_400<T>(result: Result<T, ApiError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            assert_eq!(error.status, 400, "{error}");
            None
        }
    }
}

fuzz_target!(|body: &[u8]| {
    if let Some(chat) = refused_with_400(Validated::parse(body)) {
        // Settings for every choice; without a seed they would ask the (absent) host for randomness.
        if chat.request.sampling.seed.is_some() {
            for choice in 0..chat.request.sampling.choices() {
                chat.request.generation_params(choice);
            }
        }
    }
    refused_with_400(CompletionRequest::parse(body));
});
