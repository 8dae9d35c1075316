//! The operator's per-guild switches hold on every node of a cluster: set through one node's
//! admin API, enforced and shown in `/metrics` by another. Two nodes in this process on one
//! Redis and one fresh PostgreSQL database.
//!
//! Needs `TEST_REDIS_URL=$(./scripts/redis.sh) TEST_POSTGRES_URL=$(./scripts/postgres.sh)`;
//! without them it prints a notice and passes.

mod common;

use common::{env, Node};
use serde_json::json;

const OP: &str = "Operator 0123456789abcdef-admin";

async fn cluster_node(ip: &str, id: String, redis: String, db: String) -> Node {
    common::cluster_node(ip, id, redis, db, |a| {
        a.operator_token = Some("0123456789abcdef-admin".into())
    })
    .await
}

async fn say(n: &Node, token: &str, channel: &str) -> (u16, serde_json::Value) {
    n.req(
        "POST",
        &format!("/channels/{channel}/messages"),
        Some(token),
        Some(json!({ "content": "hi" })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guild_switch_set_on_one_node_holds_on_another() {
    let (Some(redis), Some(pg)) = (env("TEST_REDIS_URL"), env("TEST_POSTGRES_URL")) else {
        println!(
            "skipped (admin_cluster): needs TEST_REDIS_URL=$(./scripts/redis.sh) and \
             TEST_POSTGRES_URL=$(./scripts/postgres.sh)"
        );
        return;
    };
    let db = lodge_chat::store::testing::fresh_postgres(&pg).await;
    let run = format!("{:08x}", rand::random::<u32>());
    let a = cluster_node("127.0.0.2", format!("a-{run}"), redis.clone(), db.clone()).await;
    let b = cluster_node("127.0.0.3", format!("b-{run}"), redis, db).await;
    let (_, alice) = a.user("alice").await;
    let (g, text, _) = a.guild(&alice).await;

    let (st, v) = a
        .req(
            "PATCH",
            &format!("/admin/guilds/{g}"),
            Some(OP),
            Some(json!({ "messages_frozen": true, "max_slots": 4 })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = say(&b, &alice, &text).await;
    assert_eq!((st, v["code"].as_u64()), (403, Some(40004)), "{v}");
    let (_, v) = b
        .req("GET", &format!("/admin/guilds/{g}"), Some(OP), None)
        .await;
    assert_eq!(
        (v["messages_frozen"].as_bool(), v["max_slots"].as_u64()),
        (Some(true), Some(4))
    );
    let m = b
        .http
        .get(format!("{}/metrics", b.base))
        .send()
        .await
        .unwrap();
    let m = m.text().await.unwrap();
    assert!(
        m.contains(&format!(
            "lodge_admin_guild_switch{{guild_id=\"{g}\",switch=\"messages_frozen\"}} 1"
        )),
        "{m}"
    );

    // Lifted through the other node, for both.
    let (st, _) = b
        .req(
            "PATCH",
            &format!("/admin/guilds/{g}"),
            Some(OP),
            Some(json!({ "messages_frozen": false, "max_slots": null })),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = say(&a, &alice, &text).await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = a.req("GET", "/admin/guilds", Some(OP), None).await;
    assert!(
        !v["guilds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["guild_id"] == g.as_str()),
        "{v}"
    );
}
