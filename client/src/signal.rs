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
    let (user_id, session_id) = loop {
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
            break (user, sid.to_string());
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
    let task = tokio::spawn(keep_gateway(gw, hb_ms, seq, guild.to_string(), cmds, lost));
    Ok(VoiceServer {
        user_id,
        session_id,
        token,
        endpoint,
        task,
    })
}

async fn keep_gateway(
    mut ws: Ws,
    hb_ms: u64,
    mut seq: Value,
    guild: String,
    mut cmds: mpsc::UnboundedReceiver<GatewayCmd>,
    events: mpsc::UnboundedSender<VoiceEvent>,
) {
    let lost = |why: String| {
        let _ = events.send(VoiceEvent::Lost(why));
    };
    let mut hb = tokio::time::interval(Duration::from_millis(hb_ms));
    hb.tick().await;
    loop {
        tokio::select! {
            _ = hb.tick() => {
                if send_json(&mut ws, json!({ "op": 1, "d": seq })).await.is_err() {
                    lost("gateway: heartbeat could not be sent; the connection is gone".into());
                    return;
                }
            }
            c = cmds.recv() => match c {
                Some(GatewayCmd::VoiceState { channel, self_mute, self_deaf }) => {
                    let d = json!({ "guild_id": guild, "channel_id": channel,
                        "self_mute": self_mute, "self_deaf": self_deaf });
                    if send_json(&mut ws, json!({ "op": 4, "d": d })).await.is_err() {
                        lost("gateway: a voice state update could not be sent".into());
                        return;
                    }
                }
                Some(GatewayCmd::Close) | None => {
                    let _ = tokio::time::timeout(STEP, ws.close(None)).await;
                    return;
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t) {
                        if !v["s"].is_null() { seq = v["s"].clone(); }
                        if v["t"] == "VOICE_SERVER_UPDATE" {
                            tracing::warn!("the server moved this call; moving is not supported yet");
                        }
                        if v["t"] == "LODGE_VOICE_ERROR" {
                            tracing::warn!("the server refused a voice state change: {}", v["d"]["message"]);
                        }
                        if v["op"] == 7 {
                            // Reconnect (the server drains or restarts): resuming is not built.
                            lost("the gateway asked to reconnect (op 7); resuming is not supported yet".into());
                            return;
                        }
                    }
                }
                Some(Ok(Message::Close(c))) => { lost(closed("the gateway", c).to_string()); return; }
                Some(Ok(_)) => {}
                Some(Err(e)) => { lost(format!("gateway error: {e}")); return; }
                None => { lost("gateway connection ended".into()); return; }
            }
        }
    }
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
    let task = tokio::spawn(keep_voice(vw, hb_ms, ssrc, events, cmds));
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

async fn keep_voice(
    mut ws: Ws,
    hb_ms: u64,
    ssrc: u32,
    events: mpsc::UnboundedSender<VoiceEvent>,
    mut cmds: mpsc::UnboundedReceiver<VoiceCmd>,
) {
    let mut hb = tokio::time::interval(Duration::from_millis(hb_ms));
    hb.tick().await;
    let mut nonce = 0u64;
    let lost = |why: String| {
        let _ = events.send(VoiceEvent::Lost(why));
    };
    loop {
        tokio::select! {
            _ = hb.tick() => {
                nonce += 1;
                if send_json(&mut ws, json!({ "op": 3, "d": { "t": nonce } })).await.is_err() {
                    lost("voice gateway: heartbeat could not be sent".into());
                    return;
                }
            }
            c = cmds.recv() => match c {
                Some(VoiceCmd::Speaking(on)) => {
                    let d = json!({ "speaking": u8::from(on), "delay": 0, "ssrc": ssrc });
                    if send_json(&mut ws, json!({ "op": 5, "d": d })).await.is_err() {
                        lost("voice gateway: op 5 could not be sent".into());
                        return;
                    }
                }
                Some(VoiceCmd::Close) | None => {
                    let _ = tokio::time::timeout(STEP, ws.close(None)).await;
                    return;
                }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                    match v["op"].as_u64() {
                        Some(5) => speaker(&events, &v["d"]),
                        Some(13) => {
                            if let Some(user) = v["d"]["user_id"].as_str().and_then(|u| u.parse().ok()) {
                                let _ = events.send(VoiceEvent::Gone { user });
                            }
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(c))) => { lost(closed("the voice gateway", c).to_string()); return; }
                Some(Ok(_)) => {}
                Some(Err(e)) => { lost(format!("voice gateway error: {e}")); return; }
                None => { lost("voice gateway connection ended".into()); return; }
            }
        }
    }
}
