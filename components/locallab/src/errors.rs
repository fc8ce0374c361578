//! How the LocalLab API answers each kind of failure, as its FastAPI server does: 422 for a body of the
//! wrong shape, 413 for input beyond the model's context.

use nnspin_guest::http;
use nnspin_guest::{ApiError, ErrorKind};
use wasip2::http::types::ResponseOutparam;

pub fn status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::MalformedJson | ErrorKind::InvalidValue => 400,
        ErrorKind::Forbidden => 403,
        ErrorKind::ModelNotFound | ErrorKind::NotFound => 404,
        ErrorKind::MethodNotAllowed { .. } => 405,
        ErrorKind::ContextLengthExceeded | ErrorKind::PayloadTooLarge => 413,
        ErrorKind::WrongShape => 422,
        ErrorKind::Internal => 500,
        ErrorKind::Unavailable | ErrorKind::Busy => 503,
    }
}

/// Sends `error` as this API's response.
pub fn send(out: ResponseOutparam, error: &ApiError) {
    http::send_error(out, status(error.kind), error);
}
