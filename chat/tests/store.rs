//! The store against a real SQLite file.

use lodge_chat::*;

/// SQLite in a temp dir, or a fresh PostgreSQL database when TEST_POSTGRES_URL is set.
async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = match lodge_chat::store::testing::database_url_from_env().await {
        Some(url) => Store::open_url(&url).await.unwrap(),
        None => Store::open(&dir.path().join("nested/lodge.db"))
            .await
            .unwrap(),
    };
    (s, dir)
}

#[tokio::test]
async fn accounts_tokens_and_revocation() {
    let (s, _d) = store().await;
    let (u, tok) = s.register("alice", "correct horse", false).await.unwrap();
    assert_eq!(s.authenticate(&tok).await.unwrap(), u);
    assert!(matches!(
        s.register("ALICE", "another pass", false).await,
        Err(ChatError::Invalid {
            field: "username",
            ..
        })
    ));
    assert!(matches!(
        s.register("bob", "short", false).await,
        Err(ChatError::Invalid {
            field: "password",
            ..
        })
    ));
    assert!(s.login("alice", "wrong password").await.is_err());
    let (u2, tok2) = s.login("alice", "correct horse").await.unwrap();
    assert_eq!(u2.id, u.id);
    assert_ne!(tok, tok2);
    s.revoke_token(&tok).await.unwrap();
    assert!(matches!(
        s.authenticate(&tok).await,
        Err(ChatError::Unauthorized)
    ));
    assert!(s.authenticate(&tok2).await.is_ok());
    assert!(matches!(
        s.authenticate("garbage").await,
        Err(ChatError::Unauthorized)
    ));
}

#[tokio::test]
async fn guild_defaults_invites_and_voice_permissions() {
    let (s, _d) = store().await;
    let (owner, _) = s.register("owner", "password1", false).await.unwrap();
    let (bob, _) = s.register("bob", "password2", false).await.unwrap();
    let g = s.create_guild(&owner, "Den").await.unwrap();
    let roles = s.roles(g.id).await.unwrap();
    assert_eq!(roles.len(), 1);
    assert_eq!(
        (roles[0].id, roles[0].name.as_str()),
        (lodge_chat::RoleId::everyone(g.id), "@everyone")
    );
    let chans = s.channels(g.id).await.unwrap();
    let names: Vec<(&str, ChannelKind)> = chans.iter().map(|c| (c.name.as_str(), c.kind)).collect();
    assert_eq!(
        names,
        vec![
            ("general", ChannelKind::Text),
            ("General", ChannelKind::Voice)
        ]
    );
    let voice = chans[1].clone();

    // Not a member yet: nothing.
    assert_eq!(s.permissions(&g, Some(&voice), bob.id).await.unwrap().0, 0);
    let inv = s.create_invite(&chans[0], owner.id, 1, 0).await.unwrap();
    let (_, added) = s.use_invite(&inv.code, bob.id).await.unwrap();
    assert!(added);
    // max_uses 1: used up.
    assert!(matches!(
        s.use_invite(&inv.code, bob.id).await,
        Err(ChatError::Unknown("invite"))
    ));
    let p = s.permissions(&g, Some(&voice), bob.id).await.unwrap();
    assert!(p.has(Permissions::CONNECT | Permissions::SPEAK | Permissions::VIEW_CHANNEL));

    // Deny SPEAK to @everyone in the voice channel: bob can join but not speak; owner still can.
    s.set_overwrite(
        voice.id,
        Overwrite {
            target: g.id.get(),
            kind: OverwriteKind::Role,
            allow: 0,
            deny: Permissions::SPEAK,
        },
    )
    .await
    .unwrap();
    let voice = s.channel(voice.id).await.unwrap();
    let p = s.permissions(&g, Some(&voice), bob.id).await.unwrap();
    assert!(p.has(Permissions::CONNECT) && !p.has(Permissions::SPEAK));
    assert!(s
        .permissions(&g, Some(&voice), owner.id)
        .await
        .unwrap()
        .has(Permissions::SPEAK));
    // A role with an allow overwrite gives it back.
    let speakers = s.create_role(g.id, "speakers", 0).await.unwrap();
    s.add_member_role(g.id, bob.id, speakers.id).await.unwrap();
    s.set_overwrite(
        voice.id,
        Overwrite {
            target: speakers.id.get(),
            kind: OverwriteKind::Role,
            allow: Permissions::SPEAK,
            deny: 0,
        },
    )
    .await
    .unwrap();
    let voice = s.channel(voice.id).await.unwrap();
    assert!(s
        .permissions(&g, Some(&voice), bob.id)
        .await
        .unwrap()
        .has(Permissions::SPEAK));

    // Channel CRUD and limits named in errors.
    let c = s
        .create_channel(
            g.id,
            ChannelSpec {
                name: Some("lounge".into()),
                kind: Some(ChannelKind::Voice),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(c.bitrate, Some(64_000));
    let c = s
        .update_channel(
            c.id,
            ChannelSpec {
                name: Some("Lounge 2".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(c.name, "Lounge 2");
    let e = s
        .create_channel(
            g.id,
            ChannelSpec {
                name: Some("x".repeat(101)),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("100"), "{e}");
    s.delete_channel(c.id).await.unwrap();
    assert!(matches!(
        s.channel(c.id).await,
        Err(ChatError::Unknown("channel"))
    ));
    assert_eq!(s.user_guilds(bob.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn messages_history_nonce_mentions_reactions() {
    let (s, _d) = store().await;
    let (alice, _) = s.register("alice", "password1", false).await.unwrap();
    let (bob, _) = s.register("bob", "password2", false).await.unwrap();
    let (carol, _) = s.register("carol", "password3", false).await.unwrap();
    let g = s.create_guild(&alice, "Den").await.unwrap();
    s.add_member(g.id, bob.id).await.unwrap();
    let text = s
        .channels(g.id)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.kind == ChannelKind::Text)
        .unwrap();

    let mut ids = Vec::new();
    for i in 0..30 {
        let (m, new) = s
            .create_message(
                &text,
                &alice,
                NewMessage {
                    content: format!("m{i}"),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(new);
        ids.push(m.id);
    }
    // Newest first, limit, before, after, around.
    let page = s
        .messages(
            text.id,
            MessageQuery {
                limit: 5,
                ..Default::default()
            },
            alice.id,
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        ["m29", "m28", "m27", "m26", "m25"]
    );
    let page = s
        .messages(
            text.id,
            MessageQuery {
                limit: 3,
                before: Some(ids[10]),
                ..Default::default()
            },
            alice.id,
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        ["m9", "m8", "m7"]
    );
    let page = s
        .messages(
            text.id,
            MessageQuery {
                limit: 3,
                after: Some(ids[10]),
                ..Default::default()
            },
            alice.id,
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        ["m13", "m12", "m11"]
    );
    let page = s
        .messages(
            text.id,
            MessageQuery {
                limit: 5,
                around: Some(ids[10]),
                ..Default::default()
            },
            alice.id,
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        ["m12", "m11", "m10", "m9", "m8"]
    );

    // Nonce dedup only when enforced.
    let nm = |n: &str, enforce| NewMessage {
        content: "once".into(),
        nonce: Some(n.into()),
        enforce_nonce: enforce,
        ..Default::default()
    };
    let (a, _) = s.create_message(&text, &bob, nm("n1", true)).await.unwrap();
    let (b, new) = s.create_message(&text, &bob, nm("n1", true)).await.unwrap();
    assert_eq!((a.id, new), (b.id, false));
    let (c, new) = s
        .create_message(&text, &bob, nm("n1", false))
        .await
        .unwrap();
    assert!(new && c.id != a.id);
    assert!(s
        .create_message(&text, &bob, nm(&"x".repeat(26), true))
        .await
        .is_err());

    // Limits and mentions: only members count; @everyone needs the right.
    let e = s
        .create_message(
            &text,
            &bob,
            NewMessage {
                content: "x".repeat(2001),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("2000"), "{e}");
    assert!(s
        .create_message(
            &text,
            &bob,
            NewMessage {
                content: "y".repeat(2000),
                ..Default::default()
            }
        )
        .await
        .is_ok());
    let content = format!(
        "hey <@{}> <@!{}> <@{}> <@&{}> @everyone",
        alice.id, alice.id, carol.id, g.id
    );
    let (m, _) = s
        .create_message(
            &text,
            &bob,
            NewMessage {
                content: content.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        m.mentions.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![alice.id]
    );
    assert_eq!(m.mention_roles, vec![lodge_chat::RoleId::everyone(g.id)]);
    assert!(!m.mention_everyone);
    let (m2, _) = s
        .create_message(
            &text,
            &alice,
            NewMessage {
                content,
                may_mention_everyone: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(m2.mention_everyone);

    // Replies must point at a message of the same guild.
    let (r, _) = s
        .create_message(
            &text,
            &bob,
            NewMessage {
                content: "reply".into(),
                reference: Some((m.id, text.id)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.reference, Some((m.id, text.id)));
    assert!(s
        .create_message(
            &text,
            &bob,
            NewMessage {
                content: "bad".into(),
                reference: Some((lodge_chat::MessageId(12345), text.id)),
                ..Default::default()
            }
        )
        .await
        .is_err());

    // Reactions with per-viewer `me`.
    assert!(s.add_reaction(m.id, "👍", alice.id).await.unwrap());
    assert!(!s.add_reaction(m.id, "👍", alice.id).await.unwrap());
    assert!(s.add_reaction(m.id, "👍", bob.id).await.unwrap());
    let seen = s.message(text.id, m.id, bob.id).await.unwrap();
    assert_eq!(
        seen.reactions,
        vec![ReactionCount {
            emoji: "👍".into(),
            count: 2,
            me: true
        }]
    );
    assert_eq!(s.reaction_users(m.id, "👍", 10, 0).await.unwrap().len(), 2);
    assert!(s.remove_reaction(m.id, "👍", bob.id).await.unwrap());
    assert_eq!(
        s.message(text.id, m.id, bob.id).await.unwrap().reactions[0],
        ReactionCount {
            emoji: "👍".into(),
            count: 1,
            me: false
        }
    );

    // Edit and delete.
    let e = s
        .edit_message(text.id, m.id, "edited", alice.id)
        .await
        .unwrap();
    assert_eq!(e.content, "edited");
    assert!(e.edited_at.is_some());
    s.delete_message(text.id, m.id).await.unwrap();
    assert!(matches!(
        s.message(text.id, m.id, alice.id).await,
        Err(ChatError::Unknown("message"))
    ));
}

#[tokio::test]
async fn full_text_search_respects_channels_and_edits() {
    let (s, _d) = store().await;
    let (alice, _) = s.register("alice", "password1", false).await.unwrap();
    let g = s.create_guild(&alice, "Den").await.unwrap();
    let text = s
        .channels(g.id)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.kind == ChannelKind::Text)
        .unwrap();
    let other = s
        .create_channel(
            g.id,
            ChannelSpec {
                name: Some("other".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let post = |c: &Channel, t: &str| {
        let (s, c, a, t) = (s.clone(), c.clone(), alice.clone(), t.to_string());
        async move {
            s.create_message(
                &c,
                &a,
                NewMessage {
                    content: t,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .0
        }
    };
    post(&text, "the quick brown fox").await;
    let m2 = post(&text, "a quick reply").await;
    post(&other, "quick but hidden").await;
    let (n, hits) = s
        .search_messages(g.id, &[text.id], "quick", 25, 0, alice.id)
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(hits[0].id, m2.id, "newest first");
    let (n, _) = s
        .search_messages(g.id, &[text.id, other.id], "quick", 25, 0, alice.id)
        .await
        .unwrap();
    assert_eq!(n, 3);
    let (n, _) = s
        .search_messages(g.id, &[text.id], "quick fox", 25, 0, alice.id)
        .await
        .unwrap();
    assert_eq!(n, 1, "all words required");
    // Edits and deletes keep the index true; hostile syntax is just words.
    s.edit_message(text.id, m2.id, "a slow reply", alice.id)
        .await
        .unwrap();
    assert_eq!(
        s.search_messages(g.id, &[text.id], "quick", 25, 0, alice.id)
            .await
            .unwrap()
            .0,
        1
    );
    assert_eq!(
        s.search_messages(g.id, &[text.id], "slow", 25, 0, alice.id)
            .await
            .unwrap()
            .0,
        1
    );
    s.delete_message(text.id, m2.id).await.unwrap();
    assert_eq!(
        s.search_messages(g.id, &[text.id], "slow", 25, 0, alice.id)
            .await
            .unwrap()
            .0,
        0
    );
    assert_eq!(
        s.search_messages(g.id, &[text.id], "\" OR * NEAR( -", 25, 0, alice.id)
            .await
            .unwrap()
            .0,
        0
    );
    assert!(s
        .search_messages(g.id, &[text.id], "   ", 25, 0, alice.id)
        .await
        .is_err());
}

#[tokio::test]
async fn member_pages_carry_each_members_roles_and_channel_permissions_match() {
    let (s, _d) = store().await;
    let (owner, _) = s.register("owner", "password1", false).await.unwrap();
    let g = s.create_guild(&owner, "Den").await.unwrap();
    let red = s.create_role(g.id, "red", 0).await.unwrap();
    let blue = s.create_role(g.id, "blue", 0).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let (u, _) = s
            .register(&format!("user{i}"), "password1", false)
            .await
            .unwrap();
        assert!(s.add_member(g.id, u.id).await.unwrap());
        if i % 2 == 0 {
            s.add_member_role(g.id, u.id, red.id).await.unwrap();
        }
        if i % 3 == 0 {
            s.add_member_role(g.id, u.id, blue.id).await.unwrap();
        }
        ids.push(u.id);
    }
    assert_eq!(s.member_count(g.id).await.unwrap(), 8, "7 and the owner");
    // Page through three at a time: every member once, each with exactly their own roles.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.members(g.id, 3, after).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.user.id.get();
        for m in page {
            let mut want = Vec::new();
            if let Some(i) = ids.iter().position(|&id| id == m.user.id) {
                if i % 2 == 0 {
                    want.push(red.id);
                }
                if i % 3 == 0 {
                    want.push(blue.id);
                }
            }
            let mut got = m.roles.clone();
            got.sort();
            want.sort();
            assert_eq!(got, want, "roles of {}", m.user.username);
            seen.push(m.user.id);
        }
    }
    assert_eq!(seen.len(), 8);

    // Hide the text channel from @everyone, let red see it: one read of the roles gives the
    // same answer as asking channel by channel.
    let chans = s.channels(g.id).await.unwrap();
    s.set_overwrite(
        chans[0].id,
        Overwrite {
            target: g.id.get(),
            kind: OverwriteKind::Role,
            allow: 0,
            deny: Permissions::VIEW_CHANNEL,
        },
    )
    .await
    .unwrap();
    s.set_overwrite(
        chans[0].id,
        Overwrite {
            target: red.id.get(),
            kind: OverwriteKind::Role,
            allow: Permissions::VIEW_CHANNEL,
            deny: 0,
        },
    )
    .await
    .unwrap();
    let chans = s.channels(g.id).await.unwrap();
    let (stranger, _) = s.register("stranger", "password1", false).await.unwrap();
    for user in ids.iter().copied().chain([owner.id, stranger.id]) {
        let all = s.channel_permissions(&g, &chans, user).await.unwrap();
        for (c, p) in chans.iter().zip(&all) {
            assert_eq!(*p, s.permissions(&g, Some(c), user).await.unwrap());
        }
    }
    let p = s.channel_permissions(&g, &chans, ids[1]).await.unwrap();
    assert!(!p[0].has(Permissions::VIEW_CHANNEL) && p[1].has(Permissions::VIEW_CHANNEL));
    let p = s.channel_permissions(&g, &chans, ids[0]).await.unwrap();
    assert!(p[0].has(Permissions::VIEW_CHANNEL));
    let p = s
        .channel_permissions(&g, &chans, stranger.id)
        .await
        .unwrap();
    assert!(p.iter().all(|p| p.0 == 0));
}

/// `require_dave`: a voice channel's setting, kept until changed; refused with the field named
/// on any other channel kind, where nothing is written.
#[tokio::test]
async fn voice_channels_may_require_dave_and_no_other_kind_may() {
    let (s, _d) = store().await;
    let (owner, _) = s.register("owner", "password1", false).await.unwrap();
    let g = s.create_guild(&owner, "Den").await.unwrap();
    let before = s.channels(g.id).await.unwrap();
    assert!(
        before.iter().all(|c| !c.require_dave),
        "a new guild's channels require nothing"
    );
    for c in &before {
        assert!(!s.channel_requires_dave(c.id).await.unwrap());
    }

    let spec = |name: &str, kind, require_dave| ChannelSpec {
        name: Some(name.into()),
        kind: Some(kind),
        require_dave,
        ..Default::default()
    };
    let plain = s
        .create_channel(g.id, spec("plain", ChannelKind::Voice, None))
        .await
        .unwrap();
    assert!(!plain.require_dave);
    let e2ee = s
        .create_channel(g.id, spec("e2ee", ChannelKind::Voice, Some(true)))
        .await
        .unwrap();
    assert!(e2ee.require_dave);
    assert!(s.channel(e2ee.id).await.unwrap().require_dave);
    assert!(s.channel_requires_dave(e2ee.id).await.unwrap());
    assert!(!s.channel_requires_dave(plain.id).await.unwrap());
    let listed = s.channels(g.id).await.unwrap();
    let flags: Vec<(&str, bool)> = listed
        .iter()
        .map(|c| (c.name.as_str(), c.require_dave))
        .collect();
    assert!(
        flags.contains(&("e2ee", true)) && flags.contains(&("plain", false)),
        "{flags:?}"
    );

    // An update that does not name the field keeps it, other voice settings included.
    let e2ee = s
        .update_channel(
            e2ee.id,
            ChannelSpec {
                name: Some("e2ee 2".into()),
                bitrate: Some(96_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(e2ee.require_dave);
    assert!(s.channel_requires_dave(e2ee.id).await.unwrap());
    // Off, then on again, each read back from storage.
    for want in [false, true] {
        let c = s
            .update_channel(
                e2ee.id,
                ChannelSpec {
                    require_dave: Some(want),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(c.require_dave, want);
        assert_eq!(s.channel(e2ee.id).await.unwrap().require_dave, want);
        assert_eq!(s.channel_requires_dave(e2ee.id).await.unwrap(), want);
        assert_eq!(s.channel(e2ee.id).await.unwrap().bitrate, Some(96_000));
    }

    // Text and category channels: true is refused on create (nothing made) and on update
    // (nothing changed, not even the name sent with it); false is every channel's value.
    let count = s.channels(g.id).await.unwrap().len();
    for kind in [ChannelKind::Text, ChannelKind::Category] {
        let e = s
            .create_channel(g.id, spec("nope", kind, Some(true)))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ChatError::Invalid {
                    field: "require_dave",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.status(), 400);
    }
    assert_eq!(s.channels(g.id).await.unwrap().len(), count);
    let text = s
        .create_channel(g.id, spec("chat", ChannelKind::Text, Some(false)))
        .await
        .unwrap();
    assert!(!text.require_dave);
    let e = s
        .update_channel(
            text.id,
            ChannelSpec {
                name: Some("renamed".into()),
                require_dave: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        ChatError::Invalid {
            field: "require_dave",
            ..
        }
    ));
    let text = s.channel(text.id).await.unwrap();
    assert_eq!((text.name.as_str(), text.require_dave), ("chat", false));
    assert!(!s.channel_requires_dave(text.id).await.unwrap());

    s.delete_channel(e2ee.id).await.unwrap();
    assert!(matches!(
        s.channel_requires_dave(e2ee.id).await,
        Err(ChatError::Unknown("channel"))
    ));
}

/// A database made before migration 0007 upgrades in place: its channels are kept and require
/// nothing.
#[tokio::test]
async fn channels_made_before_require_dave_existed_require_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, backend) = match lodge_chat::store::testing::database_url_from_env().await {
        Some(url) => (url, "postgres"),
        None => (
            format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display()),
            "sqlite",
        ),
    };
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut old = sqlx::migrate::Migrator::new(src).await.unwrap();
    assert!(old.iter().any(|m| m.version == 7), "0007 is require_dave");
    old.migrations = old
        .iter()
        .filter(|m| m.version < 7)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    old.run(&pool).await.unwrap();
    sqlx::query("INSERT INTO users (id, username, password_hash, bot, created_at) VALUES (1, 'old', 'x', 0, 0)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO guilds (id, name, owner_id, created_at) VALUES (10, 'Old Den', 1, 0)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO channels (id, guild_id, type, name, position, bitrate, user_limit) VALUES (20, 10, 2, 'Old Voice', 0, 64000, 0)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let s = Store::open_url(&url).await.unwrap();
    let c = s.channel(lodge_ids::ChannelId(20)).await.unwrap();
    assert_eq!((c.name.as_str(), c.require_dave), ("Old Voice", false));
    assert!(!s.channel_requires_dave(c.id).await.unwrap());
    let c = s
        .update_channel(
            c.id,
            ChannelSpec {
                require_dave: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(c.require_dave && s.channel_requires_dave(c.id).await.unwrap());
}
