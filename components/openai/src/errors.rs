//! How the OpenAI API answers each kind of failure: every invalid request is 400, as OpenAI's own API
//! answers, whatever was wrong with it.

use nnspin_guest::http;
use nnspin_guest::{ApiError, ErrorKind};
use wasip2::http::types::ResponseOutparam;

pub fn status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::MalformedJson
        | ErrorKind::WrongShape
        | ErrorKind::InvalidValue
        | ErrorKind::ContextLengthExceeded => 400,
        ErrorKind::Forbidden => 403,
        ErrorKind::ModelNotFound | ErrorKind::NotFound => 404,
        ErrorKind::MethodNotAllowed { .. } => 405,
        ErrorKind::PayloadTooLarge => 413,
        ErrorKind::Internal => 500,
        ErrorKind::Unavailable | ErrorKind::Busy => 503,
    }
}

/// Sends `error` as this API's response.
pub fn send(out: ResponseOutparam, error: &ApiError) {
    http::send_error(out, status(error.kind), error);
}
