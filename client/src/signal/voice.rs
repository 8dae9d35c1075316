//! The voice gateway as a Discord client speaks it (v8): Hello, Identify, Ready, IP discovery,
//! Select Protocol `udp`, Session Description, then a task for heartbeats, op 5 both ways and
//! DAVE's ops 11–31 (fed to the call's `DaveMember`, its answers sent) that resumes (op 7) a
//! lost connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use lodge_sfu::native::CryptoMode;
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{
    beat, closed, connect, recv_json, send_json, wait_keeping, Gone, Recovered, VoiceEvent,
    VoiceLogin, Ws, RESUME_ATTEMPTS, STEP,
};
use crate::dave::{DaveMember, DaveOut, SharedDave, DAVE_VERSION};
use crate::error::{protocol, ClientError};

/// A voice connection that is ready for media: our SSRC, the node's media address, the
/// transport mode and key.
pub struct VoiceReady {
    pub ssrc: u32,
    pub server: SocketAddr,
    pub mode: CryptoMode,
    pub key: [u8; 32],
    /// The call's DAVE membership (end-to-end encryption), when we announced DAVE; the
    /// connection's task feeds it the gateway's DAVE messages.
    pub dave: Option<SharedDave>,
    /// The voice connection's task (ends after [`VoiceCmd::Close`]).
    pub task: tokio::task::JoinHandle<()>,
}

/// Requests to the voice gateway task.
#[derive(Debug)]
pub enum VoiceCmd {
    Speaking(bool),
    Close,
}

/// Connect to the voice gateway, identify, discover our address on `sock` (through `via` if
/// set, else at Ready's address), select the native transport in `mode`, and wait for the
/// key. The connection then lives in a task that keeps heartbeats, reports op 5 mappings as
/// `events`, sends our op 5 on `cmds`, and keeps the call's DAVE group. `dave_channel`: the
/// voice channel's id when we take part in DAVE (announced at Identify), `None` to stay out of
/// it (the call then runs without end-to-end encryption while we are in it).
#[allow(clippy::too_many_arguments)]
pub async fn join_voice(
    vs: &VoiceLogin,
    guild: &str,
    dave_channel: Option<u64>,
    sock: &UdpSocket,
    mode: CryptoMode,
    via: Option<SocketAddr>,
    generation: u32,
    events: mpsc::UnboundedSender<VoiceEvent>,
    cmds: mpsc::UnboundedReceiver<VoiceCmd>,
) -> Result<VoiceReady, ClientError> {
    let url = format!("{}://{}/?v=8", vs.tls.ws_scheme(), vs.endpoint);
    let mut vw = connect(&url, &vs.tls).await?;
    let hello = recv_json(&mut vw, "the voice gateway").await?;
    let hb_ms = voice_hello(&hello)?;
    let max_dave = if dave_channel.is_some() {
        DAVE_VERSION
    } else {
        0
    };
    send_json(
        &mut vw,
        json!({ "op": 0, "d": { "server_id": guild, "user_id": vs.user_id.to_string(),
            "session_id": vs.session_id, "token": vs.token,
            "max_dave_protocol_version": max_dave } }),
    )
    .await?;
    // Ops 11 and 13 before Session Description: who DAVE may add (davey's recognized users).
    let mut early = Vec::new();
    // The last numbered message seen (v8), acknowledged in heartbeats and a resume.
    let mut seq_ack: i64 = -1;
    let ready = loop {
        let m = recv_json(&mut vw, "the voice gateway").await?;
        seq_ack = m["seq"].as_i64().unwrap_or(seq_ack);
        match m["op"].as_u64() {
            Some(2) => break m["d"].clone(),
            Some(5) => speaker(&events, &m["d"], generation),
            Some(op @ (11 | 13)) => early.push((op, m["d"].clone())),
            _ => {}
        }
    };
    let ip: std::net::IpAddr = ready["ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol("voice Ready has no usable ip"))?;
    let port = ready["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| protocol("voice Ready has no port"))?;
    let ssrc = ready["ssrc"]
        .as_u64()
        .and_then(|s| u32::try_from(s).ok())
        .ok_or_else(|| protocol("voice Ready has no ssrc"))?;
    let offered = ready["modes"].as_array().cloned().unwrap_or_default();
    if !offered.iter().any(|m| m == mode.name()) {
        return Err(protocol(format!(
            "the voice server does not offer {} (it offers {offered:?})",
            mode.name()
        )));
    }
    // A relay in front of the node (`JoinOptions::media_via`) carries discovery and media.
    let server = via.unwrap_or(SocketAddr::new(ip, port));
    let (address, port) = crate::discovery::discover(sock, server, ssrc).await?;
    send_json(
        &mut vw,
        json!({ "op": 1, "d": { "protocol": "udp",
            "data": { "address": address, "port": port, "mode": mode.name() } } }),
    )
    .await?;
    let (key, dave) = loop {
        let m = recv_json(&mut vw, "the voice gateway").await?;
        seq_ack = m["seq"].as_i64().unwrap_or(seq_ack);
        match m["op"].as_u64() {
            Some(4) => {
                let d = &m["d"];
                let version = d["dave_protocol_version"].as_u64().unwrap_or(0);
                let dave = match dave_channel {
                    Some(channel) => {
                        let version = u16::try_from(version)
                            .ok()
                            .filter(|v| *v <= DAVE_VERSION)
                            .ok_or_else(|| {
                                protocol(format!(
                                    "the voice server chose DAVE version {version}, which we did not offer"
                                ))
                            })?;
                        let mut member = DaveMember::new(vs.user_id, channel, version);
                        for (op, d) in &early {
                            member.handle_json(*op, d);
                        }
                        Some(member.shared())
                    }
                    None if version != 0 => {
                        return Err(protocol(
                            "the voice server turned DAVE on, which we did not announce",
                        ))
                    }
                    None => None,
                };
                if d["mode"] != mode.name() {
                    return Err(protocol(format!(
                        "the voice server chose mode {} after we asked for {}",
                        d["mode"],
                        mode.name()
                    )));
                }
                let key: Vec<u8> = d["secret_key"]
                    .as_array()
                    .ok_or_else(|| protocol("Session Description has no secret_key"))?
                    .iter()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect();
                let key = <[u8; 32]>::try_from(key)
                    .map_err(|_| protocol("Session Description's secret_key is not 32 bytes"))?;
                break (key, dave);
            }
            Some(5) => speaker(&events, &m["d"], generation),
            Some(op @ (11 | 13)) => early.push((op, m["d"].clone())),
            _ => {}
        }
    };
    for (op, d) in &early {
        if let (13, Some(user)) = (op, d["user_id"].as_str().and_then(|u| u.parse().ok())) {
            let _ = events.send(VoiceEvent::Gone { generation, user });
        }
    }
    let resume = VoiceResume {
        url,
        tls: vs.tls.clone(),
        server_id: guild.to_string(),
        session_id: vs.session_id.clone(),
        token: vs.token.clone(),
    };
    let lost = events.clone();
    let kept = keep_voice(
        vw,
        hb_ms,
        ssrc,
        resume,
        (generation, seq_ack),
        events,
        cmds,
        dave.clone(),
    );
    let task = tokio::spawn(async move {
        // A panic in there (none is expected; DAVE runs inside) ends the call with a reason
        // instead of leaving it without signaling.
        if futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(kept))
            .await
            .is_err()
        {
            let _ = lost.send(VoiceEvent::VoiceLost {
                generation,
                code: None,
                why: "the voice connection's task failed (a bug in lodge-client)".into(),
            });
        }
    });
    Ok(VoiceReady {
        ssrc,
        server,
        mode,
        key,
        dave,
        task,
    })
}

fn speaker(events: &mpsc::UnboundedSender<VoiceEvent>, d: &Value, generation: u32) {
    let ssrc = d["ssrc"].as_u64().and_then(|s| u32::try_from(s).ok());
    let user = d["user_id"].as_str().and_then(|u| u.parse::<u64>().ok());
    if let (Some(ssrc), Some(user)) = (ssrc, user) {
        let _ = events.send(VoiceEvent::Speaker {
            generation,
            ssrc,
            user,
        });
    }
}

/// Voice Hello (op 8): its heartbeat interval in ms, at least one second.
fn voice_hello(hello: &Value) -> Result<u64, ClientError> {
    if hello["op"] != 8 {
        return Err(protocol(format!(
            "expected voice Hello (op 8), got {hello}"
        )));
    }
    Ok(hello["d"]["heartbeat_interval"]
        .as_f64()
        .unwrap_or(13_750.0)
        .max(1_000.0) as u64)
}

/// How to come back to a voice connection whose WebSocket was lost (voice op 7 Resume).
struct VoiceResume {
    url: String,
    tls: crate::tls::Tls,
    server_id: String,
    session_id: String,
    token: String,
}

/// The node parks a dropped voice connection for `voice_resume_secs` (5 s by default): the
/// attempts start 0.25 s after the loss, double their wait, and all must be over within
/// [`VOICE_RESUME_WITHIN`] of it.
const VOICE_RESUME_FIRST_WAIT: Duration = Duration::from_millis(250);
const VOICE_RESUME_WITHIN: Duration = Duration::from_millis(4_500);

/// Voice close codes after which a resume cannot work: authentication failed (4004), session
/// no longer valid (4006), disconnected by the server (4014), unknown encryption mode (4016),
/// call terminated (4022).
fn voice_resumable(code: u16) -> bool {
    !matches!(code, 4004 | 4006 | 4014 | 4016 | 4022)
}

/// Reconnect and resume the voice connection: Hello, op 7 with the last numbered message
/// seen, op 9 (Resumed); the messages replayed after it are read by `keep_voice`.
/// `Ok(Err(why))`: the server refused (a close, e.g. 4006 after its grace period).
async fn resume_voice_once(
    r: &VoiceResume,
    seq_ack: i64,
) -> Result<Result<(Ws, u64), String>, ClientError> {
    let mut ws = connect(&r.url, &r.tls).await?;
    let hello = recv_json(&mut ws, "the voice gateway").await?;
    let hb_ms = voice_hello(&hello)?;
    send_json(
        &mut ws,
        json!({ "op": 7, "d": { "server_id": r.server_id, "session_id": r.session_id,
            "token": r.token, "seq_ack": seq_ack } }),
    )
    .await?;
    loop {
        match recv_json(&mut ws, "the voice gateway").await {
            Ok(m) if m["op"] == 9 => return Ok(Ok((ws, hb_ms))),
            Ok(_) => {}
            Err(ClientError::Closed { code, reason, .. }) if !voice_resumable(code) => {
                return Ok(Err(format!(
                    "the voice gateway would not resume ({code} {reason}); join the call again"
                )))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Resume the voice connection after `why`: attempts with growing waits, all within
/// [`VOICE_RESUME_WITHIN`] and up to the attempts left (`tries`); op 5s asked for meanwhile
/// are kept in `speaking` (the latest is said after the resume) and a close ends the recovery.
async fn recover_voice(
    r: &VoiceResume,
    seq_ack: i64,
    why: &str,
    tries: &mut u32,
    cmds: &mut mpsc::UnboundedReceiver<VoiceCmd>,
    speaking: &mut Option<bool>,
) -> Recovered {
    tracing::info!("voice gateway connection lost ({why}); resuming it");
    let deadline = tokio::time::Instant::now() + VOICE_RESUME_WITHIN;
    let mut wait = VOICE_RESUME_FIRST_WAIT;
    let mut last = String::from("no attempts left");
    while *tries > 0 {
        *tries -= 1;
        let open = wait_keeping(wait, cmds, |c| match c {
            VoiceCmd::Speaking(on) => {
                *speaking = Some(on);
                true
            }
            VoiceCmd::Close => false,
        })
        .await;
        if !open {
            return Recovered::Closed;
        }
        wait *= 2;
        match tokio::time::timeout_at(deadline, resume_voice_once(r, seq_ack)).await {
            Ok(Ok(Ok((ws, ms)))) => {
                tracing::info!("voice connection resumed");
                return Recovered::Resumed(Box::new(ws), ms);
            }
            Ok(Ok(Err(refused))) => {
                return Recovered::Failed(format!("voice gateway: {why}; {refused}"))
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => {
                last = "the node's grace period for a resume has passed".into();
                break;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    Recovered::Failed(format!(
        "voice gateway: {why}; resuming failed (last attempt: {last})"
    ))
}

/// Sends what the DAVE member wants sent, oldest first; `false` when the connection failed
/// (what is left stays in `pending`, for after the resume).
async fn flush_dave(
    ws: &mut Ws,
    dave: &Option<SharedDave>,
    pending: &mut VecDeque<Message>,
) -> bool {
    if let Some(d) = dave {
        let mut m = crate::dave::lock(d);
        while let Some(o) = m.poll_output() {
            pending.push_back(match o {
                DaveOut::Binary(b) => Message::Binary(b.into()),
                DaveOut::Json(v) => Message::Text(v.to_string().into()),
            });
        }
    }
    // A message leaves the queue only once sent (the clone shares the payload's bytes).
    while let Some(m) = pending.front() {
        if futures_util::SinkExt::send(ws, m.clone()).await.is_err() {
            return false;
        }
        pending.pop_front();
    }
    true
}

#[allow(clippy::too_many_arguments)]
async fn keep_voice(
    mut ws: Ws,
    hb_ms: u64,
    ssrc: u32,
    resume: VoiceResume,
    (generation, seq_ack): (u32, i64),
    events: mpsc::UnboundedSender<VoiceEvent>,
    mut cmds: mpsc::UnboundedReceiver<VoiceCmd>,
    dave: Option<SharedDave>,
) {
    // The last numbered message seen (v8), acknowledged in heartbeats and a resume.
    let mut seq_ack = seq_ack;
    let mut hb = beat(hb_ms);
    hb.tick().await;
    let mut nonce = 0u64;
    let mut acked = true;
    // The speaking state last asked for: said again after every resume.
    let mut speaking: Option<bool> = None;
    // Resume attempts left; an acknowledged heartbeat restores them.
    let mut tries = RESUME_ATTEMPTS;
    let lost = |code: Option<u16>, why: String| {
        let _ = events.send(VoiceEvent::VoiceLost {
            generation,
            code,
            why,
        });
    };
    let op5 =
        |on: bool| json!({ "op": 5, "d": { "speaking": u8::from(on), "delay": 0, "ssrc": ssrc } });
    // The close code of the connection's end, when the server closed it.
    let mut close_code = None;
    // DAVE messages to send (op 26 may already be waiting, from Session Description).
    let mut dave_pending: VecDeque<Message> = VecDeque::new();
    let mut dave_sent = flush_dave(&mut ws, &dave, &mut dave_pending).await;
    loop {
        let gone = if !dave_sent {
            Gone::Resume("a DAVE message could not be sent".into())
        } else {
            tokio::select! {
            _ = hb.tick() => {
                nonce += 1;
                if !acked {
                    Gone::Resume("no heartbeat acknowledgement".into())
                } else if send_json(&mut ws, json!({ "op": 3, "d": { "t": nonce, "seq_ack": seq_ack } })).await.is_err() {
                    Gone::Resume("a heartbeat could not be sent".into())
                } else {
                    acked = false;
                    continue;
                }
            }
            c = cmds.recv() => match c {
                Some(VoiceCmd::Speaking(on)) => {
                    speaking = Some(on);
                    if send_json(&mut ws, op5(on)).await.is_ok() {
                        continue;
                    }
                    Gone::Resume("op 5 could not be sent".into())
                }
                Some(VoiceCmd::Close) | None => {
                    let _ = tokio::time::timeout(STEP, ws.close(None)).await;
                    return;
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                    if let Some(n) = v["seq"].as_i64() {
                        seq_ack = n;
                    }
                    let op = v["op"].as_u64();
                    if let (Some(d), Some(op @ (11 | 13 | 21 | 22 | 24))) = (&dave, op) {
                        crate::dave::lock(d).handle_json(op, &v["d"]);
                        dave_sent = flush_dave(&mut ws, &dave, &mut dave_pending).await;
                    }
                    match op {
                        Some(5) => speaker(&events, &v["d"], generation),
                        Some(6) => {
                            acked = true;
                            tries = RESUME_ATTEMPTS;
                        }
                        Some(13) => {
                            if let Some(user) = v["d"]["user_id"].as_str().and_then(|u| u.parse().ok()) {
                                let _ = events.send(VoiceEvent::Gone { generation, user });
                            }
                        }
                        _ => {}
                    }
                    continue;
                }
                Some(Ok(Message::Binary(b))) => {
                    // v8 binary messages (DAVE) carry their number in front.
                    if b.len() >= 2 {
                        seq_ack = i64::from(u16::from_be_bytes([b[0], b[1]]));
                        if let Some(d) = &dave {
                            crate::dave::lock(d).handle_binary(&b[2..]);
                            dave_sent = flush_dave(&mut ws, &dave, &mut dave_pending).await;
                        }
                    }
                    continue;
                }
                Some(Ok(Message::Close(c))) => {
                    let code = c.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005);
                    close_code = Some(code);
                    let why = closed("the voice gateway", c).to_string();
                    if voice_resumable(code) { Gone::Resume(why) } else { Gone::End(why) }
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => Gone::Resume(format!("voice gateway error: {e}")),
                None => Gone::Resume("the voice gateway connection ended".into()),
            }
            }
        };
        let why = match gone {
            Gone::End(why) => {
                lost(close_code, why);
                return;
            }
            Gone::Resume(why) => why,
        };
        match recover_voice(&resume, seq_ack, &why, &mut tries, &mut cmds, &mut speaking).await {
            Recovered::Resumed(w, ms) => {
                ws = *w;
                hb = beat(ms);
                hb.tick().await;
                acked = true;
                if let Some(on) = speaking {
                    // If this fails, the connection's end shows on the next read.
                    let _ = send_json(&mut ws, op5(on)).await;
                }
                dave_sent = flush_dave(&mut ws, &dave, &mut dave_pending).await;
            }
            Recovered::Closed => return,
            Recovered::Failed(why) => {
                lost(None, why);
                return;
            }
        }
    }
}
