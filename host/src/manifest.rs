//! The app manifest: Spin's `spin.toml` format (manifest version 2), the parts nnspin acts on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backend::{BackendKind, Device, Precision, WeightFormat};
use crate::rate_limit::RateLimit;
use wasmtime::error::Context;

/// The manifest a `-f` argument names: a file, or a directory's `spin.toml` (as `spin up -f` reads one).
pub fn locate(path: &Path) -> PathBuf {
    match path.is_dir() {
        true => path.join("spin.toml"),
        false => path.to_path_buf(),
    }
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub spin_manifest_version: u32,
    pub application: Application,
    #[serde(default)]
    pub trigger: Triggers,
    #[serde(default)]
    pub component: BTreeMap<String, ComponentSpec>,
    /// Per-model placement (`[model.NAME]`: backend, device, threads, format). nnspin's extension.
    #[serde(default)]
    pub model: BTreeMap<String, ModelOverrides>,
}

/// A model's overrides (`[model.NAME]`, nnspin's extension) of where the command line places models;
/// unset fields keep the command line's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOverrides {
    pub backend: Option<BackendKind>,
    pub device: Option<Device>,
    pub precision: Option<Precision>,
    /// Inference threads.
    pub threads: Option<usize>,
    pub format: Option<WeightFormat>,
    /// Memory finished sequences' KV caches may keep for later prompts, in MiB (0: none).
    pub prefix_cache_mib: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct Application {
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
}

#[derive(Debug, Deserialize)]
pub struct HttpTrigger {
    /// An exact path, or a prefix ending in `/...` that matches everything below it.
    pub route: String,
    pub component: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileMount {
    Path(PathBuf),
    Mapping {
        source: PathBuf,
        destination: String,
    },
}

#[derive(Debug, Deserialize)]
pub struct ComponentSpec {
    /// Path of the component's `.wasm`, relative to the manifest.
    pub source: PathBuf,
    /// Models the component may load through `wasi:nn/graph.load-by-name` and `nnspin:llm/text`.
    #[serde(default)]
    pub ai_models: Vec<String>,
    /// Environment variables the component sees.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Hosts the component may send HTTP requests to (`scheme://host:port`, `*` for any part).
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Directories of the app the component may read: a path (mounted at the same path) or
    /// `{ source, destination }`.
    #[serde(default)]
    pub files: Vec<FileMount>,
    /// Whether the component may load and unload models (`nnspin:llm/models`). nnspin's extension.
    #[serde(default)]
    pub model_management: bool,
    /// Per-client request rate, enforced by the host before instantiation. nnspin's extension.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

impl Manifest {
    pub fn load(path: &Path) -> wasmtime::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and checks a manifest's text (paths in it stay relative to the manifest).
    pub fn parse(text: &str) -> wasmtime::Result<Self> {
        let manifest: Self = toml::from_str(text)?;
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> wasmtime::Result<()> {
        if self.spin_manifest_version != 2 {
            wasmtime::bail!(
                "spin_manifest_version {} is not supported (use 2)",
                self.spin_manifest_version
            );
        }
        for trigger in &self.trigger.http {
            if !self.component.contains_key(&trigger.component) {
                wasmtime::bail!(
                    "route {:?} names component {:?}, which is not declared",
                    trigger.route,
                    trigger.component
                );
            }
            if !trigger.route.starts_with('/') {
                wasmtime::bail!("route {:?} must start with '/'", trigger.route);
            }
        }
        Ok(())
    }

    /// Every model some component may use, once each.
    pub fn models(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .component
            .values()
            .flat_map(|c| c.ai_models.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Maps request paths to components with Spin's rules: an exact route wins, then the longest wildcard.
#[derive(Debug)]
pub struct Router {
    /// Exact path → (route as written, component).
    exact: BTreeMap<String, (String, String)>,
    /// Wildcard prefixes (without `/...`), longest first, with their route and component.
    prefixes: Vec<(String, String, String)>,
}

impl Router {
    pub fn new(triggers: &[HttpTrigger]) -> Self {
        let mut exact = BTreeMap::new();
        let mut prefixes = Vec::new();
        for t in triggers {
            let target = (t.route.clone(), t.component.clone());
            match t.route.strip_suffix("/...") {
                Some(prefix) => prefixes.push((prefix.to_string(), target.0, target.1)),
                None => {
                    exact.insert(t.route.trim_end_matches('/').to_string(), target);
                }
            }
        }
        prefixes.sort_by_key(|(prefix, _, _)| std::cmp::Reverse(prefix.len()));
        Self { exact, prefixes }
    }

    pub fn route<'a>(&'a self, path: &str) -> Option<RouteMatch<'a>> {
        let trimmed = path.trim_end_matches('/');
        if let Some((route, component)) = self.exact.get(trimmed) {
            return Some(RouteMatch {
                route,
                component,
                path_info: String::new(),
            });
        }
        self.prefixes
            .iter()
            .find(|(prefix, _, _)| {
                trimmed == prefix
                    || (trimmed.starts_with(prefix.as_str())
                        && trimmed[prefix.len()..].starts_with('/'))
            })
            .map(|(prefix, route, component)| RouteMatch {
                route,
                component,
                path_info: path[prefix.len()..].to_string(),
            })
    }
}

/// The route a path matched (as spin.toml writes it), its component, and the part of the path below
/// a wildcard route (Spin's `spin-path-info`), so a component can be mounted anywhere.
#[derive(Debug, PartialEq)]
pub struct RouteMatch<'a> {
    pub route: &'a str,
    pub component: &'a str,
    pub path_info: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let t = |route: &str, component: &str| HttpTrigger {
            route: route.into(),
            component: component.into(),
        };
        Router::new(&[
            t("/v1/...", "openai"),
            t("/health", "openai"),
            t("/v1/models/special", "other"),
            t("/...", "root"),
        ])
    }

    fn component<'a>(r: &'a Router, path: &str) -> Option<&'a str> {
        r.route(path).map(|m| m.component)
    }

    #[test]
    fn exact_routes_win_over_wildcards() {
        let r = router();
        assert_eq!(component(&r, "/v1/models/special"), Some("other"));
        assert_eq!(component(&r, "/v1/models/other"), Some("openai"));
        assert_eq!(component(&r, "/health"), Some("openai"));
        assert_eq!(component(&r, "/health/"), Some("openai"));
    }

    #[test]
    fn wildcards_match_whole_segments() {
        let r = router();
        assert_eq!(component(&r, "/v1"), Some("openai"));
        assert_eq!(component(&r, "/v10/x"), Some("root"));
        assert_eq!(component(&r, "/anything"), Some("root"));
    }

    #[test]
    fn path_info_is_the_path_below_the_wildcard() {
        let r = router();
        assert_eq!(
            r.route("/v1/chat/completions").unwrap().path_info,
            "/chat/completions"
        );
        assert_eq!(
            r.route("/anything/else").unwrap().path_info,
            "/anything/else"
        );
        assert_eq!(r.route("/health").unwrap().path_info, "");
        assert_eq!(r.route("/v1/models/x").unwrap().route, "/v1/...");
    }

    #[test]
    fn manifest_rejects_unknown_components() {
        let text = r#"
            spin_manifest_version = 2
            [application]
            name = "x"
            [[trigger.http]]
            route = "/..."
            component = "missing"
        "#;
        let manifest: Manifest = toml::from_str(text).unwrap();
        let err = manifest.validate().unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
