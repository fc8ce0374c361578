//! LocalLab request bodies through its validation layer: each endpoint's body type, its settings and,
//! for `/chat`, its messages. Any body must end in a request, a 400 (bad value) or a 422 (wrong shape).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nnspin_guest::{ApiError, chat};
use nnspin_locallab::request::{
    BatchRequest, ChatRequest, GenerateRequest, ModelRequest, Settings, parse,
};

fn refused_as_documented<T>(result: Result<T, ApiError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            assert!(matches!(error.status, 400 | 422), "{error}");
            None
        }
    }
}

/// Valid settings must turn into generation parameters (the time limit conversion included).
fn check(settings: &Settings) {
    if refused_as_documented(settings.validate()).is_some() && settings.seed.is_some() {
        settings.generation_params();
    }
}

fuzz_target!(|body: &[u8]| {
    if let Some(request) = refused_as_documented(parse::<GenerateRequest>(body)) {
        check(&request.settings);
    }
    if let Some(request) = refused_as_documented(parse::<ChatRequest>(body)) {
        check(&request.settings);
        refused_as_documented(chat::template_messages(&request.messages));
    }
    if let Some(request) = refused_as_documented(parse::<BatchRequest>(body)) {
        check(&request.settings);
    }
    refused_as_documented(parse::<ModelRequest>(body));
});
