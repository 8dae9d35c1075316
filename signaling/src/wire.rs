//! Discord JSON shapes of the guild model (REST v10 and gateway v10).

use lodge_chat::{Channel, ChannelKind, Guild, Member, Role, User};
use serde_json::{json, Value};

/// Unix milliseconds as ISO 8601 (`2026-11-28T10:00:00.000000+00:00`).
pub fn iso8601(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), Howard Hinnant's published algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}000+00:00",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        milli
    )
}

pub fn user(u: &User) -> Value {
    json!({
        "id": u.id.to_string(),
        "username": u.username,
        "discriminator": "0",
        "global_name": u.username,
        "avatar": null,
        "bot": u.bot,
        "system": false,
        "mfa_enabled": false,
        "verified": true,
        "flags": 0,
        "public_flags": 0,
    })
}

pub fn role(r: &Role) -> Value {
    json!({
        "id": r.id.to_string(),
        "name": r.name,
        "color": r.color,
        "colors": { "primary_color": r.color, "secondary_color": null, "tertiary_color": null },
        "hoist": false,
        "icon": null,
        "unicode_emoji": null,
        "position": r.position,
        "permissions": r.permissions.to_string(),
        "managed": false,
        "mentionable": false,
        "flags": 0,
    })
}

pub fn channel(c: &Channel) -> Value {
    let ows: Vec<Value> = c
        .overwrites
        .iter()
        .map(|o| json!({ "id": o.target.to_string(), "type": o.kind as u8, "allow": o.allow.to_string(), "deny": o.deny.to_string() }))
        .collect();
    let mut v = json!({
        "id": c.id.to_string(),
        "type": c.kind as u8,
        "guild_id": c.guild_id.to_string(),
        "name": c.name,
        "position": c.position,
        "parent_id": c.parent_id.map(|p| p.to_string()),
        "permission_overwrites": ows,
        "nsfw": false,
        "flags": 0,
    });
    match c.kind {
        ChannelKind::Voice => {
            v["bitrate"] = json!(c.bitrate.unwrap_or(64_000));
            v["user_limit"] = json!(c.user_limit.unwrap_or(0));
            // Lodge's extension (Discord's libraries ignore unknown fields).
            v["require_dave"] = json!(c.require_dave);
            v["rtc_region"] = Value::Null;
            v["last_message_id"] = Value::Null;
            v["rate_limit_per_user"] = json!(0);
        }
        ChannelKind::Text => {
            v["topic"] = json!(c.topic);
            v["last_message_id"] = Value::Null;
            v["rate_limit_per_user"] = json!(0);
        }
        ChannelKind::Category => {}
    }
    v
}

pub fn member(m: &Member) -> Value {
    json!({
        "user": user(&m.user),
        "nick": m.nick,
        "avatar": null,
        "roles": m.roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "joined_at": iso8601(m.joined_at),
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
    })
}

/// The REST guild object.
pub fn guild(g: &Guild, roles: &[Role]) -> Value {
    json!({
        "id": g.id.to_string(),
        "name": g.name,
        "icon": null,
        "splash": null,
        "discovery_splash": null,
        "owner_id": g.owner_id.to_string(),
        "afk_channel_id": null,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "roles": roles.iter().map(role).collect::<Vec<_>>(),
        "emojis": [],
        "stickers": [],
        "features": [],
        "mfa_level": 0,
        "application_id": null,
        "system_channel_id": null,
        "system_channel_flags": 0,
        "rules_channel_id": null,
        "vanity_url_code": null,
        "description": null,
        "banner": null,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "public_updates_channel_id": null,
        "nsfw_level": 0,
        "premium_progress_bar_enabled": false,
    })
}

/// Reaction emoji object for a unicode emoji (Lodge has no custom emoji yet).
pub fn emoji(name: &str) -> Value {
    json!({ "id": null, "name": name })
}

/// The message object. `referenced` is the replied-to message, when there is one.
pub fn message(m: &lodge_chat::Message, referenced: Option<&lodge_chat::Message>) -> Value {
    let mut v = json!({
        "id": m.id.to_string(),
        "type": if m.reference.is_some() { 19 } else { 0 },
        "channel_id": m.channel_id.to_string(),
        "author": user(&m.author),
        "content": m.content,
        "timestamp": iso8601(m.created_at),
        "edited_timestamp": m.edited_at.map(iso8601),
        "tts": m.tts,
        "mention_everyone": m.mention_everyone,
        "mentions": m.mentions.iter().map(user).collect::<Vec<_>>(),
        "mention_roles": m.mention_roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "mention_channels": [],
        "attachments": [],
        "embeds": [],
        "components": [],
        "sticker_items": [],
        "pinned": false,
        "flags": 0,
    });
    if let Some(n) = &m.nonce {
        v["nonce"] = json!(n);
    }
    if !m.reactions.is_empty() {
        v["reactions"] = Value::Array(
            m.reactions
                .iter()
                .map(|r| {
                    json!({
                        "count": r.count,
                        "count_details": { "burst": 0, "normal": r.count },
                        "me": r.me,
                        "me_burst": false,
                        "burst_colors": [],
                        "emoji": emoji(&r.emoji),
                    })
                })
                .collect(),
        );
    }
    if let Some((mid, cid)) = m.reference {
        v["message_reference"] = json!({ "type": 0, "message_id": mid.to_string(), "channel_id": cid.to_string(), "guild_id": m.guild_id.to_string() });
        v["referenced_message"] = referenced.map(|r| message(r, None)).unwrap_or(Value::Null);
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_dates() {
        assert_eq!(super::iso8601(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            super::iso8601(1_420_070_400_000),
            "2015-01-01T00:00:00.000000+00:00"
        );
        assert_eq!(
            super::iso8601(1_796_041_230_123),
            "2026-11-30T12:20:30.123000+00:00"
        );
        assert_eq!(
            super::iso8601(951_782_400_000),
            "2000-02-29T00:00:00.000000+00:00"
        );
    }
}
