//! The HTTP server: routes each request to its component and runs it in a fresh instance.

mod client_body;
mod error;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::Instrument;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::app::{App, ComponentRuntime};
use crate::instance::{CpuBudgetExceeded, new_store};
use crate::lifecycle::{Server, Stop};
use crate::trusted_proxies::TrustedProxies;
use client_body::{BodyTimedOut, ClientBody};
use error::HostError;

/// Serves until `stop` resolves, then stops accepting and gives in-flight requests up to `grace` to
/// finish. A client that takes longer than `client_timeout` to send its headers, or pauses that long
/// while sending its body, is cut off.
pub async fn serve(
    server: Arc<Server>,
    listener: TcpListener,
    stop: impl Future<Output = Stop>,
    grace: Duration,
    client_timeout: Duration,
) -> wasmtime::Result<Stop> {
    let connections = GracefulShutdown::new();
    tokio::pin!(stop);
    let reason = loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                // Out of file descriptors, say: keep serving the connections already open.
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            reason = &mut stop => break reason,
        };
        // A body streams in many small writes (every SSE event, every 4 KiB a component writes): with
        // Nagle's algorithm each write after the first waits for the client's delayed ACK, about 40 ms.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("setting TCP_NODELAY failed: {e}");
        }
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let server = server.clone();
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            let (parts, body) = req.into_parts();
            let (body, timed_out, ended) = ClientBody::new(body, client_timeout);
            let mut req = Request::from_parts(parts, body);
            req.extensions_mut().insert(timed_out);
            async move {
                let mut response = handle(server, peer, local, req).await;
                if !ended.get() {
                    response
                        .headers_mut()
                        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = http1::Builder::new()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(client_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    };
    tracing::info!(?reason, in_flight = server.in_flight(), "shutting down");
    drop(listener);
    if tokio::time::timeout(grace, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = server.in_flight(),
            "grace period over; dropping remaining requests"
        );
    }
    Ok(reason)
}

/// A request body as components read it.
type RequestBody = ClientBody<hyper::body::Incoming>;

async fn handle(
    server: Arc<Server>,
    peer: SocketAddr,
    local: SocketAddr,
    mut req: Request<RequestBody>,
) -> Response<HyperOutgoingBody> {
    let in_flight = server.begin_request();
    let started = Instant::now();
    let id = request_id(req.headers());
    if let Ok(value) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, value);
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let span = tracing::info_span!("request", %id);
    let refused = match complete_host(&mut req, local) {
        Ok(()) => server
            .api_keys
            .check(&path, req.headers())
            .map_err(HostError::Unauthorized)
            .err(),
        Err(missing) => Some(missing),
    };
    let (mut response, matched) = match (refused, server.app()) {
        (Some(refusal), _) => (refusal.response(), "-".into()),
        (None, Some(app)) if method == hyper::Method::GET && path == "/metrics" => {
            let text = app.metrics.render(server.in_flight());
            let response = text_response(StatusCode::OK, "text/plain; version=0.0.4", text);
            (response, "-".to_string())
        }
        (None, Some(app)) => {
            let (response, component) = route(app, peer, &server.trusted_proxies, req)
                .instrument(span.clone())
                .await;
            app.metrics
                .request_finished(&component, response.status().as_u16());
            (response, component)
        }
        (None, None) => (HostError::Starting.response(), "-".into()),
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    // An access log line, without bodies: prompts are not logged.
    tracing::info!(parent: &span, %method, %path, route = %matched, status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64, "request");
    // The request stays in flight until its body has been sent (or dropped).
    response.map(|body| {
        body.map_frame(move |frame| {
            let _ = &in_flight;
            frame
        })
        .boxed_unsync()
    })
}

const REQUEST_ID: &str = "x-request-id";

/// The client's `x-request-id` when it is a sane token, else a new process-unique id.
fn request_id(headers: &hyper::HeaderMap) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .filter(|v| {
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "{:x}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
        })
}

/// Routes a request to its component; returns the response and the route it matched (`-` for none).
/// A rate limit counts the request against its client: the peer, or the client a trusted proxy names.
async fn route(
    app: &App,
    peer: SocketAddr,
    trusted_proxies: &TrustedProxies,
    mut req: Request<RequestBody>,
) -> (Response<HyperOutgoingBody>, String) {
    let path = req.uri().path().to_string();
    let Some((component, path_info, route)) = app.router.route(&path).and_then(|m| {
        Some((
            app.component(m.component)?,
            m.path_info,
            m.route.to_string(),
        ))
    }) else {
        return (HostError::NoRoute { path }.response(), "-".to_string());
    };
    set_spin_headers(req.headers_mut(), &path_info, peer);
    if let Some(limiter) = &component.rate_limiter
        && let client = trusted_proxies.client(peer.ip(), req.headers())
        && let Err(wait) = limiter.check(client, std::time::Instant::now())
    {
        let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
        return (HostError::RateLimited { retry_after }.response(), route);
    }
    let response = match run_component(app, component, req).await {
        Ok(response) => response,
        Err(e) => match e.downcast::<CpuBudgetExceeded>() {
            Ok(exceeded) => {
                tracing::warn!(component = %component.id, %path, "{exceeded}");
                HostError::CpuBudgetExceeded(exceeded).response()
            }
            Err(e) => {
                tracing::error!(component = %component.id, %path, "request failed: {e:?}");
                HostError::HandlerFailed.response()
            }
        },
    };
    (response, route)
}

async fn run_component(
    app: &App,
    component: &ComponentRuntime,
    req: Request<RequestBody>,
) -> wasmtime::Result<Response<HyperOutgoingBody>> {
    let timed_out = req.extensions().get::<BodyTimedOut>().cloned();
    let mut store = new_store(&app.engine, &component.sandbox)?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let pre = component.pre.clone();
    let metrics = app.metrics.clone();

    // The handler keeps running after it has sent the response head, streaming the body.
    let task = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let proxy = pre.instantiate_async(&mut store).await?;
        metrics.instantiated(started.elapsed());
        tracing::debug!(
            instantiate_us = started.elapsed().as_micros() as u64,
            "instance ready"
        );
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
    });

    // If the client goes away before the response starts, hyper drops this future: the guard then
    // stops the handler, freeing its instance and execution context. Once the response has started,
    // a disconnect surfaces to the handler as a failed write instead.
    let mut cancel = AbortOnDrop(Some(task.abort_handle()));
    let body_timed_out = async {
        match &timed_out {
            Some(BodyTimedOut(notify)) => notify.notified().await,
            None => std::future::pending().await,
        }
    };
    let sent = tokio::select! {
        biased;
        // The client stopped sending its body: the guard stops the handler (which may have answered
        // the read error already; the timeout is the truth).
        () = body_timed_out => return Ok(HostError::BodyTimedOut.response()),
        sent = receiver => sent,
    };
    match sent {
        Ok(Ok(response)) => {
            cancel.0 = None;
            Ok(response)
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => {
            cancel.0 = None;
            let failure = match task.await {
                Ok(Ok(())) => {
                    wasmtime::format_err!("the component returned without sending a response")
                }
                Ok(Err(e)) => e,
                Err(e) => e.into(),
            };
            Err(failure)
        }
    }
}

/// Aborts a task when dropped, unless disarmed by taking the handle out.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Gives a request without a Host header (an HTTP/1.0 health check, HAProxy's by default) the address it
/// came in on, since components see requests as absolute URLs; an HTTP/1.1 request must have one.
fn complete_host(req: &mut Request<RequestBody>, local: SocketAddr) -> Result<(), HostError> {
    if req.headers().contains_key(hyper::header::HOST) || req.uri().authority().is_some() {
        return Ok(());
    }
    if req.version() >= hyper::Version::HTTP_11 {
        return Err(HostError::MissingHost);
    }
    let host =
        HeaderValue::from_str(&local.to_string()).expect("a socket address is a valid header");
    req.headers_mut().insert(hyper::header::HOST, host);
    Ok(())
}

/// Spin's request headers: where the request came from and the path below the component's route.
/// Clients cannot supply them: any `spin-*` header they send is removed first.
fn set_spin_headers(headers: &mut hyper::HeaderMap, path_info: &str, peer: SocketAddr) {
    let spoofed: Vec<_> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("spin-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    if let Ok(value) = hyper::header::HeaderValue::from_str(path_info) {
        headers.insert("spin-path-info", value);
    }
    if let Ok(value) = hyper::header::HeaderValue::from_str(&peer.to_string()) {
        headers.insert("spin-client-addr", value);
    }
}

fn text_response(
    status: StatusCode,
    content_type: &str,
    text: String,
) -> Response<HyperOutgoingBody> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(
            Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("static response parts are valid")
}
