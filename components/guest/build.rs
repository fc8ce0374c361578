//! The portable build (feature `portable`) compiles one model's files into the component: the directory
//! `NNSPIN_PORTABLE_MODEL` names (a relative path is taken from the workspace root, where builds are
//! started), whose name becomes the model's id.

use std::path::Path;
use std::time::UNIX_EPOCH;

const FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "config.json",
    "generation_config.json",
];

const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

fn main() {
    println!("cargo:rerun-if-env-changed=NNSPIN_PORTABLE_MODEL");
    println!("cargo:rustc-check-cfg=cfg(portable_chat_template_file)");
    if std::env::var_os("CARGO_FEATURE_PORTABLE").is_none() {
        return;
    }
    let Some(dir) = std::env::var_os("NNSPIN_PORTABLE_MODEL") else {
        fail(
            "the portable build needs NNSPIN_PORTABLE_MODEL=<model directory> (such as models/smollm2-135m-instruct)",
        );
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root
        .join(&dir)
        .canonicalize()
        .unwrap_or_else(|e| fail(&format!("NNSPIN_PORTABLE_MODEL={}: {e}", dir.display())));
    for file in FILES {
        let path = dir.join(file);
        if !path.is_file() {
            fail(&format!(
                "{} does not exist: the portable build compiles it in",
                path.display()
            ));
        }
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // A chat template in its own file (transformers 4.50+) is compiled in too; the directory is watched
    // so one added later is found.
    println!("cargo:rerun-if-changed={}", dir.display());
    let template = dir.join(CHAT_TEMPLATE_FILE);
    if template.is_file() {
        println!("cargo:rerun-if-changed={}", template.display());
        println!("cargo:rustc-cfg=portable_chat_template_file");
    }
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let created = std::fs::metadata(dir.join("config.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    println!(
        "cargo:rustc-env=NNSPIN_PORTABLE_MODEL_DIR={}",
        dir.display()
    );
    println!("cargo:rustc-env=NNSPIN_PORTABLE_MODEL_ID={id}");
    println!("cargo:rustc-env=NNSPIN_PORTABLE_MODEL_CREATED={created}");
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}
