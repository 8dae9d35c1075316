//! Signaling as a Discord client does it: the gateway (Hello, Identify, READY, heartbeats, op 4
//! voice state) and the voice gateway (Hello, Identify, Ready, IP discovery, Select Protocol
//! `udp`, Session Description, heartbeats, op 5 speaking both ways).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lodge_sfu::native::CryptoMode;
use serde_json::{json, Value};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{protocol, ClientError};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one signaling step may take.
const STEP: Duration = Duration::from_secs(15);

async fn recv_json(ws: &mut Ws, which: &'static str) -> Result<Value, ClientError> {
    loop {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .map_err(|_| ClientError::Timeout(STEP.as_secs(), which))?;
        match m {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t)
                    .map_err(|e| protocol(format!("{which} sent JSON that does not parse: {e}")))
            }
            Some(Ok(Message::Close(c))) => return Err(closed(which, c)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(protocol(format!("{which}: {e}"))),
            None => return Err(protocol(format!("{which}: the connection ended"))),
        }
    }
}

fn closed(
    which: &'static str,
    c: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) -> ClientError {
    let (code, reason) = c
        .map(|c| (u16::from(c.code), c.reason.to_string()))
        .unwrap_or((1005, String::new()));
    ClientError::Closed {
        which,
        code,
        reason,
    }
}

async fn send_json(ws: &mut Ws, v: Value) -> Result<(), ClientError> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|e| protocol(format!("sending on the websocket: {e}")))
}

async fn connect(url: &str) -> Result<Ws, ClientError> {
    let (ws, _) =
        tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| ClientError::Connect {
                url: url.to_string(),
                source: Box::new(e),
            })?;
    Ok(ws)
}

/// The REST base (`http://host:port`) → the gateway's WebSocket URL, asked of the server
/// (`GET /api/v10/gateway`) as Discord's libraries do.
pub async fn gateway_url(http: &reqwest::Client, base: &str) -> Result<String, ClientError> {
    let url = format!("{}/api/v10/gateway", base.trim_end_matches('/'));
    let v = get_json(http, &url, None).await?;
    let ws = v["url"]
        .as_str()
        .ok_or_else(|| protocol("GET /gateway has no url"))?;
    Ok(format!(
        "{}?v=10&encoding=json",
        ws.split('?').next().unwrap_or(ws)
    ))
}

pub async fn get_json(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> Result<Value, ClientError> {
    let mut r = http.get(url);
    if let Some(t) = token {
        r = r.header("Authorization", t);
    }
    let res = r.send().await.map_err(|e| ClientError::Connect {
        url: url.to_string(),
        source: Box::new(e),
    })?;
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    if status >= 300 {
        return Err(ClientError::Http {
            url: url.to_string(),
            status,
            body,
        });
    }
    serde_json::from_str(&body).map_err(|e| protocol(format!("{url} answered non-JSON: {e}")))
}

/// What the gateway gave us on the way into a voice channel.
pub struct VoiceServer {
    pub user_id: u64,
    pub session_id: String,
    pub token: String,
    pub endpoint: String,
    /// The gateway connection's task (ends after [`GatewayCmd::Close`]).
    pub task: tokio::task::JoinHandle<()>,
}

/// Requests to the gateway connection's task.
#[derive(Debug)]
pub enum GatewayCmd {
    /// Op 4 again: mute, deafen, or leave (`channel` None).
    VoiceState {
        channel: Option<String>,
        self_mute: bool,
        self_deaf: bool,
    },
    Close,
}

/// Connect, identify with `opts.token`, and ask to join `opts.channel` of `opts.guild`: the
/// voice server the gateway names. The connection then lives in a task (heartbeats; `cmds` for
/// later voice state changes; its loss reported on `lost`).
pub async fn join_gateway(
    gateway_url: &str,
    opts: &crate::call::JoinOptions,
    cmds: mpsc::UnboundedReceiver<GatewayCmd>,
    lost: mpsc::UnboundedSender<VoiceEvent>,
) -> Result<VoiceServer, ClientError> {
    let (token, guild, channel) = (&opts.token, &opts.guild, &opts.channel);
    let (self_mute, self_deaf) = (opts.self_mute, opts.self_deaf);
    let mut gw = connect(gateway_url).await?;
    let hello = recv_json(&mut gw, "the gateway").await?;
    if hello["op"] != 10 {
        return Err(protocol(format!("expected Hello (op 10), got {hello}")));
    }
    let hb_ms = hello["d"]["heartbeat_interval"].as_u64().unwrap_or(41_250);
    // GUILDS (1) and GUILD_VOICE_STATES (128).
    send_json(
        &mut gw,
        json!({ "op": 2, "d": { "token": token, "intents": 129,
            "properties": { "os": std::env::consts::OS, "browser": "lodge-client", "device": "lodge-client" } } }),
    )
    .await?;
    let mut seq = Value::Null;
    let (user_id, session_id, resume_url) = loop {
        let m = recv_json(&mut gw, "the gateway").await?;
        if !m["s"].is_null() {
            seq = m["s"].clone();
        }
        if m["op"] == 9 {
            return Err(protocol(
                "the gateway refused the session (op 9): is the token right?",
            ));
        }
        if m["t"] == "READY" {
            let d = &m["d"];
            let user = d["user"]["id"]
                .as_str()
                .and_then(|u| u.parse().ok())
                .ok_or_else(|| protocol("READY has no user id"))?;
            let sid = d["session_id"]
                .as_str()
                .ok_or_else(|| protocol("READY has no session_id"))?;
            // Where to resume: READY's resume_gateway_url, else where we came in.
            let resume = d["resume_gateway_url"]
                .as_str()
                .map(|u| format!("{}?v=10&encoding=json", u.split('?').next().unwrap_or(u)))
                .unwrap_or_else(|| gateway_url.to_string());
            break (user, sid.to_string(), resume);
        }
    };
    send_json(
        &mut gw,
        json!({ "op": 4, "d": { "guild_id": guild, "channel_id": channel,
            "self_mute": self_mute, "self_deaf": self_deaf } }),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + STEP;
    let (token, endpoint) = loop {
        let m = tokio::time::timeout_at(deadline, recv_json(&mut gw, "the gateway"))
            .await
            .map_err(|_| {
                ClientError::Timeout(STEP.as_secs(), "the gateway (VOICE_SERVER_UPDATE)")
            })??;
        if m["t"] == "LODGE_VOICE_ERROR" {
            return Err(protocol(format!(
                "the server refused to join the channel: {} (code {})",
                m["d"]["message"].as_str().unwrap_or("no reason given"),
                m["d"]["code"]
            )));
        }
        if !m["s"].is_null() {
            seq = m["s"].clone();
        }
        if m["t"] == "VOICE_SERVER_UPDATE" {
            let d = &m["d"];
            let t = d["token"]
                .as_str()
                .ok_or_else(|| protocol("no voice token"))?;
            let e = d["endpoint"]
                .as_str()
                .ok_or_else(|| protocol("no voice endpoint"))?;
            break (t.to_string(), e.to_string());
        }
    };
    let resume = Resume {
        url: resume_url,
        token: opts.token.clone(),
        session_id: session_id.clone(),
    };
    let task = tokio::spawn(keep_gateway(
        gw,
        hb_ms,
        seq,
        resume,
        guild.to_string(),
        cmds,
        lost,
    ));
    Ok(VoiceServer {
        user_id,
        session_id,
        token,
        endpoint,
        task,
    })
}

/// How to come back to a gateway session whose connection was lost (op 6 Resume).
struct Resume {
    url: String,
    token: String,
    session_id: String,
}

/// Resume attempts after a lost gateway connection, and the wait before the first (doubled
/// each time): about 7 s in all, well inside the server's resume window.
const RESUME_ATTEMPTS: u32 = 4;
const RESUME_FIRST_WAIT: Duration = Duration::from_millis(500);

/// Close codes after which resuming cannot work (Discord's: authentication failed, sharding
/// or intents refused): the call ends.
fn resumable(code: u16) -> bool {
    !matches!(code, 4004 | 4010..=4014)
}

/// Reconnect and resume the session: Hello, op 6 with the last sequence number, then the
/// missed dispatches (which move `seq`) up to RESUMED. The new connection and its heartbeat
/// interval; `Ok(Err(why))` if the server will not resume the session (op 9), `Err` if it
/// could not be asked.
async fn resume_once(
    r: &Resume,
    seq: &mut Value,
) -> Result<Result<(Ws, u64), String>, ClientError> {
    let mut ws = connect(&r.url).await?;
    let hello = recv_json(&mut ws, "the gateway").await?;
    if hello["op"] != 10 {
        return Err(protocol(format!("expected Hello (op 10), got {hello}")));
    }
    let hb_ms = hello["d"]["heartbeat_interval"].as_u64().unwrap_or(41_250);
    send_json(
        &mut ws,
        json!({ "op": 6, "d": { "token": r.token, "session_id": r.session_id, "seq": seq } }),
    )
    .await?;
    loop {
        let m = recv_json(&mut ws, "the gateway").await?;
        if m["op"] == 9 {
            return Ok(Err(
                "the gateway would not resume the session (op 9); join the call again".into(),
            ));
        }
        if !m["s"].is_null() {
            *seq = m["s"].clone();
        }
        note_dispatch(&m);
        if m["t"] == "RESUMED" {
            return Ok(Ok((ws, hb_ms)));
        }
    }
}

/// What this client does with a dispatch while in a call: it only says what it cannot follow.
fn note_dispatch(v: &Value) {
    if v["t"] == "VOICE_SERVER_UPDATE" {
        tracing::warn!("the server moved this call; moving is not supported yet");
    }
    if v["t"] == "LODGE_VOICE_ERROR" {
        tracing::warn!(
            "the server refused a voice state change: {}",
            v["d"]["message"]
        );
    }
}

/// Why the gateway connection needs replacing, or `Err` why the call must end.
enum Gone {
    Resume(String),
    End(String),
}

async fn keep_gateway(
    mut ws: Ws,
    hb_ms: u64,
    mut seq: Value,
    resume: Resume,
    guild: String,
    mut cmds: mpsc::UnboundedReceiver<GatewayCmd>,
    events: mpsc::UnboundedSender<VoiceEvent>,
) {
    let lost = |why: String| {
        let _ = events.send(VoiceEvent::Lost(why));
    };
    let new_beat = |ms: u64| {
        let mut hb = tokio::time::interval(Duration::from_millis(ms));
        hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        hb
    };
    let mut hb = new_beat(hb_ms);
    hb.tick().await;
    // A heartbeat not acknowledged by the next one means a dead (zombie) connection.
    let mut acked = true;
    loop {
        let gone = tokio::select! {
            _ = hb.tick() => {
                if !acked {
                    Gone::Resume("no heartbeat acknowledgement".into())
                } else if send_json(&mut ws, json!({ "op": 1, "d": seq })).await.is_err() {
                    Gone::Resume("a heartbeat could not be sent".into())
                } else {
                    acked = false;
                    continue;
                }
            }
            c = cmds.recv() => match c {
                Some(GatewayCmd::VoiceState { channel, self_mute, self_deaf }) => {
                    let d = json!({ "guild_id": guild, "channel_id": channel,
                        "self_mute": self_mute, "self_deaf": self_deaf });
                    if send_json(&mut ws, json!({ "op": 4, "d": d.clone() })).await.is_ok() {
                        continue;
                    }
                    // Lost on the way: resume, then say it again.
                    match recover(&resume, &mut seq, "a voice state update could not be sent").await {
                        Ok((w, ms)) => {
                            ws = w;
                            hb = new_beat(ms);
                            hb.tick().await;
                            acked = true;
                            if send_json(&mut ws, json!({ "op": 4, "d": d })).await.is_ok() {
                                continue;
                            }
                            Gone::End("gateway: a voice state update could not be sent".into())
                        }
                        Err(why) => Gone::End(why),
                    }
                }
                Some(GatewayCmd::Close) | None => {
                    let _ = tokio::time::timeout(STEP, ws.close(None)).await;
                    return;
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                    if !v["s"].is_null() { seq = v["s"].clone(); }
                    note_dispatch(&v);
                    match v["op"].as_u64() {
                        Some(11) => { acked = true; continue; }
                        // The server asks for a heartbeat now.
                        Some(1) => {
                            if send_json(&mut ws, json!({ "op": 1, "d": seq })).await.is_ok() {
                                continue;
                            }
                            Gone::Resume("a heartbeat could not be sent".into())
                        }
                        // Reconnect: the server drains or moves this session.
                        Some(7) => Gone::Resume("the gateway asked to reconnect (op 7)".into()),
                        Some(9) => Gone::End("the gateway invalidated the session (op 9)".into()),
                        _ => continue,
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    let code = c.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005);
                    let why = closed("the gateway", c).to_string();
                    if resumable(code) { Gone::Resume(why) } else { Gone::End(why) }
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => Gone::Resume(format!("gateway error: {e}")),
                None => Gone::Resume("the gateway connection ended".into()),
            }
        };
        match gone {
            Gone::End(why) => {
                lost(why);
                return;
            }
            Gone::Resume(why) => match recover(&resume, &mut seq, &why).await {
                Ok((w, ms)) => {
                    ws = w;
                    hb = new_beat(ms);
                    hb.tick().await;
                    acked = true;
                }
                Err(why) => {
                    lost(why);
                    return;
                }
            },
        }
    }
}

/// Resume after `why`, a few times with growing waits: the new connection, or why not.
async fn recover(r: &Resume, seq: &mut Value, why: &str) -> Result<(Ws, u64), String> {
    tracing::info!("gateway connection lost ({why}); resuming the session");
    let mut wait = RESUME_FIRST_WAIT;
    let mut last = String::new();
    for attempt in 1..=RESUME_ATTEMPTS {
        tokio::time::sleep(wait).await;
        wait *= 2;
        match resume_once(r, seq).await {
            Ok(Ok(ok)) => {
                tracing::info!(attempt, "gateway session resumed");
                return Ok(ok);
            }
            // The server answered and said no: trying again will not help.
            Ok(Err(refused)) => return Err(format!("gateway: {why}; {refused}")),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "gateway: {why}; resuming failed {RESUME_ATTEMPTS} times (last: {last})"
    ))
}

/// A voice connection that is ready for media: our SSRC, the node's media address, the
/// transport mode and key.
pub struct VoiceReady {
    pub ssrc: u32,
    pub server: SocketAddr,
    pub mode: CryptoMode,
    pub key: [u8; 32],
    /// The voice connection's task (ends after [`VoiceCmd::Close`]).
    pub task: tokio::task::JoinHandle<()>,
}

/// What the voice gateway task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoiceEvent {
    /// Op 5: this SSRC is `user`'s voice.
    Speaker { ssrc: u32, user: u64 },
    /// The user left the call (op 13).
    Gone { user: u64 },
    /// The voice connection ended.
    Lost(String),
}

/// Requests to the voice gateway task.
#[derive(Debug)]
pub enum VoiceCmd {
    Speaking(bool),
    Close,
}

/// Connect to the voice gateway, identify, discover our address on `sock` (through `via` if
/// set, else at Ready's address), select the native transport in `mode`, and wait for the key. The connection then lives in a task that keeps
/// heartbeats, reports op 5 mappings as `events` and sends our op 5 on `cmds`.
pub async fn join_voice(
    vs: &VoiceServer,
    guild: &str,
    sock: &UdpSocket,
    mode: CryptoMode,
    via: Option<SocketAddr>,
    events: mpsc::UnboundedSender<VoiceEvent>,
    cmds: mpsc::UnboundedReceiver<VoiceCmd>,
) -> Result<VoiceReady, ClientError> {
    let url = format!("ws://{}/?v=8", vs.endpoint);
    let mut vw = connect(&url).await?;
    let hello = recv_json(&mut vw, "the voice gateway").await?;
    let hb_ms = hello["d"]["heartbeat_interval"]
        .as_f64()
        .unwrap_or(13_750.0)
        .max(1_000.0) as u64;
    send_json(
        &mut vw,
        json!({ "op": 0, "d": { "server_id": guild, "user_id": vs.user_id.to_string(),
            "session_id": vs.session_id, "token": vs.token } }),
    )
    .await?;
    let ready = loop {
        let m = recv_json(&mut vw, "the voice gateway").await?;
        match m["op"].as_u64() {
            Some(2) => break m["d"].clone(),
            Some(5) => speaker(&events, &m["d"]),
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
    let key = loop {
        let m = recv_json(&mut vw, "the voice gateway").await?;
        match m["op"].as_u64() {
            Some(4) => {
                let d = &m["d"];
                if d["dave_protocol_version"].as_u64().unwrap_or(0) != 0 {
                    return Err(protocol(
                        "the call runs DAVE end-to-end encryption, which lodge-client does not support yet",
                    ));
                }
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
                break <[u8; 32]>::try_from(key)
                    .map_err(|_| protocol("Session Description's secret_key is not 32 bytes"))?;
            }
            Some(5) => speaker(&events, &m["d"]),
            _ => {}
        }
    };
    let resume = VoiceResume {
        url,
        server_id: guild.to_string(),
        session_id: vs.session_id.clone(),
        token: vs.token.clone(),
    };
    let task = tokio::spawn(keep_voice(vw, hb_ms, ssrc, resume, events, cmds));
    Ok(VoiceReady {
        ssrc,
        server,
        mode,
        key,
        task,
    })
}

fn speaker(events: &mpsc::UnboundedSender<VoiceEvent>, d: &Value) {
    let ssrc = d["ssrc"].as_u64().and_then(|s| u32::try_from(s).ok());
    let user = d["user_id"].as_str().and_then(|u| u.parse::<u64>().ok());
    if let (Some(ssrc), Some(user)) = (ssrc, user) {
        let _ = events.send(VoiceEvent::Speaker { ssrc, user });
    }
}

/// How to come back to a voice connection whose WebSocket was lost (voice op 7 Resume).
struct VoiceResume {
    url: String,
    server_id: String,
    session_id: String,
    token: String,
}

/// The node parks a dropped voice connection for `voice_resume_secs` (5 s by default): four
/// attempts 0.25–2 s apart fit in it.
const VOICE_RESUME_FIRST_WAIT: Duration = Duration::from_millis(250);

/// Voice close codes after which a resume cannot work: authentication failed (4004), session
/// no longer valid (4006), disconnected by the server (4014), unknown encryption mode (4016).
fn voice_resumable(code: u16) -> bool {
    !matches!(code, 4004 | 4006 | 4014 | 4016)
}

/// Reconnect and resume the voice connection: Hello, op 7 with the last numbered message
/// seen, op 9 (Resumed); the messages replayed after it are read by `keep_voice`.
/// `Ok(Err(why))`: the server refused (a close, e.g. 4006 after its grace period).
async fn resume_voice_once(
    r: &VoiceResume,
    seq_ack: i64,
) -> Result<Result<(Ws, u64), String>, ClientError> {
    let mut ws = connect(&r.url).await?;
    let hello = recv_json(&mut ws, "the voice gateway").await?;
    let hb_ms = hello["d"]["heartbeat_interval"]
        .as_f64()
        .unwrap_or(13_750.0)
        .max(1_000.0) as u64;
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

/// Resume the voice connection after `why`, a few times with growing waits.
async fn recover_voice(r: &VoiceResume, seq_ack: i64, why: &str) -> Result<(Ws, u64), String> {
    tracing::info!("voice gateway connection lost ({why}); resuming it");
    let mut wait = VOICE_RESUME_FIRST_WAIT;
    let mut last = String::new();
    for attempt in 1..=RESUME_ATTEMPTS {
        tokio::time::sleep(wait).await;
        wait *= 2;
        match resume_voice_once(r, seq_ack).await {
            Ok(Ok(ok)) => {
                tracing::info!(attempt, "voice connection resumed");
                return Ok(ok);
            }
            Ok(Err(refused)) => return Err(format!("voice gateway: {why}; {refused}")),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "voice gateway: {why}; resuming failed {RESUME_ATTEMPTS} times (last: {last})"
    ))
}

async fn keep_voice(
    mut ws: Ws,
    hb_ms: u64,
    ssrc: u32,
    resume: VoiceResume,
    events: mpsc::UnboundedSender<VoiceEvent>,
    mut cmds: mpsc::UnboundedReceiver<VoiceCmd>,
) {
    let new_beat = |ms: u64| {
        let mut hb = tokio::time::interval(Duration::from_millis(ms));
        hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        hb
    };
    let mut hb = new_beat(hb_ms);
    hb.tick().await;
    let mut nonce = 0u64;
    // The last numbered message seen (v8), acknowledged in heartbeats and a resume.
    let mut seq_ack: i64 = -1;
    let mut acked = true;
    let lost = |why: String| {
        let _ = events.send(VoiceEvent::Lost(why));
    };
    loop {
        let gone = tokio::select! {
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
                    let d = json!({ "speaking": u8::from(on), "delay": 0, "ssrc": ssrc });
                    if send_json(&mut ws, json!({ "op": 5, "d": d })).await.is_ok() {
                        continue;
                    }
                    // The next op 5 says it again; the connection is resumed first.
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
                    match v["op"].as_u64() {
                        Some(5) => speaker(&events, &v["d"]),
                        Some(6) => acked = true,
                        Some(13) => {
                            if let Some(user) = v["d"]["user_id"].as_str().and_then(|u| u.parse().ok()) {
                                let _ = events.send(VoiceEvent::Gone { user });
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
                    }
                    continue;
                }
                Some(Ok(Message::Close(c))) => {
                    let code = c.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005);
                    let why = closed("the voice gateway", c).to_string();
                    if voice_resumable(code) { Gone::Resume(why) } else { Gone::End(why) }
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => Gone::Resume(format!("voice gateway error: {e}")),
                None => Gone::Resume("the voice gateway connection ended".into()),
            }
        };
        match gone {
            Gone::End(why) => {
                lost(why);
                return;
            }
            Gone::Resume(why) => match recover_voice(&resume, seq_ack, &why).await {
                Ok((w, ms)) => {
                    ws = w;
                    hb = new_beat(ms);
                    hb.tick().await;
                    acked = true;
                }
                Err(why) => {
                    lost(why);
                    return;
                }
            },
        }
    }
}
