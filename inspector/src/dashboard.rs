//! The dashboard's files, compiled into the binary.
//!
//! `build.rs` embeds `web-ui/dist` when it exists; until the web UI is built, a
//! placeholder page lists the loops through the JSON API. Lookup is by exact path
//! in a static table, so no request path ever reaches the filesystem.

mod generated {
    include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));
}

const PLACEHOLDER_HTML: &[u8] = include_bytes!("../assets/placeholder.html");
const PLACEHOLDER_JS: &[u8] = include_bytes!("../assets/placeholder.js");

/// Whether the real dashboard (not the placeholder) is embedded.
pub fn embedded() -> bool {
    !generated::ASSETS.is_empty()
}

/// The file at `path` (`/` = `index.html`) and its content type. Paths without an
/// extension fall back to `index.html`, for the dashboard's client-side routes.
pub(crate) fn asset(path: &str) -> Option<(&'static [u8], &'static str)> {
    let path = path.trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let found = if embedded() {
        generated::ASSETS.iter().find(|(p, _)| *p == path).map(|(_, bytes)| *bytes)
    } else {
        match path {
            "index.html" => Some(PLACEHOLDER_HTML),
            "placeholder.js" => Some(PLACEHOLDER_JS),
            _ => None,
        }
    };
    match found {
        Some(bytes) => Some((bytes, content_type(path))),
        None if !path.rsplit('/').next().unwrap_or("").contains('.') => asset("index.html"),
        None => None,
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_client_routes_serve_html() {
        let (_, ct) = asset("/").unwrap();
        assert!(ct.starts_with("text/html"));
        assert!(asset("/loops/3").is_some(), "client-side route");
        assert!(asset("/missing.js").is_none());
    }
}
