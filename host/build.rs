//! Records the wasmtime version this binary is built with (from Cargo.lock) for `/system/info`, and with
//! the `openvino` feature builds the OpenVINO PagedAttention library (`native/openvino_paged.cpp`) that
//! the binary carries inside it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let lock = "../Cargo.lock";
    println!("cargo:rerun-if-changed={lock}");
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let version = text
        .split("[[package]]")
        .find(|package| package.contains("\nname = \"wasmtime\"\n"))
        .and_then(|package| {
            package
                .lines()
                .find_map(|line| line.strip_prefix("version = "))
        })
        .map_or("unknown", |v| v.trim_matches('"'));
    println!("cargo:rustc-env=NNSPIN_WASMTIME_VERSION={version}");

    println!("cargo::rustc-check-cfg=cfg(openvino_paged)");
    if std::env::var_os("CARGO_FEATURE_OPENVINO").is_some() {
        build_openvino_paged();
    }
}

/// Compiles the PagedAttention library against the C++ headers and library of the `openvino` wheel
/// (OPENVINO_DIR, else the workspace's `.venv`). Without them the host is built without it, and the
/// OpenVINO backend runs each context on its own; it says so when it loads a model.
fn build_openvino_paged() {
    let source = "native/openvino_paged.cpp";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=OPENVINO_DIR");
    let Some(openvino) = openvino_dir() else {
        println!(
            "cargo:warning=no openvino wheel found (set OPENVINO_DIR to its package folder): \
             the host is built without OpenVINO's PagedAttention batching"
        );
        return;
    };
    let libs = openvino.join("libs");
    let Some(library) = std::fs::read_dir(&libs).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|name| name.starts_with("libopenvino.so."))
    }) else {
        println!("cargo:warning={} holds no libopenvino.so.*", libs.display());
        return;
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = out.join("libnnspin_openvino_paged.so");
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let status = Command::new(&compiler)
        .args([
            "-std=c++17",
            "-O2",
            "-fPIC",
            "-shared",
            "-Wall",
            "-Wl,--no-undefined",
        ])
        .arg("-I")
        .arg(openvino.join("include"))
        .arg(source)
        .arg("-o")
        .arg(&target)
        .arg("-L")
        .arg(&libs)
        .arg(format!("-l:{library}"))
        .status();
    match status {
        Ok(status) if status.success() => println!("cargo:rustc-cfg=openvino_paged"),
        Ok(status) => panic!("{compiler} failed to build {source}: {status}"),
        Err(e) => panic!("cannot run {compiler} to build {source}: {e}"),
    }
}

/// The `openvino` package folder of the wheel: OPENVINO_DIR, or the one in the workspace's `.venv`.
fn openvino_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("OPENVINO_DIR") {
        return Some(dir.into());
    }
    let lib = Path::new("../.venv/lib");
    println!("cargo:rerun-if-changed={}", lib.display());
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/openvino"))
        .find(|dir| {
            dir.join("include/openvino/pass/sdpa_to_paged_attention.hpp")
                .is_file()
        })
}
