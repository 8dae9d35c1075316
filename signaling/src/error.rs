//! Discord-style JSON errors: `{code, message, errors?}` with the right HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lodge_chat::ChatError;
use serde_json::json;

/// The signaling crate's one error type; every REST failure becomes one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("{message}")]
    Status {
        status: StatusCode,
        code: u32,
        message: String,
        errors: Option<serde_json::Value>,
    },
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// 429 with Discord's rate-limit body and headers.
    #[error("rate limited ({})", .0.limit_name)]
    RateLimited(Box<crate::ratelimit::RateLimited>),
}

impl ApiError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        ApiError::Status {
            status,
            code,
            message: message.into(),
            errors: None,
        }
    }
    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::Status {
            status: StatusCode::BAD_REQUEST,
            code: 50035,
            message: "Invalid Form Body".into(),
            errors: Some(
                json!({ field: { "_errors": [ { "code": "BASE_TYPE_INVALID", "message": message } ] } }),
            ),
        }
    }
    pub fn unauthorized() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized")
    }
    pub fn missing_permissions(what: &str) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            50013,
            format!("Missing Permissions: {what}"),
        )
    }
    pub fn not_found(what: &'static str) -> Self {
        ApiError::Chat(ChatError::Unknown(what))
    }
    /// The shared state (Redis, in a cluster) could not be reached: 503, retry.
    pub fn unavailable(e: crate::shared::SharedError) -> Self {
        tracing::warn!(error = %e, "request refused: shared state unavailable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            0,
            "503: Service Unavailable (the cluster's shared state is unreachable; retry shortly)",
        )
    }
}

impl From<crate::shared::SharedError> for ApiError {
    fn from(e: crate::shared::SharedError) -> Self {
        ApiError::unavailable(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, errors) = match self {
            ApiError::RateLimited(r) => return r.into_response(),
            ApiError::Chat(ChatError::Busy {
                what,
                retry_after_secs,
            }) => {
                tracing::debug!(what, "request refused: at capacity");
                let body = json!({
                    "code": 0,
                    "message": format!("503: Service Unavailable ({what} is at capacity; retry in {retry_after_secs} s)"),
                    "retry_after": retry_after_secs,
                });
                let mut res = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                res.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(retry_after_secs),
                );
                return res;
            }
            ApiError::Status {
                status,
                code,
                message,
                errors,
            } => (status, code, message, errors),
            ApiError::Chat(ChatError::Invalid { field, message }) => {
                let body = json!({ field: { "_errors": [ { "code": "BASE_TYPE_INVALID", "message": message } ] } });
                (
                    StatusCode::BAD_REQUEST,
                    50035,
                    "Invalid Form Body".to_string(),
                    Some(body),
                )
            }
            ApiError::Chat(e) if e.is_unreachable() => {
                tracing::warn!(error = %e, "request refused: the database is unreachable");
                return database_unreachable();
            }
            ApiError::Chat(e) => {
                let status =
                    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                if status.is_server_error() {
                    tracing::error!(error = %e, "request failed");
                    (status, 0, "500: Internal Server Error".to_string(), None)
                } else {
                    (status, e.code(), e.to_string(), None)
                }
            }
        };
        let mut body = json!({ "code": code, "message": message });
        if let Some(e) = errors {
            body["errors"] = e;
        }
        (status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// 503 with Discord-shaped JSON and `Retry-After`: the database did not answer in time.
pub fn database_unreachable() -> Response {
    let body = json!({
        "code": 0,
        "message": "503: Service Unavailable (the database is unreachable; nothing was changed, retry shortly)",
        "retry_after": 2,
    });
    let mut res = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    res.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(2u32),
    );
    res
}

impl ApiError {
    /// Discord JSON error code.
    pub fn code(&self) -> u32 {
        match self {
            ApiError::Status { code, .. } => *code,
            ApiError::Chat(e) => e.code(),
            ApiError::RateLimited(_) => 0,
        }
    }
}
