//! Messages through real sockets: REST and the dispatches that go with them.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn messages_rest_and_dispatches() {
    let n = node().await;
    let (alice_id, alice) = n.user("alice").await;
    let (bob_id, bob) = n.user("bob").await;
    let (g, text, _) = n.guild(&alice).await;
    n.invite_and_join(&alice, &text, &bob).await;
    let (mut wb, _) = gateway(&n, &bob).await;
    // A session without MESSAGE_CONTENT (intents: GUILDS | GUILD_MESSAGES).
    let mut wc = ws(&n.gateway_url()).await;
    json(&mut wc).await;
    send(
        &mut wc,
        json!({ "op": 2, "d": { "token": bob, "intents": 1 | 512, "properties": {} } }),
    )
    .await;
    dispatch(&mut wc, "READY").await;

    let (st, m) = n.req("POST", &format!("/channels/{text}/messages"), Some(&alice), Some(json!({ "content": "hello <@".to_string() + &bob_id + ">", "nonce": 42, "unknown_field": true }))).await;
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["author"]["id"].as_str().unwrap(), alice_id);
    assert_eq!(m["nonce"], "42");
    assert_eq!(m["mentions"][0]["id"].as_str().unwrap(), bob_id);
    assert_eq!(m["type"], 0);
    let mid = m["id"].as_str().unwrap().to_string();
    let d = dispatch(&mut wb, "MESSAGE_CREATE").await;
    assert_eq!(
        (d["id"].as_str(), d["guild_id"].as_str()),
        (Some(mid.as_str()), Some(g.as_str()))
    );
    assert!(
        d["member"]["joined_at"].is_string(),
        "MESSAGE_CREATE carries the member"
    );
    assert!(d["content"].as_str().unwrap().starts_with("hello"));
    // Without MESSAGE_CONTENT bob still sees it: he is mentioned.
    assert!(dispatch(&mut wc, "MESSAGE_CREATE").await["content"]
        .as_str()
        .unwrap()
        .starts_with("hello"));

    // A message not mentioning bob: redacted for the session without MESSAGE_CONTENT.
    let (_, m2) = n
        .req(
            "POST",
            &format!("/channels/{text}/messages"),
            Some(&alice),
            Some(json!({ "content": "secret plans" })),
        )
        .await;
    assert_eq!(
        dispatch(&mut wb, "MESSAGE_CREATE").await["content"],
        "secret plans"
    );
    assert_eq!(dispatch(&mut wc, "MESSAGE_CREATE").await["content"], "");

    // Reply, with and without channel_id.
    let (st, r) = n
        .req(
            "POST",
            &format!("/channels/{text}/messages"),
            Some(&bob),
            Some(json!({ "content": "re", "message_reference": { "message_id": mid } })),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["type"].as_u64(), r["referenced_message"]["id"].as_str()),
        (Some(19), Some(mid.as_str()))
    );
    let (st, _) = n
        .req(
            "POST",
            &format!("/channels/{text}/messages"),
            Some(&bob),
            Some(json!({ "content": "re", "message_reference": { "message_id": "1" } })),
        )
        .await;
    assert_eq!(st, 400);
    let (st, r) = n.req("POST", &format!("/channels/{text}/messages"), Some(&bob), Some(json!({ "content": "re", "message_reference": { "message_id": "1", "fail_if_not_exists": false } }))).await;
    assert_eq!((st, r["type"].as_u64()), (200, Some(0)));

    // Edit: author only.
    let (st, e) = n
        .req(
            "PATCH",
            &format!("/channels/{text}/messages/{mid}"),
            Some(&bob),
            Some(json!({ "content": "hijack" })),
        )
        .await;
    assert_eq!((st, e["code"].as_u64()), (403, Some(50005)));
    let (st, e) = n
        .req(
            "PATCH",
            &format!("/channels/{text}/messages/{mid}"),
            Some(&alice),
            Some(json!({ "content": "hello again" })),
        )
        .await;
    assert_eq!(st, 200);
    assert!(e["edited_timestamp"].is_string());
    assert_eq!(
        dispatch(&mut wb, "MESSAGE_UPDATE").await["content"],
        "hello again"
    );

    // Reactions.
    let path = format!("/channels/{text}/messages/{mid}/reactions/%F0%9F%91%8D/@me");
    assert_eq!(n.req("PUT", &path, Some(&bob), None).await.0, 204);
    let d = dispatch(&mut wb, "MESSAGE_REACTION_ADD").await;
    assert_eq!(
        (d["emoji"]["name"].as_str(), d["user_id"].as_str()),
        (Some("👍"), Some(bob_id.as_str()))
    );
    let (_, m) = n
        .req(
            "GET",
            &format!("/channels/{text}/messages/{mid}"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(
        (
            m["reactions"][0]["count"].as_u64(),
            m["reactions"][0]["me"].as_bool()
        ),
        (Some(1), Some(true))
    );
    let (_, users) = n
        .req(
            "GET",
            &format!("/channels/{text}/messages/{mid}/reactions/%F0%9F%91%8D"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(users[0]["id"].as_str().unwrap(), bob_id);
    assert_eq!(n.req("DELETE", &path, Some(&bob), None).await.0, 204);
    assert_eq!(
        dispatch(&mut wb, "MESSAGE_REACTION_REMOVE").await["emoji"]["name"],
        "👍"
    );
    let (st, v) = n
        .req(
            "PUT",
            &format!("/channels/{text}/messages/{mid}/reactions/abc/@me"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!((st, v["code"].as_u64()), (404, Some(10014)));

    // Typing.
    assert_eq!(
        n.req(
            "POST",
            &format!("/channels/{text}/typing"),
            Some(&bob),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        dispatch(&mut wb, "TYPING_START").await["user_id"]
            .as_str()
            .unwrap(),
        bob_id
    );

    // History, limits, delete.
    let (_, page) = n
        .req(
            "GET",
            &format!("/channels/{text}/messages?limit=2"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert_eq!(
        n.req(
            "GET",
            &format!("/channels/{text}/messages?limit=101"),
            Some(&bob),
            None
        )
        .await
        .0,
        400
    );
    let (st, v) = n
        .req(
            "POST",
            &format!("/channels/{text}/messages"),
            Some(&bob),
            Some(json!({ "content": "x".repeat(2001) })),
        )
        .await;
    assert_eq!(st, 400);
    assert!(v["errors"]["content"]["_errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("2000"));
    assert_eq!(
        n.req(
            "POST",
            &format!("/channels/{text}/messages"),
            Some(&bob),
            Some(json!({ "content": 5 }))
        )
        .await
        .0,
        400
    );
    let m2id = m2["id"].as_str().unwrap();
    assert_eq!(
        n.req(
            "DELETE",
            &format!("/channels/{text}/messages/{m2id}"),
            Some(&bob),
            None
        )
        .await
        .0,
        403,
        "not bob's message"
    );
    assert_eq!(
        n.req(
            "DELETE",
            &format!("/channels/{text}/messages/{m2id}"),
            Some(&alice),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        dispatch(&mut wb, "MESSAGE_DELETE").await["id"]
            .as_str()
            .unwrap(),
        m2id
    );
    assert_eq!(
        n.req(
            "GET",
            &format!("/channels/{text}/messages/{m2id}"),
            Some(&alice),
            None
        )
        .await
        .1["code"],
        10008
    );

    // A channel bob cannot see: no access, no events.
    let (_, hidden) = n.req("POST", &format!("/guilds/{g}/channels"), Some(&alice), Some(json!({ "name": "hidden", "permission_overwrites": [{ "id": g, "type": 0, "deny": "1024" }] }))).await;
    let hid = hidden["id"].as_str().unwrap();
    assert_eq!(
        n.req(
            "POST",
            &format!("/channels/{hid}/messages"),
            Some(&bob),
            Some(json!({ "content": "hi" }))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        n.req(
            "GET",
            &format!("/channels/{hid}/messages"),
            Some(&bob),
            None
        )
        .await
        .0,
        403
    );
    n.req(
        "POST",
        &format!("/channels/{hid}/messages"),
        Some(&alice),
        Some(json!({ "content": "for admins" })),
    )
    .await;
    n.req(
        "POST",
        &format!("/channels/{text}/messages"),
        Some(&alice),
        Some(json!({ "content": "public" })),
    )
    .await;
    assert_eq!(
        dispatch(&mut wb, "MESSAGE_CREATE").await["content"],
        "public",
        "bob got an event from a hidden channel"
    );

    // Search finds only what the caller may read.
    n.req(
        "POST",
        &format!("/channels/{hid}/messages"),
        Some(&alice),
        Some(json!({ "content": "needle in the admin room" })),
    )
    .await;
    n.req(
        "POST",
        &format!("/channels/{text}/messages"),
        Some(&alice),
        Some(json!({ "content": "needle in public" })),
    )
    .await;
    let (st, r) = n
        .req(
            "GET",
            &format!("/guilds/{g}/messages/search?content=needle"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["total_results"], 1);
    assert_eq!(r["messages"][0][0]["content"], "needle in public");
    let (_, r) = n
        .req(
            "GET",
            &format!("/guilds/{g}/messages/search?content=needle"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(r["total_results"], 2);
    assert_eq!(
        n.req(
            "GET",
            &format!("/guilds/{g}/messages/search?content=%20"),
            Some(&bob),
            None
        )
        .await
        .0,
        400
    );
}
