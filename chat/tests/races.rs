//! Check-then-act races made atomic (invite `max_uses`, the owned-guild and role caps), bans against
//! invites, and usernames unique after folding — on SQLite, and on PostgreSQL when
//! TEST_POSTGRES_URL is set.

use lodge_chat::store::{MAX_GUILD_ROLES, MAX_OWNED_GUILDS};
use lodge_chat::*;

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = match lodge_chat::store::testing::database_url_from_env().await {
        Some(url) => Store::open_url(&url).await.unwrap(),
        None => Store::open(&dir.path().join("lodge.db")).await.unwrap(),
    };
    (s, dir)
}

/// Many users accept a `max_uses: 1` invite at once: exactly one joins, the invite counts one
/// use, and every other accept is Unknown Invite with no membership left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_use_invite_admits_exactly_one_of_many_concurrent_joins() {
    let (s, _d) = store().await;
    let (owner, _) = s.register("owner", "password1", false).await.unwrap();
    let g = s.create_guild(&owner, "Den").await.unwrap();
    let text = s.channels(g.id).await.unwrap()[0].clone();
    let inv = s.create_invite(&text, owner.id, 1, 0).await.unwrap();
    const JOINERS: usize = 16;
    let mut users = Vec::new();
    for i in 0..JOINERS {
        users.push(
            s.register(&format!("joiner{i}"), "password1", false)
                .await
                .unwrap()
                .0,
        );
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(JOINERS));
    let mut tasks = Vec::new();
    for u in &users {
        let (s, code, id, start) = (s.clone(), inv.code.clone(), u.id, start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            s.use_invite(&code, id).await
        }));
    }
    let mut joined = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok((_, true)) => joined += 1,
            Ok((_, false)) => panic!("nobody was a member before"),
            Err(ChatError::Unknown("invite")) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(joined, 1, "exactly one of {JOINERS} concurrent joins wins");
    assert_eq!(s.member_count(g.id).await.unwrap(), 2, "owner + one");
    assert!(
        matches!(s.invite(&inv.code).await, Err(ChatError::Unknown("invite"))),
        "the invite is used up"
    );
}

/// The owned-guild cap holds under concurrent creation: from cap − 2 owned, of 8 concurrent
/// creations exactly 2 succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_owned_guild_cap_holds_under_concurrent_creation() {
    let (s, _d) = store().await;
    let (owner, _) = s.register("owner", "password1", false).await.unwrap();
    for i in 0..MAX_OWNED_GUILDS - 2 {
        s.create_guild(&owner, &format!("g{i}")).await.unwrap();
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (s, owner, start) = (s.clone(), owner.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            s.create_guild(&owner, &format!("late{i}")).await
        }));
    }
    let mut made = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => made += 1,
            Err(ChatError::Limit {
                what: "guilds",
                limit,
            }) => assert_eq!(limit, MAX_OWNED_GUILDS),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(made, 2);
    let owned = s
        .user_guilds(owner.id)
        .await
        .unwrap()
        .iter()
        .filter(|g| g.owner_id == owner.id)
        .count();
    assert_eq!(owned, MAX_OWNED_GUILDS);
}

/// The role cap holds under concurrent creation: from cap − 2 roles (with @everyone), of 8
/// concurrent creations exactly 2 succeed and the rest are refused with the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_role_cap_holds_under_concurrent_creation() {
    let (s, _d) = store().await;
    let (owner, _) = s.register("owner", "password1", false).await.unwrap();
    let g = s.create_guild(&owner, "Den").await.unwrap();
    let have = s.roles(g.id).await.unwrap().len();
    for i in have..MAX_GUILD_ROLES - 2 {
        s.create_role(g.id, &format!("r{i}"), 0).await.unwrap();
    }
    const CREATORS: usize = 8;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(CREATORS));
    let mut tasks = Vec::new();
    for i in 0..CREATORS {
        let (s, start) = (s.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            s.create_role(g.id, &format!("late{i}"), 0).await
        }));
    }
    let mut made = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => made += 1,
            Err(ChatError::Limit {
                what: "guild roles",
                limit,
            }) => assert_eq!(limit, MAX_GUILD_ROLES),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(made, 2, "exactly the 2 free places are taken");
    assert_eq!(s.roles(g.id).await.unwrap().len(), MAX_GUILD_ROLES);
}

#[tokio::test]
async fn a_banned_user_cannot_join_by_invite_until_unbanned() {
    let (s, _d) = store().await;
    let (owner, _) = s.register("owner", "password1", false).await.unwrap();
    let (bob, _) = s.register("bob", "password2", false).await.unwrap();
    let g = s.create_guild(&owner, "Den").await.unwrap();
    let text = s.channels(g.id).await.unwrap()[0].clone();
    let inv = s.create_invite(&text, owner.id, 0, 0).await.unwrap();
    s.use_invite(&inv.code, bob.id).await.unwrap();
    let m = s
        .create_message(
            &text,
            &bob,
            NewMessage {
                content: "spam".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .0;
    let effect = s.ban(g.id, bob.id, Some("spam"), 3600).await.unwrap();
    assert_eq!(
        effect,
        BanEffect {
            was_member: true,
            deleted: vec![(text.id.get(), vec![m.id.get()])]
        }
    );
    assert!(!s.is_member(g.id, bob.id).await.unwrap());
    assert!(matches!(
        s.message(text.id, m.id, owner.id).await,
        Err(ChatError::Unknown("message"))
    ));
    let err = s.use_invite(&inv.code, bob.id).await.unwrap_err();
    assert!(matches!(err, ChatError::Banned));
    assert_eq!((err.status(), err.code()), (403, 40007));
    assert!(
        !s.is_member(g.id, bob.id).await.unwrap(),
        "a refused join changes nothing"
    );
    assert_eq!(
        s.invite(&inv.code).await.unwrap().uses,
        1,
        "the refused join used nothing"
    );
    let b = s.ban_of(g.id, bob.id).await.unwrap();
    assert_eq!((b.user.id, b.reason.as_deref()), (bob.id, Some("spam")));
    assert_eq!(
        s.bans(
            g.id,
            BanQuery {
                limit: 10,
                ..Default::default()
            }
        )
        .await
        .unwrap(),
        vec![b]
    );
    s.unban(g.id, bob.id).await.unwrap();
    let err = s.unban(g.id, bob.id).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (404, 10026));
    assert!(s.use_invite(&inv.code, bob.id).await.unwrap().1);
}

#[tokio::test]
async fn usernames_are_unique_after_compatibility_and_case_folding() {
    let (s, _d) = store().await;
    let (admin, _) = s.register("admin", "password1", false).await.unwrap();
    for shadow in ["ａｄｍｉｎ", "ADMIN", "Ａｄｍｉｎ"] {
        assert!(
            matches!(
                s.register(shadow, "password2", false).await,
                Err(ChatError::Invalid {
                    field: "username",
                    ..
                })
            ),
            "{shadow} must not shadow admin"
        );
    }
    // Login folds too: the fullwidth spelling reaches the one account.
    let (u, _) = s.login("ａｄｍｉｎ", "password1").await.unwrap();
    assert_eq!(u.id, admin.id);
    let (st, _) = s.register("straße", "password1", false).await.unwrap();
    assert!(s.register("STRASSE", "password1", false).await.is_err());
    assert_eq!(s.login("strasse", "password1").await.unwrap().0.id, st.id);
}
