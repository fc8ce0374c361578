//! Optional API keys: when configured, every request must carry `Authorization: Bearer <key>`, except
//! health checks (which load balancers and scale-to-zero platforms send without credentials).
//!
//! Keys are kept only as SHA-256 digests and a presented key is compared against every digest in
//! constant time, so neither timing nor a memory dump gives a key away; keys are never logged.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Default, Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.digests.len())
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => {
                "You didn't provide an API key: send it as an `Authorization: Bearer <key>` header"
            }
            Self::Invalid => "Incorrect API key provided",
        }
    }
}

impl ApiKeys {
    /// Keys from `NNSPIN_API_KEYS`-style text: separated by commas, whitespace or newlines.
    pub fn parse(text: &str) -> Self {
        Self {
            digests: text
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|key| !key.is_empty())
                .map(|key| Sha256::digest(key.as_bytes()).into())
                .collect(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Checks a request's `Authorization` header; requests for `/health` (at any mount point) pass.
    pub fn check(&self, path: &str, headers: &hyper::HeaderMap) -> Result<(), Refusal> {
        if !self.is_enabled() || path.trim_end_matches('/').ends_with("/health") {
            return Ok(());
        }
        let key = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(Refusal::Missing)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Every digest is compared, so the time taken does not depend on which key matched.
        let matched = self
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |found, d| found | d.ct_eq(&digest));
        if bool::from(matched) {
            Ok(())
        } else {
            Err(Refusal::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        if let Some(auth) = auth {
            h.insert(hyper::header::AUTHORIZATION, auth.parse().unwrap());
        }
        h
    }

    #[test]
    fn keys_are_required_once_configured() {
        let keys = ApiKeys::parse("sk-one, sk-two\nsk-three");
        assert!(
            keys.check("/v1/models", &headers(Some("Bearer sk-two")))
                .is_ok()
        );
        assert!(
            keys.check("/v1/models", &headers(Some("Bearer sk-three")))
                .is_ok()
        );
        assert_eq!(
            keys.check("/v1/models", &headers(None)),
            Err(Refusal::Missing)
        );
        assert_eq!(
            keys.check("/v1/models", &headers(Some("sk-one"))),
            Err(Refusal::Missing)
        );
        assert_eq!(
            keys.check("/v1/models", &headers(Some("Bearer sk-on"))),
            Err(Refusal::Invalid)
        );
        assert!(keys.check("/locallab/health", &headers(None)).is_ok());
        assert!(!format!("{keys:?}").contains("sk-"));
    }

    #[test]
    fn no_keys_means_open() {
        let keys = ApiKeys::parse(" , ");
        assert!(!keys.is_enabled());
        assert!(keys.check("/v1/models", &headers(None)).is_ok());
    }
}
