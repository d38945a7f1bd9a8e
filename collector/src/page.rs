//! The built-in web page at `/`: open findings, top statements (sortable,
//! with sparklines and per-statement details), a hot-partition heatmap and
//! the nodes, for people without Grafana. One self-contained HTML file
//! compiled into the binary (no CDN, no framework: it works offline),
//! reading the same JSON API everyone else reads. The page itself is open
//! like `/metrics`; with `[http] token` set, it takes the token from the URL
//! fragment (`/#token=...`) and sends it as a bearer header to the API.
//! Tested in headless Chromium by `tests/it/web_page.rs`.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("page/index.html");

pub async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX)
}
