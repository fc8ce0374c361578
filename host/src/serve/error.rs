//! The responses the host writes itself, before or instead of a component: one error type, mapped once
//! to a status, its headers and the JSON body the components write too (OpenAI's `error` object and a
//! `detail` string, so OpenAI SDKs and FastAPI-style clients both find the message).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::api_keys::Refusal;
use crate::instance::CpuBudgetExceeded;

#[derive(Debug, thiserror::Error)]
pub(super) enum HostError {
    #[error("{}", .0.message())]
    Unauthorized(Refusal),
    #[error("no route for {path}")]
    NoRoute { path: String },
    #[error("the request body stopped arriving before it was complete")]
    BodyTimedOut,
    #[error("an HTTP/1.1 request needs a Host header")]
    MissingHost,
    #[error("rate limit exceeded: retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("the server is starting: models and components are still loading")]
    Starting,
    #[error(transparent)]
    CpuBudgetExceeded(CpuBudgetExceeded),
    /// The handler trapped, or returned without a response; the log has the cause, the client does not.
    #[error("the request handler failed")]
    HandlerFailed,
}

impl HostError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::BodyTimedOut => StatusCode::REQUEST_TIMEOUT,
            Self::MissingHost => StatusCode::BAD_REQUEST,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Starting => StatusCode::SERVICE_UNAVAILABLE,
            Self::CpuBudgetExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::HandlerFailed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) | Self::BodyTimedOut | Self::MissingHost => {
                "invalid_request_error"
            }
            Self::NoRoute { .. } => "not_found_error",
            Self::RateLimited { .. } => "rate_limit_error",
            Self::CpuBudgetExceeded(_) => "timeout_error",
            Self::Starting | Self::HandlerFailed => "server_error",
        }
    }

    pub(super) fn response(&self) -> Response<HyperOutgoingBody> {
        let message = self.to_string();
        let body = serde_json::json!({
            "error": { "message": message, "type": self.kind(), "param": null, "code": null },
            "detail": message,
        });
        let mut response = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json")
            .body(
                Full::new(Bytes::from(body.to_string()))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("static response parts are valid");
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::RateLimited { retry_after } => {
                headers.insert(header::RETRY_AFTER, (*retry_after).into());
            }
            Self::Starting => {
                headers.insert(header::RETRY_AFTER, 1.into());
            }
            _ => {}
        }
        response
    }
}
