//! The process's life around the app: serving while it loads (503 until ready), counting requests in
//! flight, and ending on SIGTERM/SIGINT or after an idle period, letting in-flight requests finish.
//! Scale-to-zero platforms (Knative, Modal) rely on exactly these three.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::api_keys::ApiKeys;
use crate::app::App;
use crate::trusted_proxies::TrustedProxies;

/// What every request sees of the process: the app once it has loaded, and the activity counters.
#[derive(Default)]
pub struct Server {
    /// Checked before anything else, also while the app loads.
    pub api_keys: ApiKeys,
    /// Whose `X-Forwarded-For` names the client a request counts against.
    pub trusted_proxies: TrustedProxies,
    app: OnceLock<Arc<App>>,
    in_flight: AtomicUsize,
    last_activity: Mutex<Option<Instant>>,
}

impl Server {
    pub fn new(api_keys: ApiKeys, trusted_proxies: TrustedProxies) -> Self {
        Self {
            api_keys,
            trusted_proxies,
            ..Self::default()
        }
    }

    /// The app, or `None` while it is still loading.
    pub fn app(&self) -> Option<&Arc<App>> {
        self.app.get()
    }

    pub fn set_app(&self, app: Arc<App>) {
        let _ = self.app.set(app);
    }

    /// Marks a request as started; it counts as in flight until the guard is dropped, which the server
    /// ties to the end of the response body.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        *self.last_activity.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// How long nothing has been in flight, measured from `since` if no request ever came.
    fn idle_for(&self, since: Instant) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        let last = self
            .last_activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(since);
        last.elapsed()
    }
}

/// A request in flight.
pub struct InFlight(Arc<Server>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .last_activity
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why the server stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Signal,
    Idle,
}

/// Resolves on SIGTERM or SIGINT, or once nothing has been in flight for `idle_timeout`.
pub async fn stop_signal(server: Arc<Server>, idle_timeout: Option<Duration>) -> Stop {
    let started = Instant::now();
    let idle = async {
        match idle_timeout {
            Some(limit) => loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if server.idle_for(started) >= limit {
                    return;
                }
            },
            None => std::future::pending().await,
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Stop::Signal,
        _ = terminate => Stop::Signal,
        _ = idle => Stop::Idle,
    }
}
