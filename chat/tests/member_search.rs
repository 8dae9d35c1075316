//! Members by name prefix and by id (the gateway's Request Guild Members), on SQLite and, with
//! TEST_POSTGRES_URL, on PostgreSQL.

use lodge_chat::*;

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = match lodge_chat::store::testing::database_url_from_env().await {
        Some(url) => Store::open_url(&url).await.unwrap(),
        None => Store::open(&dir.path().join("lodge.db")).await.unwrap(),
    };
    (s, dir)
}

#[tokio::test]
async fn by_prefix_and_by_id() {
    let (s, _d) = store().await;
    let (alice, _) = s.register("alice", "password-123", false).await.unwrap();
    let (alfred, _) = s.register("Alfred", "password-123", false).await.unwrap();
    let (bob, _) = s.register("bob", "password-123", false).await.unwrap();
    let (under, _) = s.register("al_x", "password-123", false).await.unwrap();
    let g = s.create_guild(&alice, "den").await.unwrap();
    for u in [&alfred, &bob, &under] {
        s.add_member(g.id, u.id).await.unwrap();
    }
    s.set_nick(g.id, bob.id, Some("Albatross")).await.unwrap();
    let names = |v: Vec<Member>| v.into_iter().map(|m| m.user.username).collect::<Vec<_>>();
    let mut got = names(s.members_named(g.id, "AL", 10).await.unwrap());
    got.sort();
    assert_eq!(
        got,
        ["Alfred", "al_x", "alice", "bob"],
        "username or nick, any case"
    );
    assert_eq!(
        names(s.members_named(g.id, "al_", 10).await.unwrap()),
        ["al_x"],
        "_ is literal"
    );
    assert_eq!(
        names(s.members_named(g.id, "%", 10).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        s.members_named(g.id, "a", 2).await.unwrap().len(),
        2,
        "limit"
    );
    let by_id = s
        .members_by_id(g.id, &[bob.id, lodge_chat::UserId(424242), alice.id])
        .await
        .unwrap();
    let mut ids: Vec<lodge_chat::UserId> = by_id.iter().map(|m| m.user.id).collect();
    ids.sort();
    let mut want = vec![alice.id, bob.id];
    want.sort();
    assert_eq!(ids, want);
    assert!(s.members_by_id(g.id, &[]).await.unwrap().is_empty());
}
