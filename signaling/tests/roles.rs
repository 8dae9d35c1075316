//! Roles, hierarchy, escalation attempts, member edits and server voice moderation.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn roles_hierarchy_and_escalation() {
    let n = node().await;
    let (_, owner) = n.user("owner").await;
    let (mod_id, moder) = n.user("moder").await;
    let (pleb_id, pleb) = n.user("pleb").await;
    let (g, text, voice) = n.guild(&owner).await;
    n.invite_and_join(&owner, &text, &moder).await;
    n.invite_and_join(&owner, &text, &pleb).await;
    let (mut wp, _) = gateway(&n, &pleb).await;

    // Owner creates a moderator role (MANAGE_ROLES | MUTE_MEMBERS | MOVE_MEMBERS) and a helper role.
    let bits = (1u64 << 28) | (1 << 22) | (1 << 24);
    let (st, modrole) = n
        .req(
            "POST",
            &format!("/guilds/{g}/roles"),
            Some(&owner),
            Some(json!({ "name": "mods", "permissions": bits.to_string() })),
        )
        .await;
    assert_eq!(st, 200, "{modrole}");
    let modrole = modrole["id"].as_str().unwrap().to_string();
    let (_, helper) = n
        .req(
            "POST",
            &format!("/guilds/{g}/roles"),
            Some(&owner),
            Some(json!({ "name": "helpers" })),
        )
        .await;
    let helper = helper["id"].as_str().unwrap().to_string();
    assert_eq!(
        dispatch(&mut wp, "GUILD_ROLE_CREATE").await["role"]["name"],
        "mods"
    );
    // Put mods above helpers.
    let (st, r) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/roles/{modrole}"),
            Some(&owner),
            Some(json!({ "position": 5 })),
        )
        .await;
    assert_eq!((st, r["position"].as_i64()), (200, Some(5)));
    assert_eq!(
        n.req(
            "PUT",
            &format!("/guilds/{g}/members/{mod_id}/roles/{modrole}"),
            Some(&owner),
            None
        )
        .await
        .0,
        204
    );
    let upd = dispatch(&mut wp, "GUILD_MEMBER_UPDATE").await;
    assert_eq!(upd["roles"], json!([modrole]));

    // Pleb cannot manage roles at all.
    let (st, v) = n
        .req(
            "POST",
            &format!("/guilds/{g}/roles"),
            Some(&pleb),
            Some(json!({ "name": "mine" })),
        )
        .await;
    assert_eq!((st, v["code"].as_u64()), (403, Some(50013)));
    // The moderator manages roles below theirs...
    assert_eq!(
        n.req(
            "PUT",
            &format!("/guilds/{g}/members/{pleb_id}/roles/{helper}"),
            Some(&moder),
            None
        )
        .await
        .0,
        204
    );
    // ...but not their own role or above, and cannot grant what they lack (ADMINISTRATOR).
    let (st, _) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/roles/{modrole}"),
            Some(&moder),
            Some(json!({ "name": "super mods" })),
        )
        .await;
    assert_eq!(st, 403);
    let (st, v) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/roles/{helper}"),
            Some(&moder),
            Some(json!({ "permissions": (1u64 << 3).to_string() })),
        )
        .await;
    assert_eq!(st, 403, "{v}");
    let (st, _) = n
        .req(
            "POST",
            &format!("/guilds/{g}/roles"),
            Some(&moder),
            Some(json!({ "name": "admins", "permissions": "8" })),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/roles/{helper}"),
            Some(&moder),
            Some(json!({ "position": 9 })),
        )
        .await;
    assert_eq!(st, 403, "cannot lift a role above their own");
    let (st, _) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{pleb_id}"),
            Some(&moder),
            Some(json!({ "roles": [modrole] })),
        )
        .await;
    assert_eq!(st, 403, "cannot hand out their own role");
    // Overwrites: only bits the moderator holds, and only targets of this guild.
    let (st, _) = n
        .req(
            "PUT",
            &format!("/channels/{text}/permissions/{pleb_id}"),
            Some(&moder),
            Some(json!({ "type": 1, "allow": "8" })),
        )
        .await;
    assert_eq!(st, 403, "cannot allow ADMINISTRATOR through an overwrite");
    let (st, _) = n
        .req(
            "PUT",
            &format!("/channels/{text}/permissions/{pleb_id}"),
            Some(&moder),
            Some(json!({ "type": 1, "deny": (1u64 << 22).to_string() })),
        )
        .await;
    assert_eq!(st, 204, "a bit the moderator holds is fine");
    let (st, _) = n
        .req(
            "PUT",
            &format!("/channels/{text}/permissions/12345"),
            Some(&owner),
            Some(json!({ "type": 0, "deny": "1024" })),
        )
        .await;
    assert_eq!(st, 404, "role of another guild (or none)");
    // Nothing changed by the refused attempts.
    let (_, roles) = n
        .req("GET", &format!("/guilds/{g}/roles"), Some(&owner), None)
        .await;
    let h = roles
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == helper.as_str())
        .unwrap();
    assert_eq!(
        (h["permissions"].as_str(), h["position"].as_i64()),
        (Some("0"), Some(1))
    );
    let (_, m) = n
        .req(
            "GET",
            &format!("/guilds/{g}/members/{pleb_id}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(m["roles"], json!([helper]));
    // @everyone cannot be deleted; a role can.
    assert_eq!(
        n.req(
            "DELETE",
            &format!("/guilds/{g}/roles/{g}"),
            Some(&owner),
            None
        )
        .await
        .0,
        400
    );
    assert_eq!(
        n.req(
            "DELETE",
            &format!("/guilds/{g}/roles/{helper}"),
            Some(&moder),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        dispatch(&mut wp, "GUILD_ROLE_DELETE").await["role_id"]
            .as_str()
            .unwrap(),
        helper
    );

    // Voice moderation: pleb joins voice; the moderator server-mutes and moves them.
    let (_, ready) = gateway(&n, &pleb).await;
    let (mut wp2, _) = (ws(&n.gateway_url()).await, ());
    drop(ready);
    json(&mut wp2).await;
    send(
        &mut wp2,
        json!({ "op": 2, "d": { "token": pleb, "properties": {} } }),
    )
    .await;
    let sess = dispatch(&mut wp2, "READY").await["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{pleb_id}"),
            Some(&moder),
            Some(json!({ "mute": true })),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_u64()),
        (400, Some(40032)),
        "not in voice yet"
    );
    voice_join(&mut wp2, &g, &voice, false).await;
    let (st, _) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{pleb_id}"),
            Some(&moder),
            Some(json!({ "mute": true })),
        )
        .await;
    assert_eq!(st, 200);
    let vs = loop {
        let v = dispatch(&mut wp2, "VOICE_STATE_UPDATE").await;
        if v["mute"] == true {
            break v;
        }
    };
    assert_eq!(vs["user_id"].as_str().unwrap(), pleb_id);
    let (st, _) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{pleb_id}"),
            Some(&moder),
            Some(json!({ "deaf": true })),
        )
        .await;
    assert_eq!(st, 403, "no DEAFEN_MEMBERS");
    let (_, lounge) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&owner),
            Some(json!({ "name": "Lounge", "type": 2 })),
        )
        .await;
    let lounge = lounge["id"].as_str().unwrap();
    let (st, _) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{pleb_id}"),
            Some(&moder),
            Some(json!({ "channel_id": lounge })),
        )
        .await;
    assert_eq!(st, 200);
    let su = dispatch(&mut wp2, "VOICE_SERVER_UPDATE").await;
    assert!(su["token"].is_string());
    let (_, states) = n
        .req(
            "GET",
            &format!("/guilds/{g}/voice-states"),
            Some(&owner),
            None,
        )
        .await;
    let st0 = &states[0];
    assert_eq!(
        (
            st0["channel_id"].as_str(),
            st0["mute"].as_bool(),
            st0["session_id"].as_str()
        ),
        (Some(lounge), Some(true), Some(sess.as_str())),
        "moved, still server-muted"
    );
    let (st, _) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{pleb_id}"),
            Some(&moder),
            Some(json!({ "channel_id": null })),
        )
        .await;
    assert_eq!(st, 200);
    let (_, states) = n
        .req(
            "GET",
            &format!("/guilds/{g}/voice-states"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(states, json!([]));
    // Nicknames.
    let (st, m) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}/members/{pleb_id}"),
            Some(&owner),
            Some(json!({ "nick": "Plebbo" })),
        )
        .await;
    assert_eq!((st, m["nick"].as_str()), (200, Some("Plebbo")));
    assert_eq!(
        n.req(
            "PATCH",
            &format!("/guilds/{g}/members/{mod_id}"),
            Some(&pleb),
            Some(json!({ "nick": "x" }))
        )
        .await
        .0,
        403
    );
}
