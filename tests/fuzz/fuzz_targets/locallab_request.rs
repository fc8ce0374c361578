//! LocalLab request bodies through its validation layer: each endpoint's request type (settings, and for
//! `/chat` its messages). Any body must end in a request, a 400 (bad value) or a 422 (wrong shape).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nnspin_guest::ApiError;
use nnspin_locallab::errors::status;
use nnspin_locallab::request::{
    BatchRequest, ChatRequest, GenerateRequest, ModelRequest, Settings,
};

fn refused_as_documented<T>(result: Result<T, ApiError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            assert!(matches!(status(error.kind), 400 | 422), "{error}");
            None
        }
    }
}

/// Valid settings must turn into generation parameters (the time limit conversion included).
fn check(settings: &Settings) {
    if settings.seed.is_some() {
        settings.generation_params();
    }
}

fuzz_target!(|body: &[u8]| {
    if let Some(request) = refused_as_documented(GenerateRequest::parse(body)) {
        check(&request.settings);
    }
    if let Some(request) = refused_as_documented(ChatRequest::parse(body)) {
        check(&request.settings);
    }
    if let Some(request) = refused_as_documented(BatchRequest::parse(body)) {
        check(&request.settings);
    }
    refused_as_documented(ModelRequest::parse(body));
});
