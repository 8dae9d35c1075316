//! Lodge's own accounts: register, login, logout (token revocation).

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::client_addr::{limit_key, ClientAddr};
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

/// The caller's limit key; every `/api` route has it (the rate limiter puts it there).
fn client_key(c: Option<axum::Extension<ClientAddr>>) -> std::net::IpAddr {
    limit_key(
        c.map(|c| c.0 .0)
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
    )
}

pub async fn register(
    State(s): State<AppState>,
    client: Option<axum::Extension<ClientAddr>>,
    ApiJson(b): ApiJson<Register>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let addr = client_key(client);
    let acc = &*s.shared.accounts;
    s.account_limiter
        .begin_registration(acc, Instant::now(), addr, &b.username)
        .await
        .map_err(ApiError::RateLimited)?;
    let (user, token) = match s.store.register(&b.username, &b.password, b.bot).await {
        Ok(ok) => ok,
        Err(e @ (lodge_chat::ChatError::Busy { .. } | lodge_chat::ChatError::Storage(_))) => {
            s.account_limiter.registration_unchecked(acc, addr).await;
            return Err(e.into());
        }
        Err(e) => {
            s.account_limiter
                .registration_refused(acc, Instant::now(), &b.username)
                .await;
            return Err(e.into());
        }
    };
    tracing::info!(user = %user.id, bot = user.bot, "account registered");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user": wire::user(&user), "token": token })),
    ))
}

pub async fn login(
    State(s): State<AppState>,
    client: Option<axum::Extension<ClientAddr>>,
    ApiJson(b): ApiJson<Login>,
) -> ApiResult<Json<Value>> {
    let acc = &*s.shared.accounts;
    let attempt = s
        .account_limiter
        .begin_login(acc, Instant::now(), client_key(client), &b.username)
        .await
        .map_err(ApiError::RateLimited)?;
    let (user, token) = match s.store.login(&b.username, &b.password).await {
        Ok(ok) => {
            s.account_limiter.login_succeeded(acc, attempt).await;
            ok
        }
        // A wrong password or unknown username stays counted.
        Err(e @ lodge_chat::ChatError::Invalid { .. }) => return Err(e.into()),
        Err(e) => {
            s.account_limiter.login_unchecked(acc, attempt).await;
            return Err(e.into());
        }
    };
    Ok(Json(json!({ "user": wire::user(&user), "token": token })))
}

/// Revoke the token used for this request; the gateway sessions identified with it (and their
/// voice connections) end at once.
pub async fn logout(
    State(s): State<AppState>,
    Auth(u): Auth,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let h = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .ok_or_else(ApiError::unauthorized)?;
    let token = token_from_header(h);
    s.store.revoke_token(token).await?;
    let hash = lodge_chat::token_hash(token);
    let ended = crate::gateway::end_sessions_of(&s, u.id, Some(&hash)).await;
    let _ = s.revoked.send(crate::app::Revoked {
        user: u.id.get(),
        token_hash: Some(hash),
    });
    tracing::info!(user = %u.id, sessions = ended, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Revoke every token of the caller (log out everywhere): every gateway session, voice and
/// live-quality connection of the user ends.
pub async fn logout_all(State(s): State<AppState>, Auth(u): Auth) -> ApiResult<StatusCode> {
    let tokens = s.store.revoke_all_tokens(u.id).await?;
    let ended = crate::gateway::end_sessions_of(&s, u.id, None).await;
    let _ = s.revoked.send(crate::app::Revoked {
        user: u.id.get(),
        token_hash: None,
    });
    tracing::info!(
        user = %u.id,
        tokens,
        sessions = ended,
        "every token of the user revoked"
    );
    Ok(StatusCode::NO_CONTENT)
}
