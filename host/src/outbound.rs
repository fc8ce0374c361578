//! Outbound HTTP from components, allowed only to the hosts spin.toml lists in
//! `allowed_outbound_hosts` (Spin's `scheme://host:port` patterns, `*` matching any part).

use std::sync::Arc;

use hyper::{Request, Response};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// One `scheme://host:port` pattern; `None` is `*`.
#[derive(Debug, Clone, PartialEq)]
struct HostPattern {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
}

impl HostPattern {
    fn parse(pattern: &str) -> Result<Self, String> {
        let (scheme, rest) = pattern
            .split_once("://")
            .ok_or_else(|| format!("{pattern:?} is not of the form scheme://host[:port]"))?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        let any = |part: &str| (part != "*").then(|| part.to_ascii_lowercase());
        let port = match port {
            None if scheme == "https" => Some(443),
            None if scheme == "http" => Some(80),
            None | Some("*") => None,
            Some(port) => Some(
                port.parse()
                    .map_err(|_| format!("{pattern:?} has an invalid port"))?,
            ),
        };
        Ok(Self {
            scheme: any(scheme),
            host: any(host),
            port,
        })
    }

    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self
                .host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(host))
            && self.port.is_none_or(|p| p == port)
    }
}

/// The outbound-HTTP rules of one component; the per-request hooks of wasi-http.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allowed: Arc<[HostPattern]>,
}

impl OutboundPolicy {
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let allowed = patterns
            .iter()
            .map(|p| HostPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            allowed: allowed.into(),
        })
    }

    fn allows(&self, uri: &hyper::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https");
        let Some(host) = uri.host() else { return false };
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "http" { 80 } else { 443 });
        self.allowed
            .iter()
            .any(|pattern| pattern.matches(scheme, host, port))
    }
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> ResponseFuture {
        if !self.allows(request.uri()) {
            tracing::warn!(uri = %request.uri(), "outbound request denied (allowed_outbound_hosts)");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let default = wasmtime_wasi_http::default_hooks();
        default.send_request(request, options, fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(patterns: &[&str], uri: &str) -> bool {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        OutboundPolicy::new(&patterns)
            .unwrap()
            .allows(&uri.parse().unwrap())
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        assert!(!allows(&[], "http://127.0.0.1:3000/health"));
    }

    #[test]
    fn patterns_match_scheme_host_and_port() {
        assert!(allows(
            &["https://api.example.com"],
            "https://api.example.com/v1"
        ));
        assert!(!allows(
            &["https://api.example.com"],
            "http://api.example.com/v1"
        ));
        assert!(!allows(
            &["https://api.example.com"],
            "https://api.example.com:8443/v1"
        ));
        assert!(allows(&["http://localhost:*"], "http://localhost:3000/"));
        assert!(allows(&["*://*:*"], "http://10.0.0.1:9/"));
        assert!(OutboundPolicy::new(&["example.com".to_string()]).is_err());
    }
}
