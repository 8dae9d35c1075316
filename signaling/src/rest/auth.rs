//! Lodge's own accounts: register, login, logout (token revocation).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{token_from_header, ApiJson, Auth};
use crate::wire;

#[derive(Deserialize)]
pub struct Register {
    username: String,
    password: String,
    #[serde(default)]
    bot: bool,
}

#[derive(Deserialize)]
pub struct Login {
    username: String,
    password: String,
}

pub async fn register(
    State(s): State<AppState>,
    ApiJson(b): ApiJson<Register>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (user, token) = s.store.register(&b.username, &b.password, b.bot).await?;
    tracing::info!(user = user.id, bot = user.bot, "account registered");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user": wire::user(&user), "token": token })),
    ))
}

pub async fn login(
    State(s): State<AppState>,
    ApiJson(b): ApiJson<Login>,
) -> ApiResult<Json<Value>> {
    let (user, token) = s.store.login(&b.username, &b.password).await?;
    Ok(Json(json!({ "user": wire::user(&user), "token": token })))
}

/// Revoke the token used for this request.
pub async fn logout(
    State(s): State<AppState>,
    Auth(_): Auth,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let h = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .ok_or_else(ApiError::unauthorized)?;
    s.store.revoke_token(token_from_header(h)).await?;
    Ok(StatusCode::NO_CONTENT)
}
