//! The built-in web page at `/`: open findings, top statements, hot
//! partitions and nodes, for people without Grafana. One self-contained
//! HTML file compiled into the binary (no CDN: it works offline), reading
//! the same JSON API everyone else reads.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("page/index.html");

pub async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX)
}
