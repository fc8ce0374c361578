//! `nnspin:llm/system`: facts about the host machine and process, read from the OS when asked.

use super::bindings::system::{self, SystemInfo};
use super::view::LlmView;

/// A `/proc/meminfo` or `/proc/self/status` field in bytes (the files give kB).
fn proc_kib(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix(key)?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or(0, |kib| kib * 1024)
}

impl system::Host for LlmView<'_> {
    async fn info(&mut self) -> wasmtime::Result<SystemInfo> {
        let mut versions = vec![
            ("nnspin".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("wasmtime".to_string(), crate::WASMTIME_VERSION.to_string()),
        ];
        versions.extend(
            self.grants
                .registry()
                .engines()
                .iter()
                .map(|engine| (engine.kind.as_str().to_string(), engine.version.clone())),
        );
        Ok(SystemInfo {
            host_name: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_string())
                .unwrap_or_default(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_total_bytes: proc_kib("/proc/meminfo", "MemTotal:"),
            memory_available_bytes: proc_kib("/proc/meminfo", "MemAvailable:"),
            process_memory_bytes: proc_kib("/proc/self/status", "VmRSS:"),
            uptime_seconds: self.grants.app.started.elapsed().as_secs(),
            versions,
        })
    }
}
