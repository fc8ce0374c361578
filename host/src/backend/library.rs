//! Finding an inference engine's shared library: an environment variable naming it, else the Python
//! wheel that ships it (`pip install onnxruntime` / `openvino`) in the active virtualenv or in a `.venv`
//! in the current directory or one above it.

use std::path::PathBuf;

/// A shared library shipped inside a Python wheel.
pub(super) struct WheelLibrary {
    /// Environment variable that names the library file (or, for some, its directory).
    pub env: &'static str,
    /// Directory of the library inside `site-packages`.
    pub package_dir: &'static str,
    /// File name prefix: versioned names (`libopenvino_c.so.2641`) match too.
    pub file_prefix: &'static str,
    /// What to tell a user who has neither.
    pub hint: &'static str,
}

impl WheelLibrary {
    pub(super) fn locate(&self) -> wasmtime::Result<PathBuf> {
        if let Some(path) = std::env::var_os(self.env) {
            let path = PathBuf::from(path);
            if !path.is_dir() {
                return Ok(path);
            }
            if let Some(found) = self.find_in(&path) {
                return Ok(found);
            }
            wasmtime::bail!(
                "{} names {}, which holds no {}*",
                self.env,
                path.display(),
                self.file_prefix
            );
        }
        let mut roots = Vec::new();
        if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
            roots.push(PathBuf::from(venv));
        }
        if let Ok(cwd) = std::env::current_dir() {
            roots.extend(cwd.ancestors().map(|dir| dir.join(".venv")));
        }
        for root in roots {
            let Ok(pythons) = std::fs::read_dir(root.join("lib")) else {
                continue;
            };
            for python in pythons.flatten() {
                let dir = python.path().join("site-packages").join(self.package_dir);
                if let Some(found) = self.find_in(&dir) {
                    return Ok(found);
                }
            }
        }
        wasmtime::bail!("{}: set {} ({})", self.file_prefix, self.env, self.hint)
    }

    fn find_in(&self, dir: &std::path::Path) -> Option<PathBuf> {
        let mut matches: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter(|f| {
                f.file_name()
                    .to_string_lossy()
                    .starts_with(self.file_prefix)
            })
            .map(|f| f.path())
            .collect();
        matches.sort();
        matches.into_iter().next()
    }
}

/// The version in a versioned library name: `libonnxruntime.so.1.31.1` → `1.31.1`.
pub(super) fn version_of(path: &std::path::Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.split(".so.").nth(1).map(String::from)
}
