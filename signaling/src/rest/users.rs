//! Users and the application object bot libraries ask for.

use axum::extract::{Path, State};
use axum::Json;
use lodge_ids::UserId;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::error::ApiResult;
use crate::extract::{snowflake, Auth};
use crate::wire;

pub async fn me(Auth(u): Auth) -> Json<Value> {
    Json(wire::user(&u))
}

pub async fn user(
    State(s): State<AppState>,
    Auth(_): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = snowflake(&id, "user")?;
    Ok(Json(wire::user(&s.store.user(UserId(id)).await?)))
}

pub async fn my_guilds(State(s): State<AppState>, Auth(u): Auth) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for g in s.store.user_guilds(u.id).await? {
        let p = s.store.permissions(&g, None, u.id).await?;
        out.push(json!({
            "id": g.id.to_string(), "name": g.name, "icon": null, "banner": null,
            "owner": g.owner_id == u.id, "permissions": p.0.to_string(), "features": [],
        }));
    }
    Ok(Json(Value::Array(out)))
}

/// Each account is its own application: bots ask for it at start-up.
pub async fn application(Auth(u): Auth) -> Json<Value> {
    Json(json!({
        "id": u.id.to_string(),
        "name": u.username,
        "icon": null,
        "description": "",
        "bot_public": false,
        "bot_require_code_grant": false,
        "verify_key": "",
        "flags": 0,
        "owner": wire::user(&u),
        "team": null,
    }))
}
