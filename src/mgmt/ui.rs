//! The web UI: a few static files embedded in the binary and served by the management
//! listener at `/`, outside HTTP Basic (the pages hold no data; the script in them logs in
//! and uses the same `/api` as every other client).
//!
//! Plain HTML, CSS and JavaScript, no framework and no build step: the files in `www/` are
//! what the browser gets.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::http::ApiError;
use super::state::Mgmt;

/// Every file of the UI: its name under `/ui/`, its media type and its content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "lepus.css",
        "text/css; charset=utf-8",
        include_str!("www/lepus.css"),
    ),
    ("dom.js", JS, include_str!("www/dom.js")),
    ("pages.js", JS, include_str!("www/pages.js")),
    ("objects.js", JS, include_str!("www/objects.js")),
    ("admin.js", JS, include_str!("www/admin.js")),
    ("app.js", JS, include_str!("www/app.js")),
];

const JS: &str = "text/javascript; charset=utf-8";
const INDEX: &str = include_str!("www/index.html");

/// Scripts and styles come only from this origin, and no page may frame this one: data
/// shown by the UI (queue names, message bodies) is set as text, never parsed as HTML, and
/// the policy stops anything that slipped through from running.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<Arc<Mgmt>> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/ui/{file}", get(asset))
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, media_type, content)) => page(media_type, content),
        None => ApiError::not_found().into_response(),
    }
}

fn page(media_type: &'static str, content: &'static str) -> Response {
    let mut response = (StatusCode::OK, content).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    // The files change only with the binary; revalidating costs one request each and keeps
    // an upgraded broker from serving yesterday's script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
