//! One caller's signaling, exactly as a client does it: the gateway (Hello, Identify, READY,
//! op 4 → VOICE_SERVER_UPDATE) and the voice gateway (Hello, Identify, Ready, Select Protocol
//! with the WebRTC offer → Session Description). Both sockets then stay open for the call with
//! heartbeats; the voice socket's op 5 messages keep the caller's slot → speaker map current.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use lodge_sfu::native::CryptoMode;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Slot SSRC → the user currently speaking in it (from voice gateway op 5).
pub type SlotMap = Arc<Mutex<HashMap<u32, u64>>>;

/// How long any single signaling step may take before the caller counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Call {
    pub answer_sdp: String,
    pub slots: SlotMap,
    /// Later VOICE_SERVER_UPDATEs (token, endpoint): the server moved the call (e.g. its edge
    /// died); the caller reconnects there with [`reconnect`].
    pub moved: mpsc::UnboundedReceiver<(String, String)>,
    /// Voice gateway connections that ended while the call went on (the caller's task decides
    /// whether a move followed).
    pub voice_lost: Arc<VoiceLost>,
    pub session_id: String,
}

async fn recv_json(ws: &mut Ws) -> Result<Value> {
    loop {
        let m = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .context("the server did not answer within 30 s")?;
        match m {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(c))) => {
                let (code, why) = c
                    .map(|c| (u16::from(c.code), c.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                bail!("closed by the server: {code} {why}")
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("websocket error: {e}"),
            None => bail!("connection ended"),
        }
    }
}

async fn send_json(ws: &mut Ws, v: Value) -> Result<()> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .context("sending on the websocket")
}

/// How a caller's media is described to the voice gateway.
pub enum Select<'a> {
    /// Select Protocol `webrtc` with this SDP offer (the answer comes back in op 4).
    WebRtc { offer: &'a str },
    /// Select Protocol `udp` (Discord's native transport): IP discovery on the client's socket
    /// after Ready, then the mode and key from op 4.
    Udp {
        client: &'a mut super::media::Client,
        mode: CryptoMode,
    },
}

/// Op 5 maps an SSRC to a user. A WebRTC caller's slot carries a speaker only while op 5 says
/// `speaking`; a native caller hears each user under the user's own SSRC, named once.
fn on_speaking(slots: &SlotMap, d: &Value, native: bool) {
    let (Some(ssrc), Some(user)) = (
        d["ssrc"].as_u64(),
        d["user_id"].as_str().and_then(|u| u.parse::<u64>().ok()),
    ) else {
        return;
    };
    let mut m = slots.lock().expect("slot map lock");
    let speaking = d["speaking"].as_u64().unwrap_or(0) != 0;
    if speaking || native {
        m.insert(ssrc as u32, user);
    } else if m.get(&(ssrc as u32)) == Some(&user) {
        m.remove(&(ssrc as u32));
    }
}

/// Join `channel` of `guild` as the caller with `token`, describing its media by `select` with `slots`
/// receive slots. The sockets are kept alive (heartbeats) until `stop` turns true; a socket that
/// closes before that is reported through `on_error`.
#[allow(clippy::too_many_arguments)]
pub async fn join(
    gateway_url: &str,
    token: &str,
    user_id: u64,
    guild: &str,
    channel: &str,
    select: Select<'_>,
    slots: usize,
    self_mute: bool,
    region: Option<&str>,
    resumes: Option<Arc<Resumes>>,
    stop: watch::Receiver<bool>,
    on_error: Arc<dyn Fn(String) + Send + Sync>,
) -> Result<Call> {
    let (mut gw, _) = tokio_tungstenite::connect_async(gateway_url)
        .await
        .with_context(|| format!("connecting to the gateway at {gateway_url}"))?;
    let hello = recv_json(&mut gw).await?;
    let gw_hb = hello["d"]["heartbeat_interval"].as_u64().unwrap_or(41_250);
    // GUILDS only: VOICE_SERVER_UPDATE is not gated by intents, and a crowd of callers does not
    // need everyone's VOICE_STATE_UPDATE (that would be N² messages).
    send_json(
        &mut gw,
        json!({ "op": 2, "d": { "token": token, "intents": 1,
            "properties": { "os": "linux", "browser": "lodge-load", "device": "lodge-load" } } }),
    )
    .await?;
    let mut session_id = None;
    let mut resume_url = None;
    let mut last_seq = Value::Null;
    while session_id.is_none() {
        let m = recv_json(&mut gw).await?;
        if !m["s"].is_null() {
            last_seq = m["s"].clone();
        }
        if m["t"] == "READY" {
            session_id = m["d"]["session_id"].as_str().map(str::to_string);
            resume_url = m["d"]["resume_gateway_url"].as_str().map(str::to_string);
        }
    }
    let session_id = session_id.expect("loop ends with a session");
    let mut op4 = json!({ "guild_id": guild, "channel_id": channel,
        "self_mute": self_mute, "self_deaf": false });
    if let Some(r) = region {
        // Lodge's placement hint: put this call on an edge of that region.
        op4["region"] = json!(r);
    }
    send_json(&mut gw, json!({ "op": 4, "d": op4 })).await?;
    let (vtoken, endpoint) = loop {
        let m = recv_json(&mut gw).await?;
        if !m["s"].is_null() {
            last_seq = m["s"].clone();
        }
        if m["t"] == "VOICE_SERVER_UPDATE" {
            break (
                m["d"]["token"].as_str().context("voice token")?.to_string(),
                m["d"]["endpoint"]
                    .as_str()
                    .context("voice endpoint")?
                    .to_string(),
            );
        }
    };
    let (moved_tx, moved) = mpsc::unbounded_channel();
    let resume = resumes.map(|count| Resume {
        // Where READY says to resume (a real client goes there); the URL it connected to if
        // READY names none.
        url: resume_url
            .map(|u| format!("{}?v=10&encoding=json", u.split('?').next().unwrap_or(&u)))
            .unwrap_or_else(|| gateway_url.to_string()),
        gateway_url: gateway_url.to_string(),
        token: token.to_string(),
        session_id: session_id.clone(),
        count,
    });
    tokio::spawn(keep_gateway(
        gw,
        gw_hb,
        last_seq,
        resume,
        moved_tx,
        stop.clone(),
        on_error.clone(),
    ));
    let voice_lost = Arc::new(VoiceLost::default());
    let (answer_sdp, slots) = voice(
        &endpoint,
        guild,
        user_id,
        &session_id,
        &vtoken,
        select,
        slots,
        voice_lost.clone(),
        stop,
    )
    .await?;
    Ok(Call {
        answer_sdp,
        slots,
        moved,
        voice_lost,
        session_id,
    })
}

/// Connect to the voice gateway at `endpoint` with `vtoken`, describe the media by `select`; the
/// SDP answer (empty for a native caller, whose key went to its client) and
/// the slot map. The connection is kept alive until `stop`; if it ends before, `lost` counts it.
#[allow(clippy::too_many_arguments)]
pub async fn voice(
    endpoint: &str,
    guild: &str,
    user_id: u64,
    session_id: &str,
    vtoken: &str,
    select: Select<'_>,
    slots: usize,
    lost: Arc<VoiceLost>,
    stop: watch::Receiver<bool>,
) -> Result<(String, SlotMap)> {
    let url = format!("ws://{endpoint}/?v=8");
    let (mut vw, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("connecting to the voice gateway at {url}"))?;
    let hello = recv_json(&mut vw).await?;
    let v_hb = hello["d"]["heartbeat_interval"].as_u64().unwrap_or(13_750);
    send_json(
        &mut vw,
        json!({ "op": 0, "d": { "server_id": guild, "user_id": user_id.to_string(),
            "session_id": session_id, "token": vtoken } }),
    )
    .await?;
    let ready = recv_json(&mut vw).await?;
    if ready["op"] != 2 {
        bail!("voice identify: expected Ready (op 2), got {ready}");
    }
    let native = matches!(select, Select::Udp { .. });
    let (mut native_client, mut native_mode) = (None, None);
    let op1 = match select {
        Select::WebRtc { offer } => {
            json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": offer }, "slots": slots } })
        }
        Select::Udp { client, mode } => {
            let d = &ready["d"];
            let server = SocketAddr::new(
                d["ip"]
                    .as_str()
                    .context("Ready's ip")?
                    .parse()
                    .context("Ready's ip")?,
                d["port"].as_u64().context("Ready's port")? as u16,
            );
            let ssrc = d["ssrc"].as_u64().context("Ready's ssrc")? as u32;
            let (address, port) = client.discover(server, ssrc).await?;
            native_client = Some(client);
            native_mode = Some(mode);
            json!({ "op": 1, "d": { "protocol": "udp", "slots": slots,
                "data": { "address": address, "port": port, "mode": mode.name() } } })
        }
    };
    send_json(&mut vw, op1).await?;
    let slot_map: SlotMap = Arc::default();
    let answer = loop {
        let m = recv_json(&mut vw).await?;
        match m["op"].as_u64() {
            Some(4) => {
                let d = &m["d"];
                if let (Some(client), Some(mode)) = (native_client.take(), native_mode) {
                    if d["mode"] != mode.name() {
                        bail!(
                            "voice gateway chose mode {} after we asked for {}",
                            d["mode"],
                            mode.name()
                        );
                    }
                    let key: Vec<u8> = d["secret_key"]
                        .as_array()
                        .context("op 4 secret_key")?
                        .iter()
                        .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                        .collect();
                    let key: [u8; 32] = key
                        .try_into()
                        .map_err(|_| anyhow::anyhow!("op 4 secret_key is not 32 bytes"))?;
                    client.set_key(mode, &key)?;
                    break String::new();
                }
                break d["sdp"].as_str().context("answer sdp")?.to_string();
            }
            Some(5) => on_speaking(&slot_map, &m["d"], native),
            _ => {}
        }
    };
    tokio::spawn(keep_voice(vw, v_hb, slot_map.clone(), native, stop, lost));
    Ok((answer, slot_map))
}

/// How a caller resumes its gateway session when the connection drops (op 6).
struct Resume {
    url: String,
    /// Where to identify again after an Invalid Session (op 9).
    gateway_url: String,
    token: String,
    session_id: String,
    count: Arc<Resumes>,
}

/// Gateway sessions resumed after a dropped connection, and resumes that failed, over all
/// callers: they go into the report (`gateway_resumes`).
#[derive(Default)]
pub struct Resumes {
    pub resumed: AtomicU32,
    /// Sessions the server invalidated (op 9): identified again, the call left as it was (the
    /// server keeps a call whose session it ended through no fault of the client's).
    pub identified_again: AtomicU32,
    pub failed: AtomicU32,
    /// Connection lost → RESUMED, ms.
    pub ms: Mutex<Vec<f64>>,
}

impl Resumes {
    /// Add the counts to a rendered report (JSON and Markdown).
    pub fn add_to(&self, rep: &mut super::report::Report) {
        let (ok, again, failed) = (
            self.resumed.load(Ordering::Relaxed),
            self.identified_again.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        let mut ms = self.ms.lock().expect("resume lock").clone();
        ms.sort_by(f64::total_cmp);
        let q = |p: f64| {
            ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1)))
                .copied()
        };
        rep.json["gateway_resumes"] = json!({ "resumed": ok, "identified_again": again, "failed": failed,
            "ms": { "p50": q(0.5), "max": ms.last() } });
        if ok + again + failed > 0 {
            rep.markdown.push_str(&format!(
                "\n| gateway sessions resumed / identified again (op 9) / failed; lost → RESUMED, ms (p50 / max) | {ok} / {again} / {failed}; {:.0} / {:.0} |\n",
                q(0.5).unwrap_or(f64::NAN),
                ms.last().copied().unwrap_or(f64::NAN)
            ));
        }
    }
}

/// Close codes after which a client must not resume (Discord's: authentication failed, bad
/// shard or intents).
fn resumable(code: u16) -> bool {
    !matches!(code, 4004 | 4010..=4014)
}

/// How long a caller keeps trying to resume before it gives up.
const RESUME_FOR: Duration = Duration::from_secs(20);

/// Resume the session at `r.url`: a new connection, Hello, op 6, then frames until RESUMED.
/// Dispatches replayed on the way (a VOICE_SERVER_UPDATE among them) go to `on_frame`. Tries
/// again every 250 ms while the connection cannot be made or is cut; an Invalid Session (op 9)
/// ends it. The new socket and its heartbeat interval.
async fn resume(
    r: &Resume,
    seq: &mut Value,
    on_frame: &mut impl FnMut(&Value),
) -> Result<(Ws, u64)> {
    let until = tokio::time::Instant::now() + RESUME_FOR;
    let mut last_err = String::new();
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(5), resume_once(r, seq, on_frame)).await {
            Ok(Ok(Some(done))) => return Ok(done),
            Ok(Ok(None)) => bail!("Invalid Session (op 9) in answer to Resume"),
            Ok(Err(e)) => last_err = format!("{e:#}"),
            Err(_) => last_err = "no RESUMED within 5 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("no resume within {} s: {last_err}", RESUME_FOR.as_secs())
}

/// One attempt of [`resume`]: `None` for an Invalid Session.
async fn resume_once(
    r: &Resume,
    seq: &mut Value,
    on_frame: &mut impl FnMut(&Value),
) -> Result<Option<(Ws, u64)>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(&r.url)
        .await
        .with_context(|| format!("connecting to {}", r.url))?;
    let hello = recv_json(&mut ws).await?;
    let hb = hello["d"]["heartbeat_interval"].as_u64().unwrap_or(41_250);
    send_json(
        &mut ws,
        json!({ "op": 6, "d": { "token": r.token, "session_id": r.session_id, "seq": seq.clone() } }),
    )
    .await?;
    loop {
        let m = recv_json(&mut ws).await?;
        if !m["s"].is_null() {
            *seq = m["s"].clone();
        }
        if m["op"] == 9 {
            return Ok(None);
        }
        on_frame(&m);
        if m["t"] == "RESUMED" {
            return Ok(Some((ws, hb)));
        }
    }
}

/// A new session after an Invalid Session (op 9), as a client does: Identify at the gateway
/// URL. The socket, its heartbeat interval, READY's sequence number; `r` takes the new session.
async fn identify_again(r: &mut Resume) -> Result<(Ws, u64, Value)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(&r.gateway_url)
        .await
        .with_context(|| format!("connecting to {}", r.gateway_url))?;
    let hello = recv_json(&mut ws).await?;
    let hb = hello["d"]["heartbeat_interval"].as_u64().unwrap_or(41_250);
    send_json(
        &mut ws,
        json!({ "op": 2, "d": { "token": r.token, "intents": 1,
            "properties": { "os": "linux", "browser": "lodge-load", "device": "lodge-load" } } }),
    )
    .await?;
    loop {
        let m = recv_json(&mut ws).await?;
        if m["t"] == "READY" {
            r.session_id = m["d"]["session_id"]
                .as_str()
                .context("READY without session_id")?
                .to_string();
            if let Some(u) = m["d"]["resume_gateway_url"].as_str() {
                r.url = format!("{}?v=10&encoding=json", u.split('?').next().unwrap_or(u));
            }
            return Ok((ws, hb, m["s"].clone()));
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn keep_gateway(
    mut ws: Ws,
    hb_ms: u64,
    mut seq: Value,
    mut resume_with: Option<Resume>,
    moved: mpsc::UnboundedSender<(String, String)>,
    mut stop: watch::Receiver<bool>,
    on_error: Arc<dyn Fn(String) + Send + Sync>,
) {
    let mut on_frame = |v: &Value| {
        if v["t"] == "VOICE_SERVER_UPDATE" {
            if let (Some(t), Some(e)) = (v["d"]["token"].as_str(), v["d"]["endpoint"].as_str()) {
                let _ = moved.send((t.to_string(), e.to_string()));
            }
        }
    };
    let mut hb = tokio::time::interval(Duration::from_millis(hb_ms));
    hb.tick().await;
    // The server said the session cannot be resumed (op 9).
    let mut invalid = false;
    loop {
        let why = tokio::select! {
            _ = stop.changed() => { let _ = ws.close(None).await; return; }
            _ = hb.tick() => {
                if send_json(&mut ws, json!({ "op": 1, "d": seq })).await.is_err() {
                    "gateway: heartbeat could not be sent".to_string()
                } else {
                    continue;
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t) {
                        if !v["s"].is_null() { seq = v["s"].clone(); }
                        invalid |= v["op"] == 9 && v["d"] != true;
                        on_frame(&v);
                    }
                    continue;
                }
                Some(Ok(Message::Close(c))) => {
                    let code = c.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005);
                    if !resumable(code) {
                        if !*stop.borrow() {
                            on_error(format!("gateway closed by the server: {c:?}"));
                        }
                        return;
                    }
                    format!("gateway closed by the server: {c:?}")
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => format!("gateway error: {e}"),
                None => "gateway connection ended".to_string(),
            }
        };
        if *stop.borrow() {
            return;
        }
        let Some(r) = resume_with.as_mut() else {
            on_error(why);
            return;
        };
        // The connection dropped (its node died, say): resume the session, as a client does;
        // identify again if the server invalidated it.
        let lost = std::time::Instant::now();
        let resumed = if invalid {
            Err(anyhow::anyhow!("Invalid Session (op 9)"))
        } else {
            tokio::select! {
                _ = stop.changed() => return,
                x = resume(r, &mut seq, &mut on_frame) => x,
            }
        };
        let next = match resumed {
            Ok((ws, hb)) => {
                r.count.resumed.fetch_add(1, Ordering::Relaxed);
                r.count
                    .ms
                    .lock()
                    .expect("resume lock")
                    .push(lost.elapsed().as_secs_f64() * 1000.0);
                Ok((ws, hb))
            }
            Err(e) if e.to_string().contains("op 9") => {
                let again = tokio::select! {
                    _ = stop.changed() => return,
                    x = identify_again(r) => x,
                };
                again.map(|(ws, hb, s)| {
                    r.count.identified_again.fetch_add(1, Ordering::Relaxed);
                    seq = s;
                    (ws, hb)
                })
            }
            Err(e) => Err(e),
        };
        match next {
            Ok((new_ws, new_hb)) => {
                ws = new_ws;
                invalid = false;
                hb = tokio::time::interval(Duration::from_millis(new_hb));
                hb.tick().await;
            }
            Err(e) => {
                r.count.failed.fetch_add(1, Ordering::Relaxed);
                on_error(format!("{why}; resuming at {} failed: {e:#}", r.url));
                return;
            }
        }
    }
}

/// Voice gateway connections that ended mid-call. Not an error by itself (the server may move
/// the call); the caller's task counts losses against the reconnects that followed.
pub struct VoiceLost {
    pub count: AtomicU32,
    pub last: Mutex<String>,
    pub at: Mutex<Option<std::time::Instant>>,
    /// The caller's current voice connection, numbered: a move retires the one before (see
    /// [`VoiceLost::retire`]).
    current: watch::Sender<u32>,
}

impl Default for VoiceLost {
    fn default() -> Self {
        VoiceLost {
            count: AtomicU32::new(0),
            last: Mutex::default(),
            at: Mutex::default(),
            current: watch::channel(0).0,
        }
    }
}

impl VoiceLost {
    /// The call moves (a new VOICE_SERVER_UPDATE): the current voice connection closes itself
    /// (a close frame, as a client leaving it does) and its end is not a loss. A server that
    /// keeps the old connection while the client moves (a draining node) would otherwise see
    /// it linger, and its later close would count as a lost connection of the new one.
    pub fn retire(&self) {
        self.current.send_modify(|n| *n += 1);
    }
}

async fn keep_voice(
    mut ws: Ws,
    hb_ms: u64,
    slots: SlotMap,
    native: bool,
    mut stop: watch::Receiver<bool>,
    lost: Arc<VoiceLost>,
) {
    let mut hb = tokio::time::interval(Duration::from_millis(hb_ms));
    hb.tick().await;
    let mut nonce = 0u64;
    let stopped = stop.clone();
    let mut current = lost.current.subscribe();
    let mine = *current.borrow_and_update();
    let end = |why: String| {
        if !*stopped.borrow() && *lost.current.borrow() == mine {
            *lost.last.lock().expect("lost lock") = why;
            *lost.at.lock().expect("lost lock") = Some(std::time::Instant::now());
            lost.count.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        tokio::select! {
            _ = stop.changed() => { let _ = ws.close(None).await; return; }
            _ = current.changed() => {
                // Retired by a move: leave this connection as a client does.
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return;
            }
            _ = hb.tick() => {
                nonce += 1;
                if send_json(&mut ws, json!({ "op": 3, "d": { "t": nonce } })).await.is_err() {
                    end("voice gateway: heartbeat could not be sent".into());
                    return;
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t) {
                        if v["op"] == 5 { on_speaking(&slots, &v["d"], native); }
                    }
                }
                Some(Ok(Message::Close(c))) => { end(format!("voice gateway closed by the server: {c:?}")); return; }
                Some(Ok(_)) => {}
                Some(Err(e)) => { end(format!("voice gateway error: {e}")); return; }
                None => { end("voice gateway connection ended".into()); return; }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    type ServerWs = WebSocketStream<TcpStream>;

    async fn accept(l: &TcpListener) -> ServerWs {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), l.accept())
            .await
            .expect("the caller came back")
            .unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let hello = json!({ "op": 10, "d": { "heartbeat_interval": 30_000 } });
        ws.send(Message::Text(hello.to_string().into()))
            .await
            .unwrap();
        ws
    }

    async fn next_op(ws: &mut ServerWs) -> Value {
        loop {
            match ws.next().await.expect("a frame").unwrap() {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["op"] != 1 {
                        return v;
                    }
                }
                _ => continue,
            }
        }
    }

    async fn send(ws: &mut ServerWs, v: Value) {
        ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    /// A caller whose gateway connection drops resumes (op 6 with its session and sequence)
    /// and passes on the VOICE_SERVER_UPDATE it gets there; after an Invalid Session it
    /// identifies again. Neither is an error.
    #[tokio::test]
    async fn a_dropped_gateway_is_resumed_and_an_invalid_session_identified_again() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "ws://{}/gateway?v=10&encoding=json",
            l.local_addr().unwrap()
        );
        let client = tokio::spawn({
            let url = url.clone();
            async move { tokio_tungstenite::connect_async(&url).await.unwrap().0 }
        });
        let first = accept(&l).await;
        let mut ws = client.await.unwrap();
        let _hello = recv_json(&mut ws).await.unwrap();
        let count = Arc::new(Resumes::default());
        let resume = Resume {
            url: url.clone(),
            gateway_url: url.clone(),
            token: "tok".into(),
            session_id: "s1".into(),
            count: count.clone(),
        };
        let (moved_tx, mut moved) = mpsc::unbounded_channel();
        let (stop_tx, stop) = watch::channel(false);
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let on_error: Arc<dyn Fn(String) + Send + Sync> = {
            let errors = errors.clone();
            Arc::new(move |e| errors.lock().unwrap().push(e))
        };
        let task = tokio::spawn(keep_gateway(
            ws,
            30_000,
            json!(2),
            Some(resume),
            moved_tx,
            stop,
            on_error,
        ));
        // The node dies: the connection ends without a close frame.
        drop(first);
        let mut second = accept(&l).await;
        let r = next_op(&mut second).await;
        assert_eq!(r["op"], 6, "{r}");
        assert_eq!(r["d"]["session_id"], "s1");
        assert_eq!(r["d"]["seq"], 2);
        assert_eq!(r["d"]["token"], "tok");
        let vsu = json!({ "op": 0, "s": 3, "t": "VOICE_SERVER_UPDATE",
            "d": { "token": "t2", "endpoint": "127.0.0.9:1" } });
        send(&mut second, vsu).await;
        send(
            &mut second,
            json!({ "op": 0, "s": 4, "t": "RESUMED", "d": null }),
        )
        .await;
        let m = tokio::time::timeout(Duration::from_secs(5), moved.recv())
            .await
            .unwrap();
        assert_eq!(m, Some(("t2".into(), "127.0.0.9:1".into())));
        // The server invalidates the session: op 9, then close 4000.
        send(&mut second, json!({ "op": 9, "d": false })).await;
        second
            .close(Some(CloseFrame {
                code: CloseCode::Library(4000),
                reason: "events may have been missed".into(),
            }))
            .await
            .unwrap();
        let mut third = accept(&l).await;
        let id = next_op(&mut third).await;
        assert_eq!(id["op"], 2, "identified again, not resumed: {id}");
        let ready = json!({ "op": 0, "s": 1, "t": "READY",
            "d": { "session_id": "s2", "resume_gateway_url": url } });
        send(&mut third, ready).await;
        for _ in 0..100 {
            if count.identified_again.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(count.resumed.load(Ordering::Relaxed), 1);
        assert_eq!(count.identified_again.load(Ordering::Relaxed), 1);
        assert_eq!(count.failed.load(Ordering::Relaxed), 0);
        assert!(
            errors.lock().unwrap().is_empty(),
            "{:?}",
            errors.lock().unwrap()
        );
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
