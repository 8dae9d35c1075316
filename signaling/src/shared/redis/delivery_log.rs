//! A node's delivery log: what the node's sessions got, one stream entry per batch of resume
//! writes instead of one entry per session per dispatch.
//!
//! The stream is `{n:<node>}:dlog:<boot>` (one per process start, so numbers handed out by an
//! earlier run never mix in). Each session held on the node has a number there, its *slot*.
//! An entry's fields group the sessions by what they got:
//! - `<route>/<id>/<body>` → `<slot>:<seq>,<slot>:<seq>,…`: the sessions that got the bus
//!   dispatch at position `id` of `route`'s stream, with that body, as sequence number `seq`;
//! - `own` → the same list, for session-specific payloads (a sequence number, not replayed);
//! - `mark` → slots only: the entry exists so that a session's mark can point at it.
//!
//! Entry ids are made here, `<unix ms>-<n>`, increasing: a session's meta can name the entry
//! that holds its first sequence number of a batch before Redis has answered.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::bus::StreamId;
use super::keys::Route;
use crate::dispatch::Body;
use crate::shared::Logged;

/// Ids for the entries of one node's delivery log: the wall clock in ms, never going back.
#[derive(Debug, Default)]
pub struct IdClock {
    last: StreamId,
}

impl IdClock {
    /// The next entry id, after every one handed out before.
    pub fn tick(&mut self) -> StreamId {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last = if ms > self.last.ms {
            StreamId { ms, seq: 0 }
        } else {
            StreamId {
                ms: self.last.ms,
                seq: self.last.seq + 1,
            }
        };
        self.last
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    Shared(Route, StreamId, Body),
    Own,
    Mark,
}

/// One entry being built: the sessions grouped by what they got.
#[derive(Debug, Default)]
pub struct Entry {
    groups: Vec<(Group, String)>,
    index: HashMap<Group, usize>,
}

impl Entry {
    fn list(&mut self, g: Group) -> &mut String {
        let i = *self.index.entry(g).or_insert_with(|| {
            self.groups.push((g, String::new()));
            self.groups.len() - 1
        });
        &mut self.groups[i].1
    }

    /// The session in `slot` got `entry` as sequence number `seq`.
    pub fn add(&mut self, slot: u64, seq: u64, entry: Logged) {
        let g = match entry {
            Logged::Shared { route, id, body } => Group::Shared(route, id, body),
            Logged::Own => Group::Own,
        };
        let l = self.list(g);
        if !l.is_empty() {
            l.push(',');
        }
        let _ = write!(l, "{slot}:{seq}");
    }

    /// Make sure the entry is written (a session's mark points at it).
    pub fn mark(&mut self, slot: u64) {
        let l = self.list(Group::Mark);
        if !l.is_empty() {
            l.push(',');
        }
        let _ = write!(l, "{slot}");
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The stream entry's fields; the entry is empty afterwards.
    pub fn take_fields(&mut self) -> Vec<(String, String)> {
        self.index.clear();
        self.groups
            .drain(..)
            .map(|(g, list)| {
                let name = match g {
                    Group::Shared(route, id, body) => format!("{route}/{id}/{}", body_name(body)),
                    Group::Own => "own".to_string(),
                    Group::Mark => "mark".to_string(),
                };
                (name, list)
            })
            .collect()
    }
}

pub fn body_name(b: Body) -> &'static str {
    match b {
        Body::Full => "full",
        Body::Redacted => "redacted",
        Body::Left => "left",
        Body::Unreferenced => "unreferenced",
        Body::UnreferencedRedacted => "unreferenced_redacted",
    }
}

fn body_of(name: &str) -> Option<Body> {
    [
        Body::Full,
        Body::Redacted,
        Body::Left,
        Body::Unreferenced,
        Body::UnreferencedRedacted,
    ]
    .into_iter()
    .find(|b| body_name(*b) == name)
}

/// What the session in `slot` got, by the fields of one entry (in any order); `Err`: a field
/// that is not one of the above.
pub fn entries_of(slot: u64, fields: &[String]) -> Result<Vec<(u64, Logged)>, String> {
    let mut out = Vec::new();
    for pair in fields.chunks(2) {
        let [name, list] = pair else {
            return Err("odd number of fields".into());
        };
        let logged = match name.as_str() {
            "mark" => continue,
            "own" => Logged::Own,
            _ => {
                let mut it = name.splitn(3, '/');
                let (Some(r), Some(id), Some(b)) = (it.next(), it.next(), it.next()) else {
                    return Err(format!("field {name:?}"));
                };
                let (Ok(route), Ok(id), Some(body)) = (r.parse(), id.parse(), body_of(b)) else {
                    return Err(format!("field {name:?}"));
                };
                Logged::Shared { route, id, body }
            }
        };
        for item in list.split(',') {
            let (s, seq) = item
                .split_once(':')
                .and_then(|(s, q)| Some((s.parse::<u64>().ok()?, q.parse::<u64>().ok()?)))
                .ok_or_else(|| format!("item {item:?} of field {name:?}"))?;
            if s == slot {
                out.push((seq, logged));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lodge_ids::GuildId;

    fn flat(fields: Vec<(String, String)>) -> Vec<String> {
        fields.into_iter().flat_map(|(a, b)| [a, b]).collect()
    }

    #[test]
    fn an_entry_groups_sessions_by_what_they_got_and_reads_back_per_slot() {
        let g = Route::Guild(GuildId(5));
        let id = StreamId { ms: 10, seq: 2 };
        let full = Logged::Shared {
            route: g,
            id,
            body: Body::Full,
        };
        let red = Logged::Shared {
            route: g,
            id,
            body: Body::Redacted,
        };
        let mut e = Entry::default();
        e.add(1, 40, full);
        e.add(2, 7, red);
        e.add(3, 9, full);
        e.add(1, 41, Logged::Own);
        e.mark(4);
        let fields = e.take_fields();
        assert!(e.is_empty());
        assert_eq!(
            fields,
            vec![
                ("g:5/10-2/full".to_string(), "1:40,3:9".to_string()),
                ("g:5/10-2/redacted".to_string(), "2:7".to_string()),
                ("own".to_string(), "1:41".to_string()),
                ("mark".to_string(), "4".to_string()),
            ]
        );
        let f = flat(fields);
        assert_eq!(
            entries_of(1, &f).unwrap(),
            vec![(40, full), (41, Logged::Own)]
        );
        assert_eq!(entries_of(2, &f).unwrap(), vec![(7, red)]);
        assert_eq!(entries_of(4, &f).unwrap(), vec![]);
        assert_eq!(entries_of(99, &f).unwrap(), vec![]);
    }

    #[test]
    fn every_body_round_trips_and_garbage_is_an_error() {
        for b in [
            Body::Full,
            Body::Redacted,
            Body::Left,
            Body::Unreferenced,
            Body::UnreferencedRedacted,
        ] {
            assert_eq!(body_of(body_name(b)), Some(b));
        }
        for bad in [
            vec!["g:5/10-2/nope".to_string(), "1:2".to_string()],
            vec!["x/10-2/full".to_string(), "1:2".to_string()],
            vec!["own".to_string(), "1:x".to_string()],
            vec!["own".to_string()],
        ] {
            assert!(entries_of(1, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_only_grow() {
        let mut c = IdClock::default();
        let mut last = StreamId::ZERO;
        for _ in 0..1000 {
            let id = c.tick();
            assert!(id > last);
            last = id;
        }
    }
}
