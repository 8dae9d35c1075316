//! One caller's signaling, exactly as a client does it: the gateway (Hello, Identify, READY,
//! op 4 → VOICE_SERVER_UPDATE) and the voice gateway (Hello, Identify, Ready, Select Protocol
//! with the WebRTC offer → Session Description). Both sockets then stay open for the call with
//! heartbeats; the voice socket's op 5 messages keep the caller's slot → speaker map current.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
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

fn on_speaking(slots: &SlotMap, d: &Value) {
    let (Some(ssrc), Some(user)) = (
        d["ssrc"].as_u64(),
        d["user_id"].as_str().and_then(|u| u.parse::<u64>().ok()),
    ) else {
        return;
    };
    let mut m = slots.lock().expect("slot map lock");
    let speaking = d["speaking"].as_u64().unwrap_or(0) != 0;
    if speaking {
        m.insert(ssrc as u32, user);
    } else if m.get(&(ssrc as u32)) == Some(&user) {
        m.remove(&(ssrc as u32));
    }
}

/// Join `channel` of `guild` as the caller with `token`, offering `offer_sdp` with `slots`
/// receive slots. The sockets are kept alive (heartbeats) until `stop` turns true; a socket that
/// closes before that is reported through `on_error`.
#[allow(clippy::too_many_arguments)]
pub async fn join(
    gateway_url: &str,
    token: &str,
    user_id: u64,
    guild: &str,
    channel: &str,
    offer_sdp: &str,
    slots: usize,
    self_mute: bool,
    region: Option<&str>,
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
    let mut last_seq = Value::Null;
    while session_id.is_none() {
        let m = recv_json(&mut gw).await?;
        if !m["s"].is_null() {
            last_seq = m["s"].clone();
        }
        if m["t"] == "READY" {
            session_id = m["d"]["session_id"].as_str().map(str::to_string);
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
    tokio::spawn(keep_gateway(
        gw,
        gw_hb,
        last_seq,
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
        offer_sdp,
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

/// Connect to the voice gateway at `endpoint` with `vtoken`, offer `offer_sdp`; the answer and
/// the slot map. The connection is kept alive until `stop`; if it ends before, `lost` counts it.
#[allow(clippy::too_many_arguments)]
pub async fn voice(
    endpoint: &str,
    guild: &str,
    user_id: u64,
    session_id: &str,
    vtoken: &str,
    offer_sdp: &str,
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
    send_json(
        &mut vw,
        json!({ "op": 1, "d": { "protocol": "webrtc", "data": { "sdp": offer_sdp }, "slots": slots } }),
    )
    .await?;
    let slot_map: SlotMap = Arc::default();
    let answer = loop {
        let m = recv_json(&mut vw).await?;
        match m["op"].as_u64() {
            Some(4) => break m["d"]["sdp"].as_str().context("answer sdp")?.to_string(),
            Some(5) => on_speaking(&slot_map, &m["d"]),
            _ => {}
        }
    };
    tokio::spawn(keep_voice(vw, v_hb, slot_map.clone(), stop, lost));
    Ok((answer, slot_map))
}

async fn keep_gateway(
    mut ws: Ws,
    hb_ms: u64,
    mut seq: Value,
    moved: mpsc::UnboundedSender<(String, String)>,
    mut stop: watch::Receiver<bool>,
    on_error: Arc<dyn Fn(String) + Send + Sync>,
) {
    let mut hb = tokio::time::interval(Duration::from_millis(hb_ms));
    hb.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => { let _ = ws.close(None).await; return; }
            _ = hb.tick() => {
                if send_json(&mut ws, json!({ "op": 1, "d": seq })).await.is_err() {
                    on_error("gateway: heartbeat could not be sent".into());
                    return;
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t) {
                        if !v["s"].is_null() { seq = v["s"].clone(); }
                        if v["t"] == "VOICE_SERVER_UPDATE" {
                            if let (Some(t), Some(e)) = (v["d"]["token"].as_str(), v["d"]["endpoint"].as_str()) {
                                let _ = moved.send((t.to_string(), e.to_string()));
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    if !*stop.borrow() {
                        on_error(format!("gateway closed by the server: {c:?}"));
                    }
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => { if !*stop.borrow() { on_error(format!("gateway error: {e}")); } return; }
                None => { if !*stop.borrow() { on_error("gateway connection ended".into()); } return; }
            }
        }
    }
}

/// Voice gateway connections that ended mid-call. Not an error by itself (the server may move
/// the call); the caller's task counts losses against the reconnects that followed.
#[derive(Default)]
pub struct VoiceLost {
    pub count: AtomicU32,
    pub last: Mutex<String>,
    pub at: Mutex<Option<std::time::Instant>>,
}

async fn keep_voice(
    mut ws: Ws,
    hb_ms: u64,
    slots: SlotMap,
    mut stop: watch::Receiver<bool>,
    lost: Arc<VoiceLost>,
) {
    let mut hb = tokio::time::interval(Duration::from_millis(hb_ms));
    hb.tick().await;
    let mut nonce = 0u64;
    let stopped = stop.clone();
    let end = |why: String| {
        if !*stopped.borrow() {
            *lost.last.lock().expect("lost lock") = why;
            *lost.at.lock().expect("lost lock") = Some(std::time::Instant::now());
            lost.count.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        tokio::select! {
            _ = stop.changed() => { let _ = ws.close(None).await; return; }
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
                        if v["op"] == 5 { on_speaking(&slots, &v["d"]); }
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
