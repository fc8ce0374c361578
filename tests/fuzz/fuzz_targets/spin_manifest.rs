//! `spin.toml` as the host reads it: parsed, checked, and its routes used to route paths. The input is
//! the manifest's text, then NUL-separated request paths. A manifest must load or be refused with an
//! error, never panic; a routed path's `spin-path-info` must be the tail of the path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nnspin::manifest::{Manifest, Router};

fuzz_target!(|input: &[u8]| {
    let mut parts = input.split(|&b| b == 0);
    let Ok(text) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return;
    };
    let Ok(manifest) = Manifest::parse(text) else {
        return;
    };
    manifest.models();
    let router = Router::new(&manifest.trigger.http);
    for path in parts.filter_map(|path| std::str::from_utf8(path).ok()) {
        if let Some(routed) = router.route(path) {
            assert!(path.ends_with(&routed.path_info), "{path:?} → {routed:?}");
            assert!(manifest.component.contains_key(routed.component));
        }
    }
});
