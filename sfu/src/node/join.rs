//! Admitting a WebRTC participant: bounds, the SDP offer, and the classification of its
//! media lines into one send line and K speaker slots.

use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::TcpType;
use str0m::rtp::Extension;
use str0m::{Candidate, Rtc};
use tracing::info;

use super::Node;
use crate::direct_send::DirectSlot;
use crate::error::SfuError;
use crate::ids::{GuildId, ParticipantIdx, RoomId, Ssrc, UserId};
use crate::participant::{Kind, Participant, Slot, VoiceFlags, WebRtcPeer};
use crate::rate_limit::TokenBucket;
use crate::room::Room;
use crate::seq_rewriter::SeqRewriter;
use crate::stats::ParticipantStats;

/// Most speaker slots a listener may ask for.
pub const MAX_SLOTS: usize = 16;
const OPUS_FRAME: Duration = Duration::from_millis(20);

/// Ask the node to admit a participant.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: RoomId,
    /// The guild the room belongs to.
    pub guild: GuildId,
    pub user: UserId,
    /// The client's SDP offer: 1 sending + K recv-only audio lines, candidates included.
    pub offer: String,
    pub flags: VoiceFlags,
}

/// One speaker slot as announced to the client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotInfo {
    pub mid: String,
    pub ssrc: u32,
}

#[derive(Debug, Clone)]
pub struct JoinAnswer {
    pub idx: ParticipantIdx,
    pub answer: String,
    pub slots: Vec<SlotInfo>,
}

impl Node {
    /// Admit a participant: accept its offer and answer with ICE-lite, our host candidates
    /// (UDP, and passive TCP with `ice_tcp`) and K send-only slots.
    pub fn join(&mut self, now: Instant, req: JoinRequest) -> Result<JoinAnswer, SfuError> {
        self.admit(req.room, req.guild, req.user)?;
        let offer = SdpOffer::from_sdp_string(&req.offer)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;
        let mids = offer_mids(&req.offer);
        if mids.is_empty() {
            return Err(SfuError::InvalidSdp("no media line with a=mid".into()));
        }

        let mut builder = Rtc::builder();
        if let Some(cert) = &self.dtls_cert {
            builder = builder.set_dtls_cert(cert.clone());
        }
        let mut rtc = builder
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            // Only the header extensions an audio SFU uses: the RFC 6464 level (speaker
            // selection) and the BUNDLE mid. No transport-wide congestion control: nothing
            // here estimates bandwidth for audio, and every TWCC feedback packet a client
            // sends would cost the node a datagram, a decrypt and a wake-up for nothing.
            .clear_extension_map()
            .set_extension(1, Extension::AudioLevel)
            .set_extension(4, Extension::RtpMid)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        let cand = Candidate::host(self.cfg.public_addr, "udp")
            .map_err(|e| SfuError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(cand);
        if self.cfg.ice_tcp {
            // RFC 6544 passive: the client connects to the media port's number over TCP when
            // its UDP cannot get through. Its priority (type preference 90 against UDP's 126,
            // libwebrtc's values) keeps it second: a browser that can use UDP does.
            let tcp = Candidate::builder()
                .tcp()
                .host(self.cfg.public_addr)
                .tcptype(TcpType::Passive)
                .build()
                .map_err(|e| SfuError::Rtc(e.to_string()))?;
            rtc.add_local_candidate(tcp);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::InvalidSdp(e.to_string()))?;

        // Classify the lines: exactly one the client sends on, K it only receives on.
        let mut send_count = 0;
        let mut slot_mids = Vec::new();
        for m in &mids {
            let mid = Mid::from(m.as_str());
            let Some(media) = rtc.media(mid) else {
                return Err(SfuError::InvalidSdp(format!(
                    "media line {m} was not accepted"
                )));
            };
            if media.kind() != MediaKind::Audio {
                return Err(SfuError::NotAudio {
                    mid: m.clone(),
                    kind: format!("{:?}", media.kind()).to_lowercase(),
                });
            }
            match media.direction() {
                Direction::RecvOnly | Direction::SendRecv => {
                    send_count += 1;
                }
                Direction::SendOnly => slot_mids.push(mid),
                Direction::Inactive => {}
            }
        }
        if send_count != 1 || slot_mids.is_empty() || slot_mids.len() > MAX_SLOTS {
            return Err(SfuError::BadTransceivers {
                send: send_count,
                recv: slot_mids.len(),
                max: MAX_SLOTS,
            });
        }
        let opus_pt = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
            .ok_or(SfuError::NoOpus)?;

        let mut slots = Vec::with_capacity(slot_mids.len());
        for mid in slot_mids {
            let mut api = rtc.direct_api();
            let tx = api
                .stream_tx_by_mid(mid, None)
                .ok_or_else(|| SfuError::Rtc(format!("no send stream for slot {mid}")))?;
            // Nothing a slot sends is resent (Opus has no RTX here and writes are not
            // nackable): an inert resend cache, and no per-packet byte history for the resend
            // ratio it would police.
            tx.set_rtx_cache(1, Duration::ZERO, None);
            let ssrc = tx.ssrc();
            let r = self.next_rand();
            let (seq0, ts0) = self
                .cfg
                .slot_numbering_start
                .unwrap_or(((r & 0x7fff) as u16, (r >> 32) as u32));
            slots.push(Slot {
                mid,
                ssrc: Ssrc(*ssrc),
                pt: opus_pt,
                rewriter: SeqRewriter::new(seq0, ts0, 48_000, OPUS_FRAME),
                direct: DirectSlot::default(),
            });
        }

        let ufrag = rtc.direct_api().local_ice_credentials().ufrag.clone();
        let slot_infos = slots
            .iter()
            .map(|s| SlotInfo {
                mid: s.mid.to_string(),
                ssrc: s.ssrc.0,
            })
            .collect();
        let k = slots.len();
        let rate = self.cfg.max_packet_rate;
        let p = Participant {
            user: req.user,
            room: req.room,
            level: Default::default(),
            flags: req.flags,
            stats: ParticipantStats::default(),
            rate: TokenBucket::new(rate, (rate / 4).max(8)),
            last_recv: None,
            voice_ssrc: crate::native::user_ssrc(req.guild, req.user),
            sends_dave: false,
            kind: Kind::WebRtc(WebRtcPeer::new(
                rtc,
                req.guild,
                ufrag.clone(),
                opus_pt,
                slots,
                now,
            )),
        };
        let idx = self.seat(now, p, req.guild);
        self.by_ufrag.insert(ufrag, idx);
        info!(%idx, room = req.room.0, user = req.user.0, slots = k, "participant joined");
        self.drain(idx, now);
        Ok(JoinAnswer {
            idx,
            answer: answer.to_sdp_string(),
            slots: slot_infos,
        })
    }

    /// Whether the bounds let `user` of `guild` join `room` now.
    pub(super) fn admit(&self, room: RoomId, guild: GuildId, user: UserId) -> Result<(), SfuError> {
        if self.count >= self.cfg.max_participants {
            return Err(SfuError::NodeFull {
                limit: self.cfg.max_participants,
            });
        }
        let room_size = self.rooms.get(&room).map(|r| r.members.len()).unwrap_or(0);
        if room_size >= self.cfg.max_room_size {
            return Err(SfuError::RoomFull {
                room,
                limit: self.cfg.max_room_size,
            });
        }
        if self.per_user.get(&user).copied().unwrap_or(0) >= self.cfg.max_participants_per_user {
            return Err(SfuError::UserLimit {
                user,
                limit: self.cfg.max_participants_per_user,
            });
        }
        if self.per_guild.get(&guild).copied().unwrap_or(0) >= self.cfg.max_participants_per_guild {
            return Err(SfuError::GuildLimit {
                guild,
                limit: self.cfg.max_participants_per_guild,
            });
        }
        Ok(())
    }

    /// Put an admitted local participant in its room and count it against the bounds.
    pub(super) fn seat(&mut self, now: Instant, p: Participant, guild: GuildId) -> ParticipantIdx {
        let (user, room_id, k) = (p.user, p.room, p.slot_count());
        let idx = self.insert(p);
        self.count += 1;
        *self.per_user.entry(user).or_default() += 1;
        *self.per_guild.entry(guild).or_default() += 1;
        let sel_cfg = self.cfg.selector;
        let room = self
            .rooms
            .entry(room_id)
            .or_insert_with(|| Room::new(sel_cfg));
        room.members.push(idx);
        room.refresh_capacity(k);
        if self.next_tick.is_none() {
            self.next_tick = Some(now + self.cfg.selector.tick);
        }
        idx
    }
}

/// `a=mid:` values in media-line order.
fn offer_mids(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=mid:"))
        .map(|m| m.trim().to_string())
        .collect()
}
