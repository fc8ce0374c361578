//! Records the wasmtime version this binary is built with (from Cargo.lock) for `/system/info`.

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
}
