//! The cascade's decisions, sans-IO: which trunk gets which speaker, which trunk stream is
//! which remote speaker, which rooms other nodes listen to, when an idle stream ends.
//!
//! [`CascadeCore`] never reads the clock, touches a channel or awaits: its shell
//! ([`super::spawn`]) owns the trunks' queues, the node's handle and the timer, feeds the core
//! what happened and carries out what it asks for. The same inputs at the same `now` give the
//! same outputs, so the tests below drive it with a simulated clock and no runtime.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lodge_sfu::{Export, ParticipantIdx, RemotePacket, RoomId, Ssrc, UserId};

use super::edge_rooms::EdgeRooms;
use crate::session::{Delivered, Notice};
use crate::trunk::Peer;
use crate::wire::Control;

pub type TrunkId = u64;

/// A speaker who sent nothing for this long has its trunk stream closed.
pub const STREAM_IDLE: Duration = Duration::from_secs(10);
/// How often streams are checked for [`STREAM_IDLE`]: a silent stream ends 10 to 12 s after
/// its last packet.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// Which side of the trunks this node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Origin,
    Edge,
}

/// What signaling learns from the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterEvent {
    TrunkUp {
        id: TrunkId,
        peer: Peer,
    },
    TrunkDown {
        id: TrunkId,
        peer: Peer,
    },
    /// An app-level message from a trunk peer (placement, load, interest is handled here).
    App {
        id: TrunkId,
        msg: Control,
    },
}

/// One packet of a stream this node sends on a trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMedia {
    pub stream: u16,
    pub rtp_ts: u32,
    pub level: u8,
    pub marker: bool,
    pub payload: Bytes,
}

/// What the core asks of the node (the SFU shell's handle).
#[derive(Debug)]
pub enum NodeCommand {
    /// (Edge) export every room's local speakers.
    ExportAll,
    /// Whether other nodes listen to `room` (its speakers are exported while they talk).
    SetExported {
        room: RoomId,
        on: bool,
    },
    /// A trunk opened a stream: add it as a remote speaker, and answer with
    /// [`CascadeCore::handle_remote_added`] (a refusal needs no answer: the stream is ignored).
    AddRemote {
        trunk: TrunkId,
        stream: u16,
        room: RoomId,
        user: UserId,
        ssrc: Option<Ssrc>,
    },
    RemoveRemote(ParticipantIdx),
    RemoteRtp(RemotePacket),
}

/// What the core produced, in the order it must be carried out.
#[derive(Debug)]
pub enum Output {
    /// Open `stream` on `trunk` for `speaker` and send it `first`. Never waited for: when the
    /// trunk's queue cannot take the open, skip `first` and tell the core
    /// ([`CascadeCore::handle_open_dropped`]).
    Open {
        trunk: TrunkId,
        speaker: ParticipantIdx,
        stream: u16,
        room: u64,
        user: u64,
        ssrc: Option<u32>,
        first: StreamMedia,
    },
    /// A packet of an open stream. Never waited for: a full queue drops it (counted by the
    /// shell).
    Media {
        trunk: TrunkId,
        media: StreamMedia,
    },
    /// End a stream. Never waited for (the peer's stream then ends with the trunk, or idles).
    Close {
        trunk: TrunkId,
        stream: u16,
    },
    /// A control message for the peer (interest). Reliable: wait for room in the queue.
    Control {
        trunk: TrunkId,
        msg: Control,
    },
    Node(NodeCommand),
    /// For signaling. After [`ClusterEvent::TrunkDown`] the core has forgotten the trunk.
    Cluster(ClusterEvent),
}

/// One trunk as the core sees it (the shell adds its queue and QUIC figures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkView<'a> {
    pub id: TrunkId,
    pub peer: &'a Peer,
    pub load: u32,
    pub streams_out: usize,
    pub streams_in: usize,
    pub rooms_of_interest: usize,
}

/// A speaker this node sends on a trunk.
#[derive(Debug, Clone, Copy)]
struct OutStream {
    stream: u16,
    /// When the speaker's last packet was sent (idle after [`STREAM_IDLE`]).
    last: Instant,
    room: u64,
}

struct Link {
    peer: Peer,
    /// (Origin role) rooms the peer wants, from its `Interest` messages.
    interest: HashSet<u64>,
    /// Speakers sent on this trunk; stream numbers are unique among them.
    out: HashMap<ParticipantIdx, OutStream>,
    load: u32,
    /// Where the search for a free stream number starts.
    next_stream: u16,
}

impl Link {
    /// End the streams of `room` on this trunk.
    fn close_room(&mut self, id: TrunkId, room: u64, out: &mut VecDeque<Output>) {
        let ended: Vec<ParticipantIdx> = self
            .out
            .iter()
            .filter(|(_, o)| o.room == room)
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            let o = self.out.remove(&p).expect("collected from out");
            out.push_back(Output::Close {
                trunk: id,
                stream: o.stream,
            });
        }
    }

    /// A stream number no speaker on this trunk uses. The cascade numbers its streams itself:
    /// nothing to wait for, so a busy trunk can never hold the cascade up.
    fn free_stream(&mut self) -> u16 {
        let mut s = self.next_stream;
        while self.out.values().any(|o| o.stream == s) {
            s = s.wrapping_add(1);
        }
        self.next_stream = s.wrapping_add(1);
        s
    }
}

/// Remote speakers: the trunk stream each one arrives on, and back.
///
/// Invariant: `by_stream[(t, s)] == idx` ⇔ `trunk_of[idx] == t`; both maps change together.
#[derive(Default)]
struct RemoteSpeakers {
    by_stream: HashMap<(TrunkId, u16), ParticipantIdx>,
    trunk_of: HashMap<ParticipantIdx, TrunkId>,
}

impl RemoteSpeakers {
    fn get(&self, trunk: TrunkId, stream: u16) -> Option<ParticipantIdx> {
        self.by_stream.get(&(trunk, stream)).copied()
    }

    fn trunk_of(&self, idx: ParticipantIdx) -> Option<TrunkId> {
        self.trunk_of.get(&idx).copied()
    }

    fn insert(&mut self, trunk: TrunkId, stream: u16, idx: ParticipantIdx) {
        let old = self.by_stream.insert((trunk, stream), idx);
        debug_assert!(old.is_none(), "a stream's old speaker is removed first");
        self.trunk_of.insert(idx, trunk);
        debug_assert_eq!(self.by_stream.len(), self.trunk_of.len());
    }

    fn remove(&mut self, trunk: TrunkId, stream: u16) -> Option<ParticipantIdx> {
        let idx = self.by_stream.remove(&(trunk, stream))?;
        let t = self.trunk_of.remove(&idx);
        debug_assert_eq!(t, Some(trunk));
        Some(idx)
    }

    fn streams_of(&self, trunk: TrunkId) -> Vec<u16> {
        self.by_stream
            .keys()
            .filter(|k| k.0 == trunk)
            .map(|k| k.1)
            .collect()
    }

    fn count_on(&self, trunk: TrunkId) -> usize {
        self.by_stream.keys().filter(|k| k.0 == trunk).count()
    }
}

/// The cascade of one node: its trunks, the speakers it sends on each, the remote speakers
/// each brings, and the rooms each peer listens to. A sans-IO state machine.
///
/// # Handlers: something happened
///
/// - [`handle_export`](Self::handle_export) / [`handle_export_end`](Self::handle_export_end):
///   the node exported a speaker's packet, or stopped exporting the speaker (muted, gone).
/// - [`handle_trunk_up`](Self::handle_trunk_up): a trunk is established (ids are never reused).
/// - [`handle_trunk_media`](Self::handle_trunk_media) /
///   [`handle_trunk_notice`](Self::handle_trunk_notice): a trunk delivered a packet, a stream
///   open/close or an app message (interest, load, placement…).
/// - [`handle_trunk_down`](Self::handle_trunk_down): a trunk ended; its remote speakers leave.
/// - [`handle_timeout`](Self::handle_timeout): [`poll_timeout`](Self::poll_timeout) has come.
/// - Answers to outputs: [`handle_open_dropped`](Self::handle_open_dropped) (an
///   [`Output::Open`] the trunk's queue refused), [`handle_remote_added`](Self::handle_remote_added)
///   (the node's index for a [`NodeCommand::AddRemote`]).
///
/// # Commands: signaling asks
///
/// - [`send_app`](Self::send_app): a control message for one trunk's peer.
/// - [`set_interest`](Self::set_interest) (edge): the nodes that placed callers in a room.
///
/// # Polls
///
/// - [`poll_output`](Self::poll_output): what to do, in order; `None` when empty.
/// - [`poll_timeout`](Self::poll_timeout): when to call `handle_timeout` next.
///
/// # The order to call them
///
/// After every handler or command, drain `poll_output`, carrying each output out (and
/// answering it, for `Open` and `AddRemote`) before polling the next, then wait for the next
/// input or `poll_timeout`. `now` must never go backwards. Queries
/// ([`trunks`](Self::trunks)) change nothing.
pub struct CascadeCore {
    role: Role,
    links: HashMap<TrunkId, Link>,
    remote: RemoteSpeakers,
    /// (Edge role) rooms with local callers, by the nodes that placed them (re-announced to a
    /// node after a reconnect).
    my_rooms: EdgeRooms,
    out: VecDeque<Output>,
    next_sweep: Instant,
}

impl CascadeCore {
    pub fn new(role: Role, now: Instant) -> Self {
        let mut out = VecDeque::new();
        if role == Role::Edge {
            out.push_back(Output::Node(NodeCommand::ExportAll));
        }
        CascadeCore {
            role,
            links: HashMap::new(),
            remote: RemoteSpeakers::default(),
            my_rooms: EdgeRooms::default(),
            out,
            next_sweep: now + SWEEP_INTERVAL,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The node exported a speaker's packet: send it on every trunk that wants it, opening
    /// the speaker's stream there first if needed.
    pub fn handle_export(&mut self, now: Instant, x: Export) {
        let mut payload: Option<Bytes> = None;
        for (id, l) in self.links.iter_mut() {
            let wanted = match self.role {
                Role::Edge => !x.remote && self.my_rooms.wants(x.room.0, &l.peer.node),
                Role::Origin => {
                    l.interest.contains(&x.room.0) && self.remote.trunk_of(x.from) != Some(*id)
                }
            };
            if !wanted {
                continue;
            }
            let mut media = |stream| StreamMedia {
                stream,
                rtp_ts: x.rtp_ts,
                level: x.level,
                marker: x.marker,
                payload: payload
                    .get_or_insert_with(|| Bytes::copy_from_slice(&x.payload))
                    .clone(),
            };
            match l.out.get_mut(&x.from) {
                Some(o) => {
                    o.last = now;
                    let media = media(o.stream);
                    self.out.push_back(Output::Media { trunk: *id, media });
                }
                None => {
                    let stream = l.free_stream();
                    l.out.insert(
                        x.from,
                        OutStream {
                            stream,
                            last: now,
                            room: x.room.0,
                        },
                    );
                    self.out.push_back(Output::Open {
                        trunk: *id,
                        speaker: x.from,
                        stream,
                        room: x.room.0,
                        user: x.user.0,
                        ssrc: Some(x.voice_ssrc.0),
                        first: media(stream),
                    });
                }
            }
        }
    }

    /// The speaker is no longer exported (muted or gone): end its streams so other nodes free
    /// its slots now.
    pub fn handle_export_end(&mut self, from: ParticipantIdx) {
        for (id, l) in self.links.iter_mut() {
            if let Some(o) = l.out.remove(&from) {
                self.out.push_back(Output::Close {
                    trunk: *id,
                    stream: o.stream,
                });
            }
        }
    }

    /// The trunk's queue could not take an [`Output::Open`]: the stream was never opened
    /// (the speaker's next packet tries again).
    pub fn handle_open_dropped(&mut self, trunk: TrunkId, speaker: ParticipantIdx) {
        if let Some(l) = self.links.get_mut(&trunk) {
            l.out.remove(&speaker);
        }
    }

    /// A trunk is established with `peer`.
    pub fn handle_trunk_up(&mut self, id: TrunkId, peer: Peer) {
        // An edge re-announces its rooms to a (re)connected node.
        if self.role == Role::Edge {
            for room in self.my_rooms.rooms_of(&peer.node) {
                self.out.push_back(Output::Control {
                    trunk: id,
                    msg: Control::Interest { room, on: true },
                });
            }
        }
        self.out.push_back(Output::Cluster(ClusterEvent::TrunkUp {
            id,
            peer: peer.clone(),
        }));
        self.links.insert(
            id,
            Link {
                peer,
                interest: HashSet::new(),
                out: HashMap::new(),
                load: 0,
                next_stream: 0,
            },
        );
    }

    /// A trunk delivered a packet: pass it to its remote speaker, if the stream has one.
    pub fn handle_trunk_media(&mut self, trunk: TrunkId, d: Delivered) {
        if let Some(idx) = self.remote.get(trunk, d.stream) {
            self.out
                .push_back(Output::Node(NodeCommand::RemoteRtp(RemotePacket {
                    idx,
                    seq: d.seq,
                    rtp_ts: d.rtp_ts,
                    level: d.level,
                    marker: d.marker,
                    payload: std::sync::Arc::from(&d.payload[..]),
                })));
        }
    }

    /// A trunk delivered a stream open/close or a message for the layer above.
    pub fn handle_trunk_notice(&mut self, trunk: TrunkId, n: Notice) {
        match n {
            Notice::Opened {
                stream,
                room,
                user,
                ssrc,
            } => {
                if let Some(old) = self.remote.remove(trunk, stream) {
                    self.out
                        .push_back(Output::Node(NodeCommand::RemoveRemote(old)));
                }
                self.out.push_back(Output::Node(NodeCommand::AddRemote {
                    trunk,
                    stream,
                    room: RoomId(room),
                    user: UserId(user),
                    ssrc: ssrc.map(Ssrc),
                }));
            }
            Notice::Closed { stream } => {
                if let Some(idx) = self.remote.remove(trunk, stream) {
                    self.out
                        .push_back(Output::Node(NodeCommand::RemoveRemote(idx)));
                }
            }
            Notice::App(Control::Interest { room, on }) => {
                if let Some(l) = self.links.get_mut(&trunk) {
                    if on {
                        l.interest.insert(room);
                    } else {
                        l.interest.remove(&room);
                        // Nobody there listens any more: end the room's streams now.
                        l.close_room(trunk, room, &mut self.out);
                    }
                }
                self.push_exported(room);
            }
            Notice::App(Control::Load { participants }) => {
                if let Some(l) = self.links.get_mut(&trunk) {
                    l.load = participants;
                }
                self.out.push_back(Output::Cluster(ClusterEvent::App {
                    id: trunk,
                    msg: Control::Load { participants },
                }));
            }
            Notice::App(msg) => {
                self.out
                    .push_back(Output::Cluster(ClusterEvent::App { id: trunk, msg }));
            }
        }
    }

    /// The node added the remote speaker asked for by [`NodeCommand::AddRemote`].
    pub fn handle_remote_added(&mut self, trunk: TrunkId, stream: u16, idx: ParticipantIdx) {
        if !self.links.contains_key(&trunk) {
            // The trunk ended meanwhile: nothing will ever remove the speaker but us.
            self.out
                .push_back(Output::Node(NodeCommand::RemoveRemote(idx)));
            return;
        }
        if let Some(old) = self.remote.remove(trunk, stream) {
            self.out
                .push_back(Output::Node(NodeCommand::RemoveRemote(old)));
        }
        self.remote.insert(trunk, stream, idx);
    }

    /// The trunk ended: its remote speakers leave, its rooms stop exporting (unless another
    /// trunk wants them), and signaling hears of it last.
    pub fn handle_trunk_down(&mut self, trunk: TrunkId) {
        for stream in self.remote.streams_of(trunk) {
            if let Some(idx) = self.remote.remove(trunk, stream) {
                self.out
                    .push_back(Output::Node(NodeCommand::RemoveRemote(idx)));
            }
        }
        if let Some(l) = self.links.remove(&trunk) {
            for room in &l.interest {
                self.push_exported(*room);
            }
            self.out.push_back(Output::Cluster(ClusterEvent::TrunkDown {
                id: trunk,
                peer: l.peer,
            }));
        }
    }

    /// Close the streams of speakers who sent nothing for [`STREAM_IDLE`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep += SWEEP_INTERVAL;
        if self.next_sweep <= now {
            self.next_sweep = now + SWEEP_INTERVAL;
        }
        for (id, l) in self.links.iter_mut() {
            let idle: Vec<ParticipantIdx> = l
                .out
                .iter()
                .filter(|(_, o)| now.saturating_duration_since(o.last) > STREAM_IDLE)
                .map(|(p, _)| *p)
                .collect();
            for p in idle {
                let o = l.out.remove(&p).expect("collected from out");
                self.out.push_back(Output::Close {
                    trunk: *id,
                    stream: o.stream,
                });
            }
        }
    }

    /// Send an app-level message to a trunk's peer (nothing if the trunk is gone).
    pub fn send_app(&mut self, trunk: TrunkId, msg: Control) {
        if self.links.contains_key(&trunk) {
            self.out.push_back(Output::Control { trunk, msg });
        }
    }

    /// (Edge) the nodes that placed this edge's callers in `room` now (none: no callers
    /// left): their trunks get the room's local speakers, and no other trunk does.
    pub fn set_interest(&mut self, room: u64, nodes: &[String]) {
        let (added, removed) = self.my_rooms.set(room, nodes);
        for (id, l) in self.links.iter_mut() {
            let on = if added.contains(&l.peer.node) {
                true
            } else if removed.contains(&l.peer.node) {
                false
            } else {
                continue;
            };
            self.out.push_back(Output::Control {
                trunk: *id,
                msg: Control::Interest { room, on },
            });
            if !on {
                l.close_room(*id, room, &mut self.out);
            }
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_sweep)
    }

    /// Every trunk, for reports.
    pub fn trunks(&self) -> impl Iterator<Item = TrunkView<'_>> {
        self.links.iter().map(|(id, l)| TrunkView {
            id: *id,
            peer: &l.peer,
            load: l.load,
            streams_out: l.out.len(),
            streams_in: self.remote.count_on(*id),
            rooms_of_interest: l.interest.len(),
        })
    }

    /// `room` is exported while any trunk's peer wants it.
    fn push_exported(&mut self, room: u64) {
        let on = self.links.values().any(|l| l.interest.contains(&room));
        self.out.push_back(Output::Node(NodeCommand::SetExported {
            room: RoomId(room),
            on,
        }));
    }
}
