//! Process metrics in the Prometheus text format, served by the host at `GET /metrics`.
//!
//! Everything is recorded where it happens (serving, instantiation, model loading, inference) into
//! one app-wide [`Metrics`]; the exposition is rendered on demand.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::prefix_cache::PrefixCacheStats;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`].
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (count, bound) in self.buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Per-model inference figures.
#[derive(Debug, Clone, Default)]
struct ModelFigures {
    load_seconds: f64,
    active_contexts: i64,
    queued: i64,
    rejected: u64,
    time_to_first_token: Histogram,
    generated_tokens: u64,
    decode_seconds: f64,
    /// Kept by the model's scheduler, read when rendering.
    prefix_cache: Option<Arc<PrefixCacheStats>>,
}

#[derive(Debug, Default)]
struct Figures {
    /// (route, status) → count.
    requests: BTreeMap<(String, u16), u64>,
    instantiation: Histogram,
    models: BTreeMap<String, ModelFigures>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    figures: Mutex<Figures>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Figures) -> R) -> R {
        f(&mut self.figures.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn model<R>(&self, model: &str, f: impl FnOnce(&mut ModelFigures) -> R) -> R {
        self.with(|figures| f(figures.models.entry(model.to_string()).or_default()))
    }

    pub fn request_finished(&self, component: &str, status: u16) {
        self.with(|f| {
            *f.requests
                .entry((component.to_string(), status))
                .or_default() += 1
        });
    }

    pub fn instantiated(&self, took: Duration) {
        self.with(|f| f.instantiation.observe(took.as_secs_f64()));
    }

    pub fn model_loaded(&self, model: &str, took: Duration) {
        self.model(model, |m| m.load_seconds = took.as_secs_f64());
    }

    pub fn context_opened(&self, model: &str) {
        self.model(model, |m| m.active_contexts += 1);
    }

    pub fn context_closed(&self, model: &str) {
        self.model(model, |m| m.active_contexts -= 1);
    }

    pub fn queue_changed(&self, model: &str, delta: i64) {
        self.model(model, |m| m.queued += delta);
    }

    pub fn rejected(&self, model: &str) {
        self.model(model, |m| m.rejected += 1);
    }

    /// A loaded model's prefix cache (its scheduler keeps the figures).
    pub fn prefix_cache(&self, model: &str, stats: Arc<PrefixCacheStats>) {
        self.model(model, |m| m.prefix_cache = Some(stats));
    }

    /// The first `compute` of a context: the prompt's prefill, from the context's creation.
    pub fn first_token(&self, model: &str, since_open: Duration) {
        self.model(model, |m| {
            m.time_to_first_token.observe(since_open.as_secs_f64())
        });
    }

    /// A later `compute`: `tokens` decoded in `took`.
    pub fn decoded(&self, model: &str, tokens: u64, took: Duration) {
        self.model(model, |m| {
            m.generated_tokens += tokens;
            m.decode_seconds += took.as_secs_f64();
        });
    }

    /// The Prometheus text exposition.
    pub fn render(&self, in_flight: usize) -> String {
        let mut out = String::new();
        self.with(|f| {
            out.push_str("# HELP nnspin_requests_total HTTP requests answered, by spin.toml route and status.\n");
            out.push_str("# TYPE nnspin_requests_total counter\n");
            for ((route, status), count) in &f.requests {
                let _ = writeln!(out, "nnspin_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}");
            }
            out.push_str("# HELP nnspin_requests_in_flight Requests whose response has not been fully sent.\n");
            out.push_str("# TYPE nnspin_requests_in_flight gauge\n");
            let _ = writeln!(out, "nnspin_requests_in_flight {in_flight}");
            out.push_str("# HELP nnspin_instantiation_seconds Time to instantiate a component for a request.\n");
            out.push_str("# TYPE nnspin_instantiation_seconds histogram\n");
            f.instantiation.render(&mut out, "nnspin_instantiation_seconds", "");

            let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: &dyn Fn(&ModelFigures) -> String| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (model, figures) in &f.models {
                    let _ = writeln!(out, "{name}{{model=\"{model}\"}} {}", value(figures));
                }
            };
            gauge(&mut out, "nnspin_model_load_seconds", "Time the model's last load took.", "gauge", &|m| m.load_seconds.to_string());
            gauge(&mut out, "nnspin_execution_contexts", "Execution contexts (sequences) alive.", "gauge", &|m| m.active_contexts.to_string());
            gauge(&mut out, "nnspin_queue_depth", "Requests waiting for an execution context.", "gauge", &|m| m.queued.to_string());
            gauge(&mut out, "nnspin_rejected_total", "Requests refused because the model's queue was full.", "counter", &|m| m.rejected.to_string());
            gauge(&mut out, "nnspin_generated_tokens_total", "Tokens decoded after the first.", "counter", &|m| m.generated_tokens.to_string());
            gauge(&mut out, "nnspin_decode_seconds_total", "Time spent decoding them (tokens/s = ratio of rates).", "counter", &|m| m.decode_seconds.to_string());
            let cache = |out: &mut String, name: &str, help: &str, kind: &str, value: fn(&PrefixCacheStats) -> u64| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (model, stats) in f.models.iter().filter_map(|(model, m)| Some((model, m.prefix_cache.as_ref()?))) {
                    let _ = writeln!(out, "{name}{{model=\"{model}\"}} {}", value(stats));
                }
            };
            cache(&mut out, "nnspin_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", "counter", PrefixCacheStats::queried_tokens);
            cache(&mut out, "nnspin_prefix_cache_hits_total", "Prompt tokens found in the prefix cache, their prefill skipped.", "counter", PrefixCacheStats::hit_tokens);
            cache(&mut out, "nnspin_prefix_cache_resident_tokens", "Tokens whose keys and values a later prompt could start from.", "gauge", PrefixCacheStats::resident_tokens);
            cache(&mut out, "nnspin_prefix_cache_evictions_total", "Finished sequences' caches dropped to stay within the budget.", "counter", PrefixCacheStats::evictions);
            cache(&mut out, "nnspin_kv_cache_bytes", "Memory of the model's KV cache buffers.", "gauge", PrefixCacheStats::kv_bytes);
            out.push_str("# HELP nnspin_time_to_first_token_seconds From opening a context to the prompt's logits.\n");
            out.push_str("# TYPE nnspin_time_to_first_token_seconds histogram\n");
            for (model, figures) in &f.models {
                figures.time_to_first_token.render(&mut out, "nnspin_time_to_first_token_seconds", &format!("model=\"{model}\""));
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_gauges_and_histograms() {
        let metrics = Metrics::default();
        metrics.request_finished("/v1/...", 200);
        metrics.request_finished("/v1/...", 200);
        metrics.instantiated(Duration::from_micros(300));
        metrics.context_opened("m");
        metrics.first_token("m", Duration::from_millis(80));
        metrics.decoded("m", 1, Duration::from_millis(20));
        let text = metrics.render(3);
        assert!(
            text.contains("nnspin_requests_total{route=\"/v1/...\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("nnspin_requests_in_flight 3"));
        assert!(text.contains("nnspin_instantiation_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("nnspin_instantiation_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(text.contains("nnspin_execution_contexts{model=\"m\"} 1"));
        assert!(
            text.contains("nnspin_time_to_first_token_seconds_bucket{model=\"m\",le=\"0.1\"} 1")
        );
        assert!(text.contains("nnspin_generated_tokens_total{model=\"m\"} 1"));
        assert!(
            !text.contains("nnspin_kv_cache_bytes{"),
            "no prefix cache, no figures"
        );
        let stats = Arc::new(PrefixCacheStats::default());
        stats.set_kv_bytes(4096);
        metrics.prefix_cache("m", stats);
        let text = metrics.render(0);
        assert!(text.contains("nnspin_kv_cache_bytes{model=\"m\"} 4096"));
        assert!(text.contains("# TYPE nnspin_prefix_cache_hits_total counter"));
        assert!(text.contains("nnspin_prefix_cache_queries_total{model=\"m\"} 0"));
    }
}
