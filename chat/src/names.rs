//! What a name may hold, and the key that makes usernames unique.
//!
//! Names shown to other people (guild, channel, role, nick, username) refuse control characters
//! and the invisible bidirectional formatting characters: an override (U+202E) in a name
//! reverses how the text after it is drawn, so `admin\u{202E}nimda` can pass for someone else
//! in a member list.
//!
//! Usernames are unique by their folded key, not their spelling: NFKC (so fullwidth
//! `ａｄｍｉｎ`, ligatures and other compatibility forms become their plain letters), then
//! lower case, then NFKC again (lowering can leave text that is no longer normalised), plus the
//! few full case foldings lower case misses (`ß` → `ss`, final sigma). Register stores the key
//! with a unique index; login looks the key up. Look-alikes across scripts (Cyrillic `а` for
//! Latin `a`) are not folded: that needs a confusables table.

use unicode_normalization::UnicodeNormalization;

use crate::error::ChatError;

/// Bidirectional formatting characters: embeddings and overrides (U+202A–U+202E), isolates
/// (U+2066–U+2069), and the marks (LRM, RLM, ALM).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Characters no displayed name may hold: C0/C1 controls, bidirectional formatting, the line
/// and paragraph separators and the byte order mark.
pub fn is_forbidden_in_name(c: char) -> bool {
    c.is_control() || is_bidi_control(c) || matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

/// A displayed name, trimmed: 1..=`max` characters, none of them forbidden.
pub fn check_name(field: &'static str, name: &str, max: usize) -> Result<String, ChatError> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > max {
        return Err(ChatError::Invalid {
            field,
            message: format!("Must be between 1 and {max} in length."),
        });
    }
    if n.chars().any(is_forbidden_in_name) {
        return Err(ChatError::Invalid {
            field,
            message: "Must not contain control or bidirectional formatting characters.".into(),
        });
    }
    Ok(n.to_string())
}

/// The key two usernames collide on when they are equal (see the module docs).
pub fn username_key(name: &str) -> String {
    let lowered: String = name.trim().nfkc().collect::<String>().to_lowercase();
    let folded: String = lowered
        .chars()
        .flat_map(|c| match c {
            'ß' | 'ẞ' => "ss".chars().collect::<Vec<_>>(),
            'ς' => vec!['σ'],
            c => vec![c],
        })
        .collect();
    folded.nfkc().collect()
}

impl crate::store::Store {
    /// Give accounts made before the key column existed their key (at start-up, once). Two old
    /// accounts that fold to one key keep the older one's key; the newer is left without one,
    /// logged, and can no longer log in until an operator renames it.
    pub(crate) async fn backfill_username_keys(&self) -> Result<(), ChatError> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, username FROM users WHERE username_key IS NULL ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        for (id, name) in rows {
            let r = sqlx::query("UPDATE users SET username_key = $1 WHERE id = $2")
                .bind(username_key(&name))
                .bind(id)
                .execute(&self.pool)
                .await;
            match r {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    tracing::warn!(
                        user = id,
                        "username folds to one already taken; account left without a login key"
                    );
                }
                r => {
                    r?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fold_compatibility_forms_and_case() {
        #[rustfmt::skip]
        let same = [
            ("admin", "ａｄｍｉｎ"), ("admin", "ADMIN"), ("admin", "Ａｄｍｉｎ"),
            ("strasse", "straße"), ("file", "ﬁle"), ("x2", "x²"), ("σοφος", "ΣΟΦΟΣ"), ("σοφος", "σοφος"),
        ];
        for (a, b) in same {
            assert_eq!(username_key(a), username_key(b), "{a} vs {b}");
        }
        assert_ne!(username_key("admin"), username_key("admln"));
    }

    #[test]
    fn names_refuse_controls_and_bidi_overrides() {
        for bad in [
            "a\u{202E}b",
            "a\u{2066}b",
            "a\u{200F}b",
            "a\nb",
            "a\u{0}b",
            "a\u{7F}b",
            "a\u{85}b",
            "a\u{FEFF}",
        ] {
            assert!(check_name("name", bad, 100).is_err(), "{bad:?}");
        }
        for good in ["general", "Kaffeeküche", "🎮 games", "👩‍💻 devs", "日本語"] {
            assert_eq!(check_name("name", good, 100).unwrap(), good);
        }
        assert!(check_name("name", "   ", 100).is_err());
        assert!(check_name("name", &"x".repeat(101), 100).is_err());
    }
}
