//! Authorization holes of issue 13, each tried as an attacker would through the REST API and
//! the gateway: the refusal (status, Discord code) and that nothing changed.

mod common;

use std::time::Duration;

use common::*;
use lodge_ids::GuildId;
use serde_json::{json, Value};

const VIEW_CHANNEL: u64 = 1 << 10;
const READ_MESSAGE_HISTORY: u64 = 1 << 16;
const ADMINISTRATOR: u64 = 1 << 3;
const KICK_MEMBERS: u64 = 1 << 1;
const BAN_MEMBERS: u64 = 1 << 2;
const MANAGE_CHANNELS: u64 = 1 << 4;
const MANAGE_NICKNAMES: u64 = 1 << 27;
const MANAGE_ROLES: u64 = 1 << 28;

fn code(v: &Value) -> Option<u64> {
    v["code"].as_u64()
}

/// Create a channel as `token` (owner) with `@everyone` denied `deny` bits; returns its id.
async fn channel_denying(
    n: &Node,
    token: &str,
    g: &str,
    name: &str,
    kind: u8,
    deny: u64,
) -> String {
    let (st, c) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(token),
            Some(json!({ "name": name, "type": kind,
                "permission_overwrites": [{ "id": g, "type": 0, "allow": "0", "deny": deny.to_string() }] })),
        )
        .await;
    assert_eq!(st, 201, "{c}");
    c["id"].as_str().unwrap().to_string()
}

/// A role with `bits` at `position`, given to each of `members`; returns its id.
async fn role(
    n: &Node,
    owner: &str,
    g: &str,
    name: &str,
    bits: u64,
    position: i64,
    members: &[&str],
) -> String {
    let (st, r) = n
        .req(
            "POST",
            &format!("/guilds/{g}/roles"),
            Some(owner),
            Some(json!({ "name": name, "permissions": bits.to_string() })),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let (st, r) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/roles/{id}"),
            Some(owner),
            Some(json!({ "position": position })),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    for m in members {
        let (st, v) = n
            .req(
                "PUT",
                &format!("/guilds/{g}/members/{m}/roles/{id}"),
                Some(owner),
                None,
            )
            .await;
        assert_eq!(st, 204, "{v}");
    }
    id
}

async fn post(n: &Node, token: &str, channel: &str, body: Value) -> (u16, Value) {
    n.req(
        "POST",
        &format!("/channels/{channel}/messages"),
        Some(token),
        Some(body),
    )
    .await
}

/// Item 9: a reply cannot reach into a channel its author cannot read, and a reply into one is
/// rendered without the hidden message for everyone who cannot read it.
#[tokio::test]
async fn replies_never_carry_messages_the_reader_cannot_see() {
    let n = node().await;
    let (_, owner) = n.user("owner").await;
    let (_, pleb) = n.user("pleb").await;
    let (g, general, _) = n.guild(&owner).await;
    n.invite_and_join(&owner, &general, &pleb).await;
    let staff = channel_denying(&n, &owner, &g, "staff", 0, VIEW_CHANNEL).await;
    let news = channel_denying(&n, &owner, &g, "news", 0, READ_MESSAGE_HISTORY).await;
    let (_, secret) = post(
        &n,
        &owner,
        &staff,
        json!({ "content": "the launch code is 0000" }),
    )
    .await;
    let secret_id = secret["id"].as_str().unwrap().to_string();
    let (_, old_news) = post(&n, &owner, &news, json!({ "content": "yesterday's news" })).await;
    let (mut wp, _) = gateway(&n, &pleb).await;

    // A reply naming the hidden message answers as if it did not exist, and posts nothing.
    let reach = json!({ "content": "what does it say?",
        "message_reference": { "message_id": secret_id, "channel_id": staff } });
    let (st, v) = post(&n, &pleb, &general, reach.clone()).await;
    assert_eq!((st, code(&v)), (400, Some(50035)), "{v}");
    assert!(!v.to_string().contains("launch"), "{v}");
    // With fail_if_not_exists: false it is an ordinary message, with no trace of the secret.
    let mut soft = reach.clone();
    soft["message_reference"]["fail_if_not_exists"] = json!(false);
    let (st, m) = post(&n, &pleb, &general, soft).await;
    assert_eq!(st, 200, "{m}");
    assert!(
        m.get("message_reference").is_none() && m.get("referenced_message").is_none(),
        "{m}"
    );
    assert_eq!(m["type"], 0);
    // A channel the author sees but may not read the history of: Missing Permissions.
    let (st, v) = post(
        &n,
        &pleb,
        &general,
        json!({ "content": "re",
        "message_reference": { "message_id": old_news["id"], "channel_id": news } }),
    )
    .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");

    // The owner may reply across channels; what others get back depends on what they can read.
    let (st, reply) = post(
        &n,
        &owner,
        &general,
        json!({ "content": "see staff",
        "message_reference": { "message_id": secret_id, "channel_id": staff } }),
    )
    .await;
    assert_eq!(st, 200, "{reply}");
    assert_eq!(
        reply["referenced_message"]["content"], "the launch code is 0000",
        "the owner reads it"
    );
    let reply_id = reply["id"].as_str().unwrap().to_string();
    // The dispatch goes to everyone in #general: pleb's carries no message from #staff.
    let d = loop {
        let d = dispatch(&mut wp, "MESSAGE_CREATE").await;
        if d["id"] == reply_id.as_str() {
            break d;
        }
    };
    assert!(d["referenced_message"].is_null(), "{d}");
    assert_eq!(d["message_reference"]["message_id"], secret_id.as_str());
    assert!(!d.to_string().contains("launch"), "{d}");
    // History and the single message: null for pleb, the message for the owner.
    let (_, hist) = n
        .req(
            "GET",
            &format!("/channels/{general}/messages"),
            Some(&pleb),
            None,
        )
        .await;
    assert!(!hist.to_string().contains("launch"), "{hist}");
    let mine = hist
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == reply_id.as_str())
        .unwrap();
    assert!(mine["referenced_message"].is_null(), "{mine}");
    let (_, one) = n
        .req(
            "GET",
            &format!("/channels/{general}/messages/{reply_id}"),
            Some(&pleb),
            None,
        )
        .await;
    assert!(
        one["referenced_message"].is_null() && !one.to_string().contains("launch"),
        "{one}"
    );
    let (_, hist) = n
        .req(
            "GET",
            &format!("/channels/{general}/messages"),
            Some(&owner),
            None,
        )
        .await;
    assert!(
        hist.to_string().contains("launch"),
        "the owner still sees it"
    );
    // Search renders the same way.
    let (_, found) = n
        .req(
            "GET",
            &format!("/guilds/{g}/messages/search?content=staff"),
            Some(&pleb),
            None,
        )
        .await;
    assert_eq!(found["total_results"], 1, "{found}");
    assert!(!found.to_string().contains("launch"), "{found}");

    // A reply within one channel still carries its referenced message, in REST and dispatch.
    let (_, first) = post(&n, &owner, &general, json!({ "content": "lunch at noon" })).await;
    let (st, r) = post(
        &n,
        &pleb,
        &general,
        json!({ "content": "yes",
        "message_reference": { "message_id": first["id"] } }),
    )
    .await;
    assert_eq!(
        (st, r["referenced_message"]["content"].as_str()),
        (200, Some("lunch at noon")),
        "{r}"
    );
    let d = loop {
        let d = dispatch(&mut wp, "MESSAGE_CREATE").await;
        if d["id"] == r["id"] {
            break d;
        }
    };
    assert_eq!(d["referenced_message"]["content"], "lunch at noon");
}

/// Item 10: the overwrites of a new channel follow the rules of PUT overwrite.
#[tokio::test]
async fn creating_a_channel_cannot_grant_what_the_creator_lacks() {
    let n = node().await;
    let (_, owner) = n.user("owner").await;
    let (pleb_id, pleb) = n.user("pleb").await;
    let (g, general, _) = n.guild(&owner).await;
    n.invite_and_join(&owner, &general, &pleb).await;
    role(&n, &owner, &g, "builders", MANAGE_CHANNELS, 2, &[&pleb_id]).await;
    let count = |n| channel_count(n, &owner, &g);
    let before = count(&n).await;
    let grab = |allow: u64, target: &str, kind: u8| json!({ "name": "mine", "permission_overwrites": [{ "id": target, "type": kind, "allow": allow.to_string(), "deny": "0" }] });
    // MANAGE_CHANNELS alone: no overwrites at all (PUT overwrite needs MANAGE_ROLES).
    let (st, v) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&pleb),
            Some(grab(ADMINISTRATOR, &pleb_id, 1)),
        )
        .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    let (st, v) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&pleb),
            Some(grab(VIEW_CHANNEL, &pleb_id, 1)),
        )
        .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    // With MANAGE_ROLES too: still only bits the creator holds.
    role(&n, &owner, &g, "managers", MANAGE_ROLES, 3, &[&pleb_id]).await;
    let (st, v) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&pleb),
            Some(grab(ADMINISTRATOR, &pleb_id, 1)),
        )
        .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    let (st, v) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&pleb),
            Some(grab(KICK_MEMBERS, &g, 0)),
        )
        .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    // Targets must exist in the guild.
    let (st, v) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&pleb),
            Some(grab(VIEW_CHANNEL, "12345", 0)),
        )
        .await;
    assert_eq!((st, code(&v)), (404, Some(10011)), "{v}");
    let (st, v) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&pleb),
            Some(grab(VIEW_CHANNEL, "12345", 1)),
        )
        .await;
    assert_eq!((st, code(&v)), (404, Some(10007)), "{v}");
    assert_eq!(count(&n).await, before, "a refused create makes no channel");
    // Bits the creator holds are fine.
    let (st, c) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&pleb),
            Some(grab(VIEW_CHANNEL, &pleb_id, 1)),
        )
        .await;
    assert_eq!(st, 201, "{c}");
    assert_eq!(
        c["permission_overwrites"][0]["allow"],
        VIEW_CHANNEL.to_string()
    );
    assert_eq!(count(&n).await, before + 1);
}

/// Item 11: kick, nickname and role changes of another member need a higher top role.
#[tokio::test]
async fn kick_nick_and_roles_respect_the_hierarchy() {
    let n = node().await;
    let (_, owner) = n.user("owner").await;
    let (a_id, a) = n.user("moda").await;
    let (b_id, _b) = n.user("modb").await;
    let (p_id, _p) = n.user("pleb").await;
    let (g, general, _) = n.guild(&owner).await;
    for t in [&a, &_b, &_p] {
        n.invite_and_join(&owner, &general, t).await;
    }
    let bits = KICK_MEMBERS | MANAGE_NICKNAMES | MANAGE_ROLES;
    let mods = role(&n, &owner, &g, "mods", bits, 5, &[&a_id, &b_id]).await;
    let low = role(&n, &owner, &g, "low", 0, 1, &[]).await;
    let member = |id: &str| get(&n, &owner, format!("/guilds/{g}/members/{id}"));

    // An equal: refused, unchanged.
    let (st, v) = n
        .req(
            "DELETE",
            &format!("/guilds/{g}/members/{b_id}"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    let (st, v) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{b_id}"),
            Some(&a),
            Some(json!({ "nick": "demoted" })),
        )
        .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    let (st, v) = n
        .req(
            "PUT",
            &format!("/guilds/{g}/members/{b_id}/roles/{low}"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    let (st, v) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{b_id}"),
            Some(&a),
            Some(json!({ "roles": [mods, low] })),
        )
        .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    let (st, m) = member(&b_id).await;
    assert_eq!(
        (st, m["nick"].clone(), m["roles"].clone()),
        (200, Value::Null, json!([mods]))
    );
    // The owner is above everyone.
    let (st, _) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{}", user_id_of(&n, &owner).await),
            Some(&a),
            Some(json!({ "nick": "x" })),
        )
        .await;
    assert_eq!(st, 403);
    // A nick and a role change refused together leave both as they were.
    let (st, _) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{p_id}"),
            Some(&a),
            Some(json!({ "nick": "ok", "roles": [mods] })),
        )
        .await;
    assert_eq!(st, 403, "mods is not below moda's top role");
    assert_eq!(
        member(&p_id).await.1["nick"],
        Value::Null,
        "nothing changed"
    );
    // Below: allowed.
    let (st, m) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{p_id}"),
            Some(&a),
            Some(json!({ "nick": "Plebbo", "roles": [low] })),
        )
        .await;
    assert_eq!(
        (st, m["nick"].as_str(), m["roles"].clone()),
        (200, Some("Plebbo"), json!([low])),
        "{m}"
    );
    let (st, _) = n
        .req(
            "DELETE",
            &format!("/guilds/{g}/members/{p_id}"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(member(&p_id).await.0, 404);
    // The owner acts on anyone below.
    let (st, _) = n
        .req(
            "DELETE",
            &format!("/guilds/{g}/members/{b_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(st, 204);
}

/// A member edit that is refused in its last part (the move) changes nothing before it.
#[tokio::test]
async fn a_refused_member_edit_changes_nothing() {
    const CONNECT: u64 = 1 << 20;
    let n = node().await;
    let (_, owner) = n.user("owner").await;
    let (p_id, pleb) = n.user("pleb").await;
    let (_, other) = n.user("other").await;
    let (g, general, voice) = n.guild(&owner).await;
    n.invite_and_join(&owner, &general, &pleb).await;
    n.invite_and_join(&owner, &general, &other).await;
    let locked = channel_denying(&n, &owner, &g, "locked", 2, CONNECT).await;
    let helpers = role(&n, &owner, &g, "helpers", 0, 1, &[]).await;
    let (mut wp, _) = gateway(&n, &pleb).await;
    voice_join(&mut wp, &g, &voice, false).await;
    let member = format!("/guilds/{g}/members/{p_id}");
    let edit = json!({ "nick": "moved", "roles": [helpers], "channel_id": locked });
    let (st, v) = n.req("PATCH", &member, Some(&owner), Some(edit)).await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    let (_, m) = n.req("GET", &member, Some(&owner), None).await;
    assert_eq!(
        (m["nick"].clone(), m["roles"].clone()),
        (Value::Null, json!([])),
        "{m}"
    );
    let (_, states) = n
        .req(
            "GET",
            &format!("/guilds/{g}/voice-states"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(states[0]["channel_id"], voice.as_str());
    // Server mute of someone not in voice: refused before the nick changes.
    let o_id = user_id_of(&n, &other).await;
    let (st, v) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{o_id}"),
            Some(&owner),
            Some(json!({ "nick": "muted", "mute": true })),
        )
        .await;
    assert_eq!((st, code(&v)), (400, Some(40032)), "{v}");
    let (_, m) = n
        .req(
            "GET",
            &format!("/guilds/{g}/members/{o_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(m["nick"], Value::Null);
}

async fn channel_count(n: &Node, token: &str, g: &str) -> usize {
    let (_, v) = n
        .req("GET", &format!("/guilds/{g}/channels"), Some(token), None)
        .await;
    v.as_array().unwrap().len()
}

async fn get(n: &Node, token: &str, path: String) -> (u16, Value) {
    n.req("GET", &path, Some(token), None).await
}

async fn user_id_of(n: &Node, token: &str) -> String {
    n.req("GET", "/users/@me", Some(token), None).await.1["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Item 11: bans in Discord's shapes; the banned member is removed, leaves voice, cannot
/// rejoin by invite until unbanned.
#[tokio::test]
async fn bans_remove_disconnect_and_keep_out() {
    let n = node().await;
    let (_, owner) = n.user("owner").await;
    let (m_id, moder) = n.user("moder").await;
    let (peer_id, peer) = n.user("peer").await;
    let (v_id, victim) = n.user("victim").await;
    let (o_id, _) = n.user("outsider").await;
    let (_, bystander) = n.user("bystander").await;
    let (g, general, voice) = n.guild(&owner).await;
    for t in [&moder, &peer, &victim, &bystander] {
        n.invite_and_join(&owner, &general, t).await;
    }
    role(&n, &owner, &g, "mods", BAN_MEMBERS, 5, &[&m_id, &peer_id]).await;
    let (mut wo, _) = gateway(&n, &owner).await;
    let (mut wb, _) = gateway(&n, &bystander).await;
    let (mut wv, ready) = gateway(&n, &victim).await;
    let session = ready["session_id"].as_str().unwrap().to_string();
    let (_, spam) = post(
        &n,
        &victim,
        &general,
        json!({ "content": "buy cheap gold" }),
    )
    .await;
    let (token, endpoint) = voice_join(&mut wv, &g, &voice, false).await;
    let (mut vv, _) = voice_identify(&endpoint, &g, &v_id, &session, &token)
        .await
        .unwrap();
    assert_eq!(
        dispatch(&mut wo, "VOICE_STATE_UPDATE").await["channel_id"],
        voice.as_str()
    );
    let bans = format!("/guilds/{g}/bans");

    // Without BAN_MEMBERS, against an equal, against the owner: refused, nothing changed.
    let (st, v) = n
        .req("PUT", &format!("{bans}/{m_id}"), Some(&victim), None)
        .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    let (st, v) = n
        .req("PUT", &format!("{bans}/{peer_id}"), Some(&moder), None)
        .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    let (st, v) = n
        .req(
            "PUT",
            &format!("{bans}/{}", user_id_of(&n, &owner).await),
            Some(&moder),
            None,
        )
        .await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    let (st, v) = n.req("GET", &bans, Some(&victim), None).await;
    assert_eq!((st, code(&v)), (403, Some(50013)), "{v}");
    let (st, v) = n
        .req("GET", &format!("{bans}/{peer_id}"), Some(&owner), None)
        .await;
    assert_eq!((st, code(&v)), (404, Some(10026)), "{v}");
    assert_eq!(
        n.req(
            "GET",
            &format!("/guilds/{g}/members/{peer_id}"),
            Some(&owner),
            None
        )
        .await
        .0,
        200
    );
    let (st, v) = n
        .req(
            "PUT",
            &format!("{bans}/{m_id}"),
            Some(&moder),
            Some(json!({ "delete_message_seconds": 604801 })),
        )
        .await;
    assert_eq!((st, code(&v)), (400, Some(50035)), "{v}");
    let (st, v) = n
        .req("GET", &format!("{bans}?limit=abc"), Some(&owner), None)
        .await;
    assert_eq!((st, code(&v)), (400, Some(50035)), "{v}");

    // The ban, with a reason and an hour of messages deleted.
    let res = n
        .http
        .put(n.url(&format!("{bans}/{v_id}")))
        .header("Authorization", &moder)
        .header("X-Audit-Log-Reason", "gold%20spam")
        .json(&json!({ "delete_message_seconds": 3600 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
    let d = dispatch(&mut wv, "GUILD_DELETE").await;
    assert_eq!(d["id"], g.as_str());
    let (code_, _) = closed(&mut vv).await;
    assert_eq!(
        code_, 4014,
        "the banned member's voice connection is closed"
    );
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 4 {
        let f = json(&mut wo).await;
        if let Some(t) = f["t"].as_str().filter(|t| {
            [
                "GUILD_BAN_ADD",
                "GUILD_MEMBER_REMOVE",
                "MESSAGE_DELETE_BULK",
                "VOICE_STATE_UPDATE",
            ]
            .contains(t)
        }) {
            seen.insert(t.to_string(), f["d"].clone());
        }
    }
    assert_eq!(seen["GUILD_BAN_ADD"]["user"]["id"], v_id.as_str());
    assert_eq!(seen["GUILD_BAN_ADD"]["guild_id"], g.as_str());
    assert_eq!(seen["GUILD_MEMBER_REMOVE"]["user"]["id"], v_id.as_str());
    assert_eq!(seen["MESSAGE_DELETE_BULK"]["ids"], json!([spam["id"]]));
    assert!(seen["VOICE_STATE_UPDATE"]["channel_id"].is_null());
    // A member without BAN_MEMBERS/VIEW_AUDIT_LOG sees the member leave, not the ban (Discord).
    let mut before = Vec::new();
    let removed = loop {
        let f = json(&mut wb).await;
        if f["t"] == "GUILD_MEMBER_REMOVE" {
            break f["d"].clone();
        }
        before.push(f["t"].clone());
    };
    assert_eq!(removed["user"]["id"], v_id.as_str());
    assert!(!before.contains(&json!("GUILD_BAN_ADD")), "{before:?}");
    let (_, states) = n
        .req(
            "GET",
            &format!("/guilds/{g}/voice-states"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(states, json!([]));
    assert_eq!(
        n.req(
            "GET",
            &format!("/guilds/{g}/members/{v_id}"),
            Some(&owner),
            None
        )
        .await
        .1["code"],
        10007
    );
    let (_, hist) = n
        .req(
            "GET",
            &format!("/channels/{general}/messages"),
            Some(&owner),
            None,
        )
        .await;
    assert!(!hist.to_string().contains("cheap gold"));
    let (st, b) = n
        .req("GET", &format!("{bans}/{v_id}"), Some(&moder), None)
        .await;
    assert_eq!(
        (st, b["reason"].as_str(), b["user"]["id"].as_str()),
        (200, Some("gold spam"), Some(v_id.as_str())),
        "{b}"
    );

    // Back by invite: 40007, and the invite is not used up by the refusal.
    let (_, inv) = n
        .req(
            "POST",
            &format!("/channels/{general}/invites"),
            Some(&owner),
            Some(json!({ "max_uses": 1 })),
        )
        .await;
    let code_s = inv["code"].as_str().unwrap().to_string();
    let (st, v) = n
        .req("POST", &format!("/invites/{code_s}"), Some(&victim), None)
        .await;
    assert_eq!((st, code(&v)), (403, Some(40007)), "{v}");
    assert_eq!(v["message"], "The user is banned from this guild.");
    assert_eq!(
        n.req(
            "GET",
            &format!("/guilds/{g}/members/{v_id}"),
            Some(&owner),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        n.req("GET", &format!("/invites/{code_s}"), None, None)
            .await
            .1["uses"],
        0
    );

    // Someone who is not a member can be banned too; an unknown user cannot.
    assert_eq!(
        n.req("PUT", &format!("{bans}/{o_id}"), Some(&moder), None)
            .await
            .0,
        204
    );
    let (st, v) = n
        .req("PUT", &format!("{bans}/4242"), Some(&moder), None)
        .await;
    assert_eq!((st, code(&v)), (404, Some(10013)), "{v}");
    let (st, list) = n.req("GET", &bans, Some(&owner), None).await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["user"]["id"].as_str().unwrap())
        .collect();
    let mut want = vec![v_id.as_str(), o_id.as_str()];
    want.sort_by_key(|s| s.parse::<u64>().unwrap());
    assert_eq!(ids, want);
    let (_, page) = n
        .req(
            "GET",
            &format!("{bans}?limit=1&after={}", want[0]),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["user"]["id"], want[1]);

    // Unban: GUILD_BAN_REMOVE, and the invite works again.
    assert_eq!(
        n.req("DELETE", &format!("{bans}/{v_id}"), Some(&moder), None)
            .await
            .0,
        204
    );
    assert_eq!(
        dispatch(&mut wo, "GUILD_BAN_REMOVE").await["user"]["id"],
        v_id.as_str()
    );
    let (st, v) = n
        .req("DELETE", &format!("{bans}/{v_id}"), Some(&moder), None)
        .await;
    assert_eq!((st, code(&v)), (404, Some(10026)), "{v}");
    let (st, v) = n
        .req("POST", &format!("/invites/{code_s}"), Some(&victim), None)
        .await;
    assert_eq!(st, 200, "{v}");
    let mut before = Vec::new();
    loop {
        let f = json(&mut wb).await;
        if f["t"] == "GUILD_MEMBER_ADD" {
            break;
        }
        before.push(f["t"].clone());
    }
    assert!(
        !before.contains(&json!("GUILD_BAN_ADD")) && !before.contains(&json!("GUILD_BAN_REMOVE")),
        "{before:?}"
    );
}

/// Item 12: who is in a voice channel is visible only to those who may view the channel.
#[tokio::test]
async fn hidden_voice_channels_do_not_reveal_who_is_in_them() {
    let n = node().await;
    let (owner_uid, owner) = n.user("owner").await;
    let (_, pleb) = n.user("pleb").await;
    let (g, general, voice) = n.guild(&owner).await;
    n.invite_and_join(&owner, &general, &pleb).await;
    let hidden = channel_denying(&n, &owner, &g, "war room", 2, VIEW_CHANNEL).await;
    let (mut wp, _) = gateway(&n, &pleb).await;
    let (mut wo, ready) = gateway(&n, &owner).await;
    let session = ready["session_id"].as_str().unwrap().to_string();

    let (token, endpoint) = voice_join(&mut wo, &g, &hidden, false).await;
    let (mut vo, _) = voice_identify(&endpoint, &g, &owner_uid, &session, &token)
        .await
        .unwrap();
    let client = VoiceClient::new(1).await;
    send(&mut vo, json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": client.offer }, "slots": 1 } })).await;
    loop {
        if json(&mut vo).await["op"] == 4 {
            break;
        }
    }
    // REST: voice states, media stats, the live quality view.
    let (_, states) = n
        .req(
            "GET",
            &format!("/guilds/{g}/voice-states"),
            Some(&pleb),
            None,
        )
        .await;
    assert_eq!(states, json!([]));
    let (_, states) = n
        .req(
            "GET",
            &format!("/guilds/{g}/voice-states"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(states[0]["channel_id"], hidden.as_str());
    // The node report is shared and rebuilt at most once a second: wait for one that holds
    // the join.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, stats) = n.req("GET", "/voice/stats", Some(&owner), None).await;
        if stats["peers"].as_array().is_some_and(|p| p.len() == 1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, stats) = n.req("GET", "/voice/stats", Some(&pleb), None).await;
    assert_eq!(
        (stats["peers"].clone(), stats["participants"].as_u64()),
        (json!([]), Some(1)),
        "{stats}"
    );
    let (_, q) = n.req("GET", "/quality/node", Some(&pleb), None).await;
    assert_eq!(q["channels"], json!([]), "{q}");
    let (_, q) = n.req("GET", "/quality/node", Some(&owner), None).await;
    assert_eq!(q["channels"][0]["id"], hidden.as_str());
    // GUILD_CREATE of a new session.
    let mut w2 = ws(&n.gateway_url()).await;
    json(&mut w2).await;
    send(
        &mut w2,
        json!({ "op": 2, "d": { "token": pleb, "intents": 131071, "properties": {} } }),
    )
    .await;
    let gc = dispatch(&mut w2, "GUILD_CREATE").await;
    assert_eq!(gc["voice_states"], json!([]), "{}", gc["voice_states"]);

    // Leaving: the call summary is the owner's to see, not pleb's; and neither the join nor
    // the leave reached pleb's gateway (the first voice state pleb hears is the visible join).
    send(
        &mut wo,
        json!({ "op": 4, "d": { "guild_id": g, "channel_id": null } }),
    )
    .await;
    assert_eq!(closed(&mut vo).await.0, 4014);
    let mut calls = Value::Null;
    for _ in 0..50 {
        calls = n.req("GET", "/quality/calls", Some(&owner), None).await.1;
        if !calls.as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(calls[0]["channel_id"], hidden.as_str(), "{calls}");
    let (_, theirs) = n.req("GET", "/quality/calls", Some(&pleb), None).await;
    assert_eq!(theirs, json!([]));
    let (_, theirs) = n
        .req(
            "GET",
            &format!("/quality/calls?channel_id={hidden}"),
            Some(&pleb),
            None,
        )
        .await;
    assert_eq!(theirs, json!([]));
    voice_join(&mut wo, &g, &voice, false).await;
    let seen = dispatch(&mut wp, "VOICE_STATE_UPDATE").await;
    assert_eq!(
        seen["channel_id"],
        voice.as_str(),
        "pleb heard of the hidden channel: {seen}"
    );
}

/// Item 14: bad input gets Discord's form errors and changes nothing.
#[tokio::test]
async fn names_limits_and_query_strings_are_validated() {
    let n = node().await;
    let (admin_id, owner) = n.user("admin").await;
    let (g, general, _) = n.guild(&owner).await;
    let chans = |n| channel_count(n, &owner, &g);
    let before = chans(&n).await;
    for body in [
        json!({ "name": "loud", "type": 2, "bitrate": 1 }),
        json!({ "name": "loud", "type": 2, "bitrate": 1_000_000 }),
        json!({ "name": "crowd", "type": 2, "user_limit": 500 }),
        json!({ "name": "evil\u{202E}txt.exe" }),
        json!({ "name": "a\u{2066}b" }),
        json!({ "name": "line\nbreak" }),
    ] {
        let (st, v) = n
            .req(
                "POST",
                &format!("/guilds/{g}/channels"),
                Some(&owner),
                Some(body.clone()),
            )
            .await;
        assert_eq!((st, code(&v)), (400, Some(50035)), "{body} → {v}");
    }
    assert_eq!(chans(&n).await, before, "refused creates make nothing");
    let (st, v) = n
        .req(
            "POST",
            "/guilds",
            Some(&owner),
            Some(json!({ "name": "gu\u{202D}ild" })),
        )
        .await;
    assert_eq!((st, code(&v)), (400, Some(50035)), "{v}");
    let (st, v) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}"),
            Some(&owner),
            Some(json!({ "name": "x\u{200F}y" })),
        )
        .await;
    assert_eq!((st, code(&v)), (400, Some(50035)), "{v}");
    let (st, v) = n
        .req(
            "POST",
            &format!("/guilds/{g}/roles"),
            Some(&owner),
            Some(json!({ "name": "ad\u{202E}min" })),
        )
        .await;
    assert_eq!((st, code(&v)), (400, Some(50035)), "{v}");
    let (st, v) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{admin_id}"),
            Some(&owner),
            Some(json!({ "nick": "ni\u{0007}ck" })),
        )
        .await;
    assert_eq!((st, code(&v)), (400, Some(50035)), "{v}");
    assert_eq!(
        n.req("GET", &format!("/guilds/{g}"), Some(&owner), None)
            .await
            .1["name"],
        "Test Den"
    );
    // A good voice channel is still fine.
    let (st, c) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&owner),
            Some(json!({ "name": "ok", "type": 2, "bitrate": 96000, "user_limit": 99 })),
        )
        .await;
    assert_eq!(
        (st, c["bitrate"].as_u64(), c["user_limit"].as_u64()),
        (201, Some(96000), Some(99)),
        "{c}"
    );

    // Usernames fold: a fullwidth or upper-case spelling is the same name, on register and login.
    for shadow in ["ａｄｍｉｎ", "ADMIN", "ad\u{202E}min"] {
        let (st, v) = n
            .req(
                "POST",
                "/auth/register",
                None,
                Some(json!({ "username": shadow, "password": "password-123" })),
            )
            .await;
        assert_eq!((st, code(&v)), (400, Some(50035)), "{shadow}: {v}");
    }
    let (st, v) = n
        .req(
            "POST",
            "/auth/login",
            None,
            Some(json!({ "username": "ＡＤＭＩＮ", "password": "password-123" })),
        )
        .await;
    assert_eq!(
        (st, v["user"]["id"].as_str()),
        (200, Some(admin_id.as_str())),
        "{v}"
    );

    // Bad query strings: Discord's JSON error, not axum's plain text.
    for path in [
        format!("/channels/{general}/messages?limit=abc"),
        format!("/guilds/{g}/members?limit=-1"),
        format!("/guilds/{g}/messages/search?limit=x"),
    ] {
        let (st, v) = n.req("GET", &path, Some(&owner), None).await;
        assert_eq!((st, code(&v)), (400, Some(50035)), "{path}: {v}");
        assert_eq!(v["message"], "Invalid Form Body");
    }
}

/// Item 16: the data directory is created for its owner only.
#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("fresh/data");
    let d = data.clone();
    let _n = node_with(move |a| a.data_dir = Some(d)).await;
    for dir in [&data, &base.path().join("fresh")] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
}

/// Item 18: the web client's pages carry their security headers; every response says nosniff;
/// the pages need nothing the policy forbids (no inline script or style).
#[tokio::test]
async fn web_pages_carry_security_headers() {
    let n = node().await;
    for page in ["/", "/dashboard"] {
        let r = n
            .http
            .get(format!("{}{page}", n.base))
            .send()
            .await
            .unwrap();
        let h = r.headers().clone();
        let csp = h["content-security-policy"].to_str().unwrap().to_string();
        for want in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "connect-src 'self' ws: wss:",
            "object-src 'none'",
        ] {
            assert!(csp.contains(want), "{page}: {csp} lacks {want}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let html = r.text().await.unwrap();
        assert!(
            !html.contains(" style="),
            "{page} has an inline style attribute"
        );
        assert!(!html.contains("<style"), "{page} has an inline style block");
        for tag in html.split("<script").skip(1) {
            assert!(
                tag.trim_start().starts_with("type=\"module\" src=")
                    || tag.trim_start().starts_with("src="),
                "{page}: inline script"
            );
        }
    }
    for path in [
        "/app.js",
        "/dashboard.js",
        "/dashboard.css",
        "/style.css",
        "/api/v10/gateway",
        "/api/v10/nope",
        "/healthz",
    ] {
        let r = n
            .http
            .get(format!("{}{path}", n.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    let r = n
        .http
        .get(format!("{}/dashboard.css", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(".legend i.in"));
}

/// A voice channel only `@everyone` cannot view and `role` can; returns its id.
async fn voice_channel_for(n: &Node, owner: &str, g: &str, name: &str, role: &str) -> String {
    channel_for(n, owner, g, name, 2, role).await
}

/// A channel of `kind` that `@everyone` cannot view and `role` can; returns its id.
async fn channel_for(n: &Node, owner: &str, g: &str, name: &str, kind: u8, role: &str) -> String {
    let (st, c) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(owner),
            Some(
                json!({ "name": name, "type": kind, "permission_overwrites": [
                { "id": g, "type": 0, "allow": "0", "deny": VIEW_CHANNEL.to_string() },
                { "id": role, "type": 0, "allow": VIEW_CHANNEL.to_string(), "deny": "0" }] }),
            ),
        )
        .await;
    assert_eq!(st, 201, "{c}");
    c["id"].as_str().unwrap().to_string()
}

/// A voice move from a channel some members may view to one they may not: those who may view
/// only the channel left hear that the user left it (`channel_id: null`), those who may view
/// both hear the move, those who may view neither hear nothing. By op 4 and by a moderator's
/// move alike.
#[tokio::test]
async fn voice_moves_tell_each_member_what_they_may_see() {
    let n = node().await;
    let (_, owner) = n.user("owner").await;
    let (mover_id, mover) = n.user("mover").await;
    let (only_a_id, only_a) = n.user("only_a").await;
    let (_, neither) = n.user("neither").await;
    let (g, general, public) = n.guild(&owner).await;
    for t in [&mover, &only_a, &neither] {
        n.invite_and_join(&owner, &general, t).await;
    }
    let sees_a = role(&n, &owner, &g, "sees a", 0, 1, &[&mover_id, &only_a_id]).await;
    let sees_b = role(&n, &owner, &g, "sees b", 0, 2, &[&mover_id]).await;
    let a = voice_channel_for(&n, &owner, &g, "a", &sees_a).await;
    let b = voice_channel_for(&n, &owner, &g, "b", &sees_b).await;
    // The owner may view both channels.
    let (mut wo, _) = gateway(&n, &owner).await;
    let (mut wa, _) = gateway(&n, &only_a).await;
    let (mut wn, _) = gateway(&n, &neither).await;
    let (mut wm, ready) = gateway(&n, &mover).await;
    let session = ready["session_id"].as_str().unwrap().to_string();

    async fn heard(w: &mut Ws) -> (Value, Value, Value) {
        let d = dispatch(w, "VOICE_STATE_UPDATE").await;
        (
            d["user_id"].clone(),
            d["channel_id"].clone(),
            d["session_id"].clone(),
        )
    }
    let moved = |ch: &str| (json!(mover_id), json!(ch), json!(session));
    let left = (json!(mover_id), Value::Null, json!(session));

    voice_join(&mut wm, &g, &a, false).await;
    assert_eq!(heard(&mut wa).await, moved(&a), "the join of a");
    assert_eq!(heard(&mut wo).await, moved(&a));
    // Op 4 from a to b.
    voice_join(&mut wm, &g, &b, false).await;
    assert_eq!(
        heard(&mut wa).await,
        left,
        "only_a must hear the mover leave a"
    );
    assert_eq!(heard(&mut wo).await, moved(&b), "the owner hears the move");
    // A moderator's moves: b to a, then a to b.
    for (to, only_a_hears) in [(&a, moved(&a)), (&b, left.clone())] {
        let (st, v) = n
            .req(
                "PATCH",
                &format!("/guilds/{g}/members/{mover_id}"),
                Some(&owner),
                Some(json!({ "channel_id": to })),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(heard(&mut wa).await, only_a_hears, "moved to {to}");
        assert_eq!(heard(&mut wo).await, moved(to));
    }
    // Into a channel everyone may view: the first voice state `neither` hears is this one.
    voice_join(&mut wm, &g, &public, false).await;
    assert_eq!(heard(&mut wa).await, moved(&public));
    assert_eq!(
        heard(&mut wn).await,
        moved(&public),
        "neither heard of a or b"
    );
}

/// Item 3 (presence): once a member is kicked or banned, nothing more about their presence
/// reaches the guild, not even a presence update whose guild list was read before the removal
/// (published after GUILD_MEMBER_REMOVE, as a broadcast racing the kick would be).
#[tokio::test]
async fn a_removed_members_presence_no_longer_reaches_the_guild() {
    let n = node().await;
    let (_, owner) = n.user("owner").await;
    let (_, bystander) = n.user("bystander").await;
    let (kicked_id, kicked) = n.user("kicked").await;
    let (banned_id, banned) = n.user("banned").await;
    let (g, general, _) = n.guild(&owner).await;
    for t in [&bystander, &kicked, &banned] {
        n.invite_and_join(&owner, &general, t).await;
    }
    let (mut wb, _) = gateway(&n, &bystander).await;
    let (mut wk, _) = gateway(&n, &kicked).await;
    let (mut wx, _) = gateway(&n, &banned).await;
    let state = &n.run.as_ref().unwrap().state;
    let gid: u64 = g.parse().unwrap();
    for (who, w, how) in [
        (&kicked_id, &mut wk, "DELETE"),
        (&banned_id, &mut wx, "PUT"),
    ] {
        let path = if how == "DELETE" {
            format!("/guilds/{g}/members/{who}")
        } else {
            format!("/guilds/{g}/bans/{who}")
        };
        let (st, v) = n.req(how, &path, Some(&owner), None).await;
        assert_eq!(st, 204, "{v}");
        loop {
            let v = json(&mut wb).await;
            if v["t"] == "GUILD_MEMBER_REMOVE" {
                assert_eq!(v["d"]["user"]["id"], who.as_str());
                break;
            }
        }
        // A stale broadcast, and the removed user's own status change.
        lodge_signaling::gateway::presence::publish(
            state,
            GuildId(gid),
            who.parse().unwrap(),
            "dnd",
            &json!([]),
        );
        send(w, json!({ "op": 3, "d": { "status": "idle", "activities": [], "since": null, "afk": false } })).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (st, m) = post(
            &n,
            &owner,
            &general,
            json!({ "content": format!("after {how}") }),
        )
        .await;
        assert_eq!(st, 200, "{m}");
        loop {
            let v = json(&mut wb).await;
            assert_ne!(
                v["t"], "PRESENCE_UPDATE",
                "the bystander heard of a removed member: {v}"
            );
            if v["t"] == "MESSAGE_CREATE" {
                break;
            }
        }
    }
}

/// A gateway session with `intents`; returns the socket once READY has arrived.
async fn gateway_with(n: &Node, token: &str, intents: u64) -> Ws {
    let mut w = ws(&n.gateway_url()).await;
    json(&mut w).await;
    send(
        &mut w,
        json!({ "op": 2, "d": { "token": token, "intents": intents, "properties": {} } }),
    )
    .await;
    dispatch(&mut w, "READY").await;
    w
}

/// The next `t` dispatch about message `id`.
async fn about_message(w: &mut Ws, t: &str, id: &str) -> Value {
    loop {
        let d = dispatch(w, t).await;
        if d["id"] == id {
            return d;
        }
    }
}

/// A reply to a message in another channel reaches each session as its user may read it: with
/// `referenced_message` for those who may VIEW_CHANNEL and READ_MESSAGE_HISTORY where the
/// referenced message is, `null` for the others, on MESSAGE_CREATE and MESSAGE_UPDATE alike,
/// and with or without MESSAGE_CONTENT.
#[tokio::test]
async fn cross_channel_replies_carry_the_referenced_message_to_those_who_may_read_it() {
    const MESSAGE_CONTENT: u64 = 1 << 15;
    let n = node().await;
    let (_, owner) = n.user("owner").await;
    let (staffer_id, staffer) = n.user("staffer").await;
    let (_, pleb) = n.user("pleb").await;
    let (g, general, _) = n.guild(&owner).await;
    for t in [&staffer, &pleb] {
        n.invite_and_join(&owner, &general, t).await;
    }
    let staff_role = role(&n, &owner, &g, "staff", 0, 1, &[&staffer_id]).await;
    let staff = channel_for(&n, &owner, &g, "staff", 0, &staff_role).await;
    let news = channel_denying(&n, &owner, &g, "news", 0, READ_MESSAGE_HISTORY).await;
    let (_, secret) = post(&n, &owner, &staff, json!({ "content": "launch at dawn" })).await;
    let (_, headline) = post(&n, &owner, &news, json!({ "content": "old headline" })).await;
    let all = 131071;
    let mut wo = gateway_with(&n, &owner, all).await;
    let mut ws_ = gateway_with(&n, &staffer, all).await;
    let mut wp = gateway_with(&n, &pleb, all).await;
    let mut ws_bot = gateway_with(&n, &staffer, all & !MESSAGE_CONTENT).await;
    let mut wp_bot = gateway_with(&n, &pleb, all & !MESSAGE_CONTENT).await;

    let (st, reply) = post(
        &n,
        &owner,
        &general,
        json!({ "content": "see staff",
            "message_reference": { "message_id": secret["id"], "channel_id": staff } }),
    )
    .await;
    assert_eq!(st, 200, "{reply}");
    let id = reply["id"].as_str().unwrap().to_string();
    let (st, edited) = n
        .req(
            "PATCH",
            &format!("/channels/{general}/messages/{id}"),
            Some(&owner),
            Some(json!({ "content": "see staff, now" })),
        )
        .await;
    assert_eq!(st, 200, "{edited}");
    for t in ["MESSAGE_CREATE", "MESSAGE_UPDATE"] {
        for (who, w) in [("owner", &mut wo), ("staffer", &mut ws_)] {
            let d = about_message(w, t, &id).await;
            assert_eq!(
                d["referenced_message"]["content"], "launch at dawn",
                "{who} {t}: {d}"
            );
            assert!(d["content"].as_str().unwrap().starts_with("see staff"));
        }
        let d = about_message(&mut ws_bot, t, &id).await;
        assert_eq!(
            (
                d["content"].as_str(),
                d["referenced_message"]["id"].as_str()
            ),
            (Some(""), secret["id"].as_str()),
            "a staffer's session without MESSAGE_CONTENT: redacted, with the reference: {d}"
        );
        for (w, content) in [(&mut wp, "see staff"), (&mut wp_bot, "")] {
            let d = about_message(w, t, &id).await;
            assert!(d["referenced_message"].is_null(), "pleb {t}: {d}");
            assert_eq!(d["message_reference"]["message_id"], secret["id"]);
            assert!(d["content"].as_str().unwrap().starts_with(content), "{d}");
            assert!(!d.to_string().contains("launch"), "{d}");
        }
    }
    // Viewing the referenced channel is not enough: reading its history is needed too.
    let (st, reply) = post(
        &n,
        &owner,
        &general,
        json!({ "content": "as reported",
            "message_reference": { "message_id": headline["id"], "channel_id": news } }),
    )
    .await;
    assert_eq!(st, 200, "{reply}");
    let id = reply["id"].as_str().unwrap();
    let d = about_message(&mut wo, "MESSAGE_CREATE", id).await;
    assert_eq!(d["referenced_message"]["content"], "old headline");
    for w in [&mut ws_, &mut wp] {
        let d = about_message(w, "MESSAGE_CREATE", id).await;
        assert!(d["referenced_message"].is_null(), "{d}");
    }
}
