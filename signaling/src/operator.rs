//! The node operator's secret (`--operator-token`, `LODGE_OPERATOR_TOKEN`): who may see every
//! channel's call quality and use the admin API. It travels as `Authorization: Operator
//! <secret>` (a scheme of its own, so the rate limiter never mistakes it for a user token and
//! never looks it up in the token store).

use axum::http::HeaderMap;

use crate::app::AppState;

/// The `Authorization` scheme that carries the operator's secret.
pub const SCHEME: &str = "Operator ";

/// Compare secrets without an early exit on the first differing byte.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether `secret` is the configured operator token (never, when none is configured).
pub fn is_operator(s: &AppState, secret: &str) -> bool {
    s.cfg
        .operator_token
        .as_deref()
        .is_some_and(|t| same_secret(t, secret.trim()))
}

/// The secret of an `Authorization: Operator <secret>` header, if the request carries one.
pub fn secret_in(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().strip_prefix(SCHEME))
}
