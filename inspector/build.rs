//! Embeds the dashboard's build output (`web-ui/dist`) into the binary.
//!
//! Generates `$OUT_DIR/dashboard_assets.rs`: a table of `(path, bytes)` with one
//! `include_bytes!` per file. Without a `web-ui/dist` the table is empty and the
//! inspector serves its placeholder page. A build script (rather than the
//! `include_dir` crate) because this is all it takes and it adds no dependency.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest dashboard we embed: a bound on what the sidecar adds to every binary.
const MAX_TOTAL_BYTES: u64 = 16 * 1024 * 1024;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let web_ui = manifest.join("..").join("web-ui");
    let dist = web_ui.join("dist");
    // Watch `dist` when it exists; otherwise its parent, whose change means a first
    // build of the dashboard appeared. (Watching a missing path reruns every build.)
    let watched = if dist.is_dir() { &dist } else { &web_ui };
    if watched.exists() {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut files = Vec::new();
    if dist.is_dir() {
        collect(&dist, &dist, &mut files);
    }
    files.sort();
    let total: u64 = files.iter().filter_map(|(_, p)| fs::metadata(p).ok()).map(|m| m.len()).sum();
    if total > MAX_TOTAL_BYTES {
        panic!("web-ui/dist is {total} bytes; the embedded dashboard is capped at {MAX_TOTAL_BYTES}");
    }

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("dashboard_assets.rs");
    let mut f = fs::File::create(&out).expect("OUT_DIR is writable");
    writeln!(f, "/// Files of `web-ui/dist`, by path relative to it (`/`-separated).").unwrap();
    writeln!(f, "pub static ASSETS: &[(&str, &[u8])] = &[").unwrap();
    for (rel, path) in &files {
        writeln!(f, "    ({rel:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
    }
    writeln!(f, "];").unwrap();
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            out.push((rel, path.canonicalize().unwrap_or(path)));
        }
    }
}
