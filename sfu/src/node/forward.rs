//! The forward loop: one speaker packet into every listener slot that carries the speaker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use str0m::media::Mid;
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Input, Output, SendPrefetch};

use super::{Export, Node, NodeOutput, Transmit, Transport};
use crate::buf_pool::BufPool;
use crate::direct_send::DirectCopy;
use crate::drop_reason::DropReason;
use crate::ids::ParticipantIdx;
use crate::native::is_dave_frame;
use crate::participant::{Kind, NativePeer, Participant, WebRtcPeer};
use crate::prefetch::{prefetch, prefetch_of};
use crate::stats::{NodeStats, ParticipantStats};
use crate::timers::TimerQueue;

/// One received speaker packet, from WebRTC or from a trunk.
pub(super) struct Inbound {
    pub(super) ssrc: u32,
    pub(super) seq: u16,
    pub(super) ts: u32,
    pub(super) marker: bool,
    pub(super) audio_level: Option<i8>,
    pub(super) voice_activity: Option<bool>,
    /// The payload is a DAVE frame (`native::is_dave_frame`), decided once where the packet
    /// is received: only listeners that do DAVE get it.
    pub(super) dave: bool,
    pub(super) payload: Arc<[u8]>,
}

impl Inbound {
    pub(super) fn from_rtp(p: RtpPacket) -> Inbound {
        Inbound {
            ssrc: *p.header.ssrc,
            seq: p.header.sequence_number,
            ts: p.header.timestamp,
            marker: p.header.marker,
            audio_level: p.header.ext_vals.audio_level,
            voice_activity: p.header.ext_vals.voice_activity,
            dave: is_dave_frame(&p.payload),
            payload: p.payload,
        }
    }
}

impl Node {
    /// The hot path: one speaker packet to every listener slot that carries the speaker.
    pub(super) fn forward(
        &mut self,
        now: Instant,
        from: ParticipantIdx,
        pkt: Inbound,
        pt_ok: bool,
    ) {
        self.stats.rtp_in += 1;
        self.stats.dave_frames_in += u64::from(pkt.dave);
        let Node {
            participants,
            stats,
            out,
            cfg,
            rooms,
            exported,
            export_all,
            timers,
            slot_map,
            pool,
            ..
        } = self;
        let p = participants[from.0 as usize]
            .as_mut()
            .expect("drain only forwards for live participants");
        p.stats.packets_in += 1;
        p.stats.bytes_in += pkt.payload.len() as u64;
        let reason = if !pt_ok {
            Some(DropReason::UnexpectedStream)
        } else if !p.flags.can_speak {
            Some(DropReason::NoSpeakPermission)
        } else if p.flags.self_mute || p.flags.server_mute {
            Some(DropReason::Muted)
        } else {
            None
        };
        if let Some(r) = reason {
            stats.drops.count(r);
            p.stats.drops.count(r);
            return;
        }
        // RFC 6464: value is -dBov, 127 = silence. Without the extension the sender is silent to
        // the selector (it can still be heard if already selected).
        let level = pkt
            .audio_level
            .map(|l| l.unsigned_abs().min(127))
            .unwrap_or(127);
        p.level.observe(now, level, &cfg.selector);
        let voice = 127.0 - level as f32 > cfg.selector.active_above;
        let Inbound {
            ssrc,
            seq,
            ts,
            marker,
            audio_level,
            voice_activity,
            dave,
            payload,
        } = pkt;
        // Silence (`F8 FF FE`, ≤ 3 bytes) is sent in clear by DAVE senders too: it says
        // nothing about whether the voice is encrypted.
        if dave || payload.len() > 3 {
            p.sends_dave = dave;
        }
        // Other nodes get this speaker while it talks (this packet is voice, or it talked within
        // the hang time) or holds a seat in the room's ranking: one copy per node, fan-out there.
        if *export_all || exported.contains(&p.room) {
            let ranked = || {
                rooms
                    .get(&p.room)
                    .is_some_and(|r| r.selector.ranked().iter().any(|(i, _)| *i == from))
            };
            if voice || p.level.is_holding(now, &cfg.selector) || ranked() {
                stats.exported += 1;
                out.push_back(NodeOutput::Export(Export {
                    room: p.room,
                    from,
                    user: p.user,
                    voice_ssrc: p.voice_ssrc,
                    remote: p.is_remote(),
                    rtp_ts: ts,
                    level,
                    marker,
                    payload: payload.clone(),
                }));
            }
        }
        // str0m writes the RFC 6464 extension only with both fields. A native or trunk-fed
        // speaker has a level but no V bit of its own: the selector's verdict stands in, so a
        // browser's getSynchronizationSources() shows every speaker's level.
        let ext = ExtensionValues {
            audio_level,
            voice_activity: voice_activity.or(audio_level.map(|_| voice)),
            ..Default::default()
        };
        let voice_ssrc = p.voice_ssrc;
        // The slot map is kept up to date by the tick and by leaving; reading it is a slice.
        let subscribers = slot_map.subscribers(from);
        let prefetch = cfg.prefetch && subscribers.len() >= PREFETCH_FROM;
        // Copies go direct (`direct_send.rs`) only with both RFC 6464 fields, as a context's
        // header always carries the level; without them the session sends, and its send path
        // is what to prefetch.
        let direct = ext
            .audio_level
            .zip(ext.voice_activity)
            .filter(|_| cfg.direct_send);
        for (i, &(listener, slot_ix)) in subscribers.iter().enumerate() {
            // A window at a time: in a room of hundreds, the first listeners' lines would be
            // pushed out again before their copies were written.
            if prefetch && i % PREFETCH_WINDOW == 0 {
                let window = &subscribers[i..subscribers.len().min(i + PREFETCH_WINDOW)];
                prefetch_listeners(participants, window, direct.is_some());
            }
            let Some(Participant {
                kind,
                flags,
                stats: l_stats,
                ..
            }) = participants
                .get_mut(listener.0 as usize)
                .and_then(|x| x.as_mut())
            else {
                continue;
            };
            if flags.deaf() {
                continue;
            }
            // A DAVE frame goes only to listeners that can decrypt it (NATIVE-VOICE.md §3.7);
            // the tick frees such a listener's slot of a DAVE speaker, so this skips only the
            // packets until then.
            let w = match kind {
                Kind::WebRtc(w) if w.connected => {
                    if dave {
                        stats.drops.count(DropReason::DaveToNonDave);
                        continue;
                    }
                    w
                }
                Kind::Native(n) => {
                    if dave && !n.dave {
                        stats.drops.count(DropReason::DaveToNonDave);
                        continue;
                    }
                    // The speaker under its own SSRC, numbered as it numbered its packets: a
                    // native client keeps one decoder per SSRC, so nothing is rewritten.
                    let Some(t) = seal_native(n, voice_ssrc.0, seq, ts, marker, &payload, pool)
                    else {
                        continue;
                    };
                    l_stats.packets_out += 1;
                    l_stats.bytes_out += payload.len() as u64;
                    stats.rtp_forwarded += 1;
                    out.push_back(NodeOutput::Transmit(t));
                    continue;
                }
                _ => continue,
            };
            let slot = &mut w.slots[slot_ix as usize];
            let Some(rw) = slot.rewriter.rewrite(now, ssrc, seq, ts) else {
                stats.drops.count(DropReason::Stale);
                continue;
            };
            if rw.switched {
                l_stats.slot_switches += 1;
            }
            let pt = slot.pt;
            let copy = direct.map(|(audio_level, voice_activity)| DirectCopy {
                seq: rw.seq.into(),
                rtp_time: rw.timestamp,
                marker,
                audio_level,
                voice_activity,
                payload: &payload,
            });
            let reads = &mut stats.direct_context_reads;
            let sent = copy.and_then(|c| w.send_direct(slot_ix as usize, now, &c, pool, reads));
            let forwarded = if let Some(t) = sent {
                out.push_back(NodeOutput::Transmit(t));
                stats.rtp_direct += 1;
                true
            } else {
                // Storage for the datagram this write becomes (str0m keeps a few spares per
                // session and hands the buffer back when it has enough).
                if let Some(b) = pool.take() {
                    if let Some(b) = w.recycle_buffer(b) {
                        pool.put(b);
                    }
                }
                let write = RtpWrite::new(pt, rw.seq.into(), rw.timestamp, now, payload.clone())
                    .marker(marker)
                    .ext_vals(ext.clone());
                // Serialized and encrypted by the session in this call, with no timeout pass
                // and no output walk per copy. str0m gives the write back when the packet has
                // to queue. (`Ok(None)`: str0m dropped it, its PT not negotiated; not counted
                // as forwarded.)
                match w.send_rtp_now(slot_ix as usize, now, write) {
                    Ok(Some(t)) => {
                        out.push_back(NodeOutput::Transmit(Transmit {
                            transport: Transport::of(t.proto),
                            destination: t.destination,
                            contents: t.contents.into(),
                        }));
                        true
                    }
                    Ok(None) => false,
                    Err(write) => {
                        let mid = w.slots[slot_ix as usize].mid;
                        stats.rtp_queued += 1;
                        write_queued(listener, w, mid, write, now, out, timers, l_stats, stats);
                        true
                    }
                }
            };
            if forwarded {
                l_stats.packets_out += 1;
                l_stats.bytes_out += payload.len() as u64;
                stats.rtp_forwarded += 1;
            }
        }
    }
}

/// From this many listeners of one packet on, their state is prefetched before the loop.
const PREFETCH_FROM: usize = 2;
/// Listeners prefetched at a time (~50 cache lines each for WebRTC: a window fits in L2,
/// not all of a 1,000-listener room).
const PREFETCH_WINDOW: usize = 16;

/// Starts fetching what the forward loop will touch of each listener: its flags and counters;
/// for a WebRTC listener its slot and either its slot's direct context and the session's key
/// (`direct`) or its session's send path (`Rtc::prefetch_send`); for a native one its address,
/// nonce counter and key. Passes that each follow pointers the pass before fetched; the
/// variant tags read in the first are plain loads, overlapping across listeners
/// (crate::prefetch says why).
fn prefetch_listeners(
    participants: &[Option<Participant>],
    subscribers: &[(ParticipantIdx, u8)],
    direct: bool,
) {
    let listener = |l: ParticipantIdx| participants.get(l.0 as usize).and_then(|p| p.as_ref());
    let webrtc = |l: ParticipantIdx| match listener(l) {
        Some(Participant {
            kind: Kind::WebRtc(w),
            ..
        }) => Some(w),
        _ => None,
    };
    let mut hint = |p: *const u8, len: usize| prefetch(p, len);
    for &(l, _) in subscribers {
        let Some(p) = listener(l) else { continue };
        prefetch_of(&p.flags);
        prefetch_of(&p.stats.packets_out);
        prefetch_of(&p.stats.slot_switches);
        match &p.kind {
            Kind::WebRtc(w) => {
                prefetch_of(&w.connected);
                prefetch_of(&w.slots);
                if direct {
                    prefetch_of(&w.direct);
                } else {
                    w.rtc().prefetch_send(SendPrefetch::Fields, &mut hint);
                }
            }
            Kind::Native(n) => {
                prefetch_of(&n.addr);
                prefetch_of(&n.send_counter);
                prefetch_of(&n.cipher);
            }
            Kind::Remote(_) => {}
        }
    }
    for &(l, ix) in subscribers {
        match listener(l).map(|p| &p.kind) {
            Some(Kind::WebRtc(w)) => {
                if let Some(slot) = w.slots.get(ix as usize) {
                    prefetch_of(slot);
                }
                if direct {
                    w.direct.prefetch_key();
                } else {
                    w.rtc().prefetch_send(SendPrefetch::Heap, &mut hint);
                }
            }
            Some(Kind::Native(n)) => n.cipher.prefetch_key(),
            _ => {}
        }
    }
    if direct {
        return;
    }
    for &(l, ix) in subscribers {
        if let Some(w) = webrtc(l) {
            if let Some(slot) = w.slots.get(ix as usize) {
                w.rtc()
                    .prefetch_send(SendPrefetch::Deep(slot.mid), &mut hint);
            }
        }
    }
}

/// The queued path of one forwarded copy (str0m declined the direct send): write it to the
/// slot's stream, drive the listener's session with `now` so the packet leaves in this same
/// call, and drain what that produced. Its figures and the end of its session, reported while
/// driven by time here, go where `drain` would put them.
#[allow(clippy::too_many_arguments)]
fn write_queued(
    listener: ParticipantIdx,
    w: &mut WebRtcPeer,
    mid: Mid,
    write: RtpWrite,
    now: Instant,
    out: &mut VecDeque<NodeOutput>,
    timers: &mut TimerQueue,
    l_stats: &mut ParticipantStats,
    stats: &mut NodeStats,
) {
    {
        let mut api = w.rtc_mut().direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        tx.write_rtp(write);
    }
    if w.rtc_mut().handle_input(Input::Timeout(now)).is_err() {
        w.gone = true;
        return;
    }
    let mut sent = false;
    loop {
        match w.rtc_mut().poll_output() {
            Ok(Output::Transmit(t)) => {
                sent = true;
                out.push_back(NodeOutput::Transmit(Transmit {
                    transport: Transport::of(t.proto),
                    destination: t.destination,
                    contents: t.contents.into(),
                }))
            }
            Ok(Output::Timeout(t)) => {
                w.next_timeout = t;
                timers.arm(listener.0, t, &mut w.armed);
                if !sent {
                    stats.rtp_deferred += 1;
                }
                break;
            }
            Ok(Output::Event(ev)) => {
                super::rtc_output::session_event(listener, ev, l_stats, &mut w.gone)
            }
            Err(_) => {
                w.gone = true;
                break;
            }
        }
    }
}

/// One packet for a native listener, sealed under its key with its next nonce counter
/// (`TransportCipher::seal_opus_into`) into a pooled buffer. `None` while the listener has no
/// address.
fn seal_native(
    n: &mut NativePeer,
    ssrc: u32,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: &[u8],
    pool: &mut BufPool,
) -> Option<Transmit> {
    let destination = n.addr?;
    let mut contents = pool.take_or_new();
    n.cipher.seal_opus_into(
        ssrc,
        seq,
        ts,
        marker,
        payload,
        n.send_counter,
        &mut contents,
    );
    n.send_counter = n.send_counter.wrapping_add(1);
    Some(Transmit {
        transport: Transport::Udp,
        destination,
        contents,
    })
}
