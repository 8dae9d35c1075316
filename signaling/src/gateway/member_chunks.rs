//! Request Guild Members (op 8): GUILD_MEMBERS_CHUNK dispatches to the asking session.
//!
//! Listing a whole guild needs the GUILD_MEMBERS intent and is allowed once per
//! [`EVERYONE_INTERVAL`] per guild per connection; a faster request gets Discord's RATE_LIMITED
//! dispatch instead of members. A query or an id list is small (at most 100 members) and counts
//! against the connection's payload rate like any other payload.

use lodge_ids::{GuildId, UserId};
use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::client_op::{MemberSelect, Refusal, RequestMembers, MEMBERS_PER_CHUNK};
use super::registry::{Entry, SessionRef};
use super::{close, intents, Opcode};
use crate::app::AppState;
use crate::dispatch::DispatchKind;
use crate::wire;

/// How often one connection may list a whole guild.
pub const EVERYONE_INTERVAL: Duration = Duration::from_secs(30);

fn push(sref: &SessionRef, t: DispatchKind, d: Value) {
    sref.lock()
        .expect("a session lock is never held across a panic")
        .push(Entry::Own(t, d.to_string().into()));
}

pub async fn request(
    s: &AppState,
    sref: &SessionRef,
    last_everyone: &mut HashMap<GuildId, Instant>,
    r: RequestMembers,
) -> Result<(), Refusal> {
    let (member_of, granted) = {
        let g = sref
            .lock()
            .expect("a session lock is never held across a panic");
        (g.guilds.contains(&r.guild_id), g.intents)
    };
    if r.select.needs_members_intent() && granted & intents::GUILD_MEMBERS == 0 {
        return Err((
            close::DISALLOWED_INTENTS,
            "listing members without a query needs the GUILD_MEMBERS intent".into(),
        ));
    }
    if r.presences && granted & intents::GUILD_PRESENCES == 0 {
        return Err((
            close::DISALLOWED_INTENTS,
            "presences in member chunks need the GUILD_PRESENCES intent".into(),
        ));
    }
    if !member_of {
        // Discord sends nothing for a guild the session is not in.
        return Ok(());
    }
    if r.select.is_everyone() {
        let now = Instant::now();
        if let Some(t) = last_everyone.get(&r.guild_id) {
            let since = now.duration_since(*t);
            if since < EVERYONE_INTERVAL {
                let retry = (EVERYONE_INTERVAL - since).as_secs_f64();
                let mut meta = json!({ "guild_id": r.guild_id.to_string() });
                if let Some(n) = &r.nonce {
                    meta["nonce"] = json!(n);
                }
                push(
                    sref,
                    DispatchKind::RateLimited,
                    json!({ "opcode": Opcode::RequestGuildMembers.code(), "retry_after": (retry * 1000.0).ceil() / 1000.0, "meta": meta }),
                );
                return Ok(());
            }
        }
        last_everyone.insert(r.guild_id, now);
    }
    let storage = |_| (close::UNKNOWN_ERROR, "storage error".to_string());
    let (members, not_found) = match &r.select {
        MemberSelect::UserIds(ids) => {
            let found = s
                .store
                .members_by_id(
                    r.guild_id,
                    &ids.iter().map(|&i| UserId(i)).collect::<Vec<_>>(),
                )
                .await
                .map_err(storage)?;
            let missing: Vec<Value> = ids
                .iter()
                .filter(|id| !found.iter().any(|m| m.user.id == UserId(**id)))
                .map(|id| json!(id.to_string()))
                .collect();
            (found, Some(missing))
        }
        MemberSelect::Query { prefix, limit } if !(prefix.is_empty() && *limit == 0) => {
            let limit = (*limit).max(1);
            let found = s
                .store
                .members_named(r.guild_id, prefix, limit)
                .await
                .map_err(storage)?;
            (found, None)
        }
        MemberSelect::Query { .. } => {
            // Everyone, a page at a time: the chunk count is fixed up front from the count,
            // and exactly that many chunks are sent even if members join or leave meanwhile.
            let total = s.store.member_count(r.guild_id).await.map_err(storage)? as usize;
            let count = total.div_ceil(MEMBERS_PER_CHUNK).max(1);
            let mut after = 0;
            for index in 0..count {
                let page = s
                    .store
                    .members(r.guild_id, MEMBERS_PER_CHUNK as u32, after)
                    .await
                    .map_err(storage)?;
                if let Some(last) = page.last() {
                    after = last.user.id.get();
                }
                send_chunk(s, sref, &r, &page, index, count, None).await;
            }
            return Ok(());
        }
    };
    let count = members.len().div_ceil(MEMBERS_PER_CHUNK).max(1);
    for index in 0..count {
        let lo = (index * MEMBERS_PER_CHUNK).min(members.len());
        let hi = ((index + 1) * MEMBERS_PER_CHUNK).min(members.len());
        let nf = if index == 0 { not_found.as_ref() } else { None };
        send_chunk(s, sref, &r, &members[lo..hi], index, count, nf).await;
    }
    Ok(())
}

async fn send_chunk(
    s: &AppState,
    sref: &SessionRef,
    r: &RequestMembers,
    members: &[lodge_chat::Member],
    index: usize,
    count: usize,
    not_found: Option<&Vec<Value>>,
) {
    let mut d = json!({
        "guild_id": r.guild_id.to_string(),
        "members": members.iter().map(wire::member).collect::<Vec<_>>(),
        "chunk_index": index,
        "chunk_count": count,
    });
    if let Some(nf) = not_found {
        d["not_found"] = json!(nf);
    }
    if r.presences {
        let ids: Vec<UserId> = members.iter().map(|m| m.user.id).collect();
        d["presences"] = Value::Array(super::presence::snapshot(s, r.guild_id, &ids).await);
    }
    if let Some(n) = &r.nonce {
        d["nonce"] = json!(n);
    }
    push(sref, DispatchKind::GuildMembersChunk, d);
}
