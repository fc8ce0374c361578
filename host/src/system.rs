//! `nnspin:llm/system`: facts about the host machine and process, read from the OS when asked.

use std::time::Instant;

use wasmtime::component::HasData;

use crate::bindings::system::{self, SystemInfo};
use crate::models::ModelAccess;

pub struct SystemView<'a> {
    pub models: &'a ModelAccess,
    /// When the process started serving.
    pub started: Instant,
}

/// Marker tying [`SystemView`] to the generated `add_to_linker` function.
pub struct System;

impl HasData for System {
    type Data<'a> = SystemView<'a>;
}

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

impl system::Host for SystemView<'_> {
    async fn info(&mut self) -> wasmtime::Result<SystemInfo> {
        let mut versions = vec![
            ("nnspin".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("wasmtime".to_string(), crate::WASMTIME_VERSION.to_string()),
        ];
        versions.extend(
            self.models
                .registry()
                .backends()
                .iter()
                .map(|backend| (backend.name().to_string(), backend.version())),
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
            uptime_seconds: self.started.elapsed().as_secs(),
            versions,
        })
    }
}
