//! The embedded web client, and the voice gateway sharing the root path (Discord's voice
//! endpoint is `ws(s)://{endpoint}/?v=8`).
//!
//! The HTML pages carry a Content-Security-Policy that fits what they load: scripts and styles
//! only from the node (the pages have no inline script or style), `fetch` to the node's API, and
//! WebSockets to the gateway and to voice endpoints, which may be other hosts (an edge, a
//! `--public-url`), hence `ws:`/`wss:`. WebRTC media is not governed by CSP. No page may be
//! framed (clickjacking), and no referrer leaves. Every response, API included, says `nosniff`.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};

use crate::app::AppState;

const INDEX: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const STYLE: &str = include_str!("../web/style.css");
const DASHBOARD: &str = include_str!("../web/dashboard.html");
const DASHBOARD_JS: &str = include_str!("../web/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../web/dashboard.css");

/// The HTML pages' Content-Security-Policy (see the module docs).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; media-src 'self' blob:; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// An HTML page with its security headers.
fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Html(html),
    )
        .into_response()
}

/// `X-Content-Type-Options: nosniff` on every response (a router-wide layer).
pub async fn nosniff(mut res: Response) -> Response {
    res.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

pub async fn index_or_voice(State(s): State<AppState>, req: Request) -> Response {
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_ws && !s.cfg.roles.media {
        let body = serde_json::json!({ "code": 0, "message": "503: this node serves no voice (--roles without media); use the endpoint VOICE_SERVER_UPDATE names" });
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(body),
        )
            .into_response();
    }
    if is_ws {
        let (mut parts, _) = req.into_parts();
        let version = crate::voice::wire::WireVersion::from_query(parts.uri.query());
        return match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &s).await {
            Ok(ws) => crate::voice::gateway::upgrade(ws, s, version),
            Err(e) => e.into_response(),
        };
    }
    page(INDEX)
}

pub async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

pub async fn style_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
}

/// The call-quality dashboard (live over `/api/v10/quality/live`).
pub async fn dashboard() -> Response {
    page(DASHBOARD)
}

pub async fn dashboard_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD_CSS,
    )
}

pub async fn dashboard_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD_JS,
    )
}
