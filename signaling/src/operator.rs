//! The node operator's secret (`--operator-token`, `LODGE_OPERATOR_TOKEN`): who may see every
//! channel's call quality and use the admin API. It travels as `Authorization: Operator
//! <secret>` (a scheme of its own, so the rate limiter never mistakes it for a user token and
//! never looks it up in the token store).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};

use crate::app::AppState;
use crate::client_addr;
use crate::error::ApiError;

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
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().strip_prefix(SCHEME))
}

/// A request made with the operator token (the admin API's extractor). `who` names it in the
/// logs: the operator and the client address, redacted.
///
/// Refusals: no token configured — 404 saying how to turn the admin API on; no
/// `Authorization` — 401; a user's token — 403; a wrong operator token — 401, counted with the
/// address's invalid tokens (`account_limits`), so guessing is held to
/// `INVALID_TOKENS_PER_SECOND` per address like guessing user tokens.
pub struct Operator {
    pub who: String,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        if s.cfg.operator_token.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                0,
                "404: the admin API is off on this node; set LODGE_OPERATOR_TOKEN (or \
                 --operator-token, at least 16 characters) to turn it on",
            ));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let addr = client_addr::resolve(peer, &parts.headers, &s.limits.trusted_proxies);
        let key = client_addr::limit_key(addr);
        if let Some(retry_after) = s
            .account_limiter
            .invalid_tokens_exhausted(Instant::now(), key)
        {
            return Err(ApiError::RateLimited(Box::new(
                crate::ratelimit::RateLimited::invalid_tokens(retry_after),
            )));
        }
        match secret_in(&parts.headers) {
            Some(secret) if is_operator(s, secret) => Ok(Operator {
                who: format!("operator from {}", client_addr::redact(addr)),
            }),
            Some(_) => {
                s.account_limiter
                    .invalid_token(&*s.shared.accounts, Instant::now(), key)
                    .await;
                tracing::warn!(client = %client_addr::redact(addr), "admin API: operator token refused");
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    0,
                    "401: Unauthorized (the operator token was refused)",
                ))
            }
            None if parts.headers.contains_key(AUTHORIZATION) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                50001,
                "Missing Access: the admin API takes the operator token \
                 (Authorization: Operator <token>), not a user's",
            )),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                0,
                "401: Unauthorized (send Authorization: Operator <token>)",
            )),
        }
    }
}
