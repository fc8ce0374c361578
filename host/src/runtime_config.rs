//! Spin's runtime configuration file (`--runtime-config-file`, which SpinKube's executor always passes):
//! nnspin reads it so that the same command line works, and acts on the one section it has a meaning for.
//! `[llm_compute] type = "spin"` is how nnspin computes anyway (locally, with the models of `--models-dir`);
//! every other section (key-value stores, SQLite databases, variables providers, a remote LLM) names a
//! service nnspin does not provide, and is refused with a line that says which, rather than ignored.

use std::path::Path;

use wasmtime::error::Context;

/// Checks a runtime configuration file: empty, or only what nnspin acts on.
pub fn check_file(path: &Path) -> wasmtime::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the runtime config {}", path.display()))?;
    check(&text).map_err(|e| wasmtime::format_err!("runtime config {}: {e}", path.display()))
}

fn check(text: &str) -> Result<(), String> {
    let table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    for (section, value) in &table {
        match section.as_str() {
            "llm_compute" => {
                let kind = value.get("type").and_then(toml::Value::as_str);
                match kind {
                    Some("spin") => {}
                    Some(other) => {
                        return Err(format!(
                            "[llm_compute] type = {other:?} is not supported: nnspin computes with its \
                             own resident models (type = \"spin\")"
                        ));
                    }
                    None => return Err("[llm_compute] needs a `type`".into()),
                }
            }
            other => {
                return Err(format!(
                    "[{other}] is not supported: nnspin serves LLM components and provides no {}",
                    describe(other)
                ));
            }
        }
    }
    Ok(())
}

/// What a Spin runtime-config section configures, for the refusal.
fn describe(section: &str) -> &'static str {
    match section {
        "key_value_store" => "key-value stores",
        "sqlite_database" => "SQLite databases",
        "variables_provider" | "config_provider" | "variable_provider" => "variables providers",
        "outbound_networking" | "client_tls" => "outbound TLS settings",
        _ => "such service",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_local_llm_compute_are_accepted() {
        assert_eq!(check(""), Ok(()));
        assert_eq!(check("[llm_compute]\ntype = \"spin\"\n"), Ok(()));
    }

    #[test]
    fn other_services_are_refused_by_name() {
        let remote =
            check("[llm_compute]\ntype = \"remote_http\"\nurl = \"http://x\"\n").unwrap_err();
        assert!(remote.contains("remote_http"), "{remote}");
        let store = check("[key_value_store.default]\ntype = \"redis\"\n").unwrap_err();
        assert!(
            store.contains("[key_value_store]") && store.contains("key-value stores"),
            "{store}"
        );
        assert!(check("[llm_compute]\n").unwrap_err().contains("type"));
        assert!(check("not toml [").unwrap_err().contains("TOML"));
    }
}
