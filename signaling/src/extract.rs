//! Extractors that turn rejections into Discord-style JSON errors.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use lodge_chat::User;
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::error::ApiError;
use crate::ratelimit::Authenticated;

/// Largest JSON body the REST API accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A body field that is present, `null` included (serde's `Option` alone reads `null` as
/// absent), kept as JSON for the route to check and name in its own form error:
/// `#[serde(default, deserialize_with = "present")] field: Option<Value>`.
pub fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// `Json<T>` whose failures are Discord JSON errors (400 bad body, 413 too large).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::BytesRejection(_)) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                40005,
                format!("Request entity too large: the body limit is {MAX_BODY_BYTES} bytes"),
            )),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                50035,
                "Invalid Form Body: send Content-Type: application/json",
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                50109,
                format!("The request body contains invalid JSON: {}", e.body_text()),
            )),
        }
    }
}

/// `Query<T>` whose failures are Discord's form error (400, code 50035, naming the query
/// string), not axum's plain-text rejection.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(ApiError::bad_request("query", e.body_text())),
        }
    }
}

/// A JSON body the route also takes empty (as Discord does for e.g. a ban or a new role): an
/// empty or all-whitespace body is `T::default()`, anything else must parse.
pub fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            50109,
            format!("The request body contains invalid JSON: {e}"),
        )
    })
}

/// The authenticated user (`Authorization: Bot <t>`, `Bearer <t>` or a bare token).
///
/// Behind the rate limiter (every `/api` route) the token was already verified once for the
/// request; the outcome is taken from the request's extensions rather than looked up again.
pub struct Auth(pub User);

/// Longest token looked up; longer ones are refused unread.
pub const MAX_TOKEN_LEN: usize = 200;

pub fn token_from_header(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix("Bot ")
        .or_else(|| v.strip_prefix("Bearer "))
        .unwrap_or(v)
        .trim()
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Authenticated>() {
            Some(Authenticated::User(u)) => return Ok(Auth(u.clone())),
            Some(Authenticated::Invalid) => return Err(ApiError::unauthorized()),
            // The middleware answers these itself; not reached.
            Some(Authenticated::Unreachable) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    0,
                    "503: Service Unavailable (the database is unreachable)",
                ))
            }
            None => {}
        }
        let Some(h) = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
        else {
            return Err(ApiError::unauthorized());
        };
        let token = token_from_header(h);
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(ApiError::unauthorized());
        }
        match state.store.authenticate(token).await {
            Ok(u) => Ok(Auth(u)),
            Err(lodge_chat::ChatError::Unauthorized) => Err(ApiError::unauthorized()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Parse a snowflake path segment; a malformed id is a 404 of that object, as Discord does.
pub fn snowflake(s: &str, what: &'static str) -> Result<u64, ApiError> {
    s.parse::<u64>().map_err(|_| ApiError::not_found(what))
}
