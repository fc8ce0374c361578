//! The one error type of the guests. A failure says what went wrong ([`ErrorKind`]); each API maps
//! kinds to HTTP statuses once, where it sends the error (OpenAI answers 400 where LocalLab says 422 or
//! 413), so nothing chooses a status when the error is made.
//!
//! The body carries both OpenAI's `error` object and a FastAPI-style `detail` string, so OpenAI SDKs and
//! clients of the seed APIs (which read `detail`) both find the message.

use serde_json::json;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not JSON.
    MalformedJson,
    /// JSON of the wrong shape: not an object, a missing field, a string for a number.
    WrongShape,
    /// A value out of range, or otherwise not acceptable as sent.
    InvalidValue,
    /// Prompt and completion do not fit the model's context.
    ContextLengthExceeded,
    /// The body is larger than a handler reads.
    PayloadTooLarge,
    /// The model is not served.
    ModelNotFound,
    /// No such path, or nothing of that name.
    NotFound,
    /// The path takes other methods: these.
    MethodNotAllowed { allow: &'static str },
    /// Understood but not permitted.
    Forbidden,
    /// Nothing can serve the request now (no model is loaded).
    Unavailable,
    /// The model's queue is full; the request was not started, and a retry may succeed.
    Busy,
    /// Something failed inside the server.
    Internal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
        }
    }

    /// A value the request may not have.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidValue, message)
    }

    pub fn wrong_shape(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::WrongShape, message)
    }

    pub fn context_length_exceeded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ContextLengthExceeded, message).with_param("messages")
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            ErrorKind::ModelNotFound,
            format!("The model `{model}` does not exist"),
        )
        .with_param("model")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// A known path asked with a method it does not take; `allow` lists those it does.
    pub fn method_not_allowed(method: &str, path: &str, allow: &'static str) -> Self {
        Self::new(
            ErrorKind::MethodNotAllowed { allow },
            format!("{method} is not allowed on {path} (use {allow})"),
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds {limit} bytes"),
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Busy, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// OpenAI's `error.type`.
    fn type_name(&self) -> &'static str {
        match self.kind {
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::Unavailable | ErrorKind::Busy | ErrorKind::Internal => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// OpenAI's machine-readable `error.code`.
    fn code(&self) -> Option<&'static str> {
        match self.kind {
            ErrorKind::ModelNotFound => Some("model_not_found"),
            ErrorKind::ContextLengthExceeded => Some("context_length_exceeded"),
            _ => None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message, "type": self.type_name(), "param": self.param, "code": self.code(),
            },
            "detail": self.message,
        })
    }

    /// Headers the kind calls for: `Retry-After` when a retry may succeed, `Allow` with a 405
    /// (RFC 9110).
    pub fn headers(&self) -> Vec<(&'static str, &'static str)> {
        match self.kind {
            ErrorKind::Busy => vec![("retry-after", "1")],
            ErrorKind::MethodNotAllowed { allow } => vec![("allow", allow)],
            _ => Vec::new(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.message, self.kind)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_error_and_detail() {
        let body = ApiError::model_not_found("gpt-9").body();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["detail"], body["error"]["message"]);
    }

    #[test]
    fn a_full_queue_says_when_to_retry() {
        assert_eq!(ApiError::busy("full").headers(), [("retry-after", "1")]);
        let e = ApiError::method_not_allowed("PUT", "/health", "GET");
        assert_eq!(e.headers(), [("allow", "GET")]);
    }
}
