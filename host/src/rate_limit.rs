//! Per-client rate limiting in the host, in front of instantiation: handlers are cold-started per
//! request and cannot remember clients, and a refused request should not cost an instance.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// A token bucket: `burst` requests at once, refilled at `requests_per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_minute: u32,
    pub burst: u32,
}

/// Buckets kept before full ones are forgotten (a full bucket is the same as no bucket).
const MAX_TRACKED_CLIENTS: usize = 4096;

pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: Mutex::default(),
        }
    }

    fn per_second(&self) -> f64 {
        f64::from(self.limit.requests_per_minute) / 60.0
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * self.per_second()).min(f64::from(self.limit.burst));
        bucket.updated = now;
    }

    /// Takes one request from `client`'s bucket, or says how long until one is available.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED_CLIENTS {
            let burst = f64::from(self.limit.burst);
            buckets.retain(|_, bucket| {
                self.refill(bucket, now);
                bucket.tokens < burst
            });
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: f64::from(self.limit.burst),
            updated: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let per_second = self.per_second();
        if per_second <= 0.0 {
            return Err(Duration::from_secs(60));
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        requests_per_minute: 60,
        burst: 10,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let limiter = RateLimiter::new(LIMIT);
        let now = Instant::now();
        for _ in 0..10 {
            limiter.check(ip(1), now).unwrap();
        }
        let wait = limiter.check(ip(1), now).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn clients_have_their_own_buckets() {
        let limiter = RateLimiter::new(LIMIT);
        let now = Instant::now();
        for _ in 0..10 {
            limiter.check(ip(1), now).unwrap();
        }
        assert!(limiter.check(ip(1), now).is_err());
        assert!(limiter.check(ip(2), now).is_ok());
    }

    #[test]
    fn tokens_come_back_at_the_configured_rate() {
        let limiter = RateLimiter::new(LIMIT);
        let now = Instant::now();
        for _ in 0..10 {
            limiter.check(ip(1), now).unwrap();
        }
        assert!(
            limiter
                .check(ip(1), now + Duration::from_millis(500))
                .is_err()
        );
        assert!(
            limiter
                .check(ip(1), now + Duration::from_millis(1500))
                .is_ok()
        );
        assert!(
            limiter
                .check(ip(1), now + Duration::from_millis(1600))
                .is_err()
        );
    }

    #[test]
    fn forgotten_clients_do_not_grow_without_bound() {
        let limiter = RateLimiter::new(LIMIT);
        let now = Instant::now();
        for i in 0..(MAX_TRACKED_CLIENTS as u32 + 10) {
            limiter.check(IpAddr::from(i.to_be_bytes()), now).unwrap();
        }
        let later = now + Duration::from_secs(60);
        limiter.check(ip(1), later).unwrap();
        assert!(limiter.buckets.lock().unwrap().len() < 100);
    }
}
