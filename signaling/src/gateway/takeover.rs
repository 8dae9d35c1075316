//! Resume on a node that does not hold the session (a cluster): its node died, or the client
//! reconnected elsewhere. The session is rebuilt from the resume store (`shared::ResumeStore`):
//! its meta, and its log of sequence numbers — each naming a dispatch by its route and
//! position on the bus and the body the session got; the payloads are read back from the
//! routes' streams.
//!
//! In order:
//! 1. [`plan`] (pure): refuse (op 9) an ended session, another user's, a sequence number
//!    below the floor or beyond the last logged one, or one whose successors are not all in
//!    the log (trimmed, or a write that never reached Redis); otherwise the dispatches to
//!    replay and, per watched route, the position its node had handled it up to.
//! 2. The replayed dispatches' payloads (refused if one is gone from its route's stream).
//! 3. A local session continuing from the last logged sequence number, subscribed to the hub
//!    and watching its routes (confirmed), then each route read after its position: what the
//!    dead node never delivered, through the same filter as live dispatches. Routes trimmed
//!    past their position, and gap markers, refuse.
//! 4. The collector starts and skips live dispatches up to where the catch-up read: none twice.
//! 5. The previous node, if alive, is told to drop its copy (without ending the voice).
//!
//! Where clients come back: READY's `resume_gateway_url` is `--public-url`'s gateway. discord.py
//! (2.6) resumes only there, retrying the same URL with a back-off (up to about 17 minutes
//! between tries) for as long as it cannot connect; it returns to the default gateway only
//! after op 9. So a cluster must give every node the same, load-balanced `--public-url`:
//! clients then resume through the balancer, which reaches any live node, and this module
//! does the rest. With a node's own address there, its clients never leave it when it dies.
//!
//! What can still be refused: the log is written in batches just after delivery, so a client
//! that acknowledged a dispatch its dead node had not logged yet (a window of about one Redis
//! round trip and the writer's 2 ms of gathering) gets op 9 and identifies again — told, never left silently behind.

use lodge_ids::{GuildId, UserId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use lodge_chat::User;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::client_op::Resume;
use super::registry::{Entry, Session, SessionRef, LIVE_QUEUE};
use super::session::{collector, end_voice, follow_guilds, lock, watch_routes, Watched};
use super::{close, session_filter};
use crate::app::AppState;
use crate::dispatch::{Body, Dispatch, DispatchKind};
use crate::shared::redis::dispatch_bus::GAP_MARKER;
use crate::shared::redis::{Route, StreamId};
use crate::shared::{Logged, StoredSession};

/// Entries one catch-up read asks a route's stream for.
const CATCH_UP_PAGE: usize = 1000;

/// Why a takeover is refused (the client gets op 9 and identifies again).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Ended,
    WrongUser,
    /// The client has not seen READY and its GUILD_CREATEs.
    BelowFloor,
    /// The client acknowledged more than the log holds (the node died before logging it).
    Ahead,
    /// This sequence number is not in the log (trimmed, or its write failed).
    NotLogged(u64),
    /// The holder's delivery log was trimmed past the session's entries.
    Trimmed,
}

/// What a takeover replays, and where it reads each route from.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The session's last sequence number.
    pub top: u64,
    /// Dispatches after the acknowledged sequence number: (seq, route, position, body).
    pub replay: Vec<(u64, Route, StreamId, Body)>,
    /// Every route the session watches → the position its node had handled it up to.
    pub from: BTreeMap<Route, StreamId>,
}

/// Check a stored session against a resume acknowledging `acked`, by `user`.
pub fn plan(st: &StoredSession, user: UserId, acked: u64) -> Result<Plan, Refused> {
    let m = &st.meta;
    if m.ended {
        return Err(Refused::Ended);
    }
    if m.user != user {
        return Err(Refused::WrongUser);
    }
    if !st.intact {
        return Err(Refused::Trimmed);
    }
    let top = st.log.last().map_or(m.floor, |(s, _)| *s).max(m.floor);
    if acked < m.floor {
        return Err(Refused::BelowFloor);
    }
    if acked > top {
        return Err(Refused::Ahead);
    }
    let mut want = acked + 1;
    let mut replay = Vec::new();
    for (seq, e) in st.log.iter().filter(|(s, _)| *s > acked) {
        if *seq != want {
            return Err(Refused::NotLogged(want));
        }
        want += 1;
        if let Logged::Shared { route, id, body } = e {
            replay.push((*seq, *route, *id, *body));
        }
    }
    if want != top + 1 {
        return Err(Refused::NotLogged(want));
    }
    let routes =
        std::iter::once(Route::User(m.user)).chain(m.guilds.iter().map(|g| Route::Guild(*g)));
    let mut from: BTreeMap<Route, StreamId> = routes.map(|r| (r, m.created)).collect();
    let logged = st.log.iter().filter_map(|(_, e)| match e {
        Logged::Shared { route, id, .. } => Some((route, id)),
        Logged::Own => None,
    });
    for (r, id) in m.routes.iter().chain(logged) {
        if let Some(p) = from.get_mut(r) {
            *p = (*p).max(*id);
        }
    }
    Ok(Plan { top, replay, from })
}

/// What a message to the session's previous node says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub session: String,
}

/// Another node took session `session` over: drop this node's copy. Its connection (if any)
/// closes; its voice and its resume state are the new node's now.
pub fn session_moved(s: &AppState, m: &Moved) {
    let Some(r) = s.sessions.get(&m.session) else {
        return;
    };
    {
        let mut g = lock(&r);
        g.take_journal();
        g.moved = true;
        g.end((close::UNKNOWN_ERROR, "session resumed on another node"));
    }
    s.sessions.remove_if(&m.session, &r);
    info!(session = %short(&m.session), "gateway session taken over by another node");
}

fn short(id: &str) -> &str {
    id.get(..6).unwrap_or(id)
}

pub(super) type Resumed = (SessionRef, mpsc::Receiver<String>, Vec<String>);

/// Resume `d` (by `user`, already authenticated) from the resume store; `None`: op 9.
pub(super) async fn resume(s: &AppState, d: &Resume, user: User, conn: u64) -> Option<Resumed> {
    let sid = d.session_id.as_str();
    let uid = user.id;
    let refuse = |why: &dyn std::fmt::Debug| {
        info!(user = %uid, session = %short(sid), acked = d.seq, why = ?why, "resume on this node refused");
    };
    let stored = match s.shared.resume.load(sid, d.seq).await {
        Ok(Some(st)) => st,
        Ok(None) => {
            refuse(&"unknown session");
            return None;
        }
        Err(e) => {
            warn!(error = %e, "resume refused: the resume store is unreachable");
            return None;
        }
    };
    let plan = match plan(&stored, user.id, d.seq) {
        Ok(p) => p,
        Err(e) => {
            refuse(&e);
            return None;
        }
    };
    let replay = replayed(s, &plan).await.map_err(|why| refuse(&why)).ok()?;
    // What this node logs again as the session's new holder: everything after `acked`.
    let relog: Vec<(u64, Logged)> = stored
        .log
        .iter()
        .filter(|(seq, _)| *seq > d.seq)
        .copied()
        .collect();
    let m = stored.meta;
    let guilds: HashSet<GuildId> = m.guilds.iter().copied().collect();
    let sess = Session::new(sid.to_string(), user, m.token_hash, m.intents, guilds)
        .taken_over(plan.top, d.seq, replay);

    // Subscribe and watch (confirmed) before reading the routes back, so nothing published
    // meanwhile falls between the two; the collector drops what both bring.
    let hub_rx = s.hub.subscribe(m.intents);
    hub_rx.identified(sid, uid);
    watch_routes(s, uid, &m.guilds, true);
    let mut watched = Watched {
        s: s.clone(),
        session: sid.to_string(),
        user: uid,
        guilds: m.guilds.clone(),
        journaled: true,
    };
    s.shared.bus.synced().await;
    let evicted = (
        close::SESSION_TIMED_OUT,
        "session ended: the user opened more than max_sessions_per_user sessions",
    );
    let (sref, gone) = match s
        .sessions
        .insert_capped(sess, s.cfg.max_sessions_per_user, evicted)
    {
        Ok(x) => x,
        Err(e) => {
            refuse(&e);
            return None;
        }
    };
    if let Some(old) = gone {
        end_voice(s, &old).await;
    }
    {
        // From here on every sequence number is logged, after the new holder's mark.
        let mut g = lock(&sref);
        s.shared.resume.adopt(sid, plan.from.clone(), d.seq, relog);
        g.keep_journal(s.shared.resume.clone());
    }
    let caught_up = match catch_up(s, &sref, &plan.from, &mut watched).await {
        Ok(c) => c,
        Err(why) => {
            refuse(&why);
            lock(&sref).invalidate("the session could not be taken over");
            s.sessions.remove_if(sid, &sref);
            return None;
        }
    };
    let (live_tx, live_rx) = mpsc::channel(LIVE_QUEUE);
    let frames = {
        let mut g = lock(&sref);
        let Ok(mut frames) = g.replay_after(d.seq) else {
            unreachable!("a taken-over session's buffer starts after the acknowledged seq")
        };
        g.attach(conn, live_tx);
        frames.push(g.record(DispatchKind::Resumed, "{}"));
        frames
    };
    tokio::spawn(collector(
        s.clone(),
        sref.clone(),
        hub_rx,
        watched,
        caught_up,
    ));
    info!(
        user = %uid,
        session = %short(sid),
        from = %m.node,
        replayed = frames.len() - 1,
        "gateway session resumed from another node"
    );
    // The session's node may have hosted its calls too: callers whose room's node is gone get
    // a new home now (no node held their session when the loss was noticed).
    {
        let (s2, guilds) = (
            s.clone(),
            lock(&sref).guilds.iter().copied().collect::<Vec<GuildId>>(),
        );
        let sid2 = sid.to_string();
        tokio::spawn(async move { crate::nodes::rehome_session(&s2, uid, &guilds, &sid2).await });
    }
    if m.node != s.shared.me {
        let msg = crate::voice::executor::NodeMsg::SessionMoved(Moved {
            session: sid.to_string(),
        });
        let msg = serde_json::to_string(&msg).expect("a node message serializes");
        if let Err(e) = s.shared.bus.to_node(&m.node, msg).await {
            debug!(node = %m.node, error = %e, "the session's previous node did not hear of the takeover (gone?)");
        }
    }
    Some((sref, live_rx, frames))
}

/// The logged dispatches after the acknowledged sequence number, read back from their routes.
async fn replayed(s: &AppState, plan: &Plan) -> Result<Vec<(u64, Entry)>, String> {
    let at: Vec<(Route, StreamId)> = plan.replay.iter().map(|(_, r, i, _)| (*r, *i)).collect();
    let payloads = s
        .shared
        .resume
        .payloads(&at)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(at.len());
    for ((seq, route, id, body), p) in plan.replay.iter().zip(payloads) {
        let p = p.ok_or_else(|| format!("dispatch {id} of {route} is gone from its stream"))?;
        let mut d: Dispatch =
            serde_json::from_str(&p).map_err(|_| format!("dispatch {id} of {route} is not one"))?;
        d.bus = Some((*route, *id));
        out.push((*seq, Entry::Shared(Arc::new(d), *body)));
    }
    Ok(out)
}

/// Read each route after its position and push what the session gets, in bus order across
/// routes. Returns, per route, the position read up to.
async fn catch_up(
    s: &AppState,
    sref: &SessionRef,
    from: &BTreeMap<Route, StreamId>,
    watched: &mut Watched,
) -> Result<HashMap<Route, StreamId>, String> {
    let mut upto = HashMap::new();
    let mut all: Vec<(StreamId, Route, String)> = Vec::new();
    let store = &s.shared.resume;
    for (route, start) in from {
        if !store
            .route_intact(*route, *start)
            .await
            .map_err(|e| e.to_string())?
        {
            return Err(format!("{route} was trimmed past {start}"));
        }
        let mut pos = *start;
        loop {
            let page = store
                .route_after(*route, pos, CATCH_UP_PAGE)
                .await
                .map_err(|e| e.to_string())?;
            let n = page.len();
            for (id, payload) in page {
                pos = id;
                all.push((id, *route, payload));
            }
            if n < CATCH_UP_PAGE {
                break;
            }
        }
        upto.insert(*route, pos);
    }
    all.sort_by_key(|(id, r, _)| (*id, *r));
    for (id, route, payload) in all {
        if payload == GAP_MARKER {
            return Err(format!("{route} lost dispatches (gap marker {id})"));
        }
        let Ok(mut d) = serde_json::from_str::<Dispatch>(&payload) else {
            warn!(%route, %id, "malformed dispatch on the bus; skipped");
            continue;
        };
        d.bus = Some((route, id));
        let d = Arc::new(d);
        follow_guilds(s, &d, watched);
        let Some((user, body)) = session_filter::addressed(sref, &d) else {
            continue;
        };
        let Some(body) = session_filter::visible_body(s, sref, user, &d, body).await else {
            continue;
        };
        lock(sref).push(Entry::Shared(d, body));
    }
    Ok(upto)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::{NodeId, SessionMeta};

    const G: Route = Route::Guild(GuildId(5));
    const U: Route = Route::User(UserId(7));

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    fn shared(route: Route, ms: u64) -> Logged {
        Logged::Shared {
            route,
            id: id(ms),
            body: Body::Full,
        }
    }

    fn stored(log: Vec<(u64, Logged)>) -> StoredSession {
        StoredSession {
            meta: SessionMeta {
                session: "s".into(),
                user: UserId(7),
                token_hash: "h".into(),
                intents: 0,
                guilds: vec![GuildId(5)],
                floor: 2,
                created: id(100),
                routes: BTreeMap::new(),
                node: NodeId("a".into()),
                ended: false,
            },
            log,
            intact: true,
        }
    }

    #[test]
    fn a_plan_replays_what_follows_and_reads_routes_from_their_last_logged_position() {
        let st = stored(vec![
            (3, shared(G, 110)),
            (4, Logged::Own),
            (5, shared(U, 120)),
            (6, shared(G, 130)),
        ]);
        let p = plan(&st, UserId(7), 3).unwrap();
        assert_eq!(p.top, 6);
        assert_eq!(
            p.replay,
            vec![(5, U, id(120), Body::Full), (6, G, id(130), Body::Full)],
            "the own payload keeps its number but is not replayed"
        );
        assert_eq!(p.from, [(G, id(130)), (U, id(120))].into());
        assert_eq!(plan(&st, UserId(7), 6).unwrap().replay, vec![]);
        // Nothing logged yet: read every route from the session's creation.
        let p = plan(&stored(vec![]), UserId(7), 2).unwrap();
        assert_eq!((p.top, p.from), (2, [(G, id(100)), (U, id(100))].into()));
    }

    #[test]
    fn a_plan_refuses_what_it_cannot_replay_whole() {
        let st = stored(vec![(3, shared(G, 110)), (4, shared(G, 111))]);
        let cases = [
            (8, 3, Refused::WrongUser),
            (7, 1, Refused::BelowFloor),
            (7, 5, Refused::Ahead),
        ];
        for (user, acked, want) in cases {
            assert_eq!(plan(&st, UserId(user), acked), Err(want));
        }
        let trimmed = stored(vec![(10, shared(G, 110)), (11, shared(G, 111))]);
        assert_eq!(plan(&trimmed, UserId(7), 5), Err(Refused::NotLogged(6)));
        assert!(plan(&trimmed, UserId(7), 9).is_ok());
        let hole = stored(vec![(3, shared(G, 110)), (5, shared(G, 111))]);
        assert_eq!(plan(&hole, UserId(7), 2), Err(Refused::NotLogged(4)));
        let mut ended = stored(vec![]);
        ended.meta.ended = true;
        assert_eq!(plan(&ended, UserId(7), 2), Err(Refused::Ended));
        let mut trimmed_node_log = stored(vec![(3, shared(G, 110))]);
        trimmed_node_log.intact = false;
        assert_eq!(plan(&trimmed_node_log, UserId(7), 3), Err(Refused::Trimmed));
    }

    #[test]
    fn a_route_trimmed_out_of_the_log_starts_from_its_snapshot() {
        let mut st = stored(vec![(5000, shared(U, 900))]);
        st.meta.routes = [(G, id(800)), (Route::Guild(GuildId(99)), id(1))].into();
        let p = plan(&st, UserId(7), 4999).unwrap();
        assert_eq!(
            p.from,
            [(G, id(800)), (U, id(900))].into(),
            "routes no longer watched are not read"
        );
    }
}
