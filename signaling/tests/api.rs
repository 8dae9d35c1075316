//! REST through real sockets: accounts, guilds, channels, invites, members, permissions, errors.

mod common;

use serde_json::json;

#[tokio::test]
async fn accounts_and_errors_are_discord_shaped() {
    let n = common::node().await;
    let (st, v) = n
        .req(
            "POST",
            "/auth/register",
            None,
            Some(json!({ "username": "alice", "password": "password-123" })),
        )
        .await;
    assert_eq!(st, 201);
    assert_eq!(v["user"]["username"], "alice");
    let token = v["token"].as_str().unwrap().to_string();
    // Same name again: 400 with the field named.
    let (st, v) = n
        .req(
            "POST",
            "/auth/register",
            None,
            Some(json!({ "username": "alice", "password": "password-123" })),
        )
        .await;
    assert_eq!((st, v["code"].as_u64()), (400, Some(50035)));
    assert!(v["errors"]["username"]["_errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("taken"));
    let (st, v) = n
        .req(
            "POST",
            "/auth/login",
            None,
            Some(json!({ "username": "alice", "password": "nope-nope" })),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = n
        .req(
            "POST",
            "/auth/login",
            None,
            Some(json!({ "username": "alice", "password": "password-123" })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // Bot/Bearer/bare tokens all work.
    for t in [
        format!("Bot {token}"),
        format!("Bearer {token}"),
        token.clone(),
    ] {
        let (st, me) = n.req("GET", "/users/@me", Some(&t), None).await;
        assert_eq!((st, me["username"].as_str()), (200, Some("alice")));
    }
    // No token, bad token.
    let (st, v) = n.req("GET", "/users/@me", None, None).await;
    assert_eq!(
        (st, v["code"].as_u64(), v["message"].as_str()),
        (401, Some(0), Some("401: Unauthorized"))
    );
    let (st, _) = n.req("GET", "/users/@me", Some("Bot nope"), None).await;
    assert_eq!(st, 401);
    // Logout revokes the token.
    let (st, v) = n
        .req(
            "POST",
            "/auth/login",
            None,
            Some(json!({ "username": "alice", "password": "password-123" })),
        )
        .await;
    let t2 = v["token"].as_str().unwrap().to_string();
    assert_eq!(st, 200);
    assert_eq!(n.req("POST", "/auth/logout", Some(&t2), None).await.0, 204);
    assert_eq!(n.req("GET", "/users/@me", Some(&t2), None).await.0, 401);
    assert_eq!(n.req("GET", "/users/@me", Some(&token), None).await.0, 200);

    // Malformed and oversized bodies.
    let res = n
        .http
        .post(n.url("/guilds"))
        .header("Authorization", &token)
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["code"], 50109);
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(70_000));
    let res = n
        .http
        .post(n.url("/guilds"))
        .header("Authorization", &token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let v: serde_json::Value = res.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("65536"), "{v}");
    // Unknown route: JSON 404. Unknown object: Discord's code.
    let (st, v) = n.req("GET", "/nope", Some(&token), None).await;
    assert_eq!((st, v["message"].as_str()), (404, Some("404: Not Found")));
    let (st, v) = n.req("GET", "/channels/123", Some(&token), None).await;
    assert_eq!((st, v["code"].as_u64()), (404, Some(10003)));
    let (st, v) = n.req("GET", "/guilds/abc", Some(&token), None).await;
    assert_eq!((st, v["code"].as_u64()), (404, Some(10004)));
    // v9 is served too; gateway urls carry no query.
    let res = n
        .http
        .get(format!("{}/api/v9/gateway", n.base))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        v["url"].as_str().unwrap(),
        format!("ws://{}/gateway", n.http_addr())
    );
    let (st, v) = n.req("GET", "/gateway/bot", Some(&token), None).await;
    assert_eq!((st, v["shards"].as_u64()), (200, Some(1)));
    let l = &v["session_start_limit"];
    assert_eq!(
        (l["total"].as_u64(), l["remaining"].as_u64()),
        (Some(1000), Some(1000))
    );
    assert_eq!(l["max_concurrency"], 5);
}

#[tokio::test]
async fn guild_channels_invites_members_and_permissions() {
    let n = common::node().await;
    let (alice_id, alice) = n.user("alice").await;
    let (bob_id, bob) = n.user("bob").await;
    let (g, text, _) = n.guild(&alice).await;

    let (st, roles) = n
        .req("GET", &format!("/guilds/{g}/roles"), Some(&alice), None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        roles[0]["id"].as_str().unwrap(),
        g,
        "@everyone has the guild's id"
    );
    assert_eq!(roles[0]["name"], "@everyone");
    // Bob is not a member: 403 Missing Access.
    let (st, v) = n
        .req("GET", &format!("/guilds/{g}"), Some(&bob), None)
        .await;
    assert_eq!((st, v["code"].as_u64()), (403, Some(50001)));

    n.invite_and_join(&alice, &text, &bob).await;
    let (_, gs) = n.req("GET", "/users/@me/guilds", Some(&bob), None).await;
    assert_eq!(gs[0]["id"].as_str().unwrap(), g);
    assert_eq!(gs[0]["owner"], false);
    let (_, members) = n
        .req(
            "GET",
            &format!("/guilds/{g}/members?limit=10"),
            Some(&bob),
            None,
        )
        .await;
    let ids: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"]["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&alice_id.as_str()) && ids.contains(&bob_id.as_str()));
    let (st, _) = n
        .req(
            "GET",
            &format!("/guilds/{g}/members?limit=5000"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(st, 400);

    // Bob may not manage channels; Alice may.
    let (st, v) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&bob),
            Some(json!({ "name": "bobs", "type": 2 })),
        )
        .await;
    assert_eq!((st, v["code"].as_u64()), (403, Some(50013)));
    let (st, c) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&alice),
            Some(json!({ "name": "Lounge", "type": 2, "user_limit": 5 })),
        )
        .await;
    assert_eq!(st, 201, "{c}");
    assert_eq!(
        (
            c["type"].as_u64(),
            c["bitrate"].as_u64(),
            c["user_limit"].as_u64()
        ),
        (Some(2), Some(64000), Some(5))
    );
    let cid = c["id"].as_str().unwrap().to_string();
    let (st, c) = n
        .req(
            "PATCH",
            &format!("/channels/{cid}"),
            Some(&alice),
            Some(json!({ "name": "Lounge 2" })),
        )
        .await;
    assert_eq!((st, c["name"].as_str()), (200, Some("Lounge 2")));
    let (st, _) = n
        .req(
            "PATCH",
            &format!("/channels/{cid}"),
            Some(&bob),
            Some(json!({ "name": "x" })),
        )
        .await;
    assert_eq!(st, 403);
    let (st, v) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&alice),
            Some(json!({ "name": "x", "type": 13 })),
        )
        .await;
    assert_eq!(st, 400, "{v}");

    // A secret channel: hidden from Bob in the list and on GET.
    let (st, secret) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&alice),
            Some(json!({ "name": "secret", "type": 0,
            "permission_overwrites": [{ "id": g, "type": 0, "allow": "0", "deny": "1024" }] })),
        )
        .await;
    assert_eq!(st, 201, "{secret}");
    let sid = secret["id"].as_str().unwrap();
    let (_, list) = n
        .req("GET", &format!("/guilds/{g}/channels"), Some(&bob), None)
        .await;
    assert!(!list.as_array().unwrap().iter().any(|c| c["id"] == sid));
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert_eq!(
        n.req("GET", &format!("/channels/{sid}"), Some(&bob), None)
            .await
            .0,
        403
    );
    let (_, list) = n
        .req("GET", &format!("/guilds/{g}/channels"), Some(&alice), None)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 4);

    // Delete, rename guild, kick.
    assert_eq!(
        n.req("DELETE", &format!("/channels/{cid}"), Some(&alice), None)
            .await
            .0,
        200
    );
    assert_eq!(
        n.req("GET", &format!("/channels/{cid}"), Some(&alice), None)
            .await
            .0,
        404
    );
    let (st, v) = n
        .req(
            "PATCH",
            &format!("/guilds/{g}"),
            Some(&alice),
            Some(json!({ "name": "Renamed" })),
        )
        .await;
    assert_eq!((st, v["name"].as_str()), (200, Some("Renamed")));
    assert_eq!(
        n.req(
            "PATCH",
            &format!("/guilds/{g}"),
            Some(&bob),
            Some(json!({ "name": "Mine" }))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        n.req(
            "DELETE",
            &format!("/guilds/{g}/members/{alice_id}"),
            Some(&bob),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        n.req(
            "DELETE",
            &format!("/guilds/{g}/members/{bob_id}"),
            Some(&alice),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        n.req("GET", &format!("/guilds/{g}"), Some(&bob), None)
            .await
            .0,
        403
    );
    assert_eq!(
        n.req("DELETE", &format!("/guilds/{g}"), Some(&alice), None)
            .await
            .0,
        204
    );
    assert_eq!(
        n.req("GET", &format!("/guilds/{g}"), Some(&alice), None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn ops_endpoints() {
    let n = common::node().await;
    assert_eq!(
        n.http
            .get(format!("{}/healthz", n.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        n.http
            .get(format!("{}/readyz", n.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let m = n
        .http
        .get(format!("{}/metrics", n.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("lodge_participants 0")
            && m.contains("lodge_dropped_total{reason=\"malformed\"} 0"),
        "{m}"
    );
    let page = n
        .http
        .get(format!("{}/", n.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<script type=\"module\" src=\"/app.js\">"));
    let js = n
        .http
        .get(format!("{}/app.js", n.base))
        .send()
        .await
        .unwrap();
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
}

#[tokio::test]
async fn rate_limits_per_route_and_global() {
    let n = common::node_with(|a| {
        a.rate_limit_route = Some(5);
        a.rate_limit_global = Some(8);
    })
    .await;
    let (_, t) = n.user("alice").await;
    let get = |path: &str| n.http.get(n.url(path)).header("Authorization", &t).send();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let r = get("/users/@me").await.unwrap();
        if i == 0 {
            assert_eq!(r.headers()["x-ratelimit-limit"], "5");
            assert_eq!(r.headers()["x-ratelimit-remaining"], "4");
            assert!(
                r.headers().contains_key("x-ratelimit-reset")
                    && r.headers().contains_key("x-ratelimit-bucket")
            );
        }
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["global"], false);
            assert!(
                v["retry_after"].as_f64().unwrap() > 0.0
                    && v["retry_after"].as_f64().unwrap() <= 1.0
            );
            assert!(v["message"].as_str().unwrap().contains("5 requests"));
        }
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429]);
    // Another route has its own bucket, until the global limit (8 per second) is reached.
    let r = get("/users/@me/guilds").await.unwrap();
    assert_eq!(r.status(), 200);
    let r = get("/gateway/bot").await.unwrap();
    assert_eq!(r.status(), 200);
    let r = get("/oauth2/applications/@me").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-global"], "true");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["global"], true);
    // After the window everything flows again; other callers were never limited.
    let (_, t2) = n.user("bob").await;
    assert_eq!(
        n.http
            .get(n.url("/users/@me"))
            .header("Authorization", &t2)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(get("/users/@me").await.unwrap().status(), 200);
}

#[tokio::test]
async fn channel_topics_are_bounded() {
    let n = common::node().await;
    let (_, alice) = n.user("alice").await;
    let (g, text, _) = n.guild(&alice).await;
    let ok = "t".repeat(1024);
    let (st, c) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&alice),
            Some(json!({ "name": "news", "topic": ok })),
        )
        .await;
    assert_eq!(st, 201, "{c}");
    assert_eq!(c["topic"].as_str().map(str::len), Some(1024));
    for topic in [
        "t".repeat(1025),
        "a\u{202e}b".to_string(),
        "bell\u{7}".to_string(),
    ] {
        let (st, v) = n
            .req(
                "POST",
                &format!("/guilds/{g}/channels"),
                Some(&alice),
                Some(json!({ "name": "x", "topic": topic })),
            )
            .await;
        assert_eq!((st, v["code"].as_u64()), (400, Some(50035)), "{v}");
        assert!(v["errors"]["topic"].is_object(), "{v}");
        let (st, _) = n
            .req(
                "PATCH",
                &format!("/channels/{text}"),
                Some(&alice),
                Some(json!({ "topic": topic })),
            )
            .await;
        assert_eq!(st, 400);
    }
    let (_, chans) = n
        .req("GET", &format!("/guilds/{g}/channels"), Some(&alice), None)
        .await;
    assert_eq!(
        chans.as_array().unwrap().len(),
        3,
        "refused creates wrote nothing"
    );
    let (_, t) = n
        .req("GET", &format!("/channels/{text}"), Some(&alice), None)
        .await;
    assert!(t["topic"].is_null(), "refused updates changed nothing: {t}");
}

/// Lodge's `require_dave` channel setting: a voice channel's JSON boolean, set on create and by
/// PATCH with MANAGE_CHANNELS, carried by GET and the CHANNEL_* dispatches; refused with the
/// field named on other channel kinds and for anything but a boolean, changing nothing.
#[tokio::test]
async fn voice_channels_may_require_dave() {
    use common::{dispatch, gateway};
    let n = common::node().await;
    let (_, alice) = n.user("alice").await;
    let (bob_id, bob) = n.user("bob").await;
    let (g, text, general_voice) = n.guild(&alice).await;
    n.invite_and_join(&alice, &text, &bob).await;
    let (mut wb, _) = gateway(&n, &bob).await;
    let get = |id: String| {
        let (n, alice) = (&n, alice.clone());
        async move {
            let (st, c) = n
                .req("GET", &format!("/channels/{id}"), Some(&alice), None)
                .await;
            assert_eq!(st, 200, "{c}");
            c
        }
    };
    let patch = |id: String, token: String, body: serde_json::Value| {
        let n = &n;
        async move {
            n.req(
                "PATCH",
                &format!("/channels/{id}"),
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    let form_error = |st: u16, v: &serde_json::Value| {
        assert_eq!((st, v["code"].as_u64()), (400, Some(50035)), "{v}");
        assert!(
            v["errors"]["require_dave"]["_errors"][0]["message"].is_string(),
            "{v}"
        );
    };

    // Voice channels say so (false unless set); other kinds carry no such field.
    assert_eq!(get(general_voice.clone()).await["require_dave"], false);
    assert!(get(text.clone()).await.get("require_dave").is_none());

    let (st, c) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&alice),
            Some(json!({ "name": "e2ee", "type": 2, "require_dave": true })),
        )
        .await;
    assert_eq!((st, &c["require_dave"]), (201, &json!(true)), "{c}");
    let e2ee = c["id"].as_str().unwrap().to_string();
    let created = dispatch(&mut wb, "CHANNEL_CREATE").await;
    assert_eq!(
        (created["id"].as_str(), &created["require_dave"]),
        (Some(e2ee.as_str()), &json!(true))
    );
    assert_eq!(get(e2ee.clone()).await["require_dave"], true);
    let (_, all) = n
        .req("GET", &format!("/guilds/{g}/channels"), Some(&alice), None)
        .await;
    let listed = all
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == e2ee.as_str())
        .unwrap();
    assert_eq!(listed["require_dave"], true);

    // Off and on again by PATCH, each in the response, in GET and in bob's CHANNEL_UPDATE.
    for want in [false, true] {
        let (st, c) = patch(e2ee.clone(), alice.clone(), json!({ "require_dave": want })).await;
        assert_eq!((st, &c["require_dave"]), (200, &json!(want)), "{c}");
        let upd = dispatch(&mut wb, "CHANNEL_UPDATE").await;
        assert_eq!(
            (upd["id"].as_str(), &upd["require_dave"]),
            (Some(e2ee.as_str()), &json!(want)),
            "{upd}"
        );
        assert_eq!(get(e2ee.clone()).await["require_dave"], want);
    }
    // A PATCH that does not name it keeps it.
    let (st, c) = patch(
        e2ee.clone(),
        alice.clone(),
        json!({ "name": "e2ee 2", "bitrate": 96000 }),
    )
    .await;
    assert_eq!(
        (st, &c["require_dave"], c["bitrate"].as_u64()),
        (200, &json!(true), Some(96000)),
        "{c}"
    );
    assert_eq!(
        dispatch(&mut wb, "CHANNEL_UPDATE").await["require_dave"],
        true
    );

    // Anything but a boolean is refused, naming the field, on create and on update.
    let (_, before) = n
        .req("GET", &format!("/guilds/{g}/channels"), Some(&alice), None)
        .await;
    for bad in [
        json!("true"),
        json!(1),
        json!(0),
        json!(null),
        json!({}),
        json!([true]),
    ] {
        let (st, v) = n
            .req(
                "POST",
                &format!("/guilds/{g}/channels"),
                Some(&alice),
                Some(json!({ "name": "bad", "type": 2, "require_dave": bad })),
            )
            .await;
        form_error(st, &v);
        let (st, v) = patch(
            e2ee.clone(),
            alice.clone(),
            json!({ "name": "renamed", "require_dave": bad }),
        )
        .await;
        form_error(st, &v);
    }
    // Only voice channels may require DAVE; false is every channel's value and is accepted.
    for kind in [0, 4] {
        let (st, v) = n
            .req(
                "POST",
                &format!("/guilds/{g}/channels"),
                Some(&alice),
                Some(json!({ "name": "nope", "type": kind, "require_dave": true })),
            )
            .await;
        form_error(st, &v);
    }
    let (st, v) = patch(
        text.clone(),
        alice.clone(),
        json!({ "name": "renamed", "require_dave": true }),
    )
    .await;
    form_error(st, &v);
    let (st, v) = patch(
        text.clone(),
        alice.clone(),
        json!({ "require_dave": false }),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(v.get("require_dave").is_none(), "{v}");
    let (_, after) = n
        .req("GET", &format!("/guilds/{g}/channels"), Some(&alice), None)
        .await;
    assert_eq!(after, before, "refused creates and updates wrote nothing");

    // It takes MANAGE_CHANNELS, like every other channel setting.
    let (st, v) = patch(e2ee.clone(), bob.clone(), json!({ "require_dave": false })).await;
    assert_eq!((st, v["code"].as_u64()), (403, Some(50013)), "{v}");
    let (st, v) = n
        .req(
            "POST",
            &format!("/guilds/{g}/channels"),
            Some(&bob),
            Some(json!({ "name": "bobs", "type": 2, "require_dave": true })),
        )
        .await;
    assert_eq!((st, v["code"].as_u64()), (403, Some(50013)), "{v}");
    assert_eq!(get(e2ee.clone()).await["require_dave"], true);
    let (st, role) = n
        .req(
            "POST",
            &format!("/guilds/{g}/roles"),
            Some(&alice),
            Some(json!({ "name": "channel managers", "permissions": (1u64 << 4).to_string() })),
        )
        .await;
    assert_eq!(st, 200, "{role}");
    let (st, _) = n
        .req(
            "PUT",
            &format!(
                "/guilds/{g}/members/{bob_id}/roles/{}",
                role["id"].as_str().unwrap()
            ),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, c) = patch(e2ee.clone(), bob.clone(), json!({ "require_dave": false })).await;
    assert_eq!((st, &c["require_dave"]), (200, &json!(false)), "{c}");
    assert_eq!(get(e2ee).await["require_dave"], false);
}
